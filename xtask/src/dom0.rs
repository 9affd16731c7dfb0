//! Dom0 boots: building what Dom0 is made of, its command line and data disk, the boot
//! files for QEMU, and the exec protocol that `run --exec`, the Dom0 scenarios and
//! `bench dom0-boot` share.
//!
//! **Exec protocol.** xtask appends a small cpio archive holding `/etc/mv/exec` (the
//! command) and `/etc/mv/nonce` (16 random hex digits, new for every boot) to the
//! initramfs. Dom0's `/init` (dom0/initramfs/init) boots, prints
//! `@@MV-DOM0-READY <uptime> <nonce>@@`, runs `sh -c CMD` with stdin from /dev/null and its
//! output (stdout and stderr) on the console, prints `\n@@MV-EXEC-EXIT <status> <nonce>@@`
//! and powers off. Everything between the two markers, less the newline the exit marker
//! starts with, is the command's output. A marker only counts with this boot's nonce, on a
//! line of its own (the ready marker may follow other text), so output that happens to
//! look like a marker cannot end the command early.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use microvisor::bundle::BundleBuilder;

use crate::build::{self, Artifact, Profile, artifact_path, display_path, xtask_dir};
use crate::debian::{self, KERNEL_RELEASE};
use crate::image::{self, DomainSpec};
use crate::initramfs;
use crate::kmod;
use crate::provision::{self, HostTool, MUSL_TARGET};
use crate::qemu::{self, Console, Layout, LineWatcher, QemuConfig, RunOptions, Verdict, Watch};

/// Dom0's memory unless `--dom0-mem` says otherwise.
pub(crate) const DEFAULT_MEM_MIB: u32 = 512;
/// Dom0's kernel command line: the console on COM1, one CPU (Dom0 must not start the other
/// pCPUs, which run the microvisor), reboot at once on a panic (QEMU's `-no-reboot` turns
/// that into an exit), and `/init` from the initramfs.
pub(crate) const BASE_CMDLINE: &str = "console=ttyS0,115200 nr_cpus=1 panic=-1 rdinit=/init";
/// Added in exec mode, so boot messages do not mix with the command's output.
pub(crate) const EXEC_CMDLINE: &str = "quiet";
/// Default limit of `run --exec`.
pub(crate) const EXEC_TIMEOUT: Duration = Duration::from_secs(300);
/// Size of the data disk.
pub(crate) const DATA_DISK_MIB: u64 = 64;
/// How long QEMU gets to exit after the exit marker before xtask kills it.
const POWEROFF_GRACE: Duration = Duration::from_secs(30);

/// The ready marker's prefix.
pub(crate) const READY_MARKER: &str = "@@MV-DOM0-READY ";
/// The exit marker's prefix.
pub(crate) const EXIT_MARKER: &str = "@@MV-EXEC-EXIT ";

/// What the user chose for Dom0.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Dom0Options {
    /// Dom0's memory in MiB.
    pub(crate) mem_mib: u32,
    /// Text appended to the kernel command line.
    pub(crate) cmdline_append: Option<String>,
}

impl Default for Dom0Options {
    fn default() -> Self {
        Self {
            mem_mib: DEFAULT_MEM_MIB,
            cmdline_append: None,
        }
    }
}

/// What Dom0 does once booted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// A shell on the console.
    Interactive,
    /// Run one command and power off.
    Exec,
}

/// How Dom0's kernel is started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Host {
    /// Under the microvisor, from the boot bundle.
    Microvisor,
    /// Directly by QEMU (PVH boot of the vmlinux), without the microvisor: the baseline of
    /// `bench dom0-boot`, and a way to test the initramfs on its own.
    Direct,
}

impl Host {
    /// A word for messages.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Host::Microvisor => "microvisor",
            Host::Direct => "direct",
        }
    }
}

