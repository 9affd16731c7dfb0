//! The serial-log contract: the lines the microvisor prints on COM2 that xtask reads.
//!
//! Every pattern lives here, so a change of format is a change to this file only.
//! Lines are matched after the line ending (`\n` or `\r\n`) has been stripped.

use std::sync::LazyLock;

use regex::Regex;

/// `mv: d<ID> (<name>) created: <N> MiB, pCPU <P>`
const CREATED: &str =
    r"^mv: d(?P<id>\d+) \((?P<name>[^()]*)\) created: (?P<mib>\d+) MiB, pCPU (?P<pcpu>\d+)\s*$";
/// `(d<ID>) <text>`: a line of guest console output, relayed by the microvisor.
const CONSOLE: &str = r"^\(d(?P<id>\d+)\) (?P<text>.*)$";
/// `mv: d<ID> (<name>) shut down: <reason>` (poweroff, reboot, crash, ...).
const SHUT_DOWN: &str = r"^mv: d(?P<id>\d+) \((?P<name>[^()]*)\) shut down: (?P<reason>.*?)\s*$";
/// `mv: d<ID> (<name>) crashed: <reason text>`.
const CRASHED: &str = r"^mv: d(?P<id>\d+) \((?P<name>[^()]*)\) crashed: (?P<reason>.*?)\s*$";
/// `mv: all domains finished: pass` or `... fail`.
const FINISHED: &str = r"^mv: all domains finished: (?P<result>pass|fail)\s*$";
/// `(d<ID>) bench <name> <value> <unit>`: one benchmark result (the guest's part of the
/// line starts at `bench`).
const BENCH: &str = r"^bench (?P<name>\S+) (?P<value>\S+) (?P<unit>\S+)\s*$";

/// Substrings that mean the microvisor itself failed. Forbidden in every scenario.
pub(crate) const HYPERVISOR_FAILURE_MARKERS: [&str; 2] = ["mv: PANIC", "mv: FATAL"];

/// Reason text of a domain that powered off cleanly.
pub(crate) const REASON_POWEROFF: &str = "poweroff";

struct Patterns {
    created: Regex,
    console: Regex,
    shut_down: Regex,
    crashed: Regex,
    finished: Regex,
    bench: Regex,
}

#[expect(
    clippy::expect_used,
    reason = "constant patterns, compiled by the unit tests"
)]
static PATTERNS: LazyLock<Patterns> = LazyLock::new(|| {
    let re = |p: &str| Regex::new(p).expect("serial-log pattern must compile");
    Patterns {
        created: re(CREATED),
        console: re(CONSOLE),
        shut_down: re(SHUT_DOWN),
        crashed: re(CRASHED),
        finished: re(FINISHED),
        bench: re(BENCH),
    }
});

/// One line of the microvisor log, classified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Event<'a> {
    /// A domain was created.
    Created {
        /// Domain id.
        id: u32,
        /// Domain name.
        name: &'a str,
        /// Memory in MiB.
        mem_mib: u64,
        /// The pCPU its vCPU runs on.
        pcpu: u32,
    },
    /// A line of guest console output.
    Console {
        /// Domain id.
        id: u32,
        /// The text the guest printed.
        text: &'a str,
    },
    /// A domain shut down (cleanly or not: see `reason`).
    ShutDown {
        /// Domain id.
        id: u32,
        /// Domain name.
        name: &'a str,
        /// `poweroff`, `reboot`, `crash`, ...
        reason: &'a str,
    },
    /// The microvisor crashed a domain.
    Crashed {
        /// Domain id.
        id: u32,
        /// Domain name.
        name: &'a str,
        /// Why (e.g. contains `nested page fault` or `triple fault`).
        reason: &'a str,
    },
    /// Every domain has finished.
    Finished {
        /// `pass` (true) or `fail`.
        pass: bool,
    },
    /// A microvisor panic or fatal exception.
    HypervisorFailure,
    /// Anything else.
    Other,
}

fn number<T: std::str::FromStr>(caps: &regex::Captures<'_>, name: &str) -> Option<T> {
    caps.name(name)?.as_str().parse().ok()
}

fn text<'a>(caps: &regex::Captures<'a>, name: &str) -> &'a str {
    caps.name(name).map_or("", |m| m.as_str())
}

/// Classifies one log line.
pub(crate) fn parse_line(line: &str) -> Event<'_> {
    let p = &*PATTERNS;
    if let Some(c) = p.console.captures(line)
        && let Some(id) = number(&c, "id")
    {
        return Event::Console {
            id,
            text: text(&c, "text"),
        };
    }
    if HYPERVISOR_FAILURE_MARKERS.iter().any(|m| line.contains(m)) {
        return Event::HypervisorFailure;
    }
    if let Some(c) = p.created.captures(line)
        && let (Some(id), Some(mem_mib), Some(pcpu)) =
            (number(&c, "id"), number(&c, "mib"), number(&c, "pcpu"))
    {
        return Event::Created {
            id,
            name: text(&c, "name"),
            mem_mib,
            pcpu,
        };
    }
    if let Some(c) = p.shut_down.captures(line)
        && let Some(id) = number(&c, "id")
    {
        return Event::ShutDown {
            id,
            name: text(&c, "name"),
            reason: text(&c, "reason"),
        };
    }
    if let Some(c) = p.crashed.captures(line)
        && let Some(id) = number(&c, "id")
    {
        return Event::Crashed {
            id,
            name: text(&c, "name"),
            reason: text(&c, "reason"),
        };
    }
    if let Some(c) = p.finished.captures(line) {
        return Event::Finished {
            pass: text(&c, "result") == "pass",
        };
    }
    Event::Other
}

