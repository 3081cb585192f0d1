//! What this kernel offers: exporters, heaps, sync files, device DMABUF
//! interfaces and introspection — found by trying, not by guessing.
//!
//! # DOC: probing
//!
//! [`probe`] looks at the running system and, where it can do so cheaply
//! and without side effects that outlive the call, *tries* each feature:
//! it creates a one-page udmabuf, allocates a page from each heap, exports
//! and re-imports a sync file. Every entry says whether the feature is
//! there and, if not, why (the error's text). Nothing here needs root
//! except what the kernel itself restricts (device nodes are `0600` by
//! default); a permission error is reported as such.

use std::path::Path;

use crate::access::{Access, Usage};
use crate::alloc::heap::{heap_names, Heap, HeapAllocOptions};
use crate::alloc::udmabuf::{Limits, Memfd, Udmabuf};
use crate::alloc::{Allocate, Allocator};
use crate::buffer::{Buffer, BufferKind};
use crate::sys;

/// One feature: is it there, and what was seen.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Feature {
    /// Whether it is available (and worked when tried).
    pub available: bool,
    /// What was found, or why not, in words.
    pub detail: String,
}

impl Feature {
    fn yes(detail: impl Into<String>) -> Feature {
        Feature {
            available: true,
            detail: detail.into(),
        }
    }

    fn no(detail: impl Into<String>) -> Feature {
        Feature {
            available: false,
            detail: detail.into(),
        }
    }
}

/// A DMA heap and whether allocating from it worked.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct HeapReport {
    /// The heap's name.
    pub name: String,
    /// The allocation test.
    pub allocation: Feature,
}

/// udmabuf: present, limits, and whether creating one worked.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct UdmabufReport {
    /// Creating a one-page udmabuf.
    pub create: Feature,
    /// The limits in force.
    pub limits: Limits,
}

/// Everything [`probe`] found.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Report {
    /// `uname -r`.
    pub kernel: String,
    /// udmabuf.
    pub udmabuf: UdmabufReport,
    /// Every DMA heap.
    pub heaps: Vec<HeapReport>,
    /// `DMA_BUF_IOCTL_EXPORT_SYNC_FILE` / `IMPORT_SYNC_FILE`.
    pub sync_file: Feature,
    /// The portable memfd engine.
    pub portable: Feature,
    /// FunctionFS DMABUF (`FUNCTIONFS_DMABUF_*`, Linux 6.9+).
    pub functionfs_dmabuf: Feature,
    /// IIO DMABUF (`IIO_BUFFER_DMABUF_*`, Linux 6.11+).
    pub iio_dmabuf: Feature,
    /// V4L2 video devices that can import dma-bufs.
    pub v4l2: Feature,
    /// `/proc/PID/fdinfo` of dma-bufs.
    pub fdinfo: Feature,
    /// `/sys/kernel/dmabuf/buffers` (CONFIG_DMABUF_SYSFS_STATS).
    pub sysfs_stats: Feature,
    /// debugfs `dma_buf/bufinfo`.
    pub debugfs_bufinfo: Feature,
    /// The backend `Allocator::auto()` picks, and why.
    pub auto_backend: Feature,
    /// The same backend, machine-readable: the `--backend` value that
    /// selects it (`heap:system`, `udmabuf`, `portable`).
    pub auto_backend_name: String,
}

impl Report {
    /// Whether this kernel can make real dma-bufs (a heap or udmabuf).
    pub fn has_dma_buf_exporter(&self) -> bool {
        self.udmabuf.create.available || self.heaps.iter().any(|h| h.allocation.available)
    }
}

/// Parses "6.12.95+deb12-amd64" into (6, 12).
fn kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut it = release.split(['.', '-', '+']);
    let major = it.next()?.parse().ok()?;
    let minor = it.next()?.parse().ok()?;
    Some((major, minor))
}

fn at_least(release: &str, want: (u32, u32)) -> bool {
    kernel_version(release).is_some_and(|v| v >= want)
}

fn filesystems() -> String {
    std::fs::read_to_string("/proc/filesystems").unwrap_or_default()
}

