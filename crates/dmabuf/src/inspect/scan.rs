//! The scanner: walks procfs, sysfs and debugfs and builds a [`Snapshot`].

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use rustix::io::Errno;

use super::snapshot::{
    BufferEntry, Holder, SizeSource, Snapshot, SourceState, Sources, Unreadable, UnreadableReason,
};
use crate::procfs::{
    classify_path, parse_bufinfo, parse_fdinfo, parse_maps_line, BufInfoFence, FileKind, PathBuffer,
};
use crate::{Error, Result};

const OP: &str = "inspect";

/// Configures and runs a scan. See the [module documentation](super) for
/// what is read and what each fact means.
///
/// ```no_run
/// let snapshot = dmabuf::inspect::Scanner::new().scan()?;
/// for buffer in &snapshot.buffers {
///     println!("{} {} bytes, {} holders", buffer.inode, buffer.size, buffer.holders.len());
/// }
/// # Ok::<(), dmabuf::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Scanner {
    proc_root: PathBuf,
    sys_root: PathBuf,
    sysfs: bool,
    debugfs: bool,
}

impl Default for Scanner {
    fn default() -> Self {
        Scanner::new()
    }
}

impl Scanner {
    /// A scanner of `/proc` and `/sys`, using sysfs and debugfs when
    /// present.
    pub fn new() -> Self {
        Scanner {
            proc_root: PathBuf::from("/proc"),
            sys_root: PathBuf::from("/sys"),
            sysfs: true,
            debugfs: true,
        }
    }

    /// Scans this directory instead of `/proc` (a fake tree in tests, or
    /// another mount of procfs).
    pub fn proc_root(mut self, root: impl Into<PathBuf>) -> Self {
        self.proc_root = root.into();
        self
    }

    /// Reads `kernel/dmabuf/buffers` and `kernel/debug/dma_buf/bufinfo`
    /// under this directory instead of `/sys`.
    pub fn sys_root(mut self, root: impl Into<PathBuf>) -> Self {
        self.sys_root = root.into();
        self
    }

    /// Whether to read sysfs buffer statistics (default: yes).
    pub fn sysfs(mut self, read: bool) -> Self {
        self.sysfs = read;
        self
    }

    /// Whether to read debugfs `bufinfo` (default: yes).
    pub fn debugfs(mut self, read: bool) -> Self {
        self.debugfs = read;
        self
    }

    /// Scans once.
    ///
    /// Fails only when the proc root itself cannot be listed; processes
    /// that cannot be read are reported in [`Snapshot::unreadable`], and
    /// missing or unreadable sysfs/debugfs in [`Snapshot::sources`].
    pub fn scan(&self) -> Result<Snapshot> {
        let mut acc = Accumulator::default();
        let entries = fs::read_dir(&self.proc_root).map_err(|e| {
            Error::kernel(
                OP,
                self.proc_root.display().to_string(),
                errno_of(&e),
                format!("cannot list the processes: {}", io_text(&e)),
            )
        })?;
        let mut pids: Vec<u32> = entries
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect();
        pids.sort_unstable();

        let mut unreadable = Vec::new();
        for pid in pids {
            if let Some(problem) = self.scan_process(pid, &mut acc) {
                unreadable.push(problem);
            }
        }

        let sysfs_stats = if self.sysfs {
            self.read_sysfs(&mut acc)
        } else {
            SourceState::Absent
        };
        let debugfs_bufinfo = if self.debugfs {
            self.read_debugfs(&mut acc)
        } else {
            SourceState::Absent
        };
        acc.fill_sizes_from_map_files(&self.proc_root);

        let sources = Sources {
            proc_root: self.proc_root.display().to_string(),
            sys_root: self.sys_root.display().to_string(),
            sysfs_stats,
            debugfs_bufinfo,
            as_root: rustix::process::geteuid().is_root(),
        };
        Ok(Snapshot::from_buffers(acc.finish(), unreadable, sources))
    }

