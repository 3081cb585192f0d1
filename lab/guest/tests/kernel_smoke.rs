//! Smoke test of the lab itself: the VM runs the expected kernel, the dma-buf
//! exporters are there, and the modules the other tests rely on load.
//!
//! Uses `rustix` only, so it does not depend on the state of the `dmabuf` crate.

use std::path::Path;
use std::time::Duration;

use dmabuf_lab_guest::{load_module, require_lab, wait_for_path};
use rustix::fs::{stat, FileType, Mode, OFlags};

fn assert_char_device(path: &str) {
    let st = stat(path).unwrap_or_else(|e| panic!("stat {path}: {e}"));
    assert_eq!(
        FileType::from_raw_mode(st.st_mode),
        FileType::CharacterDevice,
        "{path} is not a character device"
    );
}

#[test]
fn kernel_is_6_12() {
    require_lab();
    let uname = rustix::system::uname();
    let release = uname.release().to_string_lossy();
    assert!(release.starts_with("6.12"), "unexpected kernel {release}");
}

#[test]
fn udmabuf_and_system_heap_exist() {
    require_lab();
    for dev in ["/dev/udmabuf", "/dev/dma_heap/system"] {
        assert_char_device(dev);
        rustix::fs::open(dev, OFlags::RDWR | OFlags::CLOEXEC, Mode::empty())
            .unwrap_or_else(|e| panic!("open {dev}: {e}"));
    }
}

#[test]
fn vivid_loads_and_creates_video0() {
    require_lab();
    load_module("vivid", "n_devs=1 node_types=0x1").unwrap();
    wait_for_path("/dev/video0", Duration::from_secs(10)).unwrap();
    assert_char_device("/dev/video0");
    let name = std::fs::read_to_string("/sys/class/video4linux/video0/name").unwrap();
    assert!(name.contains("vivid"), "video0 is {name:?}, not vivid");
}

#[test]
fn usb_gadget_modules_load() {
    require_lab();
    for m in ["dummy_hcd", "libcomposite", "usb_f_fs"] {
        load_module(m, "").unwrap();
        assert!(Path::new("/sys/module").join(m).exists(), "{m} not loaded");
    }
    wait_for_path("/sys/class/udc/dummy_udc.0", Duration::from_secs(10)).unwrap();
    assert!(
        Path::new("/sys/kernel/config/usb_gadget").is_dir(),
        "configfs is not mounted on /sys/kernel/config (or libcomposite did not register)"
    );
}
