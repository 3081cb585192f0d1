//! What one scan found, and how two scans differ.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::procfs::{BufInfoFence, FileKind};

/// Where a buffer's size came from, best first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SizeSource {
    /// `size:` in a holder's fdinfo.
    Fdinfo,
    /// `/sys/kernel/dmabuf/buffers/<inode>/size`.
    Sysfs,
    /// debugfs `bufinfo`.
    Debugfs,
    /// `stat` of the buffer's file (through `/proc/<pid>/fd/<n>`, or
    /// `/proc/<pid>/map_files/…`, which needs root).
    Stat,
    /// Not known exactly: the end of the furthest mapping seen, a lower
    /// bound.
    MappingExtent,
    /// Nothing told the size; reported as 0.
    Unknown,
}

/// A process that holds a buffer: by one or more fds, by one or more
/// mappings, or both.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Holder {
    /// Process id.
    pub pid: u32,
    /// Command name (`/proc/<pid>/comm`), `?` when unreadable.
    pub command: String,
    /// The fd numbers by which the process holds the buffer, ascending;
    /// empty when it holds the buffer only by a mapping.
    pub fds: Vec<i32>,
    /// Number of mappings of the buffer in the process.
    pub mappings: u32,
    /// Bytes of the buffer mapped into the process (sum over mappings).
    pub mapped_bytes: u64,
}

impl Holder {
    /// Whether the process has the buffer mapped.
    pub fn is_mapped(&self) -> bool {
        self.mappings > 0
    }
}

/// One buffer, with everything known about it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BufferEntry {
    /// Kernel dma-buf or portable memfd buffer.
    pub kind: FileKind,
    /// Inode number: unique among dma-bufs (sysfs uses it as directory
    /// name); for portable buffers the memfd's inode.
    pub inode: u64,
    /// Size in bytes (see [`size_source`](Self::size_source)).
    pub size: u64,
    /// Where [`size`](Self::size) came from.
    pub size_source: SizeSource,
    /// Exporting driver (`udmabuf`, `system`…), `portable` for portable
    /// buffers, `None` when nothing visible told it.
    pub exporter: Option<String>,
    /// The buffer's name, `None` when unnamed.
    pub name: Option<String>,
    /// The processes holding the buffer, by ascending pid. Empty when the
    /// buffer is known only from sysfs or debugfs: held by the kernel or
    /// by processes that could not be read.
    pub holders: Vec<Holder>,
    /// Devices attached to the buffer (debugfs only).
    pub attached_devices: Vec<String>,
    /// Fences on the buffer (debugfs only).
    pub fences: Vec<BufInfoFence>,
}

impl BufferEntry {
    /// The key that identifies the buffer across scans.
    pub fn id(&self) -> (FileKind, u64) {
        (self.kind, self.inode)
    }

    /// The holder with this pid, if any.
    pub fn holder(&self, pid: u32) -> Option<&Holder> {
        self.holders.iter().find(|h| h.pid == pid)
    }
}

/// What one process holds, summed over its buffers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProcessUsage {
    /// Process id.
    pub pid: u32,
    /// Command name.
    pub command: String,
    /// Number of distinct buffers held.
    pub buffers: usize,
    /// Number of fds referring to those buffers.
    pub fds: usize,
    /// Number of those buffers that are mapped.
    pub mapped_buffers: usize,
    /// Sum of the sizes of the buffers held by at least one fd.
    pub fd_size: u64,
    /// Sum of the sizes of the buffers mapped at least once (a buffer held
    /// by fd and mapped counts in both [`fd_size`](Self::fd_size) and here).
    pub mapped_size: u64,
    /// Bytes mapped, summed over all the process's mappings of these
    /// buffers (a buffer mapped twice counts twice, a partial mapping
    /// counts its length): [`Holder::mapped_bytes`] summed.
    pub mapped_bytes: u64,
    /// Resident-set-style size, as Android's `dmabuf_dump` calls it: the
    /// sum of the sizes of the buffers held, by fd or by mapping, each
    /// buffer once.
    pub rss: u64,
    /// Proportional-set-style size: each buffer's size divided equally
    /// among its holders, summed. The remainder bytes of a division go one
    /// each to the holders with the lowest pids, so the `pss` of all
    /// processes add up to the size of all held buffers exactly.
    pub pss: u64,
}

/// Why a process could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UnreadableReason {
    /// Permission denied (another user's process, without root).
    PermissionDenied,
    /// The process exited during the scan: normal, and only counted.
    Exited,
    /// Any other failure.
    Other,
}

/// A process that could not be read, fully or partly.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Unreadable {
    /// Process id.
    pub pid: u32,
    /// Why.
    pub reason: UnreadableReason,
    /// The first failure, in words: operation, file, cause and errno.
    pub message: String,
    /// The errno of the failure.
    pub errno: Option<i32>,
}

