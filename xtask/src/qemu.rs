//! The one place that builds the QEMU command line, runs QEMU with a wall-clock limit, and
//! maps its exit status to a [`Verdict`].
//!
//! Serial ports: COM1 (reserved for a future Dom0 console) goes to `<dir>/com1.log`; COM2,
//! the microvisor log with guest console output, is QEMU's stdout, which xtask reads line
//! by line, writes to `<dir>/serial.log` and optionally echoes to the terminal.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::fmt;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, LineWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, ChildStdout, Command, ExitStatus, Stdio};
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
/// Guest-physical RAM.
const MEMORY: &str = "512M";
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
}

impl QemuConfig {
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
        opt("-m", Some(MEMORY.into()));
        opt("-nodefaults", None);
        opt("-display", Some("none".into()));
        opt("-no-reboot", None);
        opt("-kernel", Some(self.kernel.clone().into_os_string()));
        opt("-initrd", Some(self.initrd.clone().into_os_string()));
        opt("-append", Some(self.append.clone().into()));
        // The order of -serial options fixes the ports: the first is COM1, the second COM2.
        let mut com1 = OsString::from("file:");
        com1.push(self.out_dir.join(COM1_LOG));
        opt("-serial", Some(com1));
        opt("-serial", Some("stdio".into()));
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

/// What a QEMU run produced.
#[derive(Debug)]
pub(crate) struct RunOutcome {
    /// How it ended.
    pub(crate) verdict: Verdict,
    /// COM2 lines (without line endings), at most [`MAX_STORED_LINES`].
    pub(crate) lines: Vec<String>,
    /// Lines not kept in `lines` because there were too many (the log file has them).
    pub(crate) dropped_lines: usize,
    /// The last [`TAIL_LINES`] lines, even when some were dropped.
    pub(crate) tail: Vec<String>,
    /// QEMU's stderr.
    pub(crate) stderr: String,
    /// Wall-clock time of the run.
    pub(crate) elapsed: Duration,
    /// The directory holding the logs.
    pub(crate) out_dir: PathBuf,
}

impl RunOutcome {
    /// Prints the last serial lines (and QEMU's stderr, if any) to stdout, indented.
    pub(crate) fn print_tail(&self) {
        let serial = display_path(&self.out_dir.join(SERIAL_LOG));
        if self.tail.is_empty() {
            println!("    (no output on COM2; log: {serial})");
        } else {
            println!("    last {} lines of {serial}:", self.tail.len());
            for line in &self.tail {
                println!("    | {line}");
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
}

/// Serial lines read from QEMU's stdout.
#[derive(Debug, Default)]
struct Captured {
    lines: Vec<String>,
    dropped: usize,
    tail: VecDeque<String>,
    log_error: Option<io::Error>,
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

/// Reads COM2 line by line: writes each line to `log`, echoes it if asked, keeps it.
fn capture_serial(stdout: ChildStdout, log: File, echo: bool) -> Captured {
    let mut reader = BufReader::new(stdout);
    let mut log = Some(LineWriter::new(log));
    let mut captured = Captured::default();
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
        let text = String::from_utf8_lossy(&buf);
        let line = text.trim_end_matches(['\n', '\r']);
        if let Some(w) = log.as_mut()
            && let Err(e) = writeln!(w, "{line}")
        {
            captured.log_error = Some(e);
            log = None;
        }
        if echo {
            // A closed terminal must not stop the capture.
            let _ = writeln!(io::stdout().lock(), "{line}");
        }
        captured.push(line.to_owned());
    }
    captured
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

/// Waits for `child`, killing it once `deadline` passes. `None` means it timed out.
fn wait_with_deadline(child: &mut Child, deadline: Option<Instant>) -> Result<Option<ExitStatus>> {
    loop {
        if let Some(status) = child.try_wait().context("could not wait for QEMU")? {
            return Ok(Some(status));
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            // It may exit on its own in between; either way it is gone afterwards.
            let _ = child.kill();
            child
                .wait()
                .context("could not reap QEMU after killing it")?;
            return Ok(None);
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Boots QEMU with `config` and returns once it has exited or been killed.
pub(crate) fn run(config: &QemuConfig, opts: RunOptions) -> Result<RunOutcome> {
    prepare_out_dir(&config.out_dir)?;
    let serial_path = config.out_dir.join(SERIAL_LOG);
    let serial_log = File::create(&serial_path)
        .with_context(|| format!("could not create {}", serial_path.display()))?;

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
    let serial_thread = thread::spawn(move || capture_serial(stdout, serial_log, echo));
    let stderr_thread = thread::spawn(move || capture_stderr(stderr, echo));

    let status = match wait_with_deadline(&mut child, opts.timeout.map(|t| start + t)) {
        Ok(status) => status,
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(e);
        }
    };
    let elapsed = start.elapsed();
    // QEMU is gone, so both pipes reach end of file and the threads finish.
    let captured = serial_thread
        .join()
        .map_err(|_| anyhow!("the serial capture thread panicked"))?;
    let stderr = stderr_thread
        .join()
        .map_err(|_| anyhow!("the stderr capture thread panicked"))?;
    if let Some(e) = &captured.log_error {
        eprintln!(
            "xtask: warning: could not write {}: {e}",
            serial_path.display()
        );
    }
    let stderr_path = config.out_dir.join(STDERR_LOG);
    fs::write(&stderr_path, &stderr)
        .with_context(|| format!("could not write {}", stderr_path.display()))?;

    Ok(RunOutcome {
        verdict: status.map_or(Verdict::Timeout, Verdict::from_status),
        lines: captured.lines,
        dropped_lines: captured.dropped,
        tail: captured.tail.into(),
        stderr,
        elapsed,
        out_dir: config.out_dir.clone(),
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
