//! Allocators: one interface, three kinds of memory, and the automatic
//! choice between them.
//!
//! # DOC: choosing memory
//!
//! [`Allocate`] is implemented by [`Heap`] (a DMA heap), [`Udmabuf`]
//! (sealed memfd pages turned into a dma-buf) and [`Portable`] (a sealed
//! memfd, for kernels with neither). [`Allocator::auto`] picks the first
//! that works on this machine, in that order: the `system` heap, then
//! udmabuf, then portable — so a program written against this API runs
//! everywhere, with real dma-bufs wherever the kernel has them.
//! [`Allocator::new`] takes an explicit [`Backend`] and fails clearly if it
//! is not available. Every buffer says which kind it is
//! ([`Buffer::kind`]). Sizes are rounded up to whole pages for every kind,
//! as heaps and udmabuf do.
//!
//! # DOC: memory limits
//!
//! Every allocator refuses, before asking the kernel, a size that cannot
//! fit (one check, [`ensure_fits`], shared by all three): 0 bytes, a size
//! that overflows when rounded up to pages (`size N is too large`), and a
//! size above the memory this process can still get — the smallest of
//! `MemAvailable` in `/proc/meminfo` and, for this process's cgroup v2
//! and each of its ancestors whose files are readable, `memory.max` minus
//! `memory.current`. The error names both numbers and which limit
//! (`2.0 GiB asked, 900.0 MiB available (MemAvailable)`), with `ENOMEM`.
//! Without this a heap allocation or the first write of a memfd beyond
//! memory gets the process OOM-killed with no message. Swap is not
//! counted (`MemAvailable` does not); where neither source is readable
//! only the kernel decides. The check is a snapshot: memory taken by
//! others between it and the allocation can still make the kernel fail
//! (`ENOMEM`, reported as such).
//!
//! # Layout
//!
//! The three kinds of memory are this module's children — [`heap`],
//! [`udmabuf`], [`portable`] — because they depend on it (each implements
//! [`Allocate`], names its [`Backend`] and sizes its buffers with the one
//! memory check) and it depends on them (the automatic choice tries each).
//! As children, that mutual use stays inside one module, and no other
//! module of the crate sits in a cycle with them. Each type has one path
//! here (`dmabuf::alloc::udmabuf::Limits`), and the types a program names
//! every day are also at the crate root (`dmabuf::Heap`,
//! `dmabuf::Udmabuf`, `dmabuf::Memfd`, `dmabuf::Portable`); the modules
//! are not re-exported at the root, so that each module has one name.

use std::fmt;
use std::str::FromStr;

pub mod heap;
pub mod portable;
pub mod udmabuf;

use crate::buffer::Buffer;
use crate::error::{Errno, Error, ErrorKind, Result};
use crate::sys;
use crate::units::human_size;
use heap::{heap_names, Heap};
use portable::Portable;
use udmabuf::Udmabuf;

/// Something that allocates [`Buffer`]s.
pub trait Allocate: fmt::Debug + Send + Sync {
    /// Which backend this is.
    fn backend(&self) -> Backend;
    /// A new buffer of at least `size` bytes (rounded up to pages), named
    /// `name` (at most 31 bytes; may be empty).
    fn allocate(&self, size: u64, name: &str) -> Result<Buffer>;
}

/// A kind of memory to allocate from.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
#[non_exhaustive]
pub enum Backend {
    /// The DMA heap of this name.
    Heap(String),
    /// `/dev/udmabuf`.
    Udmabuf,
    /// Sealed memfds.
    Portable,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Backend::Heap(h) => write!(f, "heap:{h}"),
            Backend::Udmabuf => f.write_str("udmabuf"),
            Backend::Portable => f.write_str("portable"),
        }
    }
}

impl FromStr for Backend {
    type Err = Error;
    /// `heap` (the system heap), `heap:NAME`, `udmabuf` or `portable`.
    fn from_str(s: &str) -> Result<Backend> {
        match s {
            "heap" => Ok(Backend::Heap("system".into())),
            "udmabuf" => Ok(Backend::Udmabuf),
            "portable" => Ok(Backend::Portable),
            _ => match s.strip_prefix("heap:") {
                Some(h) if !h.is_empty() => Ok(Backend::Heap(h.to_string())),
                _ => Err(Error::invalid(
                    "backend",
                    s,
                    "unknown backend (expected heap, heap:NAME, udmabuf or portable)",
                )),
            },
        }
    }
}

