//! The system this project was made for: samples an IIO device captures
//! into dma-bufs go out to the USB host through FunctionFS, with no CPU
//! copy.
//!
//! ```text
//! relay /dev/iio:device0 /sys/bus/iio/devices/iio:device0/buffer0/enable \
//!       /dev/ffs-lab/ep1 [BUFFERS [BUFFER_BYTES [ROUNDS]]]
//! ```
//!
//! Every buffer is a udmabuf attached to both endpoints (zero-copy on both,
//! or the relay refuses to run). Each round enqueues every buffer on the
//! IIO buffer, then queues it on the USB IN endpoint: the USB transfer is
//! ordered after the IIO capture by the buffer's fences (implicit sync:
//! the FunctionFS transfer waits for the IIO write fence in the dma-buf's
//! reservation), and a buffer goes back to the IIO device only after its
//! USB transfer's fence signalled. The CPU never touches the samples.
//!
//! It runs only where both devices exist: in the lab (`lab/guest/tests/
//! relay.rs` runs this file's [`relay`] against the fake ADC and the
//! dummy_hcd gadget, and checks every sample on the host side).

use std::error::Error;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use dmabuf::endpoint::functionfs::FunctionFsEndpoint;
use dmabuf::endpoint::iio::IioEndpoint;
use dmabuf::endpoint::{DataPath, Direction, Endpoint, TransferOptions};
use dmabuf::{Allocate, Buffer, Fence, Udmabuf};

/// What to relay, and how.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// The IIO device (`/dev/iio:deviceN`); its buffer 0 is used.
    pub iio_device: PathBuf,
    /// Its buffer's sysfs `enable` file (the relay enables the buffer after
    /// attaching, so the IIO core turns its own file-I/O blocks off).
    pub iio_enable: PathBuf,
    /// The FunctionFS bulk IN endpoint file (`/dev/ffs-NAME/epN`).
    pub usb_endpoint: PathBuf,
    /// How many buffers circulate.
    pub buffers: usize,
    /// Bytes per buffer.
    pub buffer_bytes: u64,
    /// How many times every buffer goes around.
    pub rounds: usize,
}

/// What the relay did.
#[derive(Debug, Clone)]
pub struct RelayReport {
    /// Bytes sent to the host.
    pub bytes: u64,
    /// The IIO endpoint's data path.
    pub iio_path: DataPath,
    /// The USB endpoint's data path.
    pub usb_path: DataPath,
    /// Wall time from the first enqueue to the last USB fence.
    pub elapsed: Duration,
}

const FENCE_WAIT: Option<Duration> = Some(Duration::from_secs(30));

/// Runs the relay; the host must read `buffers * buffer_bytes * rounds`
/// bytes from the USB endpoint meanwhile.
pub fn relay(cfg: &RelayConfig) -> Result<RelayReport, Box<dyn Error + Send + Sync>> {
    let mut iio = IioEndpoint::open(&cfg.iio_device, 0, Direction::FromDevice)?;
    let mut usb = FunctionFsEndpoint::open(&cfg.usb_endpoint, Direction::ToDevice)?;
    let udmabuf = Udmabuf::open()?;
    let bufs: Vec<Buffer> = (0..cfg.buffers)
        .map(|i| udmabuf.allocate(cfg.buffer_bytes, &format!("relay-{i}")))
        .collect::<Result<_, _>>()?;
    let iio_att = bufs
        .iter()
        .map(|b| iio.attach(b))
        .collect::<Result<Vec<_>, _>>()?;
    let usb_att = bufs
        .iter()
        .map(|b| usb.attach(b))
        .collect::<Result<Vec<_>, _>>()?;
    for (what, path) in [("IIO", iio.data_path()), ("USB", usb.data_path())] {
        if path != DataPath::ZeroCopy {
            return Err(format!("relay: the {what} endpoint would copy: {path}").into());
        }
    }
    std::fs::write(&cfg.iio_enable, "1")
        .map_err(|e| format!("relay: enabling {}: {e}", cfg.iio_enable.display()))?;
    let opts = TransferOptions {
        timeout: Duration::from_secs(30),
        ..Default::default()
    };
    let start = Instant::now();
    let mut usb_fences: Vec<Option<Fence>> = (0..cfg.buffers).map(|_| None).collect();
    let result = (|| -> Result<(), Box<dyn Error + Send + Sync>> {
        for _ in 0..cfg.rounds {
            for (i, att) in iio_att.iter().enumerate() {
                // A buffer goes back to the ADC only once the host has it.
                if let Some(f) = usb_fences[i].take() {
                    f.wait(FENCE_WAIT)?;
                }
                // The capture's fence is in the buffer's reservation; the
                // USB transfer below waits for it there.
                drop(iio.transfer(att, cfg.buffer_bytes, opts)?);
            }
            for (i, att) in usb_att.iter().enumerate() {
                usb_fences[i] = Some(usb.transfer(att, cfg.buffer_bytes, opts)?);
            }
        }
        for f in usb_fences.iter_mut().filter_map(Option::take) {
            f.wait(FENCE_WAIT)?;
        }
        Ok(())
    })();
    let elapsed = start.elapsed();
    // Kernel fences go before their attachments: 6.12 keeps their lock
    // in the attachment (docs/kernel-findings.md).
    drop(usb_fences);
    let _ = std::fs::write(&cfg.iio_enable, "0");
    result?;
    Ok(RelayReport {
        bytes: cfg.buffer_bytes * (cfg.buffers * cfg.rounds) as u64,
        iio_path: iio.data_path(),
        usb_path: usb.data_path(),
        elapsed,
    })
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 3 {
        eprintln!(
            "usage: relay IIO_DEVICE IIO_BUFFER_ENABLE FFS_IN_ENDPOINT [BUFFERS [BUFFER_BYTES [ROUNDS]]]"
        );
        std::process::exit(2);
    }
    let num = |i: usize, default: u64| -> u64 {
        match args.get(i) {
            None => default,
            Some(s) => s.parse().unwrap_or_else(|_| {
                eprintln!("relay: {s:?} is not a number");
                std::process::exit(2)
            }),
        }
    };
    let cfg = RelayConfig {
        iio_device: args[0].clone().into(),
        iio_enable: args[1].clone().into(),
        usb_endpoint: args[2].clone().into(),
        buffers: num(3, 3) as usize,
        buffer_bytes: num(4, 65536),
        rounds: num(5, 16) as usize,
    };
    match relay(&cfg) {
        Ok(r) => println!(
            "relay: {} bytes in {:.2?}; IIO {}, USB {}",
            r.bytes, r.elapsed, r.iio_path, r.usb_path
        ),
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    }
}
