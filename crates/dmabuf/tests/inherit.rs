//! A channel handed to a child process through the safe API.

use std::os::fd::{AsFd, AsRawFd, IntoRawFd};
use std::process::Command;
use std::time::Duration;

use dmabuf::share::{Channel, Message, CHANNEL_FD_ENV};
use dmabuf::{Allocator, ErrorKind};

#[test]
fn the_child_inherits_exactly_the_named_end_and_the_parent_keeps_none() {
    let mut cmd = Command::new("sh");
    cmd.args([
        "-c",
        "readlink /proc/self/fd/$DMABUF_CHANNEL_FD; echo $DMABUF_CHANNEL_FD",
    ]);
    cmd.stdout(std::process::Stdio::piped());
    let before = std::fs::read_dir("/proc/self/fd").unwrap().count();
    let (mine, child) = Channel::spawn_with_channel(&mut cmd).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let mut lines = text.lines();
    assert!(lines.next().unwrap().starts_with("socket:["), "{text}");
    let n: i32 = lines.next().unwrap().parse().unwrap();
    assert!(n > 2);
    // Only this end stays open here (the count allows for other tests'
    // fds coming and going in parallel threads: at most one more).
    assert!(std::fs::read_dir("/proc/self/fd").unwrap().count() <= before + 1);
    // The parent's end is close-on-exec: a second child does not get it.
    let flags = rustix::io::fcntl_getfd(mine.as_fd()).unwrap();
    assert!(flags.contains(rustix::io::FdFlags::CLOEXEC));
}

#[test]
fn from_parent_claims_the_named_fd_once_and_checks_its_kind() {
    // Play the child in this process: an inherited end is just a number.
    let (parent, child_end) = rustix::net::socketpair(
        rustix::net::AddressFamily::UNIX,
        rustix::net::SocketType::SEQPACKET,
        rustix::net::SocketFlags::empty(),
        None,
    )
    .unwrap();
    let raw = child_end.into_raw_fd();
    std::env::set_var(CHANNEL_FD_ENV, raw.to_string());
    let ours = Channel::from_parent().unwrap();
    let e = Channel::from_parent().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Busy, "{e}");
    assert!(e.to_string().contains("already claimed"), "{e}");
    // It works: a buffer goes from "parent" to "child".
    let parent = Channel::from_fd(parent).unwrap();
    let buf = Allocator::auto().allocate(4096, "inherited").unwrap();
    buf.write_with(|mut b| b.fill(9)).unwrap();
    parent
        .send(&Message::Buffer {
            id: 1,
            buffer: buf.clone(),
        })
        .unwrap();
    match ours.recv(Some(Duration::from_secs(5))).unwrap() {
        Message::Buffer { buffer, .. } => {
            assert_eq!(buffer.read_with(|b| b.get(10)).unwrap(), Some(9))
        }
        m => panic!("unexpected {}", m.type_name()),
    }
    // A number that is not a seqpacket socket is refused by kind.
    let file = std::fs::File::open("/proc/self/status").unwrap();
    std::env::set_var(CHANNEL_FD_ENV, file.into_raw_fd().to_string());
    let e = Channel::from_parent().unwrap_err();
    assert!(e.to_string().contains("socket"), "{e}");
    std::env::set_var(CHANNEL_FD_ENV, "seven");
    let e = Channel::from_parent().unwrap_err();
    assert!(e.to_string().contains("'seven' is not an fd number"), "{e}");
    std::env::remove_var(CHANNEL_FD_ENV);
    let e = Channel::from_parent().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
    let _ = ours.as_fd().as_raw_fd();
}
