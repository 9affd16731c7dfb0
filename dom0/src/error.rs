//! CLI errors, their exit codes, and how they are shown (CLI.md §7).
#![forbid(unsafe_code)]

use std::error::Error as _;
use std::io::{self, Write};

use serde::Serialize;

use crate::output::OutputFormat;

/// Process exit codes. Stable: scripts depend on them (CLI.md §7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ExitStatus {
    /// 0: the command did what it was asked.
    Success = 0,
    /// 1: any failure without a more specific code.
    Failure = 1,
    /// 2: the command line was invalid (reported by clap).
    Usage = 2,
    /// 3: a domain, job or file was not found.
    NotFound = 3,
    /// 4: invalid state for this operation, or the console is already taken.
    InvalidState = 4,
    /// 5: timed out waiting.
    Timeout = 5,
    /// 6: not supported by the guest or the hypervisor.
    NotSupported = 6,
    /// 7: the domain config is invalid.
    ConfigInvalid = 7,
    /// 8: permission denied.
    PermissionDenied = 8,
    /// 69: dom0d is unreachable, or speaks another protocol version.
    ServiceUnavailable = 69,
    /// 130: interrupted.
    Interrupted = 130,
}

impl ExitStatus {
    /// The numeric exit code.
    #[must_use]
    pub const fn code(self) -> u8 {
        self as u8
    }
}

impl From<ExitStatus> for std::process::ExitCode {
    fn from(status: ExitStatus) -> Self {
        Self::from(status.code())
    }
}

/// Everything that can make a CLI command fail today.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Writing the result to stdout failed.
    #[error("cannot write output")]
    Output(#[source] io::Error),
    /// Encoding the result as JSON failed.
    #[error("cannot encode output as JSON")]
    Json(#[source] serde_json::Error),
}

impl CliError {
    /// The exit status this error maps to.
    #[must_use]
    pub fn exit_status(&self) -> ExitStatus {
        match self {
            Self::Output(_) | Self::Json(_) => ExitStatus::Failure,
        }
    }

    /// A stable, machine-readable name for the error (`code` in JSON errors).
    #[must_use]
    pub fn code(&self) -> &'static str {
        match self {
            Self::Output(_) => "output_failed",
            Self::Json(_) => "encoding_failed",
        }
    }

    /// A concrete next step, when there is one.
    #[must_use]
    pub fn hint(&self) -> Option<&'static str> {
        match self {
            Self::Output(e) if e.kind() == io::ErrorKind::StorageFull => {
                Some("free some space where stdout is redirected")
            }
            Self::Output(_) | Self::Json(_) => None,
        }
    }

    /// Whether this is a write to a pipe whose reader has gone.
    #[must_use]
    pub fn is_broken_pipe(&self) -> bool {
        matches!(self, Self::Output(e) if e.kind() == io::ErrorKind::BrokenPipe)
    }

    /// The messages of the source chain, outermost first, excluding this error's own.
    #[must_use]
    pub fn causes(&self) -> Vec<String> {
        let mut causes = Vec::new();
        let mut next = self.source();
        while let Some(e) = next {
            causes.push(e.to_string());
            next = e.source();
        }
        causes
    }
}

/// The JSON form of an error on stderr under `-o json`/`jsonl`.
#[derive(Debug, Serialize)]
struct JsonError<'a> {
    code: &'a str,
    message: String,
    causes: Vec<String>,
    hint: Option<&'a str>,
    exit_code: u8,
}

/// Writes `e` to `stderr` in the layout of CLI.md §7, or as one JSON object for
/// machine-readable formats.
///
/// # Errors
/// The error from writing to `stderr`.
pub fn render(e: &CliError, format: OutputFormat, stderr: &mut dyn Write) -> io::Result<()> {
    if format.is_json() {
        let doc = JsonError {
            code: e.code(),
            message: e.to_string(),
            causes: e.causes(),
            hint: e.hint(),
            exit_code: e.exit_status().code(),
        };
        let line = serde_json::to_string(&doc).map_err(io::Error::other)?;
        writeln!(stderr, "{line}")?;
    } else {
        writeln!(stderr, "error: {e}")?;
        for cause in e.causes() {
            writeln!(stderr, "  caused by: {cause}")?;
        }
        if let Some(hint) = e.hint() {
            writeln!(stderr, "  hint: {hint}")?;
        }
    }
    stderr.flush()
}