    /// Reads one process's fds and maps into `acc`; returns the first
    /// problem, if any.
    fn scan_process(&self, pid: u32, acc: &mut Accumulator) -> Option<Unreadable> {
        let dir = self.proc_root.join(pid.to_string());
        let mut problem: Option<Unreadable> = None;
        let mut note = |path: &Path, e: &io::Error| {
            if problem.is_none() {
                problem = Some(unreadable(pid, path, e));
            }
        };

        let comm_path = dir.join("comm");
        let command = match fs::read(&comm_path) {
            Ok(bytes) => String::from_utf8_lossy(&bytes)
                .trim_end_matches('\n')
                .to_string(),
            Err(e) if is_gone(&e) => {
                note(&comm_path, &e);
                return problem;
            }
            Err(_) => "?".to_string(),
        };

        let fd_dir = dir.join("fd");
        match fs::read_dir(&fd_dir) {
            Ok(entries) => {
                let mut fds: Vec<i32> = entries
                    .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                    .collect();
                fds.sort_unstable();
                for fd in fds {
                    if let Err((path, e)) = self.scan_fd(&dir, pid, &command, fd, acc) {
                        note(&path, &e);
                    }
                }
            }
            Err(e) => {
                note(&fd_dir, &e);
                if is_gone(&e) {
                    return problem;
                }
            }
        }

        let maps_path = dir.join("maps");
        match fs::read(&maps_path) {
            Ok(bytes) => {
                let text = String::from_utf8_lossy(&bytes);
                for line in text.lines() {
                    let Some(map) = parse_maps_line(line) else {
                        continue;
                    };
                    let Some(PathBuffer { kind, name }) = classify_path(&map.path) else {
                        continue;
                    };
                    let buf = acc.buffer(kind, map.inode);
                    buf.name_maps = buf.name_maps.take().or(name);
                    buf.mapped_extent = buf.mapped_extent.max(map.offset.saturating_add(map.len()));
                    if buf.map_file.is_none() {
                        buf.map_file = Some((pid, map.start, map.end));
                    }
                    let holder = buf.holder(pid, &command);
                    holder.mappings = holder.mappings.saturating_add(1);
                    holder.mapped_bytes = holder.mapped_bytes.saturating_add(map.len());
                }
            }
            Err(e) => note(&maps_path, &e),
        }
        problem
    }

    /// Reads one fd; Err only for failures worth reporting (an fd closed
    /// during the scan is not one).
    fn scan_fd(
        &self,
        dir: &Path,
        pid: u32,
        command: &str,
        fd: i32,
        acc: &mut Accumulator,
    ) -> std::result::Result<(), (PathBuf, io::Error)> {
        let link_path = dir.join("fd").join(fd.to_string());
        let info_path = dir.join("fdinfo").join(fd.to_string());
        let target = match fs::read_link(&link_path) {
            Ok(t) => Some(t.to_string_lossy().into_owned()),
            Err(e) if is_gone(&e) => return Ok(()),
            Err(_) => None,
        };
        let classified = target.as_deref().map(classify_path);
        let read_info = || match fs::read(&info_path) {
            Ok(bytes) => Ok(Some(parse_fdinfo(&String::from_utf8_lossy(&bytes)))),
            Err(e) if is_gone(&e) => Ok(None),
            Err(e) => Err((info_path.clone(), e)),
        };
        match classified {
            // Another kind of file: a socket, a pipe, a regular file…
            Some(None) => Ok(()),
            Some(Some(PathBuffer {
                kind: FileKind::Portable,
                name,
            })) => {
                let (inode, size) = match rustix::fs::stat(&link_path) {
                    Ok(st) => (Some(st.st_ino), Some(st.st_size.max(0) as u64)),
                    Err(_) => (read_info()?.and_then(|i| i.ino), None),
                };
                let Some(inode) = inode else {
                    return Ok(());
                };
                let buf = acc.buffer(FileKind::Portable, inode);
                buf.name_fd = buf.name_fd.take().or(name);
                buf.size_stat = buf.size_stat.or(size);
                buf.holder(pid, command).fds.insert(fd);
                Ok(())
            }
            // A dma-buf by its link, or a link we could not read.
            Some(Some(PathBuffer {
                kind: FileKind::DmaBuf,
                ..
            }))
            | None => {
                let Some(info) = read_info()? else {
                    return Ok(());
                };
                if !info.is_dmabuf() {
                    return Ok(());
                }
                let inode = info
                    .ino
                    .or_else(|| rustix::fs::stat(&link_path).ok().map(|st| st.st_ino));
                let Some(inode) = inode else {
                    return Ok(());
                };
                let buf = acc.buffer(FileKind::DmaBuf, inode);
                buf.size_fdinfo = buf.size_fdinfo.or(info.size);
                buf.exporter_fdinfo = buf.exporter_fdinfo.take().or(info.exp_name);
                buf.name_fd = buf.name_fd.take().or(info.name.filter(|n| !n.is_empty()));
                buf.holder(pid, command).fds.insert(fd);
                Ok(())
            }
        }
    }

