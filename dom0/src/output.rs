//! Output formats (`-o table|json|jsonl`) and how domains and the host are printed.
#![forbid(unsafe_code)]

use clap::ValueEnum;
use serde::Serialize;

use crate::error::CliError;
use crate::proto::{Domain, Host, State};

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

/// `info -o json`: the domain's fields plus `api_version`.
#[derive(Debug, Serialize)]
struct DomainDoc<'a> {
    api_version: &'static str,
    #[serde(flatten)]
    domain: DomainJson<'a>,
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
}

impl<'a> From<&'a Host> for HostJson<'a> {
    fn from(h: &'a Host) -> Self {
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
/// (`c` for a crash), and `d` for dying (never set yet).
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
pub fn render_domain(d: &Domain, format: OutputFormat) -> Result<String, CliError> {
    if format.is_json() {
        let doc = DomainDoc {
            api_version: crate::JSON_API_VERSION,
            domain: DomainJson::from(d),
        };
        return json_doc(&doc, format);
    }
    Ok(key_values(&[
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
    ]))
}

/// `dom0 host info` in `format`.
///
/// # Errors
/// [`CliError::Json`].
pub fn render_host(h: &Host, format: OutputFormat) -> Result<String, CliError> {
    if format.is_json() {
        return json_doc(&HostJson::from(h), format);
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
    ]))
}
