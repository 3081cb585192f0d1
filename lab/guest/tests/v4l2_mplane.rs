//! Multi-planar V4L2 capture into dma-buf frames, against vivid
//! (`multiplanar=2`) in the real 6.12 kernel: NV12 (one memory plane)
//! and NM12 (one per plane) frames on udmabuf and system-heap buffers,
//! every plane's test pattern checked; frames that do not match the
//! driver's format refused by name; the endpoint contract; and what
//! videobuf2 does with planes that share a dma-buf.

mod vivid;

use std::os::fd::{AsFd, AsRawFd};
use std::time::Duration;

use dmabuf::endpoint::v4l2::{FormatRequest, FourCc, V4l2Capture};
use dmabuf::endpoint::{Endpoint, TransferOptions};
use dmabuf::frame::{FrameOptions, Placement};
use dmabuf::{Allocator, Backend, Errno, ErrorKind, FenceStatus, Fourcc, Frame};
use dmabuf_lab_guest::sys::v4l2 as sys;
use vivid::{nodes, read_plane, FRAME_TIMEOUT};

fn request(code: &[u8; 4]) -> FormatRequest {
    FormatRequest {
        width: Some(1280),
        height: Some(720),
        pixelformat: Some(FourCc::new(code)),
    }
}

fn frames(alloc: &Allocator, n: u32, placement: Placement) -> Vec<Frame> {
    (0..n)
        .map(|i| {
            let opts = FrameOptions {
                placement,
                name: format!("mplane-{i}"),
                ..FrameOptions::default()
            };
            Frame::allocate(alloc, Fourcc::NV12, 1280, 720, &opts).unwrap()
        })
        .collect()
}

/// vivid's default test pattern is 75% colour bars: white, yellow, cyan,
/// green, magenta, red, blue, black, left to right, so the luma of the
/// bar centres falls from left to right, and in the chroma plane blue
/// has the highest Cb, yellow the lowest, white and black are grey.
fn check_nv12(frame: &Frame) {
    let (w, h) = (frame.width() as usize, frame.height() as usize);
    let y = read_plane(&frame.map_plane(0, false).unwrap());
    let uv = read_plane(&frame.map_plane(1, false).unwrap());
    assert_eq!(y.len(), w * h, "{frame}: luma plane");
    assert_eq!(uv.len(), w * h / 2, "{frame}: chroma plane");
    let bar = |i: usize| (2 * i + 1) * w / 16;
    // A row in the middle, below vivid's text overlay.
    let row = h / 2;
    let luma: Vec<u8> = (0..8).map(|i| y[row * w + bar(i)]).collect();
    assert!(
        luma.windows(2).all(|p| p[0] > p[1]),
        "{frame}: luma of the 8 bars does not fall left to right: {luma:?}"
    );
    assert!(luma[0] > 150 && luma[7] < 40, "{frame}: {luma:?}");
    let crow = h / 4;
    let cb = |i: usize| uv[crow * w + (bar(i) & !1)];
    let cbs: Vec<u8> = (0..8).map(cb).collect();
    assert!(cbs[6] > 128 + 40, "{frame}: blue Cb {cbs:?}");
    assert!(cbs[1] < 128 - 40, "{frame}: yellow Cb {cbs:?}");
    assert!(
        cbs[0].abs_diff(128) < 10 && cbs[7].abs_diff(128) < 10,
        "{frame}: {cbs:?}"
    );
}

fn capture_nv12(backend: Backend, code: &[u8; 4], placement: Placement, memory_planes: usize) {
    let n = nodes();
    let mut cap = V4l2Capture::open(&n.capture_mplane, &request(code), 3).unwrap();
    let fmt = cap.format();
    assert!(cap.is_multiplanar() && fmt.multiplanar, "{fmt}");
    assert_eq!(fmt.pixelformat, FourCc::new(code));
    assert_eq!(fmt.planes.len(), memory_planes, "{fmt}");
    assert_eq!(fmt.sizeimage, 1280 * 720 * 3 / 2, "{fmt}");
    let layout = fmt.layout().unwrap();
    assert_eq!(layout.to_string(), "NV12 1280x720 (LINEAR), 2 planes");
    assert_eq!(layout.buffer_count(), memory_planes);
    let alloc = Allocator::new(&backend).unwrap();
    let fs = frames(&alloc, cap.slots().min(3), placement);
    let atts: Vec<_> = fs.iter().map(|f| cap.attach_frame(f).unwrap()).collect();
    // Zero first, so the checks prove the device wrote every plane.
    for f in &fs {
        for p in 0..2 {
            vivid::write_plane(&f.map_plane(p, true).unwrap(), &[0]);
        }
    }
    let fences: Vec<_> = atts
        .iter()
        .map(|a| cap.queue_frame(a, TransferOptions::default()).unwrap())
        .collect();
    for (a, fence) in atts.iter().zip(&fences) {
        fence.wait(Some(FRAME_TIMEOUT)).unwrap();
        let rec = cap.frame_record(a).unwrap();
        assert_eq!(rec.fence_seqno, fence.seqno());
        assert!(!rec.is_error());
        let want: Vec<u32> = fmt.planes.iter().map(|p| p.sizeimage).collect();
        assert_eq!(rec.plane_bytesused, want, "{rec:?}");
        assert!(rec.plane_data_offset.iter().all(|&o| o == 0), "{rec:?}");
        check_nv12(&a.frame);
    }
    assert_eq!(cap.pending(), 0);
    for a in &atts {
        cap.detach_frame(a).unwrap();
    }
    assert_eq!(cap.slots(), 0);
}

