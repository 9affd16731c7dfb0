//! The one place that builds the QEMU command line, runs QEMU with a wall-clock limit, and
//! maps its exit status to a [`Verdict`].
//!
//! Two layouts:
//!
//! - **DomU only** (the `hello`, `two-guests`, `hostile` scenarios, `bench hypercall`,
//!   `run --no-dom0`): COM1 goes to `<dir>/com1.log`; COM2, the microvisor log with guest
//!   console output, is QEMU's stdout, which xtask reads line by line, writes to
//!   `<dir>/serial.log` and optionally echoes to the terminal. 512 MiB of RAM.
//! - **Dom0** (ARCHITECTURE-BRIEF section 2): 2 GiB of RAM, a virtio-blk data disk and a
//!   virtio-net NIC on QEMU user networking. COM1 is Dom0's console: either the user's
//!   terminal (`-serial mon:stdio`, Ctrl-A X quits) or QEMU's stdout, captured by xtask into
//!   `<dir>/com1.log`. COM2, the microvisor log, goes to `<dir>/serial.log` directly.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::fmt;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, LineWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};

use crate::build::display_path;

/// Machine type: q35 (ICH9, PCIe); PVH boot works on it.
const MACHINE: &str = "q35";
/// `max` exposes SVM with NPT and VGIF under TCG without warnings (PLATFORM-FACTS §1.2).
pub(crate) const CPU: &str = "max";
/// KVM cannot run nested SVM on our machines; everything runs under TCG.
pub(crate) const ACCEL: &str = "tcg";
/// pCPU 0 for the microvisor (later Dom0) and two pCPUs for DomU vCPUs.
pub(crate) const SMP: &str = "3";
/// Guest-physical RAM of DomU-only runs.
const MEMORY: &str = "512M";
/// Guest-physical RAM of Dom0 runs.
const DOM0_MEMORY: &str = "2G";
/// The exit device: writing `v` to port 0xf4 makes QEMU exit with status `(v << 1) | 1`.
const DEBUG_EXIT_DEVICE: &str = "isa-debug-exit,iobase=0xf4,iosize=0x04";
/// QEMU's own diagnostics, written to `qemu-debug.log`. `guest_errors` is cheap; add
/// `int,cpu_reset` by hand when chasing a triple fault (they are very verbose).
const DEBUG_LOG_ITEMS: &str = "guest_errors";

/// COM2 (microvisor log) as captured by xtask.
pub(crate) const SERIAL_LOG: &str = "serial.log";
/// COM1 (future Dom0 console).
pub(crate) const COM1_LOG: &str = "com1.log";
/// QEMU's `-d` log.
pub(crate) const DEBUG_LOG: &str = "qemu-debug.log";
/// QEMU's stderr (its own errors and warnings).
pub(crate) const STDERR_LOG: &str = "qemu-stderr.log";

/// Most serial lines kept in memory for assertions; the log file always gets every line.
const MAX_STORED_LINES: usize = 500_000;
/// Lines shown from the end of the log when a run fails.
pub(crate) const TAIL_LINES: usize = 20;

/// The microvisor command line for every xtask run: with `exit_on_idle`, the microvisor
/// writes its verdict to the exit port once every domain has finished.
pub(crate) const MICROVISOR_CMDLINE: &str = "exit_on_idle";

/// The value the microvisor writes to the exit port when every domain powered off.
pub(crate) const EXIT_VALUE_PASS: u8 = 0x10;
/// ... when a domain crashed or shut down for another reason.
pub(crate) const EXIT_VALUE_DOMAIN_CRASHED: u8 = 0x11;
/// ... on a microvisor panic or fatal exception.
pub(crate) const EXIT_VALUE_HYPERVISOR_FAULT: u8 = 0x12;

/// QEMU's exit status after the guest writes `value` to isa-debug-exit.
pub(crate) const fn debug_exit_status(value: u8) -> i32 {
    ((value as i32) << 1) | 1
}

