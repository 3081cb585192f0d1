//! V4L2 output from dma-buf frames, against vivid's output nodes in the
//! real 6.12 kernel: single- and multi-planar, a fence per frame that
//! signals when the device is done with it (DQBUF), ordered after CPU
//! write windows by the reservation, and planes sharing one buffer at
//! offsets (`data_offset`).

mod vivid;

use std::time::{Duration, Instant};

use dmabuf::endpoint::v4l2::{Format, FormatRequest, FourCc, V4l2Output};
use dmabuf::endpoint::{DataPath, Direction, Endpoint, TransferOptions};
use dmabuf::frame::{FrameOptions, Placement};
use dmabuf::mapping::{ReadOnly, WriteOnly};
use dmabuf::{Allocator, Backend, Errno, ErrorKind, FenceStatus, Frame};
use vivid::{nodes, write_plane, FRAME_TIMEOUT};

fn nv12(code: &[u8; 4]) -> FormatRequest {
    FormatRequest {
        pixelformat: Some(FourCc::new(code)),
        ..FormatRequest::default()
    }
}

/// A frame laid out as the driver's format says, each memory plane in
/// its own buffer of `sizeimage` bytes.
fn frame_for(fmt: &Format, alloc: &Allocator, name: &str) -> Frame {
    let layout = fmt.layout().unwrap();
    let buffers = fmt
        .planes
        .iter()
        .map(|p| alloc.allocate(u64::from(p.sizeimage), name).unwrap())
        .collect();
    Frame::from_layout(layout, buffers).unwrap()
}

fn output_frames(backend: Backend) {
    let n = nodes();
    let mut out = V4l2Output::open(&n.output_mplane, &nv12(b"NM12"), 3).unwrap();
    assert_eq!(out.direction(), Direction::ToDevice);
    assert_eq!(out.data_path(), DataPath::ZeroCopy);
    let fmt = out.format();
    eprintln!("vivid output format: {fmt}");
    assert!(fmt.multiplanar && fmt.planes.len() == 2, "{fmt}");
    let alloc = Allocator::new(&backend).unwrap();
    let fs: Vec<Frame> = (0..out.slots().min(3))
        .map(|i| frame_for(&fmt, &alloc, &format!("out-{i}")))
        .collect();
    for f in &fs {
        write_plane(&f.map_plane(0, true).unwrap(), &[0x80, 0x40]);
        write_plane(&f.map_plane(1, true).unwrap(), &[0x80]);
    }
    let atts: Vec<_> = fs.iter().map(|f| out.attach_frame(f).unwrap()).collect();
    // Streaming: every slot queued, then each slot queued again as soon
    // as its frame's fence says the device is done with it. vivid hands
    // a buffer back only once another one is queued (it keeps showing
    // the last frame), so the newest frame's fence stays pending.
    let mut fences: Vec<_> = atts
        .iter()
        .map(|a| out.queue_frame(a, TransferOptions::default()).unwrap())
        .collect();
    assert!(out.is_streaming());
    let want: Vec<u32> = fmt.planes.iter().map(|p| p.sizeimage).collect();
    let mut last = None;
    for k in 0..6 {
        let slot = k % atts.len();
        fences[slot].wait(Some(FRAME_TIMEOUT)).unwrap();
        let rec = out.frame_record(&atts[slot]).unwrap();
        assert_eq!(rec.fence_seqno, fences[slot].seqno(), "frame {k}");
        assert!(!rec.is_error());
        assert_eq!(rec.plane_bytesused, want, "{rec:?}");
        if let Some(prev) = last {
            assert!(rec.sequence > prev, "{} after {prev}", rec.sequence);
        }
        last = Some(rec.sequence);
        fences[slot] = out
            .queue_frame(&atts[slot], TransferOptions::default())
            .unwrap();
    }
    assert_eq!(out.frames_completed(), 6);
    // The newest frame is held by the device; stopping cancels it and
    // the others still queued.
    let newest = &fences[(6 + atts.len() - 1) % atts.len()];
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(newest.status(), FenceStatus::Active);
    out.stop().unwrap();
    assert_eq!(newest.status(), FenceStatus::Error(Errno::CANCELED));
    drop(out);
}

