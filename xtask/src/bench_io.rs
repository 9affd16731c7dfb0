//! `cargo xtask bench io`: one Dom0 boot under the microvisor that measures, side by side,
//!
//! 1. **disk**: the `pvdemo` DomU's throughput (its 64 MiB pattern written and read back
//!    through blkfront, dom0d's blkback and `/var/lib/dom0/disks/d1.img`) against Dom0
//!    writing and reading the same file natively (`dd`, 1 MiB blocks, 64 MiB, then `sync`
//!    after the write);
//! 2. **TCP**: Dom0 receiving 16 MiB from the same pvdemo's source service (port 19 at
//!    10.0.0.2, over netfront, dom0d's netback, its TAP and the bridge `br0`) against
//!    Dom0 receiving 16 MiB over loopback from a busybox `nc -ll -e` source; both read
//!    with busybox `nc HOST PORT | wc -c` and the byte count is checked;
//! 3. **event channels**: a round trip between two DomUs on different pCPUs (the `bench`
//!    guest's ping-pong mode, `/etc/dom0/examples/pingpong.toml`, both sides blocked
//!    between events) against the null hypercall, both timed by the client in TSC cycles.
//!
//! R rounds (`--reps`) of 1 and 2 with one pvdemo per round (Dom0's side first in odd
//! rounds for TCP, always first for the disk), then R ping-pong pairs, and the ratios of
//! each round. The DomU's disk figures are the ones pvdemo prints (timed with pvclock
//! around its I/O calls only); Dom0's disk and both TCP figures are timed with
//! CLOCK_MONOTONIC (`/proc/timer_list`) around the command. The backing file lives in
//! Dom0's initramfs, i.e. in RAM, for both.
//!
//! The TCP half degrades rather than fails: when pvdemo's network does not answer ping,
//! or a transfer does not deliver exactly 16 MiB, the report says
//! `not measured: <reason>` and carries no TCP number for the DomU. The disk half and
//! the ping-pong must work: their failures fail the bench.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};

use crate::bench::{Spread, TCG_CAVEAT, spread};
use crate::bench_lifecycle::{Facts, boot_and_run, fact, fact_u64, parse_prefixed_facts};
use crate::build::{display_path, xtask_dir};
use crate::dom0::Dom0Options;
use crate::qemu;

/// Default repetitions.
pub(crate) const DEFAULT_REPS: u32 = 3;

/// The boot's time limit at least (seconds): the three halves take several minutes
/// under TCG, more than `bench`'s default `--timeout`.
pub(crate) const MIN_TIMEOUT_S: u64 = 900;

/// Bytes each side moves per repetition (pvdemo's pattern size).
const BYTES: u64 = 64 << 20;

/// Bytes of one TCP transfer (pvdemo's source service sends exactly this).
const TCP_BYTES: u64 = 16 << 20;

/// pvdemo's address (`/etc/dom0/examples/pvdemo.toml`) and source port.
const GUEST_IP: &str = "10.0.0.2";
const GUEST_SOURCE_PORT: u16 = 19;

/// The Dom0 loopback source's port.
const LOOPBACK_PORT: u16 = 19019;

/// Seconds one TCP transfer may take.
const TCP_TIMEOUT_S: u32 = 120;

/// Pings (one a second) before pvdemo's network counts as down.
const PING_TRIES: u32 = 60;

/// How the event-channel round trip is measured.
pub(crate) const PINGPONG_METHOD: &str = "bench guest pingpong=server/client, two DomUs \
    on different pCPUs, both blocked between events (SCHEDOP_block; a round trip is two \
    wake-ups), each round trip timed with rdtsc by the client (median of 496); \
    null hypercall: xen_version, average of 200 back-to-back calls per batch (median of \
    31 batches), measured by the same client alternating with the round trips";

/// How the TCP transfers are measured.
pub(crate) const TCP_METHOD: &str = "busybox `nc HOST PORT | wc -c` in Dom0, 16 MiB, \
    timed with CLOCK_MONOTONIC; DomU: pvdemo's source on 10.0.0.2:19 over netfront, \
    netback, TAP and br0; loopback: `nc -ll -p 19019 -e` sending 16 MiB of zeros";

