//! End-to-end tests of the `dom0` binary: exit codes and the stdout/stderr split as a
//! shell script sees them.

use std::io;
use std::process::{Command, Output};

fn dom0(args: &[&str]) -> io::Result<Output> {
    Command::new(env!("CARGO_BIN_EXE_dom0"))
        .args(args)
        .env("DOM0_SOCKET", "/nonexistent/dom0d.sock")
        .output()
}

#[test]
fn version_json_is_machine_readable() {
    let out = dom0(&["version", "-o", "json"]).unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(out.stderr.is_empty());
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["cli"], env!("CARGO_PKG_VERSION"));
    assert_eq!(doc["abi_interface"], shared_abi::INTERFACE_VERSION);
    assert_eq!(doc["control_protocol"], dom0::CONTROL_PROTOCOL_VERSION);
    assert_eq!(doc["api_version"], dom0::JSON_API_VERSION);
}

#[test]
fn version_table_is_the_default() {
    let out = dom0(&["version"]).unwrap();
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.starts_with(&format!(
        "cli:              {}\n",
        env!("CARGO_PKG_VERSION")
    )));
}

#[test]
fn usage_errors_exit_2() {
    for args in [&[][..], &["frobnicate"], &["completions", "cmd.exe"]] {
        let out = dom0(args).unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(out.stdout.is_empty(), "{args:?}");
        let err = String::from_utf8(out.stderr).unwrap();
        // Missing arguments print the help itself; other mistakes an error pointing at it.
        assert!(
            err.contains("Usage: dom0") || err.contains("try '--help'"),
            "{args:?}: {err}"
        );
    }
}

#[test]
fn completions_go_to_stdout() {
    let out = dom0(&["completions", "bash"]).unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(out.stderr.is_empty());
    assert!(
        String::from_utf8(out.stdout)
            .unwrap()
            .contains("complete -F _dom0")
    );
}

#[cfg(target_os = "linux")]
#[test]
fn full_disk_exits_1_with_a_readable_error() {
    let Ok(full) = std::fs::OpenOptions::new().write(true).open("/dev/full") else {
        return; // no /dev/full in this sandbox
    };
    let out = Command::new(env!("CARGO_BIN_EXE_dom0"))
        .args(["completions", "bash"])
        .stdout(full)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.starts_with("error: cannot write output\n  caused by: "),
        "{err}"
    );
}

// ---- dom0d and dom0-probe as processes ----

use std::path::Path;
use std::time::{Duration, Instant};

/// Waits until `path` exists or `child` exits; returns how long that took.
fn wait_for_socket(path: &Path, child: &mut std::process::Child) -> Duration {
    let start = Instant::now();
    while !path.exists() {
        match child.try_wait() {
            Ok(None) => {}
            Ok(Some(status)) => panic!("dom0d exited early: {status}"),
            Err(e) => panic!("cannot check on dom0d: {e}"),
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no socket after 10 s"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    start.elapsed()
}

#[test]
fn dom0d_without_the_device_exits_1_with_a_hint() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("dom0d.sock");
    let out = Command::new(env!("CARGO_BIN_EXE_dom0d"))
        .args(["--device", "/nonexistent/microvisor", "--socket"])
        .arg(&socket)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains(
            "ERROR cannot open /nonexistent/microvisor: No such file or directory — \
             is the microvisor module loaded? (insmod microvisor.ko)\n"
        ),
        "{err}"
    );
    assert!(!socket.exists(), "no socket without a device");
}