fn probe_udmabuf() -> (UdmabufReport, Option<Buffer>) {
    let limits = Limits::read();
    match Udmabuf::open() {
        Err(e) => (
            UdmabufReport {
                create: Feature::no(e.to_string()),
                limits,
            },
            None,
        ),
        Ok(dev) => {
            let page = sys::mem::page_size() as u64;
            let made = Memfd::new("dmabuf-probe", page).and_then(|m| dev.create(&m, 0, page));
            match made {
                Ok(d) => (
                    UdmabufReport {
                        create: Feature::yes(format!(
                            "/dev/udmabuf created a {page}-byte dma-buf (list limit {}, size limit {} MiB{})",
                            limits.list_limit,
                            limits.size_limit_mb,
                            if limits.from_sysfs { "" } else { ", defaults" }
                        )),
                        limits,
                    },
                    Some(Buffer::from_dma_buf_of_kind(d, BufferKind::Udmabuf)),
                ),
                Err(e) => (
                    UdmabufReport {
                        create: Feature::no(e.to_string()),
                        limits,
                    },
                    None,
                ),
            }
        }
    }
}

fn probe_heaps() -> (Vec<HeapReport>, Option<Buffer>) {
    let mut sample = None;
    let reports = heap_names()
        .into_iter()
        .map(|name| {
            let page = sys::mem::page_size() as u64;
            let allocation = match Heap::open(&name)
                .and_then(|h| h.allocate_dma_buf(page, HeapAllocOptions::default()))
            {
                Ok(d) => {
                    if sample.is_none() {
                        sample = Some(Buffer::from_dma_buf_of_kind(
                            d,
                            BufferKind::Heap(name.clone()),
                        ));
                    }
                    Feature::yes(format!("allocated {page} bytes"))
                }
                Err(e) => Feature::no(e.to_string()),
            };
            HeapReport { name, allocation }
        })
        .collect();
    (reports, sample)
}

fn probe_sync_file(sample: Option<&Buffer>) -> Feature {
    let Some(b) = sample.and_then(|b| b.dma_buf()) else {
        return Feature::no("cannot be tried: no dma-buf exporter to take a buffer from");
    };
    match b.export_sync_file(Access::Read) {
        Err(e) => Feature::no(e.to_string()),
        Ok(s) => match b.import_sync_file(&s, Usage::Write) {
            Ok(()) => Feature::yes("exported a sync file from a dma-buf and imported it back"),
            Err(e) => Feature::no(format!("export works, import failed: {e}")),
        },
    }
}

fn probe_functionfs(release: &str) -> Feature {
    if !at_least(release, (6, 9)) {
        return Feature::no("needs Linux 6.9 or later");
    }
    let fs = filesystems();
    let udcs: Vec<String> = std::fs::read_dir("/sys/class/udc")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    let udc = if udcs.is_empty() {
        "no USB device controller (UDC) present".to_string()
    } else {
        format!(
            "UDCs: {} (zero-copy needs one with scatter-gather; dummy_udc has none)",
            udcs.join(", ")
        )
    };
    if fs.contains("functionfs") {
        Feature::yes(format!(
            "kernel has the ioctls and functionfs is registered; {udc}"
        ))
    } else {
        Feature::no(format!(
            "kernel has the ioctls, but functionfs is not registered (load usb_f_fs); {udc}"
        ))
    }
}

fn probe_iio(release: &str) -> Feature {
    if !at_least(release, (6, 11)) {
        return Feature::no("needs Linux 6.11 or later");
    }
    let devices: Vec<String> = std::fs::read_dir("/sys/bus/iio/devices")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| e.path().join("buffer0").exists())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    if devices.is_empty() {
        Feature::no("kernel has the ioctls, but no IIO device with a buffer is present")
    } else {
        Feature::yes(format!(
            "IIO devices with buffers: {} (DMABUF needs a DMA-backed buffer driver)",
            devices.join(", ")
        ))
    }
}

