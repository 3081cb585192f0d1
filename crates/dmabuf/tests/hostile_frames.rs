//! Frames over `Channel`: a frame travels with each buffer's fd once and
//! arrives checked; a hostile peer speaking the wire format with raw
//! `sendmsg` (a plane past its buffer, too many or too few fds, one memory
//! sent twice, a wrong fd kind or size, garbage layout bytes) gets every
//! refusal named, no fd kept, and the channel still usable.
//!
//! Every test holds `LOCK` (fd counts).

mod hostile_peer;

use std::os::fd::{AsFd, BorrowedFd};

use dmabuf::frame::{wire, FrameLayout, FrameOptions, Placement, PlaneLayout};
use dmabuf::share::{Channel, Message};
use dmabuf::{Errno, ErrorKind, Fourcc, Frame, Modifier, Portable};
use hostile_peer::*;
use proptest::prelude::*;
use rustix::fs::SealFlags;

const T_FRAME: u16 = 8;

/// A buffer description of a frame message: size, kind (1 portable),
/// no detail, name.
fn buffer_desc(size: u64, kind: u8, name: &str) -> Vec<u8> {
    let mut b = size.to_le_bytes().to_vec();
    b.extend_from_slice(&[kind, 0, name.len() as u8, 0]);
    b.extend_from_slice(name.as_bytes());
    b
}

/// A frame message body: id, the layout bytes, then the buffers.
fn frame_body(id: u64, layout: &[u8], buffers: &[Vec<u8>]) -> Vec<u8> {
    let mut b = id.to_le_bytes().to_vec();
    b.extend_from_slice(&[layout.len() as u8, 0, 0, 0]);
    b.extend_from_slice(layout);
    for d in buffers {
        b.extend_from_slice(d);
    }
    b
}

fn nv12(w: u32, h: u32, planes: &[(usize, u64, u64)]) -> FrameLayout {
    FrameLayout {
        format: Fourcc::NV12,
        modifier: Modifier::LINEAR,
        width: w,
        height: h,
        planes: planes
            .iter()
            .map(|&(buffer, offset, stride)| PlaneLayout {
                buffer,
                offset,
                stride,
            })
            .collect(),
    }
}

fn sealed(size: u64) -> std::os::fd::OwnedFd {
    memfd(size, SealFlags::SHRINK | SealFlags::GROW)
}

#[test]
fn frames_travel_with_each_buffer_once_and_arrive_checked() {
    let _g = lock();
    let base = open_fds();
    {
        let (a, b) = Channel::pair().unwrap();
        for (placement, fds) in [(Placement::Contiguous, 1), (Placement::PerPlane, 2)] {
            let opts = FrameOptions {
                placement,
                ..FrameOptions::default()
            };
            let f = Frame::allocate(&Portable, Fourcc::NV12, 1280, 720, &opts).unwrap();
            assert_eq!(f.buffers().len(), fds);
            for p in 0..2 {
                let pm = f.map_plane(p, true).unwrap();
                let mut w = pm.write().unwrap();
                w.bytes_mut()
                    .write_at(pm.len() - 3, &[b'p', b'0' + p as u8, fds as u8])
                    .unwrap();
            }
            a.send_frame(7, &f).unwrap();
            let (id, g) = b.recv_frame(T).unwrap();
            assert_eq!(id, 7);
            assert_eq!(g.to_string(), "NV12 1280x720 (LINEAR), 2 planes");
            assert_eq!(g.layout(), f.layout());
            assert_eq!(g.buffers().len(), fds, "each buffer once");
            for p in 0..2 {
                let pm = g.map_plane(p, false).unwrap();
                let got = pm.read().unwrap().to_vec();
                assert_eq!(
                    &got[got.len() - 3..],
                    &[b'p', b'0' + p as u8, fds as u8],
                    "plane {p}: the same memory"
                );
            }
        }
        // `recv_frame` wants a frame.
        a.send(&Message::Bye).unwrap();
        let e = b.recv_frame(T).unwrap_err();
        assert_err(
            &e,
            ErrorKind::Protocol,
            "a bye message came where a frame message was expected",
        );
    }
    assert_eq!(open_fds(), base);
}