/// The shell script run in Dom0.
pub(crate) fn script(reps: u32) -> String {
    format!(
        r#"img=/var/lib/dom0/disks/d1.img
now() {{ awk '/^now at/ {{ print $3; exit }}' /proc/timer_list; }}
printf '#!/bin/sh\nexec head -c {TCP_BYTES} /dev/zero\n' >/tmp/io-source
chmod +x /tmp/io-source
nc -ll -p {LOOPBACK_PORT} -e /tmp/io-source >/dev/null 2>&1 &
src=$!
# nc's stdin: a FIFO held open here, so nc never sees end of file on it.
rm -f /tmp/io-nc-in; mkfifo /tmp/io-nc-in; exec 3<>/tmp/io-nc-in
tcp() {{ t0=$(now); n=$(timeout {TCP_TIMEOUT_S} nc $1 $2 <&3 2>/dev/null | wc -c); t1=$(now); echo "$((t1-t0)) $n"; }}
netup() {{
  k=0
  while [ $k -lt {PING_TRIES} ]; do
    ping -c 1 -W 1 {GUEST_IP} >/dev/null 2>&1 && return 0
    sleep 1; k=$((k+1))
  done
  return 1
}}
nonet=""
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
  if [ -z "$nonet" ] && ! netup; then
    nonet="{GUEST_IP} did not answer ping within {PING_TRIES} s (pvdemo: $(dom0 logs pvdemo 2>/dev/null | grep 'pvdemo: net' | tail -n 1 | tr -d '\r'))"
  fi
  [ $((i % 2)) -eq 1 ] && echo "io tcp_loopback $i $(tcp 127.0.0.1 {LOOPBACK_PORT})"
  if [ -n "$nonet" ]; then
    echo "io tcp_domu $i - $nonet"
  else
    echo "io tcp_domu $i $(tcp {GUEST_IP} {GUEST_SOURCE_PORT})"
  fi
  [ $((i % 2)) -eq 0 ] && echo "io tcp_loopback $i $(tcp 127.0.0.1 {LOOPBACK_PORT})"
  dom0 destroy pvdemo >/dev/null 2>&1
  i=$((i+1))
done
kill $src 2>/dev/null
exec 3<&-
pp=/etc/dom0/examples/pingpong.toml
i=1
while [ $i -le {reps} ]; do
  err=""
  out=$(dom0 create $pp 2>&1) || err="$err dom0 create (server): $(echo "$out" | tr -d '\n');"
  s=$(dom0 info pingpong -o jsonl 2>/dev/null | sed -n 's/.*"domid":\([0-9]*\).*/\1/p')
  out=$(dom0 create --set name=pingpong-client --set "cmdline=pingpong=client peer=$s" $pp 2>&1) || err="$err dom0 create (client): $(echo "$out" | tr -d '\n');"
  j=0
  while [ -z "$err" ] && [ $j -lt 600 ]; do
    dom0 logs pingpong-client 2>/dev/null | grep -qE 'bench pingpong: (done|FAILED)' && break
    sleep 0.2; j=$((j+1))
  done
  echo "io pp_error $i $err"
  echo "io pp_server $i $(dom0 info pingpong -o jsonl 2>&1 | tr -d '\n')"
  echo "io pp_client $i $(dom0 info pingpong-client -o jsonl 2>&1 | tr -d '\n')"
  echo "io pp_server_log $i $(dom0 logs pingpong 2>&1 | grep 'bench ' | tr -d '\r' | tr '\n' '|')"
  echo "io pp_client_log $i $(dom0 logs pingpong-client 2>&1 | grep 'bench ' | tr -d '\r' | tr '\n' '|')"
  dom0 destroy pingpong-client >/dev/null 2>&1
  dom0 destroy pingpong >/dev/null 2>&1
  i=$((i+1))
done
"#
    )
}

/// One disk repetition, MiB/s.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Rep {
    pub(crate) domu_write: f64,
    pub(crate) domu_read: f64,
    pub(crate) native_write: f64,
    pub(crate) native_read: f64,
}

/// The TCP transfers of every repetition, MiB/s, or why they were not measured.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Tcp {
    pub(crate) loopback: Result<Vec<f64>, String>,
    pub(crate) domu: Result<Vec<f64>, String>,
}

