//! The scanner on the real `/proc` of this host, with a real portable
//! memfd buffer held by this process (by fd and by mapping) and by a child.
//!
//! One test only: the child inherits every fd without close-on-exec, so
//! no other test may create such fds while it spawns.

use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};

use dmabuf::inspect::{FileKind, Scanner, SizeSource, Snapshot, PORTABLE_MEMFD_PREFIX};
use rustix::fs::{fstat, ftruncate, memfd_create, MemfdFlags};

const SIZE: usize = 64 * 1024;

/// A shared mapping that outlives its fd and is never read or written
/// (the library's mappings live with their buffer's fd, so the test makes
/// its own, as another program holding a buffer only by mapping would).
struct RawMapping(*mut std::ffi::c_void);

impl RawMapping {
    fn new(fd: &std::os::fd::OwnedFd) -> RawMapping {
        use rustix::mm::{MapFlags, ProtFlags};
        // SAFETY: a new mapping at an address the kernel chooses touches no
        // Rust memory; nothing reads or writes through it.
        let ptr = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                SIZE,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED,
                fd,
                0,
            )
        }
        .unwrap();
        RawMapping(ptr)
    }
}

impl Drop for RawMapping {
    fn drop(&mut self) {
        // SAFETY: exactly the mapping made in `new`, never referenced.
        unsafe { rustix::mm::munmap(self.0, SIZE) }.unwrap();
    }
}

fn find<'a>(snap: &'a Snapshot, name: &str) -> Option<&'a dmabuf::inspect::BufferEntry> {
    snap.buffers
        .iter()
        .find(|b| b.kind == FileKind::Portable && b.name.as_deref() == Some(name))
}

#[test]
fn portable_memfd_held_by_fd_mapping_and_child() {
    let name = format!("test-{}", std::process::id());
    let me = std::process::id();
    // No MFD_CLOEXEC: the child inherits the fd at the same number.
    let memfd = memfd_create(
        format!("{PORTABLE_MEMFD_PREFIX}{name}"),
        MemfdFlags::empty(),
    )
    .unwrap();
    ftruncate(&memfd, SIZE as u64).unwrap();
    let inode = fstat(&memfd).unwrap().st_ino;
    let fd = memfd.as_raw_fd();
    // A mapping that outlives the fd.
    let mapping = RawMapping::new(&memfd);

    let mut child = Command::new("sleep")
        .arg("60")
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn sleep");
    let child_pid = child.id();

    // Held by this process (fd and mapping) and by the child (fd).
    let snap = Scanner::new().scan().unwrap();
    let buf = find(&snap, &name).expect("the memfd buffer is listed");
    assert_eq!(buf.inode, inode);
    assert_eq!(buf.size, SIZE as u64);
    assert_eq!(buf.size_source, SizeSource::Stat);
    assert_eq!(buf.exporter.as_deref(), Some("portable"));
    let mine = buf.holder(me).expect("this process holds it");
    assert_eq!(mine.fds, [fd]);
    assert_eq!(mine.mappings, 1);
    assert_eq!(mine.mapped_bytes, SIZE as u64);
    let childs = buf.holder(child_pid).expect("the child holds it");
    assert_eq!(childs.fds, [fd]);
    assert!(!childs.is_mapped());
    assert_eq!(buf.holders.len(), 2);
    // Half each.
    let usage = snap.process(me).unwrap();
    assert_eq!(usage.pss, SIZE as u64 / 2);
    assert_eq!(snap.process(child_pid).unwrap().pss, SIZE as u64 / 2);

    // The child exits: this process alone, then by mapping only.
    child.kill().unwrap();
    child.wait().unwrap();
    drop(memfd);
    let snap = Scanner::new().scan().unwrap();
    let buf = find(&snap, &name).expect("the mapping keeps it alive");
    assert_eq!(buf.inode, inode);
    assert_eq!(buf.holders.len(), 1);
    let mine = buf.holder(me).unwrap();
    assert!(mine.fds.is_empty());
    assert_eq!(mine.mappings, 1);
    // Root can stat it through map_files; otherwise a lower bound.
    assert!(matches!(
        buf.size_source,
        SizeSource::Stat | SizeSource::MappingExtent
    ));
    assert_eq!(buf.size, SIZE as u64);
    let before = snap;

    drop(mapping);
    let after = Scanner::new().scan().unwrap();
    assert!(find(&after, &name).is_none());
    let changes = after.changes_since(&before);
    assert!(changes
        .disappeared
        .iter()
        .any(|b| b.inode == inode && b.kind == FileKind::Portable));
}
