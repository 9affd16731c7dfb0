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
#![deny(unsafe_code)]

pub mod cli;
pub mod client;
pub mod daemon;
pub mod device;
pub mod error;
pub mod fake;
#[macro_use]
pub mod log;
pub mod microvisor;
pub mod output;
pub mod probe;
pub mod proto;
pub mod server;
pub mod version;

use std::ffi::OsString;
use std::io::Write;

use clap::{CommandFactory, Parser};

pub use cli::{Cli, Command, HostCommand};
pub use client::{Client, ClientError};
pub use error::{CliError, ExitStatus};
pub use output::OutputFormat;

/// Version of this CLI (the crate version).
pub const CLI_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Version of the control protocol between `dom0` and `dom0d`, [`proto::PROTOCOL_VERSION`].
pub const CONTROL_PROTOCOL_VERSION: u32 = proto::PROTOCOL_VERSION;

/// Top-level `api_version` of every JSON object the CLI prints (CLI.md §5).
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

fn connect(cli: &Cli) -> Result<Client, CliError> {
    Client::connect(&cli.global.socket, cli.global.timeout).map_err(CliError::Connection)
}

fn request(what: impl Into<String>) -> impl FnOnce(ClientError) -> CliError {
    let what = what.into();
    move |source| CliError::Request { what, source }
}

fn write_out(stdout: &mut dyn Write, text: &str) -> Result<(), CliError> {
    stdout.write_all(text.as_bytes()).map_err(CliError::Output)
}

/// Finds the domain `reference` names: all digits is a domain id, anything else an exact
/// name (CLI.md §4).
///
/// # Errors
/// [`CliError::NoSuchDomain`] (with close names as suggestions), or a request error.
pub fn resolve_domain(client: &mut Client, reference: &str) -> Result<proto::Domain, CliError> {
    if !reference.is_empty() && reference.bytes().all(|b| b.is_ascii_digit()) {
        let missing = || CliError::NoSuchDomain {
            what: format!("no domain with id {reference}"),
            suggestions: Vec::new(),
        };
        let Ok(domid) = reference.parse::<u32>() else {
            return Err(missing());
        };
        return match client.domain_info(domid) {
            Ok(d) => Ok(d),
            Err(ClientError::Api(proto::ApiError::NoSuchDomain { .. })) => Err(missing()),
            Err(e) => Err(request(format!("cannot get domain {domid}"))(e)),
        };
    }
    let domains = client
        .list_domains()
        .map_err(request(format!("cannot look up domain {reference:?}")))?;
    if let Some(d) = domains.iter().find(|d| d.name == reference) {
        return Ok(d.clone());
    }
    let mut close: Vec<(usize, &str)> = domains
        .iter()
        .filter(|d| !d.name.is_empty())
        .map(|d| (edit_distance(&d.name, reference), d.name.as_str()))
        .filter(|&(dist, name)| {
            dist <= 2.max(reference.len() / 3)
                || name.to_lowercase().contains(&reference.to_lowercase())
        })
        .collect();
    close.sort_unstable();
    Err(CliError::NoSuchDomain {
        what: format!("no domain named {reference:?}"),
        suggestions: close.iter().take(3).map(|(_, n)| (*n).to_owned()).collect(),
    })
}

/// Levenshtein distance between two strings, by characters.
#[must_use]
pub fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitute = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = substitute.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// Runs a parsed command.
///
/// # Errors
/// [`CliError`] if dom0d cannot be reached or refuses, or the output cannot be produced
/// or written.
pub fn execute(cli: &Cli, format: OutputFormat, stdout: &mut dyn Write) -> Result<(), CliError> {
    match &cli.command {
        Command::Version => {
            version::VersionInfo::gather(&cli.global.socket, cli.global.timeout)
                .print(format, stdout)?;
        }
        Command::Completions { shell } => {
            // Generate into memory first: clap_complete panics on a failed write, and a
            // closed stdout must be an error, not a panic.
            let mut script = Vec::new();
            clap_complete::generate(*shell, &mut Cli::command(), BIN_NAME, &mut script);
            stdout.write_all(&script).map_err(CliError::Output)?;
        }
        Command::List => {
            let domains = connect(cli)?
                .list_domains()
                .map_err(request("cannot list domains"))?;
            write_out(stdout, &output::render_list(&domains, format)?)?;
        }
        Command::Info { domain } => {
            let d = resolve_domain(&mut connect(cli)?, domain)?;
            write_out(stdout, &output::render_domain(&d, format)?)?;
        }
        Command::Host {
            command: HostCommand::Info,
        } => {
            let host = connect(cli)?
                .host_info()
                .map_err(request("cannot get host information"))?;
            write_out(stdout, &output::render_host(&host, format)?)?;
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
