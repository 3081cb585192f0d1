//! udmabuf: dma-bufs made of memfd pages (`/dev/udmabuf`).
//!
//! # DOC: udmabuf
//!
//! `UDMABUF_CREATE` turns a page-aligned range of a memfd into a dma-buf;
//! `UDMABUF_CREATE_LIST` concatenates several ranges (of one or several
//! memfds). The pages are allocated if needed and pinned for the life of
//! the dma-buf; the memfd itself may be closed afterwards. Writes through
//! the memfd and through a mapping of the dma-buf are the same memory.
//!
//! The kernel (6.12) refuses, and this module checks first so that the
//! error names the bad range and the reason:
//!
//! * an offset or size that is not a multiple of the page size (EINVAL);
//! * a size of 0, or no ranges at all (EINVAL);
//! * a total over `size_limit_mb` MiB, or more ranges than `list_limit`
//!   (both read from `/sys/module/udmabuf/parameters/` when present;
//!   defaults 64 MiB and 1024) (EINVAL);
//! * an fd that is not a memfd (shmem or hugetlbfs) (EBADFD);
//! * a memfd without `F_SEAL_SHRINK` — the pages could vanish under the
//!   device — or with `F_SEAL_WRITE`/`F_SEAL_FUTURE_WRITE` (EINVAL; the
//!   latter refused from 6.12.7);
//! * a range that goes past the end of the memfd (EINVAL).
//!
//! The kernel's own answer is still mapped to the same error kinds, for
//! whatever the checks cannot see (a seal added concurrently, ENOMEM…).
//!
//! # DOC: the same pages under two names
//!
//! The kernel accepts a range list that repeats pages of a memfd (two
//! ranges over the same memfd pages, or overlapping ones): the dma-buf then
//! shows the same memory at two offsets, and two windows over different
//! offsets would alias. The library refuses such a list before asking the
//! kernel, naming the two ranges and the pages they share (EINVAL, "ranges
//! 1 and 3 both cover memfd pages 0..4096"); memfds are compared by inode,
//! so two fds of one memfd are the same memfd.
//!
//! Different dma-bufs may still share pages: two udmabufs over the same
//! memfd range, or a udmabuf and its memfd used as a portable buffer. For
//! udmabufs made by *this process* through [`Udmabuf::create`] and
//! [`Udmabuf::create_list`], the library records which memfd pages each
//! one is made of, and a CPU window on the udmabuf is registered on those
//! memfd pages too: an overlapping window on another udmabuf of the same
//! pages, or on the memfd itself as a portable [`Buffer`], is refused
//! ([`ErrorKind::Busy`], naming the memfd bytes in the way), and so is one
//! on the same udmabuf through any other handle (see `buffer`). The record
//! is kept by the dma-buf's inode (never reused while the system runs), so
//! it also holds for a handle made later from an fd that was given up
//! ([`DmaBuf::into_fd`], then [`Buffer::from_fd`]), for the 4096 most
//! recent udmabufs this process made (older records are dropped once no
//! handle on them is left).
//!
//! A buffer from [`Allocate::allocate`] is made of a memfd of its own,
//! which the library creates and closes before `allocate` returns (the
//! kernel keeps the pages pinned, not the memfd): no other name for those
//! pages is left in this process, so there is nothing to record, and a
//! window on such a buffer costs what a window on any dma-buf costs (no
//! second registry to update per window).
//!
//! What the library cannot see, and so cannot guard: udmabufs made by
//! other processes or received from them (their memfd pages are unknown
//! here), udmabufs made with the raw ioctl, memory mapped outside the
//! library, and other processes' windows. Between processes the order is
//! kept by fences and the window protocol, not by this registry; the bytes
//! themselves are only reached through volatile accesses (see `mapping`).

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;

use rustix::fs::{
    fcntl_add_seals, fcntl_get_seals, fstat, ftruncate, memfd_create, MemfdFlags, Mode, OFlags,
    SealFlags,
};

use super::{allocation_size, named_buffer, Allocate, Backend};
use crate::buffer::{Buffer, BufferKind};
use crate::dma_buf::DmaBuf;
use crate::error::{Errno, Error, ErrorKind, Result};
use crate::sys;
use crate::sys::object::{MemoryObject, Segment};
use crate::sys::udmabuf::{UdmabufCreate, UdmabufCreateItem};

/// Filesystem magic of shmem (tmpfs, memfd) files.
const TMPFS_MAGIC: i64 = 0x0102_1994;
/// Filesystem magic of hugetlbfs files (`MFD_HUGETLB` memfds).
const HUGETLBFS_MAGIC: i64 = 0x9584_58f6;

