//! A vgem buffer: a dma-buf exported by a DRM driver whose kernel fences
//! user space attaches and signals — the lab's source of real kernel
//! fences (`sw_sync` is not in Debian's kernel).

use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

use dmabuf::{Buffer, DmaBuf};

use crate::sys::vgem as raw;
use crate::{load_module, require_lab, wait_for_path};

/// A one-page vgem dumb buffer, its card and GEM handle.
#[derive(Debug)]
pub struct Vgem {
    /// The open `/dev/dri/card0`.
    pub card: OwnedFd,
    /// The GEM handle of the buffer in that file.
    pub handle: u32,
    /// The buffer, exported as a dma-buf.
    pub buffer: Buffer,
}

impl Vgem {
    /// Loads vgem and makes a 1024×1 dumb buffer at 32 bpp (one page).
    pub fn new() -> Vgem {
        require_lab();
        load_module("vgem", "").expect("vgem loads");
        wait_for_path("/dev/dri/card0", Duration::from_secs(5)).unwrap();
        let card: OwnedFd = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/dri/card0")
            .unwrap()
            .into();
        let (handle, size) = raw::create_dumb(&card, 1024, 1).unwrap();
        assert_eq!(size, 4096, "a 1024x1 dumb buffer at 32 bpp is one page");
        let d = DmaBuf::from_fd(raw::export(&card, handle).unwrap()).unwrap();
        Vgem {
            card,
            handle,
            buffer: Buffer::from_dma_buf(d),
        }
    }

    /// Attaches an unsignalled kernel fence (a writer or a reader); its id.
    pub fn fence(&self, write: bool) -> u32 {
        raw::fence_attach(&self.card, self.handle, write).unwrap()
    }

    /// Signals fence `id` now.
    pub fn signal(&self, id: u32) {
        raw::fence_signal(&self.card, id).unwrap();
    }

    /// Signals fence `id` after `delay`, from another thread.
    pub fn signal_later(&self, id: u32, delay: Duration) -> std::thread::JoinHandle<()> {
        let card = self.card.as_fd().try_clone_to_owned().unwrap();
        std::thread::spawn(move || {
            std::thread::sleep(delay);
            raw::fence_signal(&card, id).unwrap();
        })
    }
}

impl Default for Vgem {
    fn default() -> Self {
        Vgem::new()
    }
}
