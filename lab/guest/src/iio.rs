//! The lab's fake IIO ADC (`lab/fixtures/fake_adc/`): setting it up
//! through sysfs and checking its samples.
//!
//! Sample `n` (counted from 0 since the buffer was last enabled, across
//! blocks) is the little-endian `u32` [`sample`]`(n)`.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::{load_module, wait_for_path, LabError};

/// Bytes per sample: one 32-bit channel.
pub const SAMPLE_BYTES: usize = 4;

/// The fake ADC's sample `n` (fake_adc.c: `n * 0x9e3779b1 + 0x1234567`).
pub fn sample(n: u32) -> u32 {
    n.wrapping_mul(0x9e37_79b1).wrapping_add(0x0123_4567)
}

/// The bytes of `len / 4` samples from `first` on.
pub fn samples(first: u32, len: usize) -> Vec<u8> {
    (0..(len / SAMPLE_BYTES) as u32)
        .flat_map(|i| sample(first.wrapping_add(i)).to_le_bytes())
        .collect()
}

/// Checks that `bytes` are the samples from `first` on; on a mismatch, says
/// where and what.
pub fn check_samples(bytes: &[u8], first: u32) -> Result<(), String> {
    for (i, c) in bytes.chunks(SAMPLE_BYTES).enumerate() {
        let want = sample(first.wrapping_add(i as u32)).to_le_bytes();
        if c != &want[..c.len()] {
            return Err(format!(
                "sample {} (byte {}) is {c:02x?}, expected {want:02x?} (sample {})",
                i,
                i * SAMPLE_BYTES,
                first.wrapping_add(i as u32)
            ));
        }
    }
    Ok(())
}

/// The fake ADC device.
#[derive(Debug, Clone)]
pub struct FakeAdc {
    /// Its character device, `/dev/iio:deviceN`.
    pub dev: PathBuf,
    /// Its sysfs directory, `/sys/bus/iio/devices/iio:deviceN`.
    pub sysfs: PathBuf,
}

fn write(path: &Path, value: &str) -> Result<(), LabError> {
    fs::write(path, value).map_err(|e| {
        LabError::new(
            format!("writing '{value}' to {}", path.display()),
            e.to_string(),
        )
    })
}

impl FakeAdc {
    /// Loads `fake_adc` (and `industrialio-buffer-dma`), finds its device
    /// and enables its channel in buffer 0. The buffer stays disabled.
    pub fn setup() -> Result<FakeAdc, LabError> {
        load_module("fake_adc", "")?;
        let dir = fs::read_dir("/sys/bus/iio/devices")
            .map_err(|e| LabError::new("reading /sys/bus/iio/devices", e.to_string()))?;
        for e in dir.flatten() {
            let p = e.path();
            if fs::read_to_string(p.join("name")).is_ok_and(|n| n.trim() == "fake_adc") {
                let name = e.file_name().to_string_lossy().into_owned();
                let dev = PathBuf::from(format!("/dev/{name}"));
                wait_for_path(&dev, Duration::from_secs(10))?;
                let adc = FakeAdc { dev, sysfs: p };
                adc.enable(false)?;
                write(&adc.sysfs.join("buffer0/in_voltage0_en"), "1")?;
                return Ok(adc);
            }
        }
        Err(LabError::new(
            "finding the fake ADC",
            "no IIO device named fake_adc after loading the module",
        ))
    }

    /// Enables or disables buffer 0. Disabling aborts blocks in flight and
    /// restarts the sample count at 0.
    pub fn enable(&self, on: bool) -> Result<(), LabError> {
        let p = self.sysfs.join("buffer0/enable");
        let now = fs::read_to_string(&p).unwrap_or_default();
        if now.trim() == if on { "1" } else { "0" } {
            return Ok(());
        }
        write(&p, if on { "1" } else { "0" })
    }

    /// Sets the sample rate (samples per second; 0: as fast as possible).
    pub fn set_rate(&self, hz: u32) -> Result<(), LabError> {
        write(&self.sysfs.join("sampling_frequency"), &hz.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_match_the_driver_formula() {
        assert_eq!(sample(0), 0x0123_4567);
        assert_eq!(sample(1), 0x9e37_79b1u32.wrapping_add(0x0123_4567));
        let b = samples(5, 12);
        assert_eq!(b.len(), 12);
        assert!(check_samples(&b, 5).is_ok());
        assert!(check_samples(&b, 6).unwrap_err().contains("sample 0"));
    }
}
