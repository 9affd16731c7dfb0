//! QEMU scenario tests: each boots a bundle, waits for the verdict, and checks the log.
//!
//! A DomU scenario is data: the domains to start, the verdict QEMU must end with, and what
//! the microvisor log must (and must not) contain. Domain ids follow bundle order from 1.
//! Dom0 scenarios ([`crate::dom0_checks`]) boot Dom0 and run shell checks in it.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Mutex, mpsc};
use std::thread;
use std::time::Duration;

use anyhow::Result;

use crate::build::{Guest, Profile, display_path, xtask_dir};
use crate::dom0::{self, Dom0Artifacts, Dom0Options, Host};
use crate::dom0_checks::{self, CheckVerdict, Dom0Scenario};
pub(crate) use crate::dom0_checks::{DOM0_BY_NAME, DOM0_SCENARIOS};
use crate::image::{self, DomainSpec};
use crate::qemu::{self, Layout, QemuConfig, RunOptions, Verdict};
use crate::serial::{self, Event, HYPERVISOR_FAILURE_MARKERS, REASON_POWEROFF};

/// One domain of a scenario.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Dom {
    /// Domain name.
    pub(crate) name: &'static str,
    /// Guest kernel.
    pub(crate) guest: Guest,
    /// Memory in MiB.
    pub(crate) mem_mib: u32,
    /// Guest command line.
    pub(crate) cmdline: &'static str,
}

/// Something the log must show. Required text is matched ignoring ASCII case; forbidden
/// text ([`Require::NoConsole`]) is matched exactly.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Require {
    /// `mv: d<id> (<name>) created: ...`
    Created {
        /// Domain id.
        id: u32,
        /// Domain name.
        name: &'static str,
    },
    /// Domain `id` printed a console line containing `text`.
    Console {
        /// Domain id.
        id: u32,
        /// Text to find.
        text: &'static str,
    },
    /// No console line from domain `id` (from any domain when `None`) contains `text`
    /// (case-sensitive, so `UNEXPECTED` does not catch a guest's "unexpected").
    NoConsole {
        /// Domain id, or every domain.
        id: Option<u32>,
        /// Forbidden text.
        text: &'static str,
    },
    /// `mv: d<id> (<name>) shut down: <reason>`
    ShutDown {
        /// Domain id.
        id: u32,
        /// Domain name.
        name: &'static str,
        /// Expected reason.
        reason: &'static str,
    },
    /// `mv: d<id> (<name>) crashed: ...<reason>...`
    Crashed {
        /// Domain id.
        id: u32,
        /// Domain name.
        name: &'static str,
        /// Text the reason must contain.
        reason: &'static str,
    },
    /// `mv: all domains finished: pass|fail`
    Finished {
        /// `pass` or `fail`.
        pass: bool,
    },
    /// Every domain has a creation line, no two share a pCPU, and none is on pCPU 0.
    DistinctPcpus,
}

/// A QEMU scenario.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Scenario {
    /// Name (also the log directory `target/xtask/test/<name>/`).
    pub(crate) name: &'static str,
    /// Domains, in bundle order (`d1`, `d2`, ...).
    pub(crate) domains: &'static [Dom],
    /// The verdict QEMU must end with.
    pub(crate) expect: Verdict,
    /// What the log must show.
    pub(crate) require: &'static [Require],
    /// Substrings no log line may contain, on top of [`HYPERVISOR_FAILURE_MARKERS`].
    pub(crate) forbid: &'static [&'static str],
}

// Short constructors keep the scenario table below readable.
const fn dom(name: &'static str, guest: Guest, cmdline: &'static str) -> Dom {
    Dom {
        name,
        guest,
        mem_mib: image::DEFAULT_MEM_MIB,
        cmdline,
    }
}
const fn created(id: u32, name: &'static str) -> Require {
    Require::Created { id, name }
}
const fn console(id: u32, text: &'static str) -> Require {
    Require::Console { id, text }
}
const fn powered_off(id: u32, name: &'static str) -> Require {
    Require::ShutDown {
        id,
        name,
        reason: REASON_POWEROFF,
    }
}
const fn crashed(id: u32, name: &'static str, reason: &'static str) -> Require {
    Require::Crashed { id, name, reason }
}

/// What the hostile guest prints once its non-fatal probes are done.
const HOSTILE_CHECKS_PASSED: &str = "hostile: all non-fatal checks passed";