/// Classifies every line.
pub(crate) fn parse_log(lines: &[String]) -> Vec<Event<'_>> {
    lines.iter().map(|l| parse_line(l)).collect()
}

/// The line a clean shutdown prints, for messages.
pub(crate) fn shut_down_line(id: u32, name: &str, reason: &str) -> String {
    format!("mv: d{id} ({name}) shut down: {reason}")
}

/// The start of a crash line, for messages.
pub(crate) fn crashed_prefix(id: u32, name: &str) -> String {
    format!("mv: d{id} ({name}) crashed:")
}

/// The start of a creation line, for messages.
pub(crate) fn created_prefix(id: u32, name: &str) -> String {
    format!("mv: d{id} ({name}) created:")
}

/// The shut-down or crash line an event came from, for messages.
pub(crate) fn lifecycle_line(event: &Event<'_>) -> Option<String> {
    match *event {
        Event::ShutDown { id, name, reason } => Some(shut_down_line(id, name, reason)),
        Event::Crashed { id, name, reason } => {
            Some(format!("{} {reason}", crashed_prefix(id, name)))
        }
        _ => None,
    }
}

/// The finish line, for messages.
pub(crate) fn finished_line(pass: bool) -> String {
    format!(
        "mv: all domains finished: {}",
        if pass { "pass" } else { "fail" }
    )
}

/// A `bench <name> <value> <unit>` result from a guest's console text. The value is kept
/// as printed.
pub(crate) fn parse_bench(console_text: &str) -> Option<(&str, &str, &str)> {
    let c = PATTERNS.bench.captures(console_text)?;
    Some((text(&c, "name"), text(&c, "value"), text(&c, "unit")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_compile() {
        let _ = &*PATTERNS;
    }

    #[test]
    fn classifies_the_contract_lines() {
        assert_eq!(
            parse_line("mv: d1 (hello-1) created: 16 MiB, pCPU 1"),
            Event::Created {
                id: 1,
                name: "hello-1",
                mem_mib: 16,
                pcpu: 1
            }
        );
        assert_eq!(
            parse_line("(d2) Hello from a PVH guest!"),
            Event::Console {
                id: 2,
                text: "Hello from a PVH guest!"
            }
        );
        assert_eq!(parse_line("(d2) "), Event::Console { id: 2, text: "" });
        assert_eq!(
            parse_line("mv: d1 (hello) shut down: poweroff"),
            Event::ShutDown {
                id: 1,
                name: "hello",
                reason: "poweroff"
            }
        );
        assert_eq!(
            parse_line("mv: d3 (hostile-triple) crashed: triple fault at rip 0x1000\r"),
            Event::Crashed {
                id: 3,
                name: "hostile-triple",
                reason: "triple fault at rip 0x1000"
            }
        );
        assert_eq!(
            parse_line("mv: all domains finished: pass"),
            Event::Finished { pass: true }
        );
        assert_eq!(
            parse_line("mv: all domains finished: fail"),
            Event::Finished { pass: false }
        );
        assert_eq!(
            parse_line("mv: PANIC at src/sched.rs:12: oops"),
            Event::HypervisorFailure
        );
        assert_eq!(
            parse_line("xx mv: FATAL #GP on pCPU 2"),
            Event::HypervisorFailure
        );
        assert_eq!(parse_line("mv: starting 3 pCPUs"), Event::Other);
        assert_eq!(
            parse_line("mv: d1 (x) created: lots of MiB, pCPU 1"),
            Event::Other
        );
    }

    #[test]
    fn guest_text_never_reads_as_a_microvisor_line() {
        // A guest that prints a fake lifecycle line is still only console output.
        assert_eq!(
            parse_line("(d1) mv: d1 (hello) shut down: poweroff"),
            Event::Console {
                id: 1,
                text: "mv: d1 (hello) shut down: poweroff"
            }
        );
    }

    #[test]
    fn parses_bench_results() {
        assert_eq!(
            parse_bench("bench hypercall_null 12345 cycles"),
            Some(("hypercall_null", "12345", "cycles"))
        );
        assert_eq!(
            parse_bench("bench cpuid_exit 7.5 us"),
            Some(("cpuid_exit", "7.5", "us"))
        );
        assert_eq!(parse_bench("bench: starting 1000 iterations"), None);
        assert_eq!(parse_bench("benchmark x 1 y"), None);
        assert_eq!(parse_bench("bench x 1"), None);
    }

    #[test]
    fn message_helpers_match_the_patterns() {
        assert_eq!(
            parse_line(&shut_down_line(4, "a", REASON_POWEROFF)),
            Event::ShutDown {
                id: 4,
                name: "a",
                reason: "poweroff"
            }
        );
        assert_eq!(
            parse_line(&finished_line(false)),
            Event::Finished { pass: false }
        );
        assert!(crashed_prefix(1, "hostile").starts_with("mv: d1 (hostile) crashed:"));
        assert!(created_prefix(2, "b").ends_with("created:"));
    }
}