/// Whether a source of facts could be read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceState {
    /// Read.
    Read,
    /// Not there (kernel option off, debugfs not mounted).
    Absent,
    /// There but not readable; the message says why (debugfs needs root).
    Unreadable(String),
}

/// Which sources a scan could use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Sources {
    /// The procfs root that was scanned.
    pub proc_root: String,
    /// The sysfs root.
    pub sys_root: String,
    /// `/sys/kernel/dmabuf/buffers` (CONFIG_DMABUF_SYSFS_STATS).
    pub sysfs_stats: SourceState,
    /// `/sys/kernel/debug/dma_buf/bufinfo` (debugfs, root).
    pub debugfs_bufinfo: SourceState,
    /// Whether the scan ran with effective user id 0. Reports hint "run as
    /// root" for what root could read only when this is false.
    pub as_root: bool,
}

/// Sums over the buffers of a snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Totals {
    /// Number of buffers.
    pub buffers: usize,
    /// Sum of their sizes.
    pub size: u64,
    /// Number of processes holding at least one of them.
    pub processes: usize,
    /// Number of buffers with no visible holder.
    pub unheld_buffers: usize,
    /// Sum of the sizes of the buffers with no visible holder (held by
    /// the kernel, or by processes that could not be read).
    pub unheld_size: u64,
    /// Number of processes that could not be read (including those that
    /// exited during the scan).
    pub unreadable: usize,
}

/// Everything one scan found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Snapshot {
    /// The buffers, by descending size (see [`Snapshot::sort`]).
    pub buffers: Vec<BufferEntry>,
    /// The processes holding buffers, by descending [`ProcessUsage::pss`].
    pub processes: Vec<ProcessUsage>,
    /// The processes that could not be read, by pid.
    pub unreadable: Vec<Unreadable>,
    /// Sums.
    pub totals: Totals,
    /// Which sources were readable.
    pub sources: Sources,
}

/// The order of [`Snapshot::buffers`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SortKey {
    /// Largest first (then by inode).
    #[default]
    Size,
    /// Ascending inode (dma-bufs before portable buffers).
    Inode,
    /// By name, unnamed last (then by inode).
    Name,
}

/// Which buffers to keep (see [`Snapshot::filtered`]). Empty lists keep
/// everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Keep buffers held by any of these processes.
    pub pids: Vec<u32>,
    /// Keep buffers whose exporter is one of these (ASCII case ignored;
    /// `portable` selects portable buffers).
    pub exporters: Vec<String>,
}

impl Filter {
    /// Whether the buffer passes the filter.
    pub fn matches(&self, buffer: &BufferEntry) -> bool {
        let pid_ok =
            self.pids.is_empty() || buffer.holders.iter().any(|h| self.pids.contains(&h.pid));
        let exporter_ok = self.exporters.is_empty()
            || buffer.exporter.as_deref().is_some_and(|e| {
                self.exporters
                    .iter()
                    .any(|want| want.eq_ignore_ascii_case(e))
            });
        pid_ok && exporter_ok
    }
}

/// Per-process usage computed from the buffers' holders.
pub(crate) fn usage_of(buffers: &[BufferEntry]) -> Vec<ProcessUsage> {
    let mut by_pid: BTreeMap<u32, ProcessUsage> = BTreeMap::new();
    for buffer in buffers {
        let n = buffer.holders.len() as u64;
        if n == 0 {
            continue;
        }
        let share = buffer.size / n;
        let remainder = buffer.size % n;
        let mut holders: Vec<&Holder> = buffer.holders.iter().collect();
        holders.sort_by_key(|h| h.pid);
        for (i, holder) in holders.into_iter().enumerate() {
            let usage = by_pid.entry(holder.pid).or_insert_with(|| ProcessUsage {
                pid: holder.pid,
                command: holder.command.clone(),
                buffers: 0,
                fds: 0,
                mapped_buffers: 0,
                fd_size: 0,
                mapped_size: 0,
                mapped_bytes: 0,
                rss: 0,
                pss: 0,
            });
            usage.buffers += 1;
            usage.fds += holder.fds.len();
            usage.mapped_buffers += usize::from(holder.is_mapped());
            // Sizes come from files a hostile process may fake (a fake
            // proc tree): sums saturate instead of overflowing.
            if !holder.fds.is_empty() {
                usage.fd_size = usage.fd_size.saturating_add(buffer.size);
            }
            if holder.is_mapped() {
                usage.mapped_size = usage.mapped_size.saturating_add(buffer.size);
            }
            usage.mapped_bytes = usage.mapped_bytes.saturating_add(holder.mapped_bytes);
            usage.rss = usage.rss.saturating_add(buffer.size);
            usage.pss = usage
                .pss
                .saturating_add(share + u64::from((i as u64) < remainder));
        }
    }
    let mut usage: Vec<ProcessUsage> = by_pid.into_values().collect();
    usage.sort_by(|a, b| b.pss.cmp(&a.pss).then(a.pid.cmp(&b.pid)));
    usage
}

