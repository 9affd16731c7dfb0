//! `cargo xtask bench io`: one Dom0 boot under the microvisor that compares the `pvdemo`
//! DomU's disk throughput (its 64 MiB pattern written and read back through blkfront,
//! dom0d's blkback and `/var/lib/dom0/disks/d1.img`) with Dom0 writing and reading the same
//! file natively (`dd`, 1 MiB blocks, 64 MiB, then `sync` after the write), R times,
//! alternating, and reports the ratios from that one run.
//!
//! The DomU's figures are the ones pvdemo prints (`write X MiB/s, read Y MiB/s`, timed with
//! pvclock around its I/O calls only); Dom0's are timed with CLOCK_MONOTONIC around `dd`
//! (plus the `sync` for writes). The backing file lives in Dom0's initramfs, i.e. in RAM,
//! for both. The network figures (DomU to Dom0 TCP against loopback) and event-channel
//! ping-pong are not measured yet: the network back-end and a ping-pong guest do not exist.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::bench::{Spread, TCG_CAVEAT, spread};
use crate::bench_lifecycle::{Facts, boot_and_run, fact, fact_u64, parse_prefixed_facts};
use crate::build::{display_path, xtask_dir};
use crate::dom0::Dom0Options;
use crate::qemu;

/// Default repetitions.
pub(crate) const DEFAULT_REPS: u32 = 3;

/// Bytes each side moves per repetition (pvdemo's pattern size).
const BYTES: u64 = 64 << 20;

/// What is not measured yet, and why.
pub(crate) const NOT_MEASURED: &str = "TCP DomU to Dom0 against Dom0 loopback, and \
    event-channel ping-pong between two DomUs against the null hypercall: not measured yet \
    (no network back-end and no ping-pong guest exist)";

/// The shell script run in Dom0.
pub(crate) fn script(reps: u32) -> String {
    format!(
        r#"img=/var/lib/dom0/disks/d1.img
now() {{ awk '/^now at/ {{ print $3; exit }}' /proc/timer_list; }}
i=1
while [ $i -le {reps} ]; do
  t0=$(now); dd if=/dev/zero of=$img bs=1048576 count=64 conv=notrunc 2>/dev/null; sync; t1=$(now)
  echo "io native_write_ns $i $((t1-t0))"
  t0=$(now); dd if=$img of=/dev/null bs=1048576 count=64 2>/dev/null; t1=$(now)
  echo "io native_read_ns $i $((t1-t0))"
  dom0 create /etc/dom0/examples/pvdemo.toml >/dev/null 2>&1
  j=0; line=""
  while [ $j -lt 600 ]; do
    line=$(dom0 logs pvdemo 2>/dev/null | grep -E 'disk: (wrote and verified|FAILED)' | tail -n 1)
    [ -n "$line" ] && break
    sleep 0.2; j=$((j+1))
  done
  echo "io pvdemo $i $line"
  dom0 destroy pvdemo >/dev/null 2>&1
  i=$((i+1))
done
"#
    )
}

/// One repetition, MiB/s.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Rep {
    pub(crate) domu_write: f64,
    pub(crate) domu_read: f64,
    pub(crate) native_write: f64,
    pub(crate) native_read: f64,
}

/// `write X MiB/s, read Y MiB/s` from pvdemo's line.
fn pvdemo_rates(line: &str) -> Result<(f64, f64)> {
    if !line.contains("wrote and verified") {
        bail!("pvdemo did not verify its disk: `{line}`");
    }
    let rate = |word: &str| -> Result<f64> {
        let at = line
            .find(word)
            .with_context(|| format!("no `{word}` rate in `{line}`"))?;
        let rest = &line[at + word.len()..];
        let num: String = rest
            .trim_start()
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == '.')
            .collect();
        num.parse()
            .with_context(|| format!("bad `{word}` rate in `{line}`"))
    };
    Ok((rate("write ")?, rate("read ")?))
}

fn mib_per_s(ns: u64) -> Result<f64> {
    if ns == 0 {
        bail!("a native transfer took 0 ns");
    }
    Ok((BYTES as f64 / f64::from(1u32 << 20)) / (ns as f64 / 1e9))
}

/// Turns the script's output into the repetitions.
pub(crate) fn parse(output: &str, reps: u32) -> Result<Vec<Rep>> {
    let facts: Facts = parse_prefixed_facts(output, "io ")?;
    (1..=reps)
        .map(|i| {
            let (domu_write, domu_read) = pvdemo_rates(fact(&facts, "pvdemo", i)?)
                .with_context(|| format!("repetition {i}"))?;
            Ok(Rep {
                domu_write,
                domu_read,
                native_write: mib_per_s(fact_u64(&facts, "native_write_ns", i)?)?,
                native_read: mib_per_s(fact_u64(&facts, "native_read_ns", i)?)?,
            })
        })
        .collect()
}

fn of(reps: &[Rep], f: fn(&Rep) -> f64) -> Spread {
    spread(&reps.iter().map(f).collect::<Vec<_>>())
}

