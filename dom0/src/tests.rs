//! Tests of parsing, output and error rendering through [`run`](crate::run).

use std::io::{self, Write};
use std::path::Path;
use std::sync::Arc;

use clap::CommandFactory;
use clap_complete::Shell;
use serde_json::Value;

use crate::events::EventMonitor;
use crate::fake::{FakeMicrovisor, Fault, domain_record};
use crate::lifecycle::Waits;
use crate::microvisor::Microvisor;
use crate::proto::EventStatus;
use crate::server::{BackgroundServer, Limits, Service, spawn_service};
use crate::{Cli, CliError, Command, ExitStatus, OutputFormat, run};

/// A socket path where nothing listens.
const NO_SOCKET: &str = "/nonexistent/dom0d.sock";

/// Runs the CLI on `args` (without the program name) against a socket where nothing
/// listens, and captures everything.
fn dom0(args: &[&str]) -> (ExitStatus, String, String) {
    dom0_at(Path::new(NO_SOCKET), args)
}

/// Runs the CLI on `args` against the socket at `socket`.
fn dom0_at(socket: &Path, args: &[&str]) -> (ExitStatus, String, String) {
    let mut out = Vec::new();
    let mut err = Vec::new();
    let socket = socket.to_str().unwrap();
    let argv = ["dom0", "--socket", socket]
        .into_iter()
        .chain(args.iter().copied());
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
    assert_eq!(
        names,
        [
            "list",
            "info",
            "block-list",
            "network-list",
            "pause",
            "unpause",
            "destroy",
            "shutdown",
            "reboot",
            "logs",
            "console",
            "validate",
            "create",
            "host",
            "version",
            "completions"
        ]
    );
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
    assert_eq!(
        commands,
        [
            "list",
            "info",
            "block-list",
            "network-list",
            "pause",
            "unpause",
            "destroy",
            "shutdown",
            "reboot",
            "logs",
            "console",
            "validate",
            "create",
            "host",
            "version",
            "completions",
            "help"
        ]
    );
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
            other => panic!("parsed as {other:?}"),
        }
    }
}

#[test]
fn version_table_output_without_dom0d() {
    let (status, out, err) = dom0(&["version"]);
    assert_eq!(
        status,
        ExitStatus::Success,
        "version works while dom0d is down"
    );
    assert!(err.is_empty());
    let expected = format!(
        "cli:              {}\nabi_interface:    {}\ncontrol_protocol: {}\n\
         dom0d:            unavailable: cannot reach dom0d at {NO_SOCKET}: No such file or directory\n\
         microvisor:       unavailable: dom0d was not asked\n",
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
                "dom0d": null,
                "dom0d_error": format!("cannot reach dom0d at {NO_SOCKET}: No such file or directory"),
                "microvisor": null,
                "microvisor_error": "dom0d was not asked",
            })
        );
        assert_eq!(doc["abi_interface"], 1);
        assert_eq!(doc["control_protocol"], 3);
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
        &["info"],
        &["info", "a", "b"],
        &["host"],
        &["host", "bogus"],
        &["list", "extra"],
        &["list", "--timeout", "0s"],
        &["list", "--timeout", "5h"],
        &["list", "--timeout", "soon"],
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

// ---- Against an in-process dom0d backed by the fake microvisor. ----

struct Dom0d {
    server: BackgroundServer,
    fake: Arc<FakeMicrovisor>,
    consoles: Arc<crate::console::Consoles>,
    xenstored: Arc<crate::xenstored::Xenstored>,
    /// What the service's event task would record (only for [`Dom0d::supervised`]).
    monitor: Option<Arc<EventMonitor>>,
    _dir: tempfile::TempDir,
}

impl Dom0d {
    fn start(fake: FakeMicrovisor) -> Self {
        Self::with_limits(fake, Limits::default())
    }

    fn with_limits(fake: FakeMicrovisor, limits: Limits) -> Self {
        let fake = Arc::new(fake);
        let mv: Arc<dyn Microvisor> = fake.clone();
        // Vifs get in-memory devices, never TAPs on the test host.
        let service =
            Service::new(mv).with_net_devices(Arc::new(crate::netback::SocketNet::default()));
        Self::serve(fake, service, limits)
    }

    fn serve(fake: Arc<FakeMicrovisor>, service: Service, limits: Limits) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let consoles = Arc::clone(service.consoles());
        let xenstored = Arc::clone(&service.xenstored);
        let server = spawn_service(&dir.path().join("dom0d.sock"), service, limits).unwrap();
        Self {
            server,
            fake,
            consoles,
            xenstored,
            monitor: None,
            _dir: dir,
        }
    }

    /// A dom0d that also applies the `on_*` actions, as the real one does; the test
    /// stands in for the microvisor's events with [`Dom0d::state_changed`].
    fn supervised(fake: FakeMicrovisor) -> Self {
        let fake = Arc::new(fake);
        let mv: Arc<dyn Microvisor> = fake.clone();
        let monitor = Arc::new(EventMonitor::new(EventStatus::Listening));
        let service = Service::with_events(mv, Arc::clone(&monitor))
            .with_net_devices(Arc::new(crate::netback::SocketNet::default()));
        let dir = tempfile::tempdir().unwrap();
        let consoles = Arc::clone(service.consoles());
        let xenstored = Arc::clone(&service.xenstored);
        let server = crate::server::spawn_supervised(
            &dir.path().join("dom0d.sock"),
            service,
            Limits::default(),
        )
        .unwrap();
        Self {
            server,
            fake,
            consoles,
            xenstored,
            monitor: Some(monitor),
            _dir: dir,
        }
    }

    /// A dom0d whose event statistics come from `events`.
    fn with_events(fake: FakeMicrovisor, events: Arc<EventMonitor>) -> Self {
        let fake = Arc::new(fake);
        let mv: Arc<dyn Microvisor> = fake.clone();
        Self::serve(fake, Service::with_events(mv, events), Limits::default())
    }

    /// A dom0d with other limits for lifecycle actions.
    fn with_waits(fake: FakeMicrovisor, waits: Waits) -> Self {
        let fake = Arc::new(fake);
        let mv: Arc<dyn Microvisor> = fake.clone();
        Self::serve(fake, Service::new(mv).with_waits(waits), Limits::default())
    }

    fn run(&self, args: &[&str]) -> (ExitStatus, String, String) {
        dom0_at(self.server.path(), args)
    }
}

#[test]
fn list_prints_an_xl_style_table() {
    let d = Dom0d::start(FakeMicrovisor::new());
    let mut shut = domain_record(
        7,
        "build01",
        shared_abi::control::DomainState::Shutdown,
        768 * 1024,
    );
    shut.shutdown_reason = 0;
    shut.vcpus = 2;
    d.fake.insert(shut);
    d.fake.insert(domain_record(
        9,
        "crashy",
        shared_abi::control::DomainState::Crashed,
        256 * 1024,
    ));
    let (status, out, err) = d.run(&["list"]);
    assert_eq!(status, ExitStatus::Success, "{err}");
    assert!(err.is_empty());
    assert_eq!(
        out,
        "\
ID  NAME      STATE   MEM(MiB)  VCPUS  PCPU  TIME(s)
0   Domain-0  r-----      1024      1     0      0.0
1   hello1    -b----        16      1     1      1.5
2   hello2    r-----        32      1     1      3.0
7   build01   ---so-       768      2     1     10.5
9   crashy    ----c-       256      1     1     13.5
"
    );
}

#[test]
fn list_json_is_an_array_of_domains() {
    let d = Dom0d::start(FakeMicrovisor::new());
    for args in [&["list", "-o", "json"][..], &["--json", "list"]] {
        let (status, out, err) = d.run(args);
        assert_eq!(status, ExitStatus::Success, "{err}");
        let doc: Value = serde_json::from_str(&out).unwrap();
        let list = doc.as_array().unwrap();
        assert_eq!(list.len(), 3);
        assert_eq!(
            list[0],
            serde_json::json!({
                "domid": 0,
                "name": "Domain-0",
                "state": "running",
                "reason": null,
                "mem_kib": 1_048_576,
                "mem_mib": 1024,
                "vcpus": 1,
                "pcpu": 0,
                "cpu_time_ns": 0,
                "privileged": true,
            })
        );
        assert_eq!(list[1]["state"], "blocked");
        assert_eq!(list[1]["privileged"], false);
        assert_eq!(list[2]["cpu_time_ns"], 3_000_000_000u64);
    }
}

#[test]
fn list_jsonl_is_one_domain_per_line() {
    let d = Dom0d::start(FakeMicrovisor::new());
    let (status, out, _) = d.run(&["list", "-o", "jsonl"]);
    assert_eq!(status, ExitStatus::Success);
    let names: Vec<String> = out
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["name"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(names, ["Domain-0", "hello1", "hello2"]);
}

#[test]
fn list_pages_through_many_domains() {
    let fake = FakeMicrovisor::empty();
    for i in 0..600u32 {
        fake.insert(domain_record(
            i * 2,
            &format!("g{i}"),
            shared_abi::control::DomainState::Blocked,
            4096,
        ));
    }
    let d = Dom0d::start(fake);
    let (status, out, err) = d.run(&["list", "-o", "json"]);
    assert_eq!(status, ExitStatus::Success, "{err}");
    let doc: Value = serde_json::from_str(&out).unwrap();
    let ids: Vec<u64> = doc
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["domid"].as_u64().unwrap())
        .collect();
    let expected: Vec<u64> = (0..600).map(|i| i * 2).collect();
    assert_eq!(ids, expected);
    let (_, table, _) = d.run(&["list"]);
    assert_eq!(table.lines().count(), 601);
}

#[test]
fn info_by_id_and_by_name() {
    let d = Dom0d::start(FakeMicrovisor::new());
    let (status, by_id, err) = d.run(&["info", "1"]);
    assert_eq!(status, ExitStatus::Success, "{err}");
    let (status, by_name, _) = d.run(&["info", "hello1"]);
    assert_eq!(status, ExitStatus::Success);
    assert_eq!(by_id, by_name);
    assert_eq!(
        by_id,
        "\
domid:      1
name:       hello1
state:      blocked
reason:     -
privileged: no
memory:     16 MiB
vcpus:      1
pcpu:       1
cpu_time:   1.5 s
console:    none
"
    );
}

#[test]
fn info_json_is_one_object() {
    let d = Dom0d::start(FakeMicrovisor::new());
    let (status, out, _) = d.run(&["info", "Domain-0", "-o", "json"]);
    assert_eq!(status, ExitStatus::Success);
    let doc: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["api_version"], "dom0/v1");
    assert_eq!(doc["domid"], 0);
    assert_eq!(doc["mem_mib"], 1024);
    assert_eq!(doc["privileged"], true);
    for key in [
        "name",
        "state",
        "reason",
        "mem_kib",
        "vcpus",
        "pcpu",
        "cpu_time_ns",
        "console_first_byte_ms",
        "console",
    ] {
        assert!(doc.get(key).is_some(), "{key}");
    }
    assert_eq!(
        doc["console"],
        Value::Null,
        "Domain-0's console is not dom0d's"
    );
}

#[test]
fn unknown_domains_exit_3_with_suggestions() {
    let d = Dom0d::start(FakeMicrovisor::new());
    let (status, out, err) = d.run(&["info", "4000"]);
    assert_eq!(status, ExitStatus::NotFound);
    assert!(out.is_empty());
    assert_eq!(
        err,
        "error: no domain with id 4000\n  hint: `dom0 list` shows the domains\n"
    );
    let (status, _, err) = d.run(&["info", "hello3"]);
    assert_eq!(status, ExitStatus::NotFound);
    assert_eq!(
        err,
        "error: no domain named \"hello3\"\n  hint: did you mean hello1, hello2?\n"
    );
    let (status, _, err) = d.run(&["info", "99999999999999999999"]);
    assert_eq!(status, ExitStatus::NotFound);
    assert!(err.starts_with("error: no domain with id 99999999999999999999\n"));
    let (status, _, err) = d.run(&["info", "4000", "-o", "json"]);
    assert_eq!(status, ExitStatus::NotFound);
    let doc: Value = serde_json::from_str(&err).unwrap();
    assert_eq!(doc["code"], "not_found");
    assert_eq!(doc["exit_code"], 3);
}

#[test]
fn host_info_table_and_json() {
    let d = Dom0d::start(FakeMicrovisor::new());
    let (status, out, err) = d.run(&["host", "info"]);
    assert_eq!(status, ExitStatus::Success, "{err}");
    assert_eq!(
        out,
        "\
microvisor_version: 0.1.0-fake
control_version:    1
pcpus:              2
dom0_pcpu:          0
memory_total:       4096 MiB
memory_free:        3072 MiB
tsc:                2000.000 MHz
uptime:             00:00:12
events:             unavailable (this service does not watch the device)
last_event:         -
"
    );
    let (status, out, _) = d.run(&["host", "info", "--json"]);
    assert_eq!(status, ExitStatus::Success);
    let doc: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        doc,
        serde_json::json!({
            "api_version": "dom0/v1",
            "pcpus": 2,
            "dom0_pcpu": 0,
            "mem_total_kib": 4_194_304,
            "mem_free_kib": 3_145_728,
            "mem_total_mib": 4096,
            "mem_free_mib": 3072,
            "tsc_khz": 2_000_000,
            "uptime_ns": 12_345_000_000u64,
            "microvisor_version": "0.1.0-fake",
            "control_version": 1,
            "events": {
                "status": "unavailable",
                "reason": "this service does not watch the device",
                "count": 0,
                "last_mask": 0,
                "last_unix_ms": null,
                "last_age_ms": null,
            },
        })
    );
}

