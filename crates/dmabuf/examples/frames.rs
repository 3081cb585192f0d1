//! Frames across two processes: the parent allocates three NV12 frames
//! (two planes; one frame with a buffer per plane), shares them once as a
//! pool of frames with a child process (this example again), and streams
//! 30 items through them; the child checks every row of every plane.
//! First, a frame whose chroma plane does not fit its buffer is refused
//! with its cause named.
//!
//! `cargo run -p dmabuf --example frames`

use std::process::Command;
use std::time::Duration;

use dmabuf::frame::{FrameOptions, Placement, Plane};
use dmabuf::share::pool::{Consumer, Producer};
use dmabuf::share::Channel;
use dmabuf::{Fence, Fourcc, Frame, Modifier};

const ITEMS: u64 = 30;
const WAIT: Option<Duration> = Some(Duration::from_secs(10));
const W: u32 = 640;
const H: u32 = 480;

/// The byte of row `row` of plane `plane` in item `seq`.
fn pixel(seq: u64, plane: usize, row: usize) -> u8 {
    (seq as usize * 7 + plane * 101 + row) as u8
}

fn main() -> dmabuf::Result<()> {
    if std::env::args().nth(1).as_deref() == Some("--consumer") {
        return consume();
    }
    let alloc = dmabuf::Allocator::auto();

    // A plane past the end of its buffer never makes a frame.
    let small = alloc.allocate(u64::from(W * H), "too-small")?;
    let refused = Frame::new(
        Fourcc::NV12,
        Modifier::LINEAR,
        W,
        H,
        [
            Plane {
                buffer: small.clone(),
                offset: 0,
                stride: u64::from(W),
            },
            Plane {
                buffer: small,
                offset: u64::from(W * H),
                stride: u64::from(W),
            },
        ],
    );
    println!("refused: {}", refused.expect_err("a plane past its buffer"));

    let frames = [
        Placement::Contiguous,
        Placement::PerPlane,
        Placement::Contiguous,
    ]
    .into_iter()
    .map(|placement| {
        let opts = FrameOptions {
            placement,
            name: "example-frame".into(),
            ..FrameOptions::default()
        };
        Frame::allocate(&alloc, Fourcc::NV12, W, H, &opts)
    })
    .collect::<dmabuf::Result<Vec<_>>>()?;

    let exe = std::env::current_exe().expect("the example's own path");
    let mut cmd = Command::new(exe);
    cmd.arg("--consumer");
    let (channel, mut child) = Channel::spawn_with_channel(&mut cmd)?;
    let mut producer = Producer::new_frames(frames, vec![channel])?;
    for seq in 1..=ITEMS {
        let lease = producer.acquire(WAIT)?;
        let frame = lease.frame().expect("a pool of frames");
        for p in 0..frame.plane_count() {
            let plane = frame.map_plane(p, true)?;
            let stride = plane.stride() as usize;
            let mut w = plane.write()?;
            for row in 0..plane.rows() as usize {
                let line = vec![pixel(seq, p, row); stride];
                w.write_at(row * stride, &line)?;
            }
        }
        lease.submit_all(Fence::Signalled)?;
    }
    producer.finish(WAIT)?;
    let status = child.wait().expect("wait for the consumer");
    assert!(status.success(), "consumer failed: {status}");
    println!("producer: {ITEMS} frames through a pool of 3");
    Ok(())
}

fn consume() -> dmabuf::Result<()> {
    let mut consumer = Consumer::new(Channel::from_parent()?, WAIT)?;
    for (i, f) in consumer.frames().iter().enumerate() {
        println!("consumer: slot {i}: {f} in {} buffer(s)", f.buffers().len());
    }
    let mut n = 0;
    while let Some(item) = consumer.next(WAIT)? {
        let frame = item.frame().expect("a pool of frames");
        for p in 0..frame.plane_count() {
            let plane = frame.map_plane(p, false)?;
            let stride = plane.stride() as usize;
            let bytes = plane.read()?.to_vec();
            for row in 0..plane.rows() as usize {
                let want = pixel(item.seq(), p, row);
                assert!(
                    bytes[row * stride..(row + 1) * stride]
                        .iter()
                        .all(|&b| b == want),
                    "item {} plane {p} row {row}",
                    item.seq()
                );
            }
        }
        n += 1;
        item.release(Fence::Signalled)?;
    }
    println!("consumer: {n} frames, every row of every plane checked");
    Ok(())
}