fn saturating_sum(sizes: impl Iterator<Item = u64>) -> u64 {
    sizes.fold(0, u64::saturating_add)
}

pub(crate) fn totals_of(
    buffers: &[BufferEntry],
    processes: &[ProcessUsage],
    unreadable: usize,
) -> Totals {
    Totals {
        buffers: buffers.len(),
        size: saturating_sum(buffers.iter().map(|b| b.size)),
        processes: processes.len(),
        unheld_buffers: buffers.iter().filter(|b| b.holders.is_empty()).count(),
        unheld_size: saturating_sum(
            buffers
                .iter()
                .filter(|b| b.holders.is_empty())
                .map(|b| b.size),
        ),
        unreadable,
    }
}

impl Snapshot {
    /// Builds a snapshot from buffers, computing processes and totals.
    pub fn from_buffers(
        mut buffers: Vec<BufferEntry>,
        unreadable: Vec<Unreadable>,
        sources: Sources,
    ) -> Snapshot {
        let processes = usage_of(&buffers);
        let totals = totals_of(&buffers, &processes, unreadable.len());
        sort_buffers(&mut buffers, SortKey::Size);
        Snapshot {
            buffers,
            processes,
            unreadable,
            totals,
            sources,
        }
    }

    /// The buffer of this kind and inode, if any.
    pub fn buffer(&self, kind: FileKind, inode: u64) -> Option<&BufferEntry> {
        self.buffers
            .iter()
            .find(|b| b.kind == kind && b.inode == inode)
    }

    /// The usage of the process with this pid, if it holds any buffer.
    pub fn process(&self, pid: u32) -> Option<&ProcessUsage> {
        self.processes.iter().find(|p| p.pid == pid)
    }

    /// Number of unreadable processes with this reason.
    pub fn unreadable_count(&self, reason: UnreadableReason) -> usize {
        self.unreadable
            .iter()
            .filter(|u| u.reason == reason)
            .count()
    }

    /// Sorts the buffers.
    pub fn sort(&mut self, key: SortKey) {
        sort_buffers(&mut self.buffers, key);
    }

    /// A snapshot with only the buffers that pass `filter`.
    ///
    /// Buffers keep all their holders, and proportional sizes are still
    /// shared among all of them; with a pid filter only those processes
    /// (and those of them that were unreadable) are listed. Totals are
    /// those of the buffers kept.
    pub fn filtered(&self, filter: &Filter) -> Snapshot {
        let buffers: Vec<BufferEntry> = self
            .buffers
            .iter()
            .filter(|b| filter.matches(b))
            .cloned()
            .collect();
        let keep_pid = |pid: u32| filter.pids.is_empty() || filter.pids.contains(&pid);
        let mut processes = usage_of(&buffers);
        processes.retain(|p| keep_pid(p.pid));
        let unreadable: Vec<Unreadable> = self
            .unreadable
            .iter()
            .filter(|u| keep_pid(u.pid))
            .cloned()
            .collect();
        let mut totals = totals_of(&buffers, &processes, unreadable.len());
        totals.processes = processes.len();
        Snapshot {
            buffers,
            processes,
            unreadable,
            totals,
            sources: self.sources.clone(),
        }
    }

