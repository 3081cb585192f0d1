//! Ordering against the real kernel, with vgem's fences (kernel fences
//! that user space attaches and signals): a transfer's wait and the
//! publication of its fence are one step, a window's `START` is bounded by
//! its timeout, a copy transfer waits for kernel fences, and windows that
//! read and write are kept apart on dma-bufs (`SYNC` has no range).

use std::time::{Duration, Instant};

use dmabuf::endpoint::{Direction, Endpoint, FdEndpoint, TransferOptions};
use dmabuf::mapping::{ReadOnly, ReadWrite, WriteOnly};
use dmabuf::{Allocate, Buffer, Errno, ErrorKind, FenceStatus, Heap, Memfd, Udmabuf};
use dmabuf_lab_guest::require_lab;
use dmabuf_lab_guest::vgem::Vgem;

const PAGE: u64 = 4096;

fn udmabuf(pages: u64) -> Buffer {
    require_lab();
    let m = Memfd::new("ordering", pages * PAGE).unwrap();
    Buffer::from_dma_buf(
        Udmabuf::open()
            .unwrap()
            .create(&m, 0, pages * PAGE)
            .unwrap(),
    )
}

fn heap(pages: u64) -> Buffer {
    require_lab();
    Heap::open("system")
        .unwrap()
        .allocate(pages * PAGE, "ordering")
        .unwrap()
}

/// Before: `DMA_BUF_IOCTL_SYNC START` waited for kernel fences without
/// limit whatever the window's timeout. Now the window polls first and
/// gives up at its deadline, naming the kernel fence.
#[test]
fn a_window_timeout_bounds_start_on_a_pending_kernel_fence() {
    let v = Vgem::new();
    let wf = v.fence(true);
    let m = v.buffer.map().unwrap();
    let t0 = Instant::now();
    let e = m
        .window::<ReadOnly>(0..PAGE as usize, Some(Duration::from_millis(200)))
        .unwrap_err();
    let took = t0.elapsed();
    assert!(took < Duration::from_secs(3), "bounded: {took:?}");
    assert!(took >= Duration::from_millis(150), "waited: {took:?}");
    assert_eq!(e.kind(), ErrorKind::Busy, "{e}");
    assert_eq!(e.errno(), Some(Errno::BUSY));
    assert!(e.cause().contains("kernel fence"), "{e}");
    assert!(e.cause().contains("START|read"), "{e}");
    assert_eq!(v.buffer.reservation().cpu_windows(), (0, 0), "undone");
    // A read fence holds up writers only.
    v.signal(wf);
    let rf = v.fence(false);
    m.window::<ReadOnly>(0..PAGE as usize, Some(Duration::ZERO))
        .unwrap();
    let e = m
        .window::<WriteOnly>(0..PAGE as usize, Some(Duration::from_millis(50)))
        .unwrap_err();
    assert!(e.cause().contains("START|write"), "{e}");
    v.signal(rf);
    m.window::<WriteOnly>(0..PAGE as usize, Some(Duration::from_secs(1)))
        .unwrap();
}

/// A copy transfer waits for the kernel's fences in the way; a
/// non-blocking one is refused naming the kernel fence, and nothing is
/// published.
#[test]
fn a_transfer_waits_for_kernel_fences_before_publishing() {
    let v = Vgem::new();
    let (r, w) = rustix::pipe::pipe().unwrap();
    let mut rx = FdEndpoint::new(r, Direction::FromDevice).unwrap();
    let a = rx.attach(&v.buffer).unwrap();
    // A kernel reader: a device write (from-device) must wait for it.
    let rf = v.fence(false);
    let e = rx
        .transfer(
            &a,
            4,
            TransferOptions {
                nonblocking: true,
                ..Default::default()
            },
        )
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Busy, "{e}");
    assert!(e.cause().contains("kernel fence"), "{e}");
    assert!(e.cause().contains("non-blocking"), "{e}");
    assert!(v.buffer.reservation().is_empty(), "nothing published");
    let s = v.signal_later(rf, Duration::from_millis(200));
    let t0 = Instant::now();
    let f = rx.transfer(&a, 4, TransferOptions::default()).unwrap();
    assert!(
        t0.elapsed() >= Duration::from_millis(150),
        "{:?}",
        t0.elapsed()
    );
    s.join().unwrap();
    rustix::io::write(&w, b"data").unwrap();
    f.wait(Some(Duration::from_secs(10))).unwrap();
    let m = v.buffer.map().unwrap();
    assert_eq!(&m.read().unwrap().to_vec()[..4], b"data");
}

