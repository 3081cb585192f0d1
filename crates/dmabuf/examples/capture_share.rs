//! Capture frames from a V4L2 device straight into dma-bufs and share
//! them, zero-copy, with a second process over a pool of frames. The
//! capture fence is each item's ready fence, so the second process reads
//! a frame only once the device has written it; it hashes every plane and
//! prints one line per frame, which this process checks against what it
//! read itself after the same fence.
//!
//! ```text
//! capture_share [DEVICE [FRAMES [FOURCC]]]     (default /dev/video0 8 NV12)
//! ```
//!
//! It needs a V4L2 capture device and real dma-bufs (a DMA heap or
//! udmabuf): `lab/guest/tests/capture_share.rs` runs it in the lab against
//! vivid. `cargo run -p dmabuf --example capture_share -- /dev/video0`.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use dmabuf::endpoint::v4l2::{FormatRequest, FourCc, V4l2Capture};
use dmabuf::endpoint::TransferOptions;
use dmabuf::share::pool::{Consumer, Producer};
use dmabuf::share::Channel;
use dmabuf::{Allocator, Error, ErrorKind, Fence, Frame};

/// Frames in the pool (and buffer slots asked of the driver).
pub const SLOTS: usize = 3;
/// How long any one wait may take (a frame under emulation is slow).
pub const WAIT: Option<Duration> = Some(Duration::from_secs(30));

/// What [`share_capture`] did.
#[derive(Debug)]
pub struct Report {
    /// The frames' layout (`NV12 720x576 (LINEAR), 2 planes`).
    pub layout: String,
    /// Frames captured, shared and checked by the second process.
    pub frames: u64,
}

/// FNV-1a over a plane's bytes: enough to tell two pictures apart.
fn hash(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// `SEQ HASH…`: one line per frame, each plane's hash, read in a read
/// window (which waits for the frame's fences).
fn frame_line(seq: u64, frame: &Frame) -> dmabuf::Result<String> {
    let mut line = seq.to_string();
    for p in 0..frame.plane_count() {
        let bytes = frame.map_plane(p, false)?.read()?.to_vec();
        line.push_str(&format!(" {:016x}", hash(&bytes)));
    }
    Ok(line)
}

/// The capturing side: captures `frames` frames of `format` from `device`
/// into a pool of [`SLOTS`] frames shared with the process `consumer`
/// starts (which must call [`consume`] on `Channel::from_parent()`), and
/// checks the lines that process prints against its own.
pub fn share_capture(
    device: &Path,
    format: FourCc,
    frames: u64,
    mut consumer: Command,
) -> dmabuf::Result<Report> {
    let request = FormatRequest {
        pixelformat: Some(format),
        ..FormatRequest::default()
    };
    let mut cap = V4l2Capture::open(device, &request, SLOTS as u32)?;
    let fmt = cap.format();
    let layout = fmt.layout().map_err(|e| {
        Error::invalid(
            "capture_share",
            device.display().to_string(),
            format!("{fmt} has no frame layout to share: {e}"),
        )
    })?;
    // One frame per slot, one buffer per memory plane of the format.
    let alloc = Allocator::auto();
    let pool: Vec<Frame> = (0..SLOTS)
        .map(|i| {
            let buffers = fmt
                .planes
                .iter()
                .map(|p| alloc.allocate(u64::from(p.sizeimage), &format!("capture-{i}")))
                .collect::<dmabuf::Result<Vec<_>>>()?;
            Frame::from_layout(layout.clone(), buffers)
        })
        .collect::<dmabuf::Result<_>>()?;
    let attachments = pool
        .iter()
        .map(|f| cap.attach_frame(f))
        .collect::<dmabuf::Result<Vec<_>>>()?;

    consumer.stdout(Stdio::piped());
    let (channel, mut child) = Channel::spawn_with_channel(&mut consumer)?;
    let mut producer = Producer::new_frames(pool.clone(), vec![channel])?;
    let opts = TransferOptions::default();
    let mut mine = Vec::new();
    for _ in 0..frames {
        // A frame the second process has released: capture into it and
        // hand it over at once, its capture fence as the ready fence.
        let lease = producer.acquire(WAIT)?;
        let slot = lease.slot();
        let captured = cap.queue_frame(&attachments[slot], opts)?;
        let seq = lease.submit_all(Fence::User(captured.clone()))?;
        captured.wait(WAIT)?;
        mine.push(frame_line(seq, &pool[slot])?);
    }
    producer.finish(WAIT)?;
    for a in &attachments {
        cap.detach_frame(a)?;
    }
    let mut out = String::new();
    if let Some(mut s) = child.stdout.take() {
        s.read_to_string(&mut out)
            .map_err(|e| Error::io("capture_share", "second process", e))?;
    }
    let status = child
        .wait()
        .map_err(|e| Error::io("capture_share", "second process", e))?;
    // (Other output may share a line: a test harness names its test first.)
    let theirs: Vec<&str> = out
        .lines()
        .filter_map(|l| l.split_once("frame ").map(|(_, rest)| rest))
        .collect();
    if !status.success() || theirs != mine {
        return Err(Error::new(
            ErrorKind::Protocol,
            "capture_share",
            "second process",
            format!("it ended with {status} and saw {theirs:?}; this process read {mine:?}"),
        ));
    }
    Ok(Report {
        layout: layout.to_string(),
        frames,
    })
}

/// The receiving side: takes the pool from `channel`, and for each item
/// prints `frame SEQ HASH…` once its ready fence has signalled; returns
/// how many frames it read.
pub fn consume(channel: Channel) -> dmabuf::Result<u64> {
    let mut consumer = Consumer::new(channel, WAIT)?;
    let mut n = 0;
    while let Some(item) = consumer.next(WAIT)? {
        let Some(frame) = item.frame() else {
            return Err(Error::invalid(
                "capture_share",
                "pool",
                "the producer shared buffers, not frames",
            ));
        };
        println!("frame {}", frame_line(item.seq(), frame)?);
        n += 1;
        item.release(Fence::Signalled)?;
    }
    Ok(n)
}

fn main() -> dmabuf::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--consumer") {
        let n = consume(Channel::from_parent()?)?;
        eprintln!("consumer: {n} frames read");
        return Ok(());
    }
    let device = args.first().map_or("/dev/video0", String::as_str);
    let frames = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(8);
    let format: FourCc = args.get(2).map_or("NV12", String::as_str).parse()?;
    let exe = std::env::current_exe().map_err(|e| Error::io("capture_share", "this program", e))?;
    let mut child = Command::new(exe);
    child.arg("--consumer");
    let r = share_capture(Path::new(device), format, frames, child)?;
    println!(
        "{} frames of {} captured, shared and checked by a second process",
        r.frames, r.layout
    );
    Ok(())
}