#[test]
fn host_info_reports_the_events_dom0d_has_seen() {
    let events = Arc::new(EventMonitor::new(EventStatus::Listening));
    let d = Dom0d::with_events(FakeMicrovisor::new(), Arc::clone(&events));
    let (status, out, err) = d.run(&["host", "info"]);
    assert_eq!(status, ExitStatus::Success, "{err}");
    assert!(
        out.ends_with("\nevents:             0\nlast_event:         -\n"),
        "{out}"
    );

    events.record(1);
    events.record(shared_abi::control::EVENT_DOMAIN_STATE);
    let (status, out, err) = d.run(&["host", "info"]);
    assert_eq!(status, ExitStatus::Success, "{err}");
    let tail: Vec<&str> = out.lines().rev().take(2).collect();
    assert_eq!(tail[1], "events:             2");
    // last_event:         2025-01-31T12:00:00.123Z (0.0 s ago): domain state changed
    let last = tail[0].strip_prefix("last_event:         ").unwrap();
    assert_eq!(last.as_bytes()[10], b'T', "{last}");
    assert_eq!(&last[23..26], "Z (", "{last}");
    assert!(last.ends_with(" s ago): domain state changed"), "{last}");

    let (_, out, _) = d.run(&["host", "info", "-o", "json"]);
    let doc: Value = serde_json::from_str(&out).unwrap();
    let e = &doc["events"];
    assert_eq!(e["status"], "listening");
    assert_eq!(e["reason"], Value::Null);
    assert_eq!(e["count"], 2);
    assert_eq!(e["last_mask"], 1);
    assert!(e["last_unix_ms"].as_u64().unwrap() > 1_600_000_000_000);
    assert!(e["last_age_ms"].as_u64().unwrap() < 60_000);

    events.set_status(EventStatus::Stopped {
        reason: "the device reported end of file".into(),
    });
    let (_, out, _) = d.run(&["host", "info"]);
    assert!(
        out.contains("\nevents:             2 (stopped: the device reported end of file)\n"),
        "{out}"
    );
}

#[test]
fn host_info_from_a_dom0d_without_events_says_so() {
    use crate::proto::{ApiError, Host, Request, Response};
    // A dom0d of the first protocol 1 release: it cannot decode `Events` and says so.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let old = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        while let Ok(Some(payload)) = crate::proto::read_frame(&mut s, crate::proto::MAX_FRAME) {
            let reply = match crate::proto::decode::<Request>(&payload) {
                Ok(Request::Hello { .. }) => Service::hello(),
                Ok(Request::HostInfo) => Response::HostInfo(Host {
                    pcpus: 2,
                    dom0_pcpu: 0,
                    mem_total_kib: 1024,
                    mem_free_kib: 0,
                    tsc_khz: 1000,
                    uptime_ns: 0,
                    microvisor_version: "old".into(),
                    control_version: 1,
                }),
                _ => Response::Error(ApiError::Malformed {
                    reason: "cannot decode message".into(),
                }),
            };
            s.write_all(&crate::proto::encode(&reply).unwrap()).unwrap();
        }
    });
    let (status, out, err) = dom0_at(&path, &["host", "info"]);
    assert_eq!(status, ExitStatus::Success, "{err}");
    assert!(
        out.ends_with(
            "\nevents:             unknown (this dom0d does not report events)\nlast_event:         -\n"
        ),
        "{out}"
    );
    // The CLI closed its connection, which ends the old dom0d's loop.
    old.join().unwrap();
}

#[test]
fn version_reports_dom0d_and_the_microvisor() {
    let d = Dom0d::start(FakeMicrovisor::new());
    let (status, out, _) = d.run(&["version", "-o", "json"]);
    assert_eq!(status, ExitStatus::Success);
    let doc: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["dom0d"]["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(doc["dom0d"]["control_protocol"], 3);
    assert_eq!(doc["dom0d"]["control_version"], 1);
    assert_eq!(doc["dom0d_error"], Value::Null);
    assert_eq!(doc["microvisor"]["version"], "0.1.0-fake");
    assert_eq!(doc["microvisor"]["control_version"], 1);
    assert_eq!(doc["microvisor_error"], Value::Null);
    let (_, table, _) = d.run(&["version"]);
    assert!(table.contains(&format!(
        "\ndom0d:            {} (control protocol 3)\n",
        env!("CARGO_PKG_VERSION")
    )));
    assert!(table.ends_with("\nmicrovisor:       0.1.0-fake (control version 1)\n"));

    d.fake.set_fault(Fault::Errno(13));
    let (status, table, _) = d.run(&["version"]);
    assert_eq!(status, ExitStatus::Success);
    assert!(
        table.ends_with(
            "\nmicrovisor:       unavailable: the microvisor's HostInfo call failed with EACCES (Permission denied)\n"
        ),
        "{table}"
    );
}

#[test]
fn an_unreachable_dom0d_exits_69_with_a_hint() {
    for args in [&["list"][..], &["info", "0"], &["host", "info"]] {
        let (status, out, err) = dom0(args);
        assert_eq!(status, ExitStatus::ServiceUnavailable, "{args:?}");
        assert_eq!(status.code(), 69);
        assert!(out.is_empty());
        assert_eq!(
            err,
            format!(
                "error: cannot reach dom0d at {NO_SOCKET}\n  caused by: No such file or directory\n  \
                 hint: is dom0d running? start it with `dom0d &` (it needs /dev/microvisor)\n"
            ),
            "{args:?}"
        );
    }
    let (status, out, err) = dom0(&["list", "-o", "json"]);
    assert_eq!(status.code(), 69);
    assert!(out.is_empty());
    let doc: Value = serde_json::from_str(&err).unwrap();
    assert_eq!(doc["code"], "dom0d_unreachable");
    assert_eq!(doc["exit_code"], 69);
    assert_eq!(
        doc["causes"],
        serde_json::json!(["No such file or directory"])
    );
}

#[test]
fn a_stale_socket_is_unreachable_too() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    let (status, _, err) = dom0_at(&path, &["list"]);
    assert_eq!(status, ExitStatus::ServiceUnavailable);
    assert!(err.contains("caused by: Connection refused\n"), "{err}");
    assert!(err.contains("is dom0d running?"), "{err}");
}

#[test]
fn a_silent_dom0d_times_out_with_exit_5() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mute.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let started = std::time::Instant::now();
    let (status, _, err) = dom0_at(&path, &["list", "--timeout", "200ms"]);
    assert_eq!(status, ExitStatus::Timeout, "{err}");
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    assert!(err.contains("did not answer within 0.2s"), "{err}");
    drop(listener);
}

/// A one-shot server that answers the hello with `reply` and then waits to be dropped.
fn fake_server(path: &Path, reply: crate::proto::Response) -> std::thread::JoinHandle<()> {
    let listener = std::os::unix::net::UnixListener::bind(path).unwrap();
    std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let _ = crate::proto::read_frame(&mut s, crate::proto::MAX_FRAME);
        s.write_all(&crate::proto::encode(&reply).unwrap()).unwrap();
        let _ = crate::proto::read_frame(&mut s, crate::proto::MAX_FRAME);
    })
}

#[test]
fn a_protocol_mismatch_exits_69_naming_both_versions() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("future.sock");
    let t = fake_server(
        &path,
        crate::proto::Response::Hello {
            protocol: 99,
            software: "dom0d 9.0.0".into(),
        },
    );
    let (status, _, err) = dom0_at(&path, &["list"]);
    t.join().unwrap();
    assert_eq!(status, ExitStatus::ServiceUnavailable);
    assert_eq!(
        err.lines().next().unwrap(),
        format!(
            "error: dom0d at {} speaks control protocol 99 (dom0d 9.0.0), this dom0 speaks 3",
            path.display()
        )
    );
    assert!(err.contains("hint: install dom0 and dom0d from the same build"));

    // `version` still says what it learnt.
    let path = dir.path().join("future2.sock");
    let t = fake_server(
        &path,
        crate::proto::Response::Hello {
            protocol: 99,
            software: "dom0d 9.0.0".into(),
        },
    );
    let (status, out, _) = dom0_at(&path, &["version", "-o", "json"]);
    t.join().unwrap();
    assert_eq!(status, ExitStatus::Success);
    let doc: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["dom0d"]["version"], "9.0.0");
    assert_eq!(doc["dom0d"]["control_protocol"], 99);
    assert_eq!(doc["dom0d"]["control_version"], Value::Null);
}

#[test]
fn a_busy_dom0d_exits_69() {
    let d = Dom0d::with_limits(
        FakeMicrovisor::new(),
        Limits {
            max_connections: 1,
            ..Limits::default()
        },
    );
    let mut hog = std::os::unix::net::UnixStream::connect(d.server.path()).unwrap();
    let hello = crate::proto::Request::Hello {
        protocol: crate::proto::PROTOCOL_VERSION,
        software: "hog".into(),
    };
    hog.write_all(&crate::proto::encode(&hello).unwrap())
        .unwrap();
    assert!(crate::proto::read_frame(&mut hog, 1024).unwrap().is_some());
    let (status, _, err) = d.run(&["list"]);
    assert_eq!(status, ExitStatus::ServiceUnavailable, "{err}");
    assert!(
        err.starts_with("error: dom0d is busy: too many connections\n"),
        "{err}"
    );
}

#[test]
fn microvisor_errors_map_to_exit_codes_and_hints() {
    let d = Dom0d::start(FakeMicrovisor::new());
    let cases = [
        (1, ExitStatus::PermissionDenied, "only from domain 0"),
        (13, ExitStatus::Failure, "different control ABI versions"),
        (38, ExitStatus::NotSupported, "does not implement"),
        (25, ExitStatus::Failure, "--device"),
    ];
    for (errno, status, hint) in cases {
        d.fake.set_fault(Fault::Errno(errno));
        let (got, out, err) = d.run(&["host", "info"]);
        assert_eq!(got, status, "errno {errno}: {err}");
        assert!(out.is_empty());
        let mut lines = err.lines();
        assert_eq!(lines.next(), Some("error: cannot get host information"));
        let cause = lines.next().unwrap();
        assert!(
            cause.starts_with("  caused by: the microvisor's HostInfo call failed with E"),
            "{cause}"
        );
        assert!(lines.next().unwrap().contains(hint), "{err}");
    }
    d.fake.set_fault(Fault::ListOverflow);
    let (status, _, err) = d.run(&["list"]);
    assert_eq!(status, ExitStatus::Failure);
    assert!(err.starts_with(
        "error: cannot list domains\n  caused by: the microvisor returned a bad record: "
    ));
}

#[test]
fn socket_comes_from_the_flag_or_the_environment() {
    let cli = parse(&["list"]).unwrap();
    let expected = std::env::var_os("DOM0_SOCKET").map_or_else(
        || std::path::PathBuf::from("/run/dom0/control.sock"),
        std::path::PathBuf::from,
    );
    assert_eq!(cli.global.socket, expected);
    let cli = parse(&["list", "--socket", "/tmp/x.sock"]).unwrap();
    assert_eq!(cli.global.socket, Path::new("/tmp/x.sock"));
    let cli = parse(&["--socket=/a", "host", "info"]).unwrap();
    assert_eq!(cli.global.socket, Path::new("/a"));
    assert!(matches!(
        cli.command,
        Command::Host {
            command: crate::HostCommand::Info
        }
    ));
}

#[test]
fn durations_parse() {
    use std::time::Duration;

    use crate::cli::parse_duration;
    assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
    assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
    assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
    assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
    assert!(parse_duration("0").is_err());
    assert!(parse_duration("").is_err());
    assert!(parse_duration("1h").is_err());
    assert!(parse_duration("-1s").is_err());
    let cli = parse(&["list", "--timeout", "250ms"]).unwrap();
    assert_eq!(cli.global.timeout, Duration::from_millis(250));
    assert_eq!(
        parse(&["list"]).unwrap().global.timeout,
        Duration::from_secs(30)
    );
}

#[test]
fn state_flags_and_number_formats() {
    use crate::output::{hms, seconds_1dp};
    assert_eq!(seconds_1dp(0), "0.0");
    assert_eq!(seconds_1dp(310_449_999_999), "310.4");
    assert_eq!(hms(0), "00:00:00");
    assert_eq!(hms(8_091_000_000_000), "02:14:51");
    assert_eq!(hms(90_061_000_000_000), "1d 01:01:01");
    assert_eq!(crate::edit_distance("hello3", "hello1"), 1);
    assert_eq!(crate::edit_distance("", "abc"), 3);
    assert_eq!(crate::edit_distance("kitten", "sitting"), 3);
}

