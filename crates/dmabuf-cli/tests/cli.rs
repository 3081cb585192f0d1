//! The `dmabuf` binary run as a process on the development machine (no
//! kernel exporter here: portable buffers only, no V4L2 device).

use std::process::{Command, Output};

fn dmabuf(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dmabuf"))
        .args(args)
        .output()
        .expect("run the dmabuf binary")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn field<'a>(out: &'a str, key: &str) -> &'a str {
    out.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}: ")))
        .unwrap_or_else(|| panic!("no '{key}:' line in:\n{out}"))
}

#[test]
fn alloc_portable_works_here() {
    let out = dmabuf(&[
        "alloc",
        "--size",
        "6K",
        "--backend",
        "portable",
        "--name",
        "cli-test",
        "--fill",
        "0xab",
    ]);
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "stdout:\n{stdout}\nstderr:\n{}",
        text(&out.stderr)
    );
    assert_eq!(field(&stdout, "kind"), "portable");
    // Rounded up to whole pages.
    let page = rustix_page_size();
    let size: u64 = field(&stdout, "size").parse().unwrap();
    assert_eq!(size, 6144u64.div_ceil(page) * page);
    assert_eq!(field(&stdout, "name"), "cli-test");
    // The memfd's inode, as `dmabuf ls` shows it.
    let inode: u64 = field(&stdout, "inode").parse().unwrap();
    assert!(inode > 0);
    assert_eq!(field(&stdout, "exporter"), "portable");
    assert_eq!(field(&stdout, "fill"), "0xab");
    let pid: u32 = field(&stdout, "pid").parse().unwrap();
    assert!(pid > 0);
    let fd: i32 = field(&stdout, "fd").parse().unwrap();
    assert!(fd > 2);
}

fn rustix_page_size() -> u64 {
    // The CLI crate does not depend on rustix; ask getconf.
    let out = Command::new("getconf").arg("PAGESIZE").output().unwrap();
    text(&out.stdout).trim().parse().unwrap()
}

