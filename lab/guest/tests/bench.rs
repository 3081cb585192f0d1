//! `dmabuf bench` on real dma-bufs (system heap and udmabuf): every case
//! runs, `ideal-kind` among them (the bare ring on the backend's dma-bufs,
//! each access bracketed by `DMA_BUF_IOCTL_SYNC`, which the kernel refuses
//! with EINVAL if the flags are wrong), and every stream cell comes with
//! its ratios to the `ideal` ring and to `ideal-kind`. Under TCG only the
//! ratios mean anything, and nothing here asserts performance; the ratios
//! and what the stream adds per item are printed for the record.

use std::process::Command;

use dmabuf_lab_guest::{cli, require_lab};

fn bench(backend: &str) -> serde_json::Value {
    require_lab();
    let out = Command::new(cli())
        .args([
            "bench",
            "--quick",
            "--seconds",
            "0.2",
            "--backend",
            backend,
            "--json",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "dmabuf bench --backend {backend} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn check(v: &serde_json::Value, backend: &str) {
    assert_eq!(v["backend"], backend, "{v}");
    assert_eq!(v["schema_version"], 4);
    assert!(v["in_flight_bytes"].as_u64().is_some(), "{v}");
    let cells = v["throughput"].as_array().unwrap();
    assert!(cells.iter().any(|c| c["case"] == "ideal-kind"), "{v}");
    for c in cells {
        if c["case"] == "iceoryx2" {
            continue;
        }
        assert!(c["gib_s"].as_f64().is_some(), "{c}");
        let r = c["ratio_to_ideal"].as_f64().unwrap();
        let k = c["ratio_to_ideal_kind"].as_f64().unwrap();
        println!(
            "{backend}: {} at {} bytes: {r:.2}× ideal, {k:.2}× ideal-kind, {:.0} ns per item",
            c["case"],
            c["size"],
            c["ns_per_item"].as_f64().unwrap()
        );
    }
    for l in v["latency"].as_array().unwrap() {
        if l["case"] == "iceoryx2" {
            continue;
        }
        assert!(l["p50_us"].as_f64().is_some(), "{l}");
        println!(
            "{backend}: handoff {} p50 {}× the raw wake-up",
            l["case"], l["p50_to_wake"]
        );
    }
}

#[test]
fn bench_runs_on_the_system_heap() {
    check(&bench("heap"), "heap:system");
}

#[test]
fn bench_runs_on_udmabuf() {
    check(&bench("udmabuf"), "udmabuf");
}
