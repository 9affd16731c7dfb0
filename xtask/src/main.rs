//! `cargo xtask`: build, boot, test and benchmark the microvisor under QEMU.
//!
//! Run `cargo xtask --help`; the doc comments below are the help text.

mod bench;
mod bench_io;
mod bench_lifecycle;
mod build;
mod bzimage;
mod cpio;
mod debian;
mod dom0;
mod dom0_checks;
mod image;
mod initramfs;
mod kmod;
mod kmodules;
mod provision;
/// The disk pattern the pvdemo guest writes, from the guest's own source (one formula).
#[path = "../../guests/pvdemo/src/pattern.rs"]
#[allow(
    dead_code,
    reason = "the guest's verifier is only used by xtask's tests of the pattern"
)]
mod pvdemo_pattern;
mod qemu;
mod scenario;
mod serial;
#[cfg(test)]
mod testkernel;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Result, bail};
use clap::{Args, Parser, Subcommand};

use crate::bench::Benchmark;
use crate::build::{Artifact, Profile, artifact_path, display_path, xtask_dir};
use crate::dom0::{Dom0Options, Host};
use crate::image::{DomainSpec, GuestArg};
use crate::provision::HostTool;
use crate::qemu::{Console, Layout, QemuConfig, RunOptions, Verdict};

/// Build, boot, test and benchmark the microvisor under QEMU (TCG, AMD SVM).
///
/// Bare-metal images are built for x86_64-unknown-none into
/// target/x86_64-unknown-none/<profile>/; Dom0's parts (Debian kernel and busybox, the
/// kernel module, the static musl binaries, the initramfs) under target/xtask/; bundles
/// and logs go to target/xtask/<command>/. Missing tools (QEMU, gcc-12, make, libc6-dev,
/// xz-utils, e2fsprogs, libelf1) are installed with apt-get when xtask runs as root.
#[derive(Debug, Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Dom0's boot configuration: shared by `run`, `image`, `test` and `bench`.
#[derive(Debug, Args)]
struct Dom0Args {
    /// Dom0's memory in MiB.
    #[arg(long, value_name = "MIB", default_value_t = dom0::DEFAULT_MEM_MIB)]
    dom0_mem: u32,
    /// Text appended to Dom0's kernel command line (default: `console=ttyS0,115200
    /// nr_cpus=1 panic=-1 rdinit=/init`, plus `quiet` with --exec).
    #[arg(long, value_name = "TEXT", allow_hyphen_values = true)]
    dom0_cmdline_append: Option<String>,
}

impl Dom0Args {
    fn options(&self) -> Result<Dom0Options> {
        let opts = Dom0Options {
            mem_mib: self.dom0_mem,
            cmdline_append: self.dom0_cmdline_append.clone(),
        };
        dom0::check_options(&opts)?;
        Ok(opts)
    }
}

/// What to boot: shared by `run` and `image`.
#[derive(Debug, Args)]
struct BootArgs {
    /// Boot-time DomUs, comma-separated: GUEST or GUEST:CMDLINE, where GUEST is hello,
    /// hostile or bench. A guest listed more than once is named GUEST-1, GUEST-2, ...
    /// Default: none with Dom0, `hello,hello` with --no-dom0.
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    guests: Option<Vec<GuestArg>>,
    /// No Dom0: boot only the DomUs (the topology before Dom0; the microvisor exits once
    /// they have all finished).
    #[arg(long)]
    no_dom0: bool,
    /// Boot Dom0's kernel directly under QEMU, without the microvisor (same initramfs,
    /// disk and NIC; the baseline of `bench dom0-boot`). microvisor.ko does not load there,
    /// so dom0d does not run.
    #[arg(long, conflicts_with = "no_dom0")]
    direct: bool,
    /// Use the dev profile for the microvisor and guests instead of release.
    #[arg(long)]
    debug: bool,
    #[command(flatten)]
    dom0: Dom0Args,
}

impl BootArgs {
    fn profile(&self) -> Profile {
        Profile::from_debug_flag(self.debug)
    }

    fn host(&self) -> Host {
        if self.direct {
            Host::Direct
        } else {
            Host::Microvisor
        }
    }