#[test]
fn a_plane_that_does_not_fit_its_buffer_is_refused_by_name() {
    let _g = lock();
    let base = open_fds();
    {
        let (ch, raw) = pair();
        let m = sealed(4096);
        // NV12 64x32 in one buffer: luma 2048 bytes, chroma 1024 bytes at
        // 3584 ends at 4608, past the 4096-byte buffer.
        let layout = wire::encode(&nv12(64, 32, &[(0, 0, 64), (0, 3584, 64)])).unwrap();
        let bytes = msg(
            T_FRAME,
            &frame_body(1, &layout, &[buffer_desc(4096, 1, "f")]),
            1,
        );
        refused_then_ok(
            &ch,
            &raw,
            &bytes,
            &[m.as_fd()],
            "plane 1 does not fit its buffer: offset 3584 + stride 64 × 16 rows = 4608 bytes > buffer size 4096",
        );
        // The same layout in a buffer large enough is a frame.
        let big = sealed(8192);
        let ok = msg(
            T_FRAME,
            &frame_body(1, &layout, &[buffer_desc(8192, 1, "f")]),
            1,
        );
        raw.send(&ok, &[big.as_fd()]).unwrap();
        let (id, f) = ch.recv_frame(T).unwrap();
        assert_eq!((id, f.plane_count()), (1, 2));
        // Planes that overlap, a stride shorter than a row, a misaligned
        // chroma plane.
        for (planes, words) in [
            (
                [(0, 0, 64), (0, 1024, 64)],
                "plane 1 (bytes 1024..2048) overlaps plane 0",
            ),
            ([(0, 0, 32), (0, 2048, 64)], "plane 0: stride 32 is shorter"),
            (
                [(0, 0, 64), (0, 2049, 64)],
                "plane 1: offset 2049 is not a multiple of 2",
            ),
        ] {
            let layout = wire::encode(&nv12(64, 32, &planes)).unwrap();
            let bytes = msg(
                T_FRAME,
                &frame_body(2, &layout, &[buffer_desc(4096, 1, "f")]),
                1,
            );
            refused_then_ok(&ch, &raw, &bytes, &[m.as_fd()], words);
        }
        // The refusal names the frame.
        raw.send(
            &msg(
                T_FRAME,
                &frame_body(3, &layout, &[buffer_desc(4096, 1, "f")]),
                1,
            ),
            &[m.as_fd()],
        )
        .unwrap();
        let e = ch.recv(T).unwrap_err();
        assert_err(
            &e,
            ErrorKind::Protocol,
            "frame 3 (NV12 64x32 (LINEAR), 2 planes) refused",
        );
        assert_eq!(e.errno(), Some(Errno::INVAL), "the check's errno is kept");
    }
    assert_eq!(open_fds(), base);
}

