//! `dmabuf stream` on real dma-bufs: a producer and consumer processes
//! sharing heap and udmabuf buffers over a Unix socket, every byte written
//! in a write window and checked in a read window.

use std::process::Command;

use dmabuf_lab_guest::{cli, require_lab};

fn stream(backend: &str, consumers: u32) -> serde_json::Value {
    require_lab();
    let out = Command::new(cli())
        .args([
            "stream",
            "--backend",
            backend,
            "--count",
            "24",
            "--size",
            "64K",
            "--buffers",
            "3",
            "--consumers",
            &consumers.to_string(),
            "--json",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "dmabuf stream --backend {backend} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn stream_runs_on_the_system_heap() {
    let v = stream("heap", 1);
    assert_eq!(v["backend"], "heap:system", "{v}");
    assert_eq!(v["items"], 24);
    assert_eq!(v["bytes"], 24 * 65536);
    assert_eq!(v["verified"], true);
}

#[test]
fn stream_runs_on_udmabuf_to_two_consumers() {
    let v = stream("udmabuf", 2);
    assert_eq!(v["backend"], "udmabuf", "{v}");
    assert_eq!(v["consumers"], 2);
    assert_eq!(v["items"], 24);
    assert_eq!(v["verified"], true);
}

#[test]
fn stream_picks_the_heap_automatically() {
    let v = stream("auto", 1);
    assert_eq!(v["backend"], "heap:system", "{v}");
    assert_eq!(v["verified"], true);
}
