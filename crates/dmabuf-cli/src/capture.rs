//! `dmabuf capture`: capture video frames from a V4L2 device straight into
//! dma-bufs, then read each frame in a CPU window after its fence.
//!
//! # DOC: capture
//!
//! * Every buffer slot the driver grants gets a frame of its own from the
//!   chosen backend (one buffer per memory plane: one for single-planar
//!   nodes and formats such as NV12, one per plane for NM12 on
//!   multi-planar nodes), and all are queued at once (some drivers start
//!   capturing only once several buffers are queued); each buffer is
//!   queued again as soon as its frame has been read, until `--frames`
//!   frames were read. Frames still in the device then are cancelled.
//! * A frame is read only inside a read window, which waits for the
//!   frame's fence; each memory plane's `bytesused` bytes are written out.
//! * `--format` takes a V4L2 fourcc (`YUYV`, `NV12`, `NM12`, `RGB3`…).
//!   When the format has a DRM counterpart the buffers are attached as a
//!   checked frame, printed as `frame: NV12 1280x720 (LINEAR), 2 planes`;
//!   other formats with one memory plane (`MJPG`…) as plain buffers.
//! * `--out DIR` (an existing directory, or a path ending in `/`) gets
//!   one file per frame, `frame-000000.raw`…; any other `--out FILE` gets
//!   all frames one after another. Without `--out` frames are read and
//!   discarded.
//! * A portable buffer cannot be captured into (a device imports only
//!   dma-bufs): `--backend portable` fails with the library's message.
//! * `--share SOCKET` streams the captured frames to another process over
//!   the library's streaming pool, zero-copy: this process listens at
//!   SOCKET (only peers of its own user, as `dmabuf stream --role
//!   producer` does; the file is removed at the end, also on SIGTERM,
//!   SIGINT and SIGHUP), waits at most `--timeout` for one consumer, and
//!   shares its capture frames once as a pool of frames. Each frame is
//!   then queued to the device when the pool leases it (after the
//!   consumer released it) and handed over at once with the capture fence
//!   as its ready fence: the consumer reads it only once the device wrote
//!   it. The format must have a DRM frame layout.
//! * `--share SOCKET --role consumer` is the other side: it connects to
//!   SOCKET and checks the producer runs as this user (or, with `--share
//!   -`, takes the connected socket on its standard input, as `dmabuf
//!   stream --role consumer --socket -` does), receives the frames
//!   (checked as the library checks any frame from a peer), and for each
//!   item reads every plane in a read window, prints
//!   `item N: NV12 1280x720 (LINEAR), 2 planes` and writes the planes
//!   (one after the other) to `--out`, until the producer ends the
//!   stream. A pool whose largest frame is more than this process can
//!   hold (`MemAvailable`, the cgroup's `memory.max`) is refused with both
//!   numbers before any item is read. A frame whose fence failed (the driver flagged it) is
//!   counted in `errors:`. `--device`, `--format`, `--width`, `--height`,
//!   `--buffers`, `--backend` and `--frames` are the producer's; `--out`
//!   is the consumer's (refused on the producer's side).
//! * The summary is `key: value` lines on stdout.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use dmabuf::endpoint::v4l2::{
    FormatRequest, FourCc, FrameAttachment, FrameRecord, V4l2Capture, MAX_SLOTS,
};
use dmabuf::endpoint::{Attachment, Endpoint, TransferOptions};
use dmabuf::share::pool::{Consumer, Producer};
use dmabuf::share::Listener;
use dmabuf::{Fence, Frame, UserFence};

use crate::backend;