/// Every scenario `cargo xtask test` runs.
pub(crate) const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "hello",
        domains: &[dom("hello", Guest::Hello, "")],
        expect: Verdict::AllShutDown,
        require: &[
            created(1, "hello"),
            console(1, "hello"),
            powered_off(1, "hello"),
            Require::Finished { pass: true },
        ],
        forbid: &[],
    },
    Scenario {
        name: "two-guests",
        domains: &[
            dom("hello-1", Guest::Hello, ""),
            dom("hello-2", Guest::Hello, ""),
        ],
        expect: Verdict::AllShutDown,
        require: &[
            created(1, "hello-1"),
            created(2, "hello-2"),
            Require::DistinctPcpus,
            console(1, "hello"),
            console(2, "hello"),
            powered_off(1, "hello-1"),
            powered_off(2, "hello-2"),
            Require::Finished { pass: true },
        ],
        forbid: &[],
    },
    Scenario {
        name: "hostile",
        domains: &[
            dom("hostile", Guest::Hostile, "attack=npf"),
            dom("hello", Guest::Hello, ""),
            dom("hostile-triple", Guest::Hostile, "attack=triple"),
        ],
        expect: Verdict::DomainCrashed,
        require: &[
            console(1, HOSTILE_CHECKS_PASSED),
            console(3, HOSTILE_CHECKS_PASSED),
            Require::NoConsole {
                id: None,
                text: "UNEXPECTED",
            },
            crashed(1, "hostile", "nested page fault"),
            crashed(3, "hostile-triple", "triple fault"),
            powered_off(2, "hello"),
            Require::Finished { pass: false },
        ],
        forbid: &[],
    },
];

impl Dom {
    /// The domain as a bundle entry.
    pub(crate) fn spec(&self) -> DomainSpec {
        DomainSpec {
            name: self.name.to_owned(),
            guest: self.guest,
            mem_mib: self.mem_mib,
            cmdline: self.cmdline.to_owned(),
        }
    }
}

impl Scenario {
    /// The domains as bundle entries.
    pub(crate) fn domain_specs(&self) -> Vec<DomainSpec> {
        self.domains.iter().map(Dom::spec).collect()
    }
}

/// A scenario of either kind.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Job {
    /// Boot-time DomUs only.
    DomU(&'static Scenario),
    /// Dom0 with checks.
    Dom0(&'static Dom0Scenario),
}

impl Job {
    /// The scenario's name.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Job::DomU(s) => s.name,
            Job::Dom0(s) => s.name,
        }
    }

    /// Whether it boots Dom0.
    pub(crate) fn needs_dom0(self) -> bool {
        matches!(self, Job::Dom0(_))
    }
}

/// Every scenario, DomU ones first.
pub(crate) fn all_jobs() -> Vec<Job> {
    SCENARIOS
        .iter()
        .map(Job::DomU)
        .chain(DOM0_SCENARIOS.iter().map(Job::Dom0))
        .collect()
}

/// Looks up scenarios by name; an empty list selects all of them (the default list:
/// scenarios in [`DOM0_BY_NAME`] run only when named).
pub(crate) fn select(names: &[String]) -> Result<Vec<Job>> {
    let mut all = all_jobs();
    if names.is_empty() {
        return Ok(all);
    }
    all.extend(DOM0_BY_NAME.iter().map(Job::Dom0));
    names
        .iter()
        .map(|n| {
            all.iter().copied().find(|s| s.name() == n).ok_or_else(|| {
                let known: Vec<&str> = all.iter().map(|s| s.name()).collect();
                anyhow::anyhow!(
                    "unknown scenario `{n}`; known scenarios: {}",
                    known.join(", ")
                )
            })
        })
        .collect()
}

/// `cargo xtask test --list`.
pub(crate) fn print_list(jobs: &[Job]) {
    for job in jobs {
        match job {
            Job::DomU(s) => {
                let doms: Vec<&str> = s.domains.iter().map(|d| d.name).collect();
                println!(
                    "{:<16} expects {:<32} domains: {}",
                    s.name,
                    s.expect,
                    doms.join(", ")
                );
            }
            Job::Dom0(s) => match s.raw {
                Some((cmd, _)) => println!(
                    "{:<16} Dom0 runs `{cmd}`, expects a non-zero status",
                    s.name
                ),
                None => {
                    let checks: Vec<&str> = s.checks.iter().map(|c| c.name).collect();
                    println!("{:<16} Dom0 checks: {}", s.name, checks.join(", "));
                }
            },
        }
    }
}