// ---- Lifecycle: pause, unpause, destroy. ----

/// The fake's host plus `spin` (3, running, 64 MiB), `off` (5, powered off) and `boom`
/// (6, crashed).
fn lifecycle_fake() -> FakeMicrovisor {
    use shared_abi::control::DomainState;
    let fake = FakeMicrovisor::new();
    fake.insert(domain_record(3, "spin", DomainState::Running, 64 * 1024));
    fake.insert(domain_record(5, "off", DomainState::Shutdown, 1024));
    fake.insert(domain_record(6, "boom", DomainState::Crashed, 1024));
    fake
}

fn state_of(d: &Dom0d, dom: &str) -> String {
    let (status, out, err) = d.run(&["info", dom, "-o", "json"]);
    assert_eq!(status, ExitStatus::Success, "{err}");
    let doc: Value = serde_json::from_str(&out).unwrap();
    doc["state"].as_str().unwrap().to_owned()
}

#[test]
fn pause_unpause_destroy_are_silent_on_success() {
    let d = Dom0d::start(lifecycle_fake());
    let ok = |args: &[&str]| {
        let (status, out, err) = d.run(args);
        assert_eq!(status, ExitStatus::Success, "{args:?}: {err}");
        assert_eq!((out.as_str(), err.as_str()), ("", ""), "{args:?}");
    };
    ok(&["pause", "spin"]);
    assert_eq!(state_of(&d, "spin"), "paused");
    let (_, list, _) = d.run(&["list"]);
    assert!(list.contains("\n3   spin      --p---"), "{list}");
    ok(&["unpause", "3"]);
    assert_eq!(state_of(&d, "3"), "running");
    ok(&["pause", "3"]);
    ok(&["resume", "spin"]);
    assert_eq!(state_of(&d, "spin"), "running");

    let free = |d: &Dom0d| {
        let (_, out, _) = d.run(&["host", "info", "-o", "json"]);
        serde_json::from_str::<Value>(&out).unwrap()["mem_free_kib"]
            .as_u64()
            .unwrap()
    };
    let before = free(&d);
    ok(&["destroy", "spin"]);
    assert_eq!(
        free(&d),
        before + 64 * 1024,
        "its memory is back in the pool"
    );
    let (status, _, err) = d.run(&["info", "spin"]);
    assert_eq!(status, ExitStatus::NotFound);
    assert!(
        err.starts_with("error: no domain named \"spin\"\n"),
        "{err}"
    );
    let (status, _, err) = d.run(&["info", "3"]);
    assert_eq!(status, ExitStatus::NotFound);
    assert!(err.starts_with("error: no domain with id 3\n"), "{err}");
    let (_, list, _) = d.run(&["list", "--json"]);
    let ids: Vec<u64> = serde_json::from_str::<Value>(&list)
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["domid"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, [0, 1, 2, 5, 6]);

    // Shut-down and crashed domains can be destroyed (and only destroyed).
    ok(&["destroy", "off"]);
    ok(&["destroy", "6"]);
    assert_eq!(d.run(&["info", "boom"]).0, ExitStatus::NotFound);
}

#[test]
fn lifecycle_json_results() {
    let d = Dom0d::start(lifecycle_fake());
    let (status, out, err) = d.run(&["pause", "spin", "-o", "json"]);
    assert_eq!(status, ExitStatus::Success, "{err}");
    assert!(err.is_empty());
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap(),
        serde_json::json!({
            "api_version": "dom0/v1",
            "action": "pause",
            "domid": 3,
            "name": "spin",
            "state": "paused",
        })
    );
    let (status, out, _) = d.run(&["--json", "unpause", "3"]);
    assert_eq!(status, ExitStatus::Success);
    let doc: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (&doc["action"], &doc["state"]),
        (&"unpause".into(), &"running".into())
    );
    let (status, out, _) = d.run(&["destroy", "spin", "-o", "jsonl"]);
    assert_eq!(status, ExitStatus::Success);
    assert_eq!(
        out,
        "{\"api_version\":\"dom0/v1\",\"action\":\"destroy\",\"domid\":3,\"name\":\"spin\",\"state\":null}\n"
    );
}

#[test]
fn lifecycle_on_unknown_domains_exits_3() {
    let d = Dom0d::start(lifecycle_fake());
    for cmd in ["pause", "unpause", "destroy"] {
        let (status, out, err) = d.run(&[cmd, "4000"]);
        assert_eq!(status, ExitStatus::NotFound, "{cmd}");
        assert!(out.is_empty());
        assert_eq!(
            err, "error: no domain with id 4000\n  hint: `dom0 list` shows the domains\n",
            "{cmd}"
        );
        let (status, _, err) = d.run(&[cmd, "spni"]);
        assert_eq!(status, ExitStatus::NotFound, "{cmd}");
        assert_eq!(
            err, "error: no domain named \"spni\"\n  hint: did you mean spin?\n",
            "{cmd}"
        );
        let (status, _, err) = d.run(&[cmd, "nosuch", "-o", "json"]);
        assert_eq!(status, ExitStatus::NotFound);
        let doc: Value = serde_json::from_str(&err).unwrap();
        assert_eq!(
            (doc["code"].as_str(), doc["exit_code"].as_u64()),
            (Some("not_found"), Some(3))
        );
    }
    assert_eq!(state_of(&d, "spin"), "running");
}

#[test]
fn lifecycle_on_domain_0_exits_4() {
    let d = Dom0d::start(lifecycle_fake());
    for (cmd, dom, done) in [
        ("pause", "0", "paused"),
        ("unpause", "Domain-0", "unpaused"),
        ("destroy", "0", "destroyed"),
        ("destroy", "Domain-0", "destroyed"),
    ] {
        let (status, out, err) = d.run(&[cmd, dom]);
        assert_eq!(status, ExitStatus::InvalidState, "{cmd} {dom}");
        assert_eq!(status.code(), 4);
        assert!(out.is_empty());
        assert_eq!(
            err,
            format!(
                "error: cannot {cmd} domain 0 (Domain-0)\n  caused by: Domain-0 cannot be {done}\n"
            )
        );
    }
    let (status, out, err) = d.run(&["destroy", "0", "-o", "json"]);
    assert_eq!(status.code(), 4);
    assert!(out.is_empty());
    let doc: Value = serde_json::from_str(&err).unwrap();
    assert_eq!(
        doc,
        serde_json::json!({
            "code": "domain_0_refused",
            "message": "cannot destroy domain 0 (Domain-0)",
            "causes": ["Domain-0 cannot be destroyed"],
            "hint": null,
            "exit_code": 4,
        })
    );
    assert_eq!(state_of(&d, "0"), "running");
}

#[test]
fn wrong_states_exit_4_naming_the_state() {
    let d = Dom0d::start(lifecycle_fake());
    assert_eq!(d.run(&["pause", "spin"]).0, ExitStatus::Success);
    let (status, out, err) = d.run(&["pause", "spin"]);
    assert_eq!(status, ExitStatus::InvalidState);
    assert!(out.is_empty());
    assert_eq!(
        err,
        "error: cannot pause domain 3 (spin)\n  caused by: domain 3 (spin) is already paused\n"
    );
    let (status, _, err) = d.run(&["pause", "spin", "-o", "json"]);
    assert_eq!(status.code(), 4);
    let doc: Value = serde_json::from_str(&err).unwrap();
    assert_eq!(doc["code"], "already_paused");
    assert_eq!(state_of(&d, "spin"), "paused");

    let (status, _, err) = d.run(&["unpause", "hello2"]);
    assert_eq!(status, ExitStatus::InvalidState);
    assert_eq!(
        err,
        "error: cannot unpause domain 2 (hello2)\n  caused by: domain 2 (hello2) is not paused (it is running)\n"
    );
    let (_, _, err) = d.run(&["unpause", "1", "--json"]);
    let doc: Value = serde_json::from_str(&err).unwrap();
    assert_eq!(doc["code"], "not_paused");
    assert_eq!(
        doc["causes"][0],
        "domain 1 (hello1) is not paused (it is blocked)"
    );

    let (status, _, err) = d.run(&["pause", "off"]);
    assert_eq!(status, ExitStatus::InvalidState);
    assert_eq!(
        err,
        "error: cannot pause domain 5 (off)\n  caused by: domain 5 (off) has shut down (poweroff), \
         so it cannot be paused\n  hint: `dom0 destroy off` removes it\n"
    );
    let (status, _, err) = d.run(&["unpause", "off"]);
    assert_eq!(status, ExitStatus::InvalidState);
    assert!(err.contains("so it cannot be unpaused\n"), "{err}");
    let (status, _, err) = d.run(&["pause", "6", "-o", "json"]);
    assert_eq!(status, ExitStatus::InvalidState);
    let doc: Value = serde_json::from_str(&err).unwrap();
    assert_eq!(doc["code"], "domain_ended");
    assert_eq!(
        doc["causes"][0],
        "domain 6 (boom) has crashed, so it cannot be paused"
    );
    assert_eq!(doc["hint"], "`dom0 destroy boom` removes it");
    assert_eq!(state_of(&d, "off"), "shutdown");
}

#[test]
fn actions_that_do_not_show_in_time_exit_5() {
    let waits = Waits {
        pause: std::time::Duration::from_millis(150),
        destroy: std::time::Duration::from_millis(150),
        poll: std::time::Duration::from_millis(2),
    };
    let d = Dom0d::with_waits(lifecycle_fake(), waits);
    // A microvisor that takes a few polls: dom0d waits, and the reply means done.
    d.fake.set_lag(20);
    assert_eq!(d.run(&["pause", "spin"]).0, ExitStatus::Success);
    d.fake.set_lag(0);
    assert_eq!(state_of(&d, "spin"), "paused");
    assert_eq!(d.run(&["unpause", "spin"]).0, ExitStatus::Success);

    d.fake.set_lag(u32::MAX);
    let (status, out, err) = d.run(&["pause", "spin"]);
    assert_eq!(status, ExitStatus::Timeout, "{err}");
    assert!(out.is_empty());
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines[0], "error: cannot pause domain 3 (spin)");
    assert!(
        lines[1].starts_with("  caused by: domain 3 (spin) was not paused within 0."),
        "{err}"
    );
    assert!(lines[1].ends_with(" s (it is running)"), "{err}");
    assert_eq!(
        lines[2],
        "  hint: `dom0 info spin` shows its state now; the microvisor's log may say why"
    );
    let (status, _, err) = d.run(&["destroy", "hello1", "-o", "json"]);
    assert_eq!(status.code(), 5);
    let doc: Value = serde_json::from_str(&err).unwrap();
    assert_eq!(doc["code"], "timeout");
    assert!(
        doc["causes"][0]
            .as_str()
            .unwrap()
            .contains(" after the microvisor destroyed it (state blocked)"),
        "{doc}"
    );
}

#[test]
fn a_waiting_pause_does_not_hold_up_other_clients() {
    let waits = Waits {
        pause: std::time::Duration::from_secs(1),
        ..Waits::default()
    };
    let d = Dom0d::with_waits(lifecycle_fake(), waits);
    d.fake.set_lag(u32::MAX);
    std::thread::scope(|scope| {
        let pausing = scope.spawn(|| d.run(&["pause", "spin"]));
        // While dom0d waits for the pause to show, it answers everyone else.
        std::thread::sleep(std::time::Duration::from_millis(100));
        let started = std::time::Instant::now();
        let (status, _, err) = d.run(&["list"]);
        assert_eq!(status, ExitStatus::Success, "{err}");
        assert!(
            started.elapsed() < std::time::Duration::from_secs(1),
            "list took {:?}",
            started.elapsed()
        );
        assert!(!pausing.is_finished());
        assert_eq!(pausing.join().unwrap().0, ExitStatus::Timeout);
    });
}

#[test]
fn lifecycle_microvisor_failures_keep_their_exit_codes() {
    // The domain resolves, then the microvisor refuses the operation itself.
    struct NoLifecycle(FakeMicrovisor);
    impl Microvisor for NoLifecycle {
        fn control(&self, op: u64, arg: u64, buf: &mut [u8]) -> Result<u64, i32> {
            if op >= shared_abi::control::ControlOp::DomainPause as u64 {
                return Err(38);
            }
            self.0.control(op, arg, buf)
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let mv: Arc<dyn Microvisor> = Arc::new(NoLifecycle(lifecycle_fake()));
    let server =
        crate::server::spawn_background(&dir.path().join("s.sock"), mv, Limits::default()).unwrap();
    let (status, _, err) = dom0_at(server.path(), &["pause", "spin"]);
    assert_eq!(status, ExitStatus::NotSupported, "{err}");
    assert_eq!(
        err,
        "error: cannot pause domain 3 (spin)\n  caused by: the microvisor's DomainPause call failed \
         with ENOSYS (Function not implemented)\n  hint: this microvisor does not implement the operation\n"
    );
}

#[test]
fn a_dom0d_without_lifecycle_requests_exits_69() {
    use crate::proto::{ApiError, Request, Response};
    // A dom0d of an earlier protocol 1 release: it cannot decode Pause and says so.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let fake = lifecycle_fake();
    let old = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        while let Ok(Some(payload)) = crate::proto::read_frame(&mut s, crate::proto::MAX_FRAME) {
            let reply = match crate::proto::decode::<Request>(&payload) {
                Ok(Request::Hello { .. }) => Service::hello(),
                Ok(Request::DomainInfo { domid }) => {
                    Response::Domain(crate::microvisor::domain_info(&fake, domid).unwrap())
                }
                _ => Response::Error(ApiError::Malformed {
                    reason: "cannot decode message".into(),
                }),
            };
            s.write_all(&crate::proto::encode(&reply).unwrap()).unwrap();
        }
    });
    let (status, out, err) = dom0_at(&path, &["pause", "3"]);
    old.join().unwrap();
    assert_eq!(status, ExitStatus::ServiceUnavailable);
    assert!(out.is_empty());
    let software = format!("dom0d {}", env!("CARGO_PKG_VERSION"));
    assert_eq!(
        err,
        format!(
            "error: cannot pause domain 3 (spin)\n  caused by: dom0d at {} ({software}) does not \
             know the pause request\n  hint: install dom0 and dom0d from the same build\n",
            path.display()
        )
    );
}