/// Status 33.
pub(crate) const STATUS_PASS: i32 = debug_exit_status(EXIT_VALUE_PASS);
/// Status 35.
pub(crate) const STATUS_DOMAIN_CRASHED: i32 = debug_exit_status(EXIT_VALUE_DOMAIN_CRASHED);
/// Status 37.
pub(crate) const STATUS_HYPERVISOR_FAULT: i32 = debug_exit_status(EXIT_VALUE_HYPERVISOR_FAULT);

/// How a QEMU run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Status 33: every domain shut down with reason poweroff. The only pass.
    AllShutDown,
    /// Status 35: a domain crashed or shut down for another reason.
    DomainCrashed,
    /// Status 37: the microvisor panicked or took a fatal exception.
    HypervisorFault,
    /// Status 0: a reset (a triple fault under `-no-reboot`) or QEMU quit on its own.
    Reset,
    /// Any other status (1 = QEMU's own error); a death by signal `n` is `128 + n`.
    QemuError(i32),
    /// The wall-clock limit passed and xtask killed QEMU.
    Timeout,
}

impl Verdict {
    /// Maps an exit code (or the signal that killed QEMU) to a verdict.
    pub(crate) fn from_exit(code: Option<i32>, signal: Option<i32>) -> Self {
        match (code, signal) {
            (Some(STATUS_PASS), _) => Verdict::AllShutDown,
            (Some(STATUS_DOMAIN_CRASHED), _) => Verdict::DomainCrashed,
            (Some(STATUS_HYPERVISOR_FAULT), _) => Verdict::HypervisorFault,
            (Some(0), _) => Verdict::Reset,
            (Some(code), _) => Verdict::QemuError(code),
            (None, Some(sig)) => Verdict::QemuError(128 + sig),
            (None, None) => Verdict::QemuError(-1),
        }
    }

    /// Maps QEMU's exit status.
    pub(crate) fn from_status(status: ExitStatus) -> Self {
        use std::os::unix::process::ExitStatusExt;
        Self::from_exit(status.code(), status.signal())
    }

    /// Whether this is the pass verdict.
    pub(crate) fn is_pass(self) -> bool {
        self == Verdict::AllShutDown
    }

    /// The QEMU exit status that produces this verdict, if there is one.
    pub(crate) fn qemu_status(self) -> Option<i32> {
        match self {
            Verdict::AllShutDown => Some(STATUS_PASS),
            Verdict::DomainCrashed => Some(STATUS_DOMAIN_CRASHED),
            Verdict::HypervisorFault => Some(STATUS_HYPERVISOR_FAULT),
            Verdict::Reset => Some(0),
            Verdict::QemuError(code) => Some(code),
            Verdict::Timeout => None,
        }
    }

    /// A sentence fragment explaining the verdict.
    pub(crate) fn explain(self) -> String {
        match self {
            Verdict::AllShutDown => "every domain shut down with reason poweroff".into(),
            Verdict::DomainCrashed => {
                "a domain crashed or shut down for a reason other than poweroff".into()
            }
            Verdict::HypervisorFault => "the microvisor panicked or took a fatal exception".into(),
            Verdict::Reset => "the machine reset or QEMU quit without writing a verdict \
                               (under -no-reboot usually a triple fault in the microvisor)"
                .into(),
            Verdict::QemuError(1) => "QEMU itself failed; see its stderr".into(),
            Verdict::QemuError(code) if code > 128 => {
                format!("QEMU was killed by signal {}", code - 128)
            }
            Verdict::QemuError(_) => "QEMU exited with an unexpected status".into(),
            Verdict::Timeout => "the run timed out and xtask killed QEMU".into(),
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Verdict::AllShutDown => "AllShutDown",
            Verdict::DomainCrashed => "DomainCrashed",
            Verdict::HypervisorFault => "HypervisorFault",
            Verdict::Reset => "Reset",
            Verdict::QemuError(_) => "QemuError",
            Verdict::Timeout => "Timeout",
        };
        // `pad` so that width and alignment flags work (`{:<32}`).
        match self.qemu_status() {
            Some(status) => f.pad(&format!("{name} (QEMU status {status})")),
            None => f.pad(name),
        }
    }
}

/// Where Dom0's console (COM1) goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Console {
    /// The user's terminal, multiplexed with the QEMU monitor (`-serial mon:stdio`).
    Interactive,
    /// QEMU's stdout, read by xtask and written to `com1.log`.
    Captured,
}