/// Dom0's kernel command line.
pub(crate) fn cmdline(opts: &Dom0Options, mode: Mode, host: Host) -> String {
    let mut words = vec![BASE_CMDLINE.to_owned()];
    if mode == Mode::Exec {
        words.push(EXEC_CMDLINE.into());
    }
    if host == Host::Direct {
        // Without the microvisor Linux would see all of QEMU's RAM.
        words.push(format!("mem={}M", opts.mem_mib));
    }
    if let Some(extra) = opts.cmdline_append.as_deref().map(str::trim)
        && !extra.is_empty()
    {
        words.push(extra.to_owned());
    }
    words.join(" ")
}

/// Checks `--dom0-mem`.
pub(crate) fn check_options(opts: &Dom0Options) -> Result<()> {
    ensure!(
        (microvisor::dom0::MIN_MEM_MIB..=1536).contains(&opts.mem_mib),
        "--dom0-mem {} is out of range: Dom0 needs {}..=1536 MiB (QEMU has 2048 MiB, and the \
         microvisor and DomUs need the rest)",
        opts.mem_mib,
        microvisor::dom0::MIN_MEM_MIB
    );
    Ok(())
}

/// What every Dom0 boot is made of.
#[derive(Debug)]
pub(crate) struct Dom0Artifacts {
    /// The kernel ELF.
    pub(crate) vmlinux: PathBuf,
    /// The base initramfs (no exec files).
    pub(crate) initramfs: Vec<u8>,
}

/// Where the base initramfs is written, for inspection.
pub(crate) fn initramfs_path() -> PathBuf {
    xtask_dir("dom0").join("initramfs.cpio")
}

/// Provisions tools and packages, extracts the kernel, builds the module and the static
/// binaries, and assembles the initramfs.
pub(crate) fn prepare() -> Result<Dom0Artifacts> {
    let start = Instant::now();
    provision::ensure_tools(&HostTool::DOM0)?;
    provision::ensure_rust_targets(&[MUSL_TARGET])?;
    let tree = debian::ensure_tree()?;
    let vmlinux = debian::vmlinux(&tree)?;
    let kmod = kmod::build(&tree)?;
    let binaries = build::build_dom0_userspace()?;
    // The example configs in /etc/dom0/examples start these.
    provision::ensure_target()?;
    let examples = [
        build::Guest::Hello,
        build::Guest::Spin,
        build::Guest::Hostile,
        build::Guest::Bench,
        build::Guest::Echo,
        build::Guest::PvDemo,
        build::Guest::BadFront,
    ];
    let artifacts: Vec<_> = examples
        .iter()
        .map(|&g| build::Artifact::Guest(g))
        .collect();
    build::build(Profile::Release, &artifacts)?;
    let inputs = initramfs::Inputs {
        tree,
        kmod,
        binaries,
        overlay: initramfs::overlay_dir(),
        guests: examples
            .iter()
            .map(|&g| {
                (
                    g.name(),
                    build::artifact_path(Profile::Release, build::Artifact::Guest(g)),
                )
            })
            .collect(),
    };
    let initramfs = initramfs::build(&inputs)?;
    let path = initramfs_path();
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
    }
    fs::write(&path, &initramfs).with_context(|| format!("could not write {}", path.display()))?;
    eprintln!(
        "xtask: Dom0 ready in {:.1} s: Linux {KERNEL_RELEASE} ({}), initramfs {} ({:.1} MiB)",
        start.elapsed().as_secs_f64(),
        display_path(&vmlinux),
        display_path(&path),
        initramfs.len() as f64 / f64::from(1u32 << 20)
    );
    Ok(Dom0Artifacts { vmlinux, initramfs })
}

/// The persistent data disk of `cargo xtask run`.
pub(crate) fn default_data_disk() -> PathBuf {
    xtask_dir("dom0-data.img")
}