#[test]
fn mplane_nv12_frames_land_in_udmabuf_buffers() {
    capture_nv12(Backend::Udmabuf, b"NV12", Placement::Contiguous, 1);
}

#[test]
fn mplane_nv12_frames_land_in_system_heap_buffers() {
    capture_nv12(
        Backend::Heap("system".into()),
        b"NV12",
        Placement::Contiguous,
        1,
    );
}

#[test]
fn mplane_nm12_frames_land_in_a_udmabuf_per_plane() {
    capture_nv12(Backend::Udmabuf, b"NM12", Placement::PerPlane, 2);
}

#[test]
fn mplane_nm12_frames_land_in_a_heap_buffer_per_plane() {
    capture_nv12(
        Backend::Heap("system".into()),
        b"NM12",
        Placement::PerPlane,
        2,
    );
}

#[test]
fn mplane_frames_that_do_not_match_the_format_are_refused_by_name() {
    let n = nodes();
    let alloc = Allocator::new(&Backend::Udmabuf).unwrap();
    let mut cap = V4l2Capture::open(&n.capture_mplane, &request(b"NM12"), 2).unwrap();
    // NM12 wants a buffer per plane; a contiguous frame puts plane 1 at
    // an offset, which capture cannot honour.
    let one = &frames(&alloc, 1, Placement::Contiguous)[0];
    let e = cap.attach_frame(one).unwrap_err();
    assert_eq!(e.errno(), Some(Errno::INVAL), "{e}");
    assert!(e.to_string().contains("data_offset on capture"), "{e}");
    // Another size.
    let small = Frame::allocate(
        &alloc,
        Fourcc::NV12,
        640,
        360,
        &FrameOptions {
            placement: Placement::PerPlane,
            ..FrameOptions::default()
        },
    )
    .unwrap();
    let e = cap.attach_frame(&small).unwrap_err();
    assert!(e.to_string().contains("frame must match"), "{e}");
    // Another stride.
    let wide = Frame::allocate(
        &alloc,
        Fourcc::NV12,
        1280,
        720,
        &FrameOptions {
            placement: Placement::PerPlane,
            stride_align: 4096,
            ..FrameOptions::default()
        },
    )
    .unwrap();
    let e = cap.attach_frame(&wide).unwrap_err();
    assert!(
        e.to_string().contains("plane 0 has a stride of 4096"),
        "{e}"
    );
    // A lone buffer cannot carry two memory planes.
    let buf = alloc.allocate(1 << 21, "lone").unwrap();
    let e = cap.attach(&buf).unwrap_err();
    assert!(e.to_string().contains("2 memory planes"), "{e}");
    // A portable frame is no dma-buf.
    let portable = Allocator::new(&Backend::Portable).unwrap();
    let pf = &frames(&portable, 1, Placement::PerPlane)[0];
    let e = cap.attach_frame(pf).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotSupported, "{e}");
    // Nothing was attached by the refusals.
    assert!(cap.pending() == 0 && cap.slots() == 2);
}