/// A memfd prepared for udmabuf: created with `MFD_ALLOW_SEALING`, sized,
/// and sealed with `F_SEAL_SHRINK` (never against writing).
#[derive(Debug)]
pub struct Memfd {
    fd: OwnedFd,
    size: u64,
}

impl Memfd {
    /// A new memfd named `name` of `size` bytes, sealed against shrinking.
    pub fn new(name: &str, size: u64) -> Result<Memfd> {
        let obj = format!("memfd '{name}'");
        let fd = memfd_create(name, MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)
            .map_err(|e| Error::os("memfd_create", obj.clone(), e))?;
        ftruncate(&fd, size).map_err(|e| Error::os("memfd resize", obj.clone(), e))?;
        fcntl_add_seals(&fd, SealFlags::SHRINK).map_err(|e| Error::os("memfd seal", obj, e))?;
        Ok(Memfd { fd, size })
    }

    /// Its size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Gives up the fd.
    pub fn into_fd(self) -> OwnedFd {
        self.fd
    }
}

impl AsFd for Memfd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// One range of a memfd, for [`Udmabuf::create_list`].
#[derive(Debug, Clone, Copy)]
pub struct Range<'a> {
    /// The memfd.
    pub memfd: BorrowedFd<'a>,
    /// Offset in it, page-aligned.
    pub offset: u64,
    /// Size, page-aligned, not 0.
    pub size: u64,
}

impl<'a> Range<'a> {
    /// `size` bytes of `memfd` from `offset`.
    pub fn new(memfd: &'a impl AsFd, offset: u64, size: u64) -> Range<'a> {
        Range {
            memfd: memfd.as_fd(),
            offset,
            size,
        }
    }
}

/// The kernel's udmabuf limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Limits {
    /// Most ranges in one `UDMABUF_CREATE_LIST`.
    pub list_limit: u32,
    /// Largest dma-buf, in MiB.
    pub size_limit_mb: u64,
    /// Whether they were read from sysfs (else the kernel's defaults).
    pub from_sysfs: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            list_limit: sys::udmabuf::UDMABUF_DEFAULT_LIST_LIMIT,
            size_limit_mb: sys::udmabuf::UDMABUF_DEFAULT_SIZE_LIMIT_MB,
            from_sysfs: false,
        }
    }
}

impl Limits {
    /// Reads `/sys/module/udmabuf/parameters/{list_limit,size_limit_mb}`,
    /// falling back to the defaults for what is missing.
    pub fn read() -> Limits {
        Limits::read_from(Path::new(sys::udmabuf::UDMABUF_PARAMETERS))
    }

    fn read_from(dir: &Path) -> Limits {
        let read = |f: &str| -> Option<u64> {
            std::fs::read_to_string(dir.join(f))
                .ok()
                .and_then(|s| s.trim().parse().ok())
        };
        let mut l = Limits::default();
        if let Some(v) = read("list_limit") {
            l.list_limit = v.min(u64::from(u32::MAX)) as u32;
            l.from_sysfs = true;
        }
        if let Some(v) = read("size_limit_mb") {
            l.size_limit_mb = v;
            l.from_sysfs = true;
        }
        l
    }

    /// The size limit in bytes.
    pub fn size_limit(&self) -> u64 {
        self.size_limit_mb.saturating_mul(1 << 20)
    }
}

/// `/dev/udmabuf`, opened.
#[derive(Debug)]
pub struct Udmabuf {
    dev: OwnedFd,
    limits: Limits,
    cloexec: bool,
}

impl Udmabuf {
    /// Opens `/dev/udmabuf` and reads the limits.
    pub fn open() -> Result<Udmabuf> {
        let path = sys::udmabuf::UDMABUF_DEVICE;
        let dev =
            rustix::fs::open(path, OFlags::RDWR | OFlags::CLOEXEC, Mode::empty()).map_err(|e| {
                match e {
                    Errno::NOENT => Error::kernel(
                        "open udmabuf",
                        path,
                        e,
                        "this kernel has no udmabuf device (CONFIG_UDMABUF)",
                    )
                    .with_kind(ErrorKind::NotSupported),
                    Errno::ACCESS | Errno::PERM => Error::kernel(
                        "open udmabuf",
                        path,
                        e,
                        "permission denied (the node is root-only unless udev grants access)",
                    ),
                    e => Error::os("open udmabuf", path, e),
                }
            })?;
        Ok(Udmabuf {
            dev,
            limits: Limits::read(),
            cloexec: true,
        })
    }

