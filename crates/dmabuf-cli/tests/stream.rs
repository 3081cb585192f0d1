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
    // The handoff splits into queueing and delivery: neither part's
    // percentile is above the whole's largest.
    let p99 = v["handoff_us"]["p99"].as_f64().unwrap();
    for part in ["queueing_us", "delivery_us"] {
        let q = v[part]["p50"].as_f64().unwrap();
        assert!(
            q >= 0.0 && q <= p99 * 1.05,
            "{part} p50 {q} vs handoff p99 {p99}"
        );
    }
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
    // A repeat count of 0 is refused.
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
        .args([
            "bench",
            "--quick",
            "--seconds",
            "0.05",
            "--repeat",
            "2",
            "--json",
            "--plot",
        ])
        .arg(&plot)
        .output()
        .unwrap();
    let v = json(&out);
    let cells = v["throughput"].as_array().unwrap();
    assert_eq!(cells.len(), 2 * 7);
    assert_eq!(v["schema_version"], 4);
    assert_eq!(v["repeat"], 2);
    // The pool and the ideal ring hold the pipe's bytes in flight: the
    // same buffers for both, at least 4.
    assert_eq!(v["in_flight_bytes"], 1 << 20);
    assert!(v["machine"]["cores"].as_u64().unwrap() >= 1);
    assert!(v["machine"]["kernel"].as_str().is_some());
    // The project's targets only with --targets.
    assert!(v.get("targets").is_none());
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
        assert_eq!(c["runs"], 2, "{case}");
        let want = match (case, c["size"].as_u64().unwrap()) {
            ("ideal" | "ideal-kind" | "dmabuf", 4096) => serde_json::json!(256),
            ("ideal" | "ideal-kind" | "dmabuf" | "touch", _) => serde_json::json!(4),
            _ => serde_json::Value::Null,
        };
        assert_eq!(c["buffers"], want, "{case}");
        // Every cell is a ratio to the ideal of its size.
        assert!(c["ratio_to_ideal"].as_f64().unwrap() > 0.0, "{case}");
        if case == "ideal" {
            assert_eq!(c["ratio_to_ideal"].as_f64(), Some(1.0));
        }
        // And to the ideal ring on buffers of the stream's kind, with the
        // time per item behind every throughput.
        assert!(c["ratio_to_ideal_kind"].as_f64().unwrap() > 0.0, "{case}");
        if case == "ideal-kind" {
            assert_eq!(c["ratio_to_ideal_kind"].as_f64(), Some(1.0));
        }
        let ns = c["ns_per_item"].as_f64().unwrap();
        let gib_s = c["gib_s"].as_f64().unwrap();
        let size = c["size"].as_f64().unwrap();
        assert!(
            (ns * gib_s * (1u64 << 30) as f64 / 1e9 / size - 1.0).abs() < 1e-9,
            "{c}"
        );
    }
    // 256 buffers at 4 KiB: the ideal-kind ring's fds reach its consumer in
    // more than one message, and it ran (checked above).
    let lat = v["latency"].as_array().unwrap();
    let names: Vec<&str> = lat.iter().map(|l| l["case"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        ["dmabuf", "dmabuf-poll", "ideal", "unix", "iceoryx2"]
    );
    for l in lat {
        if l["case"] == "iceoryx2" && cfg!(not(feature = "iceoryx2")) {
            continue;
        }
        assert!(l["p50_us"].as_f64().unwrap() > 0.0, "{l}");
        assert!(l["p99_us"].as_f64().unwrap() >= l["p50_us"].as_f64().unwrap());
        assert!(l["p50_to_wake"].as_f64().is_some(), "{l}");
    }
    let wake = v["wake"].as_array().unwrap();
    assert_eq!(wake.len(), 2);
    for w in wake {
        assert!(w["p50_us"].as_f64().unwrap() > 0.0, "{w}");
    }
    let svg = std::fs::read_to_string(&plot).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("polyline"));
    let _ = std::fs::remove_file(&plot);
}

#[test]
fn bench_table_shows_ratios_and_targets_only_when_asked() {
    let run = |extra: &[&str]| {
        let out = dmabuf()
            .args(["bench", "--quick", "--seconds", "0.02"])
            .args(extra)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let plain = run(&[]);
    assert!(plain.contains("ratio to ideal"), "{plain}");
    assert!(plain.contains("wake-futex"), "{plain}");
    assert!(plain.contains("time per item (portable buffers"), "{plain}");
    assert!(plain.contains("stream adds"), "{plain}");
    assert!(plain.contains("/s"), "{plain}");
    assert!(!plain.contains("targets"), "{plain}");
    let with = run(&["--targets"]);
    assert!(with.contains("handoff_p50_to_wake"), "{with}");
    // A repeat count of 0 is refused.
    let out = dmabuf().args(["bench", "--repeat", "0"]).output().unwrap();
    assert!(!out.status.success());
}