/// Which machine to build around the kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Layout {
    /// Only boot-time DomUs: COM2 (the microvisor log) on stdout, 512 MiB.
    DomUOnly,
    /// Dom0's machine: data disk, NIC, COM1 as its console, COM2 to `serial.log`, 2 GiB.
    Dom0 {
        /// Where COM1 goes.
        console: Console,
        /// The raw disk image attached as virtio-blk.
        data_disk: PathBuf,
    },
}

/// Everything that varies between QEMU runs.
#[derive(Clone, Debug)]
pub(crate) struct QemuConfig {
    /// The QEMU binary.
    pub(crate) qemu: PathBuf,
    /// The microvisor ELF (`-kernel`).
    pub(crate) kernel: PathBuf,
    /// The boot bundle (`-initrd`).
    pub(crate) initrd: PathBuf,
    /// The microvisor command line (`-append`).
    pub(crate) append: String,
    /// Where the logs go.
    pub(crate) out_dir: PathBuf,
    /// The machine around the kernel.
    pub(crate) layout: Layout,
}

impl QemuConfig {
    /// Whether QEMU's stdout carries COM1 (Dom0's console) rather than COM2.
    pub(crate) fn stdout_is_com1(&self) -> bool {
        matches!(self.layout, Layout::Dom0 { .. })
    }

    /// The log file xtask writes what it reads from QEMU's stdout into.
    pub(crate) fn stdout_log(&self) -> PathBuf {
        self.out_dir.join(if self.stdout_is_com1() {
            COM1_LOG
        } else {
            SERIAL_LOG
        })
    }

    /// The full argument list (without the program).
    pub(crate) fn args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = Vec::new();
        let mut opt = |name: &str, value: Option<OsString>| {
            args.push(name.into());
            args.extend(value);
        };
        opt("-machine", Some(MACHINE.into()));
        opt("-cpu", Some(CPU.into()));
        opt("-accel", Some(ACCEL.into()));
        opt("-smp", Some(SMP.into()));
        let memory = match self.layout {
            Layout::DomUOnly => MEMORY,
            Layout::Dom0 { .. } => DOM0_MEMORY,
        };
        opt("-m", Some(memory.into()));
        opt("-nodefaults", None);
        opt("-display", Some("none".into()));
        opt("-no-reboot", None);
        opt("-kernel", Some(self.kernel.clone().into_os_string()));
        opt("-initrd", Some(self.initrd.clone().into_os_string()));
        opt("-append", Some(self.append.clone().into()));
        // The order of -serial options fixes the ports: the first is COM1, the second COM2.
        let file = |name: &str| {
            let mut arg = OsString::from("file:");
            arg.push(self.out_dir.join(name));
            arg
        };
        match &self.layout {
            Layout::DomUOnly => {
                opt("-serial", Some(file(COM1_LOG)));
                opt("-serial", Some("stdio".into()));
            }
            Layout::Dom0 { console, data_disk } => {
                let com1 = match console {
                    Console::Interactive => "mon:stdio",
                    Console::Captured => "stdio",
                };
                opt("-serial", Some(com1.into()));
                opt("-serial", Some(file(SERIAL_LOG)));
                let mut drive = OsString::from("file=");
                drive.push(data_disk);
                drive.push(",format=raw,if=none,id=data0,cache=writeback");
                opt("-drive", Some(drive));
                opt("-device", Some("virtio-blk-pci,drive=data0".into()));
                opt("-netdev", Some("user,id=net0".into()));
                // No option ROM: nothing boots from the NIC, and the ROM file is a separate
                // package (ipxe-qemu) that a minimal QEMU install may lack.
                opt(
                    "-device",
                    Some("virtio-net-pci,netdev=net0,romfile=".into()),
                );
            }
        }
        opt("-device", Some(DEBUG_EXIT_DEVICE.into()));
        opt("-d", Some(DEBUG_LOG_ITEMS.into()));
        opt("-D", Some(self.out_dir.join(DEBUG_LOG).into_os_string()));
        args
    }

    /// The command as a shell line, for humans (copy-paste to run QEMU by hand).
    pub(crate) fn shell_line(&self) -> String {
        let mut words = vec![shell_quote(&self.qemu.to_string_lossy())];
        words.extend(
            self.args()
                .iter()
                .map(|a| shell_quote(&a.to_string_lossy())),
        );
        words.join(" ")
    }
}

