//! `dmabuf`: probe what a kernel offers, list who holds which buffers,
//! allocate, stream and benchmark. A thin layer over the `dmabuf` library.
//!
//! No `unsafe` here (`#![deny(unsafe_code)]`), except in `bench::ideal`,
//! the bench's reference ring, which must not use the library it measures
//! (see that module).
#![deny(unsafe_code)]
#![warn(clippy::undocumented_unsafe_blocks)]

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[macro_use]
mod out;
mod alloc;
mod backend;
#[cfg_attr(not(feature = "iceoryx2"), allow(dead_code))]
mod bench;
mod capture;
mod generate;
mod latency;
mod ls;
mod pattern;
mod probe;
mod seconds;
mod stream;
mod tempdir;

/// The error type of every subcommand: a message for people.
pub type CliResult<T = ExitCode> = Result<T, Box<dyn std::error::Error>>;

#[derive(Parser)]
#[command(
    name = "dmabuf",
    version,
    about = "Linux DMA-BUF buffer sharing: probe, inspect, allocate, capture, stream, benchmark"
)]
pub(crate) struct Cli {
    /// Print errors only on stderr (no warnings, progress or notes).
    #[arg(
        short,
        long,
        global = true,
        conflicts_with = "verbose",
        display_order = 900
    )]
    quiet: bool,
    /// Print notes on stderr too: why `auto` chose its backend, which
    /// sources `ls` could read.
    #[arg(short, long, global = true, display_order = 901)]
    verbose: bool,
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
    /// Capture video frames from a V4L2 device straight into dma-bufs, or share them with another process.
    Capture(capture::Args),
    /// Stream buffers from a producer process to consumer processes.
    Stream(stream::Args),
    /// Compare the stream with a bare shared-memory ring (the ideal), pipes,
    /// Unix sockets and iceoryx2.
    Bench(bench::Args),
    /// Write shell completions (bash, zsh, fish, elvish, powershell) to standard output.
    Completions(generate::CompletionsArgs),
    /// Write the man page dmabuf(1) (roff) to standard output.
    Man,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    out::set_verbosity(if cli.quiet { -1 } else { i8::from(cli.verbose) });
    let result = match cli.command {
        Command::Probe(args) => probe::run(args),
        Command::Ls(args) => ls::run(args),
        Command::Alloc(args) => alloc::run(args),
        Command::Capture(args) => capture::run(args),
        Command::Stream(args) => stream::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Completions(args) => generate::completions(args),
        Command::Man => generate::man(),
    };
    // A buffered write may fail only at the flush.
    let result = result.and_then(|code| out::flush().map(|()| code).map_err(Into::into));
    match result {
        Ok(code) => code,
        // The reader closed the pipe (`dmabuf ls | head -1`): a quiet end.
        Err(e)
            if e.downcast_ref::<out::OutputError>()
                .is_some_and(|o| o.is_broken_pipe()) =>
        {
            ExitCode::SUCCESS
        }
        Err(e) => {
            // A message may quote a name from elsewhere: one line.
            errln!("dmabuf: {}", out::escape(&e.to_string()));
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;
    use proptest::prelude::*;

    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    const WORDS: &[&str] = &[
        "probe",
        "ls",
        "alloc",
        "capture",
        "stream",
        "bench",
        "--json",
        "--size",
        "--seconds",
        "--count",
        "--consumers",
        "--buffers",
        "--backend",
        "--role",
        "--socket",
        "--timeout",
        "--hold",
        "--hold-forever",
        "--name",
        "--fill",
        "--watch",
        "--pid",
        "--sort",
        "--frames",
        "--width",
        "--format",
        "--height",
        "--device",
        "--out",
        "--share",
        "NV12",
        "--worker",
        "--path",
        "--quick",
        "--help",
        "-h",
        "-q",
        "-v",
        "--csv",
        "--hold-stdin",
        "--version",
        "producer",
        "consumer",
        "-",
        "auto",
        "heap:",
        "portable",
        "pattern",
        "0x",
        "0",
    ];

    fn word() -> impl Strategy<Value = String> {
        prop_oneof![
            proptest::sample::select(WORDS).prop_map(str::to_string),
            // Numbers of every shape: the duration and size parsers' input.
            any::<f64>().prop_map(|f| f.to_string()),
            any::<u64>().prop_map(|n| n.to_string()),
            any::<i64>().prop_map(|n| format!("{n}K")),
            "[0-9]{1,25}[kKmMgGtTbBiI]{0,3}",
            "(inf|-inf|nan|NaN|1e300|-1|1e-400|\\+1)",
            any::<String>(),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        /// Whatever the arguments, parsing answers (a value or a clap
        /// error with exit code 0 or 2), never panics.
        #[test]
        fn no_argument_list_panics_the_parser(argv in proptest::collection::vec(word(), 0..7)) {
            let args = std::iter::once("dmabuf".to_string()).chain(argv);
            if let Err(e) = Cli::try_parse_from(args) {
                prop_assert!(matches!(e.exit_code(), 0 | 2), "{e}");
            }
        }
    }
}
