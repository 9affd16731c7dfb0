//! The command line, as clap derive types. Doc comments are the help text.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use clap_complete::Shell;

use crate::config::Override;
use crate::output::OutputFormat;

/// Control the microvisor and its domains from dom0.
///
/// The CLI talks to the dom0d service over its control socket. Data goes to stdout,
/// diagnostics and errors to stderr. Exit codes: 0 success, 1 failure, 2 usage error,
/// 3 no such domain or file, 4 wrong state for the operation (or Domain-0, which lifecycle
/// commands refuse; or a domain name already in use), 5 timed out, 6 not supported,
/// 7 invalid config, 8 permission denied, 69 dom0d unreachable or speaking another
/// protocol version.
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

    /// dom0d's control socket
    #[arg(
        long,
        global = true,
        env = "DOM0_SOCKET",
        value_name = "PATH",
        default_value = crate::server::DEFAULT_SOCKET
    )]
    pub socket: PathBuf,

    /// Limit on each reply from dom0d, and on `shutdown --wait`/`reboot --wait`, e.g.
    /// `30s`, `500ms`, `2m`
    #[arg(
        long,
        global = true,
        value_name = "DURATION",
        default_value = "30s",
        value_parser = parse_duration
    )]
    pub timeout: Duration,
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

/// Parses `30s`, `500ms`, `2m`, or a bare number of seconds. Zero is refused: every wait
/// has a limit.
///
/// # Errors
/// A message naming the accepted forms.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let (digits, unit) = s
        .find(|c: char| !c.is_ascii_digit())
        .map_or((s, ""), |at| s.split_at(at));
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{s:?} is not a duration; use e.g. 30s, 500ms or 2m"))?;
    let d = match unit {
        "" | "s" => Duration::from_secs(n),
        "ms" => Duration::from_millis(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        _ => return Err(format!("unknown unit {unit:?} in {s:?}; use ms, s or m")),
    };
    if d.is_zero() {
        return Err("the timeout must be above zero".to_owned());
    }
    Ok(d)
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// List the domains, one line each
    ///
    /// Columns: ID, NAME, STATE (r running, b blocked, p paused, s shut down, then the
    /// shutdown reason: o poweroff, r reboot, s suspend, c crash, w watchdog), MEM(MiB),
    /// VCPUS, PCPU and TIME(s), the CPU seconds used. `-o json` prints an array of objects.
    List,

    /// Show one domain
    ///
    /// DOM is a domain id (all digits) or an exact name.
    Info {
        /// Domain id or name
        #[arg(value_name = "DOM")]
        domain: String,
    },

    /// List the disks dom0d serves a domain
    ///
    /// DOM is a domain id (all digits) or an exact name. Columns: VDEV, BE-STATE and
    /// FE-STATE (the back-end's and front-end's xenbus states), PATH, ACCESS (rw or ro)
    /// and SECTORS (512 bytes). `-o json` prints an object with a `disks` array. Exit 3
    /// if there is no such domain.
    BlockList {
        /// Domain id or name
        #[arg(value_name = "DOM")]
        domain: String,
    },

    /// List the network interfaces dom0d serves a domain
    ///
    /// DOM is a domain id (all digits) or an exact name. Columns: IDX (the vif's handle),
    /// MAC, IP (the address hint given to the guest, `-` if none), BRIDGE, TAP (its
    /// interface in Dom0), BE-STATE and FE-STATE (the back-end's and front-end's xenbus
    /// states), TX-PKTS (packets the guest sent), RX-PKTS (packets delivered to it) and
    /// DROPS (frames for it that were dropped). `-o json` prints an object with a `vifs`
    /// array, with byte and error counters too. Exit 3 if there is no such domain.
    NetworkList {
        /// Domain id or name
        #[arg(value_name = "DOM")]
        domain: String,
    },

    /// Pause a domain: the microvisor stops scheduling it
    ///
    /// DOM is a domain id (all digits) or an exact name. Returns once the domain is
    /// paused; prints nothing unless `-o json`. Exit 3 if there is no such domain, 4 if
    /// it is Domain-0, already paused, shut down or crashed, 5 if it did not show as
    /// paused within dom0d's limit (2 s).
    Pause {
        /// Domain id or name
        #[arg(value_name = "DOM")]
        domain: String,
    },

    /// Unpause a paused domain
    ///
    /// DOM is a domain id (all digits) or an exact name. Prints nothing unless `-o json`.
    /// Exit 3 if there is no such domain, 4 if it is Domain-0, not paused, shut down or
    /// crashed.
    #[command(alias = "resume")]
    Unpause {
        /// Domain id or name
        #[arg(value_name = "DOM")]
        domain: String,
    },

    /// Destroy a domain at once, in any state, and free its memory
    ///
    /// DOM is a domain id (all digits) or an exact name. The guest is not asked to shut
    /// down. Returns once the domain is gone from the list; prints nothing unless
    /// `-o json`. Exit 3 if there is no such domain, 4 if it is Domain-0, 5 if it was
    /// still listed after dom0d's limit (5 s).
    Destroy {
        /// Domain id or name
        #[arg(value_name = "DOM")]
        domain: String,
    },

    /// Ask a domain's guest to power off (PV shutdown through xenstore)
    ///
    /// DOM is a domain id (all digits) or an exact name. Writes `poweroff` to the guest's
    /// `control/shutdown` and returns; the domain's on_poweroff then applies when it has
    /// shut down. With `--wait`, returns once it has shut down, crashed or is gone, or
    /// fails after `--timeout` (the global option, default 30 s). Exit 3 no such domain, 4
    /// Domain-0 or a domain that has already ended, 5 timed out, 6 the guest never
    /// announced PV shutdown support (`control/feature-poweroff`) or dom0d serves no
    /// xenstore for it.
    Shutdown {
        /// Domain id or name
        #[arg(value_name = "DOM")]
        domain: String,

        /// Wait (at most the global `--timeout`) until the domain has shut down
        #[arg(short, long)]
        wait: bool,
    },

    /// Ask a domain's guest to reboot (PV reboot through xenstore)
    ///
    /// As `shutdown`, with `reboot` written (the guest must have announced
    /// `control/feature-reboot`); on_reboot (default: restart) then applies. With
    /// `--wait`, returns once this instance of the domain has ended: shut down, crashed,
    /// or gone (a restart gets a new domain id).
    Reboot {
        /// Domain id or name
        #[arg(value_name = "DOM")]
        domain: String,

        /// Wait (at most the global `--timeout`) until this instance of the domain has
        /// ended
        #[arg(short, long)]
        wait: bool,
    },

    /// Print a domain's console output (raw bytes)
    ///
    /// DOM is a domain id (all digits) or an exact name; a domain that is gone still has
    /// its history for a while. dom0d keeps the last 64 KiB of output per domain name, also
    /// across restarts by on_reboot/on_crash. With `-f`, keeps printing new output until
    /// the domain is destroyed (or Ctrl-C). Exit 3 if there is no such domain, 6 if dom0d
    /// serves no console for it (Domain-0, boot-time domains).
    Logs {
        /// Domain id or name
        #[arg(value_name = "DOM")]
        domain: String,

        /// Follow new output until the domain is destroyed
        #[arg(short, long)]
        follow: bool,
    },

    /// Attach to a domain's console: its history, then live output, and input to it
    ///
    /// DOM is a domain id (all digits) or an exact name. `^]` detaches. On a terminal, it
    /// is switched to raw mode for the session (restored on every exit path). When stdin
    /// is not a terminal, the attach is NOT read-only: stdin is forwarded to the guest
    /// until end of file, then output is still printed for 1 s, e.g. `printf 'help\r' |
    /// dom0 console DOM` (use `dom0 logs -f DOM` to watch without writing). One client may
    /// be attached at a time, piped or not: another attach exits 4 unless `--force`, which
    /// detaches the first. Exit 3 if there is no such domain, 6 if dom0d serves no console
    /// for it.
    Console {
        /// Domain id or name
        #[arg(value_name = "DOM")]
        domain: String,

        /// Take the console over from a client that is attached
        #[arg(long)]
        force: bool,
    },

    /// Check a domain config and its kernel, without creating anything
    ///
    /// CFG is a config file, or NAME for /etc/dom0/domains/NAME.toml (no slash, no
    /// `.toml`). Applies the `--set` overrides, checks every key, then the kernel (an
    /// x86-64 ELF with a PVH entry note whose segments fit the domain's memory) and the
    /// ramdisk, and prints the effective config and what would be loaded where. Works
    /// without dom0d; `create --dry-run` also checks the host (free memory, unique name).
    /// Exit 7 if the config or kernel is invalid, 3 if a file is missing.
    Validate {
        /// Config file, or the name of one in /etc/dom0/domains
        #[arg(value_name = "CFG")]
        config: String,

        /// Override a config key (repeatable, applied in order), e.g. `--set memory=64M`;
        /// the value is read as TOML, or as a string if it is not TOML
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<Override>,
    },

    /// Build a domain from a config file and start it
    ///
    /// CFG is a config file, or NAME for /etc/dom0/domains/NAME.toml. dom0d checks
    /// everything first (config, kernel, ramdisk, free memory, unique name), then builds
    /// the domain and unpauses it; nothing is left behind if any step fails. Prints the
    /// new domain's id, name and state (`-o json`: an object). Exit 7 if the config or
    /// kernel is invalid, 3 if a file is missing, 4 if the name is taken, 1 if memory is
    /// short.
    Create {
        /// Config file, or the name of one in /etc/dom0/domains
        #[arg(value_name = "CFG")]
        config: String,

        /// Override a config key (repeatable, applied in order), e.g. `--set memory=64M`;
        /// the value is read as TOML, or as a string if it is not TOML
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<Override>,

        /// Leave the new domain paused (`dom0 unpause` starts it)
        #[arg(long)]
        paused: bool,

        /// Run every check and print what would be built, but create nothing
        #[arg(long)]
        dry_run: bool,
    },

    /// Inspect the host
    Host {
        /// What to show.
        #[command(subcommand)]
        command: HostCommand,
    },

    /// Print the versions of the CLI, dom0d and the microvisor
    ///
    /// Prints the CLI version and the interface versions it was built against and, when
    /// dom0d answers, dom0d's version and protocol and the microvisor's version and
    /// control ABI version. Succeeds while dom0d is down.
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

/// `dom0 host` subcommands.
#[derive(Debug, Subcommand)]
pub enum HostCommand {
    /// Show the host: CPUs, memory, TSC frequency, uptime and the microvisor's version
    Info,
}