/// The buffer an allocator hands out for the dma-buf `d` it made: of
/// `kind`, named `name` (an empty name leaves the dma-buf unnamed).
pub(crate) fn named_buffer(
    d: crate::dma_buf::DmaBuf,
    kind: crate::buffer::BufferKind,
    name: &str,
) -> Result<Buffer> {
    let b = Buffer::from_dma_buf_of_kind(d, kind);
    if !name.is_empty() {
        b.set_name(name)?;
    }
    Ok(b)
}

/// The size to allocate for a request of `size` bytes: refused if 0,
/// rounded up to a whole number of pages, refused if it cannot fit in the
/// memory this process can still get ([`ensure_fits`]).
pub(crate) fn allocation_size(size: u64, object: &str) -> Result<u64> {
    if size == 0 {
        return Err(Error::invalid(
            "allocate",
            object,
            "size 0: a buffer needs at least one byte",
        ));
    }
    let page = sys::mem::page_size() as u64;
    let size = size
        .checked_next_multiple_of(page)
        .ok_or_else(|| Error::invalid("allocate", object, format!("size {size} is too large")))?;
    ensure_fits(size, object)?;
    Ok(size)
}

/// How much memory this process can still get, and which limit says so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryRoom {
    /// Bytes.
    pub bytes: u64,
    /// The limit that gave the number: `MemAvailable`, or
    /// `cgroup /PATH memory.max`.
    pub source: String,
}

/// The memory this process can still get: the smallest of `MemAvailable`
/// and the room left under each readable cgroup v2 `memory.max` on the
/// way from this process's cgroup to the root. `None` when nothing is
/// readable.
pub fn memory_room() -> Option<MemoryRoom> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok();
    let cgroups = cgroup_levels(
        std::fs::read_to_string("/proc/self/cgroup").ok().as_deref(),
        std::path::Path::new("/sys/fs/cgroup"),
    );
    room_from(meminfo.as_deref(), &cgroups)
}

/// One cgroup level: its path (as `/proc/self/cgroup` names it) and the
/// text of its `memory.max` and `memory.current`, when readable.
type CgroupLevel = (String, Option<String>, Option<String>);

/// The cgroup v2 levels of this process, innermost first (the root
/// itself has no `memory.max` and is left out).
fn cgroup_levels(proc_cgroup: Option<&str>, root: &std::path::Path) -> Vec<CgroupLevel> {
    let Some(path) = proc_cgroup.and_then(|t| t.lines().find_map(|l| l.strip_prefix("0::"))) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut p = path.trim().trim_end_matches('/').to_string();
    // A path from the kernel; `..` cannot appear, but never climb out.
    while !p.is_empty() && !p.contains("/..") {
        let dir = root.join(p.trim_start_matches('/'));
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).ok();
        out.push((p.clone(), read("memory.max"), read("memory.current")));
        p = match p.rfind('/') {
            Some(i) => p[..i].to_string(),
            None => String::new(),
        };
    }
    out
}

/// The arithmetic of [`memory_room`], on the texts of the files.
fn room_from(meminfo: Option<&str>, cgroups: &[CgroupLevel]) -> Option<MemoryRoom> {
    let mut best: Option<MemoryRoom> = None;
    let mut offer = |bytes: u64, source: String| {
        if best.as_ref().is_none_or(|b| bytes < b.bytes) {
            best = Some(MemoryRoom { bytes, source });
        }
    };
    if let Some(kib) = meminfo.and_then(|t| {
        t.lines().find_map(|l| {
            let v = l.strip_prefix("MemAvailable:")?.trim();
            v.strip_suffix("kB")?.trim().parse::<u64>().ok()
        })
    }) {
        offer(kib.saturating_mul(1024), "MemAvailable".to_string());
    }
    for (path, max, current) in cgroups {
        let Some(max) = max.as_deref().map(str::trim) else {
            continue;
        };
        if max == "max" {
            continue;
        }
        let (Ok(max), Some(Ok(cur))) = (
            max.parse::<u64>(),
            current.as_deref().map(|c| c.trim().parse::<u64>()),
        ) else {
            continue;
        };
        offer(max.saturating_sub(cur), format!("cgroup {path} memory.max"));
    }
    best
}

