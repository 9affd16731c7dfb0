//! Guest micro-benchmarks: boot the `bench` guest, collect its `bench <name> <value> <unit>`
//! lines, and report ratios measured side by side in the same run.
//!
//! Nothing here asserts on a time: under TCG, absolute numbers say little about hardware.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::ValueEnum;
use serde_json::json;

use crate::build::{Artifact, Guest, Profile, artifact_path, display_path, xtask_dir};
use crate::image::{self, DomainSpec};
use crate::qemu::{self, QemuConfig, RunOptions, Verdict};
use crate::serial::{self, Event};

/// The caveat printed with, and stored in, every result.
pub(crate) const TCG_CAVEAT: &str = "Measured under QEMU TCG (binary translation, emulated SVM). \
    TCG timings do not predict hardware: compare only ratios taken in the same run, and \
    treat absolute values as meaningless outside this setup.";

/// A benchmark `cargo xtask bench` knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Benchmark {
    /// Null hypercall round trip against a CPUID exit, measured side by side.
    Hypercall,
}

impl Benchmark {
    /// The name on the command line and in file names.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Benchmark::Hypercall => "hypercall",
        }
    }

    /// Result names the guest must report.
    fn required(self) -> &'static [&'static str] {
        match self {
            Benchmark::Hypercall => &["hypercall_null", "cpuid_exit"],
        }
    }

    /// Ratios to report, as (numerator, denominator).
    fn ratios(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Benchmark::Hypercall => &[("hypercall_null", "cpuid_exit")],
        }
    }

    /// The single domain that runs the benchmark.
    fn domain(self) -> DomainSpec {
        DomainSpec {
            name: "bench".into(),
            guest: Guest::Bench,
            mem_mib: image::DEFAULT_MEM_MIB,
            cmdline: String::new(),
        }
    }
}

/// One `bench <name> <value> <unit>` line.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct BenchResult {
    /// Domain that printed it.
    pub(crate) domain: u32,
    /// Result name.
    pub(crate) name: String,
    /// The value as printed.
    pub(crate) raw: String,
    /// The value as a number.
    pub(crate) value: f64,
    /// Unit (e.g. `cycles`).
    pub(crate) unit: String,
}

/// A ratio between two results with the same unit.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Ratio {
    /// Numerator name.
    pub(crate) numerator: &'static str,
    /// Denominator name.
    pub(crate) denominator: &'static str,
    /// numerator / denominator.
    pub(crate) value: f64,
}

/// Collects every bench line from the guests' console output.
pub(crate) fn parse_results(lines: &[String]) -> Result<Vec<BenchResult>> {
    let mut results: Vec<BenchResult> = Vec::new();
    for (n, line) in lines.iter().enumerate() {
        let Event::Console { id, text } = serial::parse_line(line) else {
            continue;
        };
        let Some((name, raw, unit)) = serial::parse_bench(text) else {
            continue;
        };
        let value: f64 = raw
            .parse()
            .ok()
            .filter(|v: &f64| v.is_finite())
            .with_context(|| {
                format!(
                    "serial.log line {}: bench value `{raw}` is not a number: `{line}`",
                    n + 1
                )
            })?;
        if results.iter().any(|r| r.name == name) {
            bail!("serial.log line {}: result `{name}` reported twice", n + 1);
        }
        results.push(BenchResult {
            domain: id,
            name: name.to_owned(),
            raw: raw.to_owned(),
            value,
            unit: unit.to_owned(),
        });
    }
    Ok(results)
}

