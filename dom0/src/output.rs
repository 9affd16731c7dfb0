//! Output formats (`-o table|json|jsonl`) and how domains and the host are printed.
#![forbid(unsafe_code)]

use crate::proto::{BlockDevice, NetworkDevice};
use clap::ValueEnum;
use serde::Serialize;

use crate::config::DomainConfig;
use crate::error::CliError;
use crate::proto::{
    ConsoleSummary, CreateReport, Domain, EventReport, Host, LifecycleDone, Plan, ShutdownSent,
    State,
};

/// How results are printed on stdout (CLI.md §5).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Human-readable text
    #[default]
    Table,
    /// One JSON document
    Json,
    /// One JSON object per line
    Jsonl,
}

impl OutputFormat {
    /// Whether the format is machine-readable (errors then go to stderr as JSON too).
    #[must_use]
    pub fn is_json(self) -> bool {
        matches!(self, Self::Json | Self::Jsonl)
    }
}

/// KiB to whole MiB, rounded down.
#[must_use]
pub fn kib_to_mib(kib: u64) -> u64 {
    kib / 1024
}

/// One domain in JSON: an element of `list`'s array, and (with `api_version`) `info`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DomainJson<'a> {
    /// Domain id.
    pub domid: u32,
    /// Name.
    pub name: &'a str,
    /// `running`, `blocked`, `paused`, `shutdown` or `crashed`.
    pub state: &'static str,
    /// For `shutdown`: `poweroff`, `reboot`, `suspend`, `crash`, `watchdog` or
    /// `soft_reset`; otherwise `null`.
    pub reason: Option<&'static str>,
    /// Memory in KiB.
    pub mem_kib: u64,
    /// Memory in MiB, rounded down.
    pub mem_mib: u64,
    /// Number of vCPUs.
    pub vcpus: u32,
    /// pCPU the domain runs on.
    pub pcpu: u32,
    /// CPU time used, in nanoseconds.
    pub cpu_time_ns: u64,
    /// Whether this is the privileged control domain.
    pub privileged: bool,
}

impl<'a> From<&'a Domain> for DomainJson<'a> {
    fn from(d: &'a Domain) -> Self {
        Self {
            domid: d.domid,
            name: &d.name,
            state: d.state.name(),
            reason: d.reason.map(crate::proto::Reason::name),
            mem_kib: d.mem_kib,
            mem_mib: kib_to_mib(d.mem_kib),
            vcpus: d.vcpus,
            pcpu: d.pcpu,
            cpu_time_ns: d.cpu_time_ns,
            privileged: d.privileged,
        }
    }
}

/// `info -o json`: the domain's fields plus `api_version` and its console.
#[derive(Debug, Serialize)]
struct DomainDoc<'a> {
    api_version: &'static str,
    #[serde(flatten)]
    domain: DomainJson<'a>,
    /// Milliseconds from the create request to the first console byte (`null` without
    /// a console or before its first byte): what `bench lifecycle` reports.
    console_first_byte_ms: Option<u64>,
    /// The console dom0d serves, or `null`.
    console: Option<ConsoleJson<'a>>,
    /// The disks dom0d serves (possibly empty).
    disks: Vec<BlockJson<'a>>,
    /// The network interfaces dom0d serves (possibly empty).
    vifs: Vec<VifJson<'a>>,
}

/// A vif in `info -o json` and `network-list -o json`.
#[derive(Debug, Serialize)]
struct VifJson<'a> {
    handle: u32,
    mac: &'a str,
    ip: Option<&'a str>,
    bridge: &'a str,
    tap: &'a str,
    backend_state: &'static str,
    frontend_state: &'static str,
    connected: bool,
    stopped: bool,
    tx_packets: u64,
    tx_bytes: u64,
    rx_packets: u64,
    rx_bytes: u64,
    drops: u64,
    errors: u64,
}

impl<'a> From<&'a NetworkDevice> for VifJson<'a> {
    fn from(n: &'a NetworkDevice) -> Self {
        Self {
            handle: n.handle,
            mac: &n.mac,
            ip: n.ip.as_deref(),
            bridge: &n.bridge,
            tap: &n.tap,
            backend_state: xenbus_state_name(n.backend_state),
            frontend_state: xenbus_state_name(n.frontend_state),
            connected: n.connected,
            stopped: n.stopped,
            tx_packets: n.tx_packets,
            tx_bytes: n.tx_bytes,
            rx_packets: n.rx_packets,
            rx_bytes: n.rx_bytes,
            drops: n.drops,
            errors: n.errors,
        }
    }
}

