//! The system this project was made for, end to end
//! (`crates/dmabuf/examples/relay.rs`, this file runs its `relay`
//! function): the fake ADC captures samples into
//! udmabufs, FunctionFS sends them to the USB host with no CPU copy, and
//! the host side checks every sample. Test names start with `relay_`.

#[allow(dead_code)]
#[path = "../../../crates/dmabuf/examples/relay.rs"]
mod relay;

use std::sync::OnceLock;
use std::time::Duration;

use dmabuf::endpoint::DataPath;
use dmabuf_lab_guest::iio::{check_samples, FakeAdc};
use dmabuf_lab_guest::require_lab;
use dmabuf_lab_guest::usb::{Gadget, FFS_DIR};

static GADGET: OnceLock<Gadget> = OnceLock::new();

#[test]
fn relay_iio_samples_reach_the_usb_host_zero_copy_every_sample_checked() {
    require_lab();
    let g = GADGET.get_or_init(|| Gadget::setup().unwrap_or_else(|e| panic!("gadget setup: {e}")));
    let adc = FakeAdc::setup().unwrap();
    adc.enable(false).unwrap();
    adc.set_rate(0).unwrap();
    let cfg = relay::RelayConfig {
        iio_device: adc.dev.clone(),
        iio_enable: adc.sysfs.join("buffer0/enable"),
        usb_endpoint: format!("{FFS_DIR}/ep1").into(),
        buffers: 3,
        buffer_bytes: 65536,
        rounds: 8,
    };
    let total = cfg.buffers * cfg.buffer_bytes as usize * cfg.rounds;
    let host = std::thread::spawn(move || g.host_read(total, Duration::from_secs(60)));
    let report = relay::relay(&cfg).unwrap_or_else(|e| panic!("relay: {e}"));
    let got = host.join().unwrap().unwrap();
    assert_eq!(report.iio_path, DataPath::ZeroCopy);
    assert_eq!(report.usb_path, DataPath::ZeroCopy);
    assert_eq!(report.bytes as usize, total);
    assert_eq!(got.len(), total);
    check_samples(&got, 0).unwrap_or_else(|e| panic!("host side: {e}"));
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr().lock(),
        "relay: {} samples checked on the host side, {:.2?}",
        total / 4,
        report.elapsed
    );
}