fn probe_v4l2() -> Feature {
    let mut devs: Vec<String> = std::fs::read_dir("/dev")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("video"))
                .collect()
        })
        .unwrap_or_default();
    devs.sort();
    if devs.is_empty() {
        Feature::no("no /dev/video* device")
    } else {
        Feature::yes(format!("/dev/{}", devs.join(", /dev/")))
    }
}

fn probe_fdinfo(sample: Option<&Buffer>) -> Feature {
    match sample.and_then(|b| b.dma_buf()) {
        Some(d) => match d.fdinfo() {
            Ok(i) if i.exp_name.is_some() => Feature::yes(format!(
                "fdinfo shows exp_name '{}' and size",
                i.exp_name.unwrap_or_default()
            )),
            Ok(_) => Feature::no("fdinfo lacks exp_name"),
            Err(e) => Feature::no(e.to_string()),
        },
        None => {
            if Path::new("/proc/self/fdinfo").is_dir() {
                Feature::yes("/proc/PID/fdinfo is readable (no dma-buf here to show)")
            } else {
                Feature::no("/proc is not mounted")
            }
        }
    }
}

fn probe_sysfs() -> Feature {
    if Path::new("/sys/kernel/dmabuf/buffers").is_dir() {
        Feature::yes("/sys/kernel/dmabuf/buffers")
    } else {
        Feature::no("absent (CONFIG_DMABUF_SYSFS_STATS is off; it is deprecated)")
    }
}

fn probe_debugfs() -> Feature {
    let path = "/sys/kernel/debug/dma_buf/bufinfo";
    match std::fs::read_to_string(path) {
        Ok(_) => Feature::yes(path),
        Err(e) => Feature::no(if Path::new("/sys/kernel/debug/dma_buf").exists() {
            format!("{path}: {e}")
        } else if filesystems().contains("debugfs") {
            "debugfs is not mounted here (or not readable)".to_string()
        } else {
            "no debugfs".to_string()
        }),
    }
}

fn probe_portable() -> Feature {
    match crate::alloc::portable::Portable.allocate(sys::mem::page_size() as u64, "probe") {
        Ok(_) => Feature::yes("sealed memfds work"),
        Err(e) => Feature::no(e.to_string()),
    }
}

/// Probes this system. Never fails: what cannot be tried is reported as
/// unavailable with the reason.
pub fn probe() -> Report {
    let kernel = rustix::system::uname()
        .release()
        .to_string_lossy()
        .into_owned();
    let (udmabuf, u_sample) = probe_udmabuf();
    let (heaps, h_sample) = probe_heaps();
    let sample = h_sample.or(u_sample);
    let auto = Allocator::auto();
    Report {
        sync_file: probe_sync_file(sample.as_ref()),
        fdinfo: probe_fdinfo(sample.as_ref()),
        functionfs_dmabuf: probe_functionfs(&kernel),
        iio_dmabuf: probe_iio(&kernel),
        v4l2: probe_v4l2(),
        sysfs_stats: probe_sysfs(),
        debugfs_bufinfo: probe_debugfs(),
        portable: probe_portable(),
        auto_backend: Feature::yes(format!("{} ({})", auto.backend(), auto.reason())),
        auto_backend_name: auto.backend().to_string(),
        kernel,
        udmabuf,
        heaps,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_versions_parse() {
        assert_eq!(kernel_version("6.12.95+deb12-amd64"), Some((6, 12)));
        assert_eq!(kernel_version("6.18.44-fc-v669"), Some((6, 18)));
        assert_eq!(kernel_version("garbage"), None);
        assert!(at_least("6.9.0", (6, 9)));
        assert!(!at_least("6.1.0-28-amd64", (6, 9)));
    }

    #[test]
    fn probe_always_answers_and_portable_works() {
        let r = probe();
        assert!(!r.kernel.is_empty());
        assert!(r.portable.available, "{:?}", r.portable);
        if !r.has_dma_buf_exporter() {
            assert!(
                r.sync_file.detail.contains("no dma-buf exporter"),
                "{:?}",
                r.sync_file
            );
            assert!(
                r.auto_backend.detail.starts_with("portable"),
                "{:?}",
                r.auto_backend
            );
        }
    }
}