#[test]
fn output_mplane_frames_from_udmabuf_are_fenced_until_dequeued() {
    output_frames(Backend::Udmabuf);
}

#[test]
fn output_mplane_frames_from_the_system_heap_are_fenced_until_dequeued() {
    output_frames(Backend::Heap("system".into()));
}

#[test]
fn output_single_planar_buffers_through_the_endpoint_trait() {
    let n = nodes();
    let req = FormatRequest {
        pixelformat: Some(FourCc::new(b"YUYV")),
        ..FormatRequest::default()
    };
    let mut out = V4l2Output::open(&n.output, &req, 2).unwrap();
    // `AsFd` lends the device node itself.
    let node = rustix::fs::stat(&n.output).unwrap();
    let fd = std::os::fd::AsFd::as_fd(&out);
    assert_eq!(rustix::fs::fstat(fd).unwrap().st_rdev, node.st_rdev);
    let fmt = out.format();
    assert!(!fmt.multiplanar, "{fmt}");
    let alloc = Allocator::new(&Backend::Udmabuf).unwrap();
    let buf = alloc
        .allocate(u64::from(fmt.sizeimage), "out-yuyv")
        .unwrap();
    let buf2 = alloc
        .allocate(u64::from(fmt.sizeimage), "out-yuyv-2")
        .unwrap();
    let att = out.attach(&buf).unwrap();
    let att2 = out.attach(&buf2).unwrap();
    let e = out.attach(&buf).unwrap_err();
    assert_eq!(e.errno(), Some(Errno::BUSY));
    let e = out
        .transfer(
            &att,
            u64::from(fmt.sizeimage) - 1,
            TransferOptions::default(),
        )
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    let len = u64::from(fmt.sizeimage);
    let f = out.transfer(&att, len, TransferOptions::default()).unwrap();
    let f2 = out
        .transfer(&att2, len, TransferOptions::default())
        .unwrap();
    f.wait(Some(FRAME_TIMEOUT)).unwrap();
    assert_eq!(out.frame(&att).unwrap().bytesused, fmt.sizeimage);
    // Detaching the held buffer stops the stream: its fence is cancelled.
    out.detach(&att2).unwrap();
    let r = f2.wait(Some(Duration::from_secs(1)));
    assert!(
        matches!(&r, Err(e) if e.errno() == Some(Errno::CANCELED)),
        "{r:?}"
    );
    out.detach(&att).unwrap();
    let e = out.detach(&att).unwrap_err();
    assert_eq!(
        (e.kind(), e.errno()),
        (ErrorKind::NotFound, Some(Errno::PERM))
    );
    // A capture node is no output node.
    let e = V4l2Output::open(&n.capture, &req, 2).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotSupported, "{e}");
}

