//! Inspection against the real kernel: several processes holding the same
//! and different dma-bufs, by fd and by mapping only, named and unnamed,
//! from the system heap and udmabuf. `dmabuf ls` must list exactly those,
//! with the right holders and proportional sizes.

use std::os::fd::{AsFd, OwnedFd};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use dmabuf::inspect::{FileKind as Seen, Scanner};
use dmabuf::{Allocate, Heap, Udmabuf};
use dmabuf_lab_guest::{cli, require_lab};

const PAGE: u64 = 4096;

/// A child process (busybox `sleep`) that inherits `fds` (dups without
/// close-on-exec) and so holds those buffers.
fn holder(fds: &[&OwnedFd]) -> Child {
    let dups: Vec<OwnedFd> = fds
        .iter()
        .map(|f| rustix::io::dup(f.as_fd()).unwrap())
        .collect();
    let child = Command::new("sleep")
        .arg("60")
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    drop(dups);
    child
}

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn ls_lists_each_buffer_once_with_its_holders_and_shares() {
    require_lab();
    let me = std::process::id();
    let udmabuf = Udmabuf::open().unwrap();
    let heap = Heap::open("system").unwrap();

    // X: a named udmabuf held by fd here and in child A.
    let x = udmabuf.allocate(4 * PAGE, "inspect-shared").unwrap();
    let x_fd = x.try_clone_fd().unwrap();
    let a = Killed(holder(&[&x_fd]));
    drop(x_fd);
    // Y: an unnamed heap buffer kept here by a mapping only (fd closed).
    let y = heap.allocate_dma_buf(2 * PAGE, Default::default()).unwrap();
    let y_inode = y.inode();
    let y_map = dmabuf_lab_guest::sys::RawMapping::new(&y, (2 * PAGE) as usize, true).unwrap();
    drop(y);
    // Z: a named heap buffer held only by child B (our fd is closed).
    let z = heap.allocate(8 * PAGE, "inspect-child").unwrap();
    let z_inode = z.dma_buf().unwrap().inode();
    let z_fd = z.try_clone_fd().unwrap();
    let b = Killed(holder(&[&z_fd]));
    drop((z_fd, z));
    std::thread::sleep(Duration::from_millis(100));

    let snap = Scanner::new().scan().unwrap();
    let x_inode = x.dma_buf().unwrap().inode();
    let pa = a.0.id();
    let pb = b.0.id();

    let bx = snap.buffer(Seen::DmaBuf, x_inode).expect("X is listed");
    assert_eq!(bx.size, 4 * PAGE);
    assert_eq!(bx.exporter.as_deref(), Some("udmabuf"));
    assert_eq!(bx.name.as_deref(), Some("inspect-shared"));
    let mut holders: Vec<u32> = bx.holders.iter().map(|h| h.pid).collect();
    holders.sort();
    let mut want = vec![me, pa];
    want.sort();
    assert_eq!(holders, want, "X is held here and by child A: {bx:?}");
    assert!(bx.holders.iter().all(|h| !h.fds.is_empty()));

    let by = snap
        .buffer(Seen::DmaBuf, y_inode)
        .expect("Y, mapped only, is listed");
    assert_eq!(by.holders.len(), 1);
    assert_eq!(by.holders[0].pid, me);
    assert!(by.holders[0].fds.is_empty(), "held by mapping only");
    assert!(by.holders[0].is_mapped());
    assert_eq!(by.name, None, "unnamed");

    let bz = snap.buffer(Seen::DmaBuf, z_inode).expect("Z is listed");
    assert_eq!(bz.exporter.as_deref(), Some("system"));
    assert_eq!(bz.name.as_deref(), Some("inspect-child"));
    assert_eq!(
        bz.holders.iter().map(|h| h.pid).collect::<Vec<_>>(),
        vec![pb]
    );

    // Each buffer once.
    for inode in [x_inode, y_inode, z_inode] {
        assert_eq!(snap.buffers.iter().filter(|b| b.inode == inode).count(), 1);
    }
    // Proportional sizes: X is split between this process and A.
    let pa_use = snap.process(pa).unwrap();
    assert_eq!(pa_use.pss, 2 * PAGE);
    assert_eq!(pa_use.buffers, 1);
    let pb_use = snap.process(pb).unwrap();
    assert_eq!(pb_use.pss, 8 * PAGE);
    let mine = snap.process(me).unwrap();
    // Half of X, all of Y (and nothing of Z).
    assert_eq!(mine.pss, 2 * PAGE + 2 * PAGE);
    // dmabuf_dump-style totals on real heap and udmabuf buffers: this
    // process holds X by fd and Y by a mapping only; A and B by fd only.
    assert_eq!(
        (mine.rss, mine.fd_size, mine.mapped_size, mine.mapped_bytes),
        (6 * PAGE, 4 * PAGE, 2 * PAGE, 2 * PAGE),
        "{mine:?}"
    );
    assert_eq!(
        (
            pa_use.rss,
            pa_use.fd_size,
            pa_use.mapped_size,
            pa_use.mapped_bytes
        ),
        (4 * PAGE, 4 * PAGE, 0, 0)
    );
    assert_eq!(
        (
            pb_use.rss,
            pb_use.fd_size,
            pb_use.mapped_size,
            pb_use.mapped_bytes
        ),
        (8 * PAGE, 8 * PAGE, 0, 0)
    );
    assert_eq!(by.holders[0].mapped_bytes, 2 * PAGE);

    // The command says the same.
    let out = Command::new(cli()).args(["ls", "--json"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let listed: Vec<&serde_json::Value> = v["buffers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["inode"] == x_inode)
        .collect();
    assert_eq!(listed.len(), 1, "X once");
    assert_eq!(listed[0]["holders"].as_array().unwrap().len(), 2);
    let me_json = v["processes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["pid"] == me)
        .expect("this process is listed");
    assert_eq!(me_json["rss"], 6 * PAGE);
    assert_eq!(me_json["pss"], 4 * PAGE);
    assert_eq!(me_json["mapped_bytes"], 2 * PAGE);

    // The same totals as CSV, for child B alone; a pid with no process
    // is named and gives exit status 3.
    let out = Command::new(cli())
        .args(["ls", "--csv", "processes", "--pid", &pb.to_string()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let csv = String::from_utf8(out.stdout).unwrap();
    let rows: Vec<&str> = csv.lines().collect();
    assert_eq!(rows.len(), 2, "{csv}");
    let b_row = format!(
        "{pb},sleep,1,1,0,{},0,0,{},{}",
        8 * PAGE,
        8 * PAGE,
        8 * PAGE
    );
    assert_eq!(rows[1].trim_end(), b_row, "{csv}");
    let out = Command::new(cli())
        .args(["ls", "--pid", "999999"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--pid 999999: no such process"));

    let table = Command::new(cli()).arg("ls").output().unwrap();
    let text = String::from_utf8(table.stdout).unwrap();
    assert!(text.contains("inspect-shared"), "{text}");
    assert!(text.contains("inspect-child"), "{text}");
    drop(y_map);
}

#[test]
fn a_buffer_kept_only_by_a_mapping_disappears_when_unmapped() {
    require_lab();
    let heap = Heap::open("system").unwrap();
    let d = heap.allocate_dma_buf(PAGE, Default::default()).unwrap();
    d.set_name("inspect-maponly").unwrap();
    let inode = d.inode();
    let map = dmabuf_lab_guest::sys::RawMapping::new(&d, PAGE as usize, false).unwrap();
    drop(d);
    let snap = Scanner::new().scan().unwrap();
    let b = snap
        .buffer(Seen::DmaBuf, inode)
        .expect("listed while mapped");
    assert_eq!(b.name.as_deref(), Some("inspect-maponly"));
    drop(map);
    let snap = Scanner::new().scan().unwrap();
    assert!(
        snap.buffer(Seen::DmaBuf, inode).is_none(),
        "freed with its last mapping"
    );
}