/// Quotes `word` for a POSIX shell when it needs it.
pub(crate) fn shell_quote(word: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "_-+=/.,:@%".contains(c);
    if !word.is_empty() && word.chars().all(plain) {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// How to run QEMU.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RunOptions {
    /// Wall-clock limit; `None` runs until QEMU exits.
    pub(crate) timeout: Option<Duration>,
    /// Echo serial lines (and QEMU's stderr) to the terminal as they arrive.
    pub(crate) echo: bool,
}

/// What a [`LineWatcher`] wants after a line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Watch {
    /// Keep going.
    Continue,
    /// Give QEMU this long to exit by itself, then kill it (not a timeout).
    StopWithin(Duration),
}

/// Sees every line of QEMU's stdout as it arrives, on the thread that runs QEMU.
pub(crate) trait LineWatcher {
    /// One line, without its line ending (`\n` or `\r\n`), and the time since QEMU started.
    fn line(&mut self, line: &[u8], at: Duration) -> Watch;
}

/// A watcher that only watches.
#[derive(Debug)]
struct NoWatcher;

impl LineWatcher for NoWatcher {
    fn line(&mut self, _line: &[u8], _at: Duration) -> Watch {
        Watch::Continue
    }
}

/// What a QEMU run produced.
#[derive(Debug)]
pub(crate) struct RunOutcome {
    /// How it ended.
    pub(crate) verdict: Verdict,
    /// Microvisor log (COM2) lines (without line endings), at most [`MAX_STORED_LINES`].
    pub(crate) lines: Vec<String>,
    /// Lines not kept in `lines` because there were too many (the log file has them).
    pub(crate) dropped_lines: usize,
    /// The last [`TAIL_LINES`] lines of the microvisor log, even when some were dropped.
    pub(crate) tail: Vec<String>,
    /// Dom0's console (COM1) lines when xtask captured them (Dom0 layout), else empty.
    pub(crate) console: Vec<String>,
    /// QEMU's stderr.
    pub(crate) stderr: String,
    /// Wall-clock time of the run.
    pub(crate) elapsed: Duration,
    /// The directory holding the logs.
    pub(crate) out_dir: PathBuf,
    /// Whether a watcher asked to stop and QEMU had to be killed after its grace period.
    pub(crate) killed_after_stop: bool,
}

impl RunOutcome {
    /// Prints the last serial lines (and QEMU's stderr, if any) to stdout, indented.
    pub(crate) fn print_tail(&self) {
        let serial = display_path(&self.out_dir.join(SERIAL_LOG));
        if self.tail.is_empty() {
            println!("    (no microvisor output on COM2; log: {serial})");
        } else {
            println!("    last {} lines of {serial}:", self.tail.len());
            for line in &self.tail {
                println!("    | {line}");
            }
        }
        if !self.console.is_empty() {
            let com1 = display_path(&self.out_dir.join(COM1_LOG));
            let n = self.console.len().min(TAIL_LINES);
            println!("    last {n} lines of {com1} (Dom0 console):");
            for line in &self.console[self.console.len() - n..] {
                println!("    > {line}");
            }
        }
        let stderr = self.stderr.trim();
        if !stderr.is_empty() {
            println!("    QEMU stderr:");
            for line in stderr.lines().take(TAIL_LINES) {
                println!("    ! {line}");
            }
        }
    }

    /// The first microvisor-failure line (`mv: FATAL`, `mv: PANIC`) of the log, numbered.
    pub(crate) fn hypervisor_failure(&self) -> Option<(usize, &str)> {
        self.lines.iter().enumerate().find_map(|(n, l)| {
            crate::serial::HYPERVISOR_FAILURE_MARKERS
                .iter()
                .any(|m| l.contains(m))
                .then_some((n + 1, l.as_str()))
        })
    }
}

