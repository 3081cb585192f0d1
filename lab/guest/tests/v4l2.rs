//! V4L2 capture into dma-bufs, against vivid in the real 6.12 kernel:
//! frames land straight in udmabuf and system-heap buffers, fences signal
//! in queue order, CPU read windows wait for them, detaching cancels what is
//! queued, portable buffers are refused; and `dmabuf capture` as a process.

use std::process::Command;
use std::time::{Duration, Instant};

use dmabuf::endpoint::v4l2::{Format, FormatRequest, FourCc, V4l2Capture};
use dmabuf::endpoint::{Attachment, DataPath, Direction, Endpoint, TransferOptions};
use dmabuf::{
    Allocate, Allocator, Backend, Buffer, Errno, ErrorKind, Fence, FenceStatus, Portable, UserFence,
};
use dmabuf_lab_guest::{cli, load_module, require_lab, wait_for_path};

const DEVICE: &str = "/dev/video0";
/// Under TCG vivid delivers ~6 frames per second; be generous.
const FRAME_TIMEOUT: Duration = Duration::from_secs(20);

fn vivid() {
    require_lab();
    load_module("vivid", "n_devs=1 node_types=0x1").unwrap();
    wait_for_path(DEVICE, Duration::from_secs(10)).unwrap();
}

/// vivid's default format. The format is device state that outlives an
/// open file, so every test asks for the one it expects.
fn default_format() -> FormatRequest {
    FormatRequest {
        width: Some(640),
        height: Some(360),
        pixelformat: Some(FourCc::new(b"YUYV")),
    }
}

fn open(n: u32) -> V4l2Capture {
    V4l2Capture::open(DEVICE, &default_format(), n).unwrap()
}

fn allocator(backend: Backend) -> Allocator {
    Allocator::new(&backend).unwrap()
}

fn user(f: &Fence) -> &UserFence {
    match f {
        Fence::User(u) => u,
        other => panic!("expected a user fence, got {}", other.describe()),
    }
}

/// Attaches `n` fresh buffers of one frame each.
fn attach_n(cap: &mut V4l2Capture, alloc: &Allocator, n: u32) -> Vec<Attachment> {
    let size = u64::from(cap.format().sizeimage);
    (0..n)
        .map(|i| {
            let buf = alloc.allocate(size, &format!("v4l2-test-{i}")).unwrap();
            cap.attach(&buf).unwrap()
        })
        .collect()
}

fn frame_len(cap: &V4l2Capture) -> u64 {
    u64::from(cap.format().sizeimage)
}

/// Reads the frame in `buf` in a read window: (non-zero bytes, first 64 bytes).
fn inspect(buf: &Buffer, len: usize) -> (usize, Vec<u8>) {
    let map = buf.map_read_only().unwrap();
    let w = map.read().unwrap();
    let bytes = w.to_vec();
    let nz = bytes[..len].iter().filter(|&&b| b != 0).count();
    let head = bytes[..64].to_vec();
    w.end().unwrap();
    (nz, head)
}

