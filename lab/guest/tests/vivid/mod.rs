//! vivid with single- and multi-planar capture and output nodes, shared
//! by the V4L2 lab tests that need more than `node_types=0x1`.
//!
//! Two instances: instance 0 single-planar, instance 1 multi-planar,
//! each with a video capture and a video output node (`node_types` bit 0
//! and bit 8). Nodes are found by what `VIDIOC_QUERYCAP` says, not by
//! number. Modules stay loaded across test binaries, so vivid is
//! reloaded when the running instance lacks these nodes.

#![allow(dead_code)]

use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use dmabuf::endpoint::v4l2::query;
use dmabuf::endpoint::Direction;
use dmabuf_lab_guest::{load_module, module_loaded, require_lab, wait_for_path};

pub const PARAMS: &str = "n_devs=2 multiplanar=1,2 node_types=0x101,0x101";

/// Under TCG vivid delivers a few frames per second; be generous.
pub const FRAME_TIMEOUT: Duration = Duration::from_secs(30);

/// The nodes of the two vivid instances.
#[derive(Debug, Clone)]
pub struct Nodes {
    pub capture: String,
    pub output: String,
    pub capture_mplane: String,
    pub output_mplane: String,
}

fn scan() -> Option<Nodes> {
    let (mut c, mut o, mut cm, mut om) = (None, None, None, None);
    for i in 0..32 {
        let path = format!("/dev/video{i}");
        let Ok(info) = query(&path) else {
            continue;
        };
        if info.driver != "vivid" {
            continue;
        }
        let slot = match (
            info.multiplanar(Direction::FromDevice),
            info.multiplanar(Direction::ToDevice),
        ) {
            (Some(false), _) => &mut c,
            (Some(true), _) => &mut cm,
            (None, Some(false)) => &mut o,
            (None, Some(true)) => &mut om,
            (None, None) => continue,
        };
        slot.get_or_insert(path);
    }
    Some(Nodes {
        capture: c?,
        output: o?,
        capture_mplane: cm?,
        output_mplane: om?,
    })
}

/// Loads (or reloads) vivid with [`PARAMS`] and finds its nodes.
pub fn nodes() -> Nodes {
    static NODES: OnceLock<Nodes> = OnceLock::new();
    NODES
        .get_or_init(|| {
            require_lab();
            if module_loaded("vivid") {
                if let Some(n) = scan() {
                    return n;
                }
                let out = Command::new("rmmod").arg("vivid").output().unwrap();
                assert!(out.status.success(), "rmmod vivid: {out:?}");
            }
            load_module("vivid", PARAMS).unwrap();
            wait_for_path("/dev/video3", Duration::from_secs(10)).unwrap();
            let start = std::time::Instant::now();
            loop {
                if let Some(n) = scan() {
                    eprintln!("vivid nodes: {n:?}");
                    return n;
                }
                assert!(
                    start.elapsed() < Duration::from_secs(10),
                    "vivid ({PARAMS}) shows no multi-planar nodes"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        })
        .clone()
}

/// Plane bytes, read in a read window (the one place tests touch window
/// bytes).
pub fn read_plane(map: &dmabuf::frame::PlaneMap) -> Vec<u8> {
    let w = map.read().unwrap();
    let v = w.to_vec();
    w.end().unwrap();
    v
}

/// Fills a plane with `bytes` (repeated) in a write window.
pub fn write_plane(map: &dmabuf::frame::PlaneMap, bytes: &[u8]) {
    let mut w = map.write().unwrap();
    let data: Vec<u8> = bytes.iter().copied().cycle().take(w.len()).collect();
    w.copy_from_slice(&data);
    w.end().unwrap();
}

/// A whole buffer's bytes, read in a read window.
pub fn read_buffer(buf: &dmabuf::Buffer) -> Vec<u8> {
    let map = buf.map_read_only().unwrap();
    let w = map.read().unwrap();
    let v = w.to_vec();
    w.end().unwrap();
    v
}

/// Zeroes a whole buffer in a write window.
pub fn zero_buffer(buf: &dmabuf::Buffer) {
    let map = buf.map().unwrap();
    let mut w = map.write().unwrap();
    w.fill(0);
    w.end().unwrap();
}