/// One ping-pong pair.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct PingPong {
    /// Median round trip, TSC cycles.
    pub(crate) round_trip: f64,
    /// Median null hypercall, TSC cycles.
    pub(crate) null_hypercall: f64,
    /// (domid, pCPU) of the server and of the client.
    pub(crate) server: (u64, u64),
    pub(crate) client: (u64, u64),
}

/// Everything one run measured.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Io {
    pub(crate) disk: Vec<Rep>,
    pub(crate) tcp: Tcp,
    pub(crate) pingpong: Vec<PingPong>,
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

fn mib_per_s(bytes: u64, ns: u64) -> Result<f64> {
    if ns == 0 {
        bail!("a transfer took 0 ns");
    }
    Ok((bytes as f64 / f64::from(1u32 << 20)) / (ns as f64 / 1e9))
}

/// One TCP transfer's `<ns> <bytes>` (or `- <reason>`): MiB/s, or why not measured.
fn tcp_rate(value: &str) -> Result<f64, String> {
    if let Some(reason) = value.strip_prefix('-') {
        return Err(reason.trim().to_owned());
    }
    let mut parts = value.split_whitespace();
    let (Some(ns), Some(bytes), None) = (parts.next(), parts.next(), parts.next()) else {
        return Err(format!("malformed transfer report `{value}`"));
    };
    let (Ok(ns), Ok(bytes)) = (ns.parse::<u64>(), bytes.parse::<u64>()) else {
        return Err(format!("malformed transfer report `{value}`"));
    };
    if bytes != TCP_BYTES {
        return Err(format!(
            "received {bytes} bytes, not {TCP_BYTES} (refused, cut short or over \
             {TCP_TIMEOUT_S} s)"
        ));
    }
    mib_per_s(bytes, ns).map_err(|e| e.to_string())
}

/// Every repetition's `key` transfer, or the first reason one was not measured.
fn tcp_side(facts: &Facts, key: &str, reps: u32) -> Result<Vec<f64>, String> {
    (1..=reps)
        .map(|i| {
            let v = fact(facts, key, i).map_err(|e| format!("{e:#}"))?;
            tcp_rate(v).map_err(|why| format!("round {i}: {why}"))
        })
        .collect()
}

/// `bench <name> <N> cycles` in a `|`-joined log.
fn cycles(log: &str, name: &str) -> Result<f64> {
    let prefix = format!("bench {name} ");
    let entry = log
        .split('|')
        .map(str::trim)
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .with_context(|| format!("no `bench {name}` line"))?;
    let n: u64 = entry
        .strip_suffix(" cycles")
        .and_then(|n| n.trim().parse().ok())
        .with_context(|| format!("bad `bench {name}` line: `{entry}`"))?;
    ensure!(n > 0, "`bench {name}` is 0 cycles");
    Ok(n as f64)
}

/// (domid, pcpu) from a `dom0 info -o jsonl` line.
fn placement(facts: &Facts, key: &str, i: u32) -> Result<(u64, u64)> {
    let raw = fact(facts, key, i)?;
    let doc: Value = serde_json::from_str(raw)
        .with_context(|| format!("`{key} {i}` is not `dom0 info` JSON: `{raw}`"))?;
    let field = |f: &str| {
        doc.get(f)
            .and_then(Value::as_u64)
            .with_context(|| format!("`{key} {i}` has no numeric `{f}`: `{raw}`"))
    };
    Ok((field("domid")?, field("pcpu")?))
}

fn pingpong(facts: &Facts, i: u32) -> Result<PingPong> {
    let err = fact(facts, "pp_error", i)?;
    ensure!(err.is_empty(), "{err}");
    let client_log = fact(facts, "pp_client_log", i)?;
    let server_log = fact(facts, "pp_server_log", i)?;
    if let Some(failed) = client_log
        .split('|')
        .chain(server_log.split('|'))
        .find(|l| l.contains("FAILED"))
    {
        bail!("`{failed}`");
    }
    ensure!(
        client_log.contains("bench pingpong: done"),
        "the client did not finish within 120 s; client: `{client_log}`; server: `{server_log}`"
    );
    let server = placement(facts, "pp_server", i)?;
    let client = placement(facts, "pp_client", i)?;
    ensure!(
        server.1 != client.1,
        "server (domain {}) and client (domain {}) ran on the same pCPU {}",
        server.0,
        client.0,
        server.1
    );
    Ok(PingPong {
        round_trip: cycles(client_log, "evtchn_pingpong")?,
        null_hypercall: cycles(client_log, "hypercall_null")?,
        server,
        client,
    })
}

