//! IIO DMABUF against the real kernel (`IIO_BUFFER_DMABUF_*` ioctls): the lab's fake ADC
//! (lab/fixtures/fake_adc/) on an out-of-tree `industrialio-buffer-dma`
//! fills enqueued dma-bufs with a checkable sample pattern. Test names
//! start with `iio_`.
//!
//! Order matters for the fake ADC: dma-bufs are attached *before* the
//! buffer is enabled, so the core turns its file-I/O blocks off and every
//! sample goes to the enqueued dma-bufs, counted from 0.

use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use dmabuf::endpoint::iio::{IioEndpoint, IIO_BUFFER_DMABUF_CYCLIC};
use dmabuf::endpoint::{DataPath, Direction, Endpoint, TransferOptions};
use dmabuf::{Allocate, Buffer, Errno, ErrorKind, Fence, FenceStatus, Heap, Portable, Udmabuf};
use dmabuf_lab_guest::bytes;
use dmabuf_lab_guest::fences::assert_failed_after_detach;
use dmabuf_lab_guest::iio::{check_samples, FakeAdc};
use dmabuf_lab_guest::require_lab;
use dmabuf_lab_guest::sys::iio as raw;

const WAIT: Option<Duration> = Some(Duration::from_secs(30));

static ADC: OnceLock<Mutex<FakeAdc>> = OnceLock::new();

/// The ADC, disabled, at full speed; one test at a time.
fn adc() -> MutexGuard<'static, FakeAdc> {
    require_lab();
    let m = ADC.get_or_init(|| {
        Mutex::new(FakeAdc::setup().unwrap_or_else(|e| panic!("fake ADC setup: {e}")))
    });
    let g = m.lock().unwrap_or_else(|p| p.into_inner());
    g.enable(false).unwrap();
    g.set_rate(0).unwrap();
    g
}

fn udmabuf(size: u64, name: &str) -> Buffer {
    Udmabuf::open().unwrap().allocate(size, name).unwrap()
}

fn endpoint(adc: &FakeAdc) -> IioEndpoint {
    IioEndpoint::open(&adc.dev, 0, Direction::FromDevice).unwrap()
}

fn opts_flags(flags: u32) -> TransferOptions {
    TransferOptions {
        flags,
        ..Default::default()
    }
}

#[test]
fn iio_kernel_answers_of_the_dmabuf_ioctls() {
    let adc = adc();
    let dev = rustix::fs::open(
        &adc.dev,
        rustix::fs::OFlags::RDWR | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .unwrap();
    let fd = raw::buffer_fd(&dev, 0).unwrap();
    assert_eq!(
        raw::buffer_fd(&dev, 0).map(drop),
        Err(Errno::BUSY),
        "one buffer fd at a time"
    );
    let a = udmabuf(8192, "iio-raw-a");
    let b = udmabuf(8192, "iio-raw-b");
    let (da, db) = (a.dma_buf().unwrap(), b.dma_buf().unwrap());
    raw::attach(&fd, da).unwrap();
    assert_eq!(raw::attach(&fd, da), Err(Errno::BUSY), "duplicate attach");
    assert_eq!(raw::detach(&fd, db), Err(Errno::PERM), "unknown buffer");
    let en = |d, flags, used| raw::enqueue(&fd, &raw::enqueue_arg(d, flags, used));
    assert_eq!(en(db, 0, 4096), Err(Errno::PERM), "not attached");
    assert_eq!(en(da, 0, 0), Err(Errno::INVAL), "bytes_used 0");
    assert_eq!(
        en(da, 0, 8193),
        Err(Errno::INVAL),
        "bytes_used past the end"
    );
    assert_eq!(
        en(da, IIO_BUFFER_DMABUF_CYCLIC, 4096),
        Err(Errno::INVAL),
        "cyclic on an input buffer"
    );
    assert_eq!(en(da, 2, 4096), Err(Errno::INVAL), "unknown flag");
    raw::detach(&fd, da).unwrap();
    assert_eq!(raw::detach(&fd, da), Err(Errno::PERM), "detached twice");
}

#[test]
fn iio_enqueued_dmabufs_fill_with_samples_in_order() {
    let adc = adc();
    let mut ep = endpoint(&adc);
    let bufs = [
        udmabuf(16384, "iio-u0"),
        Heap::open("system")
            .unwrap()
            .allocate(16384, "iio-heap")
            .unwrap(),
        udmabuf(65536, "iio-u1"),
    ];
    let atts: Vec<_> = bufs.iter().map(|b| ep.attach(b).unwrap()).collect();
    for a in &atts {
        assert_eq!(ep.path_of(a).unwrap(), DataPath::ZeroCopy);
    }
    assert_eq!(ep.data_path(), DataPath::ZeroCopy);
    adc.enable(true).unwrap();
    let mut first = 0u32;
    let mut fences: Vec<(Fence, u32, usize)> = vec![];
    for (a, b) in atts.iter().zip(&bufs) {
        let len = b.size() as usize;
        let f = ep
            .transfer(a, len as u64, TransferOptions::default())
            .unwrap();
        assert!(
            matches!(&f, Fence::User(u) if u.is_owner()),
            "the library's own fence, not the kernel's: {}",
            f.describe()
        );
        fences.push((f, first, len));
        first += (len / 4) as u32;
    }
    for ((f, first, len), b) in fences.iter().zip(&bufs) {
        f.wait(WAIT).unwrap();
        assert_eq!(f.status(), FenceStatus::Signalled);
        let got = bytes::read(b, *len, WAIT).unwrap();
        check_samples(&got, *first).unwrap_or_else(|e| panic!("{}: {e}", b.describe()));
    }
    // Reuse: the next round continues the count.
    let f = ep
        .transfer(&atts[0], 16384, TransferOptions::default())
        .unwrap();
    f.wait(WAIT).unwrap();
    check_samples(&bytes::read(&bufs[0], 16384, WAIT).unwrap(), first).unwrap();
    adc.enable(false).unwrap();
    // Polled kernel fences go before their attachments (kernel-findings).
    drop((f, fences));
    for a in &atts {
        ep.detach(a).unwrap();
    }
}

#[test]
fn iio_bytes_used_fills_only_that_much() {
    let adc = adc();
    let mut ep = endpoint(&adc);
    let buf = udmabuf(8192, "iio-partial");
    bytes::write(&buf, &[0xaa; 8192]).unwrap();
    let a = ep.attach(&buf).unwrap();
    adc.enable(true).unwrap();
    ep.transfer(&a, 1000, TransferOptions::default())
        .unwrap()
        .wait(WAIT)
        .unwrap();
    let got = bytes::read_all(&buf).unwrap();
    check_samples(&got[..1000], 0).unwrap();
    assert!(
        got[1000..].iter().all(|&b| b == 0xaa),
        "bytes past bytes_used were written"
    );
    adc.enable(false).unwrap();
}

#[test]
fn iio_read_window_waits_for_an_enqueue_in_flight() {
    let adc = adc();
    adc.set_rate(4096).unwrap(); // 16 KiB = 4096 samples: about a second
    let mut ep = endpoint(&adc);
    let buf = udmabuf(16384, "iio-window");
    let a = ep.attach(&buf).unwrap();
    adc.enable(true).unwrap();
    let f = ep.transfer(&a, 16384, TransferOptions::default()).unwrap();
    // A second enqueue of the same buffer must wait for the first: a
    // non-blocking one is refused as busy.
    let e = ep
        .transfer(
            &a,
            16384,
            TransferOptions {
                nonblocking: true,
                ..Default::default()
            },
        )
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Busy, "{e}");
    let reader = {
        let buf = buf.clone();
        std::thread::spawn(move || bytes::read(&buf, 16384, None))
    };
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !reader.is_finished(),
        "a read window opened while the ADC was still filling the buffer"
    );
    assert!(!f.is_signalled());
    let got = reader.join().unwrap().unwrap();
    assert!(
        f.is_signalled(),
        "the window ended its wait before the fence"
    );
    check_samples(&got, 0).unwrap();
    adc.enable(false).unwrap();
}

