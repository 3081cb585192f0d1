//! Errors keep the failure they were made from (`Error::source`), and
//! convert to `std::io::Error` with their errno intact.

use std::error::Error as _;
use std::process::Command;
use std::time::Duration;

use dmabuf::endpoint::{Direction, Endpoint, FdEndpoint, TransferOptions};
use dmabuf::mapping::ReadOnly;
use dmabuf::share::Channel;
use dmabuf::{Allocate, Errno, Error, ErrorKind, Portable, Usage, UserFence};

/// Every error of the chain, outermost first, as text.
fn chain(e: &(dyn std::error::Error + 'static)) -> Vec<String> {
    let mut out = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push(s.to_string());
        cur = s.source();
    }
    out
}

#[test]
fn a_window_refused_for_a_fence_has_the_fence_time_out_as_source() {
    let buf = Portable.allocate(4096, "chain").unwrap();
    let fence = UserFence::new().unwrap();
    buf.add_fence(fence.clone().into(), Usage::Write).unwrap();
    let map = buf.map().unwrap();
    let e = map
        .window::<ReadOnly>(0..4096, Some(Duration::from_millis(10)))
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Busy, "{e}");
    assert_eq!(e.errno(), Some(Errno::BUSY));
    let source = e.source().expect("the fence's own error is kept");
    let inner = source.downcast_ref::<Error>().expect("a dmabuf::Error");
    assert_eq!(inner.kind(), ErrorKind::TimedOut, "{inner}");
    assert_eq!(inner.errno(), Some(Errno::TIMEDOUT));
    assert_eq!(chain(&e).len(), 2, "{:?}", chain(&e));

    // To io::Error: the errno is intact.
    let io: std::io::Error = e.into();
    assert_eq!(io.raw_os_error(), Some(Errno::BUSY.raw_os_error()));
    assert_eq!(io.kind(), std::io::ErrorKind::ResourceBusy);
    fence.signal().unwrap();
}

#[test]
fn a_transfer_refused_for_a_fence_keeps_the_chain_through_its_explanation() {
    let (r, _w) = rustix::pipe::pipe().unwrap();
    let mut ep = FdEndpoint::new(r, Direction::FromDevice).unwrap();
    let buf = Portable.allocate(4096, "dst").unwrap();
    let att = ep.attach(&buf).unwrap();
    let fence = UserFence::new().unwrap();
    buf.add_fence(fence.clone().into(), Usage::Read).unwrap();
    let e = ep
        .transfer(
            &att,
            4096,
            TransferOptions {
                timeout: Duration::from_millis(10),
                ..Default::default()
            },
        )
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Busy, "{e}");
    assert!(e.cause().contains("waited"), "{e}");
    let inner = e.source().and_then(|s| s.downcast_ref::<Error>());
    assert_eq!(inner.map(Error::kind), Some(ErrorKind::TimedOut), "{e}");
    fence.signal().unwrap();
}

#[test]
fn an_io_failure_is_the_source_and_its_errno_is_kept() {
    let mut cmd = Command::new("/nonexistent/dmabuf-no-such-program");
    let e = Channel::spawn_with_channel(&mut cmd).unwrap_err();
    assert_eq!(e.errno(), Some(Errno::NOENT), "{e}");
    assert_eq!(e.kind(), ErrorKind::NotFound);
    let io = e
        .source()
        .and_then(|s| s.downcast_ref::<std::io::Error>())
        .expect("the io::Error is the source");
    assert_eq!(io.kind(), std::io::ErrorKind::NotFound);
    let converted: std::io::Error = e.into();
    assert_eq!(converted.raw_os_error(), Some(Errno::NOENT.raw_os_error()));
}

#[test]
fn without_an_errno_the_io_error_carries_the_error_and_its_chain() {
    let inner = Error::new(ErrorKind::TimedOut, "fence wait", "fence 1#1", "timed out");
    let outer =
        Error::new(ErrorKind::Protocol, "receive", "peer 7", "no answer").with_source(inner);
    let io: std::io::Error = outer.into();
    assert_eq!(io.raw_os_error(), None);
    assert_eq!(io.kind(), std::io::ErrorKind::InvalidInput);
    let back = io.get_ref().unwrap().downcast_ref::<Error>().unwrap();
    assert_eq!(back.kind(), ErrorKind::Protocol);
    // std's io::Error gives the inner error's source as its own.
    let src = io.source().unwrap().downcast_ref::<Error>().unwrap();
    assert_eq!(src.operation(), "fence wait");
}

#[test]
fn every_errno_survives_the_conversion() {
    for errno in [
        Errno::INVAL,
        Errno::BUSY,
        Errno::NOMEM,
        Errno::TIMEDOUT,
        Errno::ACCESS,
        Errno::PIPE,
        Errno::NOTTY,
        Errno::CANCELED,
    ] {
        let e = Error::kernel("op", "object", errno, "cause");
        let io: std::io::Error = e.into();
        assert_eq!(io.raw_os_error(), Some(errno.raw_os_error()), "{errno:?}");
    }
}