#[test]
fn too_many_missing_and_duplicated_fds_are_refused() {
    let _g = lock();
    let base = open_fds();
    {
        let (ch, raw) = pair();
        let (y, uv) = (sealed(4096), sealed(4096));
        let two = wire::encode(&nv12(64, 32, &[(0, 0, 64), (1, 0, 64)])).unwrap();
        let descs = [buffer_desc(4096, 1, "y"), buffer_desc(4096, 1, "uv")];
        let body = frame_body(1, &two, &descs);
        // Fewer or more fds than the layout's buffers, the header telling
        // the truth about them or not.
        refused_then_ok(
            &ch,
            &raw,
            &msg(T_FRAME, &body, 1),
            &[y.as_fd()],
            "frame message needs 2 fds but 1 arrived",
        );
        refused_then_ok(
            &ch,
            &raw,
            &msg(T_FRAME, &body, 2),
            &[y.as_fd()],
            "header announces 2 fds but 1 arrived",
        );
        refused_then_ok(
            &ch,
            &raw,
            &msg(T_FRAME, &body, 3),
            &[y.as_fd(), uv.as_fd(), uv.as_fd()],
            "frame message needs 2 fds but 3 arrived",
        );
        let many: Vec<BorrowedFd<'_>> = (0..40).map(|_| y.as_fd()).collect();
        refused_then_ok(
            &ch,
            &raw,
            &msg(T_FRAME, &body, 40),
            &many,
            "more fds were attached than any message carries",
        );
        // One memory sent as both buffers: the same fd twice, or two fds
        // of one memfd.
        refused_then_ok(
            &ch,
            &raw,
            &msg(T_FRAME, &body, 2),
            &[y.as_fd(), y.as_fd()],
            "buffers 0 and 1 are the same memory",
        );
        let y2 = y.try_clone().unwrap();
        refused_then_ok(
            &ch,
            &raw,
            &msg(T_FRAME, &body, 2),
            &[y.as_fd(), y2.as_fd()],
            "buffers 0 and 1 are the same memory",
        );
        // A buffer no plane names, a plane naming a buffer not sent.
        let unused = wire::encode(&nv12(64, 32, &[(0, 0, 64), (0, 2048, 64)])).unwrap();
        let mut bad = unused.clone();
        bad[6] = 2;
        refused_then_ok(
            &ch,
            &raw,
            &msg(T_FRAME, &frame_body(1, &bad, &descs), 2),
            &[y.as_fd(), uv.as_fd()],
            "buffer 1 holds no plane",
        );
        let mut bad = two.clone();
        bad[6] = 1;
        refused_then_ok(
            &ch,
            &raw,
            &msg(T_FRAME, &frame_body(1, &bad, &descs[..1]), 1),
            &[y.as_fd()],
            "plane 1 names buffer 1, the message carries 1",
        );
        // And the honest message goes through.
        raw.send(&msg(T_FRAME, &body, 2), &[y.as_fd(), uv.as_fd()])
            .unwrap();
        let (_, f) = ch.recv_frame(T).unwrap();
        assert_eq!(f.buffers().len(), 2);
    }
    assert_eq!(open_fds(), base);
}

#[test]
fn buffers_of_a_frame_are_checked_like_buffer_messages() {
    let _g = lock();
    let base = open_fds();
    {
        let (ch, raw) = pair();
        let layout = wire::encode(&nv12(64, 32, &[(0, 0, 64), (0, 2048, 64)])).unwrap();
        let one = |size: u64, kind: u8| {
            msg(
                T_FRAME,
                &frame_body(1, &layout, &[buffer_desc(size, kind, "f")]),
                1,
            )
        };
        let good = sealed(4096);
        let unsealed = memfd(4096, SealFlags::empty());
        let (pr, _pw) = rustix::pipe::pipe().unwrap();
        refused_then_ok(
            &ch,
            &raw,
            &one(8192, 1),
            &[good.as_fd()],
            "buffer 0 ('f', 8192 bytes) refused: the message announces 8192 bytes but the fd has 4096",
        );
        refused_then_ok(&ch, &raw, &one(4096, 1), &[pr.as_fd()], "not a memfd");
        refused_then_ok(
            &ch,
            &raw,
            &one(4096, 1),
            &[unsealed.as_fd()],
            "memfd lacks F_SEAL_SHRINK and F_SEAL_GROW",
        );
        // A memfd announced as a dma-buf of some exporter.
        let mut d = 4096u64.to_le_bytes().to_vec();
        d.extend_from_slice(&[4, 5, 1, 0]);
        d.extend_from_slice(b"vividf");
        refused_then_ok(
            &ch,
            &raw,
            &msg(T_FRAME, &frame_body(1, &layout, &[d.clone()]), 1),
            &[good.as_fd()],
            "frame 1 (NV12 64x32 (LINEAR), 2 planes): buffer 0 ('f', 4096 bytes) refused: dma-buf: fd",
        );
        refused_then_ok(
            &ch,
            &raw,
            &msg(T_FRAME, &frame_body(1, &layout, &[d]), 1),
            &[good.as_fd()],
            "not a dma-buf (filesystem magic",
        );
    }
    assert_eq!(open_fds(), base);
}

