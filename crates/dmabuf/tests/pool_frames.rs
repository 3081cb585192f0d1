//! A pool whose slots are frames: the frames travel once at setup (layout
//! and each buffer once), items name the slot as in any pool, every
//! plane's bytes reach every consumer; a handshake that mixes buffers and
//! frames, sends a frame out of order, a frame whose plane does not fit,
//! or more buffers than the bound is refused by name.
//!
//! Every test holds `LOCK` (fd counts).

use std::os::fd::AsFd;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use dmabuf::fence::Fence;
use dmabuf::frame::{FrameOptions, Placement};
use dmabuf::share::pool::{frame_bytes, Consumer, Producer, MAX_POOL_BUFFERS};
use dmabuf::share::{Channel, Message};
use dmabuf::{Allocate, ErrorKind, Fourcc, Frame, Portable};

const T: Option<Duration> = Some(Duration::from_secs(10));

static LOCK: Mutex<()> = Mutex::new(());

fn lock() -> MutexGuard<'static, ()> {
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

fn frame(format: Fourcc, w: u32, h: u32, placement: Placement) -> Frame {
    let opts = FrameOptions {
        placement,
        name: "pool-frame".into(),
        ..FrameOptions::default()
    };
    Frame::allocate(&Portable, format, w, h, &opts).unwrap()
}

/// The byte every row of plane `p` of item `seq` holds.
fn mark(seq: u64, p: usize) -> u8 {
    (seq as u8).wrapping_mul(16).wrapping_add(p as u8 + 1)
}

/// Writes every byte of every plane of `f` with its mark.
fn paint(f: &Frame, seq: u64) {
    for p in 0..f.plane_count() {
        let pm = f.map_plane(p, true).unwrap();
        let mut w = pm.write().unwrap();
        let bytes = vec![mark(seq, p); pm.len()];
        w.bytes_mut().write_at(0, &bytes).unwrap();
    }
}

/// Checks every byte of every plane of `f`.
fn check(f: &Frame, seq: u64) {
    for p in 0..f.plane_count() {
        let pm = f.map_plane(p, false).unwrap();
        let got = pm.read().unwrap().to_vec();
        assert_eq!(got.len(), pm.len());
        assert!(
            got.iter().all(|&b| b == mark(seq, p)),
            "item {seq} plane {p}: not what the producer wrote"
        );
    }
}

#[test]
fn frames_stream_to_every_consumer_with_all_planes() {
    let _g = lock();
    let before = open_fds();
    {
        let frames = vec![
            frame(Fourcc::NV12, 320, 240, Placement::Contiguous),
            frame(Fourcc::NV12, 320, 240, Placement::PerPlane),
            frame(Fourcc::NV12, 320, 240, Placement::Contiguous),
        ];
        let (p1, c1) = Channel::pair().unwrap();
        let (p2, c2) = Channel::pair().unwrap();
        let mut producer = Producer::new_frames(frames.clone(), vec![p1, p2]).unwrap();
        assert_eq!(producer.frames().count(), 3);
        let consumers: Vec<_> = [c1, c2]
            .into_iter()
            .map(|c| {
                std::thread::spawn(move || {
                    let mut c = Consumer::new(c, T).unwrap();
                    assert_eq!(c.frames().len(), 3);
                    assert_eq!(c.buffers().len(), 3, "one per slot: each frame's first");
                    assert_eq!(c.frames()[1].buffers().len(), 2, "both planes' buffers");
                    let mut seen = 0;
                    while let Some(item) = c.next(T).unwrap() {
                        let f = item.frame().expect("a pool of frames");
                        assert_eq!(f.to_string(), "NV12 320x240 (LINEAR), 2 planes");
                        assert_eq!(item.len(), frame_bytes(f));
                        check(f, item.seq());
                        seen += 1;
                        item.release(Fence::Signalled).unwrap();
                    }
                    seen
                })
            })
            .collect();
        for seq in 1..=12u64 {
            let lease = producer.acquire(T).unwrap();
            let f = lease.frame().expect("a pool of frames").clone();
            assert!(lease.buffer().same_as(&f.buffers()[0]));
            paint(&f, seq);
            assert_eq!(lease.submit_all(Fence::Signalled).unwrap(), seq);
        }
        producer.finish(T).unwrap();
        for c in consumers {
            assert_eq!(c.join().unwrap(), 12);
        }
    }
    assert_eq!(open_fds(), before, "fds leaked");
}