#[test]
fn lifecycle_usage() {
    for args in [
        &["pause"][..],
        &["unpause"],
        &["resume"],
        &["destroy"],
        &["pause", "a", "b"],
        &["destroy", "--all"],
        &["paus", "spin"],
    ] {
        let (status, out, err) = dom0(args);
        assert_eq!(status, ExitStatus::Usage, "{args:?}");
        assert!(out.is_empty() && !err.is_empty(), "{args:?}");
    }
    for (args, action) in [
        (&["pause", "x"][..], "pause"),
        (&["unpause", "x"], "unpause"),
        (&["resume", "x"], "unpause"),
        (&["destroy", "x", "--json"], "destroy"),
    ] {
        let got = match parse(args).unwrap().command {
            Command::Pause { domain } => ("pause", domain),
            Command::Unpause { domain } => ("unpause", domain),
            Command::Destroy { domain } => ("destroy", domain),
            other => panic!("{other:?}"),
        };
        assert_eq!(got, (action, "x".to_owned()), "{args:?}");
    }
    // Without dom0d: 69, as for every command that needs it.
    let (status, _, _) = dom0(&["destroy", "3"]);
    assert_eq!(status, ExitStatus::ServiceUnavailable);
    for shell in ["bash", "zsh", "fish"] {
        let (_, out, _) = dom0(&["completions", shell]);
        for cmd in ["pause", "unpause", "destroy"] {
            assert!(out.contains(cmd), "{shell}: {cmd}");
        }
    }
}

#[test]
fn hints_name_domains_safely() {
    use crate::error::domain_ref;
    assert_eq!(domain_ref(3, "spin"), "spin");
    assert_eq!(domain_ref(3, "web-01.eu"), "web-01.eu");
    assert_eq!(domain_ref(3, ""), "3");
    assert_eq!(domain_ref(3, "42"), "3");
    assert_eq!(domain_ref(3, "a b"), "3");
    assert_eq!(domain_ref(3, "-x"), "3");
    assert_eq!(domain_ref(3, "$(x)"), "3");
}

// ---- validate and create ----

/// A directory with a PVH kernel (`hello.elf`) and a config for it (`web.toml`).
struct Guest {
    dir: tempfile::TempDir,
}

impl Guest {
    fn new() -> Self {
        use crate::builder::test_elf::{Seg, bytes, pvh_elf};
        let dir = tempfile::tempdir().unwrap();
        let kernel = pvh_elf(
            0x10_0040,
            &[Seg {
                paddr: 0x10_0000,
                data: bytes(5000, 1),
                mem: 0x4000,
            }],
        );
        std::fs::write(dir.path().join("hello.elf"), kernel).unwrap();
        let g = Self { dir };
        g.config(
            "web.toml",
            "name = \"web\"\nkernel = \"hello.elf\"\ncmdline = \"console=hvc0\"\nmemory = \"32M\"\n",
        );
        g
    }

    /// Writes a config file; returns its path.
    fn config(&self, name: &str, text: &str) -> String {
        let p = self.dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_owned()
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).to_str().unwrap().to_owned()
    }
}

#[test]
fn validate_prints_the_effective_config_and_the_layout_without_dom0d() {
    let g = Guest::new();
    let (status, out, err) = dom0(&["validate", &g.path("web.toml")]);
    assert_eq!(status, ExitStatus::Success, "{err}");
    assert!(err.is_empty(), "{err}");
    assert_eq!(
        out,
        format!(
            "name:        web\n\
             type:        pvh\n\
             kernel:      {}\n\
             ramdisk:     -\n\
             cmdline:     console=hvc0\n\
             memory:      32 MiB\n\
             vcpus:       1\n\
             on_poweroff: destroy\n\
             on_reboot:   restart\n\
             on_crash:    destroy\n\
             entry:       0x100040\n\
             start_info:  0x1000\n\
             segment:     0x100000-0x104000 (5000 bytes from the file, 16384 in memory)\n",
            g.path("hello.elf")
        )
    );
    // Overrides show in the result.
    let (status, out, _) = dom0(&[
        "validate",
        &g.path("web.toml"),
        "--set",
        "memory=2G",
        "--set",
        "on_crash=preserve",
    ]);
    assert_eq!(status, ExitStatus::Success);
    assert!(out.contains("memory:      2048 MiB\n"), "{out}");
    assert!(out.contains("on_crash:    preserve\n"), "{out}");
}

#[test]
fn validate_json() {
    let g = Guest::new();
    let (status, out, _) = dom0(&["validate", &g.path("web.toml"), "-o", "json"]);
    assert_eq!(status, ExitStatus::Success);
    let doc: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["api_version"], "dom0/v1");
    assert_eq!(doc["config"]["name"], "web");
    assert_eq!(doc["config"]["kernel"], g.path("hello.elf"));
    assert_eq!(doc["config"]["ramdisk"], Value::Null);
    assert_eq!(doc["config"]["cmdline"], "console=hvc0");
    assert_eq!(doc["config"]["memory_mib"], 32);
    assert_eq!(doc["config"]["vcpus"], 1);
    assert_eq!(doc["config"]["on_reboot"], "restart");
    assert_eq!(doc["plan"]["entry"], 0x10_0040);
    assert_eq!(doc["plan"]["start_info"], 0x1000);
    assert_eq!(doc["plan"]["segments"][0]["paddr"], 0x10_0000);
    assert_eq!(doc["plan"]["segments"][0]["file_bytes"], 5000);
    assert_eq!(doc["plan"]["segments"][0]["mem_bytes"], 0x4000);
    assert_eq!(doc["plan"]["ramdisk"], Value::Null);
}

/// Runs `validate` and `create` (against nothing: the config is refused first) on `cfg`
/// with `extra` arguments; both must fail alike. Returns the status and stderr.
fn refused(cfg: &str, extra: &[&str]) -> (ExitStatus, String) {
    let mut args = vec!["validate", cfg];
    args.extend_from_slice(extra);
    let (status, out, err) = dom0(&args);
    assert!(out.is_empty(), "{out}");
    assert_eq!(err.lines().count(), 1, "bad input is one line: {err}");
    assert!(err.ends_with('\n'), "{err}");
    (status, err)
}

#[test]
fn bad_configs_exit_7_with_file_and_line() {
    let g = Guest::new();
    let cfg = g.config(
        "bad.toml",
        "name = \"web\"\nkernel = \"hello.elf\"\ncolour = \"red\"\n",
    );
    for cmd in ["validate", "create"] {
        // `create` refuses before it even tries to reach dom0d (exit 7, not 69).
        let (status, out, err) = dom0(&[cmd, &cfg]);
        assert_eq!(status, ExitStatus::ConfigInvalid, "{cmd}");
        assert!(out.is_empty());
        assert_eq!(
            err,
            format!(
                "error: {cfg}:3: unknown key \"colour\"; the keys are: name, type, \
                 kernel, ramdisk, cmdline, memory, vcpus, on_poweroff, on_reboot, on_crash, disk, vif\n"
            ),
            "{cmd}"
        );
    }
    for (text, message) in [
        (
            "name = \"web\"\nkernel = 5\n",
            ":2: \"kernel\" must be a string, not an integer",
        ),
        (
            "name = \"web\"\nkernel = \"k\"\nvcpus = 0\n",
            ":3: \"vcpus\" is 0; a domain needs at least 1 vCPU",
        ),
        (
            "name = \"web\"\nkernel = \"k\"\nvcpus = 4\n",
            ":3: \"vcpus\" is 4; only 1 vCPU per domain is supported for now",
        ),
        (
            "name = \"web\"\nkernel = \"k\"\nmemory = 1\n",
            ":3: \"memory\" is 1 MiB; it must be 2 to 3072 MiB",
        ),
        (
            "name = \"web\"\nkernel = \"k\"\nmaxmem = 64\n",
            ":3: \"maxmem\" is not supported yet",
        ),
        ("name = \"web\"\nkernel = \"k\"\n[disk\n", ":3:"),
        ("kernel = \"k\"\n", ": \"name\" is required"),
    ] {
        let cfg = g.config("bad.toml", text);
        let (status, err) = refused(&cfg, &[]);
        assert_eq!(status, ExitStatus::ConfigInvalid, "{text}");
        let first = err.lines().next().unwrap();
        assert!(
            first.starts_with(&format!("error: {cfg}{message}")),
            "{text}: {first}"
        );
    }
    // Overrides are named in the error instead of a line.
    let (status, err) = refused(&g.path("web.toml"), &["--set", "vcpus=2"]);
    assert_eq!(status, ExitStatus::ConfigInvalid);
    assert_eq!(
        err,
        "error: --set vcpus=2: \"vcpus\" is 2; only 1 vCPU per domain is supported for now\n"
    );
    let (status, err) = refused(&g.path("web.toml"), &["--set", "colour=red"]);
    assert_eq!(status, ExitStatus::ConfigInvalid);
    assert!(
        err.starts_with("error: --set colour=red: unknown key \"colour\"; the keys are: "),
        "{err}"
    );
    // A --set without '=' is a usage error.
    let (status, _, err) = dom0(&["validate", &g.path("web.toml"), "--set", "memory"]);
    assert_eq!(status, ExitStatus::Usage);
    assert!(err.contains("is not KEY=VALUE"), "{err}");
}

#[test]
fn missing_and_bad_files_have_their_own_exit_codes() {
    let g = Guest::new();
    // The config file itself.
    let (status, err) = refused(&g.path("nope.toml"), &[]);
    assert_eq!(status, ExitStatus::NotFound);
    assert_eq!(
        err,
        format!(
            "error: cannot read config {}: No such file or directory; check the path (a bare \
             name, without a slash or .toml, is looked up as /etc/dom0/domains/NAME.toml)\n",
            g.path("nope.toml")
        )
    );
    // A bare name is looked up in /etc/dom0/domains.
    let (status, err) = refused("surely-not-a-domain-here", &[]);
    assert_eq!(status, ExitStatus::NotFound);
    assert!(
        err.starts_with(
            "error: cannot read config /etc/dom0/domains/surely-not-a-domain-here.toml: "
        ),
        "{err}"
    );
    // The kernel.
    let cfg = g.config("k.toml", "name = \"web\"\nkernel = \"missing.elf\"\n");
    let (status, err) = refused(&cfg, &[]);
    assert_eq!(status, ExitStatus::NotFound);
    assert_eq!(
        err,
        format!(
            "error: {cfg} does not make a valid domain: cannot read kernel {}: No \
             such file or directory; check \"kernel\" in the config (a path in Dom0; \
             relative paths start at the config's directory)\n",
            g.path("missing.elf")
        )
    );
    // Not an ELF; an ELF without the PVH note; a kernel too big for the memory.
    std::fs::write(g.path("script"), "#!/bin/sh\n").unwrap();
    let cfg = g.config("k.toml", "name = \"web\"\nkernel = \"script\"\n");
    let (status, err) = refused(&cfg, &[]);
    assert_eq!(status, ExitStatus::ConfigInvalid);
    assert!(
        err.contains(&format!(
            ": kernel {} cannot be used: not an ELF file; ",
            g.path("script")
        )),
        "{err}"
    );
    {
        use crate::builder::test_elf::{Seg, elf_without_note};
        let seg = Seg {
            paddr: 0x10_0000,
            data: vec![1],
            mem: 1,
        };
        std::fs::write(g.path("plain.elf"), elf_without_note(&[seg])).unwrap();
    }
    let cfg = g.config("k.toml", "name = \"web\"\nkernel = \"plain.elf\"\n");
    let (status, err) = refused(&cfg, &[]);
    assert_eq!(status, ExitStatus::ConfigInvalid);
    assert!(
        err.contains("cannot be used: no PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY); "),
        "{err}"
    );
    assert!(
        err.contains("; a PVH kernel is an x86-64 ELF executable"),
        "{err}"
    );
    // The smallest domain fits the kernel, and a small ramdisk above it, below the xenstore
    // and console pages.
    let cfg = g.config(
        "k.toml",
        "name = \"web\"\nkernel = \"hello.elf\"\nramdisk = \"script\"\nmemory = 2\n",
    );
    let (status, out, err) = dom0(&["validate", &cfg]);
    assert_eq!(status, ExitStatus::Success, "{err}");
    assert!(
        out.ends_with("ramdisk_at:  0x1fd000-0x1fd00a (10 bytes)\n"),
        "{out}"
    );
    // Relative paths in --set start at the current directory, not the config's.
    let (status, err) = refused(&cfg, &["--set", "ramdisk=hello.elf"]);
    assert_eq!(status, ExitStatus::NotFound, "{err}");
    let cwd = std::env::current_dir().unwrap();
    assert!(
        err.contains(&format!(
            "cannot read ramdisk {}",
            cwd.join("hello.elf").display()
        )),
        "{err}"
    );
    // Under -o json the error is one JSON object on stderr.
    let cfg = g.config("k.toml", "name = \"web\"\nkernel = \"missing.elf\"\n");
    let (status, out, err) = dom0(&["validate", &cfg, "-o", "json"]);
    assert_eq!(status, ExitStatus::NotFound);
    assert!(out.is_empty());
    let doc: Value = serde_json::from_str(&err).unwrap();
    assert_eq!(doc["code"], "file_not_found");
    assert_eq!(doc["exit_code"], 3);
}