fn capture_into(backend: Backend) {
    vivid();
    let mut cap = open(4);
    assert_eq!(cap.direction(), Direction::FromDevice);
    assert_eq!(cap.data_path(), DataPath::ZeroCopy);
    let fmt: Format = cap.format();
    // vivid's default format is 640x360 YUYV, 460800 bytes per frame.
    assert_eq!((fmt.width, fmt.height), (640, 360), "{fmt}");
    assert_eq!(fmt.pixelformat, FourCc::new(b"YUYV"));
    assert_eq!(fmt.sizeimage, 460_800);
    let alloc = allocator(backend.clone());
    let slots = cap.slots();
    let atts = attach_n(&mut cap, &alloc, slots);
    for a in &atts {
        // Fill with zeros first, so "not all zero" proves the device wrote.
        let map = a.buffer.map().unwrap();
        map.write().unwrap().fill(0);
    }
    let opts = TransferOptions::default();
    let fences: Vec<Fence> = atts
        .iter()
        .map(|a| cap.transfer(a, frame_len(&cap), opts).unwrap())
        .collect();
    assert!(cap.is_streaming());
    let mut last_seq = None;
    for (a, f) in atts.iter().zip(&fences) {
        f.wait(Some(FRAME_TIMEOUT)).unwrap();
        let frame = cap.frame(a).expect("a frame record after the fence");
        assert_eq!(frame.fence_seqno, user(f).seqno());
        assert_eq!(frame.bytesused, fmt.sizeimage, "{frame:?}");
        assert!(!frame.is_error());
        if let Some(prev) = last_seq {
            assert!(frame.sequence > prev, "{} after {prev}", frame.sequence);
        }
        last_seq = Some(frame.sequence);
        let (nz, head) = inspect(&a.buffer, fmt.sizeimage as usize);
        assert!(
            nz > fmt.sizeimage as usize / 4,
            "{backend}: only {nz} non-zero bytes in the frame (head {head:02x?})"
        );
    }
    assert_eq!(cap.frames_completed(), atts.len() as u64);
    assert_eq!(cap.pending(), 0);
}

#[test]
fn frames_land_in_udmabuf_buffers() {
    capture_into(Backend::Udmabuf);
}

#[test]
fn frames_land_in_system_heap_buffers() {
    capture_into(Backend::Heap("system".into()));
}

#[test]
fn vivid_grants_at_least_two_slots() {
    vivid();
    // A request for one buffer is raised by videobuf2 (vivid wants two).
    let cap = open(1);
    // `AsFd` lends the device node itself.
    let node = rustix::fs::stat(DEVICE).unwrap();
    let fd = std::os::fd::AsFd::as_fd(&cap);
    assert_eq!(rustix::fs::fstat(fd).unwrap().st_rdev, node.st_rdev);
    assert_eq!(cap.requested_slots(), 1);
    assert_eq!(cap.slots(), 2, "vivid granted {} slots for 1", cap.slots());
    assert!(
        cap.buffer_capabilities() & dmabuf_lab_guest::sys::v4l2::V4L2_BUF_CAP_SUPPORTS_DMABUF != 0,
        "{:#x}",
        cap.buffer_capabilities()
    );
    // While this open file owns the queue, another one cannot have it.
    let e = V4l2Capture::open(DEVICE, &FormatRequest::default(), 2).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Busy, "{e}");
    assert!(e.to_string().contains("belong to another open file"), "{e}");
    drop(cap);
    let cap = open(6);
    assert_eq!(cap.slots(), 6);
}

#[test]
fn one_queued_buffer_is_enough_for_vivid() {
    vivid();
    // REQBUFS raised 1 to 2 slots, but vivid does not need two queued
    // buffers to start: a single one fills.
    let mut cap = open(1);
    assert_eq!(cap.slots(), 2);
    let alloc = allocator(Backend::Udmabuf);
    let atts = attach_n(&mut cap, &alloc, 1);
    let len = frame_len(&cap);
    let f0 = cap
        .transfer(&atts[0], len, TransferOptions::default())
        .unwrap();
    f0.wait(Some(FRAME_TIMEOUT)).unwrap();
    let first = cap.frame(&atts[0]).unwrap();
    let f1 = cap
        .transfer(&atts[0], len, TransferOptions::default())
        .unwrap();
    f1.wait(Some(FRAME_TIMEOUT)).unwrap();
    // While no buffer was queued, vivid kept counting (and dropping) frames.
    assert!(cap.frame(&atts[0]).unwrap().sequence > first.sequence);
}

#[test]
fn the_format_persists_across_opens() {
    vivid();
    let req = FormatRequest {
        width: Some(320),
        height: Some(180),
        pixelformat: None,
    };
    drop(V4l2Capture::open(DEVICE, &req, 2).unwrap());
    // An empty request keeps what the last opener set.
    let cap = V4l2Capture::open(DEVICE, &FormatRequest::default(), 2).unwrap();
    assert_eq!((cap.format().width, cap.format().height), (320, 180));
}