    /// The boot-time DomUs.
    fn domains(&self) -> Vec<DomainSpec> {
        let default = if self.no_dom0 { "hello,hello" } else { "" };
        let list: Vec<GuestArg> = match &self.guests {
            Some(list) => list.clone(),
            None => default
                .split(',')
                .filter(|s| !s.is_empty())
                .filter_map(|s| s.parse().ok())
                .collect(),
        };
        image::domains_from_guest_list(&list)
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Build the microvisor and every guest kernel (hello, hostile, bench).
    Build {
        /// Build the dev profile instead of release.
        #[arg(long)]
        debug: bool,
    },
    /// Boot the microvisor with Dom0 (Debian Linux) and give you Dom0's root shell.
    ///
    /// Dom0's console (COM1) is this terminal; Ctrl-A X quits QEMU, and `poweroff -f` in
    /// Dom0 ends the run. The microvisor log (COM2) goes to target/xtask/run/serial.log.
    /// Dom0's data disk target/xtask/dom0-data.img (ext4, created on first use) is mounted
    /// on /data and kept between runs; eth0 is on QEMU user networking (10.0.2.15/24).
    ///
    /// With --exec CMD, nothing is interactive: Dom0 runs `sh -c CMD`, xtask prints the
    /// command's output (stdout and stderr) and exits with its status; 124 means the
    /// timeout passed, 125 that the run failed for another reason (a microvisor fault, no
    /// exit marker). Full logs stay in target/xtask/run/ (com1.log, serial.log).
    ///
    /// With --no-dom0, only boot-time DomUs run (default two hello guests) and the
    /// microvisor log streams to the terminal, as before Dom0 existed.
    Run {
        /// Run CMD in Dom0 and exit with its status.
        #[arg(
            long,
            value_name = "CMD",
            conflicts_with = "no_dom0",
            allow_hyphen_values = true
        )]
        exec: Option<String>,
        /// Unattended run: apply a 300 s timeout unless --timeout says otherwise; with Dom0
        /// and no --exec, the console is printed instead of attached to the terminal.
        #[arg(long)]
        headless: bool,
        /// Kill QEMU after this many seconds (default: no limit; 300 with --exec or
        /// --headless).
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
    /// DomU scenarios (hello, two-guests, hostile) boot bundles without Dom0; the Dom0
    /// scenarios boot Dom0 and run their checks through the same path as `run --exec`,
    /// printing one `check <scenario>/<name> ... ok|FAILED` line per check. Scenarios run in
    /// parallel, each with its own logs in target/xtask/test/<scenario>/ (serial.log,
    /// com1.log, qemu-debug.log, qemu-stderr.log). Prints `test <name> ... ok|FAILED
    /// (<reason>)` per scenario and closes with `N passed, M failed`; exits non-zero if
    /// any failed.
    Test {
        /// Scenarios to run (default: all; see --list).
        scenarios: Vec<String>,
        /// List the scenarios and exit.
        #[arg(long)]
        list: bool,
        /// Scenarios to run at the same time.
        #[arg(long, default_value_t = 2, value_name = "N")]
        jobs: usize,
        /// Wall-clock limit per DomU scenario, in seconds (Dom0 scenarios get twice as
        /// long: they boot Linux).
        #[arg(long, default_value_t = 180, value_name = "SECS")]
        timeout: u64,
        /// Skip the host tests (`cargo test`).
        #[arg(long)]
        no_host_tests: bool,
        /// Use the dev profile instead of release.
        #[arg(long)]
        debug: bool,
        /// Boot the Dom0 scenarios directly under QEMU, without the microvisor (checks
        /// the initramfs, disk and network plumbing only; microvisor checks will fail).
        #[arg(long)]
        direct: bool,
        #[command(flatten)]
        dom0: Dom0Args,
    },
    /// Run a benchmark and report its results as a table and as JSON.
    ///
    /// `hypercall` boots the bench guest: null hypercall against a CPUID exit.
    /// `dom0-boot` boots Dom0 directly under QEMU and under the microvisor, alternating,
    /// and times QEMU start to Dom0's ready line. `lifecycle` boots Dom0 under the
    /// microvisor once and, in Dom0, times `dom0 create` / `dom0 destroy` of the 16 MiB
    /// waiter DomU (wall time and dom0d's took_ms; --reps pairs, default 7), measures the
    /// microvisor's memory per DomU beyond its RAM (NPT tables, VMCB) and dom0d's RSS per
    /// DomU with 8 DomUs, checks that free memory returns exactly after destroying them,
    /// and times create to the guest's first console byte. `io` compares the pvdemo DomU's
    /// disk throughput with Dom0's own on the same file, its TCP throughput to Dom0 with
    /// Dom0's loopback, and an event-channel round trip between two DomUs with the null
    /// hypercall (--reps rounds, default 3; at least a 900 s timeout).
    /// Results go to target/xtask/bench/<name>.json. Only ratios measured in the same run
    /// mean anything: TCG timings do not predict hardware.
    Bench {
        /// Which benchmark.
        #[arg(value_enum)]
        name: Benchmark,
        /// Wall-clock limit per boot, in seconds.
        #[arg(long, default_value_t = 300, value_name = "SECS")]
        timeout: u64,
        /// Repetitions: boots of each variant (dom0-boot, default 3), create/destroy
        /// pairs (lifecycle, default 7), rounds (io, default 3).
        #[arg(long, value_name = "N")]
        reps: Option<u32>,
        #[command(flatten)]
        dom0: Dom0Args,
    },
}