#[test]
fn dom0d_serves_until_sigterm_and_cleans_up() {
    let dir = tempfile::tempdir().unwrap();
    // A parent directory that does not exist yet: dom0d creates it.
    let socket = dir.path().join("run/sub/dom0d.sock");
    // /dev/null opens like the device but answers every ioctl with ENOTTY: the real ioctl
    // path runs, and dom0d must keep serving despite a microvisor that does not answer.
    let mut child = Command::new(env!("CARGO_BIN_EXE_dom0d"))
        .args(["--device", "/dev/null", "-v"])
        .env("DOM0_SOCKET", &socket)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let took = wait_for_socket(&socket, &mut child);
    assert!(took < Duration::from_secs(5), "startup took {took:?}");
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let meta = std::fs::metadata(&socket).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);

    let out = Command::new(env!("CARGO_BIN_EXE_dom0"))
        .args(["host", "info"])
        .env("DOM0_SOCKET", &socket)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.starts_with(
            "error: cannot get host information\n  caused by: the microvisor's HostInfo call \
             failed with ENOTTY"
        ),
        "{err}"
    );
    assert!(
        err.contains("hint: dom0d's --device is not the microvisor module"),
        "{err}"
    );

    let out = Command::new(env!("CARGO_BIN_EXE_dom0"))
        .args(["version", "-o", "json", "--socket"])
        .arg(&socket)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["dom0d"]["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(doc["microvisor"], serde_json::Value::Null);

    let pid = child.id().to_string();
    let killed = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(killed.success());
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "dom0d exits 0 on SIGTERM");
    assert!(!socket.exists(), "dom0d removes its socket");
    let log = String::from_utf8(out.stderr).unwrap();
    let first = log.lines().next().unwrap();
    // 2025-01-31T12:00:00.123Z LEVEL message
    assert_eq!(first.as_bytes()[10], b'T', "{first}");
    assert_eq!(&first[23..25], "Z ", "{first}");
    assert!(
        log.contains("ERROR the microvisor does not answer control calls"),
        "{log}"
    );
    assert!(log.contains(" ready on "), "{log}");
    // /dev/null cannot be polled (epoll refuses it), like a module without events: dom0d
    // says so once and serves on.
    assert!(
        log.contains(
            "WARN  events unavailable: the device cannot be polled (Operation not permitted)"
        ),
        "{log}"
    );
    assert!(log.contains("INFO  SIGTERM: stopping"), "{log}");
}

#[test]
fn dom0d_refuses_to_steal_a_live_socket() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("live.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_dom0d"))
        .args(["--device", "/dev/null", "--socket"])
        .arg(&socket)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("cannot serve on"), "{err}");
    assert!(err.contains("already running"), "{err}");
    assert!(socket.exists());
}

#[test]
fn probe_bad_ioctl_reports_each_check() {
    let out = Command::new(env!("CARGO_BIN_EXE_dom0-probe"))
        .args(["bad-ioctl", "--device", "/dev/null"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 8, "{text}");
    // /dev/null answers ENOTTY to everything: only the unknown-ioctl check passes.
    assert!(
        lines[0].starts_with("ok: unknown ioctl number 0xc0284d7f: ENOTTY"),
        "{text}"
    );
    for line in &lines[1..7] {
        assert!(line.starts_with("FAIL: "), "{line}");
        assert!(line.contains("got ENOTTY ("), "{line}");
    }
    assert!(lines[1].ends_with("expected EINVAL"), "{text}");
    assert!(lines[3].ends_with("expected EFAULT"), "{text}");
    assert!(lines[4].ends_with("expected ENOSYS"), "{text}");
    assert!(lines[5].ends_with("expected ESRCH"), "{text}");
    assert_eq!(lines[7], "bad-ioctl: 1 of 7 checks ok");

    let out = Command::new(env!("CARGO_BIN_EXE_dom0-probe"))
        .args(["bad-ioctl", "--device", "/nonexistent"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.starts_with("FAIL: open /nonexistent: No such file or directory"),
        "{text}"
    );
}

fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find(|l| l.starts_with("Uid:"))
            .is_some_and(|l| l.split_whitespace().nth(1) == Some("0"))
    })
}