/// Turns the script's output into the measurements.
pub(crate) fn parse(output: &str, reps: u32) -> Result<Io> {
    let facts: Facts = parse_prefixed_facts(output, "io ")?;
    let disk = (1..=reps)
        .map(|i| {
            let (domu_write, domu_read) = pvdemo_rates(fact(&facts, "pvdemo", i)?)
                .with_context(|| format!("repetition {i}"))?;
            Ok(Rep {
                domu_write,
                domu_read,
                native_write: mib_per_s(BYTES, fact_u64(&facts, "native_write_ns", i)?)?,
                native_read: mib_per_s(BYTES, fact_u64(&facts, "native_read_ns", i)?)?,
            })
        })
        .collect::<Result<_>>()?;
    let tcp = Tcp {
        loopback: tcp_side(&facts, "tcp_loopback", reps),
        domu: tcp_side(&facts, "tcp_domu", reps),
    };
    let pingpong = (1..=reps)
        .map(|i| pingpong(&facts, i).with_context(|| format!("event-channel ping-pong, pair {i}")))
        .collect::<Result<_>>()?;
    Ok(Io {
        disk,
        tcp,
        pingpong,
    })
}

/// One result row: name, spread, decimals shown.
pub(crate) struct Row {
    pub(crate) name: &'static str,
    pub(crate) spread: Spread,
    pub(crate) decimals: usize,
}

fn row<T>(name: &'static str, of: &[T], f: impl Fn(&T) -> f64, decimals: usize) -> Row {
    Row {
        name,
        spread: spread(&of.iter().map(f).collect::<Vec<_>>()),
        decimals,
    }
}

impl Io {
    /// Every measured result and ratio, in report order.
    pub(crate) fn rows(&self) -> Vec<Row> {
        let d = &self.disk;
        let mut rows = vec![
            row("domu_write_mib_s", d, |r| r.domu_write, 3),
            row("native_write_mib_s", d, |r| r.native_write, 3),
            row(
                "write_ratio_domu_to_native",
                d,
                |r| r.domu_write / r.native_write,
                3,
            ),
            row("domu_read_mib_s", d, |r| r.domu_read, 3),
            row("native_read_mib_s", d, |r| r.native_read, 3),
            row(
                "read_ratio_domu_to_native",
                d,
                |r| r.domu_read / r.native_read,
                3,
            ),
        ];
        if let Ok(domu) = &self.tcp.domu {
            rows.push(row("tcp_domu_to_dom0_mib_s", domu, |v| *v, 3));
        }
        if let Ok(lo) = &self.tcp.loopback {
            rows.push(row("tcp_dom0_loopback_mib_s", lo, |v| *v, 3));
        }
        if let (Ok(domu), Ok(lo)) = (&self.tcp.domu, &self.tcp.loopback) {
            let pairs: Vec<(f64, f64)> = domu.iter().copied().zip(lo.iter().copied()).collect();
            rows.push(row("tcp_ratio_domu_to_loopback", &pairs, |(a, b)| a / b, 3));
        }
        let p = &self.pingpong;
        rows.push(row("evtchn_pingpong_cycles", p, |r| r.round_trip, 0));
        rows.push(row("hypercall_null_cycles", p, |r| r.null_hypercall, 0));
        rows.push(row(
            "pingpong_ratio_to_null_hypercall",
            p,
            |r| r.round_trip / r.null_hypercall,
            1,
        ));
        rows
    }

