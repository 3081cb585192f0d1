//! Share a buffer with a child process: the parent spawns this example
//! again as its child with a channel (no `unsafe`, no socket path), sends
//! it a buffer and a fence, and the child reads the bytes once the fence
//! has signalled and answers with what it found.
//!
//! `cargo run -p dmabuf --example share_child`

use std::process::Command;
use std::time::Duration;

use dmabuf::share::{Channel, Message};
use dmabuf::{Fence, FenceContext};

const WAIT: Option<Duration> = Some(Duration::from_secs(10));

fn main() -> dmabuf::Result<()> {
    if std::env::args().nth(1).as_deref() == Some("--child") {
        return child();
    }
    let exe = std::env::current_exe().expect("the example's own path");
    let mut cmd = Command::new(exe);
    cmd.arg("--child");
    let (channel, mut child) = Channel::spawn_with_channel(&mut cmd)?;

    let buf = dmabuf::Allocator::auto().allocate(64 * 1024, "shared")?;
    let timeline = FenceContext::new("example");
    let written = timeline.next_fence()?;
    channel.send(&Message::Buffer {
        id: 1,
        buffer: buf.clone(),
    })?;
    // The child may not read before this fence signals.
    channel.send(&Message::Fence {
        tag: 1,
        fence: Fence::User(written.clone()),
    })?;
    buf.write_with(|mut bytes| bytes.fill(0x42))?;
    written.signal()?;

    match channel.recv(WAIT)? {
        Message::Fence { tag, .. } => println!("parent: the child counted {tag} bytes of 0x42"),
        m => panic!("parent: unexpected {} message", m.type_name()),
    }
    let status = child.wait().expect("wait for the child");
    assert!(status.success(), "child failed: {status}");
    Ok(())
}

fn child() -> dmabuf::Result<()> {
    let channel = Channel::from_parent()?;
    let Message::Buffer { buffer, .. } = channel.recv(WAIT)? else {
        panic!("child: expected a buffer first");
    };
    let Message::Fence { fence, .. } = channel.recv(WAIT)? else {
        panic!("child: expected a fence");
    };
    fence.wait(WAIT)?;
    let n = buffer.read_with(|bytes| bytes.iter().filter(|&b| b == 0x42).count())?;
    println!("child: {buffer}: {n} bytes of 0x42");
    channel.send(&Message::Fence {
        tag: n as u64,
        fence: Fence::Signalled,
    })?;
    Ok(())
}
