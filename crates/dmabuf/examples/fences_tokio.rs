//! Await fences with tokio: a user fence signalled by another thread and a
//! buffer's exported fence, without a thread per wait.
//!
//! `cargo run -p dmabuf --example fences_tokio --features tokio`

use std::time::Duration;

use dmabuf::{Access, FenceContext, Usage};

#[tokio::main(flavor = "current_thread")]
async fn main() -> dmabuf::Result<()> {
    let timeline = FenceContext::new("tokio-example");
    let fence = timeline.next_fence()?;
    let buf = dmabuf::Allocator::auto().allocate(4096, "awaited")?;
    // Work that writes the buffer is pending until the fence signals.
    buf.add_fence(fence.clone().into(), Usage::Write)?;
    let for_readers = buf.export_fence(Access::Read)?;

    let signaller = fence.clone();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        signaller.signal().expect("signal");
    });
    let waited = tokio::time::timeout(Duration::from_secs(5), for_readers.wait_async())
        .await
        .expect("the fence signals within 5 s");
    waited?;
    fence.wait_async().await?;
    println!(
        "both awaited; {buf} is idle for reading: {}",
        buf.is_idle(Access::Read)?
    );
    Ok(())
}
