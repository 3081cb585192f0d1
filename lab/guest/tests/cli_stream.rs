//! `dmabuf stream` treats its peers as untrusted, on the real kernel's
//! dma-bufs: peers of another user are refused, the socket file goes away
//! on SIGTERM, and one consumer killed does not stop the others.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use dmabuf_lab_guest::{cli, require_lab};

fn scratch(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("cli-stream-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn wait_for(p: &std::path::Path) {
    let t0 = Instant::now();
    while !p.exists() {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "{} never appeared",
            p.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn peers_of_another_user_are_refused_both_ways() {
    require_lab();
    let dir = scratch("uid");
    let sock = dir.join("s.sock");
    // The producer (root) and a consumer running as nobody.
    let producer = Command::new(cli())
        .args([
            "stream",
            "--role",
            "producer",
            "--backend",
            "heap",
            "--count",
            "4",
        ])
        .args(["--size", "64K", "--timeout", "3", "--socket"])
        .arg(&sock)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(&sock);
    // Let nobody reach the socket, so that only the credential check stands
    // (the VM is this test's own).
    std::fs::set_permissions(
        std::env::temp_dir(),
        std::os::unix::fs::PermissionsExt::from_mode(0o1777),
    )
    .unwrap();
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&sock, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let consumer = Command::new(cli())
        .args(["stream", "--role", "consumer", "--timeout", "3", "--socket"])
        .arg(&sock)
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    let cerr = String::from_utf8_lossy(&consumer.stderr);
    assert_eq!(consumer.status.code(), Some(1), "{cerr}");
    assert!(
        cerr.contains("refused producer") && cerr.contains("uid 0: not this user (uid 65534)"),
        "{cerr}"
    );
    let p = producer.wait_with_output().unwrap();
    let perr = String::from_utf8_lossy(&p.stderr);
    assert_eq!(p.status.code(), Some(1), "{perr}");
    assert!(
        perr.contains("refused peer")
            && perr.contains("the peer runs as uid 65534, this process as uid 0"),
        "{perr}"
    );
    assert!(
        perr.contains("0 of 1 consumers connected") && perr.contains("(1 refused)"),
        "{perr}"
    );
    assert!(!sock.exists(), "socket file left behind");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_socket_file_goes_away_on_sigterm() {
    require_lab();
    let dir = scratch("term");
    let sock = dir.join("s.sock");
    let mut producer = Command::new(cli())
        .args([
            "stream",
            "--role",
            "producer",
            "--backend",
            "udmabuf",
            "--socket",
        ])
        .arg(&sock)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(&sock);
    let st = Command::new("kill")
        .args(["-TERM", &producer.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let st = producer.wait().unwrap();
    assert_eq!(st.code(), Some(128 + 15), "{st}");
    assert!(!sock.exists(), "socket file left behind after SIGTERM");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn one_consumer_killed_the_others_get_every_item() {
    require_lab();
    let child = Command::new(cli())
        .args([
            "stream",
            "--backend",
            "heap",
            "--size",
            "64K",
            "--seconds",
            "3",
        ])
        .args(["--consumers", "3", "--timeout", "10", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let parent = child.id();
    // Its consumers: the processes whose parent it is.
    let t0 = Instant::now();
    let kids = loop {
        let mut kids = Vec::new();
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
            if rest.split_whitespace().nth(1) == Some(parent.to_string().as_str()) {
                kids.push(pid);
            }
        }
        if kids.len() == 3 {
            break kids;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "consumers did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    std::thread::sleep(Duration::from_millis(800));
    let victim = kids[1];
    assert!(Command::new("kill")
        .args(["-KILL", &victim.to_string()])
        .status()
        .unwrap()
        .success());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["backend"], "heap:system");
    assert_eq!(v["error"], serde_json::Value::Null, "{v}");
    let items = v["items"].as_u64().unwrap();
    let per = v["per_consumer"].as_array().unwrap();
    for c in per {
        if c["pid"] == victim {
            assert_eq!(c["ok"], false, "{c}");
            assert!(c["error"].as_str().unwrap().contains("SIGKILL"), "{c}");
        } else {
            assert_eq!(c["ok"], true, "{c}");
            assert_eq!(c["items"].as_u64(), Some(items), "{c}");
        }
    }
    assert!(err.contains("1 of 3 consumers failed"), "{err}");
}