/// Arguments of `dmabuf capture`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The V4L2 capture device.
    #[arg(long, default_value = "/dev/video0")]
    pub device: PathBuf,
    /// Frames to capture.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub frames: u64,
    /// Buffers to ask the driver for (it may grant another number).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=MAX_SLOTS as i64))]
    pub buffers: u32,
    /// Memory: auto (the system heap, else udmabuf, else portable), heap, heap:NAME, udmabuf or portable.
    #[arg(long, default_value = "auto", value_parser = backend::parse)]
    pub backend: backend::Choice,
    /// Where to write frames: a directory (one file per frame) or a file (all frames); with --share, only on the consumer's side.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Frame width in pixels (the driver may adjust it).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub width: Option<u32>,
    /// Frame height in pixels (the driver may adjust it).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub height: Option<u32>,
    /// Pixel format as a V4L2 fourcc (YUYV, NV12, NM12, RGB3, GREY…); --share needs one with a DRM frame layout (not MJPG).
    #[arg(long, value_parser = parse_fourcc)]
    pub format: Option<FourCc>,
    /// Seconds to wait for each frame (and, with --share, for the peer) before giving up.
    #[arg(long, default_value = "10", value_name = "SECONDS", allow_hyphen_values = true, value_parser = crate::seconds::positive)]
    pub timeout: Duration,
    /// Stream the frames to another process over the streaming pool: listen at SOCKET (or, with --role consumer, connect to it; `-` is then a connected socket on standard input).
    #[arg(long, value_name = "SOCKET")]
    pub share: Option<PathBuf>,
    /// With --share: producer (capture and share; the default) or consumer (receive the frames).
    #[arg(long, value_enum, requires = "share")]
    pub role: Option<ShareRole>,
}

/// Which side of `--share` this process runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ShareRole {
    /// Captures, listens at the socket and shares the frames.
    Producer,
    /// Connects to the socket and receives the frames.
    Consumer,
}

fn parse_fourcc(s: &str) -> Result<FourCc, String> {
    s.parse::<FourCc>().map_err(|e| e.cause().to_string())
}

/// A slot's attachment: a checked frame, or a plain buffer for formats
/// without a DRM counterpart.
enum Slot {
    Frame(FrameAttachment),
    Buffer(Attachment, u64),
}

impl Slot {
    fn queue(&self, cap: &mut V4l2Capture, opts: TransferOptions) -> dmabuf::Result<UserFence> {
        match self {
            Slot::Frame(a) => cap.queue_frame(a, opts),
            Slot::Buffer(a, len) => cap.queue(a, *len, opts),
        }
    }

    fn record(&self, cap: &V4l2Capture) -> Option<FrameRecord> {
        match self {
            Slot::Frame(a) => cap.frame_record(a),
            Slot::Buffer(a, _) => cap.frame(a),
        }
    }

    fn detach(&self, cap: &mut V4l2Capture) -> dmabuf::Result<()> {
        match self {
            Slot::Frame(a) => cap.detach_frame(a),
            Slot::Buffer(a, _) => cap.detach(a),
        }
    }
}

enum Sink {
    None,
    Dir(PathBuf),
    File(BufWriter<File>, PathBuf),
}

impl Sink {
    fn open(out: Option<&Path>) -> Result<Sink, Box<dyn std::error::Error>> {
        let Some(p) = out else {
            return Ok(Sink::None);
        };
        let wants_dir = p.as_os_str().to_string_lossy().ends_with('/');
        if p.is_dir() || wants_dir {
            std::fs::create_dir_all(p)
                .map_err(|e| format!("capture: cannot create directory {}: {e}", p.display()))?;
            return Ok(Sink::Dir(p.to_path_buf()));
        }
        let f =
            File::create(p).map_err(|e| format!("capture: cannot create {}: {e}", p.display()))?;
        Ok(Sink::File(BufWriter::new(f), p.to_path_buf()))
    }

    fn write(&mut self, n: u64, bytes: &[u8]) -> Result<(), Box<dyn std::error::Error>> {
        match self {
            Sink::None => Ok(()),
            Sink::Dir(d) => {
                let p = d.join(format!("frame-{n:06}.raw"));
                std::fs::write(&p, bytes)
                    .map_err(|e| format!("capture: cannot write {}: {e}", p.display()).into())
            }
            Sink::File(f, p) => f
                .write_all(bytes)
                .map_err(|e| format!("capture: cannot write {}: {e}", p.display()).into()),
        }
    }

    fn finish(&mut self) -> Result<String, Box<dyn std::error::Error>> {
        Ok(match self {
            Sink::None => "-".to_string(),
            Sink::Dir(d) => format!("{} (one file per frame)", d.display()),
            Sink::File(f, p) => {
                f.flush()
                    .map_err(|e| format!("capture: cannot write {}: {e}", p.display()))?;
                p.display().to_string()
            }
        })
    }
}