#[test]
fn mplane_endpoint_contract_holds_for_frames() {
    let n = nodes();
    let alloc = Allocator::new(&Backend::Udmabuf).unwrap();
    let mut cap = V4l2Capture::open(&n.capture_mplane, &request(b"NM12"), 2).unwrap();
    let fs = frames(&alloc, 2, Placement::PerPlane);
    let a = cap.attach_frame(&fs[0]).unwrap();
    let e = cap.attach_frame(&fs[0]).unwrap_err();
    assert_eq!(e.errno(), Some(Errno::BUSY), "{e}");
    // A buffer of an attached frame cannot be attached alone either.
    let e = cap.attach_frame(
        &Frame::from_layout(fs[0].layout().clone(), fs[0].buffers().to_vec()).unwrap(),
    );
    assert_eq!(e.unwrap_err().errno(), Some(Errno::BUSY));
    let b = cap.attach_frame(&fs[1]).unwrap();
    assert_ne!(a.id, b.id);
    // A queued frame: a read window on it waits for the frame.
    let fa = cap.queue_frame(&a, TransferOptions::default()).unwrap();
    let map = fs[0].map_plane(0, false).unwrap();
    let w = map
        .mapping()
        .window::<dmabuf::mapping::ReadOnly>(map.range(), Some(FRAME_TIMEOUT))
        .unwrap();
    assert!(
        fa.is_signalled(),
        "the read window opened before the frame's fence signalled"
    );
    w.end().unwrap();
    // Detaching a queued frame cancels it.
    let fb = cap.queue_frame(&b, TransferOptions::default()).unwrap();
    let again = cap.queue_frame(&b, TransferOptions::default()).unwrap_err();
    assert_eq!(again.errno(), Some(Errno::BUSY));
    cap.detach_frame(&b).unwrap();
    // Cancelled, unless vivid finished it just before the stream-off.
    let r = fb.wait(Some(Duration::from_secs(5)));
    assert!(
        matches!(
            fb.status(),
            FenceStatus::Signalled | FenceStatus::Error(Errno::CANCELED)
        ),
        "{r:?} {:?}",
        fb.status()
    );
    // Detached: EPERM, for the frame API and the buffer API alike.
    let e = cap.queue_frame(&b, TransferOptions::default()).unwrap_err();
    assert_eq!(
        (e.kind(), e.errno()),
        (ErrorKind::NotFound, Some(Errno::PERM)),
        "{e}"
    );
    let e = cap.detach_frame(&b).unwrap_err();
    assert_eq!(e.errno(), Some(Errno::PERM));
    // Another endpoint's attachment is unknown here.
    let mut other = V4l2Capture::open(&n.capture, &FormatRequest::default(), 2).unwrap();
    let e = other.detach_frame(&a).unwrap_err();
    assert_eq!(e.errno(), Some(Errno::PERM));
    drop(other);
    cap.detach_frame(&a).unwrap();
}

/// What videobuf2 does when both memory planes of NM12 name one dma-buf
/// with the chroma at a `data_offset` (raw ioctls, recorded in
/// docs/kernel-findings.md): QBUF accepts it, the driver sets
/// `data_offset` 0 and writes both planes at the start of the dma-buf.
#[test]
fn mplane_capture_ignores_data_offset_of_planes_sharing_a_dma_buf() {
    let n = nodes();
    let dev = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&n.capture_mplane)
        .unwrap();
    let t = sys::V4L2_BUF_TYPE_VIDEO_CAPTURE_MPLANE;
    let mut fmt = sys::g_fmt(dev.as_fd(), t).unwrap();
    fmt.set_mp(1280, 720, b"NM12");
    sys::s_fmt(dev.as_fd(), &mut fmt).unwrap();
    assert_eq!(fmt.num_planes(), 2);
    let mut req = sys::Requestbuffers {
        count: 2,
        type_: t,
        memory: sys::V4L2_MEMORY_DMABUF,
        ..Default::default()
    };
    sys::reqbufs(dev.as_fd(), &mut req).unwrap();
    let alloc = Allocator::new(&Backend::Udmabuf).unwrap();
    let buf = alloc.allocate(1280 * 720 * 2, "shared-planes").unwrap();
    vivid::zero_buffer(&buf);
    let mut planes = [sys::Plane::default(); 2];
    for (i, pl) in planes.iter_mut().enumerate() {
        pl.m = buf.fd().as_raw_fd() as u32 as u64;
        pl.length = buf.size() as u32;
        pl.data_offset = if i == 1 { 1280 * 720 } else { 0 };
    }
    let mut vb = sys::Buffer {
        index: 0,
        type_: t,
        memory: sys::V4L2_MEMORY_DMABUF,
        ..Default::default()
    };
    let q = sys::qbuf_planes(dev.as_fd(), &mut vb, &mut planes);
    eprintln!("QBUF of two planes in one dma-buf: {q:?}");
    q.unwrap();
    sys::stream(dev.as_fd(), t, true).unwrap();
    let start = std::time::Instant::now();
    let mut out = [sys::Plane::default(); 2];
    let mut db = sys::Buffer {
        type_: t,
        memory: sys::V4L2_MEMORY_DMABUF,
        ..Default::default()
    };
    loop {
        match sys::dqbuf_planes(dev.as_fd(), &mut db, &mut out) {
            Ok(()) => break,
            Err(Errno::AGAIN) if start.elapsed() < FRAME_TIMEOUT => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(e) => panic!("DQBUF: {e:?}"),
        }
    }
    sys::stream(dev.as_fd(), t, false).unwrap();
    eprintln!(
        "dequeued: bytesused {:?}, data_offset {:?}",
        out.iter().map(|p| p.bytesused).collect::<Vec<_>>(),
        out.iter().map(|p| p.data_offset).collect::<Vec<_>>()
    );
    assert_eq!(
        out[1].data_offset, 0,
        "the driver kept the application's data_offset"
    );
    // The chroma was written at offset 0 over the luma: the second half of
    // the dma-buf, where the application put the chroma, is untouched.
    let bytes = vivid::read_buffer(&buf);
    let tail_nz = bytes[1280 * 720..].iter().filter(|&&b| b != 0).count();
    let head_nz = bytes[..1280 * 720].iter().filter(|&&b| b != 0).count();
    eprintln!("non-zero bytes: first half {head_nz}, second half {tail_nz}");
    assert_eq!(tail_nz, 0);
    assert!(head_nz > 1280 * 720 / 2);
    let mut req0 = sys::Requestbuffers { count: 0, ..req };
    sys::reqbufs(dev.as_fd(), &mut req0).unwrap();
}