/// Serial lines read from QEMU's stdout.
#[derive(Debug, Default)]
struct Captured {
    lines: Vec<String>,
    dropped: usize,
    tail: VecDeque<String>,
}

impl Captured {
    fn push(&mut self, line: String) {
        if self.tail.len() == TAIL_LINES {
            self.tail.pop_front();
        }
        self.tail.push_back(line.clone());
        if self.lines.len() < MAX_STORED_LINES {
            self.lines.push(line);
        } else {
            self.dropped += 1;
        }
    }
}

/// Strips `\n` and one `\r` before it.
fn strip_line_ending(mut line: &[u8]) -> &[u8] {
    if let [rest @ .., b'\n'] = line {
        line = rest;
    }
    if let [rest @ .., b'\r'] = line {
        line = rest;
    }
    line
}

/// Reads QEMU's stdout line by line: writes each line to `log`, echoes it if asked, and
/// sends it with its arrival time to `tx`. Returns the first error writing the log.
fn read_stdout(
    stdout: ChildStdout,
    log: File,
    echo: bool,
    start: Instant,
    tx: mpsc::Sender<(Vec<u8>, Duration)>,
) -> Option<io::Error> {
    let mut reader = BufReader::new(stdout);
    let mut log = Some(LineWriter::new(log));
    let mut log_error = None;
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
        let at = start.elapsed();
        let line = strip_line_ending(&buf);
        if let Some(w) = log.as_mut()
            && let Err(e) = w.write_all(line).and_then(|()| w.write_all(b"\n"))
        {
            log_error = Some(e);
            log = None;
        }
        if echo {
            // A closed terminal must not stop the capture.
            let mut out = io::stdout().lock();
            let _ = out.write_all(line).and_then(|()| out.write_all(b"\n"));
        }
        if tx.send((line.to_vec(), at)).is_err() {
            break;
        }
    }
    log_error
}

/// Reads QEMU's stderr to the end, echoing it if asked.
fn capture_stderr(stderr: ChildStderr, echo: bool) -> String {
    let mut reader = BufReader::new(stderr);
    if !echo {
        let mut bytes = Vec::new();
        let _ = reader.read_to_end(&mut bytes);
        return String::from_utf8_lossy(&bytes).into_owned();
    }
    let mut all = String::new();
    let mut buf = Vec::new();
    while matches!(reader.read_until(b'\n', &mut buf), Ok(n) if n > 0) {
        let text = String::from_utf8_lossy(&buf);
        let _ = write!(io::stderr().lock(), "{text}");
        all.push_str(&text);
        buf.clear();
    }
    all
}

/// Makes the kernel send SIGKILL to the child when xtask dies (also from SIGTERM or
/// SIGKILL, where no Rust code runs), so QEMU never outlives an interrupted xtask.
/// The signal fires when the spawning *thread* exits; callers wait for the child on the
/// thread that spawned it.
#[cfg(target_os = "linux")]
fn kill_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    let Ok(parent) = libc::pid_t::try_from(std::process::id()) else {
        return;
    };
    let hook = move || -> io::Result<()> {
        // SAFETY: PR_SET_PDEATHSIG takes a signal number by value; no memory is touched.
        if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // If xtask died before prctl, the child has been re-parented: give up.
        // SAFETY: getppid has no preconditions.
        if unsafe { libc::getppid() } != parent {
            return Err(io::Error::from_raw_os_error(libc::ESRCH));
        }
        Ok(())
    };
    // SAFETY: the hook runs in the forked child before exec. It only makes the
    // async-signal-safe system calls prctl and getppid and builds its errors without
    // allocating, as required between fork and exec in a multithreaded process.
    unsafe {
        cmd.pre_exec(hook);
    }
}

#[cfg(not(target_os = "linux"))]
fn kill_with_parent(_cmd: &mut Command) {}

/// Removes the logs of an earlier run in `dir` and makes sure it exists.
fn prepare_out_dir(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("could not create {}", dir.display()))?;
    for name in [SERIAL_LOG, COM1_LOG, DEBUG_LOG, STDERR_LOG] {
        let path = dir.join(name);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(e).with_context(|| format!("could not remove {}", path.display()));
            }
        }
    }
    Ok(())
}

