//! DRM PRIME against the real kernel, with vgem as the DRM device, and
//! frames on real dma-bufs (udmabuf and the system heap).

// One module, so that the lab's filter `prime` selects every test here.
mod prime {
    use std::os::fd::AsFd;
    use std::time::Duration;

    use dmabuf::endpoint::{DrmDevice, GemHandle};
    use dmabuf::frame::{FrameOptions, Placement, Plane};
    use dmabuf::mapping::{ReadOnly, Window, WriteOnly};
    use dmabuf::{
        Allocate, Buffer, BufferKind, DmaBuf, Errno, ErrorKind, Fourcc, Frame, Heap, Memfd,
        Modifier, Portable, Udmabuf,
    };
    use dmabuf_lab_guest::{load_module, require_lab, wait_for_path};

    const PAGE: u64 = 4096;

    // The only place these tests touch bytes through a window: the window's
    // byte access is the part of the API most likely to change.
    fn put(w: &mut Window<'_, WriteOnly>, at: usize, bytes: &[u8]) {
        w.bytes_mut().write_at(at, bytes).unwrap();
    }
    fn get(w: &Window<'_, ReadOnly>) -> Vec<u8> {
        w.to_vec()
    }

    fn vgem() -> DrmDevice {
        require_lab();
        load_module("vgem", "").expect("vgem loads");
        wait_for_path("/dev/dri/card0", Duration::from_secs(5)).unwrap();
        let d = DrmDevice::open("/dev/dri/card0").unwrap();
        assert_eq!(d.driver(), "vgem");
        d
    }

    fn udmabuf(pages: u64) -> Buffer {
        require_lab();
        let dev = Udmabuf::open().unwrap();
        let m = Memfd::new("prime", pages * PAGE).unwrap();
        Buffer::from_dma_buf(dev.create(&m, 0, pages * PAGE).unwrap())
    }

    fn heap(pages: u64) -> Buffer {
        require_lab();
        Heap::open("system")
            .unwrap()
            .allocate(pages * PAGE, "prime")
            .unwrap()
    }

    fn inode(b: &Buffer) -> u64 {
        b.dma_buf().expect("a dma-buf").inode()
    }

    /// The dma-buf file's reference count (`count` in fdinfo).
    fn file_refs(b: &Buffer) -> i64 {
        b.dma_buf().unwrap().fdinfo().unwrap().count.unwrap()
    }

    /// How many of this process's fds are the dma-buf of inode `ino`.
    fn fds_on(ino: u64) -> usize {
        std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .filter_map(|e| std::fs::metadata(e.ok()?.path()).ok())
            .filter(|m| std::os::unix::fs::MetadataExt::ino(m) == ino)
            .count()
    }

    fn write_all(b: &Buffer, byte: u8) {
        let m = b.map().unwrap();
        let mut w = m.write().unwrap();
        let len = m.len();
        put(&mut w, 0, &vec![byte; len]);
    }

    fn read_all(b: &Buffer) -> Vec<u8> {
        get(&b.map_read_only().unwrap().read().unwrap())
    }

    #[test]
    fn device_reports_prime_import_and_export() {
        let d = vgem();
        assert!(d.can_import() && d.can_export(), "{d:?}");
        // `AsFd` lends the device file itself.
        let node = rustix::fs::stat("/dev/dri/card0").unwrap();
        assert_eq!(rustix::fs::fstat(d.as_fd()).unwrap().st_rdev, node.st_rdev);
    }

    #[test]
    fn an_imported_buffer_exports_back_as_the_same_dma_buf() {
        let d = vgem();
        for (b, exporter) in [(udmabuf(2), "udmabuf"), (heap(2), "system")] {
            let h = d.import(&b).unwrap();
            assert_ne!(h.handle(), 0);
            let e = h.export().unwrap();
            // The kernel hands back the dma-buf the GEM object was imported
            // from (drm_gem_prime_handle_to_fd: obj->import_attach->dmabuf):
            // same inode, same exporter, same memory.
            assert_eq!(inode(&e), inode(&b), "{exporter}");
            assert_eq!(e.dma_buf().unwrap().exporter().unwrap(), exporter);
            assert_eq!(e.size(), b.size());
            assert!(e.is_writable());
            write_all(&b, 0x5a);
            assert!(read_all(&e).iter().all(|&x| x == 0x5a), "{exporter}");
            write_all(&e, 0xc3);
            assert!(read_all(&b).iter().all(|&x| x == 0xc3), "{exporter}");
        }
    }

