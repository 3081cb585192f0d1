//! Pure parsers for the kernel's text interfaces about dma-bufs
//! (`/proc/<pid>/fdinfo/<fd>`, `/proc/<pid>/maps`, debugfs `bufinfo`) and
//! the path names of buffers.
//!
//! A leaf: it uses nothing else of this crate, so that both
//! [`buffer`](crate::buffer) (a buffer's own fdinfo) and
//! [`inspect`](crate::inspect) (every process's) can use it without
//! depending on each other. Its public items are re-exported by
//! [`inspect`](crate::inspect).
//!
//! Every parser here is total: it accepts any text, never panics, and
//! leaves a field `None` (or skips a line) when the text does not carry it
//! in the expected form. The kernel's formats are described in the
//! [`inspect` documentation](crate::inspect); callers that read bytes from
//! files turn them into text with [`String::from_utf8_lossy`] first.

use serde::Serialize;

/// Prefix of the memfd name of portable buffers (visible in
/// `/proc/PID/fd` and `/proc/PID/maps`, which is how inspection finds them).
pub const PORTABLE_MEMFD_PREFIX: &str = "dmabuf-portable:";

/// The path prefix the kernel gives a dma-buf's file: `/dmabuf:` followed
/// by the buffer's name (empty when unnamed). Seen as the target of
/// `/proc/<pid>/fd/<n>` and as the path of a mapping in `/proc/<pid>/maps`.
pub const DMABUF_PATH_PREFIX: &str = "/dmabuf:";

/// The path prefix of every memfd's file: `/memfd:` followed by the name
/// given to `memfd_create`, and ` (deleted)` at the end.
pub const MEMFD_PATH_PREFIX: &str = "/memfd:";

/// What `/proc/<pid>/fdinfo/<fd>` says about one open file.
///
/// For a dma-buf the kernel writes `pos`, `flags` (octal), `mnt_id`, `ino`
/// and then `size`, `count`, `exp_name` and, only when a name is set,
/// `name`. Other files carry the first four (and their own extra lines,
/// which are ignored).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct FdInfo {
    /// File position (`pos:`).
    pub pos: Option<i64>,
    /// Open flags (`flags:`, written in octal by the kernel).
    pub flags: Option<u32>,
    /// Mount id of the file's mount (`mnt_id:`).
    pub mnt_id: Option<u64>,
    /// Inode number (`ino:`); for a dma-buf the buffer's unique number, the
    /// same as its directory name in sysfs and its inode in `maps`.
    pub ino: Option<u64>,
    /// Buffer size in bytes (`size:`, dma-bufs only).
    pub size: Option<u64>,
    /// References to the buffer's file other than this fd (`count:`,
    /// dma-bufs only; the kernel prints `file_count - 1`).
    pub count: Option<i64>,
    /// Name of the exporting driver (`exp_name:`); its presence is what
    /// makes the file a dma-buf.
    pub exp_name: Option<String>,
    /// The buffer's name, set with `DMA_BUF_SET_NAME` (`name:`).
    pub name: Option<String>,
}

impl FdInfo {
    /// Whether this fdinfo describes a dma-buf (it has an `exp_name:` line).
    pub fn is_dmabuf(&self) -> bool {
        self.exp_name.is_some()
    }
}

/// Splits a `key:\tvalue` line; the value loses the one tab (or the
/// leading blanks) the kernel puts after the colon.
fn key_value(line: &str) -> Option<(&str, &str)> {
    let (key, value) = line.split_once(':')?;
    let value = match value.strip_prefix('\t') {
        Some(v) => v,
        None => value.trim_start_matches([' ', '\t']),
    };
    Some((key.trim(), value.trim_end_matches(['\n', '\r'])))
}