/// `dom0 network-list DOM` in `format`: one line per vif (IDX, MAC, IP, BRIDGE, TAP,
/// BE-STATE, FE-STATE, TX-PKTS, RX-PKTS, DROPS); `-o json` an object with the domain and
/// its `vifs` (with byte and error counters too).
///
/// # Errors
/// [`CliError::Json`].
pub fn render_networks(
    d: &Domain,
    vifs: &[NetworkDevice],
    format: OutputFormat,
) -> Result<String, CliError> {
    if format.is_json() {
        #[derive(Serialize)]
        struct Doc<'a> {
            api_version: &'static str,
            domid: u32,
            name: &'a str,
            vifs: Vec<VifJson<'a>>,
        }
        return json_doc(
            &Doc {
                api_version: crate::JSON_API_VERSION,
                domid: d.domid,
                name: &d.name,
                vifs: vifs.iter().map(VifJson::from).collect(),
            },
            format,
        );
    }
    let rows: Vec<Vec<String>> = vifs
        .iter()
        .map(|n| {
            let be = backend_cell(n.backend_state, n.stopped);
            vec![
                n.handle.to_string(),
                n.mac.clone(),
                n.ip.clone().unwrap_or_else(|| "-".to_owned()),
                n.bridge.clone(),
                n.tap.clone(),
                be,
                xenbus_state_name(n.frontend_state).to_owned(),
                n.tx_packets.to_string(),
                n.rx_packets.to_string(),
                n.drops.to_string(),
            ]
        })
        .collect();
    Ok(table(
        &[
            ("IDX", Align::Right),
            ("MAC", Align::Left),
            ("IP", Align::Left),
            ("BRIDGE", Align::Left),
            ("TAP", Align::Left),
            ("BE-STATE", Align::Left),
            ("FE-STATE", Align::Left),
            ("TX-PKTS", Align::Right),
            ("RX-PKTS", Align::Right),
            ("DROPS", Align::Right),
        ],
        &rows,
    ))
}

/// A disk in `info -o json` and `block-list -o json`.
#[derive(Debug, Serialize)]
struct BlockJson<'a> {
    vdev: &'a str,
    devid: u32,
    path: &'a str,
    access: &'static str,
    sectors: u64,
    backend_state: &'static str,
    frontend_state: &'static str,
    connected: bool,
    stopped: bool,
}

impl<'a> From<&'a BlockDevice> for BlockJson<'a> {
    fn from(b: &'a BlockDevice) -> Self {
        Self {
            vdev: &b.vdev,
            devid: b.devid,
            path: &b.path,
            access: access(b),
            sectors: b.sectors,
            backend_state: xenbus_state_name(b.backend_state),
            frontend_state: xenbus_state_name(b.frontend_state),
            connected: b.connected,
            stopped: b.stopped,
        }
    }
}

fn access(b: &BlockDevice) -> &'static str {
    if b.read_only { "ro" } else { "rw" }
}

/// A xenbus state's name (`Connected`, ...), `Unknown` for 0 or anything else.
#[must_use]
pub fn xenbus_state_name(state: u32) -> &'static str {
    match state {
        1 => "Initialising",
        2 => "InitWait",
        3 => "Initialised",
        4 => "Connected",
        5 => "Closing",
        6 => "Closed",
        7 => "Reconfiguring",
        8 => "Reconfigured",
        _ => "Unknown",
    }
}

/// A device's BE-STATE cell: the xenbus state, marked when dom0d stopped the device.
fn backend_cell(state: u32, stopped: bool) -> String {
    let name = xenbus_state_name(state);
    if stopped {
        format!("{name} (stopped)")
    } else {
        name.to_owned()
    }
}