    /// What was not measured, and why.
    pub(crate) fn not_measured(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Err(why) = &self.tcp.domu {
            out.push(format!(
                "TCP DomU to Dom0 (and its ratio): not measured: {why}"
            ));
        }
        if let Err(why) = &self.tcp.loopback {
            out.push(format!(
                "TCP Dom0 loopback (and the ratio): not measured: {why}"
            ));
        }
        out
    }
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// The JSON document of `bench io`.
pub(crate) fn to_json(io: &Io, opts: &Dom0Options) -> Value {
    let tcp_samples = |side: &Result<Vec<f64>, String>| match side {
        Ok(v) => json!(v.iter().copied().map(round3).collect::<Vec<_>>()),
        Err(_) => Value::Null,
    };
    let mut doc = json!({
        "benchmark": "io",
        "environment": {
            "qemu_accel": qemu::ACCEL, "qemu_cpu": qemu::CPU, "qemu_smp": qemu::SMP,
            "dom0_mem_mib": opts.mem_mib,
            "domu_config": "/etc/dom0/examples/pvdemo.toml",
            "backing_file": "/var/lib/dom0/disks/d1.img (Dom0 initramfs, RAM)",
            "bytes_per_direction": BYTES,
            "tcp_bytes": TCP_BYTES,
            "tcp_method": TCP_METHOD,
            "pingpong_config": "/etc/dom0/examples/pingpong.toml",
            "pingpong_method": PINGPONG_METHOD,
        },
        "reps": io.disk.len(),
        "not_measured": io.not_measured(),
        "samples": io.disk.iter().map(|r| json!({
            "domu_write_mib_s": r.domu_write, "domu_read_mib_s": r.domu_read,
            "native_write_mib_s": round3(r.native_write), "native_read_mib_s": round3(r.native_read),
        })).collect::<Vec<_>>(),
        "tcp_samples": {
            "domu_to_dom0_mib_s": tcp_samples(&io.tcp.domu),
            "dom0_loopback_mib_s": tcp_samples(&io.tcp.loopback),
        },
        "pingpong_samples": io.pingpong.iter().map(|p| json!({
            "evtchn_pingpong_cycles": p.round_trip, "hypercall_null_cycles": p.null_hypercall,
            "server_domid": p.server.0, "server_pcpu": p.server.1,
            "client_domid": p.client.0, "client_pcpu": p.client.1,
        })).collect::<Vec<_>>(),
        "note": TCG_CAVEAT,
    });
    for r in io.rows() {
        let s = r.spread;
        doc[r.name] =
            json!({ "median": round3(s.median), "min": round3(s.min), "max": round3(s.max) });
    }
    doc
}

/// The table printed after a run.
pub(crate) fn table(io: &Io, opts: &Dom0Options) -> String {
    let mut out = format!(
        "bench io (QEMU {}, -smp {}, Dom0 {} MiB, pvdemo 64 MiB each way and 16 MiB TCP, \
         {} reps; {} ping-pong pairs):\n",
        qemu::ACCEL,
        qemu::SMP,
        opts.mem_mib,
        io.disk.len(),
        io.pingpong.len()
    );
    out += &format!(
        "  {:<34} {:>12}  {:^26}\n",
        "result", "median", "(min .. max)"
    );
    for r in io.rows() {
        let (s, d) = (r.spread, r.decimals);
        out += &format!(
            "  {:<34} {:>12.d$}  {:>11.d$} .. {:<11.d$}\n",
            r.name, s.median, s.min, s.max
        );
    }
    let pcpus: Vec<String> = io
        .pingpong
        .iter()
        .map(|p| format!("{}/{}", p.server.1, p.client.1))
        .collect();
    out += &format!(
        "  ping-pong pCPUs (server/client): {}\n  ping-pong: {PINGPONG_METHOD}\n  TCP: {TCP_METHOD}\n",
        pcpus.join(", ")
    );
    for line in io.not_measured() {
        out += &format!("  {line}\n");
    }
    out += &format!("note: {TCG_CAVEAT}\n");
    out
}

/// Boots Dom0 once, runs the script, prints the table and writes
/// `target/xtask/bench/io.json`.
pub(crate) fn run(qemu_bin: &Path, timeout: Duration, reps: u32, opts: &Dom0Options) -> Result<()> {
    let reps = reps.max(1);
    let timeout = timeout.max(Duration::from_secs(MIN_TIMEOUT_S));
    eprintln!(
        "xtask: io: one Dom0 boot, {reps} rounds of Dom0 dd and TCP loopback then a pvdemo \
         DomU on the same file and over TCP, then {reps} event-channel ping-pong pairs \
         (timeout {} s)",
        timeout.as_secs()
    );
    let (text, out_dir) = boot_and_run("io", &script(reps), qemu_bin, timeout, opts)?;
    let io = parse(&text, reps)
        .with_context(|| format!("script output in {}/output.txt", display_path(&out_dir)))?;
    print!("{}", table(&io, opts));
    let json_path = xtask_dir("bench").join("io.json");
    let body = serde_json::to_string_pretty(&to_json(&io, opts))
        .context("could not serialize the bench results")?;
    std::fs::write(&json_path, body + "\n")
        .with_context(|| format!("could not write {}", json_path.display()))?;
    println!("wrote {}", display_path(&json_path));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(domid: u32, pcpu: u32) -> String {
        format!(
            r#"{{"api_version":"dom0/v1","domid":{domid},"name":"x","state":"blocked","pcpu":{pcpu}}}"#
        )
    }

    fn good(reps: u32) -> String {
        let mut s = String::from("noise\n");
        for i in 1..=reps {
            s += &format!("io native_write_ns {i} 1000000000\nio native_read_ns {i} 500000000\n");
            s += &format!(
                "io pvdemo {i} pvdemo: disk: wrote and verified 64 MiB (write 8.0 MiB/s, read 16.0 MiB/s)\n"
            );
            s += &format!("io tcp_loopback {i} 100000000 16777216\n");
            s += &format!("io tcp_domu {i} 2000000000 16777216\n");
        }
        for i in 1..=reps {
            s += &format!("io pp_error {i}\n");
            s += &format!("io pp_server {i} {}\n", info(10 + i, 1));
            s += &format!("io pp_client {i} {}\n", info(20 + i, 2));
            s += &format!(
                "io pp_server_log {i} bench pingpong: server domain 11: waiting|bench pingpong: server: port 5 offered|\n"
            );
            s += &format!(
                "io pp_client_log {i} bench pingpong: client domain 21: bound|bench pingpong: 31 batches|\
                 bench evtchn_pingpong 50000 cycles|bench hypercall_null 2000 cycles|\
                 bench pingpong_round_trips 496 count|bench pingpong: done (blocked between events)|\n"
            );
        }
        s
    }

    fn median_of(io: &Io, name: &str) -> f64 {
        io.rows()
            .into_iter()
            .find(|r| r.name == name)
            .unwrap_or_else(|| panic!("no row {name}"))
            .spread
            .median
    }

    #[test]
    fn parses_rates_and_ratios() {
        let io = parse(&good(3), 3).unwrap();
        assert_eq!(io.disk.len(), 3);
        assert_eq!(io.disk[0].native_write, 64.0);
        assert_eq!(io.disk[0].native_read, 128.0);
        assert_eq!(median_of(&io, "write_ratio_domu_to_native"), 0.125);
        assert_eq!(median_of(&io, "read_ratio_domu_to_native"), 0.125);
        assert_eq!(median_of(&io, "tcp_dom0_loopback_mib_s"), 160.0);
        assert_eq!(median_of(&io, "tcp_domu_to_dom0_mib_s"), 8.0);
        assert_eq!(median_of(&io, "tcp_ratio_domu_to_loopback"), 0.05);
        assert_eq!(median_of(&io, "evtchn_pingpong_cycles"), 50000.0);
        assert_eq!(median_of(&io, "hypercall_null_cycles"), 2000.0);
        assert_eq!(median_of(&io, "pingpong_ratio_to_null_hypercall"), 25.0);
        assert_eq!(io.pingpong[0].server, (11, 1));
        assert_eq!(io.pingpong[2].client, (23, 2));
        assert!(io.not_measured().is_empty());
        let doc = to_json(&io, &Dom0Options::default());
        assert_eq!(doc["write_ratio_domu_to_native"]["median"], 0.125);
        assert_eq!(doc["tcp_ratio_domu_to_loopback"]["median"], 0.05);
        assert_eq!(doc["pingpong_ratio_to_null_hypercall"]["median"], 25.0);
        assert_eq!(doc["pingpong_samples"][1]["client_pcpu"], 2);
        assert_eq!(doc["not_measured"], json!([]));
        let t = table(&io, &Dom0Options::default());
        assert!(t.contains("read_ratio_domu_to_native"), "{t}");
        assert!(t.contains("(server/client): 1/2, 1/2, 1/2"), "{t}");
        assert!(!t.contains("not measured"), "{t}");
    }

    #[test]
    fn tcp_degrades_to_not_measured() {
        let out = good(2)
            .replace(
                "io tcp_domu 1 2000000000 16777216",
                "io tcp_domu 1 - 10.0.0.2 did not answer ping within 60 s (pvdemo: pvdemo: net: none)",
            )
            .replace(
                "io tcp_domu 2 2000000000 16777216",
                "io tcp_domu 2 - 10.0.0.2 did not answer ping within 60 s (pvdemo: pvdemo: net: none)",
            );
        let io = parse(&out, 2).unwrap();
        let names: Vec<_> = io.rows().iter().map(|r| r.name).collect();
        assert!(!names.contains(&"tcp_domu_to_dom0_mib_s"), "{names:?}");
        assert!(!names.contains(&"tcp_ratio_domu_to_loopback"), "{names:?}");
        assert!(names.contains(&"tcp_dom0_loopback_mib_s"), "{names:?}");
        let nm = io.not_measured();
        assert_eq!(nm.len(), 1);
        assert!(
            nm[0].contains("not measured: round 1: 10.0.0.2 did not answer ping"),
            "{nm:?}"
        );
        let doc = to_json(&io, &Dom0Options::default());
        assert!(doc.get("tcp_domu_to_dom0_mib_s").is_none());
        assert_eq!(doc["tcp_samples"]["domu_to_dom0_mib_s"], Value::Null);
        assert!(
            table(&io, &Dom0Options::default())
                .contains("TCP DomU to Dom0 (and its ratio): not measured")
        );

        // A short transfer is not a measurement either, nor a missing line.
        let out = good(2).replace(
            "io tcp_domu 2 2000000000 16777216",
            "io tcp_domu 2 2000000000 1000",
        );
        let why = parse(&out, 2).unwrap().tcp.domu.unwrap_err();
        assert!(why.contains("round 2: received 1000 bytes"), "{why}");
        let out = good(2).replace("io tcp_loopback 2 100000000 16777216\n", "");
        let why = parse(&out, 2).unwrap().tcp.loopback.unwrap_err();
        assert!(why.contains("tcp_loopback 2"), "{why}");
        assert_eq!(
            tcp_rate("5 16777216 9"),
            Err("malformed transfer report `5 16777216 9`".into())
        );
        assert!(tcp_rate("0 16777216").is_err());
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

    #[test]
    fn pingpong_failures_fail_the_bench() {
        let err = |out: String| format!("{:#}", parse(&out, 1).unwrap_err());
        let e = err(good(1).replace(
            "bench pingpong: done (blocked between events)|",
            "bench pingpong: FAILED: the server did not answer within 60 s|",
        ));
        assert!(
            e.contains("ping-pong, pair 1") && e.contains("did not answer"),
            "{e}"
        );
        let e = err(good(1).replace("|bench pingpong: done (blocked between events)", ""));
        assert!(e.contains("did not finish"), "{e}");
        let e = err(good(1).replace(
            "io pp_error 1\n",
            "io pp_error 1 dom0 create (client): boom;\n",
        ));
        assert!(e.contains("boom"), "{e}");
        let e = err(good(1).replace(&info(21, 2), &info(21, 1)));
        assert!(e.contains("same pCPU 1"), "{e}");
        let e = err(good(1).replace("bench evtchn_pingpong 50000 cycles|", ""));
        assert!(e.contains("no `bench evtchn_pingpong` line"), "{e}");
        let e = err(good(1).replace(
            "bench hypercall_null 2000 cycles",
            "bench hypercall_null x cycles",
        ));
        assert!(e.contains("bad `bench hypercall_null` line"), "{e}");
        let e = err(good(1).replace(&info(11, 1), "Error: no such domain"));
        assert!(e.contains("not `dom0 info` JSON"), "{e}");
    }
}
