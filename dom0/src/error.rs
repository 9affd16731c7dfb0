//! CLI errors, their exit codes, and how they are shown (CLI.md §7).
#![forbid(unsafe_code)]

use std::error::Error as _;
use std::io::{self, Write};

use serde::Serialize;

use crate::client::ClientError;
use crate::config::ConfigError;
use crate::output::OutputFormat;
use crate::proto::{ApiError, Cleanup, CreateError, FileProblem};

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

/// Everything that can make a CLI command fail.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Writing the result to stdout failed.
    #[error("cannot write output")]
    Output(#[source] io::Error),
    /// Encoding the result as JSON failed.
    #[error("cannot encode output as JSON")]
    Json(#[source] serde_json::Error),
    /// Connecting to dom0d or the handshake failed.
    #[error(transparent)]
    Connection(ClientError),
    /// A request to dom0d failed; `what` says what the command was doing.
    #[error("{what}")]
    Request {
        /// What failed, e.g. `cannot list domains`.
        what: String,
        /// Why.
        #[source]
        source: ClientError,
    },
    /// The domain reference matched nothing.
    #[error("{what}")]
    NoSuchDomain {
        /// e.g. `no domain with id 7`, `no domain named "web"`.
        what: String,
        /// Existing names close to the one asked for.
        suggestions: Vec<String>,
    },
    /// A config file is missing, unreadable or invalid; the message names the file and
    /// line (or the `--set` argument).
    #[error(transparent)]
    Config(ConfigError),
    /// The terminal could not be switched to raw mode for `dom0 console`.
    #[error("cannot switch the terminal to raw mode")]
    Terminal(#[source] io::Error),
    /// `shutdown --wait` / `reboot --wait`: the domain did not get there in time.
    #[error("{what}")]
    WaitTimedOut {
        /// e.g. `domain 3 (web) did not shut down within 30 s (it is running)`.
        what: String,
        /// The domain, as `dom0 destroy` takes it.
        domain: String,
    },
    /// `validate` found that a config does not make a domain (its kernel or ramdisk).
    #[error("{what}")]
    Invalid {
        /// e.g. `web.toml does not make a valid domain`.
        what: String,
        /// Why.
        #[source]
        source: CreateError,
    },
}

/// Exit status of a create or validation that failed with `e`.
#[must_use]
pub fn create_status(e: &CreateError) -> ExitStatus {
    match e {
        CreateError::InvalidConfig { .. }
        | CreateError::BadKernel { .. }
        | CreateError::BadRamdisk { .. }
        | CreateError::Unreadable {
            problem: FileProblem::Other,
            ..
        } => ExitStatus::ConfigInvalid,
        CreateError::Unreadable {
            problem: FileProblem::NotFound,
            ..
        } => ExitStatus::NotFound,
        CreateError::Unreadable {
            problem: FileProblem::PermissionDenied,
            ..
        }
        | CreateError::Failed {
            errno: Some(EPERM), ..
        } => ExitStatus::PermissionDenied,
        CreateError::NameInUse { .. } => ExitStatus::InvalidState,
        CreateError::NoForeignWindow
        | CreateError::Failed {
            errno: Some(ENOSYS),
            ..
        } => ExitStatus::NotSupported,
        CreateError::NotEnoughMemory { .. }
        | CreateError::NoFreeDomid
        | CreateError::Failed { .. } => ExitStatus::Failure,
    }
}

fn create_code(e: &CreateError) -> &'static str {
    match e {
        CreateError::InvalidConfig { .. } => "config_invalid",
        CreateError::Unreadable {
            problem: FileProblem::NotFound,
            ..
        } => "file_not_found",
        CreateError::Unreadable {
            problem: FileProblem::PermissionDenied,
            ..
        } => "permission_denied",
        CreateError::Unreadable { .. } => "file_unreadable",
        CreateError::BadKernel { .. } => "kernel_invalid",
        CreateError::BadRamdisk { .. } => "ramdisk_invalid",
        CreateError::NotEnoughMemory { .. } => "not_enough_memory",
        CreateError::NameInUse { .. } => "name_in_use",
        CreateError::NoFreeDomid => "no_free_domid",
        CreateError::NoForeignWindow => "no_foreign_window",
        CreateError::Failed { .. } => "create_failed",
    }
}

fn create_hint(e: &CreateError) -> Option<String> {
    Some(match e {
        CreateError::Unreadable {
            what,
            problem: FileProblem::NotFound,
            ..
        } => format!(
            "check \"{}\" in the config (a path in Dom0; relative paths start at the config's directory)",
            what.name()
        ),
        CreateError::Unreadable {
            problem: FileProblem::PermissionDenied,
            ..
        } => "dom0d reads the file as root; check its mode and the directories above it".to_owned(),
        CreateError::BadKernel { fix, .. } | CreateError::BadRamdisk { fix, .. } => fix.clone()?,
        CreateError::NotEnoughMemory { free_kib, .. } => {
            let free_mib = free_kib / 1024;
            if free_mib >= u64::from(shared_abi::control::MIN_DOMAIN_MEM_MIB) {
                format!(
                    "lower \"memory\" (e.g. --set memory={free_mib}) or destroy a domain; `dom0 host info` shows the free memory"
                )
            } else {
                "destroy a domain to free memory; `dom0 host info` shows the free memory".to_owned()
            }
        }
        CreateError::NameInUse { name, domid } => match domid {
            Some(d) => format!(
                "choose another name (--set name=NEW), or remove the other domain first: `dom0 destroy {}`",
                domain_ref(*d, name)
            ),
            None => "choose another name (--set name=NEW)".to_owned(),
        },
        CreateError::NoFreeDomid => "destroy a domain that is no longer needed".to_owned(),
        CreateError::NoForeignWindow => {
            "this microvisor reports no foreign window (HostInfo); update it".to_owned()
        }
        CreateError::Failed {
            cleanup: Cleanup::Failed { .. },
            domid: Some(d),
            ..
        } => format!("`dom0 destroy {d}` removes the half-built domain"),
        CreateError::Failed {
            errno: Some(ENOSYS),
            ..
        } => "this microvisor does not implement the operation".to_owned(),
        CreateError::Failed { .. } => {
            "nothing was left behind; dom0d's log has the details".to_owned()
        }
        CreateError::InvalidConfig { .. } | CreateError::Unreadable { .. } => return None,
    })
}

const EPERM: i32 = 1;
const EACCES: i32 = 13;
const ENOTTY: i32 = 25;
const ENOSYS: i32 = 38;

/// Exit status for a failure in talking to dom0d.
fn client_status(e: &ClientError) -> ExitStatus {
    match e {
        ClientError::Connect { source, .. } if source.kind() == io::ErrorKind::PermissionDenied => {
            ExitStatus::PermissionDenied
        }
        ClientError::Timeout { .. } => ExitStatus::Timeout,
        ClientError::Api(api) => match api {
            ApiError::NoSuchDomain { .. } | ApiError::UnknownDomain { .. } => ExitStatus::NotFound,
            ApiError::NoConsole { .. } | ApiError::PvShutdownUnsupported { .. } => {
                ExitStatus::NotSupported
            }
            ApiError::ConsoleBusy { .. } => ExitStatus::InvalidState,
            ApiError::DomainZero { .. }
            | ApiError::GuestRequestNotApplicable { .. }
            | ApiError::AlreadyPaused { .. }
            | ApiError::NotPaused { .. }
            | ApiError::DomainEnded { .. } => ExitStatus::InvalidState,
            ApiError::LifecycleTimeout { .. } => ExitStatus::Timeout,
            ApiError::Hypercall { errno: EPERM, .. } => ExitStatus::PermissionDenied,
            ApiError::Hypercall { errno: ENOSYS, .. } => ExitStatus::NotSupported,
            ApiError::Hypercall { .. } | ApiError::BadRecord { .. } => ExitStatus::Failure,
            ApiError::HandshakeRequired
            | ApiError::FrameTooLarge { .. }
            | ApiError::Malformed { .. }
            | ApiError::Busy => ExitStatus::ServiceUnavailable,
            ApiError::Create(e) => create_status(e),
        },
        ClientError::Connect { .. }
        | ClientError::VersionMismatch { .. }
        | ClientError::Unsupported { .. }
        | ClientError::Frame(_)
        | ClientError::Closed
        | ClientError::Unexpected { .. } => ExitStatus::ServiceUnavailable,
    }
}

fn client_code(e: &ClientError) -> &'static str {
    match e {
        ClientError::Connect { source, .. } if source.kind() == io::ErrorKind::PermissionDenied => {
            "permission_denied"
        }
        ClientError::Connect { .. } => "dom0d_unreachable",
        ClientError::VersionMismatch { .. } => "protocol_mismatch",
        ClientError::Unsupported { .. } => "unsupported_by_dom0d",
        ClientError::Timeout { .. } => "timeout",
        ClientError::Frame(_) | ClientError::Closed | ClientError::Unexpected { .. } => {
            "protocol_error"
        }
        ClientError::Api(api) => match api {
            ApiError::NoSuchDomain { .. } | ApiError::UnknownDomain { .. } => "not_found",
            ApiError::NoConsole { .. } => "no_console",
            ApiError::PvShutdownUnsupported { .. } => "pv_shutdown_unsupported",
            ApiError::GuestRequestNotApplicable { .. } => "not_applicable",
            ApiError::ConsoleBusy { .. } => "console_busy",
            ApiError::DomainZero { .. } => "domain_0_refused",
            ApiError::AlreadyPaused { .. } => "already_paused",
            ApiError::NotPaused { .. } => "not_paused",
            ApiError::DomainEnded { .. } => "domain_ended",
            ApiError::LifecycleTimeout { .. } => "timeout",
            ApiError::Hypercall { .. } => "hypercall_failed",
            ApiError::BadRecord { .. } => "bad_record",
            ApiError::Busy => "dom0d_busy",
            ApiError::HandshakeRequired
            | ApiError::FrameTooLarge { .. }
            | ApiError::Malformed { .. } => "protocol_error",
            ApiError::Create(e) => create_code(e),
        },
    }
}