/// Parses the text of `/proc/<pid>/fdinfo/<fd>`.
///
/// Unknown lines are ignored, a field that is missing or not a number is
/// `None`, and when a key repeats the first line wins.
pub fn parse_fdinfo(text: &str) -> FdInfo {
    let mut info = FdInfo::default();
    for line in text.lines() {
        let Some((key, value)) = key_value(line) else {
            continue;
        };
        let number = value.trim();
        match key {
            "pos" if info.pos.is_none() => info.pos = number.parse().ok(),
            "flags" if info.flags.is_none() => {
                info.flags = u32::from_str_radix(number, 8).ok();
            }
            "mnt_id" if info.mnt_id.is_none() => info.mnt_id = number.parse().ok(),
            "ino" if info.ino.is_none() => info.ino = number.parse().ok(),
            "size" if info.size.is_none() => info.size = number.parse().ok(),
            "count" if info.count.is_none() => info.count = number.parse().ok(),
            "exp_name" if info.exp_name.is_none() => info.exp_name = Some(value.to_string()),
            "name" if info.name.is_none() => info.name = Some(value.to_string()),
            _ => {}
        }
    }
    info
}

/// One line of `/proc/<pid>/maps`.
///
/// Format: `start-end perms offset major:minor inode   path`, numbers in
/// hex except the inode. For a mapped dma-buf the path is `/dmabuf:<name>`
/// and the inode is the buffer's inode number.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MapsLine {
    /// First address of the mapping.
    pub start: u64,
    /// One past the last address of the mapping.
    pub end: u64,
    /// Permissions, such as `rw-s` (`s`: shared, `p`: private).
    pub perms: String,
    /// Offset of the mapping in the file, in bytes.
    pub offset: u64,
    /// Major number of the file's device.
    pub dev_major: u32,
    /// Minor number of the file's device.
    pub dev_minor: u32,
    /// Inode number of the file (0 for anonymous memory).
    pub inode: u64,
    /// Path or name of what is mapped; empty for anonymous memory.
    pub path: String,
}

impl MapsLine {
    /// Length of the mapping in bytes.
    pub fn len(&self) -> u64 {
        self.end.saturating_sub(self.start)
    }

    /// Whether the mapping is empty (never, for a line the kernel wrote).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the mapping is shared (`s` in the permissions).
    pub fn is_shared(&self) -> bool {
        self.perms.contains('s')
    }
}

/// Splits off the next run of non-blank characters.
fn next_field(s: &str) -> Option<(&str, &str)> {
    let s = s.trim_start_matches([' ', '\t']);
    if s.is_empty() {
        return None;
    }
    let end = s.find([' ', '\t']).unwrap_or(s.len());
    Some((&s[..end], &s[end..]))
}

/// Parses one line of `/proc/<pid>/maps`; `None` when the line does not
/// have the five leading fields in their expected form (or `end < start`).
pub fn parse_maps_line(line: &str) -> Option<MapsLine> {
    let line = line.trim_end_matches(['\n', '\r']);
    let (range, rest) = next_field(line)?;
    let (perms, rest) = next_field(rest)?;
    let (offset, rest) = next_field(rest)?;
    let (dev, rest) = next_field(rest)?;
    let (inode, rest) = next_field(rest)?;
    let (start, end) = range.split_once('-')?;
    let start = u64::from_str_radix(start, 16).ok()?;
    let end = u64::from_str_radix(end, 16).ok()?;
    if end < start {
        return None;
    }
    let (major, minor) = dev.split_once(':')?;
    Some(MapsLine {
        start,
        end,
        perms: perms.to_string(),
        offset: u64::from_str_radix(offset, 16).ok()?,
        dev_major: u32::from_str_radix(major, 16).ok()?,
        dev_minor: u32::from_str_radix(minor, 16).ok()?,
        inode: inode.parse().ok()?,
        path: rest.trim_start_matches([' ', '\t']).to_string(),
    })
}