/// Checks that every required result is there and computes the ratios.
pub(crate) fn ratios(bench: Benchmark, results: &[BenchResult]) -> Result<Vec<Ratio>> {
    let have: BTreeSet<&str> = results.iter().map(|r| r.name.as_str()).collect();
    let missing: Vec<&str> = bench
        .required()
        .iter()
        .copied()
        .filter(|n| !have.contains(n))
        .collect();
    if !missing.is_empty() {
        let have: Vec<&str> = have.into_iter().collect();
        bail!(
            "the bench guest did not report {}; it reported {}. Each result must be a \
             console line `bench <name> <value> <unit>`",
            missing.join(", "),
            if have.is_empty() {
                "nothing".to_owned()
            } else {
                have.join(", ")
            }
        );
    }
    let get = |name: &str| results.iter().find(|r| r.name == name);
    let mut out = Vec::new();
    for &(numerator, denominator) in bench.ratios() {
        let (Some(a), Some(b)) = (get(numerator), get(denominator)) else {
            bail!("ratio {numerator} / {denominator} needs both results");
        };
        if a.unit != b.unit {
            bail!(
                "cannot compare {numerator} ({}) with {denominator} ({}): units differ",
                a.unit,
                b.unit
            );
        }
        if b.value == 0.0 {
            bail!("{denominator} is 0 {}; cannot form a ratio", b.unit);
        }
        out.push(Ratio {
            numerator,
            denominator,
            value: a.value / b.value,
        });
    }
    Ok(out)
}

/// The JSON document written next to the logs.
pub(crate) fn to_json(
    bench: Benchmark,
    results: &[BenchResult],
    ratios: &[Ratio],
    elapsed: Duration,
) -> serde_json::Value {
    let results: Vec<_> = results
        .iter()
        .map(|r| {
            // Keep integers as integers.
            let value = r
                .raw
                .parse::<i64>()
                .map_or_else(|_| json!(r.value), |v| json!(v));
            json!({ "name": r.name, "value": value, "unit": r.unit, "domain": r.domain })
        })
        .collect();
    let ratios: Vec<_> = ratios
        .iter()
        .map(
            |r| json!({ "numerator": r.numerator, "denominator": r.denominator, "ratio": r.value }),
        )
        .collect();
    json!({
        "benchmark": bench.name(),
        "environment": { "qemu_accel": qemu::ACCEL, "qemu_cpu": qemu::CPU, "qemu_smp": qemu::SMP },
        "results": results,
        "ratios": ratios,
        "wall_clock_seconds": (elapsed.as_secs_f64() * 1000.0).round() / 1000.0,
        "note": TCG_CAVEAT,
    })
}

fn print_table(bench: Benchmark, results: &[BenchResult], ratios: &[Ratio]) {
    let width = results
        .iter()
        .map(|r| r.name.len())
        .max()
        .unwrap_or(0)
        .max(6);
    println!(
        "bench {} (QEMU {}, -cpu {}):",
        bench.name(),
        qemu::ACCEL,
        qemu::CPU
    );
    println!("  {:<width$}  {:>14}  unit", "result", "value");
    for r in results {
        println!("  {:<width$}  {:>14}  {}", r.name, r.raw, r.unit);
    }
    for r in ratios {
        println!(
            "  ratio {} / {} = {:.2}",
            r.numerator, r.denominator, r.value
        );
    }
    println!("note: {TCG_CAVEAT}");
}

