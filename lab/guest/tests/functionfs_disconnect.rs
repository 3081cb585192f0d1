//! FunctionFS endpoints when the other side goes away: the UDC unbound
//! with zero-copy and copy transfers in flight (then bound again), the
//! host side disconnected (soft disconnect) mid-transfer, and a
//! copy endpoint dropped while its worker is blocked in a `write()` nobody
//! reads. A binary of its own because it takes the gadget down. Tests run
//! in name order, the copy drop last: if its worker were ever left behind
//! it would hold an endpoint file, and when that file is finally closed
//! FunctionFS detaches *every* dma-buf of the endpoint, whoever attached
//! it. Test names start with `ffs_`.

use std::sync::mpsc;
use std::sync::OnceLock;
use std::time::Duration;

use dmabuf::endpoint::functionfs::FunctionFsEndpoint;
use dmabuf::endpoint::{DataPath, Direction, Endpoint, TransferOptions};
use dmabuf::{Allocate, Errno, Fence, FenceStatus, Portable, Udmabuf};
use dmabuf_lab_guest::require_lab;
use dmabuf_lab_guest::usb::{bind_udc, soft_connect, unbind_udc, Gadget, FFS_DIR};

const BOUND: Duration = Duration::from_secs(15);

static GADGET: OnceLock<Gadget> = OnceLock::new();

fn gadget() -> &'static Gadget {
    require_lab();
    GADGET.get_or_init(|| Gadget::setup().unwrap_or_else(|e| panic!("gadget setup: {e}")))
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Runs `f` on a thread and fails the test if it does not return within
/// `BOUND` (the thread is left behind then).
fn bounded<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(BOUND)
        .unwrap_or_else(|_| panic!("{what} did not return within {BOUND:?}"))
}

fn assert_failed_with_named_cause(f: &Fence, what: &str) {
    let e = f
        .wait(Some(BOUND))
        .expect_err(&format!("{what}: the fence signalled success"));
    let errno = e
        .errno()
        .unwrap_or_else(|| panic!("{what}: no errno in {e}"));
    assert!(
        matches!(f.status(), FenceStatus::Error(x) if x == errno),
        "{what}: status {:?}, error {e}",
        f.status()
    );
    // The cause is named: the errno's name is in the message.
    let name = dmabuf::error::errno_name(errno);
    assert!(
        name.starts_with('E') && e.to_string().contains(&name),
        "{what}: {e}"
    );
    eprintln!("{what}: {e}");
}

#[test]
fn ffs_c_copy_endpoint_dropped_while_its_write_waits_for_the_host_returns() {
    let g = gadget();
    let before = open_fds();
    let mut ep = FunctionFsEndpoint::open(format!("{FFS_DIR}/ep1"), Direction::ToDevice).unwrap();
    let buf = Portable.allocate(65536, "ffs-stuck").unwrap();
    let a = ep.attach(&buf).unwrap();
    assert!(matches!(ep.path_of(&a).unwrap(), DataPath::Copy(_)));
    let f = ep.transfer(&a, 65536, TransferOptions::default()).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(!f.is_signalled(), "nobody read on the host side");
    drop(a);
    bounded(
        "dropping a copy endpoint whose worker is blocked in write()",
        move || drop(ep),
    );
    assert_failed_with_named_cause(&f, "copy transfer cut by drop");
    // The library cut it (the blocked write was interrupted and the
    // worker saw the cancellation), not the host.
    assert_eq!(f.status(), FenceStatus::Error(Errno::CANCELED));
    drop(f);
    drop(buf);
    assert_eq!(open_fds(), before, "file descriptors leaked");
    // Whatever the interrupted write had queued is drained; the next
    // test starts with an idle endpoint.
    while g.host_read_once(65536, Duration::from_millis(300)).is_ok() {}
}

