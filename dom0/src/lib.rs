//! # dom0: the microvisor's control CLI
//!
//! `dom0` is the thin client of the dom0 control service `dom0d` (conventions in
//! `CLI.md`). This crate holds the CLI as a library, so tests call [`run`] directly, plus
//! the `dom0` binary that wires [`run`] to the process's arguments and streams.
//!
//! ## Commands
//!
//! Only commands that work today exist; the rest of CLI.md's command set arrives with
//! `dom0d`.
//!
//! | command | output |
//! |---------|--------|
//! | `dom0 version` | the CLI version and the interface versions it was built against ([`version`]) |
//! | `dom0 completions <SHELL>` | a static completion script for bash, zsh, fish, elvish or powershell |
//!
//! Global flags, accepted before or after the subcommand: `-o, --output table|json|jsonl`
//! and `--json` (short for `-o json`). Data goes to stdout; errors go to stderr.
//!
//! ## Exit codes
//!
//! See [`ExitStatus`]: 0 success, 1 any other failure, 2 usage error, and the rest of
//! CLI.md's table, reserved for the commands that will need them.
//!
//! ## Errors
//!
//! Errors are [`CliError`]s, rendered on stderr as CLI.md §7 describes: a first line
//! `error: <what failed>`, one `caused by:` line per source, a `hint:` line when there is a
//! next step. Under `-o json`/`jsonl` the same content is one JSON object on stderr with
//! `code`, `message`, `causes`, `hint` and `exit_code`, and stdout stays empty.
#![forbid(unsafe_code)]

pub mod cli;
pub mod error;
pub mod output;
pub mod version;

use std::ffi::OsString;
use std::io::Write;

use clap::{CommandFactory, Parser};

pub use cli::{Cli, Command};
pub use error::{CliError, ExitStatus};
pub use output::OutputFormat;

/// Version of this CLI (the crate version).
pub const CLI_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Version of the control protocol between `dom0` and `dom0d` (postcard frames on the
/// control socket). Both sides exchange it in their first frame and refuse to talk on a
/// mismatch (exit 69). Bumped by every incompatible change to the control messages.
pub const CONTROL_PROTOCOL_VERSION: u32 = 1;

/// Top-level `api_version` of every JSON document the CLI prints (CLI.md §5).
pub const JSON_API_VERSION: &str = "dom0/v1";

/// The name the CLI is installed and completed under.
pub const BIN_NAME: &str = "dom0";

/// Parses `args` (including the program name), runs the command, and returns the exit
/// status. Results go to `stdout`; usage errors, diagnostics and errors go to `stderr`.
///
/// Nothing panics on bad input: clap's usage errors exit with [`ExitStatus::Usage`], and
/// failures are rendered as CLI.md §7 describes.
pub fn run<I, T>(args: I, stdout: &mut dyn Write, stderr: &mut dyn Write) -> ExitStatus
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => return report_parse_error(&e, stdout, stderr),
    };
    let format = cli.global.format();
    match execute(&cli, format, stdout) {
        Ok(()) => ExitStatus::Success,
        // The reader went away (`dom0 completions bash | head`). Nothing is left to tell
        // it, and the command itself did not fail, so exit quietly.
        Err(e) if e.is_broken_pipe() => ExitStatus::Success,
        Err(e) => {
            // If stderr is gone too there is nobody left to tell; the exit code still says
            // what happened.
            let _ = error::render(&e, format, stderr);
            e.exit_status()
        }
    }
}

/// Runs a parsed command.
///
/// # Errors
/// [`CliError`] if the output cannot be produced or written.
pub fn execute(cli: &Cli, format: OutputFormat, stdout: &mut dyn Write) -> Result<(), CliError> {
    match &cli.command {
        Command::Version => version::VersionInfo::current().print(format, stdout)?,
        Command::Completions { shell } => {
            // Generate into memory first: clap_complete panics on a failed write, and a
            // closed stdout must be an error, not a panic.
            let mut script = Vec::new();
            clap_complete::generate(*shell, &mut Cli::command(), BIN_NAME, &mut script);
            stdout.write_all(&script).map_err(CliError::Output)?;
        }
    }
    stdout.flush().map_err(CliError::Output)
}

/// Prints a clap error (or `--help`/`--version` output) and maps it to an exit status:
/// help and version to stdout with [`ExitStatus::Success`], usage errors to stderr with
/// [`ExitStatus::Usage`].
fn report_parse_error(
    e: &clap::Error,
    stdout: &mut dyn Write,
    stderr: &mut dyn Write,
) -> ExitStatus {
    let text = e.render().to_string();
    if e.use_stderr() {
        let _ = stderr.write_all(text.as_bytes());
        ExitStatus::Usage
    } else {
        match stdout
            .write_all(text.as_bytes())
            .and_then(|()| stdout.flush())
        {
            Err(io) if io.kind() != std::io::ErrorKind::BrokenPipe => {
                let _ = error::render(&CliError::Output(io), OutputFormat::Table, stderr);
                ExitStatus::Failure
            }
            _ => ExitStatus::Success,
        }
    }
}

#[cfg(test)]
mod tests;