    fn read_sysfs(&self, acc: &mut Accumulator) -> SourceState {
        let dir = self.sys_root.join("kernel/dmabuf/buffers");
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) => return source_error(&dir, &e),
        };
        let mut inodes: Vec<u64> = entries
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect();
        inodes.sort_unstable();
        for inode in inodes {
            let read = |file: &str| {
                fs::read(dir.join(inode.to_string()).join(file))
                    .ok()
                    .map(|b| String::from_utf8_lossy(&b).trim_end().to_string())
            };
            let exporter = read("exporter_name");
            let size = read("size").and_then(|s| s.trim().parse().ok());
            if exporter.is_none() && size.is_none() {
                continue; // gone during the scan
            }
            let buf = acc.buffer(FileKind::DmaBuf, inode);
            buf.exporter_sysfs = exporter;
            buf.size_sysfs = size;
        }
        SourceState::Read
    }

    fn read_debugfs(&self, acc: &mut Accumulator) -> SourceState {
        let path = self.sys_root.join("kernel/debug/dma_buf/bufinfo");
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) => return source_error(&path, &e),
        };
        for entry in parse_bufinfo(&String::from_utf8_lossy(&bytes)) {
            let Some(inode) = entry.ino else {
                continue;
            };
            let buf = acc.buffer(FileKind::DmaBuf, inode);
            buf.size_debugfs = entry.size;
            buf.exporter_debugfs = entry.exp_name;
            buf.name_debugfs = entry.name;
            buf.attached_devices = entry.attached_devices;
            buf.fences = entry.fences;
        }
        SourceState::Read
    }
}

fn errno_of(e: &io::Error) -> Errno {
    e.raw_os_error()
        .map(Errno::from_raw_os_error)
        .unwrap_or(Errno::IO)
}

/// io::Error's text without the " (os error N)" tail.
fn io_text(e: &io::Error) -> String {
    let text = e.to_string();
    match text.find(" (os error") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}

/// The process (or fd) is gone: it exited, or closed the fd, mid-scan.
fn is_gone(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error().map(Errno::from_raw_os_error),
        Some(Errno::NOENT | Errno::SRCH)
    )
}

fn unreadable(pid: u32, path: &Path, e: &io::Error) -> Unreadable {
    let errno = errno_of(e);
    let reason = match errno {
        Errno::NOENT | Errno::SRCH => UnreadableReason::Exited,
        Errno::ACCESS | Errno::PERM => UnreadableReason::PermissionDenied,
        _ => UnreadableReason::Other,
    };
    let cause = match reason {
        UnreadableReason::Exited => "the process exited during the scan".to_string(),
        _ => format!("cannot read: {}", io_text(e)),
    };
    Unreadable {
        pid,
        reason,
        message: Error::kernel(OP, path.display().to_string(), errno, cause).to_string(),
        errno: e.raw_os_error(),
    }
}

fn source_error(path: &Path, e: &io::Error) -> SourceState {
    if e.kind() == io::ErrorKind::NotFound {
        SourceState::Absent
    } else {
        let errno = errno_of(e);
        let cause = format!("cannot read: {}", io_text(e));
        SourceState::Unreadable(
            Error::kernel(OP, path.display().to_string(), errno, cause).to_string(),
        )
    }
}