#[test]
fn iio_library_rules_cyclic_flags_duplicates_unknown() {
    let adc = adc();
    let mut ep = endpoint(&adc);
    let buf = udmabuf(8192, "iio-rules");
    let a = ep.attach(&buf).unwrap();
    let e = ep
        .transfer(&a, 4096, opts_flags(IIO_BUFFER_DMABUF_CYCLIC))
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    assert!(e.cause().contains("output buffers"), "{e}");
    let e = ep.transfer(&a, 4096, opts_flags(2)).unwrap_err();
    assert!(e.cause().contains("unknown transfer flags 0x2"), "{e}");
    let e = ep.transfer(&a, 0, TransferOptions::default()).unwrap_err();
    assert_eq!(e.errno(), Some(Errno::INVAL));
    let e = ep
        .transfer(&a, 8193, TransferOptions::default())
        .unwrap_err();
    assert_eq!(e.errno(), Some(Errno::INVAL));
    let e = ep.attach(&buf).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Busy, "{e}");
    ep.detach(&a).unwrap();
    let e = ep.detach(&a).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    assert_eq!(e.errno(), Some(Errno::PERM));
    let e = ep
        .transfer(&a, 4096, TransferOptions::default())
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
}

#[test]
fn iio_detach_with_an_enqueue_pending_fails_its_fence() {
    let adc = adc();
    adc.set_rate(1000).unwrap(); // 64 KiB = 16384 samples: 16 s
    let mut ep = endpoint(&adc);
    let buf = udmabuf(65536, "iio-detach");
    let a = ep.attach(&buf).unwrap();
    adc.enable(true).unwrap();
    let f = ep.transfer(&a, 65536, TransferOptions::default()).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert!(!f.is_signalled());
    ep.detach(&a).unwrap();
    // Detach alone leaves the block with the driver; disabling the buffer
    // aborts it (the kernel fails its fence with EINTR).
    adc.enable(false).unwrap();
    assert_failed_after_detach(f, "enqueue cut by detach and disable");
}

#[test]
fn iio_portable_buffer_takes_the_copy_path_and_says_why() {
    let adc = adc();
    let mut ep = endpoint(&adc);
    let buf = Portable.allocate(4096, "iio-portable").unwrap();
    let a = ep.attach(&buf).unwrap();
    match ep.path_of(&a).unwrap() {
        DataPath::Copy(why) => assert!(why.contains("portable memory"), "{why}"),
        p => panic!("{p}"),
    }
    // No dma-buf attached: the core uses its file-I/O blocks, read() works.
    adc.enable(true).unwrap();
    let f = ep.transfer(&a, 4096, TransferOptions::default()).unwrap();
    f.wait(WAIT).unwrap();
    let got = bytes::read_all(&buf).unwrap();
    check_samples(&got, 0).unwrap();
    adc.enable(false).unwrap();
}