#[test]
fn the_same_buffer_captured_twice_gets_a_later_frame() {
    vivid();
    let mut cap = open(2);
    let alloc = allocator(Backend::Udmabuf);
    let atts = attach_n(&mut cap, &alloc, 2);
    let len = frame_len(&cap);
    let opts = TransferOptions::default();
    let f0 = cap.transfer(&atts[0], len, opts).unwrap();
    let f1 = cap.transfer(&atts[1], len, opts).unwrap();
    f0.wait(Some(FRAME_TIMEOUT)).unwrap();
    let first = cap.frame(&atts[0]).unwrap();
    let (nz_first, _) = inspect(&atts[0].buffer, len as usize);
    assert!(nz_first > 0);
    // Again, into the same buffer.
    let f2 = cap.transfer(&atts[0], len, opts).unwrap();
    assert!(user(&f2).seqno() > user(&f0).seqno());
    f1.wait(Some(FRAME_TIMEOUT)).unwrap();
    f2.wait(Some(FRAME_TIMEOUT)).unwrap();
    let second = cap.frame(&atts[0]).unwrap();
    assert_eq!(second.fence_seqno, user(&f2).seqno());
    assert!(
        second.sequence > first.sequence,
        "sequence {} then {}",
        first.sequence,
        second.sequence
    );
    assert!(second.timestamp > first.timestamp);
    assert_eq!(second.bytesused, first.bytesused);
    let (nz, _) = inspect(&atts[0].buffer, len as usize);
    assert!(nz > 0);
}

#[test]
fn fences_signal_in_queue_order_and_reads_wait_for_them() {
    vivid();
    let mut cap = open(4);
    let alloc = allocator(Backend::Udmabuf);
    let atts = attach_n(&mut cap, &alloc, 4);
    let len = frame_len(&cap);
    let opts = TransferOptions::default();
    let fences: Vec<Fence> = atts
        .iter()
        .map(|a| cap.transfer(a, len, opts).unwrap())
        .collect();
    // Opening a read window on the last buffer waits for its frame: the
    // fence is a write fence in the buffer's reservation.
    let map = atts[3].buffer.map_read_only().unwrap();
    let t = Instant::now();
    {
        let w = map.read().unwrap();
        assert!(
            fences[3].is_signalled(),
            "read window opened before the frame was done"
        );
        assert!(w.bytes().iter().any(|b| b != 0));
    }
    assert!(
        t.elapsed() > Duration::from_millis(1),
        "did not wait at all"
    );
    // Then every earlier fence has signalled too, with earlier frames.
    let mut stamps = Vec::new();
    for (a, f) in atts.iter().zip(&fences) {
        assert_eq!(f.status(), FenceStatus::Signalled);
        let fr = cap.frame(a).unwrap();
        stamps.push((user(f).seqno(), fr.sequence, fr.timestamp));
    }
    for w in stamps.windows(2) {
        assert!(
            w[0].0 < w[1].0 && w[0].1 < w[1].1 && w[0].2 <= w[1].2,
            "{stamps:?}"
        );
    }
    // The user fences record when they signalled, in order too.
    let ts: Vec<u64> = fences
        .iter()
        .map(|f| user(f).timestamp_ns().unwrap())
        .collect();
    assert!(ts.windows(2).all(|w| w[0] <= w[1]), "{ts:?}");
}

