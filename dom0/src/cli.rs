//! The command line, as clap derive types. Doc comments are the help text.
#![forbid(unsafe_code)]

use clap::{Args, Parser, Subcommand};
use clap_complete::Shell;

use crate::output::OutputFormat;

/// Control the microvisor and its domains from dom0.
///
/// Data goes to stdout, diagnostics and errors to stderr. Exit codes: 0 success, 1 failure,
/// 2 usage error.
#[derive(Debug, Parser)]
#[command(name = crate::BIN_NAME, version, arg_required_else_help = true)]
pub struct Cli {
    /// Flags accepted before or after the subcommand.
    #[command(flatten)]
    pub global: GlobalArgs,

    /// The subcommand to run.
    #[command(subcommand)]
    pub command: Command,
}

/// Flags that apply to every subcommand.
#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Output format
    #[arg(
        short = 'o',
        long = "output",
        value_enum,
        global = true,
        value_name = "FORMAT"
    )]
    pub output: Option<OutputFormat>,

    /// Short for `-o json`
    #[arg(long, global = true, conflicts_with = "output")]
    pub json: bool,
}

impl GlobalArgs {
    /// The output format the flags ask for; tables by default.
    #[must_use]
    pub fn format(&self) -> OutputFormat {
        if self.json {
            OutputFormat::Json
        } else {
            self.output.unwrap_or_default()
        }
    }
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the CLI version and the interface versions it was built against
    ///
    /// Prints the CLI version, the guest ABI interface version (shared-abi) and the
    /// dom0/dom0d control protocol version. Needs neither dom0d nor the hypervisor.
    Version,

    /// Print a shell completion script to stdout
    ///
    /// For example: `dom0 completions bash > /etc/bash_completion.d/dom0`, or
    /// `dom0 completions zsh > "${fpath[1]}/_dom0"`.
    Completions {
        /// Shell to generate the script for
        #[arg(value_enum)]
        shell: Shell,
    },
}
