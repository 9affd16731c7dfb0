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
use crate::dom0::{self, Dom0Options, Host};
use crate::image::{self, DomainSpec};
use crate::qemu::{self, Layout, QemuConfig, RunOptions, Verdict};
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
    /// Dom0 boot time (QEMU start to Dom0's ready line), directly under QEMU and under the
    /// microvisor, alternating.
    Dom0Boot,
    /// DomU create and destroy times and per-DomU memory, measured in Dom0 under the
    /// microvisor.
    Lifecycle,
    /// PV disk throughput of a DomU against Dom0's own on the same file.
    Io,
}

/// Default boots of each variant of `bench dom0-boot`.
pub(crate) const DEFAULT_BOOT_REPS: u32 = 3;

impl Benchmark {
    /// The name on the command line and in file names.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Benchmark::Hypercall => "hypercall",
            Benchmark::Dom0Boot => "dom0-boot",
            Benchmark::Lifecycle => "lifecycle",
            Benchmark::Io => "io",
        }
    }

    /// Result names the guest must report.
    fn required(self) -> &'static [&'static str] {
        match self {
            Benchmark::Hypercall => &["hypercall_null", "cpuid_exit"],
            Benchmark::Dom0Boot | Benchmark::Lifecycle | Benchmark::Io => &[],
        }
    }

    /// Ratios to report, as (numerator, denominator).
    fn ratios(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Benchmark::Hypercall => &[("hypercall_null", "cpuid_exit")],
            Benchmark::Dom0Boot | Benchmark::Lifecycle | Benchmark::Io => &[],
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
        layout: Layout::DomUOnly,
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

/// One Dom0 boot of `bench dom0-boot`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct BootSample {
    /// How Dom0 was started.
    pub(crate) host: Host,
    /// Repetition number.
    pub(crate) rep: u32,
    /// QEMU start to the ready line on COM1.
    pub(crate) wall: Duration,
    /// Linux's uptime in the ready line, seconds.
    pub(crate) uptime_s: f64,
}

/// Summary of one variant.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct BootStats {
    /// Median wall time to ready, seconds.
    pub(crate) wall_median_s: f64,
    /// Fastest and slowest.
    pub(crate) wall_min_s: f64,
    /// Slowest.
    pub(crate) wall_max_s: f64,
    /// Median uptime at ready, seconds.
    pub(crate) uptime_median_s: f64,
}

/// Median, min and max.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Spread {
    /// Median.
    pub(crate) median: f64,
    /// Smallest.
    pub(crate) min: f64,
    /// Largest.
    pub(crate) max: f64,
}

/// The spread of `values` (NaN for none).
pub(crate) fn spread(values: &[f64]) -> Spread {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let median = match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    };
    Spread {
        median,
        min: v.first().copied().unwrap_or(f64::NAN),
        max: v.last().copied().unwrap_or(f64::NAN),
    }
}

fn median(v: Vec<f64>) -> f64 {
    spread(&v).median
}

/// Statistics of the samples of `host`.
pub(crate) fn boot_stats(samples: &[BootSample], host: Host) -> Option<BootStats> {
    let mine: Vec<&BootSample> = samples.iter().filter(|s| s.host == host).collect();
    if mine.is_empty() {
        return None;
    }
    let walls: Vec<f64> = mine.iter().map(|s| s.wall.as_secs_f64()).collect();
    Some(BootStats {
        wall_median_s: median(walls.clone()),
        wall_min_s: walls.iter().copied().fold(f64::INFINITY, f64::min),
        wall_max_s: walls.iter().copied().fold(0.0, f64::max),
        uptime_median_s: median(mine.iter().map(|s| s.uptime_s).collect()),
    })
}

