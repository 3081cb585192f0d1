//! Frames on the portable engine: the format table, layouts, every
//! refusal, allocation in one or several buffers, plane windows, and the
//! frame encoding.

use dmabuf::frame::{
    wire, FrameLayout, FrameOptions, Placement, Plane, PlaneLayout, DEFAULT_STRIDE_ALIGN,
};
use dmabuf::mapping::{ReadOnly, Window, WriteOnly};
use dmabuf::{Allocate, Buffer, Error, ErrorKind, Fourcc, Frame, Modifier, Portable};
use proptest::prelude::*;

// The only place these tests touch bytes through a window: the window's
// byte access is the part of the API most likely to change.
fn put(w: &mut Window<'_, WriteOnly>, at: usize, bytes: &[u8]) {
    w.bytes_mut().write_at(at, bytes).unwrap();
}
fn get(w: &Window<'_, ReadOnly>) -> Vec<u8> {
    w.to_vec()
}

fn buf(size: u64) -> Buffer {
    Portable.allocate(size, "frames").unwrap()
}

fn plane(buffer: &Buffer, offset: u64, stride: u64) -> Plane {
    Plane {
        buffer: buffer.clone(),
        offset,
        stride,
    }
}

#[track_caller]
fn refused(r: dmabuf::Result<Frame>, cause: &str) -> Error {
    let e = r.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    assert_eq!(e.errno(), Some(dmabuf::Errno::INVAL), "{e}");
    assert!(e.to_string().contains(cause), "want {cause:?} in: {e}");
    e
}

#[test]
fn nv12_720p_is_laid_out_and_printed_like_v4l2_and_drm() {
    let f = Frame::allocate(&Portable, Fourcc::NV12, 1280, 720, &FrameOptions::default()).unwrap();
    assert_eq!(f.to_string(), "NV12 1280x720 (LINEAR), 2 planes");
    assert_eq!(f.buffers().len(), 1);
    let l = f.layout();
    assert_eq!(
        l.planes,
        vec![
            PlaneLayout {
                buffer: 0,
                offset: 0,
                stride: 1280
            },
            PlaneLayout {
                buffer: 0,
                offset: 1280 * 720,
                stride: 1280
            },
        ]
    );
    // 1280*720*3/2 rounded up to pages.
    assert_eq!(f.buffers()[0].size(), 1_384_448);
    let rgb = Frame::allocate(&Portable, Fourcc::XRGB8888, 1, 1, &FrameOptions::default()).unwrap();
    assert_eq!(rgb.to_string(), "XRGB8888 1x1 (LINEAR), 1 plane");
}

#[test]
fn every_known_format_allocates_in_both_placements_and_checks() {
    for format in Fourcc::known() {
        let info = format.info().unwrap();
        for (w, h) in [(1, 1), (2, 2), (641, 3), (1920, 1080)] {
            for placement in [Placement::Contiguous, Placement::PerPlane] {
                let opts = FrameOptions {
                    placement,
                    ..FrameOptions::default()
                };
                let f = Frame::allocate(&Portable, format, w, h, &opts).unwrap();
                let what = format!("{f} {placement:?}");
                assert_eq!(f.plane_count(), info.plane_count(), "{what}");
                let want_buffers = match placement {
                    Placement::Contiguous => 1,
                    Placement::PerPlane => info.plane_count(),
                };
                assert_eq!(f.buffers().len(), want_buffers, "{what}");
                let mut end = 0;
                for (i, pi) in info.planes.iter().enumerate() {
                    let p = f.plane(i).unwrap();
                    assert_eq!(p.stride % u64::from(DEFAULT_STRIDE_ALIGN), 0, "{what}");
                    assert!(p.stride >= pi.min_stride(w), "{what}");
                    assert!(p.stride < pi.min_stride(w) + 64, "{what}: no wasted row");
                    let len = p.stride * u64::from(pi.height(h));
                    assert!(p.offset + len <= p.buffer.size(), "{what}");
                    if placement == Placement::Contiguous {
                        assert_eq!(p.offset, end, "{what}: planes follow each other");
                        end = p.offset + len;
                    } else {
                        assert_eq!(p.offset, 0, "{what}");
                    }
                }
            }
        }
    }
}