/// Creates and formats (ext4, label `dom0-data`) a data disk at `path`, replacing any file
/// there.
pub(crate) fn create_data_disk(path: &Path) -> Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
    }
    let file =
        fs::File::create(path).with_context(|| format!("could not create {}", path.display()))?;
    file.set_len(DATA_DISK_MIB << 20)?;
    drop(file);
    let mkfs = HostTool::Mkfs
        .find()
        .context("mkfs.ext4 is missing (package e2fsprogs)")?;
    let out = Command::new(mkfs)
        .args(["-F", "-q", "-L", "dom0-data", "-E", "root_owner=0:0"])
        .arg(path)
        .output()
        .context("could not run mkfs.ext4")?;
    ensure!(
        out.status.success(),
        "mkfs.ext4 {} failed: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// Creates the data disk at `path` unless it exists.
pub(crate) fn ensure_data_disk(path: &Path) -> Result<()> {
    if path.is_file() {
        return Ok(());
    }
    eprintln!(
        "xtask: creating Dom0's data disk {} ({DATA_DISK_MIB} MiB, ext4)",
        display_path(path)
    );
    create_data_disk(path)
}

/// 16 random hex digits from the kernel's random pool.
pub(crate) fn new_nonce() -> Result<String> {
    let mut bytes = [0u8; 8];
    let mut f = fs::File::open("/dev/urandom").context("could not open /dev/urandom")?;
    std::io::Read::read_exact(&mut f, &mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// One Dom0 boot.
#[derive(Clone, Debug)]
pub(crate) struct BootPlan<'a> {
    /// Kernel and initramfs.
    pub(crate) artifacts: &'a Dom0Artifacts,
    /// Microvisor or direct.
    pub(crate) host: Host,
    /// Profile of the microvisor (and DomU) build.
    pub(crate) profile: Profile,
    /// Boot-time DomUs (microvisor only).
    pub(crate) guests: Vec<DomainSpec>,
    /// Dom0's memory and command line additions.
    pub(crate) options: Dom0Options,
    /// The QEMU binary.
    pub(crate) qemu: PathBuf,
    /// Where the bundle and logs go.
    pub(crate) out_dir: PathBuf,
    /// The data disk.
    pub(crate) data_disk: PathBuf,
}

impl BootPlan<'_> {
    /// Writes the boot files (bundle, or kernel command line and initramfs for a direct
    /// boot) and returns the QEMU configuration.
    pub(crate) fn write(
        &self,
        mode: Mode,
        initramfs: &[u8],
        console: Console,
    ) -> Result<QemuConfig> {
        fs::create_dir_all(&self.out_dir)
            .with_context(|| format!("could not create {}", self.out_dir.display()))?;
        let cmdline = cmdline(&self.options, mode, self.host);
        let layout = Layout::Dom0 {
            console,
            data_disk: self.data_disk.clone(),
        };
        match self.host {
            Host::Microvisor => {
                let vmlinux = fs::read(&self.artifacts.vmlinux).with_context(|| {
                    format!("could not read {}", self.artifacts.vmlinux.display())
                })?;
                let mut builder = BundleBuilder::new();
                builder
                    .add_dom0(
                        &cmdline,
                        self.options.mem_mib,
                        vmlinux,
                        Some(initramfs.to_vec()),
                    )
                    .map_err(|e| anyhow::anyhow!("cannot add Dom0 to the bundle: {e}"))?;
                image::add_domus(&mut builder, self.profile, &self.guests)?;
                let bundle = image::bundle_path(&self.out_dir);
                fs::write(&bundle, builder.build())
                    .with_context(|| format!("could not write {}", bundle.display()))?;
                Ok(QemuConfig {
                    qemu: self.qemu.clone(),
                    kernel: artifact_path(self.profile, Artifact::Microvisor),
                    initrd: bundle,
                    append: qemu::MICROVISOR_CMDLINE.to_owned(),
                    out_dir: self.out_dir.clone(),
                    layout,
                })
            }
            Host::Direct => {
                ensure!(
                    self.guests.is_empty(),
                    "boot-time DomUs need the microvisor; drop --guests or --direct"
                );
                let initrd = self.out_dir.join("initramfs.cpio");
                fs::write(&initrd, initramfs)
                    .with_context(|| format!("could not write {}", initrd.display()))?;
                Ok(QemuConfig {
                    qemu: self.qemu.clone(),
                    kernel: self.artifacts.vmlinux.clone(),
                    initrd,
                    append: cmdline,
                    out_dir: self.out_dir.clone(),
                    layout,
                })
            }
        }
    }
}

/// The ready marker's uptime, if `line` carries the ready marker of boot `nonce`.
pub(crate) fn parse_ready(line: &str, nonce: &str) -> Option<f64> {
    let rest = &line[line.find(READY_MARKER)? + READY_MARKER.len()..];
    let rest = rest.trim_end().strip_suffix("@@")?;
    let (uptime, got) = rest.split_once(' ')?;
    (got == nonce).then(|| uptime.parse().ok())?
}

/// The exit status, if `line` is exactly the exit marker of boot `nonce`.
pub(crate) fn parse_exit(line: &str, nonce: &str) -> Option<i32> {
    let rest = line.strip_prefix(EXIT_MARKER)?.strip_suffix("@@")?;
    let (status, got) = rest.split_once(' ')?;
    if got != nonce {
        return None;
    }
    status.parse().ok()
}

/// Where the exec protocol is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Booting,
    Running,
    Done,
}