    /// What changed from `prev` (an earlier snapshot) to this one.
    pub fn changes_since(&self, prev: &Snapshot) -> Changes {
        let before: BTreeMap<_, _> = prev.buffers.iter().map(|b| (b.id(), b)).collect();
        let after: BTreeMap<_, _> = self.buffers.iter().map(|b| (b.id(), b)).collect();
        let mut appeared: Vec<BufferEntry> = after
            .iter()
            .filter(|(id, _)| !before.contains_key(id))
            .map(|(_, b)| (*b).clone())
            .collect();
        let mut disappeared: Vec<BufferEntry> = before
            .iter()
            .filter(|(id, _)| !after.contains_key(id))
            .map(|(_, b)| (*b).clone())
            .collect();
        sort_buffers(&mut appeared, SortKey::Size);
        sort_buffers(&mut disappeared, SortKey::Size);
        let resized = after
            .iter()
            .filter_map(|(id, b)| {
                let old = before.get(id)?;
                (old.size != b.size).then(|| Resized {
                    kind: b.kind,
                    inode: b.inode,
                    name: b.name.clone(),
                    exporter: b.exporter.clone(),
                    size_before: old.size,
                    size_after: b.size,
                })
            })
            .collect();

        let procs_before: BTreeMap<u32, &ProcessUsage> =
            prev.processes.iter().map(|p| (p.pid, p)).collect();
        let procs_after: BTreeMap<u32, &ProcessUsage> =
            self.processes.iter().map(|p| (p.pid, p)).collect();
        let mut pids: Vec<u32> = procs_before
            .keys()
            .chain(procs_after.keys())
            .copied()
            .collect();
        pids.sort_unstable();
        pids.dedup();
        let mut processes: Vec<ProcessChange> = pids
            .into_iter()
            .filter_map(|pid| {
                let b = procs_before.get(&pid);
                let a = procs_after.get(&pid);
                let change = ProcessChange {
                    pid,
                    command: a.or(b).map(|p| p.command.clone()).unwrap_or_default(),
                    buffers_before: b.map_or(0, |p| p.buffers),
                    buffers_after: a.map_or(0, |p| p.buffers),
                    rss_before: b.map_or(0, |p| p.rss),
                    rss_after: a.map_or(0, |p| p.rss),
                    pss_before: b.map_or(0, |p| p.pss),
                    pss_after: a.map_or(0, |p| p.pss),
                };
                let same = change.buffers_before == change.buffers_after
                    && change.rss_before == change.rss_after
                    && change.pss_before == change.pss_after;
                (!same).then_some(change)
            })
            .collect();
        processes.sort_by(|x, y| y.growth().cmp(&x.growth()).then(x.pid.cmp(&y.pid)));
        Changes {
            appeared,
            disappeared,
            resized,
            processes,
            buffers_before: prev.totals.buffers,
            buffers_after: self.totals.buffers,
            size_before: prev.totals.size,
            size_after: self.totals.size,
        }
    }
}

fn sort_buffers(buffers: &mut [BufferEntry], key: SortKey) {
    match key {
        SortKey::Size => buffers.sort_by(|a, b| b.size.cmp(&a.size).then(a.id().cmp(&b.id()))),
        SortKey::Inode => buffers.sort_by_key(|b| b.id()),
        SortKey::Name => buffers.sort_by(|a, b| {
            let name = |x: &BufferEntry| (x.name.is_none(), x.name.clone());
            name(a).cmp(&name(b)).then(a.id().cmp(&b.id()))
        }),
    }
}

/// A buffer whose size changed between two scans (a portable buffer that
/// was resized; a dma-buf's size is fixed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Resized {
    /// Kind of the buffer.
    pub kind: FileKind,
    /// Inode of the buffer.
    pub inode: u64,
    /// Name of the buffer.
    pub name: Option<String>,
    /// Exporter of the buffer.
    pub exporter: Option<String>,
    /// Size at the earlier scan.
    pub size_before: u64,
    /// Size now.
    pub size_after: u64,
}

/// How one process's holdings changed between two scans.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProcessChange {
    /// Process id.
    pub pid: u32,
    /// Command name.
    pub command: String,
    /// Buffers held at the earlier scan (0 if it held none).
    pub buffers_before: usize,
    /// Buffers held now (0 if it holds none or exited).
    pub buffers_after: usize,
    /// [`ProcessUsage::rss`] at the earlier scan.
    pub rss_before: u64,
    /// [`ProcessUsage::rss`] now.
    pub rss_after: u64,
    /// [`ProcessUsage::pss`] at the earlier scan.
    pub pss_before: u64,
    /// [`ProcessUsage::pss`] now.
    pub pss_after: u64,
}

impl ProcessChange {
    /// Growth of the proportional size in bytes (negative: shrank).
    pub fn growth(&self) -> i128 {
        i128::from(self.pss_after) - i128::from(self.pss_before)
    }
}

/// What changed between two snapshots ([`Snapshot::changes_since`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Changes {
    /// Buffers that are new, largest first.
    pub appeared: Vec<BufferEntry>,
    /// Buffers that are gone, largest first (as last seen).
    pub disappeared: Vec<BufferEntry>,
    /// Buffers whose size changed.
    pub resized: Vec<Resized>,
    /// Processes whose holdings changed, most grown first.
    pub processes: Vec<ProcessChange>,
    /// Number of buffers at the earlier scan.
    pub buffers_before: usize,
    /// Number of buffers now.
    pub buffers_after: usize,
    /// Total size at the earlier scan.
    pub size_before: u64,
    /// Total size now.
    pub size_after: u64,
}

impl Changes {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.appeared.is_empty()
            && self.disappeared.is_empty()
            && self.resized.is_empty()
            && self.processes.is_empty()
    }
}