#[test]
fn subsampled_planes_round_up_for_odd_sizes() {
    let f = Frame::allocate(&Portable, Fourcc::YUV420, 641, 3, &FrameOptions::default()).unwrap();
    let p: Vec<(u64, u64)> = (0..3)
        .map(|i| {
            let p = f.plane(i).unwrap();
            (p.offset, p.stride)
        })
        .collect();
    // Y: 641 -> 704 bytes × 3 rows; U and V: 321 -> 384 bytes × 2 rows.
    assert_eq!(p, vec![(0, 704), (2112, 384), (2880, 384)]);
    let opts = FrameOptions {
        stride_align: 1,
        ..FrameOptions::default()
    };
    let f = Frame::allocate(&Portable, Fourcc::P010, 3, 3, &opts).unwrap();
    // P010: Y 3 × 2 bytes = 6 (18 bytes); CbCr 2 × 4 bytes = 8, at offset
    // 20 (its elements are 4-byte aligned).
    let uv = f.plane(1).unwrap();
    assert_eq!(
        (f.plane(0).unwrap().stride, uv.offset, uv.stride),
        (6, 20, 8)
    );
}

#[test]
fn allocation_refuses_bad_requests() {
    let a = FrameOptions {
        stride_align: 48,
        ..FrameOptions::default()
    };
    let e = Frame::allocate(&Portable, Fourcc::NV12, 64, 64, &a).unwrap_err();
    assert!(
        e.to_string()
            .contains("stride alignment 48 is not a power of two"),
        "{e}"
    );
    let e = Frame::allocate(&Portable, Fourcc::NV12, 0, 64, &FrameOptions::default()).unwrap_err();
    assert!(e.to_string().contains("size 0x64 is empty"), "{e}");
    let e = Frame::allocate(
        &Portable,
        Fourcc::from_bytes(*b"MJPG"),
        64,
        64,
        &FrameOptions::default(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("format MJPG is unknown"), "{e}");
    let e = Frame::allocate(
        &Portable,
        Fourcc::XRGB8888,
        u32::MAX,
        u32::MAX,
        &FrameOptions::default(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("too large"), "{e}");
    assert_eq!(e.operation(), "allocate frame");
}

/// NV12 64x32 in one page: Y 0..2048, CbCr 2048..3072.
fn nv12(b: &Buffer, y: (u64, u64), uv: (u64, u64)) -> dmabuf::Result<Frame> {
    Frame::new(
        Fourcc::NV12,
        Modifier::LINEAR,
        64,
        32,
        [plane(b, y.0, y.1), plane(b, uv.0, uv.1)],
    )
}

#[test]
fn a_good_frame_shares_its_buffer_once() {
    let b = buf(4096);
    let f = nv12(&b, (0, 64), (2048, 64)).unwrap();
    assert_eq!(f.buffers().len(), 1);
    assert!(f.buffers()[0].same_as(&b));
    assert_eq!(f.layout().planes[1].buffer, 0);
    // A second handle on the same dma-buf would count as the same buffer
    // too (lab test); a different buffer is a second one.
    let c = buf(4096);
    let f = Frame::new(
        Fourcc::NV12,
        Modifier::LINEAR,
        64,
        32,
        [plane(&b, 0, 64), plane(&c, 0, 64)],
    )
    .unwrap();
    assert_eq!(f.buffers().len(), 2);
    assert_eq!(f.layout().planes[1].buffer, 1);
}

#[test]
fn every_refusal_names_its_cause() {
    let b = buf(4096);
    let e = refused(
        nv12(&b, (0, 64), (3584, 64)),
        "plane 1 does not fit its buffer: offset 3584 + stride 64 × 16 rows = 4608 bytes > buffer size 4096",
    );
    assert_eq!(e.operation(), "frame");
    assert!(e.object().contains("NV12 64x32 (LINEAR), 2 planes"), "{e}");
    refused(
        nv12(&b, (0, 64), (u64::MAX - 11, 64)),
        "plane 1 does not fit its buffer",
    );
    refused(
        nv12(&b, (0, u64::MAX / 4), (2048, 64)),
        "plane 0 does not fit its buffer",
    );
    refused(
        nv12(&b, (0, 63), (2048, 64)),
        "plane 0: stride 63 is shorter than a row (64 pixels × 1 bytes = 64 bytes)",
    );
    refused(
        nv12(&b, (0, 64), (2048, 62)),
        "plane 1: stride 62 is shorter than a row (32 pixels × 2 bytes = 64 bytes)",
    );
    refused(nv12(&b, (0, 0), (2048, 64)), "plane 0 has stride 0");
    refused(
        nv12(&b, (0, 64), (2049, 64)),
        "plane 1: offset 2049 is not a multiple of 2",
    );
    refused(
        nv12(&b, (0, 64), (1024, 64)),
        "plane 1 (bytes 1024..2048) overlaps plane 0 in the same buffer",
    );
    refused(
        Frame::new(
            Fourcc::XRGB8888,
            Modifier::LINEAR,
            64,
            4,
            [plane(&b, 0, 258)],
        ),
        "plane 0: stride 258 is not a multiple of 4",
    );
    refused(
        Frame::new(
            Fourcc::P010,
            Modifier::LINEAR,
            8,
            8,
            [plane(&b, 1, 16), plane(&b, 1024, 16)],
        ),
        "plane 0: offset 1 is not a multiple of 2",
    );
    refused(
        Frame::new(Fourcc::NV12, Modifier::LINEAR, 64, 32, [plane(&b, 0, 64)]),
        "NV12 has 2 planes, the frame gives 1",
    );
    refused(
        Frame::new(Fourcc::NV12, Modifier::LINEAR, 64, 32, []),
        "0 planes (a frame has 1 to 4)",
    );
    refused(
        Frame::new(
            Fourcc::NV12,
            Modifier::LINEAR,
            1,
            1,
            (0..5).map(|i| plane(&b, i * 64, 64)),
        ),
        "5 planes (a frame has 1 to 4)",
    );
    refused(
        Frame::new(Fourcc::NV12, Modifier::LINEAR, 0, 32, [plane(&b, 0, 64)]),
        "size 0x32 is empty",
    );
    refused(
        Frame::new(
            Fourcc::from_bytes(*b"ZZZZ"),
            Modifier::LINEAR,
            64,
            32,
            [plane(&b, 0, 64)],
        ),
        "format ZZZZ is unknown to this library",
    );
}

#[test]
fn non_linear_frames_are_checked_only_where_possible() {
    let b = buf(4096);
    // I915_FORMAT_MOD_Y_TILED_CCS-like: an extra (compression) plane, a
    // stride the library cannot judge; carried through unchanged.
    let tiled = Modifier((1 << 56) | 4);
    let f = Frame::new(
        Fourcc::NV12,
        tiled,
        64,
        32,
        [plane(&b, 0, 7), plane(&b, 2048, 1), plane(&b, 4000, 3)],
    )
    .unwrap();
    assert_eq!(f.modifier(), tiled);
    assert_eq!(f.to_string(), "NV12 64x32 (INTEL:0x4), 3 planes");
    let f = Frame::new(
        Fourcc::from_bytes(*b"ZZZZ"),
        Modifier::INVALID,
        64,
        32,
        [plane(&b, 0, 64)],
    )
    .unwrap();
    assert_eq!(f.to_string(), "ZZZZ 64x32 (INVALID), 1 plane");
    refused(
        Frame::new(Fourcc::NV12, tiled, 64, 32, [plane(&b, 4096, 64)]),
        "plane 0: offset 4096 is past the end of its buffer (4096 bytes)",
    );
    refused(
        Frame::new(Fourcc::NV12, tiled, 64, 32, [plane(&b, 0, 0)]),
        "plane 0 has stride 0",
    );
    refused(
        Frame::new(Fourcc::NV12, Modifier::INVALID, 0, 1, [plane(&b, 0, 1)]),
        "size 0x1 is empty",
    );
}

#[test]
fn layouts_name_their_buffers_once_and_exactly() {
    let (a, b) = (buf(4096), buf(4096));
    let (layout, sizes) =
        FrameLayout::linear(Fourcc::NV12, 64, 32, 64, Placement::PerPlane).unwrap();
    assert_eq!(sizes, vec![2048, 1024]);
    Frame::from_layout(layout.clone(), vec![a.clone(), b.clone()]).unwrap();
    let e = Frame::from_layout(layout.clone(), vec![a.clone(), a.clone()]).unwrap_err();
    assert!(
        e.to_string()
            .contains("buffers 0 and 1 are the same memory"),
        "{e}"
    );
    let e = Frame::from_layout(layout.clone(), vec![a.clone()]).unwrap_err();
    assert!(
        e.to_string()
            .contains("plane 1 names buffer 1, the frame has 1"),
        "{e}"
    );
    let (one, _) = FrameLayout::linear(Fourcc::NV12, 64, 32, 64, Placement::Contiguous).unwrap();
    let e = Frame::from_layout(one, vec![a, b]).unwrap_err();
    assert!(
        e.to_string().contains("buffer 1 (") && e.to_string().contains("holds no plane"),
        "{e}"
    );
}

#[test]
fn plane_windows_cover_exactly_their_plane() {
    for placement in [Placement::Contiguous, Placement::PerPlane] {
        let opts = FrameOptions {
            placement,
            ..FrameOptions::default()
        };
        // 100x30 NV12: Y stride 128 × 30 rows, CbCr stride 128 × 15 rows;
        // contiguous, CbCr starts at 3840, not on a page boundary.
        let f = Frame::allocate(&Portable, Fourcc::NV12, 100, 30, &opts).unwrap();
        for i in 0..2 {
            let pm = f.map_plane(i, true).unwrap();
            assert_eq!(pm.stride(), 128);
            assert_eq!(pm.rows(), [30, 15][i]);
            assert_eq!(pm.len(), 128 * pm.rows() as usize);
            let mut w = pm.write().unwrap();
            let pattern: Vec<u8> = (0..pm.len())
                .map(|k| (k as u8) ^ (0x40 * i as u8 + 1))
                .collect();
            put(&mut w, 0, &pattern);
        }
        // Read back through a whole-buffer mapping at the plane offsets.
        for i in 0..2 {
            let p = f.plane(i).unwrap();
            let whole = get(&p.buffer.map_read_only().unwrap().read().unwrap());
            let len = 128 * [30, 15][i];
            let want: Vec<u8> = (0..len).map(|k| (k as u8) ^ (0x40 * i as u8 + 1)).collect();
            let at = p.offset as usize;
            assert_eq!(&whole[at..at + len], &want[..], "{placement:?} plane {i}");
            let pm = f.map_plane(i, false).unwrap();
            assert_eq!(get(&pm.read().unwrap()), want);
            let e = pm.write().unwrap_err();
            assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{e}");
        }
        if placement == Placement::Contiguous {
            assert_eq!(f.plane(1).unwrap().offset, 3840);
        }
        let e = f.map_plane(2, false).unwrap_err();
        assert!(
            e.to_string().contains("no plane 2 (the frame has 2)"),
            "{e}"
        );
    }
}

#[test]
fn layouts_encode_and_decode() {
    for placement in [Placement::Contiguous, Placement::PerPlane] {
        for format in Fourcc::known() {
            let (l, _) = FrameLayout::linear(format, 1280, 720, 64, placement).unwrap();
            let bytes = wire::encode(&l).unwrap();
            assert_eq!(bytes.len(), wire::encoded_len(l.planes.len()));
            assert_eq!(wire::decode(&bytes).unwrap(), l);
        }
    }
    let mut l = FrameLayout::linear(Fourcc::NV12, 64, 64, 64, Placement::Contiguous)
        .unwrap()
        .0;
    l.modifier = Modifier(0x0300_0000_0000_1234);
    assert_eq!(wire::decode(&wire::encode(&l).unwrap()).unwrap(), l);
    l.planes.clear();
    assert!(wire::encode(&l)
        .unwrap_err()
        .to_string()
        .contains("0 planes"));
}

#[test]
fn the_decoder_names_every_refusal() {
    let (l, _) = FrameLayout::linear(Fourcc::NV12, 64, 64, 64, Placement::PerPlane).unwrap();
    let good = wire::encode(&l).unwrap();
    type Mutation = Box<dyn Fn(&mut Vec<u8>)>;
    let cases: Vec<(Mutation, &str)> = vec![
        (
            Box::new(|b| b.truncate(10)),
            "shorter than the 28-byte header",
        ),
        (
            Box::new(|b| b.truncate(60)),
            "60 bytes for 2 planes (want 76)",
        ),
        (Box::new(|b| b.push(0)), "77 bytes for 2 planes"),
        (Box::new(|b| b[0] = b'X'), "bad magic"),
        (Box::new(|b| b[4] = 2), "version 2 is not supported"),
        (Box::new(|b| b[5] = 0), "plane count 0"),
        (Box::new(|b| b[5] = 5), "plane count 5"),
        (Box::new(|b| b[6] = 0), "buffer count 0"),
        (Box::new(|b| b[6] = 3), "buffer count 3"),
        (Box::new(|b| b[7] = 1), "reserved header byte"),
        (Box::new(|b| b[12..16].fill(0)), "size 0x64 is empty"),
        (Box::new(|b| b[16..20].fill(0)), "size 64x0 is empty"),
        (
            Box::new(|b| b[28 + 24] = 2),
            "plane 1 names buffer 2, the message carries 2",
        ),
        (Box::new(|b| b[28 + 3] = 1), "plane 0's reserved bytes"),
        (Box::new(|b| b[28 + 24] = 0), "buffer 1 holds no plane"),
    ];
    for (mutate, cause) in cases {
        let mut b = good.clone();
        mutate(&mut b);
        let e = wire::decode(&b).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Protocol, "{e}");
        assert!(e.to_string().contains(cause), "want {cause:?} in: {e}");
    }
    // A decoded layout is only geometry: the real buffers decide.
    let mut b = good.clone();
    b[28 + 8..28 + 16].copy_from_slice(&u64::MAX.to_le_bytes());
    let l = wire::decode(&b).unwrap();
    let bufs = vec![buf(4096), buf(4096)];
    let e = Frame::from_layout(l, bufs).unwrap_err();
    assert!(
        e.to_string().contains("plane 0 does not fit its buffer"),
        "{e}"
    );
}

proptest! {
    #[test]
    fn decoding_arbitrary_bytes_never_panics_and_is_canonical(
        bytes in proptest::collection::vec(any::<u8>(), 0..140)
    ) {
        if let Ok(l) = wire::decode(&bytes) {
            prop_assert_eq!(wire::encode(&l).unwrap(), bytes);
            // Checking against arbitrary sizes never panics either.
            let _ = l.check(&[4096, 1 << 40, 0, u64::MAX]);
        }
    }

    #[test]
    fn decoding_mutated_frames_never_panics(
        planes in 1usize..=4,
        flips in proptest::collection::vec((0usize..124, any::<u8>()), 1..6),
        cut in 0usize..130,
    ) {
        let fmt = [Fourcc::XRGB8888, Fourcc::NV12, Fourcc::YUV420, Fourcc::YUV420][planes - 1];
        let (mut l, _) = FrameLayout::linear(fmt, 320, 240, 64, Placement::PerPlane).unwrap();
        if planes == 4 {
            l.planes.push(PlaneLayout { buffer: 3, offset: 0, stride: 64 });
        }
        let mut b = wire::encode(&l).unwrap();
        for (at, v) in flips {
            if at < b.len() {
                b[at] = v;
            }
        }
        b.truncate(cut.max(1));
        if let Ok(d) = wire::decode(&b) {
            prop_assert!(!d.planes.is_empty() && d.planes.len() <= 4);
            prop_assert!(d.planes.iter().all(|p| p.buffer < d.buffer_count()));
            let _ = d.check(&[4096, 4096, 4096, 4096]);
        }
    }

    #[test]
    fn checked_layouts_keep_planes_inside_their_buffers(
        w in 1u32..5000, h in 1u32..5000,
        fmt in 0usize..15, align_log in 0u32..12, per_plane in any::<bool>(),
    ) {
        let format = Fourcc::known().nth(fmt).unwrap();
        let placement = if per_plane { Placement::PerPlane } else { Placement::Contiguous };
        let (l, sizes) = FrameLayout::linear(format, w, h, 1 << align_log, placement).unwrap();
        prop_assert!(l.check(&sizes).is_ok());
        // One byte less and the last plane of its buffer no longer fits.
        let mut short = sizes.clone();
        short[0] -= 1;
        prop_assert!(l.check(&short).is_err());
    }
}

fn dup(fd: std::os::fd::BorrowedFd<'_>) -> std::os::fd::OwnedFd {
    fd.try_clone_to_owned().unwrap()
}

#[test]
fn frames_travel_as_bytes_and_one_fd_per_buffer() {
    for placement in [Placement::Contiguous, Placement::PerPlane] {
        let opts = FrameOptions {
            placement,
            ..FrameOptions::default()
        };
        let f = Frame::allocate(&Portable, Fourcc::YUV420, 64, 48, &opts).unwrap();
        {
            let pm = f.map_plane(2, true).unwrap();
            put(&mut pm.write().unwrap(), 0, b"cr");
        }
        let (bytes, fds) = wire::encode_frame(&f).unwrap();
        assert_eq!(fds.len(), f.buffers().len(), "each fd once");
        // What a receiver gets: the bytes and its own copies of the fds.
        let fds: Vec<_> = fds.into_iter().map(dup).collect();
        let g = wire::decode_frame(&bytes, fds).unwrap();
        assert_eq!(g.layout(), f.layout());
        assert_eq!(g.to_string(), "YUV420 64x48 (LINEAR), 3 planes");
        let got = get(&g.map_plane(2, false).unwrap().read().unwrap());
        assert_eq!(&got[..2], b"cr", "the same memory");
    }
}

#[test]
fn received_frames_are_checked_against_the_fds_that_came() {
    let f = Frame::allocate(
        &Portable,
        Fourcc::NV12,
        64,
        64,
        &FrameOptions {
            placement: Placement::PerPlane,
            ..FrameOptions::default()
        },
    )
    .unwrap();
    let (bytes, fds) = wire::encode_frame(&f).unwrap();
    // Too few and too many fds.
    let e = wire::decode_frame(&bytes, vec![dup(fds[0])]).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Protocol);
    assert!(
        e.to_string()
            .contains("1 fds came with a frame of 2 buffers"),
        "{e}"
    );
    let three = vec![dup(fds[0]), dup(fds[1]), dup(fds[1])];
    let e = wire::decode_frame(&bytes, three).unwrap_err();
    assert!(
        e.to_string()
            .contains("3 fds came with a frame of 2 buffers"),
        "{e}"
    );
    // An fd that is no buffer.
    let null: std::os::fd::OwnedFd = std::fs::File::open("/dev/null").unwrap().into();
    let e = wire::decode_frame(&bytes, vec![dup(fds[0]), null]).unwrap_err();
    assert!(
        e.to_string()
            .contains("neither a dma-buf nor a sealed memfd"),
        "{e}"
    );
    // The same buffer twice (a peer naming one fd for two buffers).
    let e = wire::decode_frame(&bytes, vec![dup(fds[0]), dup(fds[0])]).unwrap_err();
    assert!(
        e.to_string()
            .contains("buffers 0 and 1 are the same memory"),
        "{e}"
    );
    // Two fds on one memory for planes that overlap in it: refused too.
    let b = buf(8192);
    let e = Frame::new(
        Fourcc::NV12,
        Modifier::LINEAR,
        64,
        64,
        [
            plane(&b, 0, 64),
            plane(&Buffer::from_fd(dup(b.fd()), "again").unwrap(), 2048, 64),
        ],
    )
    .unwrap_err();
    assert!(
        e.to_string()
            .contains("plane 1 (bytes 2048..4096) overlaps plane 0"),
        "{e}"
    );
    // Buffers smaller than the message claims: a 4 KiB buffer for a
    // chroma plane that the peer says starts at 1 MiB.
    let mut l = f.layout().clone();
    l.planes[1].offset = 1 << 20;
    let bytes = wire::encode(&l).unwrap();
    let e = wire::decode_frame(&bytes, vec![dup(fds[0]), dup(fds[1])]).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    assert!(
        e.to_string().contains("plane 1 does not fit its buffer"),
        "{e}"
    );
}