#[test]
fn alloc_holds_the_buffer_visibly_in_proc() {
    use std::io::{BufRead, BufReader};
    let mut child = Command::new(env!("CARGO_BIN_EXE_dmabuf"))
        .args([
            "alloc",
            "--size",
            "4K",
            "--backend",
            "portable",
            "--name",
            "held",
            "--hold-forever",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut fd = None;
    for l in lines.by_ref() {
        let l = l.unwrap();
        if let Some(v) = l.strip_prefix("fd: ") {
            fd = Some(v.to_string());
        }
        if l.starts_with("holding:") {
            break;
        }
    }
    let fd = fd.expect("fd line");
    let link = std::fs::read_link(format!("/proc/{}/fd/{fd}", child.id()));
    child.kill().unwrap();
    child.wait().unwrap();
    let link = link.unwrap().to_string_lossy().into_owned();
    assert!(link.contains("dmabuf-portable:held"), "{link}");
}

#[test]
fn alloc_refuses_bad_sizes_and_conflicting_holds() {
    let out = dmabuf(&["alloc", "--size", "4MB", "--backend", "portable"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("decimal units are ambiguous"),
        "{}",
        text(&out.stderr)
    );

    let out = dmabuf(&["alloc", "--size", "0", "--backend", "portable"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("at least one byte"),
        "{}",
        text(&out.stderr)
    );

    let out = dmabuf(&[
        "alloc",
        "--size",
        "4K",
        "--backend",
        "portable",
        "--hold",
        "1",
        "--hold-forever",
    ]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("cannot be used with"),
        "{}",
        text(&out.stderr)
    );

    let out = dmabuf(&["alloc", "--size", "4K", "--backend", "gpu"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("unknown backend 'gpu'"),
        "{}",
        text(&out.stderr)
    );

    let out = dmabuf(&[
        "alloc",
        "--size",
        "4K",
        "--backend",
        "portable",
        "--fill",
        "300",
    ]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("neither a byte"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn alloc_library_errors_print_as_dmabuf_message() {
    // A name longer than 31 bytes is refused by the library.
    let long = "n".repeat(40);
    let out = dmabuf(&[
        "alloc",
        "--size",
        "4K",
        "--backend",
        "portable",
        "--name",
        &long,
    ]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.starts_with("dmabuf: "), "{err}");
    assert!(err.contains("at most 31 fit"), "{err}");
}

#[test]
fn capture_validates_its_arguments() {
    for (args, want) in [
        (&["capture", "--frames", "0"][..], "--frames"),
        (&["capture", "--buffers", "0"][..], "--buffers"),
        (&["capture", "--buffers", "33"][..], "--buffers"),
        (&["capture", "--format", "TOOLONG"][..], "fourcc"),
        (&["capture", "--width", "0"][..], "--width"),
        (&["capture", "--backend", "gpu"][..], "unknown backend"),
    ] {
        let out = dmabuf(args);
        assert!(!out.status.success(), "{args:?}");
        let err = text(&out.stderr);
        assert!(err.contains(want), "{args:?}: {err}");
    }
}

#[test]
fn capture_from_a_missing_device_says_so() {
    let out = dmabuf(&[
        "capture",
        "--device",
        "/nonexistent/video7",
        "--backend",
        "portable",
    ]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.starts_with("dmabuf: v4l2 open: /nonexistent/video7: no such device node"),
        "{err}"
    );
    assert!(err.contains("(ENOENT)"), "{err}");
}

#[test]
fn capture_from_a_non_v4l2_file_says_so() {
    let out = dmabuf(&["capture", "--device", "/dev/null", "--backend", "portable"]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("not a V4L2 device"), "{err}");
}

#[test]
fn completions_and_the_man_page_are_generated_from_the_parser() {
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let out = dmabuf(&["completions", shell]);
        assert!(out.status.success(), "{shell}: {out:?}");
        let text = String::from_utf8(out.stdout).unwrap();
        for sub in ["probe", "stream", "capture", "completions"] {
            assert!(text.contains(sub), "{shell} completions lack {sub}");
        }
    }
    let out = dmabuf(&["completions", "nosh"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid value 'nosh'"));
    let out = dmabuf(&["man"]);
    assert!(out.status.success());
    let page = String::from_utf8(out.stdout).unwrap();
    assert!(page.contains(".TH dmabuf 1"), "{page}");
    assert!(page.contains("probe") && page.contains("bench"), "{page}");
}

#[test]
fn every_json_document_carries_its_schema_version() {
    for (args, version) in [(&["probe", "--json"][..], 1), (&["ls", "--json"][..], 2)] {
        let out = dmabuf(args);
        assert!(out.status.success(), "{args:?}: {out:?}");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["schema_version"], version, "{args:?}: {v}");
    }
    let out = dmabuf(&["probe", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // Machine-readable: a value `--backend` takes.
    let name = v["auto_backend_name"].as_str().unwrap();
    assert!(
        ["portable", "udmabuf"].contains(&name) || name.starts_with("heap:"),
        "{name}"
    );
}

/// `alloc --json --hold-stdin`: one JSON line, the buffer visible to
/// `dmabuf ls` under the inode it printed, freed when stdin gets a line.
#[test]
fn alloc_json_and_hold_until_stdin() {
    use std::io::{BufRead, BufReader, Write};
    use std::time::{Duration, Instant};
    let mut child = Command::new(env!("CARGO_BIN_EXE_dmabuf"))
        .args([
            "alloc",
            "--size",
            "8K",
            "--backend",
            "portable",
            "--name",
            "seen-by-ls",
            "--fill",
            "0xab",
            "--json",
            "--hold-stdin",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let made: serde_json::Value = serde_json::from_str(&line).expect(&line);
    assert_eq!(made["schema_version"], 1);
    assert_eq!(made["kind"], "portable");
    assert_eq!(made["size"], 8192);
    assert_eq!(made["name"], "seen-by-ls");
    assert_eq!(made["exporter"], "portable");
    assert_eq!(made["fill"], "0xab");
    assert_eq!(made["hold"], "stdin");
    assert_eq!(made["pid"], child.id());
    let inode = made["inode"].as_u64().expect("an inode");

    let pid = child.id().to_string();
    let out = dmabuf(&["ls", "--pid", &pid, "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let buffers = v["buffers"].as_array().unwrap();
    assert_eq!(buffers.len(), 1, "{v}");
    assert_eq!(buffers[0]["inode"], inode);
    assert_eq!(buffers[0]["name"], "seen-by-ls");
    assert_eq!(v["processes"][0]["rss"], 8192);

    // Not freed while stdin stays open without a line…
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"no newline yet").unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert!(child.try_wait().unwrap().is_none(), "still holding");
    // …and freed at the line.
    stdin.write_all(b"\n").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "alloc did not end at the line");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success());
    drop(stdin);

    // The holds are exclusive, at parsing.
    for holds in [
        &["--hold", "1", "--hold-stdin"][..],
        &["--hold-forever", "--hold-stdin"],
    ] {
        let mut args = vec!["alloc", "--size", "4K", "--backend", "portable"];
        args.extend_from_slice(holds);
        let out = dmabuf(&args);
        assert_eq!(out.status.code(), Some(2), "{holds:?}");
        assert!(text(&out.stderr).contains("cannot be used with"));
    }
}

#[test]
fn verbose_says_why_the_backend_was_chosen() {
    let out = dmabuf(&["-v", "alloc", "--size", "4K", "--backend", "portable"]);
    assert!(out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("dmabuf: note: backend portable: chosen"),
        "{err}"
    );
    // `auto` says what it tried; here (no exporter) why it fell back.
    let out = dmabuf(&["alloc", "--size", "4K", "--verbose"]);
    assert!(out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("dmabuf: note: backend "), "{err}");
    let out = dmabuf(&["alloc", "--size", "4K"]);
    assert!(out.stderr.is_empty(), "{}", text(&out.stderr));
}