/// Reads Dom0's console and cuts out the command's output (host-tested).
#[derive(Debug)]
pub(crate) struct Transcript {
    nonce: String,
    phase: Phase,
    /// The command's output so far.
    pub(crate) output: Vec<u8>,
    /// A line ended, but its newline is held back: the exit marker's own newline must not
    /// become output.
    newline_pending: bool,
    /// The exit status from the marker.
    pub(crate) status: Option<i32>,
    /// When the ready line arrived (since QEMU started) and Linux's uptime then.
    pub(crate) ready: Option<(Duration, f64)>,
}

impl Transcript {
    /// A transcript for boot `nonce`.
    pub(crate) fn new(nonce: &str) -> Self {
        Self {
            nonce: nonce.to_owned(),
            phase: Phase::Booting,
            output: Vec::new(),
            newline_pending: false,
            status: None,
            ready: None,
        }
    }

    /// Takes one console line; returns the output bytes it releases.
    pub(crate) fn feed(&mut self, line: &[u8], at: Duration) -> Vec<u8> {
        let text = String::from_utf8_lossy(line);
        match self.phase {
            Phase::Booting => {
                if let Some(uptime) = parse_ready(&text, &self.nonce) {
                    self.ready = Some((at, uptime));
                    self.phase = Phase::Running;
                }
                Vec::new()
            }
            Phase::Running => {
                if let Some(status) = parse_exit(&text, &self.nonce) {
                    self.status = Some(status);
                    self.phase = Phase::Done;
                    self.newline_pending = false;
                    return Vec::new();
                }
                let mut out = Vec::with_capacity(line.len() + 1);
                if self.newline_pending {
                    out.push(b'\n');
                }
                out.extend_from_slice(line);
                self.newline_pending = true;
                self.output.extend_from_slice(&out);
                out
            }
            Phase::Done => Vec::new(),
        }
    }

    /// Whether the exit marker arrived.
    pub(crate) fn finished(&self) -> bool {
        self.phase == Phase::Done
    }
}

/// A [`Transcript`] plugged into QEMU's console, optionally streaming the output.
struct ExecWatcher {
    transcript: Transcript,
    stream: bool,
}

