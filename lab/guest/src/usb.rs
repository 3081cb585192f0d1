//! A FunctionFS gadget on `dummy_hcd`, and the host side of the same VM
//! through usbfs — for the FunctionFS endpoint tests.
//!
//! Why not the `usb-gadget` crate (v1.3): its custom function opens every
//! endpoint file itself (for its AIO queues) once the descriptors are
//! written. FunctionFS detaches *all* dma-bufs of an endpoint when any open
//! file description of it is released, so a second owner of the endpoint
//! files is a hazard for the code under test; it would also add half a
//! dozen crates to the guest build for what is ~150 lines of configfs
//! writes here.
//!
//! [`Gadget::setup`] builds, through configfs: gadget `lab_ffs` (vendor
//! 0x1d6b, product 0x0104), one configuration, function `ffs.lab` mounted
//! at `/dev/ffs-lab`, descriptors for full and high speed (dummy_hcd is
//! loaded without `is_super_speed`, so no SuperSpeed descriptors are
//! needed) with one vendor-specific interface holding a bulk IN endpoint
//! (`ep1`) and a bulk OUT endpoint (`ep2`), bound to `dummy_udc.0`; then it
//! waits for the host side to enumerate it and opens `/dev/bus/usb/BBB/DDD`.

use std::fs;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::{load_module, LabError};

/// Vendor id of the test gadget (Linux Foundation).
pub const VENDOR: u16 = 0x1d6b;
/// Product id of the test gadget (multifunction composite gadget).
pub const PRODUCT: u16 = 0x0104;
/// Where the FunctionFS instance is mounted.
pub const FFS_DIR: &str = "/dev/ffs-lab";
const GADGET_DIR: &str = "/sys/kernel/config/usb_gadget/lab_ffs";
const UDC: &str = "dummy_udc.0";

const FUNCTIONFS_DESCRIPTORS_MAGIC_V2: u32 = 3;
const FUNCTIONFS_STRINGS_MAGIC: u32 = 2;
const FUNCTIONFS_HAS_FS_DESC: u32 = 1;
const FUNCTIONFS_HAS_HS_DESC: u32 = 2;

fn err(what: &str, e: impl std::fmt::Display) -> LabError {
    LabError::new(what, e.to_string())
}

fn write_file(path: impl AsRef<Path>, value: &str) -> Result<(), LabError> {
    let path = path.as_ref();
    fs::write(path, value).map_err(|e| err(&format!("writing '{value}' to {}", path.display()), e))
}

fn mkdir(path: impl AsRef<Path>) -> Result<(), LabError> {
    let path = path.as_ref();
    match fs::create_dir(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(err(&format!("mkdir {}", path.display()), e)),
    }
}

/// The FunctionFS descriptors blob (v2 format): full and high speed, one
/// interface, bulk IN then bulk OUT.
pub fn descriptors() -> Vec<u8> {
    fn speed(max_packet: u16) -> Vec<u8> {
        let mut d = vec![
            9, 4, 0, 0, 2, 0xff, 0, 0, 1, // interface 0, 2 endpoints, vendor class, string 1
        ];
        d.extend_from_slice(&[7, 5, 0x81, 2]); // ep1 IN bulk
        d.extend_from_slice(&max_packet.to_le_bytes());
        d.push(0);
        d.extend_from_slice(&[7, 5, 0x02, 2]); // ep2 OUT bulk
        d.extend_from_slice(&max_packet.to_le_bytes());
        d.push(0);
        d
    }
    let (fs_desc, hs_desc) = (speed(64), speed(512));
    let mut body = Vec::new();
    body.extend_from_slice(&3u32.to_le_bytes()); // fs_count
    body.extend_from_slice(&3u32.to_le_bytes()); // hs_count
    body.extend(fs_desc);
    body.extend(hs_desc);
    let mut out = Vec::new();
    out.extend_from_slice(&FUNCTIONFS_DESCRIPTORS_MAGIC_V2.to_le_bytes());
    out.extend_from_slice(&((12 + body.len()) as u32).to_le_bytes());
    out.extend_from_slice(&(FUNCTIONFS_HAS_FS_DESC | FUNCTIONFS_HAS_HS_DESC).to_le_bytes());
    out.extend(body);
    out
}

/// The FunctionFS strings blob: one string, US English.
pub fn strings() -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&1u32.to_le_bytes()); // str_count
    body.extend_from_slice(&1u32.to_le_bytes()); // lang_count
    body.extend_from_slice(&0x0409u16.to_le_bytes());
    body.extend_from_slice(b"dmabuf lab interface\0");
    let mut out = Vec::new();
    out.extend_from_slice(&FUNCTIONFS_STRINGS_MAGIC.to_le_bytes());
    out.extend_from_slice(&((8 + body.len()) as u32).to_le_bytes());
    out.extend(body);
    out
}