/// `dom0 block-list DOM` in `format`: one line per disk (VDEV, BE-STATE, FE-STATE, PATH,
/// ACCESS, SECTORS); `-o json` an object with the domain and its `disks`.
///
/// # Errors
/// [`CliError::Json`].
pub fn render_blocks(
    d: &Domain,
    disks: &[BlockDevice],
    format: OutputFormat,
) -> Result<String, CliError> {
    if format.is_json() {
        #[derive(Serialize)]
        struct Doc<'a> {
            api_version: &'static str,
            domid: u32,
            name: &'a str,
            disks: Vec<BlockJson<'a>>,
        }
        return json_doc(
            &Doc {
                api_version: crate::JSON_API_VERSION,
                domid: d.domid,
                name: &d.name,
                disks: disks.iter().map(BlockJson::from).collect(),
            },
            format,
        );
    }
    let rows: Vec<Vec<String>> = disks
        .iter()
        .map(|b| {
            let be = backend_cell(b.backend_state, b.stopped);
            vec![
                b.vdev.clone(),
                be,
                xenbus_state_name(b.frontend_state).to_owned(),
                b.path.clone(),
                access(b).to_owned(),
                b.sectors.to_string(),
            ]
        })
        .collect();
    Ok(table(
        &[
            ("VDEV", Align::Left),
            ("BE-STATE", Align::Left),
            ("FE-STATE", Align::Left),
            ("PATH", Align::Left),
            ("ACCESS", Align::Left),
            ("SECTORS", Align::Right),
        ],
        &rows,
    ))
}

/// A domain's console in `info -o json`.
#[derive(Debug, Serialize)]
struct ConsoleJson<'a> {
    first_byte_ms: Option<u64>,
    total_bytes: u64,
    history_bytes: u64,
    disabled: Option<&'a str>,
    attached: bool,
}

/// The result object of `pause`, `unpause` and `destroy` under `-o json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LifecycleJson<'a> {
    /// [`crate::JSON_API_VERSION`].
    pub api_version: &'static str,
    /// `pause`, `unpause` or `destroy`.
    pub action: &'static str,
    /// Domain id.
    pub domid: u32,
    /// Name.
    pub name: &'a str,
    /// The state afterwards (`paused`; `running` or `blocked`); `null` after `destroy`.
    pub state: Option<&'static str>,
}

/// `dom0 pause|unpause|destroy` in `format`: nothing for tables (silence is success),
/// one [`LifecycleJson`] object otherwise.
///
/// # Errors
/// [`CliError::Json`].
pub fn render_lifecycle(done: &LifecycleDone, format: OutputFormat) -> Result<String, CliError> {
    if !format.is_json() {
        return Ok(String::new());
    }
    json_doc(
        &LifecycleJson {
            api_version: crate::JSON_API_VERSION,
            action: done.action.name(),
            domid: done.domid,
            name: &done.name,
            state: done.state.map(State::name),
        },
        format,
    )
}

/// `shutdown -o json` / `reboot -o json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GuestRequestJson<'a> {
    /// [`crate::JSON_API_VERSION`].
    pub api_version: &'static str,
    /// `shutdown` or `reboot`.
    pub action: &'static str,
    /// The domain id.
    pub domid: u32,
    /// Its name.
    pub name: &'a str,
    /// Whether the CLI waited for the domain to end.
    pub waited: bool,
    /// Its state last seen (`null`: gone).
    pub state: Option<&'static str>,
}

/// What `shutdown`/`reboot` print: nothing, or with `-o json` the request and the state
/// last seen (after the wait, if `waited`).
///
/// # Errors
/// [`CliError::Json`].
pub fn render_guest_request(
    sent: &ShutdownSent,
    waited: bool,
    state: Option<State>,
    format: OutputFormat,
) -> Result<String, CliError> {
    if !format.is_json() {
        return Ok(String::new());
    }
    json_doc(
        &GuestRequestJson {
            api_version: crate::JSON_API_VERSION,
            action: sent.request.command(),
            domid: sent.domid,
            name: &sent.name,
            waited,
            state: state.map(State::name),
        },
        format,
    )
}

