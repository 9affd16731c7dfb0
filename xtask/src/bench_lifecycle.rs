//! `cargo xtask bench lifecycle`: one Dom0 boot under the microvisor that creates and
//! destroys the `waiter` DomU (`/etc/dom0/examples/waiter.toml`, 16 MiB) R times, then
//! creates eight at once, and reports create and destroy times, the time from `dom0 create`
//! to the guest's first console byte, the microvisor's memory per DomU and dom0d's
//! resident memory per DomU.
//!
//! The first console byte is timed twice: by dom0d, from the create request's arrival to
//! the moment its console back-end took the first byte from the ring
//! (`console_first_byte_ms` in `dom0 info -o json`), and by the script, from before
//! `dom0 create` to the first `dom0 info` that shows it (an upper bound: it includes the
//! polling, one `dom0 info` every 50 ms).
//!
//! The script prints one line per fact, `lc <key> <index> <value>`, and the pure functions
//! here turn those lines into numbers. Busybox `date` has no `%N`, so the clock is
//! CLOCK_MONOTONIC read from `/proc/timer_list` (`now at <ns> nsecs`); the cost of one
//! read is measured too and reported next to the times (it is included in them).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::bench::{Spread, TCG_CAVEAT, spread};
use crate::build::{Profile, display_path, xtask_dir};
use crate::dom0::{self, Dom0Options, Host};
use crate::qemu;

/// Default repetitions of the create/destroy pair.
pub(crate) const DEFAULT_REPS: u32 = 7;

/// DomUs alive at once for the dom0d RSS measurement.
pub(crate) const MANY: u32 = 8;

/// The DomU's RAM as configured in waiter.toml, KiB.
pub(crate) const DOMU_RAM_KIB: i64 = 16 * 1024;

/// How the first console byte is timed.
pub(crate) const FIRST_BYTE: &str = "create_to_first_console_byte_ms is dom0d's, from the \
    create request's arrival to its console back-end taking the first byte; \
    first_byte_seen_by_script_ms runs from before `dom0 create` to the first `dom0 info` \
    (polled every 50 ms) that shows it";

/// How each time is read in Dom0.
pub(crate) const CLOCK: &str = "CLOCK_MONOTONIC via /proc/timer_list `now at` (busybox date \
    has no %N); one read costs clock_read_ms, which every time includes";

/// The shell script run in Dom0.
pub(crate) fn script(reps: u32) -> String {
    format!(
        r#"cfg=/etc/dom0/examples/waiter.toml
now() {{ awk '/^now at/ {{ print $3; exit }}' /proc/timer_list; }}
host() {{ dom0 host info -o jsonl 2>&1 | tr -d '\n'; }}
rss() {{ awk '/^VmRSS:/ {{ print $2 }}' /proc/$(pidof dom0d)/status; }}
a=$(now); b=$(now); c=$(now)
echo "lc clock_read_ns 1 $((b-a))"
echo "lc clock_read_ns 2 $((c-b))"
echo "lc host_start 0 $(host)"
i=1
while [ $i -le {reps} ]; do
  h0=$(host)
  t0=$(now); out=$(dom0 create -o json $cfg 2>&1); rc=$?; t1=$(now)
  echo "lc create_ns $i $((t1-t0))"
  echo "lc create_rc $i $rc"
  echo "lc create_json $i $(echo "$out" | tr -d '\n')"
  echo "lc info $i $(dom0 info waiter -o jsonl 2>&1 | tr -d '\n')"
  j=0
  while [ $j -lt 100 ]; do
    fb=$(dom0 info waiter -o jsonl 2>&1 | tr -d '\n')
    case "$fb" in *'"console_first_byte_ms":'[0-9]*) break;; esac
    sleep 0.05; j=$((j+1))
  done
  t2=$(now)
  echo "lc first_byte $i $fb"
  echo "lc first_byte_seen_ns $i $((t2-t0))"
  h1=$(host)
  echo "lc host_before $i $h0"
  echo "lc host_after $i $h1"
  t0=$(now); out=$(dom0 destroy waiter 2>&1); rc=$?; t1=$(now)
  echo "lc destroy_ns $i $((t1-t0))"
  echo "lc destroy_rc $i $rc $(echo "$out" | tr -d '\n')"
  if dom0 info waiter >/dev/null 2>&1; then echo "lc gone $i no"; else echo "lc gone $i yes"; fi
  i=$((i+1))
done
echo "lc host_many_before 0 $(host)"
echo "lc rss_before 0 $(rss)"
i=1
while [ $i -le {MANY} ]; do
  out=$(dom0 create --set name=w$i $cfg 2>&1); echo "lc many_create_rc $i $? $(echo "$out" | tr -d '\n')"
  i=$((i+1))
done
echo "lc rss_with_many 0 $(rss)"
echo "lc host_with_many 0 $(host)"
i=1
while [ $i -le {MANY} ]; do
  out=$(dom0 destroy w$i 2>&1); echo "lc many_destroy_rc $i $? $(echo "$out" | tr -d '\n')"
  i=$((i+1))
done
echo "lc host_end 0 $(host)"
"#
    )
}

