//! Tests of parsing, output and error rendering through [`run`](crate::run).

use std::io::{self, Write};

use clap::CommandFactory;
use clap_complete::Shell;
use serde_json::Value;

use crate::{Cli, CliError, Command, ExitStatus, OutputFormat, run};

/// Runs the CLI on `args` (without the program name) and captures everything.
fn dom0(args: &[&str]) -> (ExitStatus, String, String) {
    let mut out = Vec::new();
    let mut err = Vec::new();
    let argv = std::iter::once("dom0").chain(args.iter().copied());
    let status = run(argv, &mut out, &mut err);
    (
        status,
        String::from_utf8(out).unwrap(),
        String::from_utf8(err).unwrap(),
    )
}

fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
    use clap::Parser;
    Cli::try_parse_from(std::iter::once("dom0").chain(args.iter().copied()))
}

/// A writer that fails every write with `kind`.
struct Failing(io::ErrorKind);

impl Write for Failing {
    fn write(&mut self, _: &[u8]) -> io::Result<usize> {
        Err(self.0.into())
    }
    fn flush(&mut self) -> io::Result<()> {
        Err(self.0.into())
    }
}

#[test]
fn clap_definition_is_consistent() {
    Cli::command().debug_assert();
}

#[test]
fn only_real_commands_exist() {
    let cmd = Cli::command();
    let names: Vec<&str> = cmd.get_subcommands().map(clap::Command::get_name).collect();
    assert_eq!(names, ["version", "completions"]);
}

#[test]
fn help_lists_exactly_the_existing_commands() {
    let (status, out, err) = dom0(&["--help"]);
    assert_eq!(status, ExitStatus::Success);
    assert!(err.is_empty());
    let commands: Vec<&str> = out
        .lines()
        .skip_while(|l| *l != "Commands:")
        .skip(1)
        .take_while(|l| !l.is_empty())
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(commands, ["version", "completions", "help"]);
}

#[test]
fn version_parses_with_global_flags_in_any_position() {
    for args in [
        &["version"][..],
        &["-o", "json", "version"],
        &["version", "-o", "json"],
        &["version", "--output=jsonl"],
        &["--json", "version"],
        &["version", "--json"],
    ] {
        let cli = parse(args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
        assert!(matches!(cli.command, Command::Version), "{args:?}");
    }
    assert_eq!(
        parse(&["version"]).unwrap().global.format(),
        OutputFormat::Table
    );
    assert_eq!(
        parse(&["version", "-o", "json"]).unwrap().global.format(),
        OutputFormat::Json
    );
    assert_eq!(
        parse(&["--json", "version"]).unwrap().global.format(),
        OutputFormat::Json
    );
    assert_eq!(
        parse(&["-o", "jsonl", "version"]).unwrap().global.format(),
        OutputFormat::Jsonl
    );
}

#[test]
fn completions_parses_every_shell() {
    for (name, shell) in [
        ("bash", Shell::Bash),
        ("zsh", Shell::Zsh),
        ("fish", Shell::Fish),
        ("elvish", Shell::Elvish),
        ("powershell", Shell::PowerShell),
    ] {
        match parse(&["completions", name]).unwrap().command {
            Command::Completions { shell: got } => assert_eq!(got, shell),
            Command::Version => panic!("parsed as version"),
        }
    }
}

#[test]
fn version_table_output() {
    let (status, out, err) = dom0(&["version"]);
    assert_eq!(status, ExitStatus::Success);
    assert!(err.is_empty());
    let expected = format!(
        "cli:              {}\nabi_interface:    {}\ncontrol_protocol: {}\n",
        env!("CARGO_PKG_VERSION"),
        shared_abi::INTERFACE_VERSION,
        crate::CONTROL_PROTOCOL_VERSION
    );
    assert_eq!(out, expected);
}

#[test]
fn version_json_output_has_the_documented_fields() {
    for args in [&["version", "-o", "json"][..], &["--json", "version"]] {
        let (status, out, err) = dom0(args);
        assert_eq!(status, ExitStatus::Success);
        assert!(err.is_empty());
        let doc: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(
            doc,
            serde_json::json!({
                "api_version": "dom0/v1",
                "cli": env!("CARGO_PKG_VERSION"),
                "abi_interface": shared_abi::INTERFACE_VERSION,
                "control_protocol": crate::CONTROL_PROTOCOL_VERSION,
            })
        );
        assert_eq!(doc["abi_interface"], 1);
        assert_eq!(doc["control_protocol"], 1);
    }
}

#[test]
fn version_jsonl_is_one_line() {
    let (status, out, _) = dom0(&["version", "-o", "jsonl"]);
    assert_eq!(status, ExitStatus::Success);
    assert_eq!(out.lines().count(), 1);
    assert!(out.ends_with('\n'));
    let doc: Value = serde_json::from_str(out.trim_end()).unwrap();
    assert_eq!(doc["cli"], env!("CARGO_PKG_VERSION"));
}

#[test]
fn completions_scripts_name_the_commands() {
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let (status, out, err) = dom0(&["completions", shell]);
        assert_eq!(status, ExitStatus::Success, "{shell}");
        assert!(err.is_empty(), "{shell}: {err}");
        assert!(out.contains("dom0"), "{shell}");
        assert!(out.contains("version"), "{shell}");
        assert!(out.contains("completions"), "{shell}");
    }
}