/// `host info -o json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HostJson<'a> {
    /// [`crate::JSON_API_VERSION`].
    pub api_version: &'static str,
    /// Physical CPUs the microvisor runs on.
    pub pcpus: u32,
    /// pCPU dedicated to domain 0.
    pub dom0_pcpu: u32,
    /// Usable RAM, KiB.
    pub mem_total_kib: u64,
    /// Free RAM, KiB.
    pub mem_free_kib: u64,
    /// Usable RAM, MiB rounded down.
    pub mem_total_mib: u64,
    /// Free RAM, MiB rounded down.
    pub mem_free_mib: u64,
    /// TSC frequency, kHz.
    pub tsc_khz: u64,
    /// Time since the microvisor started, ns.
    pub uptime_ns: u64,
    /// The microvisor's version.
    pub microvisor_version: &'a str,
    /// The microvisor's control ABI version.
    pub control_version: u32,
    /// What dom0d has seen of the microvisor's events; `null` if dom0d does not report
    /// them.
    pub events: Option<EventsJson<'a>>,
}

/// The `events` object of `host info -o json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EventsJson<'a> {
    /// `listening`, `unavailable` or `stopped`.
    pub status: &'static str,
    /// Why dom0d does not listen; `null` while it does.
    pub reason: Option<&'a str>,
    /// Event masks dom0d received since it started.
    pub count: u64,
    /// The last mask (`EVENT_*` bits), 0 before the first.
    pub last_mask: u64,
    /// When the last mask arrived, ms since the Unix epoch; `null` before the first.
    pub last_unix_ms: Option<u64>,
    /// How long before the reply the last mask arrived, ms; `null` before the first.
    pub last_age_ms: Option<u64>,
}

impl<'a> From<&'a EventReport> for EventsJson<'a> {
    fn from(e: &'a EventReport) -> Self {
        Self {
            status: e.status.name(),
            reason: e.status.reason(),
            count: e.count,
            last_mask: e.last_mask,
            last_unix_ms: e.last_unix_ms,
            last_age_ms: e.last_age_ms,
        }
    }
}

impl<'a> HostJson<'a> {
    /// The document for `h` and, if dom0d reported them, its events.
    #[must_use]
    pub fn new(h: &'a Host, events: Option<&'a EventReport>) -> Self {
        Self {
            api_version: crate::JSON_API_VERSION,
            pcpus: h.pcpus,
            dom0_pcpu: h.dom0_pcpu,
            mem_total_kib: h.mem_total_kib,
            mem_free_kib: h.mem_free_kib,
            mem_total_mib: kib_to_mib(h.mem_total_kib),
            mem_free_mib: kib_to_mib(h.mem_free_kib),
            tsc_khz: h.tsc_khz,
            uptime_ns: h.uptime_ns,
            microvisor_version: &h.microvisor_version,
            control_version: h.control_version,
            events: events.map(EventsJson::from),
        }
    }
}

/// Serialises one document: pretty for `json`, one line for `jsonl`.
///
/// # Errors
/// [`CliError::Json`].
pub fn json_doc<T: Serialize>(value: &T, format: OutputFormat) -> Result<String, CliError> {
    let text = if format == OutputFormat::Jsonl {
        serde_json::to_string(value)
    } else {
        serde_json::to_string_pretty(value)
    };
    Ok(text.map_err(CliError::Json)? + "\n")
}

/// xl's six-column state flags (CLI.md §5): `r`, `b`, `p`, `s`, the shutdown reason letter
/// (`c` for a crash), and `d` for dying (destroyed, waiting for Dom0's grant mappings to go).
#[must_use]
pub fn state_flags(d: &Domain) -> String {
    let mut f = ['-'; 6];
    match d.state {
        State::Running => f[0] = 'r',
        State::Blocked => f[1] = 'b',
        State::Paused => f[2] = 'p',
        State::Shutdown => {
            f[3] = 's';
            if let Some(r) = d.reason {
                f[4] = r.letter();
            }
        }
        State::Crashed => f[4] = 'c',
        State::Dying => f[5] = 'd',
    }
    f.iter().collect()
}

/// Nanoseconds as seconds with one decimal.
#[must_use]
pub fn seconds_1dp(ns: u64) -> String {
    let tenths = ns / 100_000_000;
    format!("{}.{}", tenths / 10, tenths % 10)
}

/// Nanoseconds as `HH:MM:SS`, with a `Nd ` prefix past a day.
#[must_use]
pub fn hms(ns: u64) -> String {
    let s = ns / 1_000_000_000;
    let (d, h, m, s) = (s / 86_400, s / 3600 % 24, s / 60 % 60, s % 60);
    if d > 0 {
        format!("{d}d {h:02}:{m:02}:{s:02}")
    } else {
        format!("{h:02}:{m:02}:{s:02}")
    }
}