/// One `lc <key> <index> <value>` line.
pub(crate) type Facts = BTreeMap<(String, u32), String>;

/// Collects the `lc` lines of the output; a key reported twice for one index is an error.
pub(crate) fn parse_facts(output: &str) -> Result<Facts> {
    parse_prefixed_facts(output, "lc ")
}

/// Collects the `<prefix><key> <index> <value>` lines of a bench script's output.
pub(crate) fn parse_prefixed_facts(output: &str, prefix: &str) -> Result<Facts> {
    let mut facts = Facts::new();
    for (n, line) in output.lines().enumerate() {
        let line = line.trim_end_matches('\r');
        let Some(rest) = line.strip_prefix(prefix) else {
            continue;
        };
        let mut parts = rest.splitn(3, ' ');
        let (Some(key), Some(index)) = (parts.next(), parts.next()) else {
            bail!("output line {}: malformed: `{line}`", n + 1);
        };
        let index: u32 = index
            .parse()
            .with_context(|| format!("output line {}: bad index: `{line}`", n + 1))?;
        let value = parts.next().unwrap_or("").trim().to_owned();
        if facts.insert((key.to_owned(), index), value).is_some() {
            bail!("output line {}: `{key} {index}` reported twice", n + 1);
        }
    }
    Ok(facts)
}

pub(crate) fn fact<'a>(facts: &'a Facts, key: &str, index: u32) -> Result<&'a str> {
    facts
        .get(&(key.to_owned(), index))
        .map(String::as_str)
        .with_context(|| format!("the script did not report `{key} {index}`"))
}

pub(crate) fn fact_u64(facts: &Facts, key: &str, index: u32) -> Result<u64> {
    let v = fact(facts, key, index)?;
    v.parse()
        .with_context(|| format!("`{key} {index}` is not a number: `{v}`"))
}

fn fact_json(facts: &Facts, key: &str, index: u32) -> Result<Value> {
    let v = fact(facts, key, index)?;
    serde_json::from_str(v).with_context(|| format!("`{key} {index}` is not JSON: `{v}`"))
}

fn json_u64(doc: &Value, field: &str, what: &str) -> Result<u64> {
    doc.get(field)
        .and_then(Value::as_u64)
        .with_context(|| format!("{what} has no numeric `{field}`: {doc}"))
}

fn mem_free_kib(facts: &Facts, key: &str, index: u32) -> Result<u64> {
    json_u64(
        &fact_json(facts, key, index)?,
        "mem_free_kib",
        &format!("`{key} {index}`"),
    )
}

/// A command's exit status line: `<status> [output]`; non-zero is an error.
fn check_rc(facts: &Facts, key: &str, index: u32, what: &str) -> Result<()> {
    let v = fact(facts, key, index)?;
    let (status, out) = v.split_once(' ').unwrap_or((v, ""));
    if status != "0" {
        bail!("{what} failed with exit status {status}: {out}");
    }
    Ok(())
}