/// The race of issue 8 with real kernel fences. A transfer waits for a
/// vgem write fence (nothing published yet); meanwhile a write window
/// registers and waits in its bounded `START` for the same fence. When the
/// fence signals, the transfer must see the window and wait for it: while
/// the window is open, no fence of the transfer is in the reservation and
/// nothing was sent; after it closes the device gets the window's bytes.
#[test]
fn a_window_opened_during_a_transfers_kernel_fence_wait_holds_the_transfer() {
    let v = Vgem::new();
    let (r, w) = rustix::pipe::pipe().unwrap();
    let mut tx = FdEndpoint::new(w, Direction::ToDevice).unwrap();
    let a = tx.attach(&v.buffer).unwrap();
    let wf = v.fence(true);
    let transfer = std::thread::spawn(move || {
        let f = tx.transfer(
            &a,
            12,
            TransferOptions {
                timeout: Duration::from_secs(20),
                ..Default::default()
            },
        );
        (f, tx)
    });
    // Let the transfer reach its wait for the kernel fence.
    std::thread::sleep(Duration::from_millis(200));
    assert!(v.buffer.reservation().is_empty(), "not published yet");
    let s = v.signal_later(wf, Duration::from_millis(300));
    let m = v.buffer.map().unwrap();
    let mut win = m
        .window::<WriteOnly>(0..PAGE as usize, Some(Duration::from_secs(10)))
        .unwrap();
    s.join().unwrap();
    win.bytes_mut().write_at(0, b"window-bytes").unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        v.buffer.reservation().is_empty(),
        "the transfer published its fence while a write window was open"
    );
    let mut probe = [0u8; 16];
    rustix::fs::fcntl_setfl(&r, rustix::fs::OFlags::NONBLOCK).unwrap();
    assert_eq!(
        rustix::io::read(&r, &mut probe),
        Err(Errno::AGAIN),
        "nothing was sent while the window was open"
    );
    win.end().unwrap();
    let (f, tx) = transfer.join().unwrap();
    let f = f.unwrap();
    f.wait(Some(Duration::from_secs(10))).unwrap();
    assert_eq!(f.status(), FenceStatus::Signalled);
    rustix::fs::fcntl_setfl(&r, rustix::fs::OFlags::empty()).unwrap();
    let mut got = [0u8; 12];
    assert_eq!(rustix::io::read(&r, &mut got).unwrap(), 12);
    assert_eq!(&got, b"window-bytes");
    drop(tx);
}

/// `SYNC` has no range: on a dma-buf a window that reads never coexists
/// with one that writes, even on disjoint pages. Write-only windows may.
#[test]
fn windows_that_read_and_write_are_kept_apart_on_dma_bufs() {
    for b in [udmabuf(2), heap(2)] {
        let m = b.map().unwrap();
        let p = PAGE as usize;
        let w0 = m.window::<WriteOnly>(0..p, None).unwrap();
        for e in [
            m.window::<ReadOnly>(p..2 * p, None).unwrap_err(),
            m.window::<ReadWrite>(p..2 * p, None).unwrap_err(),
        ] {
            assert_eq!(e.kind(), ErrorKind::Busy, "{e}");
            assert_eq!(e.errno(), Some(Errno::BUSY));
            assert!(e.cause().contains("write window is open"), "{e}");
            assert!(e.cause().contains("non-coherent"), "{e}");
        }
        let w1 = m.window::<WriteOnly>(p..2 * p, None).unwrap();
        drop((w0, w1));
        let r0 = m.window::<ReadOnly>(0..p, None).unwrap();
        let e = m.window::<WriteOnly>(p..2 * p, None).unwrap_err();
        assert!(e.cause().contains("read window is open"), "{e}");
        let r1 = m.window::<ReadOnly>(p..2 * p, None).unwrap();
        drop((r0, r1));
        m.window::<ReadWrite>(0..2 * p, None).unwrap();
        assert_eq!(b.reservation().cpu_windows(), (0, 0));
    }
}