/// Runs `dmabuf capture`.
pub fn run(args: Args) -> crate::CliResult {
    if let (Some(socket), Some(ShareRole::Consumer)) = (&args.share, args.role) {
        return receive(socket, args.out.as_deref(), args.timeout);
    }
    if args.share.is_some() && args.out.is_some() {
        return Err(
            "capture: with --share the frames go to the consumer; --out is for its side (--role consumer)"
                .into(),
        );
    }
    let timeout = args.timeout;
    let request = FormatRequest {
        width: args.width,
        height: args.height,
        pixelformat: args.format,
    };
    let alloc = args.backend.allocator()?;
    let mut cap = V4l2Capture::open(&args.device, &request, args.buffers)?;
    let format = cap.format();
    let mut sink = Sink::open(args.out.as_deref())?;

    let layout = format.layout().ok();
    let mut atts = Vec::new();
    let mut maps = Vec::new();
    for i in 0..cap.slots() {
        let buffers = format
            .planes
            .iter()
            .map(|p| alloc.allocate(u64::from(p.sizeimage), &format!("capture-{i}")))
            .collect::<dmabuf::Result<Vec<_>>>()?;
        maps.push(
            buffers
                .iter()
                .map(|b| b.map_read_only())
                .collect::<dmabuf::Result<Vec<_>>>()?,
        );
        atts.push(match (&layout, buffers.len()) {
            (Some(l), _) => Slot::Frame(cap.attach_frame(&Frame::from_layout(l.clone(), buffers)?)?),
            (None, 1) => Slot::Buffer(cap.attach(&buffers[0])?, u64::from(format.sizeimage)),
            (None, n) => {
                return Err(format!(
                    "capture: {}: {format} has {n} memory planes and no DRM frame layout; this program cannot capture it",
                    cap.describe()
                )
                .into())
            }
        });
    }
    let opts = TransferOptions::default();
    if let Some(socket) = &args.share {
        let frames = match layout.as_ref() {
            Some(_) => atts
                .iter()
                .map(|a| match a {
                    Slot::Frame(f) => Ok(f.frame.clone()),
                    Slot::Buffer(..) => Err("capture: --share: a slot without a frame"),
                })
                .collect::<Result<Vec<_>, _>>()?,
            None => {
                return Err(format!(
                    "capture: --share: {format} has no DRM frame layout; only frames can be shared"
                )
                .into())
            }
        };
        return share(
            &args,
            socket,
            cap,
            atts,
            frames,
            alloc.backend().to_string(),
        );
    }
    let start = Instant::now();
    // In-flight transfers, oldest first: (slot, fence).
    let mut inflight = std::collections::VecDeque::new();
    for (i, att) in atts.iter().enumerate() {
        inflight.push_back((i, Fence::User(att.queue(&mut cap, opts)?)));
    }
    let (mut done, mut bytes) = (0u64, 0u64);
    let (mut first_seq, mut last_seq) = (None, 0u32);
    let mut errors = 0u64;
    while done < args.frames {
        let (slot, fence) = inflight.pop_front().expect("every slot is in flight");
        if let Err(e) = fence.wait(Some(timeout)) {
            if e.kind() == dmabuf::ErrorKind::TimedOut {
                return Err(format!(
                    "capture: {}: no frame within {:?} ({} buffers queued; the driver may want more queued before it starts, try --buffers)",
                    cap.describe(),
                    timeout,
                    atts.len()
                )
                .into());
            }
            if e.errno() != Some(dmabuf::Errno::IO) {
                return Err(e.into());
            }
            // EIO: the driver flagged the frame as corrupted; count it.
            errors += 1;
        }
        let frame = atts[slot]
            .record(&cap)
            .ok_or("capture: a frame's fence signalled without a frame record")?;
        if let Fence::User(u) = &fence {
            if u.seqno() != frame.fence_seqno {
                return Err(format!(
                    "capture: frame record {} does not match fence {}",
                    frame.fence_seqno,
                    u.seqno()
                )
                .into());
            }
        }
        if !frame.is_error() {
            let mut data = Vec::new();
            for (map, &used) in maps[slot].iter().zip(&frame.plane_bytesused) {
                let w = map.read()?;
                let n = (used as usize).min(w.len());
                data.extend_from_slice(&w.bytes().subslice(0..n)?.to_vec());
                w.end()?;
            }
            sink.write(done, &data)?;
            bytes += u64::from(frame.bytesused);
        }
        first_seq.get_or_insert(frame.sequence);
        last_seq = frame.sequence;
        done += 1;
        if done + (inflight.len() as u64) < args.frames {
            inflight.push_back((slot, Fence::User(atts[slot].queue(&mut cap, opts)?)));
        }
    }
    let elapsed = start.elapsed();
    // Frames still in the device are cancelled here (STREAMOFF).
    drop(inflight);
    for att in &atts {
        att.detach(&mut cap)?;
    }
    let out = sink.finish()?;
    let first_seq = first_seq.unwrap_or(0);
    let span = u64::from(last_seq.wrapping_sub(first_seq)) + 1;
    let secs = elapsed.as_secs_f64();
    let info = cap.device_info();
    outln!(
        "device: {} ({}, {})",
        crate::out::escape(&args.device.display().to_string()),
        crate::out::escape(&info.driver),
        crate::out::escape(&info.card)
    )?;
    outln!("backend: {} ({})", alloc.backend(), alloc.reason())?;
    outln!("data path: {}", cap.data_path())?;
    outln!("format: {format}")?;
    if let Some(l) = &layout {
        outln!("frame: {l}")?;
    }
    outln!("buffers: {} (asked {})", atts.len(), cap.requested_slots())?;
    outln!("frames: {done}")?;
    outln!("errors: {errors}")?;
    outln!(
        "sequence: {first_seq}..{last_seq} ({} dropped)",
        span.saturating_sub(done)
    )?;
    outln!("bytes: {bytes}")?;
    outln!(
        "time: {secs:.3} s ({:.2} fps, {})",
        done as f64 / secs.max(1e-9),
        dmabuf::units::human_rate(bytes, secs)
    )?;
    outln!("out: {out}")?;
    Ok(ExitCode::SUCCESS)
}

