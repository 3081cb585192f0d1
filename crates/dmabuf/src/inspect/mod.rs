//! Inspection of the dma-bufs in a system: which buffers exist, how big,
//! who exported them, and which processes hold or map them (the Linux
//! counterpart of Android's `dmabuf_dump`, behind `dmabuf ls`).
//!
//! ```no_run
//! use dmabuf::inspect::{report, Scanner};
//!
//! let snapshot = Scanner::new().scan()?;
//! print!("{}", report::render_snapshot(&snapshot));
//! # Ok::<(), dmabuf::Error>(())
//! ```
//!
//! # Where each fact comes from
//!
//! A buffer is identified by its file kind ([`FileKind`]) and its **inode
//! number**. The kernel numbers every dma-buf from a counter, and the
//! number is the same in fdinfo (`ino:`), in the inode column of `maps`,
//! and as the directory name in sysfs, so the sources below are joined on
//! it.
//!
//! * **`/proc/<pid>/fd/<n>` and `/proc/<pid>/fdinfo/<n>`.** A dma-buf fd's
//!   link reads `/dmabuf:<name>` (`anon_inode:dmabuf` before Linux 5.3);
//!   for such fds, and for fds whose link cannot be read, the fdinfo is
//!   parsed ([`parse_fdinfo`]), and an fdinfo with an `exp_name:` line is a
//!   dma-buf: inode from `ino:`, size from `size:`, exporter from
//!   `exp_name:`, name from `name:`. Other fds (files, sockets, pipes) are
//!   skipped without reading their fdinfo.
//! * **`/proc/<pid>/maps`.** A mapping whose path is `/dmabuf:<name>` is a
//!   mapped dma-buf, its inode in the inode column ([`parse_maps_line`],
//!   [`classify_path`]). A mapping keeps the buffer alive after its fd is
//!   closed, so buffers held only by a mapping are found here.
//! * **`/sys/kernel/dmabuf/buffers/<inode>/{exporter_name,size}`**, when the
//!   kernel has `CONFIG_DMABUF_SYSFS_STATS` (deprecated, often off):
//!   exporter and size of *every* dma-buf, also those no process holds.
//! * **debugfs `/sys/kernel/debug/dma_buf/bufinfo`**, when debugfs is
//!   mounted and readable (root): every dma-buf with its attached devices
//!   and fences ([`parse_bufinfo`]).
//! * **Portable buffers** of this library are memfds named
//!   [`PORTABLE_MEMFD_PREFIX`]`<name>`: their fd links and mappings read
//!   `/memfd:dmabuf-portable:<name> (deleted)`. Inode and size come from
//!   `stat` of `/proc/<pid>/fd/<n>` (or fdinfo `ino:` and the mapping when
//!   `stat` fails); the exporter is reported as `portable`. Portable
//!   buffers and dma-bufs have separate inode spaces, hence the kind in
//!   the key.
//! * **Command names** come from `/proc/<pid>/comm`.
//!
//! When sources disagree the order of trust is: fdinfo, sysfs, debugfs,
//! `stat`. A buffer seen only through mappings, with neither sysfs nor
//! debugfs, has no exact size: `stat` of `/proc/<pid>/map_files/…` is tried
//! (root only), and failing that the end of the furthest mapping is
//! reported as a lower bound ([`SizeSource::MappingExtent`]).
//!
//! # Holders and proportional size
//!
//! A **holder** of a buffer is a process that has it open by at least one
//! fd or mapped by at least one mapping (or both). A buffer held by two
//! processes is listed once, with both holders. Threads share their
//! process's fd table and memory, so holders are processes.
//!
//! Per process ([`ProcessUsage`]), as Android's `dmabuf_dump` reports
//! them:
//!
//! * **`rss`** is the sum of the sizes of the buffers it holds, each buffer
//!   once whether held by one fd, several, a mapping or both;
//! * **`pss`** is each of those sizes divided equally among all of the
//!   buffer's holders, summed (the remainder bytes of a division go one
//!   each to the holders with the lowest pids, so the `pss` of all
//!   processes add up to the size of all held buffers). Sharing counts the
//!   same whether by fd or by mapping;
//! * **`fd_size`** and **`mapped_size`** split `rss` by how the buffers are
//!   held: sizes of the buffers held by at least one fd, and of those
//!   mapped at least once (a buffer held both ways counts in both);
//! * **`mapped_bytes`** is what the mappings cover ([`Holder::mapped_bytes`]
//!   summed): a buffer mapped twice counts twice, a partial mapping its
//!   length.
//!
//! # What cannot be seen
//!
//! * Without root, other users' processes cannot be read (their `fd` and
//!   `maps` answer `EACCES`): they are counted in
//!   [`Snapshot::unreadable`], and buffers only they hold are missing
//!   unless sysfs or debugfs list them (then with no holder).
//! * Buffers held only inside the kernel (by a driver, an attachment, a
//!   fence) have no process holder; they appear only through sysfs or
//!   debugfs, listed with no holders.
//! * debugfs `bufinfo` needs root and a mounted debugfs; attached devices
//!   and fences are known only from it.
//! * A process that exits during the scan is normal: it is counted as
//!   [`UnreadableReason::Exited`], never an error; an fd closed during the
//!   scan is skipped.
//! * A scan is not atomic: buffers can come and go while it runs.
//!
//! # Errors
//!
//! [`Scanner::scan`] fails only when the proc root cannot be listed.
//! Everything else is tolerated: the parsers accept any text and never
//! panic, and unreadable sources are recorded in [`Snapshot::sources`].

pub mod report;
mod scan;
mod snapshot;

pub use crate::procfs::{
    classify_path, parse_bufinfo, parse_fdinfo, parse_maps_line, BufInfoEntry, BufInfoFence,
    FdInfo, FileKind, MapsLine, PathBuffer, DMABUF_PATH_PREFIX, MEMFD_PATH_PREFIX,
    PORTABLE_MEMFD_PREFIX,
};
pub use scan::Scanner;
pub use snapshot::{
    BufferEntry, Changes, Filter, Holder, ProcessChange, ProcessUsage, Resized, SizeSource,
    Snapshot, SortKey, SourceState, Sources, Totals, Unreadable, UnreadableReason,
};