/// (name, spread) of every result and ratio.
pub(crate) fn rows(reps: &[Rep]) -> [(&'static str, Spread); 6] {
    [
        ("domu_write_mib_s", of(reps, |r| r.domu_write)),
        ("native_write_mib_s", of(reps, |r| r.native_write)),
        (
            "write_ratio_domu_to_native",
            of(reps, |r| r.domu_write / r.native_write),
        ),
        ("domu_read_mib_s", of(reps, |r| r.domu_read)),
        ("native_read_mib_s", of(reps, |r| r.native_read)),
        (
            "read_ratio_domu_to_native",
            of(reps, |r| r.domu_read / r.native_read),
        ),
    ]
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// The JSON document of `bench io`.
pub(crate) fn to_json(reps: &[Rep], opts: &Dom0Options) -> Value {
    let mut doc = json!({
        "benchmark": "io",
        "environment": {
            "qemu_accel": qemu::ACCEL, "qemu_cpu": qemu::CPU, "qemu_smp": qemu::SMP,
            "dom0_mem_mib": opts.mem_mib,
            "domu_config": "/etc/dom0/examples/pvdemo.toml",
            "backing_file": "/var/lib/dom0/disks/d1.img (Dom0 initramfs, RAM)",
            "bytes_per_direction": BYTES,
        },
        "reps": reps.len(),
        "not_measured": NOT_MEASURED,
        "samples": reps.iter().map(|r| json!({
            "domu_write_mib_s": r.domu_write, "domu_read_mib_s": r.domu_read,
            "native_write_mib_s": round3(r.native_write), "native_read_mib_s": round3(r.native_read),
        })).collect::<Vec<_>>(),
        "note": TCG_CAVEAT,
    });
    for (name, s) in rows(reps) {
        doc[name] =
            json!({ "median": round3(s.median), "min": round3(s.min), "max": round3(s.max) });
    }
    doc
}

/// The table printed after a run.
pub(crate) fn table(reps: &[Rep], opts: &Dom0Options) -> String {
    let mut out = format!(
        "bench io (QEMU {}, -smp {}, Dom0 {} MiB, pvdemo 64 MiB each way, {} reps):\n",
        qemu::ACCEL,
        qemu::SMP,
        opts.mem_mib,
        reps.len()
    );
    out += &format!(
        "  {:<30} {:>10}  {:>20}\n",
        "result", "median", "(min .. max)"
    );
    for (name, s) in rows(reps) {
        out += &format!(
            "  {name:<30} {:>10.3}  {:>9.3} .. {:<9.3}\n",
            s.median, s.min, s.max
        );
    }
    out += &format!("  {NOT_MEASURED}\nnote: {TCG_CAVEAT}\n");
    out
}

/// Boots Dom0 once, runs the script, prints the table and writes
/// `target/xtask/bench/io.json`.
pub(crate) fn run(qemu_bin: &Path, timeout: Duration, reps: u32, opts: &Dom0Options) -> Result<()> {
    let reps = reps.max(1);
    eprintln!(
        "xtask: io: one Dom0 boot, {reps} rounds of Dom0 dd then a pvdemo DomU on the same file"
    );
    let (text, out_dir) = boot_and_run("io", &script(reps), qemu_bin, timeout, opts)?;
    let list = parse(&text, reps)
        .with_context(|| format!("script output in {}/output.txt", display_path(&out_dir)))?;
    print!("{}", table(&list, opts));
    let json_path = xtask_dir("bench").join("io.json");
    let body = serde_json::to_string_pretty(&to_json(&list, opts))
        .context("could not serialize the bench results")?;
    std::fs::write(&json_path, body + "\n")
        .with_context(|| format!("could not write {}", json_path.display()))?;
    println!("wrote {}", display_path(&json_path));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good(reps: u32) -> String {
        let mut s = String::from("noise\n");
        for i in 1..=reps {
            s += &format!("io native_write_ns {i} 1000000000\nio native_read_ns {i} 500000000\n");
            s += &format!(
                "io pvdemo {i} pvdemo: disk: wrote and verified 64 MiB (write 8.0 MiB/s, read 16.0 MiB/s)\n"
            );
        }
        s
    }

    #[test]
    fn parses_rates_and_ratios() {
        let reps = parse(&good(3), 3).unwrap();
        assert_eq!(reps.len(), 3);
        assert_eq!(reps[0].native_write, 64.0);
        assert_eq!(reps[0].native_read, 128.0);
        let rows = rows(&reps);
        assert_eq!(rows[2].1.median, 0.125);
        assert_eq!(rows[5].1.median, 0.125);
        let doc = to_json(&reps, &Dom0Options::default());
        assert_eq!(doc["write_ratio_domu_to_native"]["median"], 0.125);
        assert!(doc["not_measured"].as_str().unwrap().contains("TCP"));
        assert!(table(&reps, &Dom0Options::default()).contains("read_ratio_domu_to_native"));
    }

    #[test]
    fn failures_are_named() {
        let out = good(1).replace(
            "wrote and verified 64 MiB (write 8.0 MiB/s, read 16.0 MiB/s)",
            "FAILED: no disk",
        );
        let err = format!("{:#}", parse(&out, 1).unwrap_err());
        assert!(err.contains("did not verify"), "{err}");
        let err = format!("{:#}", parse(&good(1), 2).unwrap_err());
        assert!(err.contains("pvdemo 2"), "{err}");
        let out = good(1).replace("io native_read_ns 1 500000000", "io native_read_ns 1 0");
        assert!(parse(&out, 1).is_err());
    }
}