/// `--share`: captures into the frames of a pool shared with one
/// consumer; each frame goes to the device when the pool leases it and to
/// the consumer at once, its capture fence as the ready fence.
fn share(
    args: &Args,
    socket: &Path,
    mut cap: V4l2Capture,
    atts: Vec<Slot>,
    frames: Vec<Frame>,
    backend: String,
) -> crate::CliResult {
    let timeout = args.timeout;
    if socket == Path::new("-") {
        return Err("capture: --share needs a socket path to listen at".into());
    }
    let armed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    crate::stream::remove_on_signal(socket.to_path_buf(), armed.clone())?;
    let listener = Listener::bind(socket)?;
    armed.store(true, std::sync::atomic::Ordering::SeqCst);
    let channels = crate::stream::accept_consumers(&listener, 1, timeout)?;
    let mut producer = Producer::new_frames(frames, channels)?;
    let opts = TransferOptions::default();
    let start = Instant::now();
    // Frames in the device, oldest first: (slot, fence). As many as the
    // pool has free are kept queued (drivers want several).
    let mut inflight: std::collections::VecDeque<(usize, UserFence)> =
        std::collections::VecDeque::new();
    let (mut submitted, mut done, mut errors, mut bytes) = (0u64, 0u64, 0u64, 0u64);
    while done < args.frames {
        while submitted < args.frames {
            let lease = if inflight.is_empty() {
                // Every frame is with the consumer: wait for one back.
                Some(producer.acquire(Some(timeout))?)
            } else {
                producer.try_acquire()?
            };
            let Some(lease) = lease else { break };
            let slot = lease.slot();
            let fence = atts[slot].queue(&mut cap, opts)?;
            lease.submit_all(Fence::User(fence.clone()))?;
            inflight.push_back((slot, fence));
            submitted += 1;
        }
        let (slot, fence) = inflight.pop_front().expect("a frame is in the device");
        if let Err(e) = fence.wait(Some(timeout)) {
            if e.errno() != Some(dmabuf::Errno::IO) {
                return Err(format!("capture: {}: {e}", cap.describe()).into());
            }
            errors += 1;
        }
        if let Some(r) = atts[slot].record(&cap) {
            if !r.is_error() {
                bytes += u64::from(r.bytesused);
            }
        }
        done += 1;
    }
    producer.finish(Some(timeout))?;
    let elapsed = start.elapsed();
    for att in &atts {
        att.detach(&mut cap)?;
    }
    drop(listener);
    let secs = elapsed.as_secs_f64();
    outln!(
        "device: {}",
        crate::out::escape(&args.device.display().to_string())
    )?;
    outln!("backend: {backend}")?;
    outln!("data path: {}", cap.data_path())?;
    outln!("format: {}", cap.format())?;
    if let Some(Slot::Frame(f)) = atts.first() {
        outln!("frame: {}", f.frame)?;
    }
    outln!(
        "shared: {} (1 consumer, {} frames in the pool)",
        crate::out::escape(&socket.display().to_string()),
        atts.len()
    )?;
    outln!("frames: {done}")?;
    outln!("errors: {errors}")?;
    outln!("bytes: {bytes}")?;
    outln!(
        "time: {secs:.3} s ({:.2} fps)",
        done as f64 / secs.max(1e-9)
    )?;
    Ok(ExitCode::SUCCESS)
}

