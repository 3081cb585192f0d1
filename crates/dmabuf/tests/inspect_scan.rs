//! The scanner on a fake `/proc` and `/sys` built in a temporary directory.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use dmabuf::inspect::{
    report, BufferEntry, FileKind, Filter, Holder, Scanner, SizeSource, Snapshot, SortKey,
    SourceState, Sources, Unreadable, UnreadableReason,
};

const MIB: u64 = 1 << 20;

/// A temporary directory with `proc/` and `sys/`, removed on drop.
struct Tree {
    root: PathBuf,
}

impl Tree {
    fn new() -> Tree {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let root = std::env::temp_dir().join(format!(
            "dmabuf-inspect-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(root.join("proc")).unwrap();
        fs::create_dir_all(root.join("sys")).unwrap();
        Tree { root }
    }

    fn proc_root(&self) -> PathBuf {
        self.root.join("proc")
    }

    fn sys_root(&self) -> PathBuf {
        self.root.join("sys")
    }

    fn scanner(&self) -> Scanner {
        Scanner::new()
            .proc_root(self.proc_root())
            .sys_root(self.sys_root())
    }

    fn write(&self, rel: &str, content: impl AsRef<[u8]>) {
        let path = self.root.join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, content).unwrap();
    }

    fn process(&self, pid: u32, comm: &str) -> Proc {
        let dir = self.proc_root().join(pid.to_string());
        fs::create_dir_all(dir.join("fd")).unwrap();
        fs::create_dir_all(dir.join("fdinfo")).unwrap();
        fs::write(dir.join("comm"), format!("{comm}\n")).unwrap();
        fs::write(dir.join("maps"), "").unwrap();
        Proc { dir }
    }

    fn sysfs_buffer(&self, ino: u64, exporter: &str, size: u64) {
        self.write(
            &format!("sys/kernel/dmabuf/buffers/{ino}/exporter_name"),
            format!("{exporter}\n"),
        );
        self.write(
            &format!("sys/kernel/dmabuf/buffers/{ino}/size"),
            format!("{size}\n"),
        );
    }
}

impl Drop for Tree {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.root);
    }
}

struct Proc {
    dir: PathBuf,
}

impl Proc {
    /// An fd whose link points at `target`, with this fdinfo (none if `None`).
    fn fd(&self, fd: i32, target: &str, fdinfo: Option<&[u8]>) -> &Self {
        symlink(target, self.dir.join("fd").join(fd.to_string())).unwrap();
        if let Some(info) = fdinfo {
            fs::write(self.dir.join("fdinfo").join(fd.to_string()), info).unwrap();
        }
        self
    }

    fn dmabuf_fd(&self, fd: i32, ino: u64, size: u64, exporter: &str, name: Option<&str>) -> &Self {
        let mut info = format!(
            "pos:\t0\nflags:\t02000002\nmnt_id:\t16\nino:\t{ino}\nsize:\t{size}\ncount:\t1\nexp_name:\t{exporter}\n"
        );
        if let Some(name) = name {
            info.push_str(&format!("name:\t{name}\n"));
        }
        self.fd(
            fd,
            &format!("/dmabuf:{}", name.unwrap_or("")),
            Some(info.as_bytes()),
        )
    }

    fn maps(&self, lines: &[String]) -> &Self {
        let mut text = lines.join("\n");
        text.push('\n');
        fs::write(self.dir.join("maps"), text).unwrap();
        self
    }
}

fn map_line(start: u64, len: u64, offset: u64, ino: u64, path: &str) -> String {
    format!(
        "{start:x}-{:x} rw-s {offset:08x} 00:0d {ino}                       {path}",
        start + len
    )
}