#[test]
fn a_frame_slot_takes_at_most_the_frames_bytes() {
    let _g = lock();
    let f = frame(Fourcc::NV12, 64, 64, Placement::PerPlane);
    let total = frame_bytes(&f);
    assert_eq!(total, f.buffers()[0].size() + f.buffers()[1].size());
    let (p, c) = Channel::pair().unwrap();
    let mut producer = Producer::new_frames(vec![f], vec![p]).unwrap();
    let mut consumer = Consumer::new(c, T).unwrap();
    let e = producer
        .acquire(T)
        .unwrap()
        .submit(total + 1, Fence::Signalled)
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    assert!(
        e.to_string().contains(&format!(
            "frame NV12 64x64 (LINEAR), 2 planes: item length {} exceeds the frame's bytes {total}",
            total + 1
        )),
        "{e}"
    );
    // The slot is free again, and a shorter item is fine.
    producer
        .acquire(T)
        .unwrap()
        .submit(10, Fence::Signalled)
        .unwrap();
    let item = consumer.next(T).unwrap().unwrap();
    assert_eq!(item.len(), 10);
    assert!(item.frame().is_some());
    item.release(Fence::Signalled).unwrap();
    // The whole frame: its length counts every buffer, more than the
    // first one (`Item::buffer`) holds.
    producer
        .acquire(T)
        .unwrap()
        .submit_all(Fence::Signalled)
        .unwrap();
    let item = consumer.next(T).unwrap().unwrap();
    assert_eq!(item.len(), total);
    assert!(item.len() > item.buffer().size());
}

#[test]
fn a_pool_of_no_frames_or_too_many_buffers_is_refused() {
    let _g = lock();
    let (p, _c) = Channel::pair().unwrap();
    let e = Producer::new_frames(Vec::new(), vec![p]).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    assert!(e.to_string().contains("0 buffers; a pool has 1 to"), "{e}");
    // 342 frames of three buffers each are 1026 buffers: refused before
    // anything is sent. The same three memories serve every frame here.
    let f = frame(Fourcc::YUV420, 16, 16, Placement::PerPlane);
    let (p, c) = Channel::pair().unwrap();
    let many = vec![f; MAX_POOL_BUFFERS / 3 + 1];
    let e = Producer::new_frames(many, vec![p]).unwrap_err();
    assert!(
        e.to_string()
            .contains("342 frames in 1026 buffers; a pool holds at most 1024 buffers"),
        "{e}"
    );
    // Nothing was sent: the producer's end closed with no message.
    let e = c.recv(T).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::PeerGone, "{e}");
}

/// Plays the producer's side of a handshake with the library's own
/// channel (sending what it is told), and returns the consumer's error.
fn handshake_error(send: impl FnOnce(&Channel) + Send + 'static) -> dmabuf::Error {
    let (p, c) = Channel::pair().unwrap();
    let t = std::thread::spawn(move || {
        send(&p);
        p
    });
    let e = Consumer::new(c, T).unwrap_err();
    drop(t.join().unwrap());
    e
}

#[test]
fn handshakes_that_break_the_rules_are_refused_by_name() {
    let _g = lock();
    let before = open_fds();
    {
        let f = frame(Fourcc::NV12, 64, 32, Placement::Contiguous);
        let b = Portable.allocate(4096, "b").unwrap();
        // A buffer, then a frame; a frame, then a buffer.
        let (f1, b1) = (f.clone(), b.clone());
        let e = handshake_error(move |p| {
            p.send(&Message::Buffer { id: 0, buffer: b1 }).unwrap();
            p.send_frame(1, &f1).unwrap();
        });
        assert_eq!(e.kind(), ErrorKind::Protocol, "{e}");
        assert!(
            e.to_string().contains(
                "a frame message in a pool of buffers: a pool's slots are all buffers or all frames"
            ),
            "{e}"
        );
        let (f1, b1) = (f.clone(), b.clone());
        let e = handshake_error(move |p| {
            p.send_frame(0, &f1).unwrap();
            p.send(&Message::Buffer { id: 1, buffer: b1 }).unwrap();
        });
        assert!(
            e.to_string()
                .contains("a buffer message in a pool of frames"),
            "{e}"
        );
        // Frame ids out of order.
        let f1 = f.clone();
        let e = handshake_error(move |p| {
            p.send_frame(0, &f1).unwrap();
            p.send_frame(0, &f1).unwrap();
        });
        assert!(e.to_string().contains("frame id 0 out of order"), "{e}");
        // Pool-ready counting frames wrongly.
        let f1 = f.clone();
        let e = handshake_error(move |p| {
            p.send_frame(0, &f1).unwrap();
            p.send(&Message::PoolReady {
                buffers: 2,
                consumer: 0,
            })
            .unwrap();
        });
        assert!(
            e.to_string()
                .contains("pool-ready announces 2 buffers but 1 arrived"),
            "{e}"
        );
    }
    assert_eq!(open_fds(), before, "fds leaked");
}