    /// The limits in force.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Whether new dma-buf fds get close-on-exec (default true).
    pub fn set_cloexec(&mut self, cloexec: bool) {
        self.cloexec = cloexec;
    }

    fn flags(&self) -> u32 {
        if self.cloexec {
            sys::udmabuf::UDMABUF_FLAGS_CLOEXEC
        } else {
            0
        }
    }

    /// A dma-buf of `size` bytes of `memfd` from `offset`
    /// (`UDMABUF_CREATE`).
    pub fn create(&self, memfd: impl AsFd, offset: u64, size: u64) -> Result<DmaBuf> {
        let range = [Range::new(&memfd, offset, size)];
        record_backing(self.create_unrecorded(&range[0])?, &range)
    }

    /// `UDMABUF_CREATE` of `range`, with no record of its memfd pages: for
    /// a memfd that nothing else will ever map (the one `allocate` makes
    /// for a buffer alone, see the module documentation).
    fn create_unrecorded(&self, range: &Range<'_>) -> Result<DmaBuf> {
        let ranges = std::slice::from_ref(range);
        validate(ranges, &self.limits)?;
        let arg = UdmabufCreate {
            memfd: range.memfd.as_raw_fd() as u32,
            flags: self.flags(),
            offset: range.offset,
            size: range.size,
        };
        let fd = sys::udmabuf::create(&self.dev, &arg).map_err(|e| kernel_error(e, ranges))?;
        DmaBuf::from_fd(fd)
    }

