//! Allocate a buffer, map it, write it in a write window, read it back in a
//! read window: the library's first steps.
//!
//! `cargo run -p dmabuf --example first`

fn main() -> dmabuf::Result<()> {
    // The system heap if there is one, else udmabuf, else portable memfds.
    let alloc = dmabuf::Allocator::auto();
    let buf = alloc.allocate(1 << 20, "first")?;
    println!("{buf} on {} ({})", alloc.backend(), alloc.reason());

    let map = buf.map()?; // mapped once, shared by every handle and window
    {
        let mut w = map.write()?; // DMA_BUF_IOCTL_SYNC START|WRITE
        w.fill(0x80);
        w.write_at(0, b"hello, dma-buf")?;
        w.end()?; // END|WRITE, with its error (dropping also ends it)
    }
    let r = map.read()?; // waits for writers, then START|READ
    let mut head = [0u8; 14];
    r.read_at(0, &mut head)?;
    assert_eq!(&head, b"hello, dma-buf");
    assert!(r.bytes().iter().skip(14).all(|b| b == 0x80));
    // A write window over bytes a read window holds is refused, not aliased.
    let e = map.write().unwrap_err();
    println!("as expected: {e}");
    drop(r);
    // The one-shot forms open and close the window around a closure.
    let n = buf.read_with(|bytes| bytes.iter().filter(|&b| b == 0x80).count())?;
    println!("{n} bytes of 0x80 after the greeting");
    Ok(())
}