/// The kind of file behind a buffer the inspector found: a kernel dma-buf
/// or a portable memfd. The two have separate inode spaces, so a buffer is
/// identified by its file kind and its inode. (Not to be confused with the
/// crate's [`BufferKind`](crate::BufferKind), which says which allocator
/// made a [`Buffer`](crate::Buffer) of this process.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum FileKind {
    /// A kernel dma-buf (any exporter: udmabuf, a DMA heap, a GPU driver…).
    #[serde(rename = "dmabuf")]
    DmaBuf,
    /// A portable memfd buffer of this library (a memfd named
    /// [`PORTABLE_MEMFD_PREFIX`]`<name>`).
    #[serde(rename = "portable")]
    Portable,
}

/// A buffer recognised by the path of an fd's link or of a mapping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathBuffer {
    /// Which kind of buffer the path names.
    pub kind: FileKind,
    /// The buffer's name from the path; `None` when empty or not given.
    pub name: Option<String>,
}

/// Recognises the path of a dma-buf (`/dmabuf:<name>`, or
/// `anon_inode:dmabuf` on kernels before 5.3) or of a portable memfd
/// buffer (`/memfd:dmabuf-portable:<name> (deleted)`), as found in the
/// target of `/proc/<pid>/fd/<n>` and in the path column of `maps`.
pub fn classify_path(path: &str) -> Option<PathBuffer> {
    let non_empty = |s: &str| (!s.is_empty()).then(|| s.to_string());
    if let Some(name) = path.strip_prefix(DMABUF_PATH_PREFIX) {
        return Some(PathBuffer {
            kind: FileKind::DmaBuf,
            name: non_empty(name),
        });
    }
    if path == "anon_inode:dmabuf" {
        return Some(PathBuffer {
            kind: FileKind::DmaBuf,
            name: None,
        });
    }
    let name = path
        .strip_prefix(MEMFD_PATH_PREFIX)?
        .strip_prefix(PORTABLE_MEMFD_PREFIX)?;
    let name = name.strip_suffix(" (deleted)").unwrap_or(name);
    Some(PathBuffer {
        kind: FileKind::Portable,
        name: non_empty(name),
    })
}

/// One fence on a buffer's reservation object, from debugfs `bufinfo`:
/// `\t<usage> fence:<driver> <timeline> seq <n> [un]signalled`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BufInfoFence {
    /// How the fence is used: `kernel`, `write`, `read` or `bookkeep`.
    pub usage: String,
    /// Name of the fence's driver.
    pub driver: String,
    /// Name of the fence's timeline.
    pub timeline: String,
    /// Sequence number on the timeline.
    pub seqno: Option<u64>,
    /// Whether the fence has signalled; `None` when the line was cut.
    pub signalled: Option<bool>,
}

/// One buffer of debugfs `/sys/kernel/debug/dma_buf/bufinfo`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct BufInfoEntry {
    /// Size in bytes.
    pub size: Option<u64>,
    /// `f_flags` of the buffer's file (hex in the text).
    pub flags: Option<u32>,
    /// `f_mode` of the buffer's file (hex in the text).
    pub mode: Option<u32>,
    /// References to the buffer's file (`file_count`).
    pub count: Option<i64>,
    /// Name of the exporting driver.
    pub exp_name: Option<String>,
    /// Inode number of the buffer.
    pub ino: Option<u64>,
    /// The buffer's name (`None` for `<none>`).
    pub name: Option<String>,
    /// Fences on the buffer's reservation object.
    pub fences: Vec<BufInfoFence>,
    /// Names of the devices attached to the buffer.
    pub attached_devices: Vec<String>,
}

fn parse_fence(text: &str) -> Option<BufInfoFence> {
    let (usage, rest) = text.split_once(" fence:")?;
    let mut rest = rest.trim();
    let mut signalled = None;
    if let Some(r) = rest.strip_suffix("unsignalled") {
        signalled = Some(false);
        rest = r.trim_end();
    } else if let Some(r) = rest.strip_suffix("signalled") {
        signalled = Some(true);
        rest = r.trim_end();
    }
    let (names, seqno) = match rest.rfind(" seq ") {
        Some(i) => (&rest[..i], rest[i + 5..].trim().parse().ok()),
        None => (rest, None),
    };
    let (driver, timeline) = names.split_once(' ').unwrap_or((names, ""));
    Some(BufInfoFence {
        usage: usage.trim().to_string(),
        driver: driver.to_string(),
        timeline: timeline.to_string(),
        seqno,
        signalled,
    })
}