#[test]
fn usage_errors_exit_2_on_stderr() {
    for args in [
        &[][..],
        &["bogus"],
        &["completions"],
        &["completions", "tcsh"],
        &["version", "-o", "yaml"],
        &["version", "extra"],
        &["-o", "table", "--json", "version"],
        &["verison"],
    ] {
        let (status, out, err) = dom0(args);
        assert_eq!(status, ExitStatus::Usage, "{args:?}");
        assert!(out.is_empty(), "{args:?}: stdout must stay clean");
        assert!(!err.is_empty(), "{args:?}");
    }
}

#[test]
fn subcommands_are_matched_exactly() {
    let (status, _, _) = dom0(&["vers"]);
    assert_eq!(status, ExitStatus::Usage);
}

#[test]
fn help_and_version_flags_go_to_stdout_and_succeed() {
    for args in [
        &["--help"][..],
        &["-h"],
        &["help"],
        &["help", "completions"],
        &["--version"],
    ] {
        let (status, out, err) = dom0(args);
        assert_eq!(status, ExitStatus::Success, "{args:?}");
        assert!(!out.is_empty(), "{args:?}");
        assert!(err.is_empty(), "{args:?}");
    }
    let (_, out, _) = dom0(&["--version"]);
    assert_eq!(out, format!("dom0 {}\n", env!("CARGO_PKG_VERSION")));
}

#[test]
fn write_failures_are_rendered_and_exit_1() {
    let mut err = Vec::new();
    let status = run(
        ["dom0", "version"],
        &mut Failing(io::ErrorKind::StorageFull),
        &mut err,
    );
    assert_eq!(status, ExitStatus::Failure);
    let err = String::from_utf8(err).unwrap();
    assert_eq!(
        err.lines().next(),
        Some("error: cannot write output"),
        "first line says what failed: {err}"
    );
    assert!(err.contains("\n  caused by: "), "{err}");
    assert!(err.contains("\n  hint: "), "{err}");
    assert!(!err.contains("Os {"), "no Debug output: {err}");
}

#[test]
fn write_failures_under_json_are_a_json_object_on_stderr() {
    let mut err = Vec::new();
    let status = run(
        ["dom0", "completions", "bash", "-o", "json"],
        &mut Failing(io::ErrorKind::PermissionDenied),
        &mut err,
    );
    assert_eq!(status, ExitStatus::Failure);
    let doc: Value = serde_json::from_slice(&err).unwrap();
    assert_eq!(doc["code"], "output_failed");
    assert_eq!(doc["message"], "cannot write output");
    assert_eq!(doc["causes"].as_array().map(Vec::len), Some(1));
    assert_eq!(doc["hint"], Value::Null);
    assert_eq!(doc["exit_code"], 1);
}

#[test]
fn a_closed_pipe_is_not_an_error() {
    let mut err = Vec::new();
    for args in [
        &["dom0", "version"][..],
        &["dom0", "completions", "zsh"],
        &["dom0", "--help"],
    ] {
        let status = run(args, &mut Failing(io::ErrorKind::BrokenPipe), &mut err);
        assert_eq!(status, ExitStatus::Success, "{args:?}");
    }
    assert!(err.is_empty());
}

#[test]
fn help_write_failure_is_reported() {
    let mut err = Vec::new();
    let status = run(
        ["dom0", "--help"],
        &mut Failing(io::ErrorKind::StorageFull),
        &mut err,
    );
    assert_eq!(status, ExitStatus::Failure);
    assert!(
        String::from_utf8(err)
            .unwrap()
            .starts_with("error: cannot write output\n")
    );
}

#[test]
fn exit_codes_match_cli_md() {
    let table = [
        (ExitStatus::Success, 0),
        (ExitStatus::Failure, 1),
        (ExitStatus::Usage, 2),
        (ExitStatus::NotFound, 3),
        (ExitStatus::InvalidState, 4),
        (ExitStatus::Timeout, 5),
        (ExitStatus::NotSupported, 6),
        (ExitStatus::ConfigInvalid, 7),
        (ExitStatus::PermissionDenied, 8),
        (ExitStatus::ServiceUnavailable, 69),
        (ExitStatus::Interrupted, 130),
    ];
    for (status, code) in table {
        assert_eq!(status.code(), code, "{status:?}");
    }
}

#[test]
fn error_messages_are_lowercase_fragments_without_their_source() {
    let e = CliError::Output(io::Error::other("disk on fire"));
    assert_eq!(e.to_string(), "cannot write output");
    assert_eq!(e.causes(), ["disk on fire"]);
    let json_err = serde_json::from_str::<Value>("{").unwrap_err();
    let e = CliError::Json(json_err);
    assert_eq!(e.to_string(), "cannot encode output as JSON");
    assert_eq!(e.exit_status(), ExitStatus::Failure);
    assert_eq!(e.code(), "encoding_failed");
}