#[test]
fn detaching_a_queued_buffer_cancels_the_queue() {
    vivid();
    let mut cap = open(4);
    let alloc = allocator(Backend::Udmabuf);
    let atts = attach_n(&mut cap, &alloc, 4);
    let len = frame_len(&cap);
    let opts = TransferOptions::default();
    let fences: Vec<Fence> = atts
        .iter()
        .map(|a| cap.transfer(a, len, opts).unwrap())
        .collect();
    // Frames take ~150 ms each under TCG: the last one is certainly queued.
    cap.detach(&atts[3]).unwrap();
    assert!(!cap.is_streaming());
    assert_eq!(cap.pending(), 0);
    let e = fences[3].wait(Some(Duration::ZERO)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Cancelled, "{e}");
    assert_eq!(e.errno(), Some(Errno::CANCELED));
    for f in &fences[..3] {
        match f.status() {
            FenceStatus::Signalled | FenceStatus::Error(Errno::CANCELED) => {}
            s => panic!("fence {} is {s} after the detach", f.describe()),
        }
    }
    // A read window on a cancelled buffer opens at once: as in the kernel's
    // implicit sync, a wait covers completion, not success; the error is
    // reported on the transfer's own fence (checked above).
    let map = atts[3].buffer.map_read_only().unwrap();
    map.window::<dmabuf::mapping::ReadOnly>(0..map.len(), Some(Duration::ZERO))
        .unwrap();
    // The detached attachment is gone; the others capture again (the
    // stream restarts), their old cancelled fences notwithstanding.
    let e = cap.transfer(&atts[3], len, opts).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    let again: Vec<Fence> = atts[..3]
        .iter()
        .map(|a| cap.transfer(a, len, opts).unwrap())
        .collect();
    for f in &again {
        f.wait(Some(FRAME_TIMEOUT)).unwrap();
    }
    // Now the read window of a re-captured buffer works again.
    let (nz, _) = inspect(&atts[0].buffer, len as usize);
    assert!(nz > 0);
    // The kernel keeps a reference to a slot's dma-buf after the frame is
    // dequeued (fdinfo's count: references less the reader's own)…
    let refs = |b: &Buffer| b.dma_buf().unwrap().fdinfo().unwrap().count;
    assert_eq!(refs(&atts[0].buffer), Some(2));
    // …until everything is detached and the slots are released; attaching
    // asks for them again.
    for a in &atts[..3] {
        cap.detach(a).unwrap();
    }
    assert_eq!(cap.slots(), 0);
    assert_eq!(refs(&atts[0].buffer), Some(1));
    let buf = alloc.allocate(len, "again").unwrap();
    let a = cap.attach(&buf).unwrap();
    assert_eq!(cap.slots(), 4);
    let f = cap.transfer(&a, len, opts).unwrap();
    let buf2 = alloc.allocate(len, "again-2").unwrap();
    let a2 = cap.attach(&buf2).unwrap();
    let f2 = cap.transfer(&a2, len, opts).unwrap();
    f.wait(Some(FRAME_TIMEOUT)).unwrap();
    f2.wait(Some(FRAME_TIMEOUT)).unwrap();
}

#[test]
fn dropping_the_endpoint_cancels_and_releases() {
    vivid();
    let alloc = allocator(Backend::Heap("system".into()));
    let (fences, bufs) = {
        let mut cap = open(3);
        let atts = attach_n(&mut cap, &alloc, 3);
        let len = frame_len(&cap);
        let fences: Vec<Fence> = atts
            .iter()
            .map(|a| cap.transfer(a, len, TransferOptions::default()).unwrap())
            .collect();
        let bufs: Vec<Buffer> = atts.iter().map(|a| a.buffer.clone()).collect();
        (fences, bufs)
    };
    assert!(fences.iter().all(Fence::is_signalled));
    assert_eq!(
        fences[2].status(),
        FenceStatus::Error(Errno::CANCELED),
        "the last queued frame was cancelled"
    );
    // The kernel let go of the buffers (REQBUFS 0): only we hold them.
    for b in &bufs {
        let info = b.dma_buf().unwrap().fdinfo().unwrap();
        assert_eq!(
            info.count,
            Some(1),
            "{} still referenced: {info:?}",
            b.describe()
        );
    }
    // And the device can be opened and used again at once.
    let mut cap = open(2);
    let atts = attach_n(&mut cap, &alloc, 2);
    let len = frame_len(&cap);
    for a in &atts {
        cap.transfer(a, len, TransferOptions::default()).unwrap();
    }
    drop(cap);
}

