//! Frames end to end, zero-copy, across processes: vivid captures
//! multi-planar frames (NV12: two planes in one buffer; NM12: one buffer
//! per plane; S-Video input, 720x576) into udmabuf frames; the same frames
//! are queued to vivid's multi-planar output and shared with a second
//! process over a pool of frames. The capture fence is the item's ready
//! fence, so the second process reads a frame only once the device has
//! written it; it checks every plane's bytes against what this process
//! read after the same fence (told on its standard input, per item, as a
//! hash of each plane).
//!
//! The second process is this test binary again, running the same test
//! with `V4L2_SHARE_CHILD` set, connected by `Channel::spawn_with_channel`.

mod vivid;

use std::io::{BufRead, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use dmabuf::endpoint::v4l2::{select_input, FormatRequest, FourCc, V4l2Capture, V4l2Output};
use dmabuf::endpoint::{DataPath, Endpoint, TransferOptions};
use dmabuf::share::pool::{Consumer, Producer};
use dmabuf::share::Channel;
use dmabuf::{Allocator, Backend, BufferKind, Fence, FenceStatus, Frame};
use vivid::{nodes, read_plane, FRAME_TIMEOUT};

const CHILD: &str = "V4L2_SHARE_CHILD";
/// vivid's S-Video input: 720x576 on both capture and output.
const SVIDEO_INPUT: u32 = 2;
const SLOTS: usize = 3;
const ITEMS: u64 = 6;

/// FNV-1a, 64 bits: enough to tell two planes apart.
fn hash(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn plane_hashes(f: &Frame) -> Vec<(usize, u64)> {
    (0..f.plane_count())
        .map(|p| {
            let bytes = read_plane(&f.map_plane(p, false).unwrap());
            (bytes.len(), hash(&bytes))
        })
        .collect()
}

/// The second process: takes every item, waits for it to be ready (the
/// capture fence), checks its frame and every plane's bytes against the
/// line the first process wrote for it, releases it.
fn child(fourcc: &str) {
    let ch = Channel::from_parent().unwrap();
    let mut consumer = Consumer::new(ch, Some(FRAME_TIMEOUT)).unwrap();
    assert_eq!(consumer.frames().len(), SLOTS);
    let want_buffers = if fourcc == "NV12" { 1 } else { 2 };
    for f in consumer.frames() {
        assert_eq!(f.to_string(), "NV12 720x576 (LINEAR), 2 planes");
        assert_eq!(
            f.buffers().len(),
            want_buffers,
            "{fourcc}: each buffer once"
        );
        for b in f.buffers() {
            assert_eq!(*b.kind(), BufferKind::Udmabuf, "the capture's own memory");
        }
    }
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    let mut n = 0;
    while let Some(item) = consumer.next(Some(FRAME_TIMEOUT)).unwrap() {
        assert_eq!(item.ready().status(), FenceStatus::Signalled);
        let f = item.frame().expect("a pool of frames");
        let got = plane_hashes(f);
        let line = lines.next().expect("a line per item").unwrap();
        let want: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(want[0], item.seq().to_string(), "items in order");
        for (p, (len, h)) in got.iter().enumerate() {
            assert_eq!(
                want[1 + p],
                format!("{len}:{h:016x}"),
                "item {} plane {p}: not what the first process read",
                item.seq()
            );
        }
        n += 1;
        item.release(Fence::Signalled).unwrap();
    }
    println!("CHILD verified {n} frames");
}

fn share_captured_frames(fourcc: &str) {
    if std::env::var(CHILD).is_ok() {
        return child(fourcc);
    }
    let n = nodes();
    select_input(&n.capture_mplane, SVIDEO_INPUT).unwrap();
    let req = FormatRequest {
        pixelformat: Some(FourCc::new(fourcc.as_bytes().try_into().unwrap())),
        ..FormatRequest::default()
    };
    let mut cap = V4l2Capture::open(&n.capture_mplane, &req, SLOTS as u32).unwrap();
    let mut out = V4l2Output::open(&n.output_mplane, &req, SLOTS as u32).unwrap();
    assert_eq!(cap.data_path(), DataPath::ZeroCopy);
    assert_eq!(out.data_path(), DataPath::ZeroCopy);
    let (cf, of) = (cap.format(), out.format());
    eprintln!("capture {cf}\noutput {of}");
    let layout = cf.layout().unwrap();
    assert_eq!(layout, of.layout().unwrap(), "capture {cf}, output {of}");
    assert_eq!(layout.to_string(), "NV12 720x576 (LINEAR), 2 planes");
    let alloc = Allocator::new(&Backend::Udmabuf).unwrap();
    let frames: Vec<Frame> = (0..SLOTS)
        .map(|i| {
            let buffers = cf
                .planes
                .iter()
                .map(|p| {
                    alloc
                        .allocate(u64::from(p.sizeimage), &format!("share-{i}"))
                        .unwrap()
                })
                .collect();
            Frame::from_layout(layout.clone(), buffers).unwrap()
        })
        .collect();
    let catt: Vec<_> = frames
        .iter()
        .map(|f| cap.attach_frame(f).unwrap())
        .collect();
    let oatt: Vec<_> = frames
        .iter()
        .map(|f| out.attach_frame(f).unwrap())
        .collect();

    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "--exact",
        &format!("share_captured_{}_frames", fourcc.to_lowercase()),
        "--nocapture",
        "--test-threads=1",
    ])
    .env(CHILD, "1")
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::inherit());
    let (channel, mut child) = Channel::spawn_with_channel(&mut cmd).unwrap();
    let mut to_child = child.stdin.take().unwrap();
    let mut producer = Producer::new_frames(frames.clone(), vec![channel]).unwrap();

    let opts = TransferOptions {
        timeout: FRAME_TIMEOUT,
        ..TransferOptions::default()
    };
    let mut outputs = Vec::new();
    let mut seen = Vec::new();
    for k in 1..=ITEMS {
        let lease = producer.acquire(Some(FRAME_TIMEOUT)).unwrap();
        let s = lease.slot();
        assert!(lease.frame().unwrap().buffers()[0].same_as(&frames[s].buffers()[0]));
        // Capture into the frame (waits until the output is done reading
        // its previous contents), show it on the output (waits for the
        // capture), and hand it to the second process with the capture
        // fence as its ready fence: nobody reads it before the device
        // wrote it.
        let c = cap.queue_frame(&catt[s], opts).unwrap();
        let o = out.queue_frame(&oatt[s], opts).unwrap();
        assert_eq!(lease.submit_all(c.clone().into()).unwrap(), k);
        c.wait(Some(FRAME_TIMEOUT)).unwrap();
        let rec = cap.frame_record(&catt[s]).unwrap();
        assert_eq!(rec.fence_seqno, c.seqno());
        assert!(!rec.is_error(), "{rec:?}");
        let hashes = plane_hashes(&frames[s]);
        let mut line = k.to_string();
        for (len, h) in &hashes {
            line.push_str(&format!(" {len}:{h:016x}"));
        }
        writeln!(to_child, "{line}").unwrap();
        to_child.flush().unwrap();
        seen.push(hashes);
        outputs.push((k, o));
    }
    producer.finish(Some(FRAME_TIMEOUT)).unwrap();
    drop(to_child);
    let deadline = Instant::now() + FRAME_TIMEOUT;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the second process did not end within {FRAME_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stdout = String::new();
    std::io::Read::read_to_string(child.stdout.as_mut().unwrap(), &mut stdout).unwrap();
    assert!(status.success(), "second process: {status}\n{stdout}");
    assert!(
        stdout.contains(&format!("CHILD verified {ITEMS} frames")),
        "{stdout}"
    );
    // The frames really were captured pictures, and they changed from one
    // capture to the next (vivid draws a counter on them).
    let (w, h) = (720usize, 576usize);
    for (i, f) in frames.iter().enumerate() {
        let y = read_plane(&f.map_plane(0, false).unwrap());
        let row = h / 2;
        let luma: Vec<u8> = (0..8).map(|b| y[row * w + (2 * b + 1) * w / 16]).collect();
        assert!(luma.windows(2).all(|p| p[0] > p[1]), "frame {i}: {luma:?}");
    }
    assert!(
        seen.windows(2).any(|p| p[0] != p[1]),
        "every capture hashed the same"
    );
    // The output finished all but the newest frame (vivid keeps showing
    // it until the next one comes).
    for (k, o) in &outputs[..outputs.len() - 1] {
        o.wait(Some(FRAME_TIMEOUT))
            .unwrap_or_else(|e| panic!("output of item {k}: {e}"));
    }
    drop(out);
    drop(cap);
    select_input(&n.capture_mplane, 0).unwrap();
}