#[test]
fn a_frame_whose_plane_does_not_fit_stops_the_handshake() {
    let _g = lock();
    let before = open_fds();
    {
        // A hostile producer: NV12 64x32 announced with its chroma plane
        // past the end of a 4096-byte memfd, sent with raw bytes.
        let m = Portable.allocate(4096, "short").unwrap();
        let layout = dmabuf::frame::wire::encode(&dmabuf::frame::FrameLayout {
            format: Fourcc::NV12,
            modifier: dmabuf::Modifier::LINEAR,
            width: 64,
            height: 32,
            planes: vec![
                dmabuf::frame::PlaneLayout {
                    buffer: 0,
                    offset: 0,
                    stride: 64,
                },
                dmabuf::frame::PlaneLayout {
                    buffer: 0,
                    offset: 3584,
                    stride: 64,
                },
            ],
        })
        .unwrap();
        let mut body = 0u64.to_le_bytes().to_vec();
        body.extend_from_slice(&[layout.len() as u8, 0, 0, 0]);
        body.extend_from_slice(&layout);
        body.extend_from_slice(&4096u64.to_le_bytes());
        body.extend_from_slice(&[1, 0, 5, 0]);
        body.extend_from_slice(b"short");
        let mut bytes = b"DMBS".to_vec();
        bytes.extend_from_slice(&dmabuf::share::VERSION.to_le_bytes());
        bytes.extend_from_slice(&8u16.to_le_bytes());
        bytes.extend_from_slice(&(body.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&1u16.to_le_bytes());
        bytes.extend_from_slice(&0u16.to_le_bytes());
        bytes.extend_from_slice(&body);
        let e = handshake_error(move |p| {
            p.send_raw(&bytes, &[m.fd().as_fd()]).unwrap();
        });
        assert_eq!(e.kind(), ErrorKind::Protocol, "{e}");
        assert!(
            e.to_string()
                .contains("plane 1 does not fit its buffer: offset 3584 + stride 64 × 16 rows = 4608 bytes > buffer size 4096"),
            "{e}"
        );
    }
    assert_eq!(open_fds(), before, "fds leaked");
}

#[test]
fn a_consumer_holds_at_most_the_bound_of_buffers_in_frames() {
    let _g = lock();
    let before = open_fds();
    {
        // 342 frames of three buffers sent one by one (not through
        // `Producer::new_frames`, which refuses them itself): the 342nd
        // would make 1026 buffers held, and is refused.
        let f = frame(Fourcc::YUV420, 16, 16, Placement::PerPlane);
        let e = handshake_error(move |p| {
            for id in 0..(MAX_POOL_BUFFERS / 3 + 1) as u64 {
                if p.send_frame(id, &f).is_err() {
                    break;
                }
            }
        });
        assert_eq!(e.kind(), ErrorKind::Protocol, "{e}");
        assert!(
            e.to_string()
                .contains("at most 1024 buffers in all frames, this one would make 1026"),
            "{e}"
        );
    }
    assert_eq!(open_fds(), before, "fds leaked");
}

#[cfg(feature = "tokio")]
#[test]
fn async_pools_of_frames_stream() {
    let _g = lock();
    let before = open_fds();
    {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            use dmabuf::share::pool::{AsyncConsumer, AsyncProducer};
            let (p, c) = Channel::pair().unwrap();
            let frames = vec![
                frame(Fourcc::YUV420, 64, 48, Placement::PerPlane),
                frame(Fourcc::YUV420, 64, 48, Placement::Contiguous),
            ];
            let mut producer = AsyncProducer::new_frames(frames, vec![p]).unwrap();
            let consumer = tokio::spawn(async move {
                let mut c = AsyncConsumer::new(c).await.unwrap();
                let mut n = 0u64;
                while let Some(item) = c.next().await.unwrap() {
                    n += 1;
                    let f = item.frame().expect("a pool of frames");
                    assert_eq!(f.plane_count(), 3);
                    check(f, item.seq());
                    item.release(Fence::Signalled).unwrap();
                }
                n
            });
            for seq in 1..=10u64 {
                let lease = producer.acquire().await.unwrap();
                paint(lease.frame().unwrap(), seq);
                let ready = dmabuf::fence::UserFence::new().unwrap();
                lease.submit_all(ready.clone().into()).unwrap();
                ready.signal().unwrap();
            }
            producer.finish().await.unwrap();
            assert_eq!(consumer.await.unwrap(), 10);
        });
    }
    assert_eq!(open_fds(), before, "fds leaked");
}