/// Builds and boots the benchmark, prints the table and writes
/// `target/xtask/bench/<name>.json`.
pub(crate) fn run(bench: Benchmark, qemu_bin: &Path, timeout: Duration) -> Result<()> {
    let profile = Profile::Release;
    let domain = bench.domain();
    crate::build::build(profile, &Artifact::with_guests([domain.guest]))?;
    let out_dir = xtask_dir("bench").join(bench.name());
    let bundle = image::bundle_path(&out_dir);
    image::write_bundle(profile, std::slice::from_ref(&domain), &bundle)?;
    let config = QemuConfig {
        qemu: qemu_bin.to_owned(),
        kernel: artifact_path(profile, Artifact::Microvisor),
        initrd: bundle,
        append: qemu::MICROVISOR_CMDLINE.to_owned(),
        out_dir: out_dir.clone(),
    };
    eprintln!(
        "xtask: booting bench {} (timeout {} s, logs in {}/)",
        bench.name(),
        timeout.as_secs(),
        display_path(&out_dir)
    );
    let outcome = qemu::run(
        &config,
        RunOptions {
            timeout: Some(timeout),
            echo: false,
        },
    )?;
    if outcome.verdict != Verdict::AllShutDown {
        eprintln!(
            "xtask: bench {} failed: {}",
            bench.name(),
            outcome.verdict.explain()
        );
        outcome.print_tail();
        bail!(
            "bench {} ended with {} instead of {}; logs in {}/",
            bench.name(),
            outcome.verdict,
            Verdict::AllShutDown,
            display_path(&out_dir)
        );
    }
    let results = parse_results(&outcome.lines)?;
    let ratios = ratios(bench, &results)
        .map_err(|e| anyhow::anyhow!("{e}; see {}/{}", display_path(&out_dir), qemu::SERIAL_LOG))?;
    print_table(bench, &results, &ratios);
    let json_path = xtask_dir("bench").join(format!("{}.json", bench.name()));
    let text = serde_json::to_string_pretty(&to_json(bench, &results, &ratios, outcome.elapsed))
        .context("could not serialize the bench results")?;
    std::fs::write(&json_path, text + "\n")
        .with_context(|| format!("could not write {}", json_path.display()))?;
    println!("wrote {}", display_path(&json_path));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(text: &str) -> Vec<String> {
        text.lines().map(str::to_owned).collect()
    }

    const GOOD: &str = "\
mv: d1 (bench) created: 16 MiB, pCPU 1
(d1) bench: warming up
(d1) bench hypercall_null 4200 cycles
(d1) bench cpuid_exit 3500 cycles
(d1) bench event_latency 1.5 us
bench fake 1 cycles
mv: d1 (bench) shut down: poweroff";

    #[test]
    fn parses_results_and_ratio() {
        let results = parse_results(&lines(GOOD)).unwrap();
        let names: Vec<&str> = results.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["hypercall_null", "cpuid_exit", "event_latency"]);
        assert_eq!(results[2].value, 1.5);
        let r = ratios(Benchmark::Hypercall, &results).unwrap();
        assert_eq!(r.len(), 1);
        assert!((r[0].value - 1.2).abs() < 1e-9);
        let doc = to_json(Benchmark::Hypercall, &results, &r, Duration::from_secs(2));
        assert_eq!(doc["benchmark"], "hypercall");
        assert_eq!(doc["results"][0]["value"], 4200);
        assert_eq!(doc["results"][2]["value"], 1.5);
        assert_eq!(doc["ratios"][0]["numerator"], "hypercall_null");
        assert!(
            doc["note"]
                .as_str()
                .unwrap()
                .contains("do not predict hardware")
        );
    }

    #[test]
    fn missing_results_are_named() {
        let log: String = GOOD
            .lines()
            .filter(|l| !l.contains("cpuid_exit"))
            .collect::<Vec<_>>()
            .join("\n");
        let results = parse_results(&lines(&log)).unwrap();
        let err = ratios(Benchmark::Hypercall, &results)
            .unwrap_err()
            .to_string();
        assert!(err.contains("did not report cpuid_exit"), "{err}");
        let err = ratios(Benchmark::Hypercall, &[]).unwrap_err().to_string();
        assert!(err.contains("reported nothing"), "{err}");
    }

    #[test]
    fn malformed_and_duplicate_lines_are_errors() {
        let err = parse_results(&lines("(d1) bench hypercall_null lots cycles")).unwrap_err();
        assert!(err.to_string().contains("not a number"), "{err}");
        let err =
            parse_results(&lines("(d1) bench a 1 cycles\n(d1) bench a 2 cycles")).unwrap_err();
        assert!(err.to_string().contains("reported twice"), "{err}");
    }

    #[test]
    fn units_must_match_for_a_ratio() {
        let results = parse_results(&lines(
            "(d1) bench hypercall_null 1 cycles\n(d1) bench cpuid_exit 2 ns",
        ))
        .unwrap();
        let err = ratios(Benchmark::Hypercall, &results)
            .unwrap_err()
            .to_string();
        assert!(err.contains("units differ"), "{err}");
    }
}