impl LineWatcher for ExecWatcher {
    fn line(&mut self, line: &[u8], at: Duration) -> Watch {
        let out = self.transcript.feed(line, at);
        if self.stream && !out.is_empty() {
            let mut stdout = std::io::stdout().lock();
            let _ = stdout.write_all(&out).and_then(|()| stdout.flush());
        }
        if self.transcript.finished() {
            Watch::StopWithin(POWEROFF_GRACE)
        } else {
            Watch::Continue
        }
    }
}

/// What an exec boot produced.
#[derive(Debug)]
pub(crate) struct ExecOutcome {
    /// The command's exit status (from the marker).
    pub(crate) status: Option<i32>,
    /// The command's output.
    pub(crate) output: Vec<u8>,
    /// When the ready line arrived and Linux's uptime then.
    pub(crate) ready: Option<(Duration, f64)>,
    /// The QEMU run.
    pub(crate) run: qemu::RunOutcome,
    /// What went wrong outside the command (empty when the boot itself was fine).
    pub(crate) problems: Vec<String>,
}

impl ExecOutcome {
    /// The output as text.
    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.output).into_owned()
    }

    /// Whether QEMU was stopped by the time limit.
    pub(crate) fn timed_out(&self) -> bool {
        self.run.verdict == Verdict::Timeout
    }
}

/// Everything wrong with a finished exec boot, the command's own status aside.
pub(crate) fn exec_problems(
    transcript: &Transcript,
    run: &qemu::RunOutcome,
    timeout: Duration,
) -> Vec<String> {
    let mut problems = Vec::new();
    if let Some((n, line)) = run.hypervisor_failure() {
        problems.push(format!(
            "microvisor failure, serial.log line {n}: `{}`",
            line.trim()
        ));
    }
    match run.verdict {
        Verdict::HypervisorFault => {
            problems.push(format!("{}: {}", run.verdict, run.verdict.explain()))
        }
        Verdict::Timeout => problems.push(format!(
            "timed out after {} s{}",
            timeout.as_secs(),
            if transcript.ready.is_none() {
                " before Dom0 was ready"
            } else if !transcript.finished() {
                " while the command ran"
            } else {
                ""
            }
        )),
        // Dom0 powered the machine off (status 0; 33 if the microvisor turns Dom0's
        // power-off into its own verdict), or xtask killed QEMU after the marker.
        Verdict::Reset | Verdict::AllShutDown => {}
        Verdict::QemuError(_) if run.killed_after_stop => {}
        other => {
            if !transcript.finished() || other == Verdict::DomainCrashed {
                problems.push(format!("QEMU ended with {other}: {}", other.explain()));
            }
        }
    }
    if run.verdict != Verdict::Timeout {
        if transcript.ready.is_none() {
            problems.push("Dom0 never printed its ready line (`@@MV-DOM0-READY ...@@`)".into());
        } else if !transcript.finished() {
            problems.push(
                "the exit marker never appeared: the command powered Dom0 off, or Dom0 died".into(),
            );
        }
    }
    problems
}

/// Boots Dom0 with `command` in exec mode and waits for its exit marker.
pub(crate) fn exec(
    plan: &BootPlan<'_>,
    command: &str,
    timeout: Duration,
    stream: bool,
) -> Result<ExecOutcome> {
    let nonce = new_nonce()?;
    let initramfs = initramfs::with_exec(&plan.artifacts.initramfs, command, &nonce)?;
    let config = plan.write(Mode::Exec, &initramfs, Console::Captured)?;
    let mut watcher = ExecWatcher {
        transcript: Transcript::new(&nonce),
        stream,
    };
    let run = qemu::run_watched(
        &config,
        RunOptions {
            timeout: Some(timeout),
            echo: false,
        },
        &mut watcher,
    )?;
    let transcript = watcher.transcript;
    if stream && transcript.newline_pending {
        // Never happens after a marker; a cut-off run keeps its last line whole.
        let _ = std::io::stdout().write_all(b"\n");
    }
    let problems = exec_problems(&transcript, &run, timeout);
    Ok(ExecOutcome {
        status: transcript.status,
        output: transcript.output,
        ready: transcript.ready,
        run,
        problems,
    })
}

