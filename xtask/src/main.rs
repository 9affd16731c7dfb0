//! `cargo xtask`: build, boot, test and benchmark the microvisor under QEMU.
//!
//! Run `cargo xtask --help`; the doc comments below are the help text.

mod bench;
mod build;
mod image;
mod provision;
mod qemu;
mod scenario;
mod serial;
#[cfg(test)]
mod testkernel;

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};

use crate::bench::Benchmark;
use crate::build::{Artifact, Profile, artifact_path, display_path, xtask_dir};
use crate::image::GuestArg;
use crate::qemu::{QemuConfig, RunOptions, Verdict};

/// Build, boot, test and benchmark the microvisor under QEMU (TCG, AMD SVM).
///
/// Bare-metal images are built for x86_64-unknown-none into
/// target/x86_64-unknown-none/<profile>/; bundles and logs go to target/xtask/.
/// QEMU is installed with apt-get when it is missing and xtask runs as root.
#[derive(Debug, Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// What to boot: shared by `run` and `image`.
#[derive(Debug, Args)]
struct BootArgs {
    /// Guests to start, comma-separated: GUEST or GUEST:CMDLINE, where GUEST is hello,
    /// hostile or bench. A guest listed more than once is named GUEST-1, GUEST-2, ...
    #[arg(
        long,
        value_name = "LIST",
        value_delimiter = ',',
        default_value = "hello,hello"
    )]
    guests: Vec<GuestArg>,
    /// Use the dev profile instead of release.
    #[arg(long)]
    debug: bool,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Build the microvisor and every guest kernel (hello, hostile, bench).
    Build {
        /// Build the dev profile instead of release.
        #[arg(long)]
        debug: bool,
    },
    /// Build, write a boot bundle and boot it in QEMU.
    ///
    /// The microvisor log (COM2, with guest console output) streams to the terminal and
    /// to target/xtask/run/serial.log; COM1 goes to target/xtask/run/com1.log. The
    /// microvisor is started with `exit_on_idle`, so QEMU exits once every domain has
    /// finished; Ctrl-C stops it earlier. xtask exits 0 only when every domain powered off.
    Run {
        /// Unattended run: apply a 300 s timeout unless --timeout says otherwise.
        #[arg(long)]
        headless: bool,
        /// Kill QEMU after this many seconds (default: no limit; 300 with --headless).
        #[arg(long, value_name = "SECS")]
        timeout: Option<u64>,
        #[command(flatten)]
        boot: BootArgs,
    },
    /// Build and write a boot bundle, then print the QEMU command line that boots it.
    ///
    /// For manual runs and debugging: append `-s -S` to the printed command to wait for
    /// gdb on port 1234. The bundle is target/xtask/image/bundle.img.
    Image {
        #[command(flatten)]
        boot: BootArgs,
    },
    /// Run the host tests (`cargo test`), then the QEMU scenarios.
    ///
    /// Scenarios run in parallel, each with its own logs in
    /// target/xtask/test/<scenario>/ (serial.log, com1.log, qemu-debug.log,
    /// qemu-stderr.log). Prints `test <name> ... ok|FAILED (<reason>)` per scenario and
    /// closes with `N passed, M failed`; exits non-zero if any failed.
    Test {
        /// Scenarios to run (default: all; see --list).
        scenarios: Vec<String>,
        /// List the scenarios and exit.
        #[arg(long)]
        list: bool,
        /// Scenarios to run at the same time.
        #[arg(long, default_value_t = 2, value_name = "N")]
        jobs: usize,
        /// Wall-clock limit per scenario, in seconds.
        #[arg(long, default_value_t = 180, value_name = "SECS")]
        timeout: u64,
        /// Skip the host tests (`cargo test`).
        #[arg(long)]
        no_host_tests: bool,
        /// Use the dev profile instead of release.
        #[arg(long)]
        debug: bool,
    },
    /// Boot a guest micro-benchmark and report its results as a table and as JSON.
    ///
    /// Results go to target/xtask/bench/<name>.json. Only ratios measured in the same run
    /// mean anything: TCG timings do not predict hardware.
    Bench {
        /// Which benchmark.
        #[arg(value_enum)]
        name: Benchmark,
        /// Wall-clock limit, in seconds.
        #[arg(long, default_value_t = 300, value_name = "SECS")]
        timeout: u64,
    },
}

/// Default timeout of `run --headless`.
const HEADLESS_TIMEOUT: Duration = Duration::from_secs(300);