#[test]
fn output_waits_for_a_cpu_write_window_and_a_write_window_for_the_device() {
    let n = nodes();
    let mut out = V4l2Output::open(&n.output_mplane, &nv12(b"NV12"), 2).unwrap();
    let fmt = out.format();
    assert_eq!(fmt.planes.len(), 1, "{fmt}");
    let alloc = Allocator::new(&Backend::Udmabuf).unwrap();
    let frame = frame_for(&fmt, &alloc, "out-order");
    let other = frame_for(&fmt, &alloc, "out-order-2");
    let att = out.attach_frame(&frame).unwrap();
    let att2 = out.attach_frame(&other).unwrap();
    let luma = frame.map_plane(0, true).unwrap();
    // A write window is open: a non-blocking queue is refused, nothing
    // queued; a blocking one waits until the window closes.
    let w = luma.write().unwrap();
    let nb = TransferOptions {
        nonblocking: true,
        ..TransferOptions::default()
    };
    let e = out.queue_frame(&att, nb).unwrap_err();
    assert_eq!(
        (e.kind(), e.errno()),
        (ErrorKind::Busy, Some(Errno::BUSY)),
        "{e}"
    );
    assert!(e.to_string().contains("non-blocking"), "{e}");
    assert_eq!(out.pending(), 0);
    let hold = Duration::from_millis(300);
    let (fence, waited) = std::thread::scope(|s| {
        s.spawn(move || {
            std::thread::sleep(hold);
            w.end().unwrap();
        });
        let t = Instant::now();
        let f = out.queue_frame(&att, TransferOptions::default()).unwrap();
        (f, t.elapsed())
    });
    assert!(
        waited >= hold - Duration::from_millis(50),
        "queued after {waited:?}"
    );
    // The device reads the frame now (vivid hands it back once the next
    // one is queued): a write window waits for the frame's fence.
    let f2 = out.queue_frame(&att2, TransferOptions::default()).unwrap();
    let w = luma
        .mapping()
        .window::<WriteOnly>(luma.range(), Some(FRAME_TIMEOUT))
        .unwrap();
    assert!(
        fence.is_signalled(),
        "a write window opened while the device read the frame"
    );
    w.end().unwrap();
    // A read window does not wait for a device that only reads.
    let f3 = out.queue_frame(&att, TransferOptions::default()).unwrap();
    let r = luma
        .mapping()
        .window::<ReadOnly>(luma.range(), Some(Duration::ZERO))
        .unwrap();
    r.end().unwrap();
    f2.wait(Some(FRAME_TIMEOUT)).unwrap();
    out.detach_frame(&att).unwrap();
    assert_eq!(f3.status(), FenceStatus::Error(Errno::CANCELED));
    out.detach_frame(&att2).unwrap();
}

/// Multi-planar output takes a `data_offset` per plane, so both planes
/// of NM12 may live in one buffer (the frame's contiguous layout); the
/// device takes it and the fence signals.
#[test]
fn output_mplane_planes_may_share_one_buffer_at_offsets() {
    let n = nodes();
    let mut out = V4l2Output::open(&n.output_mplane, &nv12(b"NM12"), 2).unwrap();
    let fmt = out.format();
    let layout = fmt.layout().unwrap();
    let alloc = Allocator::new(&Backend::Udmabuf).unwrap();
    let luma = u64::from(fmt.planes[0].sizeimage);
    let shared = |name: &str| {
        let buf = alloc
            .allocate(luma + u64::from(fmt.planes[1].sizeimage), name)
            .unwrap();
        let mut l = layout.clone();
        l.planes[1].buffer = 0;
        l.planes[1].offset = luma;
        Frame::from_layout(l, vec![buf]).unwrap()
    };
    let (a, b) = (shared("out-shared-a"), shared("out-shared-b"));
    let att = out.attach_frame(&a).unwrap();
    let att_b = out.attach_frame(&b).unwrap();
    let f = out.queue_frame(&att, TransferOptions::default()).unwrap();
    out.queue_frame(&att_b, TransferOptions::default()).unwrap();
    f.wait(Some(FRAME_TIMEOUT)).unwrap();
    let rec = out.frame_record(&att).unwrap();
    eprintln!("shared-buffer output frame: {rec:?}");
    assert_eq!(rec.plane_data_offset, vec![0, luma as u32]);
    assert_eq!(rec.bytesused, fmt.sizeimage);
    assert_eq!(
        rec.plane_bytesused,
        vec![
            fmt.planes[0].sizeimage,
            luma as u32 + fmt.planes[1].sizeimage
        ]
    );
    // The same layout with a per-plane frame stride that is not the
    // driver's is refused before the device sees it.
    let wide = Frame::allocate(
        &alloc,
        layout.format,
        layout.width,
        layout.height,
        &FrameOptions {
            placement: Placement::PerPlane,
            stride_align: 4096,
            ..FrameOptions::default()
        },
    )
    .unwrap();
    let e = out.attach_frame(&wide).unwrap_err();
    assert!(e.to_string().contains("stride"), "{e}");
}