/// Boots Dom0 with its shell on the terminal and returns when QEMU exits.
pub(crate) fn interactive(plan: &BootPlan<'_>) -> Result<qemu::InteractiveOutcome> {
    let config = plan.write(
        Mode::Interactive,
        &plan.artifacts.initramfs,
        Console::Interactive,
    )?;
    qemu::run_interactive(&config)
}

/// The microvisor build a Dom0 boot needs (nothing for a direct boot).
pub(crate) fn build_host(host: Host, profile: Profile, guests: &[DomainSpec]) -> Result<()> {
    if host == Host::Direct {
        return Ok(());
    }
    provision::ensure_target()?;
    build::build(
        profile,
        &Artifact::with_guests(guests.iter().map(|d| d.guest)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(append: Option<&str>) -> Dom0Options {
        Dom0Options {
            mem_mib: 512,
            cmdline_append: append.map(str::to_owned),
        }
    }

    #[test]
    fn command_lines() {
        assert_eq!(
            cmdline(&opts(None), Mode::Interactive, Host::Microvisor),
            "console=ttyS0,115200 nr_cpus=1 panic=-1 rdinit=/init"
        );
        assert_eq!(
            cmdline(&opts(Some(" loglevel=7 ")), Mode::Exec, Host::Microvisor),
            "console=ttyS0,115200 nr_cpus=1 panic=-1 rdinit=/init quiet loglevel=7"
        );
        let mut o = opts(Some(""));
        o.mem_mib = 768;
        assert_eq!(
            cmdline(&o, Mode::Exec, Host::Direct),
            "console=ttyS0,115200 nr_cpus=1 panic=-1 rdinit=/init quiet mem=768M"
        );
    }

    #[test]
    fn memory_limits() {
        check_options(&opts(None)).unwrap();
        let mut o = opts(None);
        o.mem_mib = 16;
        assert!(
            check_options(&o)
                .unwrap_err()
                .to_string()
                .contains("out of range")
        );
        o.mem_mib = 4096;
        assert!(check_options(&o).is_err());
    }

    #[test]
    fn markers_need_the_nonce() {
        let n = "0123456789abcdef";
        assert_eq!(
            parse_ready(&format!("@@MV-DOM0-READY 2.51 {n}@@"), n),
            Some(2.51)
        );
        assert_eq!(
            parse_ready(&format!("junk @@MV-DOM0-READY 2.51 {n}@@\r"), n),
            Some(2.51)
        );
        assert_eq!(parse_ready("@@MV-DOM0-READY 2.51 -@@", n), None);
        assert_eq!(parse_ready("@@MV-DOM0-READY 2.51 -@@", "-"), Some(2.51));
        assert_eq!(parse_ready(&format!("@@MV-DOM0-READY x {n}@@"), n), None);
        assert_eq!(parse_exit(&format!("@@MV-EXEC-EXIT 0 {n}@@"), n), Some(0));
        assert_eq!(
            parse_exit(&format!("@@MV-EXEC-EXIT 127 {n}@@"), n),
            Some(127)
        );
        assert_eq!(parse_exit("@@MV-EXEC-EXIT 0 fedcba9876543210@@", n), None);
        assert_eq!(parse_exit(&format!("x @@MV-EXEC-EXIT 0 {n}@@"), n), None);
        assert_eq!(parse_exit(&format!("@@MV-EXEC-EXIT 0 {n}@@ x"), n), None);
    }

    fn transcript(lines: &[&str]) -> (Transcript, Vec<u8>) {
        let mut t = Transcript::new("n1");
        let mut streamed = Vec::new();
        for (i, l) in lines.iter().enumerate() {
            streamed.extend(t.feed(l.as_bytes(), Duration::from_secs(i as u64)));
        }
        (t, streamed)
    }

    #[test]
    fn output_lies_between_the_markers() {
        let (t, streamed) = transcript(&[
            "[    0.000000] Linux version 6.1.0-50-amd64",
            "dom0-init: ready: ...",
            "@@MV-DOM0-READY 2.50 n1@@",
            "hello",
            "",
            "world",
            "",
            "@@MV-EXEC-EXIT 3 n1@@",
            "reboot: Power down",
        ]);
        assert_eq!(t.output, b"hello\n\nworld\n");
        assert_eq!(streamed, t.output);
        assert_eq!(t.status, Some(3));
        assert_eq!(t.ready, Some((Duration::from_secs(2), 2.5)));
        assert!(t.finished());
    }

    #[test]
    fn output_without_a_final_newline_and_empty_output() {
        // `printf abc`: init's newline puts the marker on its own line.
        let (t, _) = transcript(&["@@MV-DOM0-READY 1 n1@@", "abc", "@@MV-EXEC-EXIT 0 n1@@"]);
        assert_eq!(t.output, b"abc");
        // `echo abc`.
        let (t, _) = transcript(&["@@MV-DOM0-READY 1 n1@@", "abc", "", "@@MV-EXEC-EXIT 0 n1@@"]);
        assert_eq!(t.output, b"abc\n");
        // `true`.
        let (t, _) = transcript(&["@@MV-DOM0-READY 1 n1@@", "", "@@MV-EXEC-EXIT 0 n1@@"]);
        assert_eq!(t.output, b"");
        assert_eq!(t.status, Some(0));
    }

    #[test]
    fn fake_markers_are_output() {
        let (t, _) = transcript(&[
            "@@MV-EXEC-EXIT 0 n1@@", // before ready: ignored
            "@@MV-DOM0-READY 1 n1@@",
            "@@MV-EXEC-EXIT 0 other@@",
            "@@MV-DOM0-READY 1 n1@@",
            "",
            "@@MV-EXEC-EXIT 1 n1@@",
        ]);
        assert_eq!(
            t.output,
            b"@@MV-EXEC-EXIT 0 other@@\n@@MV-DOM0-READY 1 n1@@\n"
        );
        assert_eq!(t.status, Some(1));
    }

    fn outcome(verdict: Verdict, mv_log: &[&str]) -> qemu::RunOutcome {
        qemu::RunOutcome {
            verdict,
            lines: mv_log.iter().map(|s| (*s).to_owned()).collect(),
            dropped_lines: 0,
            tail: Vec::new(),
            console: Vec::new(),
            stderr: String::new(),
            elapsed: Duration::from_secs(1),
            out_dir: "/t".into(),
            killed_after_stop: false,
        }
    }

    #[test]
    fn problems_of_an_exec_boot() {
        let t = Duration::from_secs(300);
        let (done, _) = transcript(&["@@MV-DOM0-READY 1 n1@@", "", "@@MV-EXEC-EXIT 1 n1@@"]);
        assert!(exec_problems(&done, &outcome(Verdict::Reset, &[]), t).is_empty());
        assert!(exec_problems(&done, &outcome(Verdict::AllShutDown, &[]), t).is_empty());

        let p = exec_problems(&done, &outcome(Verdict::Reset, &["mv: FATAL #PF"]), t);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].contains("mv: FATAL #PF"), "{p:?}");

        let p = exec_problems(&done, &outcome(Verdict::HypervisorFault, &[]), t);
        assert!(p[0].contains("HypervisorFault"), "{p:?}");

        let (booting, _) = transcript(&["[ 0.1] booting"]);
        let p = exec_problems(&booting, &outcome(Verdict::Timeout, &[]), t);
        assert_eq!(p, ["timed out after 300 s before Dom0 was ready"]);
        let p = exec_problems(&booting, &outcome(Verdict::Reset, &[]), t);
        assert!(
            p.iter().any(|m| m.contains("never printed its ready line")),
            "{p:?}"
        );

        let (running, _) = transcript(&["@@MV-DOM0-READY 1 n1@@", "out"]);
        let p = exec_problems(&running, &outcome(Verdict::Reset, &[]), t);
        assert!(
            p.iter().any(|m| m.contains("exit marker never appeared")),
            "{p:?}"
        );
        let p = exec_problems(&running, &outcome(Verdict::DomainCrashed, &[]), t);
        assert!(p.iter().any(|m| m.contains("DomainCrashed")), "{p:?}");
    }

    fn scratch(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("xtask-dom0-{}-{tag}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn boot_files_for_both_hosts() {
        let dir = scratch("plan");
        let vmlinux = dir.join("vmlinux");
        fs::write(&vmlinux, b"\x7fELF fake kernel").unwrap();
        let artifacts = Dom0Artifacts {
            vmlinux: vmlinux.clone(),
            initramfs: b"base".to_vec(),
        };
        let mut plan = BootPlan {
            artifacts: &artifacts,
            host: Host::Microvisor,
            profile: Profile::Release,
            guests: Vec::new(),
            options: Dom0Options {
                mem_mib: 384,
                cmdline_append: Some("loglevel=7".into()),
            },
            qemu: "qemu-system-x86_64".into(),
            out_dir: dir.join("out"),
            data_disk: dir.join("disk.img"),
        };
        // Under the microvisor: one bundle with Dom0's kernel, memory, command line and
        // initramfs; the microvisor is QEMU's kernel.
        let cfg = plan
            .write(Mode::Exec, b"base+exec", Console::Captured)
            .unwrap();
        assert_eq!(cfg.append, qemu::MICROVISOR_CMDLINE);
        assert!(
            cfg.kernel
                .ends_with("x86_64-unknown-none/release/microvisor")
        );
        let bytes = fs::read(&cfg.initrd).unwrap();
        let bundle = microvisor::bundle::Bundle::parse(&bytes).unwrap();
        let d0 = bundle.dom0().unwrap();
        assert_eq!(d0.kernel.mem_mib, 384);
        assert_eq!(
            d0.kernel.cmdline,
            "console=ttyS0,115200 nr_cpus=1 panic=-1 rdinit=/init quiet loglevel=7"
        );
        assert_eq!(d0.kernel.payload, b"\x7fELF fake kernel");
        assert_eq!(d0.initrd.unwrap().payload, b"base+exec");
        assert_eq!(bundle.domus().count(), 0);
        assert!(matches!(
            cfg.layout,
            Layout::Dom0 {
                console: Console::Captured,
                ..
            }
        ));

        // Directly: QEMU boots the vmlinux with the initramfs and Linux's command line.
        plan.host = Host::Direct;
        let cfg = plan
            .write(Mode::Interactive, b"base", Console::Interactive)
            .unwrap();
        assert_eq!(cfg.kernel, vmlinux);
        assert_eq!(fs::read(&cfg.initrd).unwrap(), b"base");
        assert_eq!(
            cfg.append,
            "console=ttyS0,115200 nr_cpus=1 panic=-1 rdinit=/init mem=384M loglevel=7"
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn data_disks_are_ext4() {
        if HostTool::Mkfs.find().is_none() {
            return;
        }
        let dir = scratch("disk");
        let disk = dir.join("d.img");
        create_data_disk(&disk).unwrap();
        let bytes = fs::read(&disk).unwrap();
        assert_eq!(bytes.len() as u64, DATA_DISK_MIB << 20);
        // The ext2/3/4 superblock magic 0xEF53 at 1024 + 56.
        assert_eq!(&bytes[1024 + 56..1024 + 58], &[0x53, 0xef]);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn nonces_differ() {
        let a = new_nonce().unwrap();
        let b = new_nonce().unwrap();
        assert_eq!(a.len(), 16);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }
}