/// Refuses `bytes` if more than the memory this process can still get
/// ([`memory_room`]), with a message naming both numbers and the limit
/// and `ENOMEM`. Allocators call it; so can a caller about to allocate
/// many buffers, with their total.
pub fn ensure_fits(bytes: u64, object: &str) -> Result<()> {
    check_room(bytes, memory_room(), object)
}

fn check_room(bytes: u64, room: Option<MemoryRoom>, object: &str) -> Result<()> {
    match room {
        Some(r) if bytes > r.bytes => Err(Error::new(
            ErrorKind::from_errno(Errno::NOMEM),
            "allocate",
            object,
            format!(
                "{} asked, {} available ({})",
                human_size(bytes),
                human_size(r.bytes),
                r.source
            ),
        )
        .with_errno(Errno::NOMEM)),
        _ => Ok(()),
    }
}

/// An allocator of a chosen or automatic backend.
#[derive(Debug)]
pub struct Allocator {
    inner: Box<dyn Allocate>,
    why: String,
}

impl Allocator {
    /// The best backend this machine offers: the `system` heap (or the
    /// first heap), else udmabuf, else portable. Never fails.
    pub fn auto() -> Allocator {
        let chosen = Allocator::first_usable();
        trace_event!(
            DEBUG,
            backend = %chosen.backend(),
            why = %chosen.why,
            "Allocator::auto chose a backend"
        );
        chosen
    }

    /// [`Allocator::auto`]'s choice.
    fn first_usable() -> Allocator {
        let mut tried = Vec::new();
        let names = heap_names();
        let pick = if names.iter().any(|n| n == "system") {
            Some("system".to_string())
        } else {
            names.first().cloned()
        };
        if let Some(name) = pick {
            match Heap::open(&name) {
                Ok(h) => {
                    return Allocator {
                        inner: Box::new(h),
                        why: format!("DMA heap '{name}' is available"),
                    }
                }
                Err(e) => tried.push(e.to_string()),
            }
        } else {
            tried.push("no DMA heaps".to_string());
        }
        match Udmabuf::open() {
            Ok(u) => {
                return Allocator {
                    inner: Box::new(u),
                    why: format!("udmabuf is available ({})", tried.join("; ")),
                }
            }
            Err(e) => tried.push(e.to_string()),
        }
        Allocator {
            inner: Box::new(Portable),
            why: format!("no kernel exporter usable: {}", tried.join("; ")),
        }
    }

    /// An allocator of exactly `backend`, or an error saying why it is not
    /// available here.
    pub fn new(backend: &Backend) -> Result<Allocator> {
        let (inner, why): (Box<dyn Allocate>, _) = match backend {
            Backend::Heap(name) => (Box::new(Heap::open(name)?), "chosen"),
            Backend::Udmabuf => (Box::new(Udmabuf::open()?), "chosen"),
            Backend::Portable => (Box::new(Portable), "chosen"),
        };
        Ok(Allocator {
            inner,
            why: why.to_string(),
        })
    }

    /// Why this backend was picked (for `--verbose` output and reports).
    pub fn reason(&self) -> &str {
        &self.why
    }
}

impl Allocator {
    /// Which backend this allocator uses (the same as
    /// [`Allocate::backend`], without importing the trait).
    pub fn backend(&self) -> Backend {
        self.inner.backend()
    }

    /// A new buffer of at least `size` bytes (rounded up to pages), named
    /// `name` (at most 31 bytes; may be empty). The same as
    /// [`Allocate::allocate`], without importing the trait.
    pub fn allocate(&self, size: u64, name: &str) -> Result<Buffer> {
        self.inner.allocate(size, name)
    }
}

impl Allocate for Allocator {
    fn backend(&self) -> Backend {
        Allocator::backend(self)
    }

