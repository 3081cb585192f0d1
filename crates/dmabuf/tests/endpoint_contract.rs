//! The endpoint contract, the same for every endpoint that can run on
//! this host (the fd endpoint, and FunctionFS and IIO on their copy path
//! with a pipe standing in for the device file): duplicate attach is
//! EBUSY, unknown attachments are EPERM, ids are unique in the process, a
//! transfer blocked by a window publishes nothing, bytes arrive.

use std::collections::HashSet;
use std::os::fd::OwnedFd;
use std::time::Duration;

use dmabuf::endpoint::{
    DataPath, Direction, Endpoint, FdEndpoint, FunctionFsEndpoint, IioEndpoint, TransferOptions,
};
use dmabuf::{Allocate, Errno, ErrorKind, Portable};

fn to_device_endpoints() -> Vec<(Box<dyn Endpoint>, OwnedFd)> {
    let mut out: Vec<(Box<dyn Endpoint>, OwnedFd)> = Vec::new();
    let (r, w) = rustix::pipe::pipe().unwrap();
    out.push((
        Box::new(FdEndpoint::new(w, Direction::ToDevice).unwrap()),
        r,
    ));
    let (r, w) = rustix::pipe::pipe().unwrap();
    out.push((
        Box::new(FunctionFsEndpoint::from_fd(w, Direction::ToDevice, "ep-stand-in").unwrap()),
        r,
    ));
    let (r, w) = rustix::pipe::pipe().unwrap();
    out.push((
        Box::new(IioEndpoint::from_buffer_fd(w, Direction::ToDevice, "iio-stand-in").unwrap()),
        r,
    ));
    out
}

#[test]
fn every_endpoint_keeps_the_attach_contract() {
    let buf = Portable.allocate(4096, "contract").unwrap();
    let mut eps = to_device_endpoints();
    let mut ids = HashSet::new();
    let mut atts = Vec::new();
    for (ep, _) in eps.iter_mut() {
        let a = ep.attach(&buf).unwrap();
        assert!(ids.insert(a.id), "attachment ids are unique in the process");
        let e = ep.attach(&buf).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Busy, "{e}");
        assert_eq!(e.errno(), Some(Errno::BUSY), "{e}");
        assert!(e.cause().contains("already attached"), "{e}");
        atts.push(a);
    }
    let n = eps.len();
    for (i, (ep, _)) in eps.iter_mut().enumerate() {
        // Another endpoint's attachment of the same buffer is unknown here.
        let other = &atts[(i + 1) % n];
        let e = ep
            .transfer(other, 4, TransferOptions::default())
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
        assert_eq!(e.errno(), Some(Errno::PERM), "{e}");
        let e = ep.detach(other).unwrap_err();
        assert_eq!(e.errno(), Some(Errno::PERM), "{e}");
        ep.detach(&atts[i]).unwrap();
        let e = ep
            .transfer(&atts[i], 4, TransferOptions::default())
            .unwrap_err();
        assert_eq!(e.errno(), Some(Errno::PERM), "detached: {e}");
    }
}

#[test]
fn every_endpoint_waits_and_publishes_in_one_step_and_moves_the_bytes() {
    for (mut ep, r) in to_device_endpoints() {
        let buf = Portable.allocate(4096, "bytes").unwrap();
        let a = ep.attach(&buf).unwrap();
        if !matches!(ep.data_path(), DataPath::Copy(_)) {
            panic!("portable buffers take the copy path: {}", ep.data_path());
        }
        let map = buf.map().unwrap();
        let mut win = map.write().unwrap();
        win.bytes_mut().write_at(0, b"window").unwrap();
        let e = ep
            .transfer(
                &a,
                6,
                TransferOptions {
                    timeout: Duration::from_millis(30),
                    ..Default::default()
                },
            )
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Busy, "{e}");
        assert!(e.cause().contains("open CPU write window"), "{e}");
        assert!(buf.reservation().is_empty(), "nothing published");
        drop(win);
        let f = ep.transfer(&a, 6, TransferOptions::default()).unwrap();
        f.wait(Some(Duration::from_secs(10))).unwrap();
        let mut got = [0u8; 6];
        assert_eq!(rustix::io::read(&r, &mut got).unwrap(), 6);
        assert_eq!(&got, b"window");
    }
}