#[test]
fn probe_open_as_nobody() {
    if !running_as_root() {
        eprintln!("skipped: needs root to switch to uid 65534");
        return;
    }
    // A root-only node stands in for /dev/microvisor: the open must fail with EACCES.
    let dir = tempfile::tempdir().unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let node = dir.path().join("microvisor");
    std::fs::write(&node, b"").unwrap();
    std::fs::set_permissions(&node, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_dom0-probe"))
        .args(["open-as-nobody", "--device"])
        .arg(&node)
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    if text.contains("cannot start the child") {
        eprintln!("skipped: uid 65534 cannot run the test binary here: {text}");
        return;
    }
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert_eq!(
        text,
        format!(
            "ok: open {} as uid 65534: refused with EACCES\n",
            node.display()
        )
    );

    // A node everyone may open: the check must fail.
    std::fs::set_permissions(&node, std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_dom0-probe"))
        .args(["open-as-nobody", "--device"])
        .arg(&node)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.starts_with("FAIL: "), "{text}");
    assert!(text.contains("the open succeeded"), "{text}");
}

#[test]
fn probe_foreign_commands_fail_cleanly_without_the_module() {
    // /dev/null answers the HostInfo ioctl with ENOTTY: each command reports that one
    // failure and its summary, and exits 1.
    for (cmd, summary) in [
        ("release-domain", "release-domain: 0 of 1 checks ok"),
        ("bad-foreign", "bad-foreign: 0 of 1 checks ok"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_dom0-probe"))
            .args([cmd, "1", "--device", "/dev/null"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{cmd}");
        let text = String::from_utf8(out.stdout).unwrap();
        assert_eq!(
            text,
            format!(
                "FAIL: HostInfo: the microvisor's HostInfo call failed with ENOTTY \
                 (Inappropriate ioctl for device)\n{summary}\n"
            ),
            "{cmd}"
        );
    }
    let out = Command::new(env!("CARGO_BIN_EXE_dom0-probe"))
        .args(["release-domain", "--device", "/nonexistent", "7"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.starts_with("FAIL: open /nonexistent: No such file or directory"),
        "{text}"
    );
    // A domid that is not a number is a usage error.
    let out = Command::new(env!("CARGO_BIN_EXE_dom0-probe"))
        .args(["bad-foreign", "dom1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

// ---- bad input, and consoles through the binary ----

#[test]
fn a_missing_config_is_one_line_on_stderr() {
    for cmd in ["create", "validate"] {
        let out = dom0(&[cmd, "/nonexistent.toml"]).unwrap();
        assert_eq!(out.status.code(), Some(3), "{cmd}");
        assert!(out.stdout.is_empty());
        let err = String::from_utf8(out.stderr).unwrap();
        assert_eq!(
            err,
            "error: cannot read config /nonexistent.toml: No such file or directory; check the \
             path (a bare name, without a slash or .toml, is looked up as \
             /etc/dom0/domains/NAME.toml)\n",
            "{cmd}"
        );
    }
}

/// Test fixtures (`#[cfg(test)]`, so clippy treats them as test code).
#[cfg(test)]
mod echo_host {
    use super::*;

    /// A dom0d (in this process) on the fake microvisor, with a domain `echo` whose guest echoes
    /// its console input.
    pub(crate) struct EchoHost {
        _dir: tempfile::TempDir,
        pub(crate) server: dom0::server::BackgroundServer,
        pub(crate) consoles: std::sync::Arc<dom0::console::Consoles>,
        stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
        guest: Option<std::thread::JoinHandle<()>>,
    }

    impl EchoHost {
        pub(crate) fn start() -> Self {
            use std::sync::Arc;
            use std::sync::atomic::{AtomicBool, Ordering};

            use dom0::builder::test_elf::{Seg, pvh_elf};
            use dom0::fake::FakeMicrovisor;
            use dom0::microvisor::Microvisor;
            use dom0::server::{Limits, Service, spawn_service};

            let dir = tempfile::tempdir().unwrap();
            let fake = Arc::new(FakeMicrovisor::new());
            let mv: Arc<dyn Microvisor> = fake.clone();
            let service = Service::new(mv);
            let consoles = Arc::clone(service.consoles());
            let shared = Arc::clone(&consoles);
            let server =
                spawn_service(&dir.path().join("dom0d.sock"), service, Limits::default()).unwrap();
            let kernel = dir.path().join("echo.elf");
            let seg = Seg {
                paddr: 0x10_0000,
                data: vec![0x90; 16],
                mem: 4096,
            };
            std::fs::write(&kernel, pvh_elf(0x10_0000, &[seg])).unwrap();
            let config = dir.path().join("echo.toml");
            std::fs::write(
                &config,
                format!("name = \"echo\"\nkernel = {:?}\nmemory = 2\n", kernel),
            )
            .unwrap();
            let out = Command::new(env!("CARGO_BIN_EXE_dom0"))
                .arg("create")
                .arg(&config)
                .arg("--socket")
                .arg(server.path())
                .output()
                .unwrap();
            assert_eq!(out.status.code(), Some(0), "{out:?}");
            let domid = 3;
            assert_eq!(fake.console_write(domid, b"echo> "), Some(6));
            let stop = Arc::new(AtomicBool::new(false));
            let flag = Arc::clone(&stop);
            let guest = std::thread::spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    let input = fake.console_read_input(domid).unwrap_or_default();
                    if input.is_empty() {
                        // Without the event path here, dom0d's poll drains the output.
                        std::thread::sleep(Duration::from_millis(2));
                        continue;
                    }
                    let echo: Vec<u8> = input
                        .iter()
                        .flat_map(|&b| {
                            if b == b'\r' {
                                vec![b'\r', b'\n']
                            } else {
                                vec![b]
                            }
                        })
                        .collect();
                    let mut at = 0;
                    while at < echo.len() {
                        at += fake.console_write(domid, &echo[at..]).unwrap_or(0);
                        consoles.drain_all(&*fake);
                    }
                }
            });
            Self {
                _dir: dir,
                server,
                consoles: shared,
                stop,
                guest: Some(guest),
            }
        }

        pub(crate) fn dom0(&self, args: &[&str], stdin: &[u8]) -> Output {
            use std::io::Write;
            let mut child = Command::new(env!("CARGO_BIN_EXE_dom0"))
                .args(args)
                .arg("--socket")
                .arg(self.server.path())
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            let mut input = child.stdin.take().unwrap();
            input.write_all(stdin).unwrap();
            drop(input);
            child.wait_with_output().unwrap()
        }
    }

    impl Drop for EchoHost {
        fn drop(&mut self) {
            self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
            if let Some(g) = self.guest.take() {
                let _ = g.join();
            }
        }
    }
}

use echo_host::EchoHost;

#[test]
fn piped_input_reaches_the_console_and_the_echo_is_printed() {
    let host = EchoHost::start();
    // `printf 'hello-echo\r' | dom0 console echo`
    let started = Instant::now();
    let out = host.dom0(&["console", "echo"], b"hello-echo\r");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "the grace period"
    );
    assert_eq!(out.stdout, b"echo> hello-echo\r\n");
    assert_eq!(
        String::from_utf8(out.stderr).unwrap(),
        "Connected to echo (domid 3). Escape character is ^]\n"
    );
    // The history has it all; `logs` prints it raw.
    let out = host.dom0(&["logs", "echo"], b"");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(out.stdout, b"echo> hello-echo\r\n");
    assert!(out.stderr.is_empty());
    // Unknown domains exit 3.
    let out = host.dom0(&["console", "nope"], b"");
    assert_eq!(out.status.code(), Some(3));
    let out = host.dom0(&["logs", "nope"], b"");
    assert_eq!(out.status.code(), Some(3));
}

/// Runs `script` (util-linux) so that `command` gets a terminal; `None` without `script`.
fn in_a_terminal(command: &str) -> Option<std::process::Child> {
    Command::new("script")
        .args(["-qec", command, "/dev/null"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .ok()
}

#[test]
fn a_terminal_is_raw_for_the_session_and_restored_on_every_exit() {
    use std::io::{Read, Write};
    let host = EchoHost::start();
    let dir = tempfile::tempdir().unwrap();
    let stty = |name: &str| dir.path().join(name).display().to_string();
    let attach = |prefix: &str| {
        format!(
            "stty -g > {}; {prefix}{} console echo --socket {}; echo \"rc=$?\"; stty -g > {}",
            stty("before"),
            env!("CARGO_BIN_EXE_dom0"),
            host.server.path().display(),
            stty("after")
        )
    };
    let attached = || {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !host.consoles.summary(3).unwrap().attached {
            assert!(Instant::now() < deadline, "never attached");
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    // Typed bytes reach the guest unchanged and are not echoed by the terminal (raw
    // mode): "typed" shows once, from the guest's echo. ^] detaches, exit 0.
    let Some(mut child) = in_a_terminal(&attach("")) else {
        eprintln!("skipped: no script(1) to give dom0 a terminal");
        return;
    };
    attached();
    let mut keys = child.stdin.take().unwrap();
    keys.write_all(b"typed").unwrap();
    // Once the guest's echo is in the history, it is on its way to the terminal.
    let log = host.consoles.resolve("echo").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !host
        .consoles
        .read_since(&log, 0, usize::MAX)
        .bytes
        .ends_with(b"typed")
    {
        assert!(Instant::now() < deadline, "the guest never echoed");
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(100));
    keys.write_all(b"\x1d").unwrap();
    let mut out = Vec::new();
    child.stdout.take().unwrap().read_to_end(&mut out).unwrap();
    drop(keys);
    child.wait().unwrap();
    let text = String::from_utf8_lossy(&out);
    assert_eq!(text.matches("typed").count(), 1, "{text}");
    assert!(text.contains("rc=0"), "{text}");
    let before = std::fs::read(stty("before")).unwrap();
    assert_eq!(
        std::fs::read(stty("after")).unwrap(),
        before,
        "terminal restored"
    );
    // SIGTERM in the middle of a session restores the terminal too.
    std::fs::remove_file(stty("after")).unwrap();
    let mut child = in_a_terminal(&attach("timeout --foreground -s TERM 1 ")).unwrap();
    let mut out = Vec::new();
    child.stdout.take().unwrap().read_to_end(&mut out).unwrap();
    child.wait().unwrap();
    let text = String::from_utf8_lossy(&out);
    assert!(text.contains("rc=124"), "killed by the timeout: {text}");
    assert_eq!(
        std::fs::read(stty("after")).unwrap(),
        before,
        "terminal restored"
    );
}