#[test]
fn ffs_a_udc_unbound_mid_transfer_fails_every_fence_and_nothing_hangs() {
    let _g = gadget();
    let before = open_fds();
    let mut ep_in =
        FunctionFsEndpoint::open(format!("{FFS_DIR}/ep1"), Direction::ToDevice).unwrap();
    let mut ep_out =
        FunctionFsEndpoint::open(format!("{FFS_DIR}/ep2"), Direction::FromDevice).unwrap();
    let zin = Udmabuf::open()
        .unwrap()
        .allocate(65536, "unbind-in")
        .unwrap();
    let zout = Udmabuf::open()
        .unwrap()
        .allocate(65536, "unbind-out")
        .unwrap();
    let cout = Portable.allocate(65536, "unbind-copy").unwrap();
    let ai = ep_in.attach(&zin).unwrap();
    let ao = ep_out.attach(&zout).unwrap();
    let ac = ep_out.attach(&cout).unwrap();
    assert_eq!(ep_in.path_of(&ai).unwrap(), DataPath::ZeroCopy);
    assert_eq!(ep_out.path_of(&ao).unwrap(), DataPath::ZeroCopy);
    let fi = ep_in
        .transfer(&ai, 65536, TransferOptions::default())
        .unwrap();
    let fo = ep_out
        .transfer(&ao, 65536, TransferOptions::default())
        .unwrap();
    let fc = ep_out
        .transfer(&ac, 65536, TransferOptions::default())
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    for f in [&fi, &fo, &fc] {
        assert!(!f.is_signalled());
    }
    bounded("unbinding the UDC", unbind_udc).unwrap();
    assert_failed_with_named_cause(&fi, "zero-copy IN transfer cut by unbind");
    assert_failed_with_named_cause(&fo, "zero-copy OUT transfer cut by unbind");
    assert_failed_with_named_cause(&fc, "copy OUT transfer cut by unbind");
    // The buffers are the CPU's again: windows open at once.
    for b in [&zin, &zout, &cout] {
        let m = b.map().unwrap();
        m.window::<dmabuf::mapping::ReadOnly>(0..16, Some(Duration::from_secs(1)))
            .unwrap();
    }
    drop((fi, fo, fc));
    // The UDC is gone: 6.12's FUNCTIONFS_DMABUF_TRANSFER and _DETACH would
    // dereference the NULL gadget (kernel-findings). The endpoints saw
    // ESHUTDOWN and ask before issuing either: a transfer is refused with
    // that cause, a detach leaves the attachment to the file's close.
    let (ep_in, ai, r) = bounded("a zero-copy transfer after unbind", move || {
        let r = ep_in.transfer(&ai, 4096, TransferOptions::default());
        (ep_in, ai, r)
    });
    let e = r.expect_err("a zero-copy transfer was queued on an unbound UDC");
    assert_eq!(e.errno(), Some(Errno::SHUTDOWN), "{e}");
    assert!(e.cause().contains("unbound"), "{e}");
    let (ep_out, r) = bounded("a zero-copy detach after unbind", move || {
        let r = ep_out.detach(&ao);
        (ep_out, r)
    });
    r.unwrap();
    // 6.12's FUNCTIONFS_DMABUF_DETACH dereferences ffs->gadget, which an
    // unbind clears (kernel-findings): bind again before the endpoints
    // detach their buffers.
    bounded("binding the UDC again", bind_udc).unwrap();
    drop((ai, ac));
    bounded("dropping endpoints after unbind", move || {
        drop(ep_in);
        drop(ep_out);
    });
    drop((zin, zout, cout));
    assert_eq!(open_fds(), before, "file descriptors leaked");
}

#[test]
fn ffs_b_host_disconnected_mid_transfer_fails_fences_and_reconnects() {
    let _g = gadget();
    let before = open_fds();
    let mut ep_in =
        FunctionFsEndpoint::open(format!("{FFS_DIR}/ep1"), Direction::ToDevice).unwrap();
    let zin = Udmabuf::open().unwrap().allocate(65536, "disc-in").unwrap();
    let ai = ep_in.attach(&zin).unwrap();
    assert_eq!(ep_in.path_of(&ai).unwrap(), DataPath::ZeroCopy);
    // Blocks until the host (re)configured the device after the rebind.
    let fi = bounded("queueing a transfer after the rebind", move || {
        let f = ep_in.transfer(&ai, 65536, TransferOptions::default());
        (ep_in, ai, f)
    });
    let (ep_in, ai, fi) = (fi.0, fi.1, fi.2.unwrap());
    std::thread::sleep(Duration::from_millis(300));
    assert!(!fi.is_signalled(), "nobody read on the host side");
    // The host side goes away: the UDC drops its pull-up.
    bounded("soft disconnect", || soft_connect(false)).unwrap();
    assert_failed_with_named_cause(&fi, "zero-copy IN transfer cut by a host disconnect");
    drop(fi);
    bounded("soft connect", || soft_connect(true)).unwrap();
    drop(ai);
    bounded("dropping the endpoint after a disconnect", move || {
        drop(ep_in)
    });
    drop(zin);
    assert_eq!(open_fds(), before, "file descriptors leaked");
}
