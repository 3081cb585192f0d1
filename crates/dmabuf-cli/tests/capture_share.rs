//! `dmabuf capture --share SOCKET --role consumer` on the host: the
//! receiving side of a capture shared over a pool of frames, fed here by
//! the library's producer with portable frames (the capturing side needs
//! a V4L2 device: it is tested in the lab).

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

use dmabuf::frame::{FrameOptions, Placement};
use dmabuf::share::pool::Producer;
use dmabuf::share::Listener;
use dmabuf::{Fence, Fourcc, Frame, Portable};

const T: Option<Duration> = Some(Duration::from_secs(20));

fn dmabuf() -> Command {
    Command::new(env!("CARGO_BIN_EXE_dmabuf"))
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("dmabuf-capshare-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn frame(placement: Placement) -> Frame {
    let opts = FrameOptions {
        placement,
        ..FrameOptions::default()
    };
    Frame::allocate(&Portable, Fourcc::NV12, 64, 48, &opts).unwrap()
}

/// Fills plane `p` with `seq * 16 + p + 1` and returns its bytes.
fn paint(f: &Frame, seq: u64) -> Vec<u8> {
    let mut all = Vec::new();
    for p in 0..f.plane_count() {
        let pm = f.map_plane(p, true).unwrap();
        let bytes = vec![(seq as u8) * 16 + p as u8 + 1; pm.len()];
        pm.write().unwrap().bytes_mut().write_at(0, &bytes).unwrap();
        all.extend_from_slice(&bytes);
    }
    all
}

fn consumer(socket: &std::path::Path, out: &std::path::Path) -> std::process::Child {
    consumer_on(socket.as_os_str(), out, std::process::Stdio::null())
}

/// `dmabuf capture --share SHARE --role consumer --out OUT`, with `stdin`.
fn consumer_on(
    share: &std::ffi::OsStr,
    out: &std::path::Path,
    stdin: std::process::Stdio,
) -> std::process::Child {
    dmabuf()
        .arg("capture")
        .arg("--share")
        .arg(share)
        .args(["--role", "consumer", "--timeout", "20"])
        .arg("--out")
        .arg(out)
        .stdin(stdin)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

fn finish(child: std::process::Child) -> Output {
    child.wait_with_output().unwrap()
}

/// Shares `frames` with the consumer at the other end of `ch`, sends
/// `items` painted items and finishes: the bytes of every plane sent, in
/// order.
fn serve(ch: dmabuf::share::Channel, frames: Vec<Frame>, items: u64) -> Vec<u8> {
    let mut producer = Producer::new_frames(frames, vec![ch]).unwrap();
    let mut want = Vec::new();
    for seq in 1..=items {
        let lease = producer.acquire(T).unwrap();
        want.extend(paint(lease.frame().unwrap(), seq));
        assert_eq!(lease.submit_all(Fence::Signalled).unwrap(), seq);
    }
    producer.finish(T).unwrap();
    want
}

#[test]
fn the_consumer_side_receives_every_plane_of_every_frame() {
    let dir = scratch("ok");
    let socket = dir.join("sock");
    let out = dir.join("frames.raw");
    let listener = Listener::bind(&socket).unwrap();
    let child = consumer(&socket, &out);
    let ch = listener.accept(T).unwrap();
    let frames = vec![frame(Placement::Contiguous), frame(Placement::PerPlane)];
    let want = serve(ch, frames, 3);
    let o = finish(child);
    let stdout = text(&o.stdout);
    assert!(o.status.success(), "{stdout}\n{}", text(&o.stderr));
    for seq in 1..=3 {
        assert!(
            stdout.contains(&format!("item {seq}: NV12 64x48 (LINEAR), 2 planes\n")),
            "{stdout}"
        );
    }
    assert!(
        stdout.contains("frame: NV12 64x48 (LINEAR), 2 planes\n"),
        "{stdout}"
    );
    assert!(stdout.contains("frames: 3\n"), "{stdout}");
    assert!(stdout.contains("errors: 0\n"), "{stdout}");
    assert_eq!(std::fs::read(&out).unwrap(), want, "every plane, in order");
    drop(listener);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_consumer_side_takes_a_connected_socket_on_standard_input() {
    use rustix::net::{socketpair, AddressFamily, SocketFlags, SocketType};
    let dir = scratch("stdin");
    let out = dir.join("frames.raw");
    let (mine, theirs) = socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )
    .unwrap();
    let child = consumer_on("-".as_ref(), &out, std::process::Stdio::from(theirs));
    let ch = dmabuf::share::Channel::from_fd(mine).unwrap();
    let want = serve(ch, vec![frame(Placement::Contiguous)], 1);
    let o = finish(child);
    let stdout = text(&o.stdout);
    assert!(o.status.success(), "{stdout}\n{}", text(&o.stderr));
    assert!(stdout.contains("frames: 1\n"), "{stdout}");
    assert_eq!(std::fs::read(&out).unwrap(), want);

    // Standard input that is no socket: refused at once, naming it.
    let t0 = std::time::Instant::now();
    let o = finish(consumer_on("-".as_ref(), &out, std::process::Stdio::null()));
    assert!(!o.status.success());
    let err = text(&o.stderr);
    assert!(err.contains("capture: --share - (standard input)"), "{err}");
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "no wait for a path named -"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_consumer_side_refuses_a_pool_of_plain_buffers() {
    let dir = scratch("buffers");
    let socket = dir.join("sock");
    let listener = Listener::bind(&socket).unwrap();
    let child = consumer(&socket, &dir.join("x.raw"));
    let ch = listener.accept(T).unwrap();
    let b = dmabuf::Allocate::allocate(&Portable, 4096, "plain").unwrap();
    let producer = Producer::new(vec![b], vec![ch]).unwrap();
    let o = finish(child);
    drop(producer);
    assert!(!o.status.success());
    let err = text(&o.stderr);
    assert!(
        err.contains("the producer shared buffers, not frames"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn share_arguments_are_checked() {
    let o = dmabuf()
        .args(["capture", "--role", "consumer"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(text(&o.stderr).contains("--share"), "{}", text(&o.stderr));
    let o = dmabuf()
        .args(["capture", "--share", "/x", "--role", "viewer"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(
        text(&o.stderr).contains("invalid value 'viewer'"),
        "{}",
        text(&o.stderr)
    );
    let o = dmabuf()
        .args(["capture", "--share", "/x", "--out", "/tmp/y"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(
        text(&o.stderr).contains("--out is for its side (--role consumer)"),
        "{}",
        text(&o.stderr)
    );
    // A consumer with nobody to connect to gives up after --timeout.
    let dir = scratch("nobody");
    let o = dmabuf()
        .arg("capture")
        .arg("--share")
        .arg(dir.join("none"))
        .args(["--role", "consumer", "--timeout", "0.2"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = text(&o.stderr);
    assert!(err.starts_with("dmabuf: connect: socket "), "{err}");
    assert!(
        err.contains("none: No such file or directory (ENOENT)"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A producer sharing a frame larger than this machine's memory (a sparse
/// sealed memfd of 1 TiB, one XRGB8888 plane of 65536x4194304): the
/// consumer refuses it with the numbers, rather than dying of a copy it
/// cannot allocate.
#[test]
fn the_consumer_side_refuses_frames_larger_than_its_memory() {
    use rustix::fs::{MemfdFlags, SealFlags};
    const TIB: u64 = 1 << 40;
    let fd =
        rustix::fs::memfd_create("huge", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING).unwrap();
    rustix::fs::ftruncate(&fd, TIB).unwrap();
    rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL)
        .unwrap();
    let buffer = dmabuf::Buffer::try_from(fd).unwrap();
    let plane = dmabuf::frame::Plane {
        buffer,
        offset: 0,
        stride: 65536 * 4,
    };
    let f = Frame::new(
        Fourcc::XRGB8888,
        dmabuf::Modifier::LINEAR,
        65536,
        4_194_304,
        [plane],
    )
    .unwrap();
    let dir = scratch("huge");
    let socket = dir.join("sock");
    let listener = Listener::bind(&socket).unwrap();
    let child = consumer(&socket, &dir.join("x.raw"));
    let ch = listener.accept(T).unwrap();
    let mut producer = Producer::new_frames(vec![f], vec![ch]).unwrap();
    // The item is offered; a consumer that took it would read 1 TiB.
    let _ = producer
        .acquire(T)
        .and_then(|l| l.submit_all(Fence::Signalled));
    let o = finish(child);
    drop(producer);
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{}: {err}", o.status);
    assert!(
        err.contains("frames of up to 1.0 TiB") && err.contains("available ("),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
