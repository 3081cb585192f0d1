//! No input makes the command panic: bad values get clap's error (exit 2)
//! naming the bound, failures get `dmabuf: …` naming the cause (exit 1),
//! a full device is an error, a closed pipe a quiet end, and `stream`
//! survives consumers that die or stop.

use std::io::Read;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn dmabuf() -> Command {
    Command::new(env!("CARGO_BIN_EXE_dmabuf"))
}

fn run(args: &[&str]) -> Output {
    dmabuf().args(args).output().expect("run the dmabuf binary")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Asserts exit code `code` and that stderr holds every one of `want`.
#[track_caller]
fn refused(args: &[&str], code: i32, want: &[&str]) {
    let out = run(args);
    let err = text(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(code),
        "{args:?}: {}\nstderr:\n{err}",
        out.status
    );
    for w in want {
        assert!(err.contains(w), "{args:?}: no '{w}' in stderr:\n{err}");
    }
    assert!(!err.contains("panicked"), "{args:?}: {err}");
}

#[test]
fn durations_out_of_range_name_the_bound() {
    let options: &[&[&str]] = &[
        &["stream", "--seconds"],
        &["stream", "--timeout"],
        &["alloc", "--size", "4K", "--hold"],
        &["capture", "--timeout"],
        &["ls", "--watch"],
        &["bench", "--seconds"],
    ];
    for opt in options {
        for bad in ["inf", "-inf", "nan", "1e300", "-1", "31536001"] {
            let mut args = opt.to_vec();
            args.push(bad);
            refused(&args, 2, &["out of range", "365 days"]);
        }
        let mut args = opt.to_vec();
        args.push("soon");
        refused(&args, 2, &["'soon' is not a number of seconds"]);
    }
    // Zero: a hold of 0 s is fine, a stream of 0 s is not.
    refused(&["stream", "--seconds", "0"], 2, &["expected 0 < seconds"]);
    let out = run(&[
        "alloc",
        "--size",
        "4K",
        "--backend",
        "portable",
        "--hold",
        "0",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[test]
fn zero_counts_and_lonely_sockets_are_refused_at_parsing() {
    refused(
        &["stream", "--count", "0"],
        2,
        &["invalid value '0' for '--count <COUNT>'"],
    );
    refused(
        &["stream", "--consumers", "0"],
        2,
        &["invalid value '0' for '--consumers <CONSUMERS>'", "1..=64"],
    );
    refused(&["stream", "--consumers", "65"], 2, &["1..=64"]);
    refused(&["stream", "--buffers", "0"], 2, &["1..=1024"]);
    refused(
        &["stream", "--socket", "/tmp/x.sock"],
        2,
        &["required arguments were not provided", "--role"],
    );
    refused(
        &["stream", "--role", "consumer"],
        2,
        &["required arguments were not provided", "--socket"],
    );
    refused(&["ls", "--watch", "1", "--count", "0"], 2, &["--count"]);
    refused(
        &["stream", "--role", "producer", "--socket", "-"],
        1,
        &["--socket - is for a consumer"],
    );
    refused(
        &[
            "bench",
            "--worker",
            "pipe",
            "--path",
            "x",
            "--size",
            "18446744073709551615",
        ],
        2,
        &["--size"],
    );
}

#[test]
fn sizes_beyond_memory_are_refused_with_the_numbers() {
    refused(
        &["stream", "--size", "1T", "--backend", "portable"],
        1,
        &["stream pool", "asked", "available (", "ENOMEM"],
    );
    refused(
        &["alloc", "--size", "16777215T", "--backend", "portable"],
        1,
        &["asked", "available (", "ENOMEM"],
    );
    // Every buffer fits but not the pool.
    refused(
        &[
            "stream",
            "--size",
            "64G",
            "--buffers",
            "1024",
            "--backend",
            "portable",
        ],
        1,
        &["stream pool (1024 buffers of 64.0 GiB)", "asked"],
    );
}

#[test]
fn a_full_device_is_an_error_not_a_panic() {
    let full = || {
        std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap()
    };
    let cases: &[&[&str]] = &[
        &["probe"],
        &["probe", "--json"],
        &["ls"],
        &["ls", "--json"],
        &["alloc", "--size", "4K", "--backend", "portable"],
        &[
            "stream",
            "--backend",
            "portable",
            "--size",
            "4K",
            "--count",
            "3",
        ],
        &[
            "stream",
            "--backend",
            "portable",
            "--size",
            "4K",
            "--count",
            "3",
            "--json",
        ],
        &["--help"],
    ];
    for args in cases {
        let out = dmabuf().args(*args).stdout(full()).output().unwrap();
        let err = text(&out.stderr);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        if args[0] == "--help" {
            // clap's own output: its exit, not a panic.
            assert_ne!(out.status.code(), Some(101), "{args:?}: {err}");
            continue;
        }
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(
            err.contains("cannot write to standard output") && err.contains("No space left"),
            "{args:?}: {err}"
        );
    }
    // stderr full too: still no panic, still exit 1.
    let out = dmabuf()
        .args(["probe", "--json"])
        .stdout(full())
        .stderr(full())
        .status()
        .unwrap();
    assert_eq!(out.code(), Some(1));
}

#[test]
fn a_closed_pipe_is_a_quiet_end() {
    for args in [
        &["ls", "--json"][..],
        &["probe", "--json"],
        &["probe"],
        &[
            "stream",
            "--backend",
            "portable",
            "--size",
            "4K",
            "--count",
            "3",
            "--json",
        ],
    ] {
        let mut child = dmabuf()
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // The reader goes away before anything is written.
        drop(child.stdout.take());
        let mut err = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        let st = child.wait().unwrap();
        assert_eq!(st.code(), Some(0), "{args:?}: {st}: {err}");
        assert_eq!(err, "", "{args:?}");
    }
    // As in a shell: `dmabuf ls --json | head -1`, with pipefail so that
    // the command's own exit status counts.
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "set -o pipefail; '{}' ls --json | head -1",
            env!("CARGO_BIN_EXE_dmabuf")
        ))
        .output()
        .unwrap();
    assert_eq!(text(&out.stderr), "");
    assert!(out.status.success(), "{}", out.status);
    assert!(text(&out.stdout).starts_with('{'), "{}", text(&out.stdout));
}

#[test]
fn alloc_output_cannot_be_forged_by_a_name() {
    let out = run(&[
        "alloc",
        "--size",
        "4K",
        "--backend",
        "portable",
        "--name",
        "a\nkind: forged\r\t\u{1b}",
    ]);
    let s = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let kinds: Vec<&str> = s.lines().filter(|l| l.starts_with("kind:")).collect();
    assert_eq!(kinds, ["kind: portable"], "{s}");
    assert!(
        s.lines()
            .any(|l| l == "name: a\\nkind: forged\\r\\t\\u{1b}"),
        "{s}"
    );
    // The library's bound on names, named.
    refused(
        &[
            "alloc",
            "--size",
            "4K",
            "--backend",
            "portable",
            "--name",
            &"n".repeat(32),
        ],
        1,
        &["32 bytes; at most 31 fit"],
    );
}

#[test]
fn bad_inputs_never_exit_101() {
    let cases: &[&[&str]] = &[
        &[],
        &["nope"],
        &["alloc"],
        &["alloc", "--size", "-1"],
        &["alloc", "--size", "99999999999999999999999"],
        &["alloc", "--size", "4K", "--fill", "0x1ff"],
        &["alloc", "--size", "4K", "--backend", "heap:"],
        &["alloc", "--size", "4K", "--hold", "1", "--hold-forever"],
        &["stream", "--size", "0"],
        &["stream", "--size", "1e3"],
        &["stream", "--count", "-5"],
        &["stream", "--count", "1", "--seconds", "1"],
        &["stream", "--role", "nobody", "--socket", "x"],
        &["stream", "--role", "consumer", "--socket", "-"],
        &[
            "stream",
            "--role",
            "consumer",
            "--socket",
            "/nonexistent/s",
            "--timeout",
            "0.05",
        ],
        &["ls", "--pid", "-3"],
        &["ls", "--sort", "colour"],
        &["ls", "--proc-root", "/nonexistent"],
        &["capture", "--device", "/nonexistent", "--frames", "0"],
        &["capture", "--device", "/dev/null", "--format", "TOOLONG"],
        &["bench", "--worker", "nope", "--path", "x", "--size", "4096"],
        &["bench", "--worker", "pipe", "--size", "4"],
    ];
    for args in cases {
        let out = dmabuf().args(*args).stdin(Stdio::null()).output().unwrap();
        let err = text(&out.stderr);
        let code = out.status.code();
        assert!(
            matches!(code, Some(1 | 2)),
            "{args:?}: {} (stderr: {err})",
            out.status
        );
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert!(!err.trim().is_empty(), "{args:?}: no message");
    }
}

/// The consumer processes of the stream run by `parent`.
fn children_of(parent: u32) -> Vec<u32> {
    let mut kids = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // pid (comm) state ppid …: comm may hold spaces; split after ')'.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        let ppid: u32 = rest
            .split_whitespace()
            .nth(1)
            .unwrap_or("0")
            .parse()
            .unwrap_or(0);
        if ppid == parent {
            kids.push(pid);
        }
    }
    kids.sort();
    kids
}

fn wait_for_children(parent: u32, n: usize) -> Vec<u32> {
    let t0 = Instant::now();
    loop {
        let kids = children_of(parent);
        if kids.len() >= n {
            return kids;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "consumers did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn signal(pid: u32, sig: &str) {
    let st = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap();
    assert!(st.success());
}

#[test]
fn a_killed_consumer_does_not_stop_the_others() {
    let child = dmabuf()
        .args([
            "stream",
            "--backend",
            "portable",
            "--size",
            "4K",
            "--seconds",
            "2",
        ])
        .args(["--consumers", "3", "--timeout", "5", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let kids = wait_for_children(child.id(), 3);
    std::thread::sleep(Duration::from_millis(500));
    signal(kids[0], "-KILL");
    let out = child.wait_with_output().unwrap();
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("a report");
    let items = v["items"].as_u64().unwrap();
    assert!(items > 0);
    assert_eq!(
        v["error"],
        serde_json::Value::Null,
        "the stream reached its end"
    );
    let per = v["per_consumer"].as_array().unwrap();
    assert_eq!(per.len(), 3);
    let killed = per.iter().find(|c| c["pid"] == kids[0]).unwrap();
    assert_eq!(killed["ok"], false);
    assert!(
        killed["error"].as_str().unwrap().contains("SIGKILL"),
        "{killed}"
    );
    for c in per.iter().filter(|c| c["pid"] != kids[0]) {
        assert_eq!(c["ok"], true, "{c}");
        assert_eq!(c["items"].as_u64(), Some(items), "{c}");
        assert_eq!(c["bytes"].as_u64(), Some(items * 4096), "{c}");
    }
    assert!(err.contains("1 of 3 consumers failed"), "{err}");
    assert!(err.contains(&format!("pid {}", kids[0])), "{err}");
}

#[test]
fn a_stopped_consumer_times_out_the_run_and_is_reported() {
    let t0 = Instant::now();
    let child = dmabuf()
        .args([
            "stream",
            "--backend",
            "portable",
            "--size",
            "4K",
            "--seconds",
            "30",
        ])
        .args(["--consumers", "2", "--timeout", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let kids = wait_for_children(child.id(), 2);
    std::thread::sleep(Duration::from_millis(300));
    signal(kids[1], "-STOP");
    let out = child.wait_with_output().unwrap();
    let took = t0.elapsed();
    let err = text(&out.stderr);
    let so = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{err}");
    // The acquire timeout (1 s), then at most 1 s per consumer: far less
    // than the 30 s asked, and no wait forever on the stopped child.
    assert!(took < Duration::from_secs(15), "took {took:?}");
    assert!(err.contains("all 4 buffers still in flight"), "{err}");
    assert!(
        err.contains(&format!("consumer 2 (pid {})", kids[1])) && err.contains("killed"),
        "{err}"
    );
    assert!(so.contains("consumer 2:") && so.contains("FAILED"), "{so}");
    assert!(children_of(std::process::id())
        .iter()
        .all(|p| !kids.contains(p)));
}

#[test]
fn the_socket_file_goes_away_on_sigterm_and_sigint() {
    for sig in ["-TERM", "-INT", "-HUP"] {
        let dir = std::env::temp_dir().join(format!(
            "dmabuf-sig-test-{}-{}",
            std::process::id(),
            &sig[1..]
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("s.sock");
        let mut child = dmabuf()
            .args(["stream", "--role", "producer", "--backend", "portable"])
            .args(["--timeout", "20", "--socket"])
            .arg(&sock)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let t0 = Instant::now();
        while !sock.exists() {
            assert!(t0.elapsed() < Duration::from_secs(10), "no socket file");
            std::thread::sleep(Duration::from_millis(10));
        }
        signal(child.id(), sig);
        let st = child.wait().unwrap();
        assert!(!st.success(), "{sig}: {st}");
        assert!(!sock.exists(), "{sig}: the socket file was left behind");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[test]
fn a_producer_never_removes_a_file_it_did_not_create() {
    let dir = std::env::temp_dir().join(format!("dmabuf-busy-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let sock = dir.join("s.sock");
    std::fs::write(&sock, b"someone else's").unwrap();
    let out = dmabuf()
        .args([
            "stream",
            "--role",
            "producer",
            "--backend",
            "portable",
            "--socket",
        ])
        .arg(&sock)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("bind"), "{}", text(&out.stderr));
    assert_eq!(std::fs::read(&sock).unwrap(), b"someone else's");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The frame options of `capture`: garbage formats, sizes past `u32`, odd
/// `--share` paths. Each is clap's error naming the option (2) or one
/// `dmabuf: …` line naming the cause (1); none panics.
#[test]
fn capture_frame_options_fail_cleanly() {
    for bad in ["", "ÄÖ", "NV 2", "nv1\u{7}", "TOOLONG", "NV12\n"] {
        refused(
            &["capture", "--format", bad],
            2,
            &["--format <FORMAT>", "1 to 4 printable ASCII characters"],
        );
    }
    for opt in ["--width", "--height"] {
        refused(
            &["capture", opt, "4294967296"],
            2,
            &["4294967296 is not in 1..=4294967295"],
        );
        refused(&["capture", opt, "-1"], 2, &["'-1'"]);
    }
    // The largest size clap lets through reaches the device, which is
    // checked first.
    refused(
        &[
            "capture",
            "--device",
            "/dev/null",
            "--format",
            "NM12",
            "--width",
            "4294967295",
            "--height",
            "4294967295",
        ],
        1,
        &["dmabuf: v4l2 open: /dev/null: not a V4L2 device"],
    );
    refused(
        &["capture", "--share", ""],
        2,
        &["a value is required for '--share <SOCKET>'"],
    );
    let long = "s".repeat(200);
    for (socket, cause) in [
        (long.as_str(), "File name too long"),
        ("/dev/null", "Connection refused"),
        ("/", "Connection refused"),
    ] {
        refused(
            &[
                "capture",
                "--share",
                socket,
                "--role",
                "consumer",
                "--timeout",
                "0.1",
            ],
            1,
            &["dmabuf: connect: socket ", cause],
        );
    }
}
