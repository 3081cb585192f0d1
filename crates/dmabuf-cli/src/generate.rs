//! `dmabuf completions SHELL` and `dmabuf man`: shell completions and the
//! man page, generated from the same command-line definition the command
//! parses with (so they never disagree with it).

use std::process::ExitCode;

use clap::CommandFactory;

use crate::{out, CliResult};

/// Arguments of `dmabuf completions`.
#[derive(clap::Args, Debug)]
pub struct CompletionsArgs {
    /// The shell to write completions for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// Writes the completion script for `args.shell` to standard output
/// (e.g. `dmabuf completions bash > /etc/bash_completion.d/dmabuf`).
pub fn completions(args: CompletionsArgs) -> CliResult {
    let mut cmd = crate::Cli::command();
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut cmd, "dmabuf", &mut script);
    out::write_all(&script)?;
    Ok(ExitCode::SUCCESS)
}

/// Writes the man page, `dmabuf(1)` in roff, to standard output
/// (e.g. `dmabuf man > /usr/local/share/man/man1/dmabuf.1`).
pub fn man() -> CliResult {
    let mut page = Vec::new();
    clap_mangen::Man::new(crate::Cli::command()).render(&mut page)?;
    out::write_all(&page)?;
    Ok(ExitCode::SUCCESS)
}