/// How to name a domain on the command line in a hint: its name when that is safe to paste
/// into a shell, else its id.
#[must_use]
pub fn domain_ref(domid: u32, name: &str) -> String {
    let plain = !name.is_empty()
        && !name.starts_with('-')
        && !name.bytes().all(|b| b.is_ascii_digit())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'+'));
    if plain {
        name.to_owned()
    } else {
        domid.to_string()
    }
}

/// The hint for starting dom0d, used whenever it cannot be reached.
pub const START_DOM0D_HINT: &str =
    "is dom0d running? start it with `dom0d &` (it needs /dev/microvisor)";

fn client_hint(e: &ClientError) -> Option<String> {
    Some(match e {
        ClientError::Connect { source, .. } => match source.kind() {
            io::ErrorKind::PermissionDenied => {
                "the control socket is root-only (mode 0600): run dom0 as root".to_owned()
            }
            io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => {
                START_DOM0D_HINT.to_owned()
            }
            _ => format!("check --socket or DOM0_SOCKET; {START_DOM0D_HINT}"),
        },
        ClientError::VersionMismatch { .. } | ClientError::Unsupported { .. } => {
            "install dom0 and dom0d from the same build".to_owned()
        }
        ClientError::Timeout { .. } => {
            "dom0d may be stuck: check its log, or raise --timeout".to_owned()
        }
        ClientError::Closed | ClientError::Frame(_) => {
            format!("dom0d may have stopped: check its log; {START_DOM0D_HINT}")
        }
        ClientError::Unexpected { .. } => "install dom0 and dom0d from the same build".to_owned(),
        ClientError::Api(api) => match api {
            ApiError::NoSuchDomain { .. } | ApiError::UnknownDomain { .. } => {
                "`dom0 list` shows the domains".to_owned()
            }
            ApiError::NoConsole { .. } => "only domains built by `dom0 create` have a console \
                 dom0d serves; Domain-0's console is COM1 and boot-time DomUs print to the \
                 microvisor log"
                .to_owned(),
            ApiError::PvShutdownUnsupported { domid, name, .. } => format!(
                "`dom0 destroy {}` stops it at once",
                domain_ref(*domid, name)
            ),
            ApiError::ConsoleBusy { domid, name } => format!(
                "`dom0 console --force {}` takes it over",
                match domid {
                    Some(d) => domain_ref(*d, name),
                    None => name.clone(),
                }
            ),
            ApiError::Hypercall { errno: EPERM, .. } => {
                "the microvisor accepts control calls only from domain 0 at CPL 0".to_owned()
            }
            ApiError::Hypercall { errno: EACCES, .. } => "dom0d and the microvisor were built \
                 against different control ABI versions: rebuild them together"
                .to_owned(),
            ApiError::Hypercall { errno: ENOSYS, .. } => {
                "this microvisor does not implement the operation".to_owned()
            }
            ApiError::Hypercall { errno: ENOTTY, .. } => {
                "dom0d's --device is not the microvisor module's /dev/microvisor".to_owned()
            }
            ApiError::BadRecord { .. } => {
                "this is a microvisor bug; dom0d's log has the details".to_owned()
            }
            ApiError::Busy => "try again in a moment".to_owned(),
            ApiError::DomainEnded { domid, name, .. } => {
                format!("`dom0 destroy {}` removes it", domain_ref(*domid, name))
            }
            ApiError::LifecycleTimeout { domid, name, .. } => format!(
                "`dom0 info {}` shows its state now; the microvisor's log may say why",
                domain_ref(*domid, name)
            ),
            // Nothing to do: the domain is already as asked, or is Domain-0.
            ApiError::DomainZero { .. }
            | ApiError::GuestRequestNotApplicable { .. }
            | ApiError::AlreadyPaused { .. }
            | ApiError::NotPaused { .. } => return None,
            ApiError::HandshakeRequired
            | ApiError::FrameTooLarge { .. }
            | ApiError::Malformed { .. } => "install dom0 and dom0d from the same build".to_owned(),
            ApiError::Hypercall { .. } => return None,
            ApiError::Create(e) => return create_hint(e),
        },
    })
}