#[test]
fn create_prints_the_new_domain_and_it_is_built() {
    let g = Guest::new();
    let d = Dom0d::start(FakeMicrovisor::new());
    let free = d.fake.mem_free_kib();
    let (status, out, err) = d.run(&["create", &g.path("web.toml")]);
    assert_eq!(status, ExitStatus::Success, "{err}");
    assert!(err.is_empty(), "{err}");
    assert_eq!(out, "domid: 3\nname:  web\nstate: running\n");
    assert_eq!(d.fake.mem_free_kib(), free - 32 * 1024);
    // The guest's memory holds the kernel and a start info.
    let text = crate::builder::test_elf::bytes(5000, 1);
    assert_eq!(d.fake.read_guest(3, 0x10_0000, 5000).unwrap(), text);
    let magic = d.fake.read_guest(3, 0x1000, 4).unwrap();
    assert_eq!(magic, shared_abi::pvh::HVM_START_MAGIC.to_le_bytes());
    assert_eq!(d.fake.read_guest(3, 0x1100, 13).unwrap(), b"console=hvc0\0");
    assert_eq!(d.fake.entry_of(3).unwrap().entry, 0x10_0040);
    // It is listed, and a second create of the same name is refused (exit 4).
    let (_, out, _) = d.run(&["list"]);
    assert!(out.contains("3   web"), "{out}");
    let (status, out, err) = d.run(&["create", &g.path("web.toml")]);
    assert_eq!(status, ExitStatus::InvalidState);
    assert!(out.is_empty());
    assert_eq!(
        err,
        "error: cannot create domain \"web\": a domain named \"web\" already exists \
         (domain 3); choose another name (--set name=NEW), or remove the other domain \
         first: `dom0 destroy web`\n"
    );
    // Another name, paused, as JSON.
    let (status, out, err) = d.run(&[
        "create",
        &g.path("web.toml"),
        "--set",
        "name=web2",
        "--paused",
        "-o",
        "json",
    ]);
    assert_eq!(status, ExitStatus::Success, "{err}");
    let doc: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["api_version"], "dom0/v1");
    assert_eq!(doc["domid"], 4);
    assert_eq!(doc["name"], "web2");
    assert_eq!(doc["state"], "paused");
    assert_eq!(doc["dry_run"], false);
    assert_eq!(doc["config"]["memory_mib"], 32);
    assert_eq!(doc["plan"]["entry"], 0x10_0040);
    assert!(doc["took_ms"].is_u64());
    assert_eq!(state_of(&d, "web2"), "paused");
    let (status, _, _) = d.run(&["unpause", "web2"]);
    assert_eq!(status, ExitStatus::Success);
}

#[test]
fn create_dry_run_checks_the_host_and_creates_nothing() {
    let g = Guest::new();
    let d = Dom0d::start(FakeMicrovisor::new());
    let calls = d.fake.calls();
    let (status, out, err) = d.run(&["create", "--dry-run", &g.path("web.toml")]);
    assert_eq!(status, ExitStatus::Success, "{err}");
    let (_, validated, _) = dom0(&["validate", &g.path("web.toml")]);
    assert_eq!(out, validated, "the same report as validate");
    assert!(d.fake.calls() > calls, "dom0d checked the host");
    let (_, list, _) = d.run(&["list", "-o", "json"]);
    let doc: Value = serde_json::from_str(&list).unwrap();
    assert_eq!(doc.as_array().unwrap().len(), 3, "nothing was created");
    let (_, out, _) = d.run(&["create", "--dry-run", &g.path("web.toml"), "-o", "json"]);
    let doc: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (doc["domid"].clone(), doc["dry_run"].clone()),
        (Value::Null, Value::Bool(true))
    );
    // The host checks: a taken name, too little memory.
    let (status, _, err) = d.run(&[
        "create",
        "--dry-run",
        &g.path("web.toml"),
        "--set",
        "name=hello1",
    ]);
    assert_eq!(status, ExitStatus::InvalidState, "{err}");
    let (status, _, err) = d.run(&[
        "create",
        "--dry-run",
        &g.path("web.toml"),
        "--set",
        "memory=3072",
    ]);
    assert_eq!(status, ExitStatus::Success, "3 GiB are free: {err}");
}

#[test]
fn create_needs_free_memory_and_says_how_much_there_is() {
    let g = Guest::new();
    let fake = FakeMicrovisor::new();
    let host = crate::microvisor::host_record(&fake).unwrap();
    let fake = fake.with_host(shared_abi::control::HostInfo {
        mem_free_kib: 20 * 1024,
        ..host
    });
    let d = Dom0d::start(fake);
    let (status, out, err) = d.run(&["create", &g.path("web.toml")]);
    assert_eq!(status, ExitStatus::Failure);
    assert!(out.is_empty());
    assert_eq!(
        err,
        "error: cannot create domain \"web\": domain \"web\" needs 32 MiB of \
         memory, but the host has only 20 MiB free; lower \"memory\" (e.g. --set \
         memory=20) or destroy a domain; `dom0 host info` shows the free memory\n"
    );
    assert_eq!(d.fake.mem_free_kib(), 20 * 1024);
    let (status, out, err) = d.run(&["create", &g.path("web.toml"), "--set", "memory=20"]);
    assert_eq!(status, ExitStatus::Success, "{err}");
    assert!(out.starts_with("domid: 3\n"), "{out}");
    assert_eq!(d.fake.mem_free_kib(), 0);
}

#[test]
fn create_errors_found_by_dom0d() {
    let g = Guest::new();
    let d = Dom0d::start(FakeMicrovisor::new());
    // dom0d reads the kernel itself: gone between the CLI's parse and dom0d's read.
    let cfg = g.config("gone.toml", "name = \"gone\"\nkernel = \"gone.elf\"\n");
    let (status, _, err) = d.run(&["create", &cfg]);
    assert_eq!(status, ExitStatus::NotFound);
    assert_eq!(
        err,
        format!(
            "error: cannot create domain \"gone\": cannot read kernel {}: No such file or \
             directory; check \"kernel\" in the config (a path in Dom0; relative paths start \
             at the config's directory)\n",
            g.path("gone.elf")
        )
    );
    // A failure in the middle: nothing left behind, and the JSON error names it.
    let free = d.fake.mem_free_kib();
    d.fake.fail_nth(ControlOp::DomainSetEntry as u64, 1, 22);
    let (status, out, err) = d.run(&["create", &g.path("web.toml"), "-o", "json"]);
    assert_eq!(status, ExitStatus::Failure);
    assert!(out.is_empty());
    let doc: Value = serde_json::from_str(&err).unwrap();
    assert_eq!(doc["code"], "create_failed");
    assert_eq!(doc["message"], "cannot create domain \"web\"");
    assert_eq!(
        doc["causes"][0],
        "setting the entry point (DomainSetEntry) failed: the microvisor answered EINVAL \
         (Invalid argument)"
    );
    assert_eq!(
        doc["hint"],
        "nothing was left behind; dom0d's log has the details"
    );
    assert_eq!(d.fake.mem_free_kib(), free);
    assert!(d.fake.foreign_slots().is_empty());
    let (_, list, _) = d.run(&["list", "--json"]);
    assert_eq!(
        serde_json::from_str::<Value>(&list)
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        3
    );
    // A microvisor without DomainCreate: not supported (6).
    d.fake.fail_nth(ControlOp::DomainCreate as u64, 1, 38);
    let (status, _, err) = d.run(&["create", &g.path("web.toml")]);
    assert_eq!(status, ExitStatus::NotSupported, "{err}");
}

use shared_abi::control::ControlOp;

#[test]
fn concurrent_creates_are_serialised() {
    let g = Guest::new();
    let d = Dom0d::start(FakeMicrovisor::new());
    let free = d.fake.mem_free_kib();
    // Eight clients, two per name: exactly one of each pair wins.
    let results: Vec<(ExitStatus, String)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..8)
            .map(|i| {
                let (d, g) = (&d, &g);
                scope.spawn(move || {
                    let set = format!("name=vm{}", i / 2);
                    let (status, _, err) = d.run(&["create", &g.path("web.toml"), "--set", &set]);
                    (status, err)
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    let won = results
        .iter()
        .filter(|(s, _)| *s == ExitStatus::Success)
        .count();
    let lost: Vec<_> = results
        .iter()
        .filter(|(s, _)| *s != ExitStatus::Success)
        .collect();
    assert_eq!(won, 4, "{results:?}");
    assert!(
        lost.iter()
            .all(|(s, e)| *s == ExitStatus::InvalidState && e.contains("already exists")),
        "{lost:?}"
    );
    assert_eq!(d.fake.mem_free_kib(), free - 4 * 32 * 1024);
    // Only the four console pages and four xenstore pages stay mapped, each in a slot of
    // its own, and each domain has one of each.
    let slots = d.fake.foreign_slots();
    assert_eq!(slots.len(), 8, "{slots:?}");
    assert!(slots.iter().all(|&(slot, _, _)| slot >= 2112), "{slots:?}");
    let mut pages: Vec<(u32, u64)> = slots.iter().map(|&(_, d, gfn)| (d, gfn)).collect();
    pages.sort_unstable();
    let domids: std::collections::BTreeSet<u32> = pages.iter().map(|p| p.0).collect();
    assert_eq!(domids.len(), 4, "{slots:?}");
    let expected: Vec<(u32, u64)> = domids
        .iter()
        .flat_map(|&d| [(d, 32 * 256 - 2), (d, 32 * 256 - 1)])
        .collect();
    assert_eq!(pages, expected, "{slots:?}");
}

#[test]
fn create_with_an_unreachable_or_old_dom0d_exits_69() {
    use crate::proto::{ApiError, Request, Response};
    let g = Guest::new();
    let (status, _, err) = dom0(&["create", &g.path("web.toml")]);
    assert_eq!(status, ExitStatus::ServiceUnavailable);
    assert!(err.starts_with("error: cannot reach dom0d at"), "{err}");
    // A dom0d of an earlier protocol 1 release cannot decode Create.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let old = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        while let Ok(Some(payload)) = crate::proto::read_frame(&mut s, crate::proto::MAX_FRAME) {
            let reply = match crate::proto::decode::<Request>(&payload) {
                Ok(Request::Hello { .. }) => Service::hello(),
                _ => Response::Error(ApiError::Malformed {
                    reason: "cannot decode message".into(),
                }),
            };
            s.write_all(&crate::proto::encode(&reply).unwrap()).unwrap();
        }
    });
    let (status, _, err) = dom0_at(&path, &["create", &g.path("web.toml")]);
    old.join().unwrap();
    assert_eq!(status, ExitStatus::ServiceUnavailable);
    assert!(err.contains("does not know the create request"), "{err}");
}

#[test]
fn create_and_validate_usage() {
    for args in [
        &["create"][..],
        &["validate"],
        &["create", "a", "b"],
        &["create", "--set"],
        &["create", "x", "--console"],
    ] {
        let (status, out, _) = dom0(args);
        assert_eq!(status, ExitStatus::Usage, "{args:?}");
        assert!(out.is_empty());
    }
    let cli = parse(&[
        "create",
        "--paused",
        "--dry-run",
        "web",
        "--set",
        "a=1",
        "--set",
        "b=2",
    ])
    .unwrap();
    match cli.command {
        Command::Create {
            config,
            set,
            paused,
            dry_run,
        } => {
            assert_eq!(config, "web");
            assert_eq!(set.len(), 2);
            assert!(paused && dry_run);
        }
        other => panic!("{other:?}"),
    }
    let (_, out, _) = dom0(&["completions", "bash"]);
    assert!(out.contains("create") && out.contains("validate") && out.contains("--dry-run"));
}