#[test]
fn garbage_layouts_are_refused_by_field() {
    let _g = lock();
    let (ch, raw) = pair();
    let m = sealed(4096);
    let good = wire::encode(&nv12(64, 32, &[(0, 0, 64), (0, 2048, 64)])).unwrap();
    let desc = [buffer_desc(4096, 1, "f")];
    let send = |layout: &[u8], words: &str| {
        refused_then_ok(
            &ch,
            &raw,
            &msg(T_FRAME, &frame_body(1, layout, &desc), 1),
            &[m.as_fd()],
            words,
        )
    };
    let mut b = good.clone();
    b[0] = b'X';
    send(&b, "frame message: bad magic");
    let mut b = good.clone();
    b[4] = 2;
    send(&b, "version 2 is not supported");
    let mut b = good.clone();
    b[5] = 5;
    send(&b, "plane count 5");
    let mut b = good.clone();
    b[7] = 1;
    send(&b, "reserved header byte is not zero");
    let mut b = good.clone();
    b[12..16].copy_from_slice(&0u32.to_le_bytes());
    send(&b, "size 0x32 is empty");
    send(&good[..20], "20 bytes is shorter than the 28-byte header");
    send(&[], "0 bytes is shorter");
    // An unknown format, LINEAR: its planes cannot be checked.
    let mut b = good.clone();
    b[8..12].copy_from_slice(b"ZZZZ");
    send(&b, "is unknown to this library");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    /// Any layout bytes, any buffer count in the header: a frame only if
    /// it checks, never a panic, never an fd kept, the channel usable.
    #[test]
    fn noise_in_the_layout_is_refused_or_checked(
        noise in proptest::collection::vec(any::<u8>(), 0..140),
        keep in 0usize..140,
        fds in 1usize..5,
    ) {
        let _g = lock();
        let (ch, raw) = pair();
        let m: Vec<_> = (0..fds).map(|_| sealed(4096)).collect();
        // Half the cases: a real layout with bytes changed.
        let mut layout = wire::encode(&nv12(64, 32, &[(0, 0, 64), (0, 2048, 64)])).unwrap();
        if keep % 2 == 0 {
            layout = noise.clone();
        } else {
            for (i, v) in noise.iter().enumerate().take(3) {
                let at = (keep + i * 7) % layout.len();
                layout[at] = *v;
            }
        }
        let desc: Vec<Vec<u8>> = (0..fds).map(|_| buffer_desc(4096, 1, "f")).collect();
        let body = frame_body(1, &layout, &desc);
        let borrowed: Vec<BorrowedFd<'_>> = m.iter().map(|f| f.as_fd()).collect();
        let before = open_fds();
        raw.send(&msg(T_FRAME, &body, fds as u16), &borrowed).unwrap();
        match ch.recv(T) {
            Ok(Message::Frame { frame, .. }) => {
                prop_assert!(frame.layout().check(&vec![4096; frame.buffers().len()]).is_ok());
            }
            Ok(other) => prop_assert!(false, "got a {} message", other.type_name()),
            Err(e) => {
                prop_assert_eq!(e.kind(), ErrorKind::Protocol, "{}", e);
                prop_assert_eq!(open_fds(), before, "fds kept after: {}", e);
            }
        }
        raw.send(&msg(T_BYE, &[], 0), &[]).unwrap();
        prop_assert!(matches!(ch.recv(T).unwrap(), Message::Bye));
    }
}