/// One create/destroy repetition.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Rep {
    /// 1-based.
    pub(crate) rep: u32,
    /// Wall time of `dom0 create`, ms.
    pub(crate) create_ms: f64,
    /// dom0d's `took_ms` for the create.
    pub(crate) took_ms: u64,
    /// dom0d's time from the create request to the first console byte, ms.
    pub(crate) first_byte_ms: u64,
    /// The script's time from before `dom0 create` to seeing the first byte, ms.
    pub(crate) first_byte_seen_ms: f64,
    /// Wall time of `dom0 destroy`, ms.
    pub(crate) destroy_ms: f64,
    /// Free memory before the create minus after it, minus the DomU's RAM, KiB.
    pub(crate) mv_overhead_kib: i64,
}

/// Everything the script measured.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Lifecycle {
    /// The repetitions, in order.
    pub(crate) reps: Vec<Rep>,
    /// Cost of one clock read, ms (the smaller of two).
    pub(crate) clock_read_ms: f64,
    /// dom0d's VmRSS before the eight creates, KiB.
    pub(crate) rss_before_kib: u64,
    /// dom0d's VmRSS with eight DomUs, KiB.
    pub(crate) rss_with_many_kib: u64,
    /// Free memory before the eight creates, KiB.
    pub(crate) free_many_before_kib: u64,
    /// Free memory with eight DomUs, KiB.
    pub(crate) free_with_many_kib: u64,
    /// Free memory after destroying them, KiB.
    pub(crate) free_end_kib: u64,
    /// Free memory at the start of the script, KiB.
    pub(crate) free_start_kib: u64,
}

impl Lifecycle {
    /// dom0d's RSS growth per DomU, KiB.
    pub(crate) fn rss_kib_per_domu(&self) -> f64 {
        (self.rss_with_many_kib as f64 - self.rss_before_kib as f64) / f64::from(MANY)
    }

    /// The microvisor's memory per DomU beyond its RAM, from the eight DomUs at once, KiB.
    pub(crate) fn mv_overhead_kib_from_many(&self) -> f64 {
        (self.free_many_before_kib as f64 - self.free_with_many_kib as f64) / f64::from(MANY)
            - DOMU_RAM_KIB as f64
    }

    /// Free memory came back exactly after the eight destroys.
    pub(crate) fn memory_returned(&self) -> bool {
        self.free_end_kib == self.free_many_before_kib
    }
}

fn ns_to_ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

/// Turns the script's output into the measurements; every failed step is an error.
pub(crate) fn parse(output: &str, reps: u32) -> Result<Lifecycle> {
    let facts = parse_facts(output)?;
    let mut list = Vec::new();
    for i in 1..=reps {
        let rc = fact(&facts, "create_rc", i)?;
        if rc != "0" {
            // The command's output is its error message then.
            bail!(
                "create {i} failed with exit status {rc}: {}",
                fact(&facts, "create_json", i).unwrap_or("")
            );
        }
        let created = fact_json(&facts, "create_json", i)?;
        let took_ms = json_u64(&created, "took_ms", &format!("create {i}"))?;
        let info = fact_json(&facts, "info", i)?;
        let state = info.get("state").and_then(Value::as_str);
        if state != Some("running") {
            bail!(
                "create {i}: waiter is {state:?} after `dom0 create` returned, not running: {info}"
            );
        }
        let first = fact_json(&facts, "first_byte", i)?;
        let first_byte_ms = json_u64(
            &first,
            "console_first_byte_ms",
            &format!("the console of create {i} (no byte within 5 s?)"),
        )?;
        check_rc(&facts, "destroy_rc", i, &format!("destroy {i}"))?;
        if fact(&facts, "gone", i)? != "yes" {
            bail!("destroy {i}: waiter is still listed after `dom0 destroy` returned");
        }
        let before = mem_free_kib(&facts, "host_before", i)?;
        let after = mem_free_kib(&facts, "host_after", i)?;
        list.push(Rep {
            rep: i,
            create_ms: ns_to_ms(fact_u64(&facts, "create_ns", i)?),
            took_ms,
            first_byte_ms,
            first_byte_seen_ms: ns_to_ms(fact_u64(&facts, "first_byte_seen_ns", i)?),
            destroy_ms: ns_to_ms(fact_u64(&facts, "destroy_ns", i)?),
            mv_overhead_kib: before as i64 - after as i64 - DOMU_RAM_KIB,
        });
    }
    for i in 1..=MANY {
        check_rc(&facts, "many_create_rc", i, &format!("create w{i}"))?;
    }
    for i in 1..=MANY {
        check_rc(&facts, "many_destroy_rc", i, &format!("destroy w{i}"))?;
    }
    let clock_read_ns =
        fact_u64(&facts, "clock_read_ns", 1)?.min(fact_u64(&facts, "clock_read_ns", 2)?);
    Ok(Lifecycle {
        reps: list,
        clock_read_ms: ns_to_ms(clock_read_ns),
        rss_before_kib: fact_u64(&facts, "rss_before", 0)?,
        rss_with_many_kib: fact_u64(&facts, "rss_with_many", 0)?,
        free_many_before_kib: mem_free_kib(&facts, "host_many_before", 0)?,
        free_with_many_kib: mem_free_kib(&facts, "host_with_many", 0)?,
        free_end_kib: mem_free_kib(&facts, "host_end", 0)?,
        free_start_kib: mem_free_kib(&facts, "host_start", 0)?,
    })
}