    fn allocate(&self, size: u64, name: &str) -> Result<Buffer> {
        Allocator::allocate(self, size, name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backends_parse_and_print() {
        for s in ["heap:system", "udmabuf", "portable", "heap:linux,cma"] {
            assert_eq!(s.parse::<Backend>().unwrap().to_string(), s);
        }
        assert_eq!(
            "heap".parse::<Backend>().unwrap(),
            Backend::Heap("system".into())
        );
        let e = "gpu".parse::<Backend>().unwrap_err();
        assert!(e.to_string().contains("unknown backend"), "{e}");
    }

    const MEMINFO: &str =
        "MemTotal:        1000000 kB\nMemFree:          500000 kB\nMemAvailable:     921600 kB\n";

    fn level(path: &str, max: Option<&str>, cur: Option<&str>) -> CgroupLevel {
        (
            path.to_string(),
            max.map(str::to_string),
            cur.map(str::to_string),
        )
    }

    #[test]
    fn room_is_mem_available_without_a_cgroup_limit() {
        let r = room_from(Some(MEMINFO), &[]).unwrap();
        assert_eq!(r.bytes, 921600 * 1024);
        assert_eq!(r.source, "MemAvailable");
        // "max" is no limit; unreadable files are skipped.
        let levels = [
            level("/a/b", Some("max\n"), Some("4096\n")),
            level("/a", None, Some("1")),
            level("/x", Some("12"), None),
            level("/y", Some("garbage"), Some("1")),
        ];
        assert_eq!(
            room_from(Some(MEMINFO), &levels).unwrap().source,
            "MemAvailable"
        );
        assert_eq!(room_from(None, &[]), None);
        assert_eq!(room_from(Some("MemFree: 1 kB\n"), &[]), None);
    }

    #[test]
    fn the_tightest_cgroup_level_wins() {
        let levels = [
            level("/user.slice/app", Some("max"), Some("100")),
            level("/user.slice", Some("536870912\n"), Some("134217728\n")),
        ];
        let r = room_from(Some(MEMINFO), &levels).unwrap();
        assert_eq!(r.bytes, 384 << 20);
        assert_eq!(r.source, "cgroup /user.slice memory.max");
        // Over the limit already: no room, not an underflow.
        let r = room_from(None, &[level("/c", Some("100"), Some("200"))]).unwrap();
        assert_eq!(r.bytes, 0);
    }

    #[test]
    fn cgroup_levels_walk_up_to_the_root() {
        let dir = std::env::temp_dir().join(format!("dmabuf-cgroup-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("a/b")).unwrap();
        std::fs::write(dir.join("a/memory.max"), "1048576\n").unwrap();
        std::fs::write(dir.join("a/memory.current"), "4096\n").unwrap();
        let levels = cgroup_levels(Some("0::/a/b\n"), &dir);
        assert_eq!(levels.len(), 2);
        assert_eq!(levels[0], level("/a/b", None, None));
        assert_eq!(levels[1], level("/a", Some("1048576\n"), Some("4096\n")));
        let r = room_from(None, &levels).unwrap();
        assert_eq!(r.bytes, 1048576 - 4096);
        // cgroup v1 lines, or none: no levels.
        assert!(cgroup_levels(Some("4:memory:/x\n"), &dir).is_empty());
        assert!(cgroup_levels(None, &dir).is_empty());
        assert!(cgroup_levels(Some("0::/\n"), &dir).is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn too_big_is_refused_with_both_numbers_and_enomem() {
        let room = room_from(Some(MEMINFO), &[]);
        let e = check_room(16 << 30, room.clone(), "heap 'system'").unwrap_err();
        assert_eq!(e.errno(), Some(Errno::NOMEM));
        assert!(
            e.to_string()
                .contains("16.0 GiB asked, 900.0 MiB available (MemAvailable)"),
            "{e}"
        );
        assert!(e.to_string().contains("heap 'system'"), "{e}");
        check_room(900 << 20, room, "x").unwrap();
        // Nothing readable: the kernel decides.
        check_room(u64::MAX, None, "x").unwrap();
    }

    #[test]
    fn sizes_near_the_top_are_refused_not_wrapped() {
        let e = allocation_size(u64::MAX, "heap 'system'").unwrap_err();
        assert!(e.to_string().contains("too large"), "{e}");
        assert_eq!(e.errno(), Some(Errno::INVAL));
        let e = allocation_size(0, "x").unwrap_err();
        assert!(e.to_string().contains("at least one byte"), "{e}");
    }

    #[test]
    fn more_than_this_machine_has_is_refused() {
        // On any machine with readable /proc/meminfo.
        let room = memory_room().expect("/proc/meminfo is readable");
        let e = allocation_size(room.bytes.saturating_add(1 << 30), "portable buffer 'big'")
            .unwrap_err();
        assert_eq!(e.errno(), Some(Errno::NOMEM));
        assert!(e.to_string().contains("available ("), "{e}");
    }
}