#[test]
fn share_captured_nv12_frames() {
    share_captured_frames("NV12");
}

#[test]
fn share_captured_nm12_frames() {
    share_captured_frames("NM12");
}

fn field<'a>(out: &'a str, key: &str) -> &'a str {
    out.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}: ")))
        .unwrap_or_else(|| panic!("no '{key}:' line in:\n{out}"))
}

/// `dmabuf capture --share SOCKET` and `dmabuf capture --share SOCKET
/// --role consumer` as two processes: the consumer prints every frame as
/// the frame type says and writes every plane of every frame; the luma of
/// the colour bars falls from left to right in what it received.
#[test]
fn cli_capture_shares_frames_with_a_consumer_process() {
    let n = nodes();
    for (code, buffers) in [("NV12", 1), ("NM12", 2)] {
        let socket = format!("/tmp/capture-share-{code}.sock");
        let out = format!("/tmp/capture-share-{code}.raw");
        let producer = Command::new(dmabuf_lab_guest::cli())
            .args(["capture", "--device", &n.capture_mplane, "--frames", "4"])
            .args(["--width", "1280", "--height", "720", "--format", code])
            .args([
                "--backend",
                "udmabuf",
                "--share",
                &socket,
                "--timeout",
                "30",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let consumer = Command::new(dmabuf_lab_guest::cli())
            .args(["capture", "--share", &socket, "--role", "consumer"])
            .args(["--out", &out, "--timeout", "30"])
            .output()
            .unwrap();
        let producer = producer.wait_with_output().unwrap();
        let (pout, cout) = (
            String::from_utf8_lossy(&producer.stdout),
            String::from_utf8_lossy(&consumer.stdout),
        );
        let errs = format!(
            "{}\n{}",
            String::from_utf8_lossy(&producer.stderr),
            String::from_utf8_lossy(&consumer.stderr)
        );
        assert!(producer.status.success(), "{code} producer: {pout}\n{errs}");
        assert!(consumer.status.success(), "{code} consumer: {cout}\n{errs}");
        eprintln!("{code} producer:\n{pout}\n{code} consumer:\n{cout}");
        assert_eq!(field(&pout, "frame"), "NV12 1280x720 (LINEAR), 2 planes");
        assert_eq!(field(&pout, "data path"), "zero-copy");
        assert!(
            field(&pout, "format").contains(&format!("multi-planar, {buffers} buffer(s)")),
            "{pout}"
        );
        assert_eq!(field(&pout, "frames"), "4");
        for seq in 1..=4 {
            assert_eq!(
                field(&cout, &format!("item {seq}")),
                "NV12 1280x720 (LINEAR), 2 planes"
            );
        }
        assert_eq!(field(&cout, "frames"), "4");
        assert_eq!(field(&cout, "errors"), "0");
        let data = std::fs::read(&out).unwrap();
        assert_eq!(data.len(), 4 * 1_382_400);
        for f in data.chunks(1_382_400) {
            let row = 360 * 1280;
            let luma: Vec<u8> = (0..8).map(|b| f[row + (2 * b + 1) * 80]).collect();
            assert!(luma.windows(2).all(|p| p[0] > p[1]), "{code}: {luma:?}");
            assert!(f[921_600..].iter().any(|&b| b != 0x80 && b != 0));
        }
        assert!(
            !std::path::Path::new(&socket).exists(),
            "the producer removed its socket"
        );
    }
}
