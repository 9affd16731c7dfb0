//! `dom0 version`.
#![forbid(unsafe_code)]

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use serde::Serialize;

use crate::client::{Client, ClientError};
use crate::error::CliError;
use crate::output::OutputFormat;
use crate::proto::os_error_text;

/// What `dom0 version` reports. Serialised as the JSON document
///
/// ```json
/// {"api_version": "dom0/v1", "cli": "0.1.0", "abi_interface": 1, "control_protocol": 1,
///  "dom0d": {"version": "0.1.0", "control_protocol": 1, "control_version": 1},
///  "dom0d_error": null,
///  "microvisor": {"version": "0.1.0", "control_version": 1},
///  "microvisor_error": null}
/// ```
///
/// `dom0d` is `null` when dom0d cannot be reached (`dom0d_error` says why), `microvisor`
/// is `null` when dom0d could not ask it (`microvisor_error` says why). Fields are only
/// ever added (CLI.md §5).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VersionInfo {
    /// JSON schema version, [`crate::JSON_API_VERSION`].
    pub api_version: &'static str,
    /// This CLI's version, [`crate::CLI_VERSION`].
    pub cli: &'static str,
    /// The guest ABI interface version this build uses, `shared_abi::INTERFACE_VERSION`.
    pub abi_interface: u32,
    /// The dom0/dom0d control protocol version, [`crate::CONTROL_PROTOCOL_VERSION`].
    pub control_protocol: u32,
    /// dom0d's versions, when it answered.
    pub dom0d: Option<Dom0dVersion>,
    /// Why dom0d's versions are missing (or, for a protocol mismatch, why it would not talk).
    pub dom0d_error: Option<String>,
    /// The microvisor's versions, as dom0d reported them.
    pub microvisor: Option<MicrovisorVersionJson>,
    /// Why the microvisor's versions are missing.
    pub microvisor_error: Option<String>,
}

/// dom0d's part of [`VersionInfo`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Dom0dVersion {
    /// dom0d's version.
    pub version: String,
    /// dom0d's control protocol version.
    pub control_protocol: u32,
    /// The microvisor control ABI version dom0d was built against (`null` if dom0d would
    /// not say, because it speaks another protocol).
    pub control_version: Option<u64>,
}

/// The microvisor's part of [`VersionInfo`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MicrovisorVersionJson {
    /// The microvisor's version string.
    pub version: String,
    /// Its control ABI version.
    pub control_version: u32,
}

/// Renders a client error and its causes on one line, for the table and `*_error` fields.
fn one_line(e: &ClientError) -> String {
    let mut text = e.to_string();
    let mut next = std::error::Error::source(e);
    while let Some(cause) = next {
        text.push_str(": ");
        text.push_str(&match cause.downcast_ref::<std::io::Error>() {
            Some(io) => os_error_text(io),
            None => cause.to_string(),
        });
        next = cause.source();
    }
    text
}

impl VersionInfo {
    /// The versions this binary was built with, nothing else.
    #[must_use]
    pub fn current() -> Self {
        Self {
            api_version: crate::JSON_API_VERSION,
            cli: crate::CLI_VERSION,
            abi_interface: shared_abi::INTERFACE_VERSION,
            control_protocol: crate::CONTROL_PROTOCOL_VERSION,
            dom0d: None,
            dom0d_error: None,
            microvisor: None,
            microvisor_error: None,
        }
    }

    /// [`current`](Self::current) plus whatever dom0d at `socket` reports. Never fails:
    /// what cannot be learnt is `None` with the reason in the `*_error` field.
    #[must_use]
    pub fn gather(socket: &Path, timeout: Duration) -> Self {
        let mut info = Self::current();
        let mut client = match Client::connect(socket, timeout) {
            Ok(c) => c,
            Err(e) => {
                if let ClientError::VersionMismatch {
                    theirs, software, ..
                } = &e
                {
                    info.dom0d = Some(Dom0dVersion {
                        version: software
                            .strip_prefix("dom0d ")
                            .unwrap_or(software)
                            .to_owned(),
                        control_protocol: *theirs,
                        control_version: None,
                    });
                }
                info.dom0d_error = Some(one_line(&e));
                info.microvisor_error = Some("dom0d was not asked".to_owned());
                return info;
            }
        };
        match client.version() {
            Ok(v) => {
                info.dom0d = Some(Dom0dVersion {
                    version: v.dom0d,
                    control_protocol: v.protocol,
                    control_version: Some(v.control_version_built),
                });
                match v.microvisor {
                    Ok(m) => {
                        info.microvisor = Some(MicrovisorVersionJson {
                            version: m.version,
                            control_version: m.control_version,
                        });
                    }
                    Err(e) => info.microvisor_error = Some(e.to_string()),
                }
            }
            Err(e) => {
                info.dom0d_error = Some(one_line(&e));
                info.microvisor_error = Some("dom0d did not say".to_owned());
            }
        }
        info
    }

    /// Renders the versions in `format`, newline-terminated.
    ///
    /// # Errors
    /// [`CliError::Json`] if serialisation fails.
    pub fn render(&self, format: OutputFormat) -> Result<String, CliError> {
        if format.is_json() {
            return crate::output::json_doc(self, format);
        }
        let dom0d = match (&self.dom0d, &self.dom0d_error) {
            (Some(d), None) => format!("{} (control protocol {})", d.version, d.control_protocol),
            (Some(d), Some(e)) => format!(
                "{} (control protocol {}): {e}",
                d.version, d.control_protocol
            ),
            (None, Some(e)) => format!("unavailable: {e}"),
            (None, None) => "not asked".to_owned(),
        };
        let microvisor = match (&self.microvisor, &self.microvisor_error) {
            (Some(m), _) => format!("{} (control version {})", m.version, m.control_version),
            (None, Some(e)) => format!("unavailable: {e}"),
            (None, None) => "not asked".to_owned(),
        };
        Ok(format!(
            "cli:              {}\nabi_interface:    {}\ncontrol_protocol: {}\n\
             dom0d:            {dom0d}\nmicrovisor:       {microvisor}\n",
            self.cli, self.abi_interface, self.control_protocol
        ))
    }

    /// Writes [`render`](Self::render)'s output to `out`.
    ///
    /// # Errors
    /// [`CliError::Json`] or [`CliError::Output`].
    pub fn print(&self, format: OutputFormat, out: &mut dyn Write) -> Result<(), CliError> {
        out.write_all(self.render(format)?.as_bytes())
            .map_err(CliError::Output)
    }
}