impl CliError {
    /// The exit status this error maps to.
    #[must_use]
    pub fn exit_status(&self) -> ExitStatus {
        match self {
            Self::Output(_) | Self::Json(_) | Self::Terminal(_) => ExitStatus::Failure,
            Self::Connection(e) | Self::Request { source: e, .. } => client_status(e),
            Self::NoSuchDomain { .. } => ExitStatus::NotFound,
            Self::WaitTimedOut { .. } => ExitStatus::Timeout,
            Self::Config(e) if e.is_not_found() => ExitStatus::NotFound,
            Self::Config(e) if e.is_permission_denied() => ExitStatus::PermissionDenied,
            Self::Config(ConfigError::Read { .. }) => ExitStatus::Failure,
            Self::Config(_) => ExitStatus::ConfigInvalid,
            Self::Invalid { source, .. } => create_status(source),
        }
    }

    /// A stable, machine-readable name for the error (`code` in JSON errors).
    #[must_use]
    pub fn code(&self) -> &'static str {
        match self {
            Self::Output(_) => "output_failed",
            Self::Json(_) => "encoding_failed",
            Self::Terminal(_) => "terminal_failed",
            Self::Connection(e) | Self::Request { source: e, .. } => client_code(e),
            Self::NoSuchDomain { .. } => "not_found",
            Self::WaitTimedOut { .. } => "timeout",
            Self::Config(e) if e.is_not_found() => "file_not_found",
            Self::Config(e) if e.is_permission_denied() => "permission_denied",
            Self::Config(ConfigError::Read { .. }) => "file_unreadable",
            Self::Config(_) => "config_invalid",
            Self::Invalid { source, .. } => create_code(source),
        }
    }

    /// A concrete next step, when there is one.
    #[must_use]
    pub fn hint(&self) -> Option<String> {
        match self {
            Self::Output(e) if e.kind() == io::ErrorKind::StorageFull => {
                Some("free some space where stdout is redirected".to_owned())
            }
            Self::Output(_) | Self::Json(_) => None,
            Self::Terminal(_) => {
                Some("pipe input into `dom0 console` to use it without a terminal".to_owned())
            }
            Self::Connection(e) | Self::Request { source: e, .. } => client_hint(e),
            Self::NoSuchDomain { suggestions, .. } => Some(if suggestions.is_empty() {
                "`dom0 list` shows the domains".to_owned()
            } else {
                format!("did you mean {}?", suggestions.join(", "))
            }),
            Self::Config(e) => e.hint(),
            Self::Invalid { source, .. } => create_hint(source),
            Self::WaitTimedOut { domain, .. } => Some(format!(
                "the guest may ignore the request; `dom0 destroy {domain}` stops it at once"
            )),
        }
    }

    /// Whether this is bad input to `create` or `validate`: the config file (missing,
    /// unreadable, invalid), its kernel or ramdisk, or what dom0d refused in the request
    /// itself (the name is taken, the memory does not fit). Such errors are rendered on
    /// one line ([`render`]).
    #[must_use]
    pub fn is_bad_input(&self) -> bool {
        match self {
            Self::Config(_) | Self::Invalid { .. } => true,
            Self::Request {
                source: ClientError::Api(ApiError::Create(e)),
                ..
            } => !matches!(
                e,
                CreateError::Failed { .. }
                    | CreateError::NoFreeDomid
                    | CreateError::NoForeignWindow
            ),
            _ => false,
        }
    }

    /// The error on one line: what failed, each cause after a colon, and the hint after a
    /// semicolon.
    #[must_use]
    pub fn one_line(&self) -> String {
        let mut line = self.to_string();
        for cause in self.causes() {
            line.push_str(": ");
            line.push_str(&cause);
        }
        if let Some(hint) = self.hint() {
            line.push_str("; ");
            line.push_str(&hint);
        }
        line.split_whitespace().collect::<Vec<_>>().join(" ")
    }

    /// Whether this is a write to a pipe whose reader has gone.
    #[must_use]
    pub fn is_broken_pipe(&self) -> bool {
        matches!(self, Self::Output(e) if e.kind() == io::ErrorKind::BrokenPipe)
    }

    /// The messages of the source chain, outermost first, excluding this error's own.
    /// OS errors appear without std's `(os error N)` suffix.
    #[must_use]
    pub fn causes(&self) -> Vec<String> {
        let mut causes = Vec::new();
        let mut next = self.source();
        while let Some(e) = next {
            causes.push(strip_os_error(&e.to_string()).to_owned());
            next = e.source();
        }
        causes
    }
}

/// `"No such file or directory (os error 2)"` → `"No such file or directory"`.
fn strip_os_error(text: &str) -> &str {
    match text.rfind(" (os error ") {
        Some(at) if text.ends_with(')') => &text[..at],
        _ => text,
    }
}

/// The JSON form of an error on stderr under `-o json`/`jsonl`.
#[derive(Debug, Serialize)]
struct JsonError<'a> {
    code: &'a str,
    message: String,
    causes: Vec<String>,
    hint: Option<String>,
    exit_code: u8,
}

/// Writes `e` to `stderr` in the layout of CLI.md §7 (bad input to `create` and
/// `validate` on one line, [`CliError::one_line`]), or as one JSON object for
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
    } else if e.is_bad_input() {
        writeln!(stderr, "error: {}", e.one_line())?;
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