/// The scene of the issue: several processes sharing buffers by fd, one
/// by mapping only, an unreadable process, one that vanished, sysfs and
/// debugfs.
fn scene(tree: &Tree) {
    tree.process(100, "camera")
        .dmabuf_fd(3, 1042, 4096, "udmabuf", Some("frames"))
        .fd(4, "socket:[999]", None)
        .fd(
            5,
            "/usr/lib/libc.so.6",
            Some(b"pos:\t0\nflags:\t0100000\nmnt_id:\t29\nino:\t77\n"),
        )
        .dmabuf_fd(7, 1042, 4096, "udmabuf", Some("frames"))
        .maps(&[
            "55d0c0a00000-55d0c0a21000 r--p 00000000 fd:01 1835263   /usr/bin/camera".into(),
            map_line(0x7f1c2a400000, 4096, 0, 1042, "/dmabuf:frames"),
        ]);
    tree.process(200, "compositor")
        .dmabuf_fd(5, 1042, 4096, "udmabuf", Some("frames"))
        .dmabuf_fd(6, 1043, MIB, "system", None);
    // Holds everything by mapping only (fds closed).
    tree.process(300, "viewer").maps(&[
        map_line(0x7f0000000000, MIB, 0, 1043, "/dmabuf:"),
        map_line(0x7f0000200000, MIB, MIB, 1044, "/dmabuf:gpu tex"),
        map_line(
            0x7f0000400000,
            8192,
            0,
            555,
            "/memfd:dmabuf-portable:scratch (deleted)",
        ),
        map_line(0x7f0000600000, 4096, 0, 556, "/memfd:wayland-shm (deleted)"),
    ]);
    // Unreadable: its fd "directory" is a file (ENOTDIR).
    let p400 = tree.proc_root().join("400");
    fs::create_dir_all(&p400).unwrap();
    fs::write(p400.join("comm"), "locked\n").unwrap();
    fs::write(p400.join("fd"), "").unwrap();
    // Vanished: listed, but gone when read.
    symlink("/nonexistent/gone", tree.proc_root().join("500")).unwrap();
    // Holds the portable buffer by fd; stat of the link fails here, so
    // the inode comes from fdinfo.
    tree.process(600, "portable-user").fd(
        9,
        "/memfd:dmabuf-portable:scratch (deleted)",
        Some(b"pos:\t0\nflags:\t0100002\nmnt_id:\t1\nino:\t555\n"),
    );
    // Not processes.
    symlink("100", tree.proc_root().join("self")).unwrap();
    fs::create_dir_all(tree.proc_root().join("sys")).unwrap();
    tree.write("proc/meminfo", "MemTotal: 1 kB\n");

    tree.sysfs_buffer(1042, "udmabuf", 4096);
    tree.sysfs_buffer(1044, "i915", 2 * MIB);
    tree.sysfs_buffer(1045, "system", 65536); // held by the kernel only
    tree.write(
        "sys/kernel/debug/dma_buf/bufinfo",
        "\nDma-buf Objects:\nsize    \tflags   \tmode    \tcount   \texp_name\tino     \tname\n\
         00004096\t00080002\t0004801f\t00000004\tudmabuf\t00001042\tframes\n\
         \twrite fence:udmabuf tl seq 3 unsignalled\n\
         \tAttached Devices:\n\t0000:00:02.0\nTotal 1 devices attached\n\n\
         \nTotal 1 objects, 4096 bytes\n",
    );
}

fn holder(pid: u32, command: &str, fds: &[i32], mappings: u32, mapped_bytes: u64) -> Holder {
    Holder {
        pid,
        command: command.into(),
        fds: fds.to_vec(),
        mappings,
        mapped_bytes,
    }
}