#[test]
fn the_kernel_module_header_names_every_control_op() {
    // dom0/kmod/microvisor.h is kept in sync with shared_abi::control by hand: check the
    // operation numbers here (the C compiler checks the structure sizes).
    let header =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("kmod/microvisor.h"))
            .unwrap();
    let mut seen = 0;
    for line in header.lines() {
        let Some(rest) = line.strip_prefix("#define MV_OP_") else {
            continue;
        };
        let mut words = rest.split_whitespace();
        let name = words.next().unwrap();
        let value: u64 = words.next().unwrap().trim_end_matches('u').parse().unwrap();
        let op = ControlOp::try_from(value).unwrap_or_else(|_| panic!("MV_OP_{name} = {value}"));
        let snake: String = format!("{op:?}")
            .chars()
            .enumerate()
            .flat_map(|(i, c)| {
                let sep = (i > 0 && c.is_ascii_uppercase()).then_some('_');
                sep.into_iter()
                    .chain(std::iter::once(c.to_ascii_uppercase()))
            })
            .collect();
        assert_eq!(name, snake, "MV_OP_{name} = {value}");
        seen += 1;
    }
    assert_eq!(seen, 11, "every ControlOp has its MV_OP_");
}

// ---- console and logs ----

/// Runs the CLI with `stdin`, capturing raw bytes.
fn dom0_bytes(socket: &Path, args: &[&str], stdin: crate::Stdin) -> (ExitStatus, Vec<u8>, String) {
    let mut out = Vec::new();
    let mut err = Vec::new();
    let socket = socket.to_str().unwrap();
    let argv = ["dom0", "--socket", socket]
        .into_iter()
        .chain(args.iter().copied());
    let status = crate::run_with_stdin(argv, stdin, &mut out, &mut err);
    (status, out, String::from_utf8(err).unwrap())
}

impl Dom0d {
    /// `dom0 create` of `web.toml` as `name`; returns the domid.
    fn create(&self, g: &Guest, name: &str) -> u32 {
        let set = format!("name={name}");
        let (status, out, err) =
            self.run(&["create", &g.path("web.toml"), "--set", &set, "-o", "json"]);
        assert_eq!(status, ExitStatus::Success, "{err}");
        let doc: Value = serde_json::from_str(&out).unwrap();
        u32::try_from(doc["domid"].as_u64().unwrap()).unwrap()
    }

    /// The guest prints `bytes`; dom0d drains them (as on its event).
    fn print(&self, domid: u32, bytes: &[u8]) {
        assert_eq!(self.fake.console_write(domid, bytes), Some(bytes.len()));
        self.consoles.drain_all(&*self.fake);
    }

    fn bytes(&self, args: &[&str], stdin: crate::Stdin) -> (ExitStatus, Vec<u8>, String) {
        dom0_bytes(self.server.path(), args, stdin)
    }
}

