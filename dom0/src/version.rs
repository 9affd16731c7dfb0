//! `dom0 version`.
#![forbid(unsafe_code)]

use std::io::Write;

use serde::Serialize;

use crate::error::CliError;
use crate::output::OutputFormat;

/// What `dom0 version` reports. Serialised as the JSON document
///
/// ```json
/// {"api_version": "dom0/v1", "cli": "0.1.0", "abi_interface": 1, "control_protocol": 1}
/// ```
///
/// Fields are only ever added (CLI.md §5); the service and hypervisor versions join once
/// the CLI can ask dom0d for them.
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
}

impl VersionInfo {
    /// The versions this binary was built with.
    #[must_use]
    pub fn current() -> Self {
        Self {
            api_version: crate::JSON_API_VERSION,
            cli: crate::CLI_VERSION,
            abi_interface: shared_abi::INTERFACE_VERSION,
            control_protocol: crate::CONTROL_PROTOCOL_VERSION,
        }
    }

    /// Renders the versions in `format`, newline-terminated.
    ///
    /// # Errors
    /// [`CliError::Json`] if serialisation fails.
    pub fn render(&self, format: OutputFormat) -> Result<String, CliError> {
        Ok(match format {
            OutputFormat::Table => format!(
                "cli:              {}\nabi_interface:    {}\ncontrol_protocol: {}\n",
                self.cli, self.abi_interface, self.control_protocol
            ),
            OutputFormat::Json => {
                serde_json::to_string_pretty(self).map_err(CliError::Json)? + "\n"
            }
            OutputFormat::Jsonl => serde_json::to_string(self).map_err(CliError::Json)? + "\n",
        })
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