/// Column alignment.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Align {
    Left,
    Right,
}

/// A borderless ASCII table: columns two spaces apart, no trailing blanks.
fn table(header: &[(&str, Align)], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|(h, _)| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let head: Vec<String> = header.iter().map(|(h, _)| (*h).to_owned()).collect();
    let mut out = String::new();
    for row in std::iter::once(&head).chain(rows) {
        let mut line = String::new();
        for (i, ((cell, w), (_, align))) in row.iter().zip(&widths).zip(header).enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            match align {
                Align::Left => line.push_str(&format!("{cell:<w$}")),
                Align::Right => line.push_str(&format!("{cell:>w$}")),
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `dom0 list` in `format`.
///
/// # Errors
/// [`CliError::Json`].
pub fn render_list(domains: &[Domain], format: OutputFormat) -> Result<String, CliError> {
    match format {
        OutputFormat::Table => {
            use Align::{Left, Right};
            let header = [
                ("ID", Left),
                ("NAME", Left),
                ("STATE", Left),
                ("MEM(MiB)", Right),
                ("VCPUS", Right),
                ("PCPU", Right),
                ("TIME(s)", Right),
            ];
            let rows: Vec<Vec<String>> = domains
                .iter()
                .map(|d| {
                    vec![
                        d.domid.to_string(),
                        if d.name.is_empty() {
                            "-".to_owned()
                        } else {
                            d.name.clone()
                        },
                        state_flags(d),
                        kib_to_mib(d.mem_kib).to_string(),
                        d.vcpus.to_string(),
                        d.pcpu.to_string(),
                        seconds_1dp(d.cpu_time_ns),
                    ]
                })
                .collect();
            Ok(table(&header, &rows))
        }
        OutputFormat::Json => {
            let docs: Vec<DomainJson<'_>> = domains.iter().map(DomainJson::from).collect();
            json_doc(&docs, format)
        }
        OutputFormat::Jsonl => {
            let mut out = String::new();
            for d in domains {
                out.push_str(&json_doc(&DomainJson::from(d), format)?);
            }
            Ok(out)
        }
    }
}

/// `key: value` lines with the values aligned.
fn key_values(pairs: &[(&str, String)]) -> String {
    let width = pairs.iter().map(|(k, _)| k.len() + 1).max().unwrap_or(0);
    pairs
        .iter()
        .map(|(k, v)| format!("{:<width$} {v}\n", format!("{k}:")))
        .collect()
}

/// `dom0 info DOM` in `format`.
///
/// # Errors
/// [`CliError::Json`].
pub fn render_domain(
    d: &Domain,
    console: Option<&ConsoleSummary>,
    disks: &[BlockDevice],
    vifs: &[NetworkDevice],
    format: OutputFormat,
) -> Result<String, CliError> {
    if format.is_json() {
        let doc = DomainDoc {
            api_version: crate::JSON_API_VERSION,
            domain: DomainJson::from(d),
            console_first_byte_ms: console.and_then(|c| c.first_byte_ms),
            console: console.map(|c| ConsoleJson {
                first_byte_ms: c.first_byte_ms,
                total_bytes: c.total_bytes,
                history_bytes: c.history_bytes,
                disabled: c.disabled.as_deref(),
                attached: c.attached,
            }),
            disks: disks.iter().map(BlockJson::from).collect(),
            vifs: vifs.iter().map(VifJson::from).collect(),
        };
        return json_doc(&doc, format);
    }
    let mut pairs = vec![
        ("domid", d.domid.to_string()),
        ("name", d.name.clone()),
        ("state", d.state.name().to_owned()),
        (
            "reason",
            d.reason.map_or("-", crate::proto::Reason::name).to_owned(),
        ),
        (
            "privileged",
            if d.privileged { "yes" } else { "no" }.to_owned(),
        ),
        ("memory", format!("{} MiB", kib_to_mib(d.mem_kib))),
        ("vcpus", d.vcpus.to_string()),
        ("pcpu", d.pcpu.to_string()),
        ("cpu_time", format!("{} s", seconds_1dp(d.cpu_time_ns))),
        ("console", console_text(console)),
    ];
    for b in disks {
        pairs.push((
            "disk",
            format!(
                "{} {} ({}, {} sectors), back-end {}, front-end {}{}",
                b.vdev,
                b.path,
                access(b),
                b.sectors,
                xenbus_state_name(b.backend_state),
                xenbus_state_name(b.frontend_state),
                if b.stopped { ", stopped" } else { "" }
            ),
        ));
    }
    for n in vifs {
        pairs.push((
            "vif",
            format!(
                "{} {}{} on {} via {}, back-end {}, front-end {}{}, tx {} pkts, rx {} pkts, {} dropped",
                n.handle,
                n.mac,
                n.ip.as_ref().map_or(String::new(), |ip| format!(" ({ip})")),
                n.bridge,
                n.tap,
                xenbus_state_name(n.backend_state),
                xenbus_state_name(n.frontend_state),
                if n.stopped { ", stopped" } else { "" },
                n.tx_packets,
                n.rx_packets,
                n.drops,
            ),
        ));
    }
    Ok(key_values(&pairs))
}

/// The `console:` line of `info`: `none`, or the bytes received, the time from the create
/// request to the first byte, and whether it is disabled or attached.
#[must_use]
pub fn console_text(console: Option<&ConsoleSummary>) -> String {
    let Some(c) = console else {
        return "none".to_owned();
    };
    let mut text = match c.first_byte_ms {
        None => "no output yet".to_owned(),
        Some(ms) => format!(
            "{} bytes (first {ms} ms after the create request)",
            c.total_bytes
        ),
    };
    if let Some(why) = &c.disabled {
        text.push_str(&format!("; disabled: {why}"));
    }
    if c.attached {
        text.push_str("; a client is attached");
    }
    text
}

/// The `events:` line of `host info`: the count, and why dom0d does not listen.
#[must_use]
pub fn events_line(events: Option<&EventReport>) -> String {
    let Some(e) = events else {
        return "unknown (this dom0d does not report events)".to_owned();
    };
    match e.status.reason() {
        None => e.count.to_string(),
        Some(reason) if e.count == 0 => format!("{} ({reason})", e.status.name()),
        Some(reason) => format!("{} ({}: {reason})", e.count, e.status.name()),
    }
}

/// The `last_event:` line of `host info`: when and what, or `-`.
#[must_use]
pub fn last_event_line(events: Option<&EventReport>) -> String {
    let Some(e) = events.filter(|e| e.count > 0) else {
        return "-".to_owned();
    };
    let when = e
        .last_unix_ms
        .map(|ms| crate::log::timestamp(ms / 1000, u32::try_from(ms % 1000).unwrap_or(0)));
    let ago = e
        .last_age_ms
        .map(|ms| format!("{} s ago", seconds_1dp(ms.saturating_mul(1_000_000))));
    let what = crate::events::describe(e.last_mask);
    match (when, ago) {
        (Some(when), Some(ago)) => format!("{when} ({ago}): {what}"),
        (Some(at), None) | (None, Some(at)) => format!("{at}: {what}"),
        (None, None) => what,
    }
}

/// `dom0 host info` in `format`; `events` is `None` if dom0d does not report them.
///
/// # Errors
/// [`CliError::Json`].
pub fn render_host(
    h: &Host,
    events: Option<&EventReport>,
    format: OutputFormat,
) -> Result<String, CliError> {
    if format.is_json() {
        return json_doc(&HostJson::new(h, events), format);
    }
    Ok(key_values(&[
        ("microvisor_version", h.microvisor_version.clone()),
        ("control_version", h.control_version.to_string()),
        ("pcpus", h.pcpus.to_string()),
        ("dom0_pcpu", h.dom0_pcpu.to_string()),
        (
            "memory_total",
            format!("{} MiB", kib_to_mib(h.mem_total_kib)),
        ),
        ("memory_free", format!("{} MiB", kib_to_mib(h.mem_free_kib))),
        (
            "tsc",
            format!("{}.{:03} MHz", h.tsc_khz / 1000, h.tsc_khz % 1000),
        ),
        ("uptime", hms(h.uptime_ns)),
        ("events", events_line(events)),
        ("last_event", last_event_line(events)),
    ]))
}

/// `validate -o json`: the effective config and the plan.
#[derive(Debug, Serialize)]
struct ValidateJson<'a> {
    api_version: &'static str,
    config: &'a DomainConfig,
    plan: &'a Plan,
}

/// `create -o json`: the new domain (or, for `--dry-run`, what would be built).
#[derive(Debug, Serialize)]
struct CreateJson<'a> {
    api_version: &'static str,
    /// The new domain's id; `null` for a dry run.
    domid: Option<u32>,
    name: &'a str,
    /// The state afterwards; `null` for a dry run.
    state: Option<&'static str>,
    dry_run: bool,
    took_ms: u64,
    config: &'a DomainConfig,
    plan: &'a Plan,
}

/// The effective config and the plan as `key: value` lines (`validate`,
/// `create --dry-run`).
fn config_and_plan(c: &DomainConfig, plan: &Plan) -> String {
    let mut pairs: Vec<(&str, String)> = vec![
        ("name", c.name.clone()),
        ("type", "pvh".to_owned()),
        ("kernel", c.kernel.clone()),
        (
            "ramdisk",
            c.ramdisk.clone().unwrap_or_else(|| "-".to_owned()),
        ),
        (
            "cmdline",
            c.cmdline.clone().unwrap_or_else(|| "-".to_owned()),
        ),
        ("memory", format!("{} MiB", c.memory_mib)),
        ("vcpus", c.vcpus.to_string()),
        ("on_poweroff", c.on_poweroff.name().to_owned()),
        ("on_reboot", c.on_reboot.name().to_owned()),
        ("on_crash", c.on_crash.name().to_owned()),
    ];
    for d in &c.disks {
        pairs.push((
            "disk",
            format!(
                "{} {} ({})",
                d.vdev,
                d.path,
                if d.read_only { "ro" } else { "rw" }
            ),
        ));
    }
    for (handle, v) in c.vifs.iter().enumerate() {
        pairs.push((
            "vif",
            format!(
                "{handle} {} on {}{}",
                v.mac,
                v.bridge,
                v.ip.as_ref().map_or(String::new(), |ip| format!(" ({ip})"))
            ),
        ));
    }
    pairs.extend([
        ("entry", format!("{:#x}", plan.entry)),
        ("start_info", format!("{:#x}", plan.start_info)),
    ]);
    for s in &plan.segments {
        pairs.push((
            "segment",
            format!(
                "{:#x}-{:#x} ({} bytes from the file, {} in memory)",
                s.paddr,
                s.paddr + s.mem_bytes,
                s.file_bytes,
                s.mem_bytes
            ),
        ));
    }
    if let Some(r) = plan.ramdisk {
        pairs.push((
            "ramdisk_at",
            format!(
                "{:#x}-{:#x} ({} bytes)",
                r.paddr,
                r.paddr + r.bytes,
                r.bytes
            ),
        ));
    }
    key_values(&pairs)
}

/// `dom0 validate` in `format`.
///
/// # Errors
/// [`CliError::Json`].
pub fn render_validated(
    config: &DomainConfig,
    plan: &Plan,
    format: OutputFormat,
) -> Result<String, CliError> {
    if format.is_json() {
        return json_doc(
            &ValidateJson {
                api_version: crate::JSON_API_VERSION,
                config,
                plan,
            },
            format,
        );
    }
    Ok(config_and_plan(config, plan))
}

/// `dom0 create` in `format`: the new domain's id, name and state; for `--dry-run` the
/// effective config and the plan.
///
/// # Errors
/// [`CliError::Json`].
pub fn render_created(r: &CreateReport, format: OutputFormat) -> Result<String, CliError> {
    if format.is_json() {
        return json_doc(
            &CreateJson {
                api_version: crate::JSON_API_VERSION,
                domid: r.domid,
                name: &r.config.name,
                state: r.state.map(State::name),
                dry_run: r.domid.is_none(),
                took_ms: r.took_ms,
                config: &r.config,
                plan: &r.plan,
            },
            format,
        );
    }
    Ok(match r.domid {
        None => config_and_plan(&r.config, &r.plan),
        Some(domid) => key_values(&[
            ("domid", domid.to_string()),
            ("name", r.config.name.clone()),
            ("state", r.state.map_or("-", State::name).to_owned()),
        ]),
    })
}