/// A guest that echoes its console input (a terminal would turn `\r` into `\r\n`), until
/// the returned flag is set.
fn echo_guest(
    d: &Dom0d,
    domid: u32,
) -> (
    Arc<std::sync::atomic::AtomicBool>,
    std::thread::JoinHandle<()>,
) {
    use std::sync::atomic::{AtomicBool, Ordering};
    let stop = Arc::new(AtomicBool::new(false));
    let (fake, consoles, flag) = (
        Arc::clone(&d.fake),
        Arc::clone(&d.consoles),
        Arc::clone(&stop),
    );
    let thread = std::thread::spawn(move || {
        while !flag.load(Ordering::Relaxed) {
            let input = fake.console_read_input(domid).unwrap_or_default();
            if input.is_empty() {
                std::thread::sleep(std::time::Duration::from_millis(2));
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
    (stop, thread)
}

#[test]
fn logs_print_the_raw_history() {
    let g = Guest::new();
    let d = Dom0d::start(FakeMicrovisor::new());
    let domid = d.create(&g, "web");
    let raw = b"\x1b[1mboot\x1b[0m\r\n\xff\x00 done\r\n";
    d.print(domid, raw);
    let (status, out, err) = d.bytes(&["logs", "web"], crate::Stdin::piped(io::empty()));
    assert_eq!(status, ExitStatus::Success, "{err}");
    assert!(err.is_empty(), "{err}");
    assert_eq!(out, raw, "bytes pass unchanged");
    let (status, by_id, _) = d.bytes(
        &["logs", &domid.to_string()],
        crate::Stdin::piped(io::empty()),
    );
    assert_eq!(status, ExitStatus::Success);
    assert_eq!(by_id, raw);
    // Unknown domains exit 3 with suggestions, domains without a console 6.
    let (status, _, err) = d.run(&["logs", "wbe"]);
    assert_eq!(status, ExitStatus::NotFound);
    assert_eq!(
        err,
        "error: no domain named \"wbe\"\n  hint: did you mean web?\n"
    );
    let (status, _, err) = d.run(&["logs", "77"]);
    assert_eq!(status, ExitStatus::NotFound);
    assert!(err.starts_with("error: no domain with id 77\n"), "{err}");
    let (status, _, err) = d.run(&["logs", "Domain-0"]);
    assert_eq!(status, ExitStatus::NotSupported, "{err}");
    assert!(
        err.starts_with(
            "error: cannot read the console of Domain-0\n  caused by: domain 0 (Domain-0) has no console that dom0d serves\n  hint: only domains built by `dom0 create`"
        ),
        "{err}"
    );
    let (status, _, err) = d.run(&["console", "hello1"]);
    assert_eq!(status, ExitStatus::NotSupported, "{err}");
}

#[test]
fn logs_follow_until_the_domain_is_destroyed() {
    let g = Guest::new();
    let d = Dom0d::start(FakeMicrovisor::new());
    let domid = d.create(&g, "web");
    d.print(domid, b"one\r\n");
    let path = d.server.path().to_path_buf();
    let follower = std::thread::spawn(move || {
        dom0_bytes(
            &path,
            &["logs", "-f", "web"],
            crate::Stdin::piped(io::empty()),
        )
    });
    // It prints what comes while it follows, and ends with the domain.
    std::thread::sleep(std::time::Duration::from_millis(200));
    d.print(domid, b"two\r\n");
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert_eq!(d.fake.console_write(domid, b"last\r\n"), Some(6));
    let (status, _, err) = d.run(&["destroy", "web"]);
    assert_eq!(status, ExitStatus::Success, "{err}");
    let (status, out, err) = follower.join().unwrap();
    assert_eq!(status, ExitStatus::Success, "{err}");
    assert_eq!(out, b"one\r\ntwo\r\nlast\r\n");
    // The history outlives the domain.
    let (status, out, _) = d.bytes(&["logs", "web"], crate::Stdin::piped(io::empty()));
    assert_eq!(status, ExitStatus::Success);
    assert_eq!(out, b"one\r\ntwo\r\nlast\r\n");
    let (status, _, _) = d.run(&["info", "web"]);
    assert_eq!(status, ExitStatus::NotFound, "the domain itself is gone");
}

#[test]
fn console_forwards_piped_input_and_prints_the_answer() {
    let g = Guest::new();
    let d = Dom0d::start(FakeMicrovisor::new());
    let domid = d.create(&g, "echo");
    d.print(domid, b"echo ready\r\n");
    let (stop, guest) = echo_guest(&d, domid);
    let started = std::time::Instant::now();
    let (status, out, err) = d.bytes(
        &["console", "echo"],
        crate::Stdin::piped(io::Cursor::new(b"hello-echo\r".to_vec())),
    );
    let took = started.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    guest.join().unwrap();
    assert_eq!(status, ExitStatus::Success, "{err}");
    assert_eq!(
        out, b"echo ready\r\nhello-echo\r\n",
        "history, then the echo"
    );
    assert_eq!(
        err, "Connected to echo (domid 3). Escape character is ^]\n",
        "the banner only"
    );
    assert!(
        took >= crate::attach::GRACE,
        "output is printed for a while after EOF: {took:?}"
    );
    assert!(took < crate::attach::GRACE * 5, "{took:?}");
    // The console is free again.
    let (status, _, err) = d.bytes(&["console", "echo"], crate::Stdin::piped(io::empty()));
    assert_eq!(status, ExitStatus::Success, "{err}");
}

#[test]
fn the_escape_detaches_at_once() {
    let g = Guest::new();
    let d = Dom0d::start(FakeMicrovisor::new());
    let domid = d.create(&g, "echo");
    let started = std::time::Instant::now();
    let (status, out, err) = d.bytes(
        &["console", "3"],
        crate::Stdin::piped(io::Cursor::new(b"ab\x1dcd".to_vec())),
    );
    assert_eq!(status, ExitStatus::Success, "{err}");
    assert!(out.is_empty());
    assert!(
        started.elapsed() < crate::attach::GRACE,
        "no grace after ^]"
    );
    assert_eq!(
        d.fake.console_read_input(domid).unwrap(),
        b"ab",
        "input up to ^]"
    );
}

#[test]
fn one_console_at_a_time_unless_forced() {
    let g = Guest::new();
    let d = Dom0d::start(FakeMicrovisor::new());
    let domid = d.create(&g, "echo");
    // The first client's stdin stays open: it stays attached.
    let (held, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
    let path = d.server.path().to_path_buf();
    let first = std::thread::spawn(move || {
        dom0_bytes(&path, &["console", "echo"], crate::Stdin::piped(theirs))
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !d.consoles.summary(domid).unwrap().attached {
        assert!(
            std::time::Instant::now() < deadline,
            "the first client never attached"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let (status, _, err) = d.run(&["console", "echo"]);
    assert_eq!(status, ExitStatus::InvalidState);
    assert_eq!(
        err,
        "error: cannot attach to the console of echo\n  caused by: the console of domain 3 (echo) \
         is in use by another `dom0 console`\n  hint: `dom0 console --force echo` takes it over\n"
    );
    let (_, out, _) = d.run(&["info", "echo"]);
    assert!(out.contains("; a client is attached\n"), "{out}");
    // --force takes over; the first client is told and exits 0.
    let (status, _, err) = d.bytes(
        &["console", "--force", "echo"],
        crate::Stdin::piped(io::Cursor::new(b"\x1d".to_vec())),
    );
    assert_eq!(status, ExitStatus::Success, "{err}");
    assert!(
        err.contains("(took the console over from another client)"),
        "{err}"
    );
    let (status, _, err) = first.join().unwrap();
    assert_eq!(status, ExitStatus::Success, "{err}");
    assert!(
        err.ends_with("detached: another `dom0 console --force` took over the console of echo\n"),
        "{err}"
    );
    drop(held);
}

#[test]
fn info_shows_the_console_and_its_first_byte() {
    let g = Guest::new();
    let d = Dom0d::start(FakeMicrovisor::new());
    let domid = d.create(&g, "web");
    let (_, out, _) = d.run(&["info", "web"]);
    assert!(out.ends_with("console:    no output yet\n"), "{out}");
    d.print(domid, b"123456789");
    let (_, out, _) = d.run(&["info", "web"]);
    let line = out.lines().last().unwrap();
    assert!(
        line.starts_with("console:    9 bytes (first ")
            && line.ends_with(" ms after the create request)"),
        "{line}"
    );
    let (_, out, _) = d.run(&["info", "web", "-o", "json"]);
    let doc: Value = serde_json::from_str(&out).unwrap();
    assert!(doc["console_first_byte_ms"].is_u64(), "{doc}");
    assert_eq!(doc["console"]["total_bytes"], 9);
    assert_eq!(doc["console"]["history_bytes"], 9);
    assert_eq!(doc["console"]["disabled"], Value::Null);
    assert_eq!(doc["console"]["attached"], false);
    let (_, out, _) = d.run(&["info", "hello1", "-o", "json"]);
    let doc: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["console_first_byte_ms"], Value::Null);
}

#[test]
fn logs_and_console_need_a_dom0d_that_knows_them() {
    use crate::proto::{ApiError, Request, Response};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    // A dom0d of an earlier protocol 1 release cannot decode the console requests.
    let old = std::thread::spawn(move || {
        for _ in 0..2 {
            let (mut s, _) = listener.accept().unwrap();
            while let Ok(Some(payload)) = crate::proto::read_frame(&mut s, crate::proto::MAX_FRAME)
            {
                let reply = match crate::proto::decode::<Request>(&payload) {
                    Ok(Request::Hello { .. }) => Service::hello(),
                    _ => Response::Error(ApiError::Malformed {
                        reason: "cannot decode message".into(),
                    }),
                };
                s.write_all(&crate::proto::encode(&reply).unwrap()).unwrap();
            }
        }
    });
    let (status, _, err) = dom0_at(&path, &["logs", "web"]);
    assert_eq!(status, ExitStatus::ServiceUnavailable);
    assert!(err.contains("does not know the logs request"), "{err}");
    let (status, _, err) = dom0_at(&path, &["console", "web"]);
    assert_eq!(status, ExitStatus::ServiceUnavailable);
    assert!(err.contains("does not know the console request"), "{err}");
    old.join().unwrap();
}

// ---- shutdown and reboot ----

const POWEROFF: u32 = 0;
const REBOOT: u32 = 1;

/// A guest's xenstore client on the store page and port dom0d's builder gave `domid`;
/// each wait for the store serves every store once, as dom0d's event task would.
struct PvGuest {
    fake: Arc<FakeMicrovisor>,
    xenstored: Arc<crate::xenstored::Xenstored>,
    monitor: Option<Arc<EventMonitor>>,
    domid: u32,
    port: u32,
    client: pv_drivers::xenstore::XsClient<Arc<pv_drivers::VecMem>>,
}

struct PvIo<'a> {
    fake: &'a FakeMicrovisor,
    xenstored: &'a crate::xenstored::Xenstored,
    domid: u32,
    port: u32,
    waits: u32,
}

impl pv_drivers::xenstore::XsIo for PvIo<'_> {
    fn notify(&mut self) {
        self.fake.guest_send(self.domid, self.port);
    }

    fn wait(&mut self) {
        self.waits += 1;
        assert!(self.waits < 1000, "the store never answered");
        std::thread::sleep(std::time::Duration::from_millis(1));
        self.xenstored.pump_all(self.fake);
    }
}

impl PvGuest {
    /// Connects and, as guest-rt does, writes `control/feature-<f>` = 1 for each of
    /// `features` and watches `control/shutdown`.
    fn announce(d: &Dom0d, domid: u32, features: &[&str]) -> Self {
        use shared_abi::hvm::{HVM_PARAM_STORE_EVTCHN, HVM_PARAM_STORE_PFN};
        use shared_abi::io::xenstore::XS_WATCH;
        let pfn = d.fake.param(domid, HVM_PARAM_STORE_PFN).unwrap();
        let port = d.fake.param(domid, HVM_PARAM_STORE_EVTCHN).unwrap();
        let mut g = Self {
            fake: Arc::clone(&d.fake),
            xenstored: Arc::clone(&d.xenstored),
            monitor: d.monitor.clone(),
            domid,
            port: u32::try_from(port).unwrap(),
            client: pv_drivers::xenstore::XsClient::new(d.fake.guest_page(domid, pfn).unwrap())
                .unwrap(),
        };
        for f in features {
            g.announce_feature(f);
        }
        g.call(XS_WATCH, &[b"control/shutdown\0", b"shutdown\0"]);
        g
    }

    /// Writes `control/feature-<f>` = 1.
    fn announce_feature(&mut self, f: &str) {
        let node = format!("control/feature-{f}\0");
        self.call(shared_abi::io::xenstore::XS_WRITE, &[node.as_bytes(), b"1"]);
    }

    fn call(&mut self, msg_type: u32, parts: &[&[u8]]) -> Vec<u8> {
        self.try_call(msg_type, parts).unwrap()
    }

    fn try_call(
        &mut self,
        msg_type: u32,
        parts: &[&[u8]],
    ) -> Result<Vec<u8>, pv_drivers::xenstore::XsCallError> {
        let mut io = PvIo {
            fake: &self.fake,
            xenstored: &self.xenstored,
            domid: self.domid,
            port: self.port,
            waits: 0,
        };
        let mut out = [0u8; 64];
        let n = self.client.call(&mut io, msg_type, parts, &mut out)?;
        Ok(out[..n].to_vec())
    }

    /// Runs the guest on a thread: waits for a watch event whose `control/shutdown` is
    /// not empty, acknowledges it, and shuts down with that reason (the microvisor's
    /// state event is recorded for dom0d). Returns what it was asked.
    fn obey(mut self) -> std::thread::JoinHandle<String> {
        use shared_abi::io::xenstore::{XS_READ, XS_WRITE};
        std::thread::spawn(move || {
            let mut seen = self.client.watch_events();
            for _ in 0..5000 {
                self.xenstored.pump_all(&*self.fake);
                self.client.poll().unwrap();
                if self.client.watch_events() != seen {
                    seen = self.client.watch_events();
                    // The watch's first event may arrive before anything was written:
                    // the node is missing then (ENOENT), which asks nothing.
                    let asked = self
                        .try_call(XS_READ, &[b"control/shutdown\0"])
                        .unwrap_or_default();
                    if !asked.is_empty() {
                        self.call(XS_WRITE, &[b"control/shutdown\0", b""]);
                        let reason = if asked == b"reboot" { REBOOT } else { POWEROFF };
                        assert!(self.fake.shut_down(self.domid, reason));
                        if let Some(m) = &self.monitor {
                            m.record(shared_abi::control::EVENT_DOMAIN_STATE);
                        }
                        return String::from_utf8(asked).unwrap();
                    }
                }
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            panic!("domain {} was never asked", self.domid);
        })
    }
}

#[test]
fn shutdown_and_reboot_parse() {
    for (args, want, wait) in [
        (&["shutdown", "web"][..], "shutdown", false),
        (&["shutdown", "-w", "3"], "shutdown", true),
        (&["shutdown", "--wait", "web", "--json"], "shutdown", true),
        (&["reboot", "web"], "reboot", false),
        (&["reboot", "web", "--wait"], "reboot", true),
    ] {
        let got = match parse(args).unwrap().command {
            Command::Shutdown { domain, wait } => ("shutdown", domain, wait),
            Command::Reboot { domain, wait } => ("reboot", domain, wait),
            other => panic!("{other:?}"),
        };
        assert_eq!((got.0, got.2), (want, wait), "{args:?}");
        assert!(["web", "3"].contains(&got.1.as_str()), "{args:?}");
    }
    // The wait is bounded by the global --timeout, before or after the command.
    let cli = parse(&["--timeout", "2s", "shutdown", "-w", "web"]).unwrap();
    assert_eq!(cli.global.timeout, std::time::Duration::from_secs(2));
    let cli = parse(&["reboot", "web", "--wait", "--timeout", "750ms"]).unwrap();
    assert_eq!(cli.global.timeout, std::time::Duration::from_millis(750));
    for args in [
        &["shutdown"][..],
        &["reboot"],
        &["shutdown", "a", "b"],
        &["shutdown", "--all"],
        &["reboot", "web", "--wait", "--timeout", "soon"],
        &["shutdow", "web"],
    ] {
        let (status, out, err) = dom0(args);
        assert_eq!(status, ExitStatus::Usage, "{args:?}");
        assert!(out.is_empty() && !err.is_empty(), "{args:?}");
    }
    // Without dom0d: 69, as for every command that needs it.
    assert_eq!(dom0(&["shutdown", "web"]).0, ExitStatus::ServiceUnavailable);
    for shell in ["bash", "zsh", "fish"] {
        let (_, out, _) = dom0(&["completions", shell]);
        for cmd in ["shutdown", "reboot"] {
            assert!(out.contains(cmd), "{shell}: {cmd}");
        }
    }
    let (status, out, _) = dom0(&["shutdown", "--help"]);
    assert_eq!(status, ExitStatus::Success);
    assert!(out.contains("control/feature-poweroff"), "{out}");
}

#[test]
fn shutdown_asks_the_guest_and_waits_until_it_is_down() {
    let g = Guest::new();
    let d = Dom0d::supervised(FakeMicrovisor::new());
    // Kept after the poweroff, so what --wait reached is the same every run.
    let set = "on_poweroff=preserve";
    let (status, _, err) = d.run(&["create", &g.path("web.toml"), "--set", set]);
    assert_eq!(status, ExitStatus::Success, "{err}");
    let domid = d.create(&g, "db");
    let web = d.run(&["info", "web", "-o", "json"]).1;
    let web = serde_json::from_str::<Value>(&web).unwrap()["domid"]
        .as_u64()
        .unwrap();
    let guest = PvGuest::announce(&d, u32::try_from(web).unwrap(), &["poweroff"]).obey();
    let (status, out, err) = d.run(&["shutdown", "web", "--wait", "-o", "json"]);
    assert_eq!(status, ExitStatus::Success, "{err}");
    assert!(err.is_empty(), "{err}");
    assert_eq!(guest.join().unwrap(), "poweroff");
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap(),
        serde_json::json!({
            "api_version": "dom0/v1",
            "action": "shutdown",
            "domid": web,
            "name": "web",
            "waited": true,
            "state": "shutdown",
        })
    );
    let (_, list, _) = d.run(&["list"]);
    assert!(
        list.lines()
            .any(|l| l.starts_with(&format!("{web}   web")) && l.contains("---so-")),
        "{list}"
    );
    // It has ended: a second request does not apply (4).
    let (status, out, err) = d.run(&["shutdown", "web"]);
    assert_eq!(status, ExitStatus::InvalidState);
    assert!(out.is_empty());
    assert_eq!(
        err,
        format!(
            "error: cannot shut down domain {web} (web)\n  caused by: domain {web} (web) cannot be \
             sent a PV shutdown request: it has shut down\n"
        )
    );
    // Without --wait: nothing printed, or the request and the state then under -o json.
    let guest = PvGuest::announce(&d, domid, &["poweroff"]).obey();
    let (status, out, err) = d.run(&["shutdown", &domid.to_string(), "-o", "json"]);
    assert_eq!(status, ExitStatus::Success, "{err}");
    let doc: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (&doc["action"], &doc["waited"], &doc["state"], &doc["name"]),
        (
            &"shutdown".into(),
            &false.into(),
            &"running".into(),
            &"db".into()
        )
    );
    assert_eq!(guest.join().unwrap(), "poweroff");
    // on_poweroff (destroy) removes it; its xenstore goes with it.
    for _ in 0..500 {
        if d.run(&["info", "db"]).0 == ExitStatus::NotFound {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert_eq!(d.run(&["info", "db"]).0, ExitStatus::NotFound);
    assert!(!d.xenstored.knows(domid));
}

#[test]
fn reboot_wait_returns_once_this_instance_has_ended() {
    let g = Guest::new();
    let d = Dom0d::supervised(FakeMicrovisor::new());
    let first = d.create(&g, "web");
    let guest = PvGuest::announce(&d, first, &["poweroff", "reboot"]).obey();
    let (status, out, err) = d.run(&["reboot", "web", "--wait", "--timeout", "5s", "-o", "json"]);
    assert_eq!(status, ExitStatus::Success, "{err}");
    assert_eq!(guest.join().unwrap(), "reboot");
    let doc: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (&doc["action"], &doc["domid"], &doc["waited"]),
        (&"reboot".into(), &first.into(), &true.into())
    );
    // Seen shut down, or already gone (on_reboot restarted it).
    assert!(
        doc["state"].is_null() || doc["state"] == "shutdown",
        "{doc}"
    );
    // on_reboot restarts it under a new domain id (ids go round), with a new xenstore.
    let mut second = None;
    for _ in 0..500 {
        let (status, out, _) = d.run(&["info", "web", "-o", "json"]);
        if status == ExitStatus::Success {
            let doc: Value = serde_json::from_str(&out).unwrap();
            let id = doc["domid"].as_u64().unwrap();
            if id != u64::from(first) && doc["state"] == "running" {
                second = Some(u32::try_from(id).unwrap());
                break;
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let second = second.expect("restarted");
    assert!(!d.xenstored.knows(first));
    assert!(d.xenstored.knows(second));
    // The new instance announces reboot too and obeys again; a --wait on the name's new
    // id ends with it.
    let guest = PvGuest::announce(&d, second, &["reboot"]).obey();
    let (status, _, err) = d.run(&["reboot", &second.to_string(), "--wait"]);
    assert_eq!(status, ExitStatus::Success, "{err}");
    assert_eq!(guest.join().unwrap(), "reboot");
}

#[test]
fn a_guest_that_ignores_the_request_makes_wait_time_out_with_exit_5() {
    let g = Guest::new();
    let d = Dom0d::start(FakeMicrovisor::new());
    let domid = d.create(&g, "web");
    // It announces the feature, then never looks at its watch.
    let mut guest = PvGuest::announce(&d, domid, &["poweroff"]);
    let started = std::time::Instant::now();
    let (status, out, err) = d.run(&["--timeout", "300ms", "shutdown", "web", "--wait"]);
    assert_eq!(status, ExitStatus::Timeout);
    assert_eq!(status.code(), 5);
    assert!(started.elapsed() < std::time::Duration::from_secs(3));
    assert!(out.is_empty());
    assert_eq!(
        err,
        format!(
            "error: domain {domid} (web) did not shut down within 0.3 s (it is running)\n  hint: \
             the guest may ignore the request; `dom0 destroy web` stops it at once\n"
        )
    );
    // The request was written all the same.
    assert_eq!(
        d.xenstored
            .read(&format!("/local/domain/{domid}/control/shutdown")),
        Ok(b"poweroff".to_vec())
    );
    let (status, out, err) = d.run(&["reboot", "web", "-w", "--timeout", "200ms", "-o", "json"]);
    assert_eq!(status, ExitStatus::NotSupported, "{err}");
    assert!(out.is_empty());
    // Reboot was never announced: refused at once rather than waited for.
    let doc: Value = serde_json::from_str(&err).unwrap();
    assert_eq!(
        (doc["code"].as_str(), doc["exit_code"].as_u64()),
        (Some("pv_shutdown_unsupported"), Some(6))
    );
    guest.announce_feature("reboot");
    let (status, out, err) = d.run(&["reboot", "web", "-w", "--timeout", "200ms", "-o", "json"]);
    assert_eq!(status, ExitStatus::Timeout);
    assert!(out.is_empty());
    let doc: Value = serde_json::from_str(&err).unwrap();
    assert_eq!(
        doc,
        serde_json::json!({
            "code": "timeout",
            "message": format!("domain {domid} (web) did not reboot within 0.2 s (it is running)"),
            "causes": [],
            "hint": "the guest may ignore the request; `dom0 destroy web` stops it at once",
            "exit_code": 5,
        })
    );
}

#[test]
fn shutdown_refusals_exit_4_or_6_at_once() {
    let g = Guest::new();
    let d = Dom0d::start(lifecycle_fake());
    // Domain-0, and domains that have ended: 4.
    for (args, what, why) in [
        (
            &["shutdown", "0"][..],
            "shut down domain 0 (Domain-0)",
            "domain 0 (Domain-0) cannot be sent a PV shutdown request: it is the control domain",
        ),
        (
            &["reboot", "Domain-0", "--wait"],
            "reboot domain 0 (Domain-0)",
            "domain 0 (Domain-0) cannot be sent a PV reboot request: it is the control domain",
        ),
        (
            &["shutdown", "off", "-w"],
            "shut down domain 5 (off)",
            "domain 5 (off) cannot be sent a PV shutdown request: it has shut down",
        ),
        (
            &["reboot", "boom"],
            "reboot domain 6 (boom)",
            "domain 6 (boom) cannot be sent a PV reboot request: it has crashed",
        ),
    ] {
        let (status, out, err) = d.run(args);
        assert_eq!(status, ExitStatus::InvalidState, "{args:?}");
        assert!(out.is_empty());
        assert_eq!(
            err,
            format!("error: cannot {what}\n  caused by: {why}\n"),
            "{args:?}"
        );
    }
    let (status, _, err) = d.run(&["shutdown", "0", "-o", "json"]);
    assert_eq!(status.code(), 4);
    let doc: Value = serde_json::from_str(&err).unwrap();
    assert_eq!(
        (doc["code"].as_str(), doc["exit_code"].as_u64()),
        (Some("not_applicable"), Some(4))
    );
    // A guest that never announced PV shutdown, and a domain without a xenstore dom0d
    // serves: 6, with the way out.
    let domid = d.create(&g, "web");
    let started = std::time::Instant::now();
    let (status, out, err) = d.run(&["shutdown", "web", "--wait"]);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(2),
        "no wait"
    );
    assert_eq!(status, ExitStatus::NotSupported);
    assert!(out.is_empty());
    assert_eq!(
        err,
        format!(
            "error: cannot shut down domain {domid} (web)\n  caused by: domain {domid} (web) does \
             not handle PV shutdown requests: the guest never wrote control/feature-poweroff = \
             1\n  hint: `dom0 destroy web` stops it at once\n"
        )
    );
    let (status, _, err) = d.run(&["reboot", "hello1"]);
    assert_eq!(status, ExitStatus::NotSupported);
    assert_eq!(
        err,
        "error: cannot reboot domain 1 (hello1)\n  caused by: domain 1 (hello1) cannot be sent a PV \
         reboot request: dom0d serves no xenstore for it\n  hint: `dom0 destroy hello1` stops it at \
         once\n"
    );
    // Unknown domains: 3.
    let (status, _, err) = d.run(&["shutdown", "nosuch"]);
    assert_eq!(status, ExitStatus::NotFound);
    assert!(
        err.starts_with("error: no domain named \"nosuch\"\n"),
        "{err}"
    );
    assert_eq!(d.run(&["reboot", "4000", "-w"]).0, ExitStatus::NotFound);
}

#[test]
fn a_dom0d_without_pv_shutdown_exits_69() {
    use crate::proto::{ApiError, Request, Response};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let fake = lifecycle_fake();
    let old = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        while let Ok(Some(payload)) = crate::proto::read_frame(&mut s, crate::proto::MAX_FRAME) {
            let reply = match crate::proto::decode::<Request>(&payload) {
                Ok(Request::Hello { .. }) => Service::hello(),
                Ok(Request::DomainInfo { domid }) => {
                    Response::Domain(crate::microvisor::domain_info(&fake, domid).unwrap())
                }
                _ => Response::Error(ApiError::Malformed {
                    reason: "cannot decode message".into(),
                }),
            };
            s.write_all(&crate::proto::encode(&reply).unwrap()).unwrap();
        }
    });
    let (status, out, err) = dom0_at(&path, &["reboot", "3"]);
    old.join().unwrap();
    assert_eq!(status, ExitStatus::ServiceUnavailable);
    assert!(out.is_empty());
    let software = format!("dom0d {}", env!("CARGO_PKG_VERSION"));
    assert_eq!(
        err,
        format!(
            "error: cannot reboot domain 3 (spin)\n  caused by: dom0d at {} ({software}) does not \
             know the reboot request\n  hint: install dom0 and dom0d from the same build\n",
            path.display()
        )
    );
}

// ---- disks ----

#[test]
fn block_list_info_and_validate_show_disks() {
    let d = Dom0d::start(FakeMicrovisor::new());
    let g = Guest::new();
    let img = g.path("d1.img");
    std::fs::write(&img, vec![0u8; 8 * 512]).unwrap();
    let disk = format!("disk=path={img},vdev=xvda,access=ro");

    // validate and create --dry-run list them; a missing image is exit 3, before any
    // domain exists.
    let (status, out, err) = d.run(&["validate", &g.path("web.toml"), "--set", &disk]);
    assert_eq!(status, ExitStatus::Success, "{err}");
    assert!(
        out.contains(&format!("\ndisk:        xvda {img} (ro)\n")),
        "{out}"
    );
    let missing = format!("disk=path={img}.gone,vdev=xvda");
    for cmd in ["validate", "create"] {
        let (status, _, err) = d.run(&[cmd, &g.path("web.toml"), "--set", &missing]);
        assert_eq!(status, ExitStatus::NotFound, "{cmd}: {err}");
        assert!(err.contains(&format!("{img}.gone")), "{err}");
    }
    let (status, out, _) = d.run(&["list", "-o", "json"]);
    assert_eq!(status, ExitStatus::Success);
    assert!(!out.contains("\"web\""), "{out}");

    let (status, out, err) = d.run(&["create", &g.path("web.toml"), "--set", &disk, "-o", "json"]);
    assert_eq!(status, ExitStatus::Success, "{err}");
    let doc: Value = serde_json::from_str(&out).unwrap();
    let domid = doc["domid"].as_u64().unwrap();
    assert_eq!(doc["config"]["disks"][0]["vdev"], "xvda");

    let (status, out, err) = d.run(&["block-list", "web"]);
    assert_eq!(status, ExitStatus::Success, "{err}");
    assert_eq!(
        out,
        format!(
            "VDEV  BE-STATE  FE-STATE      PATH{}  ACCESS  SECTORS\nxvda  InitWait  Initialising  {img}  ro            8\n",
            " ".repeat(img.len() - 4)
        )
    );
    let (status, out, _) = d.run(&["block-list", &domid.to_string(), "-o", "json"]);
    assert_eq!(status, ExitStatus::Success);
    let doc: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["domid"], domid);
    assert_eq!(doc["disks"][0]["devid"], 51712);
    assert_eq!(doc["disks"][0]["backend_state"], "InitWait");
    assert_eq!(doc["disks"][0]["access"], "ro");
    assert_eq!(doc["disks"][0]["sectors"], 8);

    let (status, out, _) = d.run(&["info", "web"]);
    assert_eq!(status, ExitStatus::Success);
    assert!(
        out.contains(&format!(
            "\ndisk:       xvda {img} (ro, 8 sectors), back-end InitWait, front-end Initialising\n"
        )),
        "{out}"
    );
    let (_, out, _) = d.run(&["info", "web", "-o", "json"]);
    let doc: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["disks"][0]["vdev"], "xvda");
    let (_, out, _) = d.run(&["info", "hello1", "-o", "json"]);
    let doc: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["disks"], serde_json::json!([]));

    // No disks: just the header; an unknown domain is exit 3.
    let (status, out, _) = d.run(&["block-list", "hello1"]);
    assert_eq!(status, ExitStatus::Success);
    assert_eq!(out, "VDEV  BE-STATE  FE-STATE  PATH  ACCESS  SECTORS\n");
    let (status, _, err) = d.run(&["block-list", "nosuch"]);
    assert_eq!(status, ExitStatus::NotFound, "{err}");
    let (status, _, _) = d.run(&["block-list", "4000"]);
    assert_eq!(status, ExitStatus::NotFound);
}

// ---- network interfaces ----

#[test]
fn network_list_info_and_validate_show_vifs() {
    let d = Dom0d::start(FakeMicrovisor::new());
    let g = Guest::new();
    let vif = "vif=mac=00:16:3e:01:02:03,ip=10.0.0.2/24";

    // validate lists them with their MACs; a bad one is exit 7 naming the --set.
    let (status, out, err) = d.run(&["validate", &g.path("web.toml"), "--set", vif]);
    assert_eq!(status, ExitStatus::Success, "{err}");
    assert!(
        out.contains("\nvif:         0 00:16:3e:01:02:03 on br0 (10.0.0.2/24)\n"),
        "{out}"
    );
    let (status, out, err) = d.run(&[
        "validate",
        &g.path("web.toml"),
        "--set",
        "vif=mac=ff:ff:ff:ff:ff:ff",
    ]);
    assert_eq!(status, ExitStatus::ConfigInvalid, "{out}");
    assert!(
        err.starts_with("error: --set vif=mac=ff:ff:ff:ff:ff:ff: \"vif\" mac ff:ff:ff:ff:ff:ff is not a unicast address"),
        "{err}"
    );

    let (status, out, err) = d.run(&["create", &g.path("web.toml"), "--set", vif, "-o", "json"]);
    assert_eq!(status, ExitStatus::Success, "{err}");
    let doc: Value = serde_json::from_str(&out).unwrap();
    let domid = doc["domid"].as_u64().unwrap();
    assert_eq!(doc["config"]["vifs"][0]["mac"], "00:16:3e:01:02:03");
    assert_eq!(doc["config"]["vifs"][0]["bridge"], "br0");

    let (status, out, err) = d.run(&["network-list", "web"]);
    assert_eq!(status, ExitStatus::Success, "{err}");
    assert_eq!(
        out,
        format!(
            "IDX  MAC                IP           BRIDGE  TAP     BE-STATE  FE-STATE      TX-PKTS  RX-PKTS  DROPS\n  \
             0  00:16:3e:01:02:03  10.0.0.2/24  br0     vif{domid}.0  InitWait  Initialising        0        0      0\n"
        )
    );
    let (status, out, _) = d.run(&["network-list", &domid.to_string(), "-o", "json"]);
    assert_eq!(status, ExitStatus::Success);
    let doc: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["api_version"], "dom0/v1");
    assert_eq!(doc["domid"], domid);
    assert_eq!(doc["name"], "web");
    let v = &doc["vifs"][0];
    assert_eq!(v["handle"], 0);
    assert_eq!(v["mac"], "00:16:3e:01:02:03");
    assert_eq!(v["ip"], "10.0.0.2/24");
    assert_eq!(v["tap"], format!("vif{domid}.0"));
    assert_eq!(v["backend_state"], "InitWait");
    assert_eq!(v["frontend_state"], "Initialising");
    assert_eq!(v["connected"], false);
    for counter in [
        "tx_packets",
        "tx_bytes",
        "rx_packets",
        "rx_bytes",
        "drops",
        "errors",
    ] {
        assert_eq!(v[counter], 0, "{counter}");
    }

    let (status, out, _) = d.run(&["info", "web"]);
    assert_eq!(status, ExitStatus::Success);
    assert!(
        out.contains(&format!(
            "\nvif:        0 00:16:3e:01:02:03 (10.0.0.2/24) on br0 via vif{domid}.0, back-end InitWait, front-end Initialising, tx 0 pkts, rx 0 pkts, 0 dropped\n"
        )),
        "{out}"
    );
    let (_, out, _) = d.run(&["info", "web", "-o", "json"]);
    let doc: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["vifs"][0]["mac"], "00:16:3e:01:02:03");
    let (_, out, _) = d.run(&["info", "hello1", "-o", "json"]);
    let doc: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["vifs"], serde_json::json!([]));

    // No vifs: just the header; an unknown domain is exit 3.
    let (status, out, _) = d.run(&["network-list", "hello1"]);
    assert_eq!(status, ExitStatus::Success);
    assert_eq!(
        out,
        "IDX  MAC  IP  BRIDGE  TAP  BE-STATE  FE-STATE  TX-PKTS  RX-PKTS  DROPS\n"
    );
    let (status, _, err) = d.run(&["network-list", "nosuch"]);
    assert_eq!(status, ExitStatus::NotFound, "{err}");
    let (status, _, _) = d.run(&["network-list", "4000"]);
    assert_eq!(status, ExitStatus::NotFound);

    // Destroying the domain closes its device.
    let (status, _, err) = d.run(&["destroy", "web"]);
    assert_eq!(status, ExitStatus::Success, "{err}");
}