/// `--share SOCKET --role consumer`: receives the producer's frames and
/// reads every plane of every item.
fn receive(socket: &Path, out: Option<&Path>, timeout: Duration) -> crate::CliResult {
    let mut sink = Sink::open(out)?;
    let channel = crate::stream::consumer_channel(socket, timeout, "capture: --share -")?;
    let mut consumer = Consumer::new(channel, Some(timeout))?;
    if consumer.frames().is_empty() {
        return Err(format!(
            "capture: {}: the producer shared buffers, not frames",
            crate::out::escape(&socket.display().to_string())
        )
        .into());
    }
    // Each item's planes are copied out whole: a frame this process cannot
    // hold (a peer may share a sparse memfd of any size) is refused here,
    // with the numbers, not found by the allocator.
    let largest = consumer
        .frames()
        .iter()
        .map(dmabuf::share::pool::frame_bytes)
        .max()
        .unwrap_or(0);
    if let Some(room) = dmabuf::alloc::memory_room() {
        if largest > room.bytes {
            return Err(format!(
                "capture: {}: the producer shares frames of up to {}, more than this process can hold: {} available ({})",
                crate::out::escape(&socket.display().to_string()),
                dmabuf::units::human_size(largest),
                dmabuf::units::human_size(room.bytes),
                room.source
            )
            .into());
        }
    }
    let (mut items, mut errors, mut bytes) = (0u64, 0u64, 0u64);
    let mut last = String::new();
    loop {
        let item = match consumer.next(Some(timeout)) {
            Ok(Some(item)) => item,
            Ok(None) => break,
            // The driver flagged the frame (its capture fence failed).
            Err(e) if e.kind() == dmabuf::ErrorKind::FenceFailed => {
                errors += 1;
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let frame = item
            .frame()
            .ok_or("capture: an item of a pool of frames without a frame")?;
        let mut data = Vec::new();
        for p in 0..frame.plane_count() {
            let map = frame.map_plane(p, false)?;
            let w = map.read()?;
            data.extend_from_slice(&w.to_vec());
            w.end()?;
        }
        sink.write(items, &data)?;
        bytes += data.len() as u64;
        items += 1;
        last = frame.to_string();
        outln!("item {}: {frame}", item.seq())?;
        item.release(Fence::Signalled)?;
    }
    let out = sink.finish()?;
    outln!("frame: {last}")?;
    outln!("frames: {items}")?;
    outln!("errors: {errors}")?;
    outln!("bytes: {bytes}")?;
    outln!("out: {out}")?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fourcc_values_are_checked() {
        assert_eq!(parse_fourcc("YUYV").unwrap().to_string(), "YUYV");
        assert!(parse_fourcc("TOOLONG").unwrap_err().contains("fourcc"));
    }
}