fn main() -> ExitCode {
    let cli = Cli::parse();
    match dispatch(cli.command) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("xtask: error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}

/// Runs a command; `Ok(false)` is a failure already reported.
fn dispatch(command: Command) -> Result<bool> {
    match command {
        Command::Build { debug } => {
            provision::ensure_target()?;
            build::build(Profile::from_debug_flag(debug), &Artifact::all())?;
            Ok(true)
        }
        Command::Run {
            headless,
            timeout,
            boot,
        } => {
            let timeout = match (timeout, headless) {
                (Some(secs), _) => Some(Duration::from_secs(secs)),
                (None, true) => Some(HEADLESS_TIMEOUT),
                (None, false) => None,
            };
            run(&boot.guests, Profile::from_debug_flag(boot.debug), timeout)
        }
        Command::Image { boot } => {
            image_cmd(&boot.guests, Profile::from_debug_flag(boot.debug))?;
            Ok(true)
        }
        Command::Test {
            scenarios,
            list,
            jobs,
            timeout,
            no_host_tests,
            debug,
        } => {
            let selected = scenario::select(&scenarios)?;
            if list {
                for s in &selected {
                    let doms: Vec<&str> = s.domains.iter().map(|d| d.name).collect();
                    println!(
                        "{:<12} expects {:<32} domains: {}",
                        s.name,
                        s.expect,
                        doms.join(", ")
                    );
                }
                return Ok(true);
            }
            provision::ensure_target()?;
            let qemu_bin = provision::ensure_qemu()?;
            if !no_host_tests {
                build::host_tests()?;
            }
            let profile = Profile::from_debug_flag(debug);
            // Everything, even guests no selected scenario boots, so a broken bench guest
            // fails `cargo xtask test` (and CI) too.
            build::build(profile, &Artifact::all())?;
            Ok(scenario::run_all(
                &selected,
                &qemu_bin,
                profile,
                jobs,
                Duration::from_secs(timeout),
            ))
        }
        Command::Bench { name, timeout } => {
            provision::ensure_target()?;
            let qemu_bin = provision::ensure_qemu()?;
            bench::run(name, &qemu_bin, Duration::from_secs(timeout))?;
            Ok(true)
        }
    }
}

/// Builds what `guests` needs and writes the bundle into `out_dir`; returns the domains and
/// the QEMU configuration that boots them.
fn prepare_boot(
    guests: &[GuestArg],
    profile: Profile,
    qemu_bin: std::path::PathBuf,
    out_dir: std::path::PathBuf,
) -> Result<(Vec<image::DomainSpec>, QemuConfig)> {
    let domains = image::domains_from_guest_list(guests);
    if domains.is_empty() {
        anyhow::bail!("no guests given; pass e.g. --guests hello,hello");
    }
    build::build(
        profile,
        &Artifact::with_guests(domains.iter().map(|d| d.guest)),
    )?;
    let bundle = image::bundle_path(&out_dir);
    image::write_bundle(profile, &domains, &bundle)?;
    let config = QemuConfig {
        qemu: qemu_bin,
        kernel: artifact_path(profile, Artifact::Microvisor),
        initrd: bundle,
        append: qemu::MICROVISOR_CMDLINE.to_owned(),
        out_dir,
    };
    Ok((domains, config))
}

fn describe_domains(domains: &[image::DomainSpec]) -> String {
    let list: Vec<String> = domains
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let cmdline = if d.cmdline.is_empty() {
                String::new()
            } else {
                format!(" `{}`", d.cmdline)
            };
            format!("d{} {} ({}{cmdline})", i + 1, d.name, d.guest.name())
        })
        .collect();
    list.join(", ")
}

/// `cargo xtask run`.
fn run(guests: &[GuestArg], profile: Profile, timeout: Option<Duration>) -> Result<bool> {
    provision::ensure_target()?;
    let qemu_bin = provision::ensure_qemu()?;
    let out_dir = xtask_dir("run");
    let (domains, config) = prepare_boot(guests, profile, qemu_bin, out_dir.clone())?;
    eprintln!(
        "xtask: booting {} domain{}: {}",
        domains.len(),
        if domains.len() == 1 { "" } else { "s" },
        describe_domains(&domains)
    );
    eprintln!(
        "xtask: logs in {}/; {}",
        display_path(&out_dir),
        match timeout {
            Some(t) => format!("timeout {} s", t.as_secs()),
            None => "no timeout (Ctrl-C stops QEMU)".to_owned(),
        }
    );
    let outcome = qemu::run(
        &config,
        RunOptions {
            timeout,
            echo: true,
        },
    )?;
    let secs = outcome.elapsed.as_secs_f64();
    if outcome.verdict.is_pass() {
        let who = match domains.len() {
            1 => "the domain".to_owned(),
            n => format!("all {n} domains"),
        };
        eprintln!(
            "xtask: {who} shut down cleanly (QEMU status {}) in {secs:.1} s",
            qemu::STATUS_PASS
        );
        return Ok(true);
    }
    if outcome.verdict == Verdict::Timeout {
        eprintln!("xtask: timeout after {secs:.1} s; QEMU was killed");
        outcome.print_tail();
    }
    eprintln!(
        "xtask: FAILED after {secs:.1} s: {}: {}; logs in {}/",
        outcome.verdict,
        outcome.verdict.explain(),
        display_path(&out_dir)
    );
    Ok(false)
}

/// `cargo xtask image`.
fn image_cmd(guests: &[GuestArg], profile: Profile) -> Result<()> {
    provision::ensure_target()?;
    let qemu_bin = provision::find_in_path(provision::QEMU_BINARY)
        .unwrap_or_else(|| provision::QEMU_BINARY.into());
    let out_dir = xtask_dir("image");
    let (domains, config) = prepare_boot(guests, profile, qemu_bin, out_dir)?;
    std::fs::create_dir_all(&config.out_dir)?;
    eprintln!(
        "xtask: bundle {} holds {}",
        config.initrd.display(),
        describe_domains(&domains)
    );
    println!("{}", config.shell_line());
    Ok(())
}