/// The gadget and the host's handle on it. Lives for the whole test
/// binary (keep it in a `static`); ep0 stays open so the function stays
/// active.
#[derive(Debug)]
pub struct Gadget {
    _ep0: OwnedFd,
    /// The host side: `/dev/bus/usb/BBB/DDD`, opened read-write.
    pub host: OwnedFd,
    /// Path of that device node.
    pub host_path: PathBuf,
    /// Address of the bulk IN endpoint as the host sees it (0x8N).
    pub in_address: u8,
    /// Address of the bulk OUT endpoint as the host sees it.
    pub out_address: u8,
}

impl Gadget {
    /// Builds, binds and enumerates the gadget (see the module docs).
    pub fn setup() -> Result<Gadget, LabError> {
        for m in ["dummy_hcd", "libcomposite", "usb_f_fs"] {
            load_module(m, "")?;
        }
        let g = Path::new(GADGET_DIR);
        mkdir(g)?;
        write_file(g.join("idVendor"), &format!("{VENDOR:#06x}"))?;
        write_file(g.join("idProduct"), &format!("{PRODUCT:#06x}"))?;
        mkdir(g.join("strings/0x409"))?;
        write_file(g.join("strings/0x409/manufacturer"), "dmabuf")?;
        write_file(g.join("strings/0x409/product"), "lab ffs")?;
        write_file(g.join("strings/0x409/serialnumber"), "0001")?;
        mkdir(g.join("configs/c.1"))?;
        mkdir(g.join("configs/c.1/strings/0x409"))?;
        write_file(g.join("configs/c.1/strings/0x409/configuration"), "lab")?;
        mkdir(g.join("functions/ffs.lab"))?;
        let link = g.join("configs/c.1/ffs.lab");
        if !link.exists() {
            std::os::unix::fs::symlink(g.join("functions/ffs.lab"), &link)
                .map_err(|e| err("linking ffs.lab into configs/c.1", e))?;
        }
        mkdir(FFS_DIR)?;
        // An earlier test binary of the same boot may have mounted it.
        if !ffs_mounted() {
            let out = std::process::Command::new("mount")
                .args(["-t", "functionfs", "lab", FFS_DIR])
                .output()
                .map_err(|e| err("mount functionfs", e))?;
            if !out.status.success() {
                return Err(LabError::new(
                    "mount -t functionfs lab /dev/ffs-lab",
                    String::from_utf8_lossy(&out.stderr).into_owned(),
                ));
            }
        }
        let ep0 = rustix::fs::open(
            format!("{FFS_DIR}/ep0").as_str(),
            rustix::fs::OFlags::RDWR | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .map_err(|e| err("open ep0", e))?;
        rustix::io::write(&ep0, &descriptors())
            .map_err(|e| err("writing descriptors to ep0", e))?;
        rustix::io::write(&ep0, &strings()).map_err(|e| err("writing strings to ep0", e))?;
        // Closing ep0 (an earlier binary exiting) unbinds the gadget.
        if udc_of_gadget().is_empty() {
            write_file(g.join("UDC"), UDC)?;
        }
        let (host_path, iface) = find_host_device(Duration::from_secs(20))?;
        let (in_address, out_address) = endpoint_addresses(&iface)?;
        let host = rustix::fs::open(
            &host_path,
            rustix::fs::OFlags::RDWR | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .map_err(|e| err(&format!("open {}", host_path.display()), e))?;
        Ok(Gadget {
            _ep0: ep0,
            host,
            host_path,
            in_address,
            out_address,
        })
    }

    /// Reads exactly `len` bytes from the IN endpoint on the host side, in
    /// bulk transfers of at most 64 KiB, each with `timeout`. Every
    /// request is a whole number of 512-byte packets (asking for less than
    /// a packet the device sends is an overflow, `EOVERFLOW`); more data
    /// than `len` is an error.
    pub fn host_read(&self, len: usize, timeout: Duration) -> Result<Vec<u8>, LabError> {
        self.host_read_in(len, 65536, timeout)
    }

    /// [`Gadget::host_read`] in bulk transfers of at most `chunk` bytes (a
    /// multiple of 512).
    pub fn host_read_in(
        &self,
        len: usize,
        chunk: usize,
        timeout: Duration,
    ) -> Result<Vec<u8>, LabError> {
        let max = chunk.next_multiple_of(512);
        let mut out = Vec::with_capacity(len);
        let mut chunk = vec![0u8; max];
        while out.len() < len {
            let want = (len - out.len()).next_multiple_of(512).min(max);
            let got = bulk(
                self.host.as_fd(),
                self.in_address,
                &mut chunk[..want],
                timeout,
            )
            .map_err(|e| {
                err(
                    &format!("USBDEVFS_BULK IN after {} of {len} bytes", out.len()),
                    e,
                )
            })?;
            out.extend_from_slice(&chunk[..got]);
        }
        if out.len() > len {
            return Err(LabError::new(
                "USBDEVFS_BULK IN",
                format!("the device sent {} bytes, {len} expected", out.len()),
            ));
        }
        Ok(out)
    }

    /// One bulk IN transfer of at most `len` bytes on the host side; the
    /// bytes received (fewer on a short packet).
    pub fn host_read_once(
        &self,
        len: usize,
        timeout: Duration,
    ) -> Result<Vec<u8>, rustix::io::Errno> {
        let mut out = vec![0u8; len];
        let n = bulk(self.host.as_fd(), self.in_address, &mut out, timeout)?;
        out.truncate(n);
        Ok(out)
    }

    /// Writes `data` to the OUT endpoint on the host side as one bulk
    /// transfer.
    pub fn host_write(&self, data: &[u8], timeout: Duration) -> Result<usize, LabError> {
        let mut copy = data.to_vec();
        bulk(self.host.as_fd(), self.out_address, &mut copy, timeout)
            .map_err(|e| err("USBDEVFS_BULK OUT", e))
    }
}

/// Whether the FunctionFS instance is mounted at [`FFS_DIR`].
fn ffs_mounted() -> bool {
    fs::read_to_string("/proc/mounts").is_ok_and(|m| {
        m.lines()
            .any(|l| l.split_whitespace().nth(1) == Some(FFS_DIR))
    })
}

/// The UDC the gadget is bound to (empty: none).
pub fn udc_of_gadget() -> String {
    fs::read_to_string(Path::new(GADGET_DIR).join("UDC"))
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Unbinds the gadget from its UDC (as `echo "" > UDC`): the host sees a
/// disconnect, FunctionFS disables every endpoint.
pub fn unbind_udc() -> Result<(), LabError> {
    write_file(Path::new(GADGET_DIR).join("UDC"), "\n")
}

/// Binds the gadget to the lab's UDC again after [`unbind_udc`] (ep0 must
/// still be open).
pub fn bind_udc() -> Result<(), LabError> {
    write_file(Path::new(GADGET_DIR).join("UDC"), UDC)
}

/// Disconnects (`false`) or reconnects (`true`) the device from the host
/// side's point of view, through the UDC's `soft_connect`.
pub fn soft_connect(connect: bool) -> Result<(), LabError> {
    write_file(
        Path::new("/sys/class/udc").join(UDC).join("soft_connect"),
        if connect { "connect" } else { "disconnect" },
    )
}

/// Whether the loaded `dummy_hcd` is the lab's scatter-gather build (an
/// out-of-tree module: taint flag `O`), not the kernel's own.
pub fn patched_udc_loaded() -> bool {
    fs::read_to_string("/sys/module/dummy_hcd/taint").is_ok_and(|t| t.contains('O'))
}

fn bulk(
    fd: std::os::fd::BorrowedFd<'_>,
    ep: u8,
    data: &mut [u8],
    timeout: Duration,
) -> Result<usize, rustix::io::Errno> {
    let ms = u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX);
    loop {
        match crate::sys::usbdevfs_bulk(fd, ep, data, ms) {
            Err(rustix::io::Errno::INTR) => continue,
            r => return r,
        }
    }
}

/// Finds the gadget on the host side: its device node and its interface's
/// sysfs directory.
fn find_host_device(timeout: Duration) -> Result<(PathBuf, PathBuf), LabError> {
    let start = Instant::now();
    loop {
        if let Ok(dir) = fs::read_dir("/sys/bus/usb/devices") {
            for entry in dir.flatten() {
                let p = entry.path();
                let read = |f: &str| {
                    fs::read_to_string(p.join(f))
                        .map(|s| s.trim().to_string())
                        .unwrap_or_default()
                };
                if read("idVendor") == format!("{VENDOR:04x}")
                    && read("idProduct") == format!("{PRODUCT:04x}")
                {
                    let bus: u32 = read("busnum").parse().unwrap_or(0);
                    let dev: u32 = read("devnum").parse().unwrap_or(0);
                    let node = PathBuf::from(format!("/dev/bus/usb/{bus:03}/{dev:03}"));
                    let name = entry.file_name().to_string_lossy().into_owned();
                    let iface = p.join(format!("{name}:1.0"));
                    // The interface's ep_XX directories appear after it.
                    if node.exists() && iface.exists() && endpoint_addresses(&iface).is_ok() {
                        return Ok((node, iface));
                    }
                }
            }
        }
        if start.elapsed() > timeout {
            return Err(LabError::new(
                "finding the gadget on the host side",
                format!(
                    "no USB device {VENDOR:04x}:{PRODUCT:04x} with interface 1.0 and a \
                     /dev/bus/usb node after {timeout:?}"
                ),
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The bulk IN and OUT endpoint addresses of the interface, from its
/// `ep_XX` sysfs directories.
fn endpoint_addresses(iface: &Path) -> Result<(u8, u8), LabError> {
    let mut ins = None;
    let mut outs = None;
    let dir = fs::read_dir(iface).map_err(|e| err(&format!("reading {}", iface.display()), e))?;
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(hex) = name.strip_prefix("ep_") {
            if let Ok(addr) = u8::from_str_radix(hex, 16) {
                if addr & 0x80 != 0 {
                    ins = Some(addr);
                } else {
                    outs = Some(addr);
                }
            }
        }
    }
    match (ins, outs) {
        (Some(i), Some(o)) => Ok((i, o)),
        _ => Err(LabError::new(
            "finding the gadget's endpoints",
            format!("{} lacks an ep_8N or ep_0N directory", iface.display()),
        )),
    }
}