impl Lifecycle {
    fn spread_of(&self, f: fn(&Rep) -> f64) -> Spread {
        spread(&self.reps.iter().map(f).collect::<Vec<_>>())
    }

    /// (name, unit, spread) of each per-repetition result.
    pub(crate) fn rows(&self) -> [(&'static str, &'static str, Spread); 6] {
        [
            ("create_ms", "ms", self.spread_of(|r| r.create_ms)),
            ("create_took_ms", "ms", self.spread_of(|r| r.took_ms as f64)),
            (
                "create_to_first_console_byte_ms",
                "ms",
                self.spread_of(|r| r.first_byte_ms as f64),
            ),
            (
                "first_byte_seen_by_script_ms",
                "ms",
                self.spread_of(|r| r.first_byte_seen_ms),
            ),
            ("destroy_ms", "ms", self.spread_of(|r| r.destroy_ms)),
            (
                "mv_overhead_kib_per_domu",
                "KiB",
                self.spread_of(|r| r.mv_overhead_kib as f64),
            ),
        ]
    }
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// The JSON document of `bench lifecycle`.
pub(crate) fn to_json(lc: &Lifecycle, opts: &Dom0Options) -> Value {
    let mut doc = json!({
        "benchmark": "lifecycle",
        "environment": {
            "qemu_accel": qemu::ACCEL, "qemu_cpu": qemu::CPU, "qemu_smp": qemu::SMP,
            "dom0_mem_mib": opts.mem_mib,
            "dom0_cmdline": dom0::cmdline(opts, dom0::Mode::Exec, Host::Microvisor),
            "domu_config": "/etc/dom0/examples/waiter.toml",
            "domu_mem_kib": DOMU_RAM_KIB,
        },
        "reps": lc.reps.len(),
        "clock": CLOCK,
        "clock_read_ms": round3(lc.clock_read_ms),
        "dom0d_rss_kib_per_domu": round3(lc.rss_kib_per_domu()),
        "dom0d_rss_kib": { "before": lc.rss_before_kib, "with_domus": lc.rss_with_many_kib, "domus": MANY },
        "mem_free_kib": {
            "start": lc.free_start_kib,
            "before_domus": lc.free_many_before_kib,
            "with_domus": lc.free_with_many_kib,
            "after_destroy": lc.free_end_kib,
        },
        "mv_overhead_kib_per_domu_from_8_domus": round3(lc.mv_overhead_kib_from_many()),
        "memory_returned": lc.memory_returned(),
        "first_console_byte": FIRST_BYTE,
        "samples": lc.reps.iter().map(|r| json!({
            "rep": r.rep,
            "create_ms": round3(r.create_ms),
            "create_took_ms": r.took_ms,
            "create_to_first_console_byte_ms": r.first_byte_ms,
            "first_byte_seen_by_script_ms": round3(r.first_byte_seen_ms),
            "destroy_ms": round3(r.destroy_ms),
            "mv_overhead_kib_per_domu": r.mv_overhead_kib,
        })).collect::<Vec<_>>(),
        "note": TCG_CAVEAT,
    });
    for (name, _, s) in lc.rows() {
        doc[name] =
            json!({ "median": round3(s.median), "min": round3(s.min), "max": round3(s.max) });
    }
    doc
}

/// The table printed after a run.
pub(crate) fn table(lc: &Lifecycle, opts: &Dom0Options) -> String {
    let mut out = format!(
        "bench lifecycle (QEMU {}, -cpu {}, -smp {}, Dom0 {} MiB, waiter.toml 16 MiB DomU, {} reps):\n",
        qemu::ACCEL,
        qemu::CPU,
        qemu::SMP,
        opts.mem_mib,
        lc.reps.len()
    );
    out += &format!(
        "  {:<32} {:>10}  {:>20}  unit\n",
        "result", "median", "(min .. max)"
    );
    for (name, unit, s) in lc.rows() {
        out += &format!(
            "  {name:<32} {:>10.1}  {:>9.1} .. {:<8.1}  {unit}\n",
            s.median, s.min, s.max
        );
    }
    out += &format!(
        "  {:<32} {:>10.1}  {:>20}  KiB ({} DomUs: VmRSS {} -> {} KiB; pages are 4 KiB)\n",
        "dom0d_rss_kib_per_domu",
        lc.rss_kib_per_domu(),
        "",
        MANY,
        lc.rss_before_kib,
        lc.rss_with_many_kib
    );
    out += &format!(
        "  memory_returned: {} (free {} KiB before the {} creates, {} KiB after the destroys)\n",
        lc.memory_returned(),
        lc.free_many_before_kib,
        MANY,
        lc.free_end_kib
    );
    out += &format!(
        "  clock: one read costs {:.1} ms, included in create_ms and destroy_ms\n",
        lc.clock_read_ms
    );
    out += &format!("  first console byte: {FIRST_BYTE}\n");
    out += &format!("note: {TCG_CAVEAT}\n");
    out
}

/// Boots Dom0 under the microvisor once and runs `script` in it through `run --exec`;
/// returns its output (also written to `target/xtask/bench/<name>/output.txt`) and that
/// directory. A failed boot or a non-zero exit is an error.
pub(crate) fn boot_and_run(
    name: &str,
    script: &str,
    qemu_bin: &Path,
    timeout: Duration,
    opts: &Dom0Options,
) -> Result<(String, std::path::PathBuf)> {
    let profile = Profile::Release;
    let host = Host::Microvisor;
    dom0::build_host(host, profile, &[])?;
    let artifacts = dom0::prepare()?;
    let out_dir = xtask_dir("bench").join(name);
    let data_disk = out_dir.join("dom0-data.img");
    dom0::create_data_disk(&data_disk)?;
    let plan = dom0::BootPlan {
        artifacts: &artifacts,
        host,
        profile,
        guests: Vec::new(),
        options: opts.clone(),
        qemu: qemu_bin.to_owned(),
        out_dir: out_dir.clone(),
        data_disk,
    };
    let out = dom0::exec(&plan, script, timeout, false)?;
    let text = out.text();
    std::fs::write(out_dir.join("output.txt"), &text)
        .with_context(|| format!("could not write {}/output.txt", display_path(&out_dir)))?;
    if !out.problems.is_empty() || out.status != Some(0) {
        out.run.print_tail();
        bail!(
            "the {name} boot failed: {}; script output in {}/output.txt",
            if out.problems.is_empty() {
                format!("exit status {:?}", out.status)
            } else {
                out.problems.join("; ")
            },
            display_path(&out_dir)
        );
    }
    Ok((text, out_dir))
}

/// Boots Dom0 under the microvisor once, runs the script, prints the table and writes
/// `target/xtask/bench/lifecycle.json`.
pub(crate) fn run(qemu_bin: &Path, timeout: Duration, reps: u32, opts: &Dom0Options) -> Result<()> {
    let reps = reps.max(1);
    eprintln!(
        "xtask: lifecycle: one Dom0 boot, {reps} create/destroy pairs, then {MANY} DomUs at once \
         (timeout {} s, logs in {}/)",
        timeout.as_secs(),
        display_path(&xtask_dir("bench").join("lifecycle"))
    );
    let (text, out_dir) = boot_and_run("lifecycle", &script(reps), qemu_bin, timeout, opts)?;
    let lc = parse(&text, reps)
        .with_context(|| format!("script output in {}/output.txt", display_path(&out_dir)))?;
    print!("{}", table(&lc, opts));
    let json_path = xtask_dir("bench").join("lifecycle.json");
    let body = serde_json::to_string_pretty(&to_json(&lc, opts))
        .context("could not serialize the bench results")?;
    std::fs::write(&json_path, body + "\n")
        .with_context(|| format!("could not write {}", json_path.display()))?;
    println!("wrote {}", display_path(&json_path));
    if !lc.memory_returned() {
        bail!(
            "free memory did not return: {} KiB before the {MANY} creates, {} KiB after the destroys",
            lc.free_many_before_kib,
            lc.free_end_kib
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(free: u64) -> String {
        format!(r#"{{"api_version":"dom0/v1","pcpus":3,"mem_free_kib":{free},"uptime_ns":1}}"#)
    }

    /// Output of a good run with `reps` repetitions.
    fn good(reps: u32) -> String {
        let mut s =
            String::from("noise\nlc clock_read_ns 1 16000000\nlc clock_read_ns 2 15000000\r\n");
        s += &format!("lc host_start 0 {}\n", host(1_600_000));
        for i in 1..=reps {
            s += &format!(
                "lc create_ns {i} {}\n",
                100_000_000 + u64::from(i) * 1_000_000
            );
            s += &format!("lc create_rc {i} 0\n");
            s += &format!(
                "lc create_json {i} {{  \"api_version\": \"dom0/v1\",  \"domid\": {i},  \"state\": \"running\",  \"took_ms\": {}}}\n",
                50 + i
            );
            s += &format!(r#"lc info {i} {{"domid":{i},"name":"waiter","state":"running"}}"#);
            s += "\n";
            s += &format!(
                r#"lc first_byte {i} {{"domid":{i},"console_first_byte_ms":{}}}"#,
                40 + i
            );
            s += &format!("\nlc first_byte_seen_ns {i} 150000000\n");
            s += &format!("lc host_before {i} {}\n", host(1_600_000));
            s += &format!("lc host_after {i} {}\n", host(1_600_000 - 16384 - 100));
            s += &format!("lc destroy_ns {i} 30000000\nlc destroy_rc {i} 0 \nlc gone {i} yes\n");
        }
        s += &format!(
            "lc host_many_before 0 {}\nlc rss_before 0 1348\n",
            host(1_600_000)
        );
        for i in 1..=MANY {
            s += &format!("lc many_create_rc {i} 0 \n");
        }
        s += &format!(
            "lc rss_with_many 0 1428\nlc host_with_many 0 {}\n",
            host(1_468_128)
        );
        for i in 1..=MANY {
            s += &format!("lc many_destroy_rc {i} 0\n");
        }
        s += &format!("lc host_end 0 {}\n", host(1_600_000));
        s
    }

    #[test]
    fn parses_a_good_run() {
        let lc = parse(&good(3), 3).unwrap();
        assert_eq!(lc.reps.len(), 3);
        assert_eq!(lc.reps[1].create_ms, 102.0);
        assert_eq!(lc.reps[1].took_ms, 52);
        assert_eq!(lc.reps[0].destroy_ms, 30.0);
        assert_eq!(lc.reps[2].mv_overhead_kib, 100);
        assert_eq!(lc.clock_read_ms, 15.0);
        assert_eq!(lc.rss_kib_per_domu(), 10.0);
        assert!(lc.memory_returned());
        let rows = lc.rows();
        assert_eq!(
            rows[0].2,
            Spread {
                median: 102.0,
                min: 101.0,
                max: 103.0
            }
        );
        assert_eq!(rows[1].2.median, 52.0);
        let doc = to_json(&lc, &Dom0Options::default());
        assert_eq!(doc["benchmark"], "lifecycle");
        assert_eq!(doc["create_ms"]["median"], 102.0);
        assert_eq!(doc["mv_overhead_kib_per_domu"]["max"], 100.0);
        assert_eq!(doc["dom0d_rss_kib_per_domu"], 10.0);
        assert_eq!(doc["memory_returned"], true);
        assert_eq!(doc["mv_overhead_kib_per_domu_from_8_domus"], 100.0);
        assert_eq!(doc["samples"].as_array().unwrap().len(), 3);
        assert!(
            doc["note"]
                .as_str()
                .unwrap()
                .contains("meaningless outside this setup")
        );
        let t = table(&lc, &Dom0Options::default());
        assert!(t.contains("create_to_first_console_byte_ms"), "{t}");
        assert_eq!(doc["create_to_first_console_byte_ms"]["median"], 42.0);
        assert_eq!(doc["first_byte_seen_by_script_ms"]["max"], 150.0);
        assert!(t.contains("memory_returned: true"), "{t}");
    }

    #[test]
    fn memory_not_returned_is_reported() {
        let out = good(1).replace(
            &format!("lc host_end 0 {}", host(1_600_000)),
            &format!("lc host_end 0 {}", host(1_599_996)),
        );
        let lc = parse(&out, 1).unwrap();
        assert!(!lc.memory_returned());
        assert_eq!(
            to_json(&lc, &Dom0Options::default())["memory_returned"],
            false
        );
    }

    #[test]
    fn failures_are_named() {
        let err = format!("{:#}", parse(&good(2), 3).unwrap_err());
        assert!(err.contains("did not report `create_rc 3`"), "{err}");
        let out = good(1).replace("lc create_rc 1 0", "lc create_rc 1 6");
        let err = format!("{:#}", parse(&out, 1).unwrap_err());
        assert!(err.contains("create 1 failed with exit status 6"), "{err}");
        let out = good(1).replace(r#""state":"running""#, r#""state":"blocked""#);
        let err = format!("{:#}", parse(&out, 1).unwrap_err());
        assert!(err.contains("not running"), "{err}");
        let out = good(1).replace(
            r#""console_first_byte_ms":41"#,
            r#""console_first_byte_ms":null"#,
        );
        let err = format!("{:#}", parse(&out, 1).unwrap_err());
        assert!(err.contains("no byte within 5 s"), "{err}");
        let out = good(1).replace("lc gone 1 yes", "lc gone 1 no");
        let err = format!("{:#}", parse(&out, 1).unwrap_err());
        assert!(err.contains("still listed"), "{err}");
        let out = good(1).replace(
            "lc many_destroy_rc 4 0",
            "lc many_destroy_rc 4 3 error: no w4",
        );
        let err = format!("{:#}", parse(&out, 1).unwrap_err());
        assert!(
            err.contains("destroy w4 failed with exit status 3: error: no w4"),
            "{err}"
        );
        let out = good(1).replace("lc create_ns 1 101000000", "lc create_ns 1 -5");
        let err = format!("{:#}", parse(&out, 1).unwrap_err());
        assert!(err.contains("not a number"), "{err}");
        let err = format!("{:#}", parse_facts("lc a 1 x\nlc a 1 y").unwrap_err());
        assert!(err.contains("reported twice"), "{err}");
        let err = format!("{:#}", parse_facts("lc a b c").unwrap_err());
        assert!(err.contains("bad index"), "{err}");
    }

    #[test]
    fn spreads_and_script() {
        assert_eq!(
            spread(&[3.0, 1.0, 2.0, 10.0]),
            Spread {
                median: 2.5,
                min: 1.0,
                max: 10.0
            }
        );
        assert!(spread(&[]).median.is_nan());
        let s = script(7);
        assert!(s.contains("-le 7 ]"), "{s}");
        assert!(s.contains("-le 8 ]"), "{s}");
        assert!(s.contains("--set name=w$i"), "{s}");
        assert!(!s.contains("{reps}") && !s.contains("{{"), "{s}");
    }
}