/// The order of the two variants in repetition `rep`: alternating, so drift over the run
/// (a busy host, a warming page cache) does not favour one side.
pub(crate) fn boot_order(rep: u32) -> [Host; 2] {
    if rep.is_multiple_of(2) {
        [Host::Direct, Host::Microvisor]
    } else {
        [Host::Microvisor, Host::Direct]
    }
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// The JSON document of `bench dom0-boot`.
pub(crate) fn dom0_boot_json(samples: &[BootSample], opts: &Dom0Options) -> serde_json::Value {
    let stats = |host| {
        boot_stats(samples, host).map(|s| {
            json!({
                "wall_to_ready_median_s": round3(s.wall_median_s),
                "wall_to_ready_min_s": round3(s.wall_min_s),
                "wall_to_ready_max_s": round3(s.wall_max_s),
                "linux_uptime_at_ready_median_s": round3(s.uptime_median_s),
            })
        })
    };
    let ratio = |f: fn(&BootStats) -> f64| match (
        boot_stats(samples, Host::Microvisor),
        boot_stats(samples, Host::Direct),
    ) {
        (Some(m), Some(d)) if f(&d) > 0.0 => Some(round3(f(&m) / f(&d))),
        _ => None,
    };
    let list: Vec<_> = samples
        .iter()
        .map(|s| {
            json!({
                "host": s.host.name(),
                "rep": s.rep,
                "wall_to_ready_s": round3(s.wall.as_secs_f64()),
                "linux_uptime_at_ready_s": s.uptime_s,
            })
        })
        .collect();
    json!({
        "benchmark": "dom0-boot",
        "environment": {
            "qemu_accel": qemu::ACCEL, "qemu_cpu": qemu::CPU, "qemu_smp": qemu::SMP,
            "dom0_mem_mib": opts.mem_mib,
            "dom0_cmdline": dom0::cmdline(opts, dom0::Mode::Exec, Host::Microvisor),
        },
        "direct": stats(Host::Direct),
        "microvisor": stats(Host::Microvisor),
        "ratio_microvisor_over_direct": {
            "wall_to_ready": ratio(|s| s.wall_median_s),
            "linux_uptime_at_ready": ratio(|s| s.uptime_median_s),
        },
        "samples": list,
        "note": TCG_CAVEAT,
    })
}

/// `cargo xtask bench dom0-boot`: boots the same kernel and initramfs directly under QEMU
/// and under the microvisor, `reps` times each, alternating, with the same QEMU flags, and
/// times QEMU start to Dom0's ready line.
pub(crate) fn run_dom0_boot(
    qemu_bin: &Path,
    timeout: Duration,
    reps: u32,
    opts: &Dom0Options,
) -> Result<()> {
    let profile = Profile::Release;
    dom0::build_host(Host::Microvisor, profile, &[])?;
    let artifacts = dom0::prepare()?;
    let base = xtask_dir("bench").join("dom0-boot");
    let mut samples = Vec::new();
    for rep in 0..reps.max(1) {
        for host in boot_order(rep) {
            let out_dir = base.join(format!("{}-{rep}", host.name()));
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
            eprintln!(
                "xtask: dom0-boot: {} boot {} of {}",
                host.name(),
                rep + 1,
                reps.max(1)
            );
            let out = dom0::exec(&plan, "true", timeout, false)?;
            let ready = match (&out.ready, out.problems.is_empty()) {
                (Some(ready), true) => *ready,
                _ => {
                    out.run.print_tail();
                    bail!(
                        "the {} boot failed: {}; logs in {}/",
                        host.name(),
                        out.problems.join("; "),
                        display_path(&out_dir)
                    );
                }
            };
            samples.push(BootSample {
                host,
                rep,
                wall: ready.0,
                uptime_s: ready.1,
            });
        }
    }
    println!(
        "bench dom0-boot (QEMU {}, -cpu {}, -smp {}, Dom0 {} MiB, {} boots each):",
        qemu::ACCEL,
        qemu::CPU,
        qemu::SMP,
        opts.mem_mib,
        reps.max(1)
    );
    println!(
        "  {:<11} {:>16} {:>18} {:>22}",
        "variant", "wall to ready", "(min .. max)", "Linux uptime at ready"
    );
    for host in [Host::Direct, Host::Microvisor] {
        if let Some(s) = boot_stats(&samples, host) {
            println!(
                "  {:<11} {:>14.2} s {:>8.2} .. {:<7.2} {:>20.2} s",
                host.name(),
                s.wall_median_s,
                s.wall_min_s,
                s.wall_max_s,
                s.uptime_median_s
            );
        }
    }
    if let (Some(m), Some(d)) = (
        boot_stats(&samples, Host::Microvisor),
        boot_stats(&samples, Host::Direct),
    ) {
        println!(
            "  ratio microvisor / direct: wall {:.2}, Linux uptime {:.2} (medians)",
            m.wall_median_s / d.wall_median_s,
            m.uptime_median_s / d.uptime_median_s
        );
    }
    println!("note: {TCG_CAVEAT}");
    let json_path = xtask_dir("bench").join("dom0-boot.json");
    let text = serde_json::to_string_pretty(&dom0_boot_json(&samples, opts))
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
    fn dom0_boot_statistics() {
        let sample = |host, rep, wall: f64, up| BootSample {
            host,
            rep,
            wall: Duration::from_secs_f64(wall),
            uptime_s: up,
        };
        let samples = [
            sample(Host::Direct, 0, 10.0, 2.0),
            sample(Host::Microvisor, 0, 14.0, 3.0),
            sample(Host::Microvisor, 1, 12.0, 2.6),
            sample(Host::Direct, 1, 11.0, 2.2),
            sample(Host::Direct, 2, 30.0, 2.1),
            sample(Host::Microvisor, 2, 13.0, 2.8),
        ];
        let d = boot_stats(&samples, Host::Direct).unwrap();
        assert_eq!(d.wall_median_s, 11.0);
        assert_eq!((d.wall_min_s, d.wall_max_s), (10.0, 30.0));
        assert!((d.uptime_median_s - 2.1).abs() < 1e-9);
        let doc = dom0_boot_json(&samples, &Dom0Options::default());
        assert_eq!(doc["microvisor"]["wall_to_ready_median_s"], 13.0);
        assert_eq!(doc["ratio_microvisor_over_direct"]["wall_to_ready"], 1.182);
        assert_eq!(doc["samples"].as_array().unwrap().len(), 6);
        assert_eq!(doc["environment"]["dom0_mem_mib"], 512);
        assert!(boot_stats(&[], Host::Direct).is_none());
        assert_eq!(median(vec![3.0, 1.0]), 2.0);
        assert_eq!(boot_order(0), [Host::Direct, Host::Microvisor]);
        assert_eq!(boot_order(1), [Host::Microvisor, Host::Direct]);
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