#[test]
fn scene_holders_sizes_and_sources() {
    let tree = Tree::new();
    scene(&tree);
    let snap = tree.scanner().scan().unwrap();

    let frames = snap.buffer(FileKind::DmaBuf, 1042).unwrap();
    assert_eq!(frames.size, 4096);
    assert_eq!(frames.size_source, SizeSource::Fdinfo);
    assert_eq!(frames.exporter.as_deref(), Some("udmabuf"));
    assert_eq!(frames.name.as_deref(), Some("frames"));
    assert_eq!(
        frames.holders,
        [
            holder(100, "camera", &[3, 7], 1, 4096),
            holder(200, "compositor", &[5], 0, 0)
        ]
    );
    assert_eq!(frames.attached_devices, ["0000:00:02.0"]);
    assert_eq!(frames.fences.len(), 1);
    assert_eq!(frames.fences[0].signalled, Some(false));

    let heap = snap.buffer(FileKind::DmaBuf, 1043).unwrap();
    assert_eq!(
        (heap.size, heap.exporter.as_deref(), heap.name.as_deref()),
        (MIB, Some("system"), None)
    );
    assert_eq!(
        heap.holders,
        [
            holder(200, "compositor", &[6], 0, 0),
            holder(300, "viewer", &[], 1, MIB)
        ]
    );

    // Mapped only; size and exporter from sysfs, name from maps.
    let tex = snap.buffer(FileKind::DmaBuf, 1044).unwrap();
    assert_eq!((tex.size, tex.size_source), (2 * MIB, SizeSource::Sysfs));
    assert_eq!(tex.exporter.as_deref(), Some("i915"));
    assert_eq!(tex.name.as_deref(), Some("gpu tex"));
    assert_eq!(tex.holders, [holder(300, "viewer", &[], 1, MIB)]);

    // Known only from sysfs: no holder.
    let kernel = snap.buffer(FileKind::DmaBuf, 1045).unwrap();
    assert!(kernel.holders.is_empty());
    assert_eq!(
        (kernel.size, kernel.exporter.as_deref()),
        (65536, Some("system"))
    );

    // Portable: by mapping in 300, by fd in 600; no stat here, so the
    // size is the mapping's extent.
    let scratch = snap.buffer(FileKind::Portable, 555).unwrap();
    assert_eq!(scratch.exporter.as_deref(), Some("portable"));
    assert_eq!(scratch.name.as_deref(), Some("scratch"));
    assert_eq!(
        (scratch.size, scratch.size_source),
        (8192, SizeSource::MappingExtent)
    );
    assert_eq!(
        scratch.holders,
        [
            holder(300, "viewer", &[], 1, 8192),
            holder(600, "portable-user", &[9], 0, 0)
        ]
    );

    // Nothing else: not the socket, the file, or the foreign memfd.
    assert_eq!(snap.buffers.len(), 5);
    assert_eq!(snap.buffer(FileKind::Portable, 556), None);

    // Proportional sizes: shared buffers are split equally.
    let usage = |pid| snap.process(pid).unwrap();
    assert_eq!(
        (
            usage(100).buffers,
            usage(100).fds,
            usage(100).mapped_buffers
        ),
        (1, 2, 1)
    );
    assert_eq!(usage(100).rss, 4096);
    assert_eq!(usage(100).pss, 2048);
    assert_eq!(usage(200).rss, 4096 + MIB);
    assert_eq!(usage(200).pss, 2048 + MIB / 2);
    assert_eq!(usage(300).buffers, 3);
    assert_eq!(usage(300).rss, MIB + 2 * MIB + 8192);
    assert_eq!(usage(300).pss, MIB / 2 + 2 * MIB + 4096);
    assert_eq!(usage(600).pss, 4096);
    // How they are held (dmabuf_dump's split): the viewer only maps, the
    // compositor only holds fds, the camera both.
    let held = |pid| {
        let u = usage(pid);
        (u.fd_size, u.mapped_size, u.mapped_bytes)
    };
    assert_eq!(held(300), (0, MIB + 2 * MIB + 8192, MIB + MIB + 8192));
    assert_eq!(held(200), (4096 + MIB, 0, 0));
    assert_eq!(held(100), (4096, 4096, 4096));
    assert_eq!(held(600), (8192, 0, 0));
    assert_eq!(snap.totals.unheld_size, 64 * 1024);
    assert_eq!(snap.processes.len(), 4);
    // Largest proportional size first.
    let order: Vec<u32> = snap.processes.iter().map(|p| p.pid).collect();
    assert_eq!(order, [300, 200, 600, 100]);

    // Unreadable and vanished processes are counted, not fatal.
    let unreadable: Vec<_> = snap.unreadable.iter().map(|u| (u.pid, u.reason)).collect();
    assert_eq!(
        unreadable,
        [
            (400, UnreadableReason::Other),
            (500, UnreadableReason::Exited)
        ]
    );
    assert!(
        snap.unreadable[0].message.contains("400/fd"),
        "{}",
        snap.unreadable[0].message
    );
    assert!(snap.unreadable[0].message.contains("ENOTDIR") || snap.unreadable[0].errno == Some(20));

    let t = &snap.totals;
    assert_eq!(t.buffers, 5);
    assert_eq!(t.size, 4096 + MIB + 2 * MIB + 65536 + 8192);
    assert_eq!(t.processes, 4);
    assert_eq!(t.unheld_buffers, 1);
    assert_eq!(t.unreadable, 2);
    // Proportional sizes add up to the size of the held buffers.
    let held: u64 = snap
        .buffers
        .iter()
        .filter(|b| !b.holders.is_empty())
        .map(|b| b.size)
        .sum();
    assert_eq!(snap.processes.iter().map(|p| p.pss).sum::<u64>(), held);

    assert_eq!(snap.sources.sysfs_stats, SourceState::Read);
    assert_eq!(snap.sources.debugfs_bufinfo, SourceState::Read);

    // Default order: largest first.
    let sizes: Vec<u64> = snap.buffers.iter().map(|b| b.size).collect();
    let mut sorted = sizes.clone();
    sorted.sort_by(|a, b| b.cmp(a));
    assert_eq!(sizes, sorted);
}