fn contains_ci(haystack: &str, needle: &str) -> bool {
    haystack
        .to_ascii_lowercase()
        .contains(&needle.to_ascii_lowercase())
}

/// Says that `expected` is missing, and what domain `id` did instead, if anything.
fn explain_missing(expected: &str, id: u32, events: &[Event<'_>]) -> String {
    let instead = events.iter().find_map(|e| match e {
        Event::ShutDown { id: i, .. } | Event::Crashed { id: i, .. } if *i == id => {
            serial::lifecycle_line(e)
        }
        _ => None,
    });
    match instead {
        Some(line) => format!("expected `{expected}`, got `{line}`"),
        None => format!("missing `{expected}`"),
    }
}

/// Checks one requirement against the classified log; `Err` says what is wrong.
fn check_requirement(
    req: &Require,
    events: &[Event<'_>],
    domain_count: usize,
) -> Result<(), String> {
    match *req {
        Require::Created { id, name } => {
            let found = events.iter().any(
                |e| matches!(e, Event::Created { id: i, name: n, .. } if *i == id && *n == name),
            );
            if found {
                Ok(())
            } else {
                Err(format!(
                    "missing `{} ...`",
                    serial::created_prefix(id, name)
                ))
            }
        }
        Require::Console { id, text } => {
            let found = events.iter().any(
                |e| matches!(e, Event::Console { id: i, text: t } if *i == id && contains_ci(t, text)),
            );
            if found {
                Ok(())
            } else {
                Err(format!("d{id} never printed `{text}`"))
            }
        }
        Require::NoConsole { id, text } => {
            let bad = events.iter().find_map(|e| match e {
                Event::Console { id: i, text: t }
                    if id.is_none_or(|id| id == *i) && t.contains(text) =>
                {
                    Some((*i, *t))
                }
                _ => None,
            });
            match bad {
                Some((i, t)) => Err(format!("d{i} printed `{t}`")),
                None => Ok(()),
            }
        }
        Require::ShutDown { id, name, reason } => {
            let expected = serial::shut_down_line(id, name, reason);
            let found = events.iter().any(|e| {
                matches!(e, Event::ShutDown { id: i, name: n, reason: r }
                    if *i == id && *n == name && r.eq_ignore_ascii_case(reason))
            });
            if found {
                Ok(())
            } else {
                Err(explain_missing(&expected, id, events))
            }
        }
        Require::Crashed { id, name, reason } => {
            let expected = format!("{} ...{reason}...", serial::crashed_prefix(id, name));
            let found = events.iter().any(|e| {
                matches!(e, Event::Crashed { id: i, name: n, reason: r }
                    if *i == id && *n == name && contains_ci(r, reason))
            });
            if found {
                Ok(())
            } else {
                Err(explain_missing(&expected, id, events))
            }
        }
        Require::Finished { pass } => {
            let got = events.iter().find_map(|e| match e {
                Event::Finished { pass } => Some(*pass),
                _ => None,
            });
            match got {
                Some(p) if p == pass => Ok(()),
                Some(p) => Err(format!(
                    "expected `{}`, got `{}`",
                    serial::finished_line(pass),
                    serial::finished_line(p)
                )),
                None => Err(format!("missing `{}`", serial::finished_line(pass))),
            }
        }
        Require::DistinctPcpus => {
            let mut pcpus: BTreeMap<u32, u32> = BTreeMap::new();
            for e in events {
                if let Event::Created { id, pcpu, .. } = e {
                    pcpus.insert(*id, *pcpu);
                }
            }
            if pcpus.len() < domain_count {
                return Err(format!(
                    "pCPU check: found {} creation lines for {domain_count} domains",
                    pcpus.len()
                ));
            }
            let mut owner: BTreeMap<u32, u32> = BTreeMap::new();
            for (&id, &pcpu) in &pcpus {
                if pcpu == 0 {
                    return Err(format!(
                        "d{id} was placed on pCPU 0, which DomUs must not use"
                    ));
                }
                if let Some(other) = owner.insert(pcpu, id) {
                    return Err(format!("d{other} and d{id} share pCPU {pcpu}"));
                }
            }
            Ok(())
        }
    }
}

/// Everything wrong with a finished run (empty when the scenario passed).
pub(crate) fn evaluate(scenario: &Scenario, verdict: Verdict, lines: &[String]) -> Vec<String> {
    let mut problems = Vec::new();
    if verdict != scenario.expect {
        problems.push(format!(
            "expected {}, got {verdict}: {}",
            scenario.expect,
            verdict.explain()
        ));
    }
    let forbidden = HYPERVISOR_FAILURE_MARKERS.iter().chain(scenario.forbid);
    for marker in forbidden {
        if let Some((n, line)) = lines.iter().enumerate().find(|(_, l)| l.contains(marker)) {
            problems.push(format!("serial.log line {}: `{}`", n + 1, line.trim()));
        }
    }
    let events = serial::parse_log(lines);
    for req in scenario.require {
        if let Err(e) = check_requirement(req, &events, scenario.domains.len()) {
            problems.push(e);
        }
    }
    problems
}

/// What the scenarios share.
#[derive(Debug)]
pub(crate) struct Context<'a> {
    /// The QEMU binary.
    pub(crate) qemu: PathBuf,
    /// Profile of the bare-metal builds.
    pub(crate) profile: Profile,
    /// Limit per DomU scenario (Dom0 scenarios get twice as long).
    pub(crate) timeout: Duration,
    /// Dom0's kernel and initramfs (when a Dom0 scenario is selected).
    pub(crate) dom0: Option<&'a Dom0Artifacts>,
    /// Dom0's memory and command line.
    pub(crate) dom0_options: Dom0Options,
    /// Microvisor or direct boot for the Dom0 scenarios.
    pub(crate) host: Host,
}

/// The result of one scenario.
#[derive(Debug)]
struct ScenarioResult {
    name: &'static str,
    problems: Vec<String>,
    outcome: Option<qemu::RunOutcome>,
    checks: Vec<CheckVerdict>,
    out_dir: PathBuf,
}

fn run_domu(scenario: &Scenario, ctx: &Context<'_>) -> ScenarioResult {
    let out_dir = xtask_dir("test").join(scenario.name);
    let mut result = ScenarioResult {
        name: scenario.name,
        problems: Vec::new(),
        outcome: None,
        checks: Vec::new(),
        out_dir,
    };
    let bundle = image::bundle_path(&result.out_dir);
    if let Err(e) = image::write_bundle(ctx.profile, &scenario.domain_specs(), &bundle) {
        result.problems.push(format!("{e:#}"));
        return result;
    }
    let config = QemuConfig {
        qemu: ctx.qemu.clone(),
        kernel: crate::build::artifact_path(ctx.profile, crate::build::Artifact::Microvisor),
        initrd: bundle,
        append: qemu::MICROVISOR_CMDLINE.to_owned(),
        out_dir: result.out_dir.clone(),
        layout: Layout::DomUOnly,
    };
    match qemu::run(
        &config,
        RunOptions {
            timeout: Some(ctx.timeout),
            echo: false,
        },
    ) {
        Ok(outcome) => {
            result.problems = evaluate(scenario, outcome.verdict, &outcome.lines);
            if outcome.dropped_lines > 0 && !result.problems.is_empty() {
                result.problems.push(format!(
                    "only the first lines were checked: {} more are in serial.log",
                    outcome.dropped_lines
                ));
            }
            result.outcome = Some(outcome);
        }
        Err(e) => result.problems.push(format!("{e:#}")),
    }
    result
}

fn run_dom0(scenario: &Dom0Scenario, ctx: &Context<'_>) -> ScenarioResult {
    let out_dir = xtask_dir("test").join(scenario.name);
    let mut result = ScenarioResult {
        name: scenario.name,
        problems: Vec::new(),
        outcome: None,
        checks: Vec::new(),
        out_dir: out_dir.clone(),
    };
    let Some(artifacts) = ctx.dom0 else {
        result.problems.push("Dom0 was not built".into());
        return result;
    };
    // A fresh disk per scenario: scenarios run in parallel, and each starts clean.
    let data_disk = out_dir.join("dom0-data.img");
    if let Err(e) = dom0::create_data_disk(&data_disk) {
        result.problems.push(format!("{e:#}"));
        return result;
    }
    let plan = dom0::BootPlan {
        artifacts,
        host: ctx.host,
        profile: ctx.profile,
        guests: scenario.guests.iter().map(Dom::spec).collect(),
        options: ctx.dom0_options.clone(),
        qemu: ctx.qemu.clone(),
        out_dir,
        data_disk,
    };
    let mut r = dom0_checks::run(scenario, &plan, ctx.timeout * 2);
    if r.exec.as_ref().is_some_and(|e| qemu_aborted(e.run.verdict)) {
        // QEMU 7.2 itself has been seen to abort (an assertion in hw/pci/msix.c) in about
        // one Dom0 boot in ten under load; that is a crash of the emulator, not a verdict
        // on the microvisor. Say so, keep its logs, and boot once more.
        let first = plan.out_dir.join("first-attempt");
        let _ = std::fs::remove_dir_all(&first);
        let _ = std::fs::create_dir_all(&first);
        for log in [
            qemu::SERIAL_LOG,
            qemu::COM1_LOG,
            qemu::STDERR_LOG,
            qemu::DEBUG_LOG,
        ] {
            let _ = std::fs::rename(plan.out_dir.join(log), first.join(log));
        }
        println!(
            "note: {}: QEMU aborted (see {}); booting once more",
            scenario.name,
            display_path(&first.join(qemu::STDERR_LOG))
        );
        if let Err(e) = dom0::create_data_disk(&plan.data_disk) {
            result.problems.push(format!("{e:#}"));
            return result;
        }
        r = dom0_checks::run(scenario, &plan, ctx.timeout * 2);
    }
    result.problems = r.problems;
    result.checks = r.checks;
    result.outcome = r.exec.map(|e| e.run);
    result
}

/// Whether QEMU itself crashed (SIGABRT: a failed assertion inside the emulator).
fn qemu_aborted(verdict: Verdict) -> bool {
    verdict == Verdict::QemuError(128 + 6)
}

/// Prints a scenario's result line (and, on failure, where the logs are and their tail).
fn report(result: &ScenarioResult) {
    for check in &result.checks {
        match &check.result {
            Ok(()) => println!("check {}/{} ... ok", result.name, check.name),
            Err(e) => println!("check {}/{} ... FAILED ({e})", result.name, check.name),
        }
    }
    let failed_checks: Vec<&str> = result
        .checks
        .iter()
        .filter(|c| c.result.is_err())
        .map(|c| c.name)
        .collect();
    let mut problems = result.problems.clone();
    if !failed_checks.is_empty() {
        problems.push(format!("failed checks: {}", failed_checks.join(", ")));
    }
    if problems.is_empty() {
        println!("test {} ... ok", result.name);
        return;
    }
    const MAX_SHOWN: usize = 4;
    let mut reason = problems
        .iter()
        .take(MAX_SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join("; ");
    if problems.len() > MAX_SHOWN {
        reason.push_str(&format!("; and {} more", problems.len() - MAX_SHOWN));
    }
    println!("test {} ... FAILED ({reason})", result.name);
    match &result.outcome {
        Some(outcome) => {
            println!(
                "    logs: {}/ ({SERIAL}, {COM1}, {DEBUG}, {STDERR}); ran {:.1} s",
                display_path(&result.out_dir),
                outcome.elapsed.as_secs_f64(),
                SERIAL = qemu::SERIAL_LOG,
                COM1 = qemu::COM1_LOG,
                DEBUG = qemu::DEBUG_LOG,
                STDERR = qemu::STDERR_LOG,
            );
            outcome.print_tail();
        }
        None => println!("    logs: {}/", display_path(&result.out_dir)),
    }
}

impl ScenarioResult {
    fn passed(&self) -> bool {
        self.problems.is_empty() && self.checks.iter().all(|c| c.result.is_ok())
    }
}

/// Runs `jobs`, `parallel` at a time, printing a line per scenario as each finishes and
/// the closing `N passed, M failed` line. Returns whether all passed.
pub(crate) fn run_all(jobs: &[Job], ctx: &Context<'_>, parallel: usize) -> bool {
    let parallel = parallel.clamp(1, jobs.len().max(1));
    println!(
        "running {} QEMU scenario{}, {parallel} at a time, {} s timeout each ({} s with Dom0)",
        jobs.len(),
        if jobs.len() == 1 { "" } else { "s" },
        ctx.timeout.as_secs(),
        ctx.timeout.as_secs() * 2
    );
    let queue: Mutex<VecDeque<Job>> = Mutex::new(jobs.iter().copied().collect());
    let (tx, rx) = mpsc::channel::<ScenarioResult>();
    let (mut passed, mut failed) = (0usize, 0usize);
    thread::scope(|s| {
        for _ in 0..parallel {
            let tx = tx.clone();
            let queue = &queue;
            s.spawn(move || {
                loop {
                    let next = queue.lock().map_or(None, |mut q| q.pop_front());
                    let Some(job) = next else { break };
                    // QEMU is spawned and reaped on this thread (see qemu::kill_with_parent).
                    let result = match job {
                        Job::DomU(s) => run_domu(s, ctx),
                        Job::Dom0(s) => run_dom0(s, ctx),
                    };
                    if tx.send(result).is_err() {
                        break;
                    }
                }
            });
        }
        drop(tx);
        for result in rx {
            report(&result);
            if result.passed() {
                passed += 1;
            } else {
                failed += 1;
            }
        }
    });
    println!("logs: {}/<scenario>/", display_path(&xtask_dir("test")));
    println!("{passed} passed, {failed} failed");
    failed == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(text: &str) -> Vec<String> {
        text.lines().map(str::to_owned).collect()
    }

    fn scenario(name: &str) -> &'static Scenario {
        SCENARIOS.iter().find(|s| s.name == name).unwrap()
    }

    const HELLO_OK: &str = "\
mv: microvisor starting
mv: d1 (hello) created: 16 MiB, pCPU 1
(d1) Hello, world from d1!
mv: d1 (hello) shut down: poweroff
mv: all domains finished: pass";

    #[test]
    fn hello_passes_on_a_good_log() {
        let problems = evaluate(scenario("hello"), Verdict::AllShutDown, &lines(HELLO_OK));
        assert!(problems.is_empty(), "{problems:?}");
    }

    #[test]
    fn hello_fails_on_wrong_verdict_panic_or_missing_lines() {
        let p = evaluate(scenario("hello"), Verdict::Timeout, &lines(HELLO_OK));
        assert_eq!(p.len(), 1);
        assert!(
            p[0].contains("expected AllShutDown (QEMU status 33), got Timeout"),
            "{p:?}"
        );

        let log = format!("{HELLO_OK}\nmv: PANIC at sched.rs:1");
        let p = evaluate(scenario("hello"), Verdict::AllShutDown, &lines(&log));
        assert!(
            p.iter()
                .any(|m| m.contains("line 6") && m.contains("mv: PANIC")),
            "{p:?}"
        );

        let log = HELLO_OK.replace("shut down: poweroff", "shut down: reboot");
        let p = evaluate(scenario("hello"), Verdict::AllShutDown, &lines(&log));
        assert!(
            p.iter()
                .any(|m| m.contains("got `mv: d1 (hello) shut down: reboot`")),
            "{p:?}"
        );

        let log = HELLO_OK.replace("(d1) Hello", "(d2) Hello");
        let p = evaluate(scenario("hello"), Verdict::AllShutDown, &lines(&log));
        assert_eq!(p, ["d1 never printed `hello`"]);
    }

    const TWO_OK: &str = "\
mv: d1 (hello-1) created: 16 MiB, pCPU 1
mv: d2 (hello-2) created: 16 MiB, pCPU 2
(d2) hello
(d1) hello
mv: d2 (hello-2) shut down: poweroff
mv: d1 (hello-1) shut down: poweroff
mv: all domains finished: pass";

    #[test]
    fn two_guests_need_distinct_nonzero_pcpus() {
        let s = scenario("two-guests");
        assert!(evaluate(s, Verdict::AllShutDown, &lines(TWO_OK)).is_empty());

        let same = TWO_OK.replace("pCPU 2", "pCPU 1");
        let p = evaluate(s, Verdict::AllShutDown, &lines(&same));
        assert_eq!(p, ["d1 and d2 share pCPU 1"]);

        let zero = TWO_OK.replace("pCPU 1", "pCPU 0");
        let p = evaluate(s, Verdict::AllShutDown, &lines(&zero));
        assert_eq!(p, ["d1 was placed on pCPU 0, which DomUs must not use"]);

        let missing: String = TWO_OK
            .lines()
            .filter(|l| !l.contains("d2 (hello-2) created"))
            .collect::<Vec<_>>()
            .join("\n");
        let p = evaluate(s, Verdict::AllShutDown, &lines(&missing));
        assert!(
            p.iter()
                .any(|m| m.contains("missing `mv: d2 (hello-2) created: ...`")),
            "{p:?}"
        );
        assert!(
            p.iter()
                .any(|m| m.contains("found 1 creation lines for 2 domains")),
            "{p:?}"
        );
    }

    const HOSTILE_OK: &str = "\
mv: d1 (hostile) created: 16 MiB, pCPU 1
mv: d2 (hello) created: 16 MiB, pCPU 2
mv: d3 (hostile-triple) created: 16 MiB, pCPU 1
(d1) hostile: hypercall with bad pointer ... ok
(d3) hostile: hypercall with bad pointer ... ok
(d1) hostile: all non-fatal checks passed
(d3) hostile: all non-fatal checks passed (31 checks)
(d2) Hello
mv: d1 (hostile) crashed: nested page fault at gpa 0xfee00000 (write)
mv: d3 (hostile-triple) crashed: triple fault
mv: d2 (hello) shut down: poweroff
mv: all domains finished: fail";

    #[test]
    fn hostile_scenario_checks() {
        let s = scenario("hostile");
        let p = evaluate(s, Verdict::DomainCrashed, &lines(HOSTILE_OK));
        assert!(p.is_empty(), "{p:?}");

        let log = HOSTILE_OK.replace("bad pointer ... ok", "bad pointer ... UNEXPECTED");
        let p = evaluate(s, Verdict::DomainCrashed, &lines(&log));
        assert_eq!(
            p,
            ["d1 printed `hostile: hypercall with bad pointer ... UNEXPECTED`"]
        );

        let log = HOSTILE_OK.replace("crashed: nested page fault", "crashed: general protection");
        let p = evaluate(s, Verdict::DomainCrashed, &lines(&log));
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].contains("nested page fault"), "{p:?}");

        let log = HOSTILE_OK.replace(
            "mv: d3 (hostile-triple) crashed: triple fault",
            "mv: d3 (hostile-triple) shut down: poweroff",
        );
        let p = evaluate(s, Verdict::DomainCrashed, &lines(&log));
        assert_eq!(
            p,
            [
                "expected `mv: d3 (hostile-triple) crashed: ...triple fault...`, got \
              `mv: d3 (hostile-triple) shut down: poweroff`"
            ]
        );

        let p = evaluate(s, Verdict::AllShutDown, &lines(HOSTILE_OK));
        assert!(p[0].starts_with("expected DomainCrashed (QEMU status 35), got AllShutDown"));
    }

    #[test]
    fn fake_lifecycle_lines_from_guests_do_not_count() {
        let log = "(d1) mv: d1 (hello) shut down: poweroff\n(d1) mv: all domains finished: pass";
        let p = evaluate(scenario("hello"), Verdict::AllShutDown, &lines(log));
        assert!(
            p.iter()
                .any(|m| m == "missing `mv: d1 (hello) shut down: poweroff`"),
            "{p:?}"
        );
        assert!(
            p.iter()
                .any(|m| m == "missing `mv: all domains finished: pass`"),
            "{p:?}"
        );
    }

    #[test]
    fn scenarios_are_well_formed() {
        let mut names = std::collections::HashSet::new();
        for s in SCENARIOS {
            assert!(names.insert(s.name), "duplicate scenario {}", s.name);
            assert!(!s.domains.is_empty());
            // Every domain must fit the bundle format.
            let specs = s.domain_specs();
            let images: Vec<_> = specs.iter().map(|d| (d, Vec::new())).collect();
            image::bundle_bytes(&images).unwrap();
        }
        assert!(
            select(&["nope".into()])
                .unwrap_err()
                .to_string()
                .contains("hello, two-guests, hostile, dom0")
        );
        assert_eq!(
            select(&[]).unwrap().len(),
            SCENARIOS.len() + DOM0_SCENARIOS.len()
        );
        let picked = select(&["dom0".into(), "hello".into()]).unwrap();
        assert!(picked[0].needs_dom0() && !picked[1].needs_dom0());
        for s in DOM0_BY_NAME {
            assert!(!names.contains(s.name), "{} is in both lists", s.name);
            assert_eq!(select(&[s.name.into()]).unwrap().len(), 1);
        }
    }
}
