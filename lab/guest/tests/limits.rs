//! Allocations that cannot fit are refused with a named cause on the real
//! kernel (the VM has 1 GiB): without the check a 2 GiB system-heap
//! allocation gets the process OOM-killed with no message.

use std::process::Command;

use dmabuf::alloc::heap::{Heap, HeapAllocOptions};
use dmabuf::alloc::portable::Portable;
use dmabuf::alloc::udmabuf::Udmabuf;
use dmabuf::{Allocate, Errno};
use dmabuf_lab_guest::{cli, require_lab};

const TWO_GIB: u64 = 2 << 30;

#[track_caller]
fn assert_refused_for_memory(e: &dmabuf::Error) {
    let m = e.to_string();
    assert_eq!(e.errno(), Some(Errno::NOMEM), "{m}");
    assert!(m.contains("2.0 GiB asked"), "{m}");
    assert!(
        m.contains("available (MemAvailable)") || m.contains("available (cgroup"),
        "{m}"
    );
}

#[test]
fn two_gib_from_every_allocator_is_refused_with_the_cause() {
    require_lab();
    let heap = Heap::open("system").unwrap();
    assert_refused_for_memory(&heap.allocate(TWO_GIB, "too-big").unwrap_err());
    assert_refused_for_memory(
        &heap
            .allocate_dma_buf(TWO_GIB, HeapAllocOptions::default())
            .unwrap_err(),
    );
    let u = Udmabuf::open().unwrap();
    assert_refused_for_memory(&u.allocate(TWO_GIB, "too-big").unwrap_err());
    assert_refused_for_memory(&Portable.allocate(TWO_GIB, "too-big").unwrap_err());
    // Still alive, and a buffer that fits is still made.
    let b = heap.allocate(16 << 20, "fits").unwrap();
    assert_eq!(b.size(), 16 << 20);
}

#[test]
fn sizes_near_u64_max_get_the_same_message_from_heap_and_udmabuf() {
    require_lab();
    let heap = Heap::open("system").unwrap();
    let u = Udmabuf::open().unwrap();
    // Overflowing when rounded up to pages: "too large", EINVAL.
    for size in [u64::MAX, u64::MAX - 4094] {
        let a = heap.allocate(size, "x").unwrap_err();
        let b = u.allocate(size, "x").unwrap_err();
        assert_eq!(a.cause(), b.cause(), "{a} / {b}");
        assert!(a.cause().contains("too large"), "{a}");
        assert_eq!(a.errno(), Some(Errno::INVAL));
    }
    // The largest page multiple: beyond memory, ENOMEM, same words.
    let size = u64::MAX - 4095;
    let a = heap.allocate(size, "x").unwrap_err();
    let b = u.allocate(size, "x").unwrap_err();
    assert_eq!(a.cause(), b.cause(), "{a} / {b}");
    assert!(a.cause().contains("16777216.0 TiB asked"), "{a}");
    assert_eq!(a.errno(), Some(Errno::NOMEM));
}

#[test]
fn the_cli_says_why_instead_of_being_killed() {
    require_lab();
    for backend in ["heap", "udmabuf", "portable"] {
        let out = Command::new(cli())
            .args(["alloc", "--size", "2G", "--backend", backend])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{backend}: {}: {err}",
            out.status
        );
        assert!(err.starts_with("dmabuf: "), "{backend}: {err}");
        assert!(err.contains("2.0 GiB asked"), "{backend}: {err}");
        assert!(err.contains("available ("), "{backend}: {err}");
        assert!(err.contains("ENOMEM"), "{backend}: {err}");
    }
    let out = Command::new(cli())
        .args(["stream", "--size", "1T", "--backend", "heap"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("asked") && err.contains("available ("),
        "{err}"
    );
    // Each buffer fits, the pool does not.
    let out = Command::new(cli())
        .args([
            "stream",
            "--size",
            "512M",
            "--buffers",
            "4",
            "--backend",
            "heap",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("stream pool (4 buffers of 512.0 MiB)"),
        "{err}"
    );
    assert!(err.contains("2.0 GiB asked"), "{err}");
}
