//! `dmabuf ls`: who holds which dma-buf.

use std::process::ExitCode;

/// Arguments of `dmabuf ls`.
#[derive(clap::Args)]
pub struct Args {}

/// Runs `dmabuf ls`.
pub fn run(_args: Args) -> crate::CliResult {
    Ok(ExitCode::SUCCESS)
}