fn field<'a>(out: &'a str, key: &str) -> &'a str {
    out.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}: ")))
        .unwrap_or_else(|| panic!("no '{key}:' line in:\n{out}"))
}

/// `dmabuf capture --format NV12|NM12` on the multi-planar node: the
/// frame is printed as the frame type says, every frame's planes are
/// written out (luma then chroma), and the luma of the colour bars falls
/// from left to right in the files too.
#[test]
fn mplane_cli_capture_takes_a_format_and_prints_frames() {
    let n = nodes();
    for (code, buffers) in [("NV12", 1), ("NM12", 2)] {
        let dir = format!("/tmp/cli-mplane-{code}/");
        let out = std::process::Command::new(dmabuf_lab_guest::cli())
            .args(["capture", "--device", &n.capture_mplane, "--frames", "3"])
            .args(["--width", "1280", "--height", "720", "--format", code])
            .args(["--backend", "udmabuf", "--out", &dir])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{code}: {stdout}\n{stderr}");
        assert_eq!(field(&stdout, "frame"), "NV12 1280x720 (LINEAR), 2 planes");
        assert!(
            field(&stdout, "format").contains(&format!("multi-planar, {buffers} buffer(s)")),
            "{stdout}"
        );
        assert_eq!(field(&stdout, "frames"), "3");
        assert_eq!(field(&stdout, "bytes"), (3 * 1_382_400).to_string());
        for i in 0..3 {
            let data = std::fs::read(format!("{dir}frame-{i:06}.raw")).unwrap();
            assert_eq!(data.len(), 1_382_400);
            let row = 360 * 1280;
            let luma: Vec<u8> = (0..8).map(|b| data[row + (2 * b + 1) * 80]).collect();
            assert!(luma.windows(2).all(|p| p[0] > p[1]), "{code}: {luma:?}");
            assert!(data[921_600..].iter().any(|&b| b != 0x80 && b != 0));
        }
    }
    // A pixel format the node does not do is refused, naming both.
    let out = std::process::Command::new(dmabuf_lab_guest::cli())
        .args(["capture", "--device", &n.capture_mplane, "--frames", "1"])
        .args(["--format", "ZZZZ", "--backend", "udmabuf"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("does not do ZZZZ"), "{stderr}");
}

/// A frame whose second buffer has a CPU window open: the queue is
/// refused as busy, nothing is queued, and the fence published on the
/// first buffer is ended, so a window there opens at once.
#[test]
fn mplane_a_busy_second_buffer_queues_nothing() {
    let n = nodes();
    let alloc = Allocator::new(&Backend::Udmabuf).unwrap();
    let mut cap = V4l2Capture::open(&n.capture_mplane, &request(b"NM12"), 2).unwrap();
    let f = &frames(&alloc, 1, Placement::PerPlane)[0];
    let att = cap.attach_frame(f).unwrap();
    let chroma = f.map_plane(1, false).unwrap();
    let w = chroma.read().unwrap();
    let nb = TransferOptions {
        nonblocking: true,
        ..TransferOptions::default()
    };
    let e = cap.queue_frame(&att, nb).unwrap_err();
    assert_eq!(
        (e.kind(), e.errno()),
        (ErrorKind::Busy, Some(Errno::BUSY)),
        "{e}"
    );
    assert_eq!(cap.pending(), 0);
    assert!(!cap.is_streaming());
    let luma = f.map_plane(0, true).unwrap();
    let lw = luma
        .mapping()
        .window::<dmabuf::mapping::WriteOnly>(luma.range(), Some(Duration::ZERO))
        .unwrap();
    lw.end().unwrap();
    w.end().unwrap();
    // With the window closed the frame is captured.
    let fence = cap.queue_frame(&att, TransferOptions::default()).unwrap();
    fence.wait(Some(FRAME_TIMEOUT)).unwrap();
    check_nv12(f);
}