#[test]
fn portable_buffers_are_refused_with_the_reason() {
    vivid();
    let mut cap = open(2);
    let buf = Portable
        .allocate(frame_len(&cap), "portable-frame")
        .unwrap();
    let e = cap.attach(&buf).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotSupported);
    assert_eq!(e.errno(), Some(Errno::INVAL));
    let msg = e.to_string();
    for want in [
        "v4l2 attach",
        "/dev/video0 (vivid)",
        "'portable-frame' (portable",
        "a portable buffer is a memfd, not a dma-buf",
        "can only import dma-bufs",
    ] {
        assert!(msg.contains(want), "{want:?} not in {msg}");
    }
}

#[test]
fn bad_sizes_and_double_queueing_are_refused() {
    vivid();
    let mut cap = open(2);
    let alloc = allocator(Backend::Udmabuf);
    let small = alloc.allocate(4096, "too-small").unwrap();
    let e = cap.attach(&small).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    assert!(e.to_string().contains("needs 460800"), "{e}");

    let atts = attach_n(&mut cap, &alloc, 2);
    // The endpoint contract: a duplicate attach is EBUSY.
    let e = cap.attach(&atts[0].buffer).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Busy, "{e}");
    assert_eq!(e.errno(), Some(Errno::BUSY), "{e}");
    assert!(e.to_string().contains("already attached"), "{e}");
    let third = alloc.allocate(frame_len(&cap), "third").unwrap();
    let e = cap.attach(&third).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Busy);
    assert!(e.to_string().contains("all 2 buffer slots"), "{e}");

    let len = frame_len(&cap);
    let opts = TransferOptions::default();
    let e = cap.transfer(&atts[0], len - 1, opts).unwrap_err();
    assert!(e.to_string().contains("less than a frame"), "{e}");
    let e = cap
        .transfer(&atts[0], atts[0].buffer.size() + 1, opts)
        .unwrap_err();
    assert!(e.to_string().contains("more than the buffer holds"), "{e}");
    let e = cap
        .transfer(&atts[0], len, TransferOptions { flags: 1, ..opts })
        .unwrap_err();
    assert!(e.to_string().contains("unknown transfer flags"), "{e}");

    let f = cap.transfer(&atts[0], len, opts).unwrap();
    let e = cap.transfer(&atts[0], len, opts).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Busy, "{e}");
    assert!(e.to_string().contains("still queued"), "{e}");
    // An open write window keeps the device out of a buffer.
    let map = atts[1].buffer.map().unwrap();
    let w = map.write().unwrap();
    let e = cap
        .transfer(
            &atts[1],
            len,
            TransferOptions {
                nonblocking: true,
                ..opts
            },
        )
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Busy, "{e}");
    assert_eq!(e.errno(), Some(Errno::BUSY), "{e}");
    assert!(e.to_string().contains("open CPU write window"), "{e}");
    assert!(e.to_string().contains("non-blocking"), "{e}");
    drop(w);
    let f1 = cap.transfer(&atts[1], len, opts).unwrap();
    f.wait(Some(FRAME_TIMEOUT)).unwrap();
    f1.wait(Some(FRAME_TIMEOUT)).unwrap();
}