/// Kills `child` (it may have exited by itself in between) and reaps it.
fn kill_and_reap(child: &mut Child) -> Result<()> {
    let _ = child.kill();
    child
        .wait()
        .context("could not reap QEMU after killing it")?;
    Ok(())
}

/// Reads a log file written by QEMU (COM2 in the Dom0 layout) into [`Captured`].
fn read_log_file(path: &Path) -> Captured {
    let mut captured = Captured::default();
    if let Ok(bytes) = fs::read(path) {
        for line in bytes.split(|&b| b == b'\n') {
            captured.push(String::from_utf8_lossy(strip_line_ending(line)).into_owned());
        }
        // `split` yields an empty piece after the final newline.
        if bytes.ends_with(b"\n") {
            captured.lines.pop();
            captured.tail.pop_back();
        }
    }
    captured
}

/// Boots QEMU with `config` and returns once it has exited or been killed.
pub(crate) fn run(config: &QemuConfig, opts: RunOptions) -> Result<RunOutcome> {
    run_watched(config, opts, &mut NoWatcher)
}

/// Like [`run`], calling `watcher` for every line of QEMU's stdout (COM2 in the DomU
/// layout, COM1 in the Dom0 layout with a captured console).
pub(crate) fn run_watched(
    config: &QemuConfig,
    opts: RunOptions,
    watcher: &mut dyn LineWatcher,
) -> Result<RunOutcome> {
    prepare_out_dir(&config.out_dir)?;
    let stdout_path = config.stdout_log();
    let stdout_log = File::create(&stdout_path)
        .with_context(|| format!("could not create {}", stdout_path.display()))?;

    let mut cmd = Command::new(&config.qemu);
    cmd.args(config.args())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    kill_with_parent(&mut cmd);

    let start = Instant::now();
    let mut child = cmd.spawn().with_context(|| {
        format!(
            "could not start {}; is QEMU installed?",
            config.qemu.display()
        )
    })?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow!("QEMU stdout was not piped"))?;
    let stderr = child
        .stderr
        .take()
        .ok_or_else(|| anyhow!("QEMU stderr was not piped"))?;
    let echo = opts.echo;
    let (tx, rx) = mpsc::channel();
    let stdout_thread = thread::spawn(move || read_stdout(stdout, stdout_log, echo, start, tx));
    let stderr_thread = thread::spawn(move || capture_stderr(stderr, echo));

    let deadline = opts.timeout.map(|t| start + t);
    let mut stop_at: Option<Instant> = None;
    let mut captured = Captured::default();
    let mut handle = |line: Vec<u8>, at: Duration, stop_at: &mut Option<Instant>| {
        if let Watch::StopWithin(grace) = watcher.line(&line, at) {
            let when = Instant::now() + grace;
            *stop_at = Some(stop_at.map_or(when, |s| s.min(when)));
        }
        captured.push(String::from_utf8_lossy(&line).into_owned());
    };
    let mut killed_after_stop = false;
    let status = loop {
        match rx.recv_timeout(Duration::from_millis(20)) {
            Ok((line, at)) => {
                handle(line, at, &mut stop_at);
                continue;
            }
            Err(mpsc::RecvTimeoutError::Timeout | mpsc::RecvTimeoutError::Disconnected) => {}
        }
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) => {}
            Err(e) => {
                let _ = kill_and_reap(&mut child);
                return Err(e).context("could not wait for QEMU");
            }
        }
        let now = Instant::now();
        if stop_at.is_some_and(|s| now >= s) {
            kill_and_reap(&mut child)?;
            killed_after_stop = true;
            break None;
        }
        if deadline.is_some_and(|d| now >= d) {
            kill_and_reap(&mut child)?;
            break None;
        }
    };
    let elapsed = start.elapsed();
    // QEMU is gone, so the pipes reach end of file and the threads finish; lines still in
    // the channel are handled first.
    for (line, at) in rx {
        handle(line, at, &mut stop_at);
    }
    let log_error = stdout_thread
        .join()
        .map_err(|_| anyhow!("the serial capture thread panicked"))?;
    let stderr = stderr_thread
        .join()
        .map_err(|_| anyhow!("the stderr capture thread panicked"))?;
    if let Some(e) = &log_error {
        eprintln!(
            "xtask: warning: could not write {}: {e}",
            stdout_path.display()
        );
    }
    let stderr_path = config.out_dir.join(STDERR_LOG);
    fs::write(&stderr_path, &stderr)
        .with_context(|| format!("could not write {}", stderr_path.display()))?;

    let (mv_log, console) = if config.stdout_is_com1() {
        (
            read_log_file(&config.out_dir.join(SERIAL_LOG)),
            captured.lines,
        )
    } else {
        (captured, Vec::new())
    };
    let verdict = match status {
        Some(status) => Verdict::from_status(status),
        None if killed_after_stop => Verdict::QemuError(128 + 9),
        None => Verdict::Timeout,
    };
    Ok(RunOutcome {
        verdict,
        lines: mv_log.lines,
        dropped_lines: mv_log.dropped,
        tail: mv_log.tail.into(),
        console,
        stderr,
        elapsed,
        out_dir: config.out_dir.clone(),
        killed_after_stop,
    })
}

