//! `dmabuf`: probe what a kernel offers, list who holds which buffers,
//! allocate, stream and benchmark. A thin layer over the `dmabuf` library.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[cfg_attr(not(feature = "iceoryx2"), allow(dead_code))]
mod bench;
mod ls;
mod pattern;
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
    /// List the dma-bufs in this system and who holds them.
    Ls(ls::Args),
    /// Stream buffers from a producer process to consumer processes.
    Stream(stream::Args),
    /// Compare the stream with pipes, Unix sockets, iceoryx2 and the
    /// one-process bound.
    Bench(bench::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Ls(args) => ls::run(args),
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
