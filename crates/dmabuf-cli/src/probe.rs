//! `dmabuf probe`: what this kernel offers.

use std::process::ExitCode;

use dmabuf::probe::{probe, Feature};

/// Arguments of `dmabuf probe`.
#[derive(clap::Args)]
pub struct Args {
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

fn row(name: &str, f: &Feature) -> String {
    format!(
        "  {:<22} {:<4} {}\n",
        name,
        if f.available { "yes" } else { "no" },
        f.detail
    )
}

/// Runs `dmabuf probe`.
pub fn run(args: Args) -> crate::CliResult {
    let r = probe();
    if args.json {
        crate::out::json(&r, true)?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut out = format!("kernel {}\n\nexporters\n", r.kernel);
    out += &row("udmabuf", &r.udmabuf.create);
    if r.heaps.is_empty() {
        out += &row(
            "DMA heaps",
            &Feature {
                available: false,
                detail: "no /dev/dma_heap (CONFIG_DMABUF_HEAPS)".into(),
            },
        );
    }
    for h in &r.heaps {
        out += &row(&format!("heap {}", h.name), &h.allocation);
    }
    out += &row("portable (memfd)", &r.portable);
    out += "\nsynchronisation\n";
    out += &row("sync-file export", &r.sync_file);
    out += "\ndevices\n";
    out += &row("FunctionFS DMABUF", &r.functionfs_dmabuf);
    out += &row("IIO DMABUF", &r.iio_dmabuf);
    out += &row("V4L2", &r.v4l2);
    out += "\nintrospection\n";
    out += &row("fdinfo", &r.fdinfo);
    out += &row("sysfs stats", &r.sysfs_stats);
    out += &row("debugfs bufinfo", &r.debugfs_bufinfo);
    out += "\n";
    out += &row("automatic backend", &r.auto_backend);
    if !r.has_dma_buf_exporter() {
        out += "\nThis kernel offers no dma-buf exporter that this process can use: \
                buffers will be portable sealed memfds, with the same API and rules.\n";
    }
    out!("{out}")?;
    Ok(ExitCode::SUCCESS)
}
