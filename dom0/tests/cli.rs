//! End-to-end tests of the `dom0` binary: exit codes and the stdout/stderr split as a
//! shell script sees them.

use std::io;
use std::process::{Command, Output};

fn dom0(args: &[&str]) -> io::Result<Output> {
    Command::new(env!("CARGO_BIN_EXE_dom0")).args(args).output()
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