/// The endpoint contract (see `dmabuf::endpoint`): unknown attachments
/// are NotFound with EPERM — never attached, detached, or another
/// endpoint's (ids are unique in the process, so the same buffer attached
/// to two endpoints gets two ids).
#[test]
fn unknown_attachments_are_eperm_and_ids_are_process_unique() {
    vivid();
    let alloc = allocator(Backend::Udmabuf);
    let mut cap = open(2);
    let size = u64::from(cap.format().sizeimage);
    let buf = alloc.allocate(size, "contract").unwrap();
    let a = cap.attach(&buf).unwrap();
    // Another endpoint (a pipe) attaches the same buffer: a different id,
    // and its attachment is unknown to the V4L2 endpoint.
    let (_r, w) = rustix::pipe::pipe().unwrap();
    let mut other = dmabuf::endpoint::FdEndpoint::new(w, Direction::ToDevice).unwrap();
    let b = other.attach(&buf).unwrap();
    assert_ne!(a.id, b.id, "attachment ids are unique in the process");
    let len = frame_len(&cap);
    let e = cap
        .transfer(&b, len, TransferOptions::default())
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "another endpoint's: {e}");
    assert_eq!(e.errno(), Some(Errno::PERM), "another endpoint's: {e}");
    let e = cap.detach(&b).unwrap_err();
    assert_eq!(e.errno(), Some(Errno::PERM), "another endpoint's: {e}");
    cap.detach(&a).unwrap();
    let e = cap
        .transfer(&a, len, TransferOptions::default())
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "detached: {e}");
    assert_eq!(e.errno(), Some(Errno::PERM), "detached: {e}");
    assert!(e.to_string().contains("not attached"), "{e}");
    let e = cap.detach(&a).unwrap_err();
    assert_eq!(e.errno(), Some(Errno::PERM), "detached twice: {e}");
}

#[test]
fn a_different_format_is_set_and_captured() {
    vivid();
    let req = FormatRequest {
        width: Some(320),
        height: Some(240),
        pixelformat: Some("RGB3".parse().unwrap()),
    };
    // vivid's webcam input has a fixed list of frame sizes (320x180,
    // 640x360, 640x480, 1280x720…): 320x240 is adjusted to 320x180, and
    // the endpoint reports what the driver chose.
    let mut cap = V4l2Capture::open(DEVICE, &req, 2).unwrap();
    let fmt = cap.format();
    assert_eq!((fmt.width, fmt.height), (320, 180), "{fmt}");
    assert_eq!(fmt.pixelformat.to_string(), "RGB3");
    assert_eq!(fmt.bytesperline, 320 * 3, "{fmt}");
    assert_eq!(fmt.sizeimage, 320 * 180 * 3, "{fmt}");
    let alloc = allocator(Backend::Udmabuf);
    let atts = attach_n(&mut cap, &alloc, 2);
    let fs: Vec<Fence> = atts
        .iter()
        .map(|a| {
            cap.transfer(a, frame_len(&cap), TransferOptions::default())
                .unwrap()
        })
        .collect();
    for (a, f) in atts.iter().zip(&fs) {
        f.wait(Some(FRAME_TIMEOUT)).unwrap();
        assert_eq!(cap.frame(a).unwrap().bytesused, 320 * 180 * 3);
    }
    drop(cap);
    assert_eq!(open(2).format().sizeimage, 460_800);
}

fn field<'a>(out: &'a str, key: &str) -> &'a str {
    out.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}: ")))
        .unwrap_or_else(|| panic!("no '{key}:' line in:\n{out}"))
}

