//! A producer/consumer pool across two processes: the parent produces 100
//! items into 4 shared buffers, a child process (this example again)
//! consumes and checks them. Buffers are reused only once the consumer has
//! released them.
//!
//! `cargo run -p dmabuf --example pool`

use std::process::Command;
use std::time::Duration;

use dmabuf::share::pool::{Consumer, Producer};
use dmabuf::share::Channel;
use dmabuf::Fence;

const ITEMS: u64 = 100;
const SIZE: u64 = 256 * 1024;
const WAIT: Option<Duration> = Some(Duration::from_secs(10));

fn main() -> dmabuf::Result<()> {
    if std::env::args().nth(1).as_deref() == Some("--consumer") {
        return consume();
    }
    let exe = std::env::current_exe().expect("the example's own path");
    let mut cmd = Command::new(exe);
    cmd.arg("--consumer");
    let (channel, mut child) = Channel::spawn_with_channel(&mut cmd)?;
    let alloc = dmabuf::Allocator::auto();
    let buffers = (0..4)
        .map(|i| alloc.allocate(SIZE, &format!("pool-{i}")))
        .collect::<dmabuf::Result<Vec<_>>>()?;
    let maps = buffers
        .iter()
        .map(|b| b.map())
        .collect::<dmabuf::Result<Vec<_>>>()?;
    let mut producer = Producer::new(buffers, vec![channel])?;
    for n in 0..ITEMS {
        let lease = producer.acquire(WAIT)?;
        {
            let mut w = maps[lease.slot()].write()?;
            w.fill(n as u8);
        }
        lease.submit(SIZE, Fence::Signalled)?;
    }
    producer.finish(WAIT)?;
    let status = child.wait().expect("wait for the consumer");
    assert!(status.success(), "consumer failed: {status}");
    println!("producer: {ITEMS} items of {SIZE} bytes through 4 buffers");
    Ok(())
}

fn consume() -> dmabuf::Result<()> {
    let mut consumer = Consumer::new(Channel::from_parent()?, WAIT)?;
    let maps = consumer
        .buffers()
        .iter()
        .map(|b| b.map_read_only())
        .collect::<dmabuf::Result<Vec<_>>>()?;
    let mut n = 0u64;
    while let Some(item) = consumer.next(WAIT)? {
        let r = maps[item.slot() as usize].read()?;
        let want = item.seq().wrapping_sub(1) as u8;
        assert!(r.bytes().iter().all(|b| b == want), "item {}", item.seq());
        drop(r);
        item.release(Fence::Signalled)?;
        n += 1;
    }
    assert_eq!(n, ITEMS);
    println!("consumer: {n} items checked");
    Ok(())
}