    #[test]
    fn importing_twice_gives_one_handle_closed_at_the_last_drop() {
        let d = vgem();
        for b in [udmabuf(1), heap(1)] {
            let refs = file_refs(&b);
            let fds = fds_on(inode(&b));
            assert_eq!(fds, 1);
            let h1 = d.import(&b).unwrap();
            // Three references on the dma-buf file, and no fd: the
            // attachment's (drm_gem_prime_import_dev), the GEM object's
            // `obj->dma_buf` (drm_gem_prime_fd_to_handle) and the file's
            // PRIME lookup entry's (drm_prime_add_buf_handle).
            assert_eq!(file_refs(&b), refs + 3);
            assert_eq!(fds_on(inode(&b)), fds);
            let h2 = d.import(&b).unwrap();
            assert_eq!(h1.handle(), h2.handle(), "the kernel dedups imports");
            assert_eq!(file_refs(&b), refs + 3);
            let h3 = h2.clone();
            let raw = h1.handle();
            drop(h1);
            drop(h2);
            // One GemHandle is left: the handle must still be open.
            assert_eq!(file_refs(&b), refs + 3);
            let e = h3.export().unwrap();
            assert_eq!(inode(&e), inode(&b));
            assert_eq!(fds_on(inode(&b)), fds + 1);
            drop(e);
            assert_eq!(fds_on(inode(&b)), fds);
            drop(h3);
            // Closed: the kernel no longer knows the handle in this file, and
            // the dma-buf's reference is back.
            assert_eq!(
                dmabuf_lab_guest::sys::drm::prime_handle_to_fd(
                    d.fd(),
                    raw,
                    dmabuf_lab_guest::sys::drm::DRM_CLOEXEC | dmabuf_lab_guest::sys::drm::DRM_RDWR
                )
                .map(drop),
                Err(Errno::NOENT)
            );
            assert_eq!(file_refs(&b), refs);
        }
        assert_eq!(d.open_handles(), 0);
    }