    /// A dma-buf of several ranges in order (`UDMABUF_CREATE_LIST`).
    pub fn create_list(&self, ranges: &[Range<'_>]) -> Result<DmaBuf> {
        validate(ranges, &self.limits)?;
        let items: Vec<UdmabufCreateItem> = ranges
            .iter()
            .map(|r| UdmabufCreateItem {
                memfd: r.memfd.as_raw_fd() as u32,
                pad: 0,
                offset: r.offset,
                size: r.size,
            })
            .collect();
        let fd = sys::udmabuf::create_list(&self.dev, self.flags(), &items)
            .map_err(|e| kernel_error(e, ranges))?;
        record_backing(DmaBuf::from_fd(fd)?, ranges)
    }
}

/// Records on the new udmabuf's memory object which memfd pages it is made
/// of, so that windows on it are registered on those pages too.
fn record_backing(d: DmaBuf, ranges: &[Range<'_>]) -> Result<DmaBuf> {
    let mut segments = Vec::with_capacity(ranges.len());
    let mut offset = 0;
    for (i, r) in ranges.iter().enumerate() {
        let target = MemoryObject::intern(r.memfd)
            .map_err(|e| Error::os("udmabuf", range_object(ranges, i), e))?;
        // The whole memfd (sealed against shrinking, as udmabuf requires):
        // a window on all of the udmabuf may then claim all of the memfd.
        let memfd_size = fstat(r.memfd)
            .map_err(|e| Error::os("udmabuf", range_object(ranges, i), e))?
            .st_size;
        segments.push(Segment {
            offset,
            len: r.size,
            target,
            target_offset: r.offset,
            whole_target: r.offset == 0 && u64::try_from(memfd_size) == Ok(r.size),
        });
        offset += r.size;
    }
    d.memory_object().set_backing(segments).map_err(|e| {
        Error::kernel(
            "udmabuf",
            format!("dma-buf inode {}", d.inode()),
            e,
            "the dma-buf already has a different record of its memfd pages",
        )
    })?;
    Ok(d)
}

/// The first two ranges (by index, 0-based) of the same memfd that share
/// pages, and the shared bytes of the memfd. `ranges` are
/// `(memfd identity, offset, size)`.
pub(crate) fn repeated_pages<K: PartialEq>(
    ranges: &[(K, u64, u64)],
) -> Option<(usize, usize, std::ops::Range<u64>)> {
    for (j, (kj, oj, sj)) in ranges.iter().enumerate() {
        for (i, (ki, oi, si)) in ranges[..j].iter().enumerate() {
            if ki != kj {
                continue;
            }
            let lo = (*oi).max(*oj);
            let hi = oi.saturating_add(*si).min(oj.saturating_add(*sj));
            if lo < hi {
                return Some((i, j, lo..hi));
            }
        }
    }
    None
}

fn range_object(ranges: &[Range<'_>], i: usize) -> String {
    let fd = ranges[i].memfd.as_raw_fd();
    if ranges.len() == 1 {
        format!("memfd {fd}")
    } else {
        format!("memfd {fd} (range {} of {})", i + 1, ranges.len())
    }
}

fn all_object(ranges: &[Range<'_>]) -> String {
    match ranges.len() {
        0 => "no ranges".to_string(),
        1 => range_object(ranges, 0),
        n => format!("{n} ranges"),
    }
}

/// The kernel refused what the checks let through: name the cause as
/// precisely as the errno allows.
fn kernel_error(e: Errno, ranges: &[Range<'_>]) -> Error {
    let obj = all_object(ranges);
    match e {
        Errno::BADFD => Error::kernel(
            "udmabuf",
            obj,
            e,
            "an fd is not a memfd (shmem or hugetlbfs file), or is closed",
        ),
        Errno::INVAL => Error::kernel(
            "udmabuf",
            obj,
            e,
            "the kernel refused the ranges (alignment, seals, size or list limit, or a range past the end of its memfd)",
        ),
        Errno::NOMEM => Error::kernel("udmabuf", obj, e, "out of memory pinning the pages"),
        e => Error::os("udmabuf", obj, e),
    }
}

/// Checks `ranges` against what the kernel would refuse, naming the first
/// bad range and why. Called by [`Udmabuf::create`] and
/// [`Udmabuf::create_list`]; public so callers can check ahead.
pub fn validate(ranges: &[Range<'_>], limits: &Limits) -> Result<()> {
    let page = sys::mem::page_size() as u64;
    let op = "udmabuf";
    if ranges.is_empty() {
        return Err(Error::invalid(
            op,
            "no ranges",
            "a udmabuf needs at least one range",
        ));
    }
    if ranges.len() > limits.list_limit as usize {
        return Err(Error::invalid(
            op,
            all_object(ranges),
            format!(
                "{} ranges is over the udmabuf list limit of {} (list_limit)",
                ranges.len(),
                limits.list_limit
            ),
        ));
    }
    let mut total: u64 = 0;
    for (i, r) in ranges.iter().enumerate() {
        let obj = || range_object(ranges, i);
        if r.offset % page != 0 {
            return Err(Error::invalid(
                op,
                obj(),
                format!(
                    "offset {} is not a multiple of the page size {page}",
                    r.offset
                ),
            ));
        }
        if r.size == 0 {
            return Err(Error::invalid(
                op,
                obj(),
                "size 0: a range needs at least one page",
            ));
        }
        if r.size % page != 0 {
            return Err(Error::invalid(
                op,
                obj(),
                format!("size {} is not a multiple of the page size {page}", r.size),
            ));
        }
        total = total.saturating_add(r.size);
        if total > limits.size_limit() {
            return Err(Error::invalid(
                op,
                obj(),
                format!(
                    "total size {total} bytes is over the udmabuf size limit of {} MiB (size_limit_mb)",
                    limits.size_limit_mb
                ),
            ));
        }
    }
    let mut keys = Vec::with_capacity(ranges.len());
    for (i, r) in ranges.iter().enumerate() {
        let obj = || range_object(ranges, i);
        let fs = rustix::fs::fstatfs(r.memfd).map_err(|e| {
            Error::kernel(op, obj(), e, "cannot inspect the fd").with_errno(Errno::BADFD)
        })?;
        let magic = fs.f_type as i64;
        if magic != TMPFS_MAGIC && magic != HUGETLBFS_MAGIC {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                op,
                obj(),
                "not a memfd (udmabuf takes shmem or hugetlbfs memfds only)",
            )
            .with_errno(Errno::BADFD));
        }
        let seals = fcntl_get_seals(r.memfd).map_err(|_| {
            Error::new(
                ErrorKind::InvalidInput,
                op,
                obj(),
                "not a memfd (its seals cannot be read)",
            )
            .with_errno(Errno::BADFD)
        })?;
        if !seals.contains(SealFlags::SHRINK) {
            return Err(Error::invalid(
                op,
                obj(),
                "memfd lacks F_SEAL_SHRINK (create it with MFD_ALLOW_SEALING and add the seal, so its pages cannot vanish under a device)",
            ));
        }
        for (seal, name) in [
            (SealFlags::WRITE, "F_SEAL_WRITE"),
            (SealFlags::FUTURE_WRITE, "F_SEAL_FUTURE_WRITE"),
        ] {
            if seals.contains(seal) {
                return Err(Error::invalid(
                    op,
                    obj(),
                    format!("memfd is sealed with {name}; udmabuf refuses write-sealed memfds"),
                ));
            }
        }
        let st = rustix::fs::fstat(r.memfd).map_err(|e| Error::os(op, obj(), e))?;
        keys.push(((st.st_dev, st.st_ino), r.offset, r.size));
        let len = st.st_size as u64;
        if r.offset.checked_add(r.size).is_none_or(|end| end > len) {
            return Err(Error::invalid(
                op,
                obj(),
                format!(
                    "range {}..{} goes past the end of the memfd ({len} bytes)",
                    r.offset,
                    r.offset.saturating_add(r.size)
                ),
            ));
        }
    }
    if let Some((i, j, pages)) = repeated_pages(&keys) {
        return Err(Error::invalid(
            op,
            all_object(ranges),
            format!(
                "ranges {} and {} both cover memfd pages {}..{} (fd {} and fd {} are the same memfd): the dma-buf would show the same memory at two offsets, and windows over them would alias",
                i + 1,
                j + 1,
                pages.start,
                pages.end,
                ranges[i].memfd.as_raw_fd(),
                ranges[j].memfd.as_raw_fd(),
            ),
        ));
    }
    Ok(())
}

impl Allocate for Udmabuf {
    fn backend(&self) -> Backend {
        Backend::Udmabuf
    }

    fn allocate(&self, size: u64, name: &str) -> Result<Buffer> {
        let obj = format!("udmabuf '{name}'");
        let size = allocation_size(size, &obj)?;
        // The memfd is this buffer's alone and is closed before returning:
        // its pages have no other name left, so there is nothing for a
        // window to conflict with but windows on the buffer itself, and no
        // record is made (see the module documentation).
        let memfd = Memfd::new(&format!("dmabuf-udmabuf:{name}"), size)?;
        let d = self.create_unrecorded(&Range::new(&memfd, 0, size))?;
        drop(memfd);
        named_buffer(d, BufferKind::Udmabuf, name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_pages_of_one_memfd_are_found() {
        const P: u64 = 4096;
        // Different memfds never clash; disjoint ranges of one neither.
        assert_eq!(repeated_pages(&[(1, 0, P), (2, 0, P)]), None);
        assert_eq!(
            repeated_pages(&[(1, 0, P), (1, P, P), (1, 2 * P, 2 * P)]),
            None
        );
        // The same page twice.
        assert_eq!(repeated_pages(&[(1, 0, P), (1, 0, P)]), Some((0, 1, 0..P)));
        // Ranges 1 and 3 overlap on one page, range 2 is another memfd.
        assert_eq!(
            repeated_pages(&[(1, 0, 2 * P), (2, 0, P), (1, P, 2 * P)]),
            Some((0, 2, P..2 * P))
        );
        // Contained ranges, and sizes near the top of u64 do not overflow.
        assert_eq!(
            repeated_pages(&[(1, 0, 8 * P), (1, 3 * P, P)]),
            Some((0, 1, 3 * P..4 * P))
        );
        assert_eq!(repeated_pages(&[(1, u64::MAX - P, P), (1, 0, P)]), None);
    }

    #[test]
    fn validate_refuses_a_list_repeating_memfd_pages_and_names_them() {
        let m = Memfd::new("repeat", 4 * 4096).unwrap();
        let other = Memfd::new("other", 4096).unwrap();
        let dup = m.as_fd().try_clone_to_owned().unwrap();
        let ranges = [
            Range::new(&m, 0, 4096),
            Range::new(&other, 0, 4096),
            Range::new(&dup, 0, 2 * 4096),
        ];
        let e = validate(&ranges, &Limits::default()).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
        assert_eq!(e.errno(), Some(Errno::INVAL));
        assert!(
            e.cause()
                .contains("ranges 1 and 3 both cover memfd pages 0..4096"),
            "{e}"
        );
        assert!(validate(&ranges[..2], &Limits::default()).is_ok());
        let ok = [Range::new(&m, 0, 4096), Range::new(&dup, 4096, 4096)];
        assert!(validate(&ok, &Limits::default()).is_ok());
    }

    #[test]
    fn limits_fall_back_to_defaults_and_read_sysfs() {
        let l = Limits::read_from(Path::new("/nonexistent"));
        assert_eq!(l, Limits::default());
        assert_eq!(l.size_limit(), 64 << 20);
        let dir = std::env::temp_dir().join(format!("udmabuf-params-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("list_limit"), "7\n").unwrap();
        std::fs::write(dir.join("size_limit_mb"), "3\n").unwrap();
        let l = Limits::read_from(&dir);
        assert_eq!((l.list_limit, l.size_limit_mb, l.from_sysfs), (7, 3, true));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