#[test]
fn without_sysfs_or_debugfs_mapped_only_buffers_have_a_lower_bound() {
    let tree = Tree::new();
    scene(&tree);
    let snap = tree.scanner().sysfs(false).debugfs(false).scan().unwrap();
    let tex = snap.buffer(FileKind::DmaBuf, 1044).unwrap();
    // Mapped 1 MiB at offset 1 MiB: at least 2 MiB.
    assert_eq!(
        (tex.size, tex.size_source),
        (2 * MIB, SizeSource::MappingExtent)
    );
    assert_eq!(tex.exporter, None);
    assert!(snap.buffer(FileKind::DmaBuf, 1045).is_none());
    assert!(snap
        .buffer(FileKind::DmaBuf, 1042)
        .unwrap()
        .attached_devices
        .is_empty());
    assert_eq!(snap.sources.sysfs_stats, SourceState::Absent);
}

#[test]
fn missing_and_unreadable_sources() {
    let tree = Tree::new();
    tree.process(1, "init");
    // debugfs bufinfo is a directory: unreadable (EISDIR).
    fs::create_dir_all(tree.sys_root().join("kernel/debug/dma_buf/bufinfo")).unwrap();
    let snap = tree.scanner().scan().unwrap();
    assert_eq!(snap.sources.sysfs_stats, SourceState::Absent);
    match &snap.sources.debugfs_bufinfo {
        SourceState::Unreadable(m) => assert!(m.contains("bufinfo"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert!(snap.buffers.is_empty());
    assert!(snap.unreadable.is_empty());
    let text = report::render_snapshot(&snap);
    assert!(text.contains("No dma-bufs"), "{text}");
    assert!(text.contains("Not shown: debugfs bufinfo"), "{text}");
}

/// As another user, a process whose fd dir is mode 000 is unreadable and
/// the report hints at root; as root, the permission bits do not stop the
/// scan (so the hint would be wrong, see the next test).
#[test]
fn permission_denied_is_counted() {
    use std::os::unix::fs::PermissionsExt;
    let tree = Tree::new();
    tree.process(10, "secret")
        .dmabuf_fd(3, 7, 4096, "udmabuf", None);
    let fd_dir = tree.proc_root().join("10/fd");
    fs::set_permissions(&fd_dir, fs::Permissions::from_mode(0o000)).unwrap();
    fs::set_permissions(
        tree.proc_root().join("10/maps"),
        fs::Permissions::from_mode(0o000),
    )
    .unwrap();
    let snap = tree.scanner().scan().unwrap();
    fs::set_permissions(&fd_dir, fs::Permissions::from_mode(0o755)).unwrap();
    if rustix::process::geteuid().is_root() {
        assert!(snap.sources.as_root);
        assert!(snap.unreadable.is_empty(), "{:?}", snap.unreadable);
        assert_eq!(snap.buffers.len(), 1);
        return;
    }
    assert!(!snap.sources.as_root);
    assert_eq!(snap.unreadable.len(), 1);
    assert_eq!(
        snap.unreadable[0].reason,
        UnreadableReason::PermissionDenied
    );
    assert!(snap.buffers.is_empty());
    assert!(report::render_snapshot(&snap)
        .contains("1 process could not be read (1 permission denied); run as root"));
}

/// "Run as root" is said only to a scan that did not run as root, for
/// processes and for debugfs alike.
#[test]
fn root_hint_only_when_it_applies() {
    let unreadable = Unreadable {
        pid: 10,
        reason: UnreadableReason::PermissionDenied,
        message: "inspect: /proc/10/fd: cannot read: Permission denied (EACCES)".into(),
        errno: Some(13),
    };
    let mut src = sources();
    src.debugfs_bufinfo = SourceState::Unreadable(
        "inspect: /sys/kernel/debug/dma_buf/bufinfo: cannot read: Permission denied (EACCES)"
            .into(),
    );
    let user = Snapshot::from_buffers(vec![], vec![unreadable.clone()], src.clone());
    let text = report::render_snapshot(&user);
    assert!(
        text.contains(
            "1 process could not be read (1 permission denied); run as root to read them"
        ),
        "{text}"
    );
    assert!(text.contains("(EACCES); run as root to read it"), "{text}");

    src.as_root = true;
    let root = Snapshot::from_buffers(vec![], vec![unreadable], src);
    let text = report::render_snapshot(&root);
    assert!(
        text.contains("1 process could not be read (1 permission denied)\n"),
        "{text}"
    );
    assert!(!text.contains("run as root"), "{text}");

    // Exited processes never get the hint.
    let exited = Unreadable {
        pid: 11,
        reason: UnreadableReason::Exited,
        message: "gone".into(),
        errno: Some(2),
    };
    let text = report::render_snapshot(&Snapshot::from_buffers(vec![], vec![exited], sources()));
    assert!(!text.contains("run as root"), "{text}");
}

#[test]
fn missing_proc_root_is_an_error() {
    let tree = Tree::new();
    let err = Scanner::new()
        .proc_root(tree.root.join("no-such-proc"))
        .scan()
        .unwrap_err();
    assert_eq!(err.errno(), Some(rustix::io::Errno::NOENT));
    assert_eq!(err.operation(), "inspect");
    assert!(err.object().ends_with("no-such-proc"));
    assert!(
        err.to_string().contains("cannot list the processes"),
        "{err}"
    );
}

#[test]
fn odd_files_in_the_tree_do_not_break_the_scan() {
    let tree = Tree::new();
    let p = tree.process(42, "odd");
    // Non-UTF-8 name, a dma-buf without ino (stat of the dangling link
    // fails, so it is skipped), fdinfo gone (fd closed mid-scan), a
    // non-numeric fd entry, a garbage maps file.
    p.dmabuf_fd(3, 9, 100, "udmabuf", None);
    fs::write(
        p.dir.join("fdinfo/3"),
        b"pos:\t0\nino:\t9\nsize:\t100\nexp_name:\tudmabuf\nname:\tcaf\xff\n",
    )
    .unwrap();
    p.fd(4, "/dmabuf:", Some(b"size:\t1\nexp_name:\tx\n"));
    p.fd(5, "/dmabuf:closed", None);
    p.fd(
        6,
        "anon_inode:dmabuf",
        Some(b"ino:\t11\nsize:\t64\nexp_name:\told\n"),
    );
    symlink("x", p.dir.join("fd/notanumber")).unwrap();
    fs::write(
        p.dir.join("maps"),
        b"garbage\n\xff\xfe\n1000-0 rw-s 0 0:0 1 /dmabuf:\n\n2000-3000 rw-s 0 0:d 9 /dmabuf:caf\xff\n",
    )
    .unwrap();
    fs::write(p.dir.join("comm"), b"odd\xff\n").unwrap();
    let snap = tree.scanner().scan().unwrap();
    assert!(snap.unreadable.is_empty(), "{:?}", snap.unreadable);
    let inodes: Vec<u64> = snap.buffers.iter().map(|b| b.inode).collect();
    assert_eq!(inodes, [9, 11]);
    let b = snap.buffer(FileKind::DmaBuf, 9).unwrap();
    assert_eq!(b.name.as_deref(), Some("caf\u{fffd}"));
    assert_eq!(b.holders, [holder(42, "odd\u{fffd}", &[3], 1, 0x1000)]);
    let old = snap.buffer(FileKind::DmaBuf, 11).unwrap();
    assert_eq!(old.exporter.as_deref(), Some("old"));
    assert_eq!(old.name, None);
}

fn entry(inode: u64, size: u64, exporter: &str, name: Option<&str>, pids: &[u32]) -> BufferEntry {
    BufferEntry {
        kind: FileKind::DmaBuf,
        inode,
        size,
        size_source: SizeSource::Fdinfo,
        exporter: Some(exporter.into()),
        name: name.map(Into::into),
        holders: pids
            .iter()
            .map(|&pid| holder(pid, &format!("p{pid}"), &[3], 0, 0))
            .collect(),
        attached_devices: vec![],
        fences: vec![],
    }
}

fn sources() -> Sources {
    Sources {
        proc_root: "/proc".into(),
        sys_root: "/sys".into(),
        sysfs_stats: SourceState::Absent,
        debugfs_bufinfo: SourceState::Absent,
        as_root: false,
    }
}

#[test]
fn proportional_remainders_add_up() {
    let snap = Snapshot::from_buffers(
        vec![
            entry(1, 4097, "a", None, &[30, 10, 20]),
            entry(2, 1, "a", None, &[20, 10]),
        ],
        vec![],
        sources(),
    );
    let prop = |pid| snap.process(pid).unwrap().pss;
    // 4097 = 3 * 1365 + 2: pids 10 and 20 get one byte more; 1 byte: pid 10.
    assert_eq!((prop(10), prop(20), prop(30)), (1366 + 1, 1366, 1365));
    assert_eq!(prop(10) + prop(20) + prop(30), 4098);
}

#[test]
fn filter_and_sort() {
    let tree = Tree::new();
    scene(&tree);
    let snap = tree.scanner().scan().unwrap();

    let only200 = snap.filtered(&Filter {
        pids: vec![200],
        ..Filter::default()
    });
    let inodes: Vec<u64> = only200.buffers.iter().map(|b| b.inode).collect();
    assert_eq!(inodes, [1043, 1042]);
    // Buffers keep all holders; the share is still among all of them.
    assert_eq!(only200.buffers[1].holders.len(), 2);
    assert_eq!(only200.processes.len(), 1);
    assert_eq!(only200.processes[0].pss, 2048 + MIB / 2);
    assert_eq!(only200.totals.size, MIB + 4096);
    assert_eq!(only200.totals.processes, 1);
    assert_eq!(only200.totals.unreadable, 0);

    let system = snap.filtered(&Filter {
        exporters: vec!["SYSTEM".into()],
        ..Filter::default()
    });
    let inodes: Vec<u64> = system.buffers.iter().map(|b| b.inode).collect();
    assert_eq!(inodes, [1043, 1045]);
    assert_eq!(system.totals.unreadable, 2);

    let portable = snap.filtered(&Filter {
        exporters: vec!["portable".into()],
        pids: vec![600],
    });
    assert_eq!(portable.buffers.len(), 1);
    assert_eq!(portable.buffers[0].kind, FileKind::Portable);

    let mut by_inode = snap.clone();
    by_inode.sort(SortKey::Inode);
    let inodes: Vec<(FileKind, u64)> = by_inode.buffers.iter().map(|b| b.id()).collect();
    assert_eq!(
        inodes,
        [
            (FileKind::DmaBuf, 1042),
            (FileKind::DmaBuf, 1043),
            (FileKind::DmaBuf, 1044),
            (FileKind::DmaBuf, 1045),
            (FileKind::Portable, 555)
        ]
    );
    let mut by_name = snap.clone();
    by_name.sort(SortKey::Name);
    let names: Vec<Option<&str>> = by_name.buffers.iter().map(|b| b.name.as_deref()).collect();
    assert_eq!(
        names,
        [Some("frames"), Some("gpu tex"), Some("scratch"), None, None]
    );
}

#[test]
fn changes_between_scans() {
    let tree = Tree::new();
    scene(&tree);
    let before = tree.scanner().scan().unwrap();
    assert!(before.changes_since(&before).is_empty());

    // Process 100 leaks a new buffer, the compositor exits, the kernel
    // drops its buffer.
    tree.process(700, "leaker")
        .dmabuf_fd(3, 2000, 8 * MIB, "system", Some("leak"));
    fs::remove_dir_all(tree.proc_root().join("200")).unwrap();
    fs::remove_dir_all(tree.sys_root().join("kernel/dmabuf/buffers/1045")).unwrap();
    let after = tree.scanner().scan().unwrap();
    let changes = after.changes_since(&before);

    let appeared: Vec<u64> = changes.appeared.iter().map(|b| b.inode).collect();
    assert_eq!(appeared, [2000]);
    let gone: Vec<u64> = changes.disappeared.iter().map(|b| b.inode).collect();
    assert_eq!(gone, [1045]);
    assert!(changes.resized.is_empty());
    let procs: Vec<(u32, i128)> = changes
        .processes
        .iter()
        .map(|p| (p.pid, p.growth()))
        .collect();
    assert_eq!(
        procs,
        [
            (700, 8 * MIB as i128),
            (300, MIB as i128 / 2),
            (100, 2048),
            (200, -(2048 + MIB as i128 / 2)),
        ]
    );
    assert_eq!(changes.size_after - changes.size_before, 8 * MIB - 65536);
    let text = report::render_changes(&changes);
    assert!(
        text.contains("+ appeared  2000 8.0 MiB system leak held by 700 leaker (fd 3)"),
        "{text}"
    );
    assert!(text.contains("- gone      1045"), "{text}");
    assert!(
        text.contains("process 700 leaker: 0 -> 1 buffers"),
        "{text}"
    );
    assert!(report::render_changes(&after.changes_since(&after)).contains("No change"));
}

#[test]
fn report_table() {
    let tree = Tree::new();
    scene(&tree);
    let snap = tree.scanner().scan().unwrap();
    let text = report::render_snapshot(&snap);
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("INODE"), "{text}");
    assert!(
        text.contains("camera (fd 3,7, mapped 4.0 KiB); 200 compositor (fd 5)"),
        "{text}"
    );
    // A partial mapping shows the bytes it covers, not the buffer's size.
    assert!(
        text.contains("gpu tex  300 viewer (mapped 1.0 MiB)"),
        "{text}"
    );
    // The viewer maps 1 MiB of each of its two large buffers and 8 KiB of
    // the portable one: by fd nothing, RSS 3 MiB + 8 KiB.
    let viewer = text
        .lines()
        .find(|l| l.starts_with("300  viewer"))
        .unwrap_or_else(|| panic!("{text}"));
    let cells: Vec<&str> = viewer
        .split("  ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect();
    assert_eq!(
        cells,
        ["300", "viewer", "3", "0", "0 B", "2.0 MiB", "3.0 MiB", "2.5 MiB"],
        "{viewer}"
    );
    assert!(text.contains("attached: 0000:00:02.0"), "{text}");
    assert!(
        text.contains("write fence: udmabuf tl seq 3 unsignalled"),
        "{text}"
    );
    assert!(text.contains(">=8.0 KiB"), "{text}");
    for column in ["BY-FD", "MAPPED", "RSS", "PSS"] {
        assert!(text.contains(column), "{text}");
    }
    assert!(
        text.contains(
            "Total: 5 buffers, 3.1 MiB, held by 4 processes (1 buffer, 64.0 KiB, with no visible holder)"
        ),
        "{text}"
    );
    assert!(
        text.contains("2 processes could not be read (1 exited during the scan, 1 other error)"),
        "{text}"
    );
}