    #[test]
    fn imports_racing_the_last_drop_never_get_a_closed_handle() {
        // Without the device's lock, one thread's GEM_CLOSE (last drop)
        // could remove the handle another thread's import just got back
        // from the kernel (the same number, deduplicated).
        let d = vgem();
        let b = udmabuf(1);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..200 {
                        let h = d.import(&b).unwrap();
                        let fd = dmabuf_lab_guest::sys::drm::prime_handle_to_fd(
                            d.fd(),
                            h.handle(),
                            dmabuf_lab_guest::sys::drm::DRM_CLOEXEC,
                        );
                        assert!(fd.is_ok(), "handle {} was closed: {fd:?}", h.handle());
                    }
                });
            }
        });
        assert_eq!(d.open_handles(), 0);
    }

    #[test]
    fn handles_belong_to_one_open_file() {
        let (d1, d2) = (vgem(), vgem());
        let b = udmabuf(1);
        let h1 = d1.import(&b).unwrap();
        let h2 = d2.import(&b).unwrap();
        // Closing one file's handle leaves the other file's alone.
        drop(h1);
        assert_eq!(inode(&h2.export().unwrap()), inode(&b));
        assert_eq!((d1.open_handles(), d2.open_handles()), (0, 1));
    }

    #[test]
    fn non_dma_bufs_are_refused_with_a_named_cause() {
        let d = vgem();
        let p = Portable.allocate(PAGE, "prime").unwrap();
        let e = d.import(&p).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
        assert!(
            e.to_string()
                .contains("a portable buffer is not a dma-buf; DRM PRIME imports dma-bufs only"),
            "{e}"
        );
        let m = Memfd::new("prime", PAGE).unwrap();
        let e = d.import_fd(m.as_fd()).unwrap_err();
        assert!(e.to_string().contains("not a dma-buf"), "{e}");
        assert_eq!(e.errno(), Some(Errno::INVAL));
        // The kernel's own answer, which the library's refusal matches.
        assert_eq!(
            dmabuf_lab_guest::sys::drm::prime_fd_to_handle(d.fd(), &m).map(drop),
            Err(Errno::INVAL)
        );
        assert_eq!(d.open_handles(), 0);
        let e = DrmDevice::open("/dev/udmabuf").unwrap_err();
        assert!(e.to_string().contains("not a DRM device"), "{e}");
    }

    #[test]
    fn a_vgem_object_exports_as_drm_and_imports_back_to_its_own_handle() {
        let d = vgem();
        let (h, pitch) = d.create_dumb(1024, 2, 32).unwrap();
        assert_eq!(pitch, 4096);
        let e = h.export().unwrap();
        // DRM's PRIME export names the exporter after the drm module.
        assert_eq!(e.kind(), &BufferKind::Imported("drm".into()));
        assert_eq!(e.dma_buf().unwrap().exporter().unwrap(), "drm");
        assert_eq!(e.size(), 2 * PAGE);
        // Exporting again gives the same dma-buf (the object keeps it).
        let e2 = h.export().unwrap();
        assert_eq!(inode(&e2), inode(&e));
        // Importing its own export gives the object's handle back.
        let back = d.import(&e).unwrap();
        assert_eq!(back.handle(), h.handle());
        assert_eq!(d.open_handles(), 1);
        write_all(&e, 0x11);
        assert!(read_all(&e2).iter().all(|&x| x == 0x11));
        drop(h);
        // `back` still holds the handle open.
        assert_eq!(inode(&back.export().unwrap()), inode(&e));
        let raw = back.handle();
        drop(back);
        assert_eq!(
            dmabuf_lab_guest::sys::drm::prime_handle_to_fd(
                d.fd(),
                raw,
                dmabuf_lab_guest::sys::drm::DRM_CLOEXEC
            )
            .map(drop),
            Err(Errno::NOENT)
        );
    }

    fn allocators() -> Vec<(&'static str, Box<dyn Allocate>)> {
        require_lab();
        vec![
            ("udmabuf", Box::new(Udmabuf::open().unwrap())),
            ("heap", Box::new(Heap::open("system").unwrap())),
        ]
    }

    fn pattern(plane: usize, len: usize) -> Vec<u8> {
        (0..len)
            .map(|k| (k as u8).wrapping_mul(7) ^ (0x30 + plane as u8))
            .collect()
    }

    #[test]
    fn nv12_frames_on_real_dma_bufs_keep_every_plane() {
        let d = vgem();
        for (kind, alloc) in allocators() {
            for placement in [Placement::Contiguous, Placement::PerPlane] {
                let opts = FrameOptions {
                    placement,
                    name: "nv12".into(),
                    ..FrameOptions::default()
                };
                let f = Frame::allocate(alloc.as_ref(), Fourcc::NV12, 320, 242, &opts).unwrap();
                let what = format!("{kind} {placement:?} {f}");
                assert_eq!(f.to_string(), "NV12 320x242 (LINEAR), 2 planes");
                for b in f.buffers() {
                    assert!(b.dma_buf().is_some(), "{what}");
                }
                for i in 0..2 {
                    let pm = f.map_plane(i, true).unwrap();
                    let mut w = pm.write().unwrap();
                    put(&mut w, 0, &pattern(i, pm.len()));
                }
                for i in 0..2 {
                    let p = f.plane(i).unwrap();
                    let len = p.stride as usize * [242, 121][i];
                    let whole = read_all(&p.buffer);
                    let at = p.offset as usize;
                    assert_eq!(
                        &whole[at..at + len],
                        &pattern(i, len)[..],
                        "{what} plane {i}"
                    );
                    assert_eq!(
                        get(&f.map_plane(i, false).unwrap().read().unwrap()),
                        pattern(i, len)
                    );
                }
                // Every buffer goes to the device once, and comes back as the
                // same memory.
                let handles: Vec<GemHandle> = d.import_frame(&f).unwrap();
                assert_eq!(handles.len(), f.buffers().len(), "{what}");
                for (h, b) in handles.iter().zip(f.buffers()) {
                    assert_eq!(inode(&h.export().unwrap()), inode(b), "{what}");
                }
            }
        }
        assert_eq!(d.open_handles(), 0);
    }

    #[test]
    fn frames_count_two_handles_on_one_dma_buf_as_one_buffer_and_refuse_bad_planes() {
        let b = heap(1);
        let again = Buffer::from_dma_buf(DmaBuf::from_fd(b.try_clone_fd().unwrap()).unwrap());
        let f = Frame::new(
            Fourcc::NV12,
            Modifier::LINEAR,
            64,
            32,
            [
                Plane {
                    buffer: b.clone(),
                    offset: 0,
                    stride: 64,
                },
                Plane {
                    buffer: again.clone(),
                    offset: 2048,
                    stride: 64,
                },
            ],
        )
        .unwrap();
        assert_eq!(f.buffers().len(), 1);
        // A plane that does not fit its real dma-buf is refused before any
        // device sees it.
        let e = Frame::new(
            Fourcc::NV12,
            Modifier::LINEAR,
            64,
            32,
            [
                Plane {
                    buffer: b.clone(),
                    offset: 0,
                    stride: 64,
                },
                Plane {
                    buffer: again,
                    offset: 3584,
                    stride: 64,
                },
            ],
        )
        .unwrap_err();
        assert!(
        e.to_string()
            .contains("plane 1 does not fit its buffer: offset 3584 + stride 64 × 16 rows = 4608 bytes > buffer size 4096"),
        "{e}"
    );
    }
}