#[derive(Default)]
struct HolderAcc {
    command: String,
    fds: BTreeSet<i32>,
    mappings: u32,
    mapped_bytes: u64,
}

#[derive(Default)]
struct BufferAcc {
    size_fdinfo: Option<u64>,
    size_sysfs: Option<u64>,
    size_debugfs: Option<u64>,
    size_stat: Option<u64>,
    mapped_extent: u64,
    /// A mapping (pid, start, end) to `stat` through `map_files` when no
    /// other source told the size.
    map_file: Option<(u32, u64, u64)>,
    exporter_fdinfo: Option<String>,
    exporter_sysfs: Option<String>,
    exporter_debugfs: Option<String>,
    name_fd: Option<String>,
    name_maps: Option<String>,
    name_debugfs: Option<String>,
    holders: BTreeMap<u32, HolderAcc>,
    attached_devices: Vec<String>,
    fences: Vec<BufInfoFence>,
}

impl BufferAcc {
    fn holder(&mut self, pid: u32, command: &str) -> &mut HolderAcc {
        self.holders.entry(pid).or_insert_with(|| HolderAcc {
            command: command.to_string(),
            ..HolderAcc::default()
        })
    }
}

#[derive(Default)]
struct Accumulator {
    buffers: BTreeMap<(FileKind, u64), BufferAcc>,
}

impl Accumulator {
    fn buffer(&mut self, kind: FileKind, inode: u64) -> &mut BufferAcc {
        self.buffers.entry((kind, inode)).or_default()
    }

    fn fill_sizes_from_map_files(&mut self, proc_root: &Path) {
        for buf in self.buffers.values_mut() {
            let known = buf.size_fdinfo.is_some()
                || buf.size_sysfs.is_some()
                || buf.size_debugfs.is_some()
                || buf.size_stat.is_some();
            if known {
                continue;
            }
            if let Some((pid, start, end)) = buf.map_file {
                let path = proc_root
                    .join(pid.to_string())
                    .join("map_files")
                    .join(format!("{start:x}-{end:x}"));
                if let Ok(st) = rustix::fs::stat(&path) {
                    buf.size_stat = Some(st.st_size.max(0) as u64);
                }
            }
        }
    }

    fn finish(self) -> Vec<BufferEntry> {
        self.buffers
            .into_iter()
            .map(|((kind, inode), b)| {
                let (size, size_source) = [
                    (b.size_fdinfo, SizeSource::Fdinfo),
                    (b.size_sysfs, SizeSource::Sysfs),
                    (b.size_debugfs, SizeSource::Debugfs),
                    (b.size_stat, SizeSource::Stat),
                    (
                        (b.mapped_extent > 0).then_some(b.mapped_extent),
                        SizeSource::MappingExtent,
                    ),
                ]
                .into_iter()
                .find_map(|(size, source)| Some((size?, source)))
                .unwrap_or((0, SizeSource::Unknown));
                let exporter = match kind {
                    FileKind::Portable => Some("portable".to_string()),
                    FileKind::DmaBuf => b
                        .exporter_fdinfo
                        .or(b.exporter_sysfs)
                        .or(b.exporter_debugfs),
                };
                let name = b
                    .name_fd
                    .or(b.name_debugfs)
                    .or(b.name_maps)
                    .filter(|n| !n.is_empty());
                let holders = b
                    .holders
                    .into_iter()
                    .map(|(pid, h)| Holder {
                        pid,
                        command: h.command,
                        fds: h.fds.into_iter().collect(),
                        mappings: h.mappings,
                        mapped_bytes: h.mapped_bytes,
                    })
                    .collect();
                BufferEntry {
                    kind,
                    inode,
                    size,
                    size_source,
                    exporter,
                    name,
                    holders,
                    attached_devices: b.attached_devices,
                    fences: b.fences,
                }
            })
            .collect()
    }
}
