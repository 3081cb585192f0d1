//! `dmabuf stream` and `dmabuf bench` end to end, on the portable backend
//! (which every machine has). Nothing here asserts performance.

use std::process::Command;

fn dmabuf() -> Command {
    Command::new(env!("CARGO_BIN_EXE_dmabuf"))
}

fn json(out: &std::process::Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON report")
}

#[test]
fn stream_runs_producer_and_consumers_as_processes() {
    let out = dmabuf()
        .args([
            "stream",
            "--backend",
            "portable",
            "--size",
            "64K",
            "--count",
            "40",
        ])
        .args(["--buffers", "3", "--consumers", "2", "--json"])
        .output()
        .unwrap();
    let v = json(&out);
    assert_eq!(v["backend"], "portable");
    assert_eq!(v["items"], 40);
    assert_eq!(v["bytes"], 40 * 65536);
    assert_eq!(v["consumers"], 2);
    assert_eq!(v["verified"], true);
    assert!(v["handoff_us"]["p50"].as_f64().unwrap() > 0.0);
    assert!(v["throughput_gib_s"].as_f64().unwrap() > 0.0);
}

#[test]
fn stream_human_report_names_backend_and_latencies() {
    let out = dmabuf()
        .args([
            "stream",
            "--backend",
            "portable",
            "--size",
            "4096",
            "--seconds",
            "0.2",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = String::from_utf8_lossy(&out.stdout);
    for want in [
        "backend:    portable",
        "throughput:",
        "items/s",
        "p50",
        "p90",
        "p99",
        "verified",
    ] {
        assert!(s.contains(want), "missing '{want}' in:\n{s}");
    }
    // Not a terminal: no progress bar on stderr.
    assert!(!String::from_utf8_lossy(&out.stderr).contains('['));
}

#[test]
fn stream_roles_run_separately() {
    let sock = std::env::temp_dir().join(format!("dmabuf-cli-test-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&sock);
    let producer = dmabuf()
        .args([
            "stream",
            "--role",
            "producer",
            "--backend",
            "portable",
            "--count",
            "10",
            "--size",
            "8K",
            "--json",
            "--socket",
        ])
        .arg(&sock)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let consumer = dmabuf()
        .args(["stream", "--role", "consumer", "--json", "--socket"])
        .arg(&sock)
        .output()
        .unwrap();
    let c = json(&consumer);
    assert_eq!(c["items"], 10);
    assert_eq!(c["bytes"], 10 * 8192);
    let p = json(&producer.wait_with_output().unwrap());
    assert_eq!(p["items"], 10);
    assert!(!sock.exists(), "the socket file was left behind");
}

#[test]
fn stream_refuses_bad_arguments_clearly() {
    let out = dmabuf()
        .args(["stream", "--backend", "gpu"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains("unknown backend"), "{e}");
    let out = dmabuf().args(["stream", "--size", "0"]).output().unwrap();
    assert!(!out.status.success());
}

#[test]
fn bench_quick_reports_every_case() {
    let plot = std::env::temp_dir().join(format!("dmabuf-bench-test-{}.svg", std::process::id()));
    let out = dmabuf()
        .args(["bench", "--quick", "--seconds", "0.05", "--json", "--plot"])
        .arg(&plot)
        .output()
        .unwrap();
    let v = json(&out);
    let cells = v["throughput"].as_array().unwrap();
    assert_eq!(cells.len(), 2 * 5);
    for c in cells {
        let case = c["case"].as_str().unwrap();
        if case == "iceoryx2" && cfg!(not(feature = "iceoryx2")) {
            assert!(c["missing"].as_str().unwrap().contains("iceoryx2"));
            continue;
        }
        assert!(
            c["gib_s"].as_f64().is_some(),
            "{case} missing: {}",
            c["missing"]
        );
        assert!(c["items"].as_u64().unwrap() > 0);
    }
    assert_eq!(v["latency"].as_array().unwrap().len(), 3);
    let svg = std::fs::read_to_string(&plot).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("polyline"));
    let _ = std::fs::remove_file(&plot);
}