/// What an interactive run produced.
#[derive(Debug)]
pub(crate) struct InteractiveOutcome {
    /// How QEMU ended (Ctrl-A X and a Dom0 power-off both give status 0).
    pub(crate) verdict: Verdict,
    /// The microvisor log (COM2).
    pub(crate) lines: Vec<String>,
    /// Wall-clock time of the run.
    pub(crate) elapsed: Duration,
}

/// Boots QEMU with the terminal attached (stdin, stdout and stderr inherited) and waits
/// for it to exit. Meant for [`Console::Interactive`].
pub(crate) fn run_interactive(config: &QemuConfig) -> Result<InteractiveOutcome> {
    prepare_out_dir(&config.out_dir)?;
    let mut cmd = Command::new(&config.qemu);
    cmd.args(config.args());
    kill_with_parent(&mut cmd);
    let start = Instant::now();
    let status = cmd
        .status()
        .with_context(|| format!("could not start {}", config.qemu.display()))?;
    let log = read_log_file(&config.out_dir.join(SERIAL_LOG));
    Ok(InteractiveOutcome {
        verdict: Verdict::from_status(status),
        lines: log.lines,
        elapsed: start.elapsed(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> QemuConfig {
        QemuConfig {
            qemu: "qemu-system-x86_64".into(),
            kernel: "/t/microvisor".into(),
            initrd: "/t/run/bundle.img".into(),
            append: "exit_on_idle".into(),
            out_dir: "/t/run".into(),
            layout: Layout::DomUOnly,
        }
    }

    #[test]
    fn exit_statuses_map_to_verdicts() {
        assert_eq!(STATUS_PASS, 33);
        assert_eq!(STATUS_DOMAIN_CRASHED, 35);
        assert_eq!(STATUS_HYPERVISOR_FAULT, 37);
        assert_eq!(Verdict::from_exit(Some(33), None), Verdict::AllShutDown);
        assert_eq!(Verdict::from_exit(Some(35), None), Verdict::DomainCrashed);
        assert_eq!(Verdict::from_exit(Some(37), None), Verdict::HypervisorFault);
        assert_eq!(Verdict::from_exit(Some(0), None), Verdict::Reset);
        assert_eq!(Verdict::from_exit(Some(1), None), Verdict::QemuError(1));
        assert_eq!(Verdict::from_exit(Some(3), None), Verdict::QemuError(3));
        assert_eq!(Verdict::from_exit(None, Some(9)), Verdict::QemuError(137));
        assert!(Verdict::AllShutDown.is_pass());
        for v in [
            Verdict::DomainCrashed,
            Verdict::HypervisorFault,
            Verdict::Reset,
            Verdict::QemuError(1),
            Verdict::Timeout,
        ] {
            assert!(!v.is_pass(), "{v} must not pass");
        }
    }

    #[test]
    fn verdicts_round_trip_through_their_status() {
        for v in [
            Verdict::AllShutDown,
            Verdict::DomainCrashed,
            Verdict::HypervisorFault,
            Verdict::Reset,
            Verdict::QemuError(1),
        ] {
            assert_eq!(Verdict::from_exit(v.qemu_status(), None), v);
        }
        assert_eq!(Verdict::Timeout.qemu_status(), None);
        assert_eq!(
            Verdict::AllShutDown.to_string(),
            "AllShutDown (QEMU status 33)"
        );
    }

    #[test]
    fn command_line_has_the_agreed_flags_in_order() {
        let args: Vec<String> = config()
            .args()
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let expected = [
            "-machine",
            "q35",
            "-cpu",
            "max",
            "-accel",
            "tcg",
            "-smp",
            "3",
            "-m",
            "512M",
            "-nodefaults",
            "-display",
            "none",
            "-no-reboot",
            "-kernel",
            "/t/microvisor",
            "-initrd",
            "/t/run/bundle.img",
            "-append",
            "exit_on_idle",
            "-serial",
            "file:/t/run/com1.log",
            "-serial",
            "stdio",
            "-device",
            "isa-debug-exit,iobase=0xf4,iosize=0x04",
            "-d",
            "guest_errors",
            "-D",
            "/t/run/qemu-debug.log",
        ];
        assert_eq!(args, expected);
    }

    #[test]
    fn dom0_layout_adds_disk_nic_and_swaps_the_serial_ports() {
        let mut cfg = config();
        cfg.layout = Layout::Dom0 {
            console: Console::Captured,
            data_disk: "/t/dom0-data.img".into(),
        };
        let args: Vec<String> = cfg
            .args()
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let joined = args.join(" ");
        assert!(
            joined.starts_with("-machine q35 -cpu max -accel tcg -smp 3 -m 2G -nodefaults "),
            "{joined}"
        );
        assert!(
            joined.contains("-serial stdio -serial file:/t/run/serial.log -drive"),
            "{joined}"
        );
        assert!(
            joined.contains(
                "-drive file=/t/dom0-data.img,format=raw,if=none,id=data0,cache=writeback \
                 -device virtio-blk-pci,drive=data0 -netdev user,id=net0 \
                 -device virtio-net-pci,netdev=net0,romfile= \
                 -device isa-debug-exit,iobase=0xf4,iosize=0x04"
            ),
            "{joined}"
        );
        assert!(cfg.stdout_is_com1());
        assert_eq!(cfg.stdout_log(), Path::new("/t/run/com1.log"));

        cfg.layout = Layout::Dom0 {
            console: Console::Interactive,
            data_disk: "/t/d.img".into(),
        };
        let line = cfg.shell_line();
        assert!(
            line.contains("-serial mon:stdio -serial file:/t/run/serial.log"),
            "{line}"
        );
        assert_eq!(config().stdout_log(), Path::new("/t/run/serial.log"));
    }

    #[test]
    fn line_endings_are_stripped_once() {
        assert_eq!(strip_line_ending(b"a\r\n"), b"a");
        assert_eq!(strip_line_ending(b"a\n"), b"a");
        assert_eq!(strip_line_ending(b"a\r\r\n"), b"a\r");
        assert_eq!(strip_line_ending(b"a"), b"a");
    }

    #[test]
    fn shell_line_quotes_only_when_needed() {
        let mut cfg = config();
        cfg.append = "exit_on_idle loglevel=2".into();
        let line = cfg.shell_line();
        assert!(
            line.starts_with("qemu-system-x86_64 -machine q35 "),
            "{line}"
        );
        assert!(line.contains("-append 'exit_on_idle loglevel=2'"), "{line}");
        assert!(line.contains("-serial file:/t/run/com1.log"), "{line}");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
    }

    #[test]
    fn captured_keeps_a_tail_after_dropping_lines() {
        let mut c = Captured::default();
        for i in 0..MAX_STORED_LINES + 30 {
            c.push(i.to_string());
        }
        assert_eq!(c.lines.len(), MAX_STORED_LINES);
        assert_eq!(c.dropped, 30);
        assert_eq!(c.tail.len(), TAIL_LINES);
        assert_eq!(c.tail.back().map(String::as_str), Some("500029"));
    }
}