/// Default timeout of `run --headless` and `run --exec`.
const HEADLESS_TIMEOUT: Duration = Duration::from_secs(300);

/// Exit status of `run --exec` when the time limit passed.
const EXIT_TIMEOUT: u8 = 124;
/// Exit status of `run --exec` when the run failed for another reason.
const EXIT_RUN_FAILED: u8 = 125;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match dispatch(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("xtask: error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}

fn exit_code(ok: bool) -> ExitCode {
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Runs a command; a failure already reported is `Ok(ExitCode::FAILURE)`.
fn dispatch(command: Command) -> Result<ExitCode> {
    match command {
        Command::Build { debug } => {
            provision::ensure_target()?;
            build::build(Profile::from_debug_flag(debug), &Artifact::all())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Run {
            exec,
            headless,
            timeout,
            boot,
        } => {
            let timeout = match (timeout, headless || exec.is_some()) {
                (Some(secs), _) => Some(Duration::from_secs(secs)),
                (None, true) => Some(HEADLESS_TIMEOUT),
                (None, false) => None,
            };
            if boot.no_dom0 {
                return Ok(exit_code(run_domus(&boot, timeout)?));
            }
            run_dom0(&boot, exec.as_deref(), headless, timeout)
        }
        Command::Image { boot } => {
            image_cmd(&boot)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Test {
            scenarios,
            list,
            jobs,
            timeout,
            no_host_tests,
            debug,
            direct,
            dom0,
        } => {
            let selected = scenario::select(&scenarios)?;
            if list {
                scenario::print_list(&selected);
                return Ok(ExitCode::SUCCESS);
            }
            let options = dom0.options()?;
            provision::ensure_target()?;
            if selected.iter().any(|s| s.needs_dom0()) {
                // One apt-get install for everything on a fresh machine.
                provision::ensure_tools(&HostTool::ALL)?;
            }
            let qemu_bin = provision::ensure_qemu()?;
            // Everything that can fail to build fails before the (long) host tests run.
            let profile = Profile::from_debug_flag(debug);
            // Everything, even guests no selected scenario boots, so a broken bench guest
            // fails `cargo xtask test` (and CI) too.
            build::build(profile, &Artifact::all())?;
            let artifacts = if selected.iter().any(|s| s.needs_dom0()) {
                Some(dom0::prepare()?)
            } else {
                None
            };
            if !no_host_tests {
                build::host_tests()?;
            }
            let host = if direct {
                Host::Direct
            } else {
                Host::Microvisor
            };
            let ctx = scenario::Context {
                qemu: qemu_bin,
                profile,
                timeout: Duration::from_secs(timeout),
                dom0: artifacts.as_ref(),
                dom0_options: options,
                host,
            };
            Ok(exit_code(scenario::run_all(&selected, &ctx, jobs)))
        }
        Command::Bench {
            name,
            timeout,
            reps,
            dom0,
        } => {
            provision::ensure_target()?;
            if name != Benchmark::Hypercall {
                provision::ensure_tools(&HostTool::ALL)?;
            }
            let qemu_bin = provision::ensure_qemu()?;
            let timeout = Duration::from_secs(timeout);
            match name {
                Benchmark::Hypercall => bench::run(name, &qemu_bin, timeout)?,
                Benchmark::Dom0Boot => {
                    let reps = reps.unwrap_or(bench::DEFAULT_BOOT_REPS);
                    bench::run_dom0_boot(&qemu_bin, timeout, reps, &dom0.options()?)?;
                }
                Benchmark::Lifecycle => {
                    let reps = reps.unwrap_or(bench_lifecycle::DEFAULT_REPS);
                    bench_lifecycle::run(&qemu_bin, timeout, reps, &dom0.options()?)?;
                }
                Benchmark::Io => {
                    let reps = reps.unwrap_or(bench_io::DEFAULT_REPS);
                    bench_io::run(&qemu_bin, timeout, reps, &dom0.options()?)?;
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Builds what `guests` needs and writes a DomU-only bundle into `out_dir`; returns the
/// QEMU configuration that boots it.
fn prepare_domu_boot(
    domains: &[DomainSpec],
    profile: Profile,
    qemu_bin: PathBuf,
    out_dir: PathBuf,
) -> Result<QemuConfig> {
    if domains.is_empty() {
        bail!("no guests given; pass e.g. --guests hello,hello");
    }
    build::build(
        profile,
        &Artifact::with_guests(domains.iter().map(|d| d.guest)),
    )?;
    let bundle = image::bundle_path(&out_dir);
    image::write_bundle(profile, domains, &bundle)?;
    Ok(QemuConfig {
        qemu: qemu_bin,
        kernel: artifact_path(profile, Artifact::Microvisor),
        initrd: bundle,
        append: qemu::MICROVISOR_CMDLINE.to_owned(),
        out_dir,
        layout: Layout::DomUOnly,
    })
}

fn describe_domains(domains: &[DomainSpec]) -> String {
    let list: Vec<String> = domains
        .iter()
        .map(|d| {
            let cmdline = if d.cmdline.is_empty() {
                String::new()
            } else {
                format!(" `{}`", d.cmdline)
            };
            format!("{} ({}{cmdline})", d.name, d.guest.name())
        })
        .collect();
    list.join(", ")
}

/// `cargo xtask run --no-dom0`.
fn run_domus(boot: &BootArgs, timeout: Option<Duration>) -> Result<bool> {
    provision::ensure_target()?;
    let qemu_bin = provision::ensure_qemu()?;
    let out_dir = xtask_dir("run");
    let domains = boot.domains();
    let config = prepare_domu_boot(&domains, boot.profile(), qemu_bin, out_dir.clone())?;
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

/// `cargo xtask run` with Dom0 (interactive, headless or `--exec`).
fn run_dom0(
    boot: &BootArgs,
    exec: Option<&str>,
    headless: bool,
    timeout: Option<Duration>,
) -> Result<ExitCode> {
    let options = boot.dom0.options()?;
    provision::ensure_tools(&HostTool::ALL)?;
    let qemu_bin = provision::ensure_qemu()?;
    let domains = boot.domains();
    let host = boot.host();
    dom0::build_host(host, boot.profile(), &domains)?;
    let artifacts = dom0::prepare()?;
    let data_disk = dom0::default_data_disk();
    dom0::ensure_data_disk(&data_disk)?;
    let out_dir = xtask_dir("run");
    let plan = dom0::BootPlan {
        artifacts: &artifacts,
        host,
        profile: boot.profile(),
        guests: domains.clone(),
        options,
        qemu: qemu_bin,
        out_dir: out_dir.clone(),
        data_disk,
    };
    let mv_log = display_path(&out_dir.join(qemu::SERIAL_LOG));
    let com1_log = display_path(&out_dir.join(qemu::COM1_LOG));
    let extra = if domains.is_empty() {
        String::new()
    } else {
        format!(" and {}", describe_domains(&domains))
    };
    let how = match host {
        Host::Microvisor => "the microvisor with Dom0",
        Host::Direct => "Dom0's kernel directly (no microvisor)",
    };

    if let Some(command) = exec {
        let timeout = timeout.unwrap_or(dom0::EXEC_TIMEOUT);
        eprintln!(
            "xtask: booting {how}{extra}; running `{command}` (timeout {} s); logs: {com1_log}, \
             {mv_log}",
            timeout.as_secs()
        );
        let out = dom0::exec(&plan, command, timeout, true)?;
        if !out.problems.is_empty() {
            for p in &out.problems {
                eprintln!("xtask: {p}");
            }
            out.run.print_tail();
            eprintln!(
                "xtask: FAILED after {:.1} s; logs in {}/",
                out.run.elapsed.as_secs_f64(),
                display_path(&out_dir)
            );
            return Ok(ExitCode::from(if out.timed_out() {
                EXIT_TIMEOUT
            } else {
                EXIT_RUN_FAILED
            }));
        }
        let status = out.status.unwrap_or(i32::from(EXIT_RUN_FAILED));
        if status != 0 {
            eprintln!("xtask: the command exited with status {status}");
        }
        return Ok(ExitCode::from(
            u8::try_from(status).unwrap_or(EXIT_RUN_FAILED),
        ));
    }

    if headless {
        let config = plan.write(
            dom0::Mode::Interactive,
            &artifacts.initramfs,
            Console::Captured,
        )?;
        eprintln!(
            "xtask: booting {how}{extra} headless; Dom0's console follows (also in {com1_log}); \
             microvisor log: {mv_log}"
        );
        let outcome = qemu::run(
            &config,
            RunOptions {
                timeout,
                echo: true,
            },
        )?;
        return Ok(exit_code(report_dom0_end(
            outcome.verdict,
            outcome.hypervisor_failure().map(|(n, l)| (n, l.to_owned())),
            outcome.elapsed,
        )));
    }

    eprintln!("xtask: booting {how}{extra}; Dom0's console is this terminal (Ctrl-A X quits QEMU)");
    eprintln!("xtask: microvisor log: {mv_log}");
    let outcome = dom0::interactive(&plan)?;
    let failure = outcome.lines.iter().enumerate().find_map(|(n, l)| {
        serial::HYPERVISOR_FAILURE_MARKERS
            .iter()
            .any(|m| l.contains(m))
            .then(|| (n + 1, l.clone()))
    });
    eprintln!("xtask: microvisor log: {mv_log}");
    Ok(exit_code(report_dom0_end(
        outcome.verdict,
        failure,
        outcome.elapsed,
    )))
}

/// Reports how a Dom0 run without --exec ended; returns whether it was clean.
fn report_dom0_end(verdict: Verdict, failure: Option<(usize, String)>, elapsed: Duration) -> bool {
    let secs = elapsed.as_secs_f64();
    if let Some((n, line)) = failure {
        eprintln!("xtask: FAILED after {secs:.1} s: serial.log line {n}: `{line}`");
        return false;
    }
    match verdict {
        Verdict::Reset | Verdict::AllShutDown => {
            eprintln!(
                "xtask: QEMU exited after {secs:.1} s (status {}: Dom0 powered off or rebooted, \
                 or Ctrl-A X)",
                verdict.qemu_status().unwrap_or_default()
            );
            true
        }
        other => {
            eprintln!(
                "xtask: FAILED after {secs:.1} s: {other}: {}",
                other.explain()
            );
            false
        }
    }
}

/// `cargo xtask image`.
fn image_cmd(boot: &BootArgs) -> Result<()> {
    let qemu_bin = provision::find_in_path(provision::QEMU_BINARY)
        .unwrap_or_else(|| provision::QEMU_BINARY.into());
    let out_dir = xtask_dir("image");
    let domains = boot.domains();
    if boot.no_dom0 {
        provision::ensure_target()?;
        let config = prepare_domu_boot(&domains, boot.profile(), qemu_bin, out_dir)?;
        std::fs::create_dir_all(&config.out_dir)?;
        eprintln!(
            "xtask: bundle {} holds {}",
            config.initrd.display(),
            describe_domains(&domains)
        );
        println!("{}", config.shell_line());
        return Ok(());
    }
    let options = boot.dom0.options()?;
    let host = boot.host();
    dom0::build_host(host, boot.profile(), &domains)?;
    let artifacts = dom0::prepare()?;
    let data_disk = dom0::default_data_disk();
    dom0::ensure_data_disk(&data_disk)?;
    let plan = dom0::BootPlan {
        artifacts: &artifacts,
        host,
        profile: boot.profile(),
        guests: domains.clone(),
        options,
        qemu: qemu_bin,
        out_dir,
        data_disk,
    };
    let config = plan.write(
        dom0::Mode::Interactive,
        &artifacts.initramfs,
        Console::Interactive,
    )?;
    eprintln!(
        "xtask: {} boots Dom0 (`{}`, {} MiB){}",
        config.initrd.display(),
        dom0::cmdline(&plan.options, dom0::Mode::Interactive, host),
        plan.options.mem_mib,
        if domains.is_empty() {
            String::new()
        } else {
            format!(" and {}", describe_domains(&domains))
        }
    );
    println!("{}", config.shell_line());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Command {
        let mut all = vec!["cargo xtask"];
        all.extend_from_slice(args);
        Cli::try_parse_from(all).unwrap().command
    }

    #[test]
    fn run_defaults_to_dom0_without_guests() {
        let Command::Run {
            exec,
            boot,
            timeout,
            ..
        } = parse(&["run"])
        else {
            panic!()
        };
        assert_eq!(exec, None);
        assert_eq!(timeout, None);
        assert!(boot.domains().is_empty());
        assert_eq!(boot.host(), Host::Microvisor);
        let opts = boot.dom0.options().unwrap();
        assert_eq!(opts.mem_mib, 512);
        assert_eq!(opts.cmdline_append, None);
    }

    #[test]
    fn run_no_dom0_keeps_two_hello_guests() {
        let Command::Run { boot, .. } = parse(&["run", "--no-dom0", "--headless"]) else {
            panic!()
        };
        let names: Vec<String> = boot.domains().into_iter().map(|d| d.name).collect();
        assert_eq!(names, ["hello-1", "hello-2"]);
    }

    #[test]
    fn run_exec_with_dom0_flags() {
        let Command::Run { exec, boot, .. } = parse(&[
            "run",
            "--exec",
            "-x; echo hi",
            "--dom0-mem",
            "768",
            "--dom0-cmdline-append",
            "loglevel=7",
            "--guests",
            "hello",
        ]) else {
            panic!()
        };
        assert_eq!(exec.as_deref(), Some("-x; echo hi"));
        let opts = boot.dom0.options().unwrap();
        assert_eq!(opts.mem_mib, 768);
        assert_eq!(opts.cmdline_append.as_deref(), Some("loglevel=7"));
        assert_eq!(boot.domains().len(), 1);
    }

    #[test]
    fn conflicting_flags_are_refused() {
        for args in [
            &["cargo xtask", "run", "--no-dom0", "--exec", "true"][..],
            &["cargo xtask", "run", "--no-dom0", "--direct"][..],
        ] {
            assert!(Cli::try_parse_from(args).is_err(), "{args:?}");
        }
        let Command::Run { boot, .. } = parse(&["run", "--dom0-mem", "8"]) else {
            panic!()
        };
        assert!(boot.dom0.options().is_err());
    }

    #[test]
    fn bench_and_test_take_dom0_flags() {
        let Command::Bench {
            name, reps, dom0, ..
        } = parse(&["bench", "dom0-boot", "--reps", "2", "--dom0-mem", "256"])
        else {
            panic!()
        };
        assert_eq!(name, Benchmark::Dom0Boot);
        assert_eq!(reps, Some(2));
        assert_eq!(dom0.dom0_mem, 256);
        let Command::Bench { name, reps, .. } = parse(&["bench", "lifecycle"]) else {
            panic!()
        };
        assert_eq!(name, Benchmark::Lifecycle);
        assert_eq!(reps, None);
        let Command::Test { direct, dom0, .. } =
            parse(&["test", "--direct", "--dom0-cmdline-append", "x=1"])
        else {
            panic!()
        };
        assert!(direct);
        assert_eq!(dom0.dom0_cmdline_append.as_deref(), Some("x=1"));
    }
}
