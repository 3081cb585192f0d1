//! `dmabuf`: probe what a kernel offers, list who holds which buffers,
//! allocate, stream and benchmark. A thin layer over the `dmabuf` library.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod alloc;
mod backend;
#[cfg_attr(not(feature = "iceoryx2"), allow(dead_code))]
mod bench;
mod capture;
mod ls;
mod pattern;
mod probe;
mod stream;

/// The error type of every subcommand: a message for people.
pub type CliResult = Result<ExitCode, Box<dyn std::error::Error>>;

#[derive(Parser)]
#[command(
    name = "dmabuf",
    version,
    about = "Linux DMA-BUF buffer sharing: probe, inspect, allocate, stream, benchmark"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show what this kernel offers: exporters, heaps, sync files, devices, introspection.
    Probe(probe::Args),
    /// List the dma-bufs in this system and who holds them.
    Ls(ls::Args),
    /// Allocate a buffer, name it, fill it and hold it.
    Alloc(alloc::Args),
    /// Capture video frames from a V4L2 device straight into dma-bufs.
    Capture(capture::Args),
    /// Stream buffers from a producer process to consumer processes.
    Stream(stream::Args),
    /// Compare the stream with a bare shared-memory ring (the ideal), pipes,
    /// Unix sockets and iceoryx2.
    Bench(bench::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Probe(args) => probe::run(args),
        Command::Ls(args) => ls::run(args),
        Command::Alloc(args) => alloc::run(args),
        Command::Capture(args) => capture::run(args),
        Command::Stream(args) => stream::run(args),
        Command::Bench(args) => bench::run(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("dmabuf: {e}");
            ExitCode::FAILURE
        }
    }
}