#[test]
fn cli_capture_writes_frames_from_udmabuf_and_heap() {
    vivid();
    for (backend, kind) in [("udmabuf", "udmabuf"), ("heap", "heap:system")] {
        let dir = format!("/tmp/cli-frames-{backend}/");
        let out = Command::new(cli())
            .args([
                "capture",
                "--device",
                DEVICE,
                "--frames",
                "6",
                "--buffers",
                "3",
            ])
            .args(["--width", "640", "--height", "360", "--format", "YUYV"])
            .args(["--backend", backend, "--out", &dir])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{backend}: {stdout}\n{stderr}");
        assert_eq!(field(&stdout, "frames"), "6");
        assert_eq!(field(&stdout, "errors"), "0");
        assert!(field(&stdout, "backend").starts_with(kind), "{stdout}");
        assert_eq!(field(&stdout, "data path"), "zero-copy");
        assert_eq!(field(&stdout, "bytes"), (6 * 460_800).to_string());
        for i in 0..6 {
            let p = format!("{dir}frame-{i:06}.raw");
            let data = std::fs::read(&p).unwrap();
            assert_eq!(data.len(), 460_800, "{p}");
            assert!(data.iter().any(|&b| b != 0), "{p} is all zeros");
        }
    }
    // One file with all frames.
    let out = Command::new(cli())
        .args(["capture", "--frames", "3", "--backend", "udmabuf"])
        .args([
            "--out",
            "/tmp/cli-frames.yuv",
            "--width",
            "320",
            "--height",
            "180",
            "--format",
            "YUYV",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        field(&stdout, "format").starts_with("320x180 YUYV"),
        "{stdout}"
    );
    let len = std::fs::metadata("/tmp/cli-frames.yuv").unwrap().len();
    assert_eq!(len, 3 * 320 * 180 * 2);
}

#[test]
fn cli_capture_refuses_portable_buffers() {
    vivid();
    let out = Command::new(cli())
        .args(["capture", "--frames", "2", "--backend", "portable"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    // The CLI attaches a checked frame (YUYV has a DRM format); the error
    // names the operation, the device, the frame and the buffer.
    assert!(
        stderr.starts_with("dmabuf: v4l2 attach frame: /dev/video0 (vivid): frame YUYV ")
            && stderr.contains("buffer 'capture-0' (portable"),
        "{stderr}"
    );
    assert!(
        stderr.contains("a portable buffer is a memfd, not a dma-buf"),
        "{stderr}"
    );
}

#[test]
fn cli_alloc_makes_named_dma_bufs() {
    require_lab();
    for (backend, kind, exporter) in [
        ("udmabuf", "udmabuf", "udmabuf"),
        ("heap", "heap:system", "system"),
        ("auto", "heap:system", "system"),
    ] {
        let out = Command::new(cli())
            .args(["alloc", "--size", "1MiB", "--backend", backend])
            .args(["--name", "lab-alloc", "--fill", "pattern"])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{backend}: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(field(&stdout, "kind"), kind);
        assert_eq!(field(&stdout, "size"), "1048576");
        assert_eq!(field(&stdout, "exporter"), exporter);
        assert_eq!(field(&stdout, "name"), "lab-alloc");
        let inode: u64 = field(&stdout, "inode").parse().unwrap();
        assert!(inode > 0);
    }
}

#[test]
fn cli_alloc_holds_a_buffer_other_processes_can_see() {
    use std::io::{BufRead, BufReader};
    require_lab();
    let mut child = Command::new(cli())
        .args([
            "alloc",
            "--size",
            "64K",
            "--backend",
            "udmabuf",
            "--name",
            "held-in-lab",
        ])
        .arg("--hold-forever")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = String::new();
    for l in BufReader::new(child.stdout.take().unwrap()).lines() {
        let l = l.unwrap();
        out.push_str(&l);
        out.push('\n');
        if l.starts_with("holding:") {
            break;
        }
    }
    let fd = field(&out, "fd").to_string();
    let inode = field(&out, "inode").to_string();
    let fdinfo = std::fs::read_to_string(format!("/proc/{}/fdinfo/{fd}", child.id()));
    child.kill().unwrap();
    child.wait().unwrap();
    let fdinfo = fdinfo.unwrap();
    assert!(fdinfo.contains("exp_name:\tudmabuf"), "{fdinfo}");
    assert!(fdinfo.contains("name:\theld-in-lab"), "{fdinfo}");
    assert!(fdinfo.contains(&format!("ino:\t{inode}")), "{fdinfo}");
    assert!(fdinfo.contains("size:\t65536"), "{fdinfo}");
}
