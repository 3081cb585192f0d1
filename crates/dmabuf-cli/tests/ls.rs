//! `dmabuf ls`, run as a program: on the real `/proc` and on a fake tree.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn dmabuf(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dmabuf"))
        .args(args)
        .output()
        .expect("run dmabuf")
}

fn stdout_of(args: &[&str]) -> String {
    let out = dmabuf(args);
    assert!(
        out.status.success(),
        "dmabuf {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A fake proc/sys tree, removed on drop.
struct Tree(PathBuf);

impl Tree {
    fn new(tag: &str) -> Tree {
        let root = std::env::temp_dir().join(format!("dmabuf-cli-ls-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        for (pid, comm) in [(100, "camera"), (200, "compositor")] {
            let dir = root.join(format!("proc/{pid}"));
            fs::create_dir_all(dir.join("fd")).unwrap();
            fs::create_dir_all(dir.join("fdinfo")).unwrap();
            fs::write(dir.join("comm"), format!("{comm}\n")).unwrap();
            fs::write(dir.join("maps"), "").unwrap();
        }
        let fd = |pid: u32, fd: u32, ino: u64, size: u64, exp: &str, name: &str| {
            let dir = root.join(format!("proc/{pid}"));
            symlink(format!("/dmabuf:{name}"), dir.join(format!("fd/{fd}"))).unwrap();
            let mut info = format!("pos:\t0\nflags:\t02000002\nmnt_id:\t16\nino:\t{ino}\nsize:\t{size}\ncount:\t1\nexp_name:\t{exp}\n");
            if !name.is_empty() {
                info.push_str(&format!("name:\t{name}\n"));
            }
            fs::write(dir.join(format!("fdinfo/{fd}")), info).unwrap();
        };
        fd(100, 3, 1042, 4096, "udmabuf", "frames");
        fd(200, 5, 1042, 4096, "udmabuf", "frames");
        fd(200, 6, 1043, 1 << 20, "system", "");
        fs::write(
            root.join("proc/100/maps"),
            "7f1c2a400000-7f1c2a401000 rw-s 00000000 00:0d 1042                       /dmabuf:frames\n",
        )
        .unwrap();
        fs::create_dir_all(root.join("proc/300")).unwrap(); // exited: nothing left
        fs::create_dir_all(root.join("sys")).unwrap();
        Tree(root)
    }

    fn args<'a>(&'a self, extra: &[&'a str]) -> Vec<String> {
        let mut v = vec![
            "ls".to_string(),
            "--proc-root".into(),
            path(&self.0.join("proc")),
            "--sys-root".into(),
            path(&self.0.join("sys")),
        ];
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    }

    fn run(&self, extra: &[&str]) -> String {
        let args = self.args(extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        stdout_of(&args)
    }
}

impl Drop for Tree {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn path(p: &Path) -> String {
    p.to_str().unwrap().to_string()
}

#[test]
fn json_on_this_host() {
    let text = stdout_of(&["ls", "--json"]);
    let v: Value = serde_json::from_str(&text).expect("valid JSON");
    assert!(v["buffers"].is_array());
    assert!(v["processes"].is_array());
    assert!(v["unreadable"].is_array());
    assert!(v["totals"]["buffers"].is_u64());
    assert!(v["totals"]["size"].is_u64());
    assert_eq!(v["sources"]["proc_root"], "/proc");
}

#[test]
fn table_on_this_host() {
    let text = stdout_of(&["ls"]);
    assert!(text.contains("Total: "), "{text}");
}

#[test]
fn json_on_a_fake_tree() {
    let tree = Tree::new("json");
    let v: Value = serde_json::from_str(&tree.run(&["--json"])).unwrap();
    let buffers = v["buffers"].as_array().unwrap();
    assert_eq!(buffers.len(), 2);
    // Largest first.
    assert_eq!(buffers[0]["inode"], 1043);
    assert_eq!(buffers[0]["kind"], "dmabuf");
    assert_eq!(buffers[0]["exporter"], "system");
    assert_eq!(buffers[0]["name"], Value::Null);
    let frames = &buffers[1];
    assert_eq!(frames["size"], 4096);
    assert_eq!(frames["size_source"], "fdinfo");
    assert_eq!(frames["name"], "frames");
    let holders = frames["holders"].as_array().unwrap();
    assert_eq!(holders.len(), 2);
    assert_eq!(holders[0]["pid"], 100);
    assert_eq!(holders[0]["command"], "camera");
    assert_eq!(holders[0]["fds"], serde_json::json!([3]));
    assert_eq!(holders[0]["mappings"], 1);
    assert_eq!(holders[1]["pid"], 200);
    assert_eq!(holders[1]["mappings"], 0);
    let procs = v["processes"].as_array().unwrap();
    assert_eq!(procs[0]["pid"], 200);
    assert_eq!(procs[0]["pss"], 2048 + (1 << 20));
    assert_eq!(procs[1]["pss"], 2048);
    // dmabuf_dump-style totals: 200 holds both buffers by fd, maps none;
    // 100 holds and maps the shared one.
    assert_eq!(procs[0]["rss"], 4096 + (1 << 20));
    assert_eq!(procs[0]["fd_size"], 4096 + (1 << 20));
    assert_eq!(procs[0]["mapped_size"], 0);
    assert_eq!(procs[0]["mapped_bytes"], 0);
    assert_eq!(procs[1]["rss"], 4096);
    assert_eq!(procs[1]["fd_size"], 4096);
    assert_eq!(procs[1]["mapped_size"], 4096);
    assert_eq!(procs[1]["mapped_bytes"], 4096);
    assert_eq!(holders[0]["mapped_bytes"], 4096);
    assert_eq!(v["missing_pids"], serde_json::json!([]));
    assert!(v["time_unix_ms"].as_u64().unwrap() > 1_600_000_000_000);
    assert!(v["time_utc"].as_str().unwrap().ends_with('Z'));
    assert_eq!(v["totals"]["size"], 4096 + (1 << 20));
    assert_eq!(v["totals"]["unreadable"], 1);
    assert_eq!(v["unreadable"][0]["pid"], 300);
    assert_eq!(v["unreadable"][0]["reason"], "exited");
}

#[test]
fn filters_and_sort() {
    let tree = Tree::new("filters");
    let v: Value = serde_json::from_str(&tree.run(&["--json", "--pid", "100"])).unwrap();
    assert_eq!(v["buffers"].as_array().unwrap().len(), 1);
    assert_eq!(v["processes"].as_array().unwrap().len(), 1);
    assert_eq!(v["processes"][0]["pid"], 100);

    let v: Value = serde_json::from_str(&tree.run(&["--json", "--exporter", "udmabuf"])).unwrap();
    assert_eq!(v["buffers"].as_array().unwrap().len(), 1);
    assert_eq!(v["buffers"][0]["inode"], 1042);

    let v: Value = serde_json::from_str(&tree.run(&["--json", "--sort", "inode"])).unwrap();
    assert_eq!(v["buffers"][0]["inode"], 1042);
    assert_eq!(v["buffers"][1]["inode"], 1043);

    let v: Value = serde_json::from_str(&tree.run(&["--json", "--exporter", "nothing"])).unwrap();
    assert!(v["buffers"].as_array().unwrap().is_empty());
}

#[test]
fn human_table() {
    let tree = Tree::new("table");
    let text = tree.run(&[]);
    assert!(text.starts_with("INODE"), "{text}");
    assert!(text.contains("1.0 MiB"), "{text}");
    assert!(
        text.contains("100 camera (fd 3, mapped 4.0 KiB); 200 compositor (fd 5)"),
        "{text}"
    );
    let header = text
        .lines()
        .find(|l| l.starts_with("  PID") || l.starts_with("PID"))
        .unwrap_or_else(|| panic!("no process table: {text}"));
    for column in ["BY-FD", "MAPPED", "RSS", "PSS"] {
        assert!(header.contains(column), "{header}");
    }
    assert!(
        text.contains("Total: 2 buffers, 1.0 MiB, held by 2 processes"),
        "{text}"
    );
    assert!(
        text.contains("1 process could not be read (1 exited during the scan)"),
        "{text}"
    );
}

#[test]
fn watch_rounds() {
    let tree = Tree::new("watch");
    let text = tree.run(&["--json", "--watch", "0.05", "--count", "3"]);
    let rounds: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    assert_eq!(rounds.len(), 3);
    for (i, r) in rounds.iter().enumerate() {
        assert_eq!(r["round"], i as u64 + 1);
        assert_eq!(r["snapshot"]["buffers"].as_array().unwrap().len(), 2);
    }
    assert_eq!(rounds[0]["changes"], Value::Null);
    assert_eq!(rounds[1]["changes"]["appeared"], serde_json::json!([]));

    let times: Vec<u64> = rounds
        .iter()
        .map(|r| r["time_unix_ms"].as_u64().expect("a timestamp per round"))
        .collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
    assert!(times[2] - times[0] >= 100, "rounds 50 ms apart: {times:?}");
    for r in &rounds {
        let utc = r["time_utc"].as_str().unwrap();
        assert_eq!(utc.len(), "2026-01-01T00:00:00.000Z".len(), "{utc}");
    }

    let text = tree.run(&["--watch", "0.05", "--count", "2"]);
    assert!(text.contains("=== round 2"), "{text}");
    assert!(text.contains("No change since the last look."), "{text}");
}

#[test]
fn bad_arguments() {
    for args in [
        &["ls", "--watch", "0"][..],
        &["ls", "--watch", "abc"],
        &["ls", "--count", "2"],
        &["ls", "--sort", "color"],
    ] {
        let out = dmabuf(args);
        assert!(!out.status.success(), "{args:?} should fail");
    }
    let out = dmabuf(&["ls", "--proc-root", "/nonexistent-proc"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("inspect: /nonexistent-proc: cannot list the processes"),
        "{err}"
    );
    assert!(err.contains("ENOENT"), "{err}");
}

#[test]
fn a_pid_with_no_process_is_named_and_exits_3() {
    let tree = Tree::new("nopid");
    let args = tree.args(&["--pid", "100", "--pid", "4242", "--json"]);
    let out = Command::new(env!("CARGO_BIN_EXE_dmabuf"))
        .args(&args)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("warning: ls --pid 4242: no such process"),
        "{err}"
    );
    assert!(!err.contains("--pid 100"), "{err}");
    // The listing of the others is still printed.
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["missing_pids"], serde_json::json!([4242]));
    assert_eq!(v["processes"][0]["pid"], 100);

    // Pids that exist (300 exited mid-scan but its directory is there):
    // exit 0 and no warning.
    let args = tree.args(&["--pid", "100", "--pid", "300"]);
    let out = Command::new(env!("CARGO_BIN_EXE_dmabuf"))
        .args(&args)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn csv_tables() {
    let tree = Tree::new("csv");
    let text = tree.run(&["--csv"]);
    let lines: Vec<&str> = text.split("\r\n").collect();
    assert_eq!(
        lines[0],
        "kind,inode,size,size_source,exporter,name,holders,holder_pids,fds,mapped_bytes"
    );
    assert_eq!(lines[1], "dmabuf,1043,1048576,fdinfo,system,,1,200,1,0");
    assert_eq!(
        lines[2],
        "dmabuf,1042,4096,fdinfo,udmabuf,frames,2,100 200,2,4096"
    );
    assert_eq!(
        lines[3], "",
        "CRLF after the last row, nothing more: {text:?}"
    );
    assert_eq!(lines.len(), 4);

    let text = tree.run(&["--csv", "processes"]);
    let lines: Vec<&str> = text.split("\r\n").collect();
    assert_eq!(
        lines[0],
        "pid,command,buffers,fds,mapped_buffers,fd_size,mapped_size,mapped_bytes,rss,pss"
    );
    assert_eq!(lines[1], "200,compositor,2,2,0,1052672,0,0,1052672,1050624");
    assert_eq!(lines[2], "100,camera,1,1,1,4096,4096,4096,4096,2048");

    for bad in [
        &["--csv", "--json"][..],
        &["--csv", "--watch", "1"],
        &["--csv", "pids"],
    ] {
        let args = tree.args(bad);
        let out = Command::new(env!("CARGO_BIN_EXE_dmabuf"))
            .args(&args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{bad:?}");
    }
}

#[test]
fn csv_quotes_a_hostile_name() {
    let tree = Tree::new("csvname");
    let dir = tree.0.join("proc/100");
    symlink("/dmabuf:x", dir.join("fd/9")).unwrap();
    fs::write(
        dir.join("fdinfo/9"),
        "ino:\t77\nsize:\t8192\nexp_name:\tsystem\nname:\ta,\"b\"\n",
    )
    .unwrap();
    let text = tree.run(&["--csv"]);
    assert!(
        text.contains("dmabuf,77,8192,fdinfo,system,\"a,\"\"b\"\"\",1,100,1,0\r\n"),
        "{text:?}"
    );
}

#[test]
fn quiet_drops_the_warning_verbose_adds_notes() {
    let tree = Tree::new("verbosity");
    let run = |extra: &[&str]| {
        let args = tree.args(extra);
        Command::new(env!("CARGO_BIN_EXE_dmabuf"))
            .args(&args)
            .output()
            .unwrap()
    };
    // -q: the exit status still tells, stderr stays empty.
    let out = run(&["-q", "--pid", "4242"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("Total:"));
    // -v: which sources were read, why pid 300 could not be.
    let out = run(&["-v"]);
    assert_eq!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("dmabuf: note: ls: scanned "), "{err}");
    assert!(err.contains("sysfs stats: absent"), "{err}");
    assert!(err.contains("note: ls: pid 300: "), "{err}");
    // Without either: no notes.
    let out = run(&[]);
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Both: refused at parsing.
    let out = run(&["-q", "-v"]);
    assert_eq!(out.status.code(), Some(2));
}