fn parse_bufinfo_row(line: &str) -> Option<BufInfoEntry> {
    let fields: Vec<&str> = line.split('\t').collect();
    let first = fields.first()?.trim();
    if fields.len() < 2 || first.is_empty() || !first.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let field = |i: usize| fields.get(i).map(|f| f.trim());
    let name = (fields.len() > 6).then(|| fields[6..].join("\t"));
    Some(BufInfoEntry {
        size: first.parse().ok(),
        flags: field(1).and_then(|f| u32::from_str_radix(f, 16).ok()),
        mode: field(2).and_then(|f| u32::from_str_radix(f, 16).ok()),
        count: field(3).and_then(|f| f.parse().ok()),
        exp_name: field(4).map(str::to_string),
        ino: field(5).and_then(|f| f.parse().ok()),
        name: name.filter(|n| n != "<none>" && !n.is_empty()),
        fences: Vec::new(),
        attached_devices: Vec::new(),
    })
}

/// Parses debugfs `/sys/kernel/debug/dma_buf/bufinfo`.
///
/// A buffer starts at a row of tab-separated fields whose first field is
/// a decimal size; the tab-indented lines after it are its fences and,
/// after `\tAttached Devices:`, its devices. Headers, totals and lines
/// that fit nowhere are skipped; a cut-off row keeps the fields it has.
pub fn parse_bufinfo(text: &str) -> Vec<BufInfoEntry> {
    let mut entries: Vec<BufInfoEntry> = Vec::new();
    let mut in_devices = false;
    for line in text.lines() {
        let line = line.trim_end_matches('\r');
        if let Some(indented) = line.strip_prefix('\t') {
            let Some(entry) = entries.last_mut() else {
                continue;
            };
            if indented.trim_end() == "Attached Devices:" {
                in_devices = true;
            } else if in_devices {
                let device = indented.trim();
                if !device.is_empty() {
                    entry.attached_devices.push(device.to_string());
                }
            } else if let Some(fence) = parse_fence(indented) {
                entry.fences.push(fence);
            }
        } else if let Some(entry) = parse_bufinfo_row(line) {
            entries.push(entry);
            in_devices = false;
        } else {
            // "Total N devices attached", headers, blank lines, totals.
            in_devices = false;
        }
    }
    entries
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fence_line_variants() {
        let f = parse_fence("write fence:udmabuf tl-1 seq 7 unsignalled").unwrap();
        assert_eq!(f.usage, "write");
        assert_eq!(f.driver, "udmabuf");
        assert_eq!(f.timeline, "tl-1");
        assert_eq!(f.seqno, Some(7));
        assert_eq!(f.signalled, Some(false));
        let f = parse_fence("kernel fence:drv seq x").unwrap();
        assert_eq!(f.seqno, None);
        assert_eq!(f.signalled, None);
        assert!(parse_fence("Attached Devices:").is_none());
    }

    #[test]
    fn classify_paths() {
        assert_eq!(
            classify_path("/dmabuf:"),
            Some(PathBuffer {
                kind: FileKind::DmaBuf,
                name: None
            })
        );
        assert_eq!(
            classify_path("/memfd:dmabuf-portable:a b (deleted)")
                .unwrap()
                .name
                .as_deref(),
            Some("a b")
        );
        assert_eq!(classify_path("/memfd:other (deleted)"), None);
        assert_eq!(classify_path("/usr/lib/libc.so.6"), None);
        assert_eq!(classify_path("socket:[1234]"), None);
    }
}
