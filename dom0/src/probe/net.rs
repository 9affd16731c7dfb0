//! `net-selftest`: the network plumbing of the PV network back-end ([`crate::netdev`]),
//! end to end in Dom0 (as root, with the `tun` and `bridge` modules loaded).
//!
//! Ensures the bridge (default `br0` with `10.0.0.1/24`), creates two TAPs (default
//! `vifprobe` and `vifprobe1`), attaches them to the bridge and sets them up, writes one
//! broadcast Ethernet frame into the first and waits up to 3 s for the bridge to deliver it
//! to the second. One `ok:`/`FAIL:` line per step. The TAPs are not persistent: they are
//! gone when the command exits; the bridge stays.
#![forbid(unsafe_code)]

use std::io::{self, Write};
use std::time::{Duration, Instant};

use crate::netdev::{self, BROADCAST_MAC, Ipv4Cidr, Mac, Tap};

/// The EtherType of the test frame (IEEE 802 local experimental 1).
pub const TEST_ETHERTYPE: u16 = 0x88b5;
/// How long the second TAP waits for the frame.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(3);

/// The names and address the self-test uses.
#[derive(Debug, Clone)]
pub struct Setup<'a> {
    /// The bridge to ensure.
    pub bridge: &'a str,
    /// Its address, if the self-test creates it.
    pub addr: Ipv4Cidr,
    /// The TAP the frame is written into.
    pub sender: &'a str,
    /// The TAP that must receive it.
    pub receiver: &'a str,
}

/// The test frame: broadcast, from a generated MAC, [`TEST_ETHERTYPE`], padded to the
/// 60-byte Ethernet minimum, the payload naming this process.
#[must_use]
pub fn test_frame() -> Vec<u8> {
    let mut frame = Vec::with_capacity(60);
    frame.extend_from_slice(&BROADCAST_MAC.0);
    frame.extend_from_slice(&Mac::generated(b"dom0-probe net-selftest").0);
    frame.extend_from_slice(&TEST_ETHERTYPE.to_be_bytes());
    frame.extend_from_slice(format!("dom0-probe net-selftest {}", std::process::id()).as_bytes());
    frame.resize(frame.len().max(60), 0);
    frame
}

/// Runs the self-test, reporting to `out`. Returns whether every step passed. The TAPs
/// are deleted when it returns; the bridge is left.
///
/// # Errors
/// Only failures to write the report.
pub fn selftest(setup: &Setup<'_>, out: &mut dyn Write) -> io::Result<bool> {
    let mut pass = true;
    let mut check = |out: &mut dyn Write, what: String, r: io::Result<String>| {
        match r {
            Ok(detail) => writeln!(out, "ok: {what}{detail}")?,
            Err(e) => {
                pass = false;
                writeln!(out, "FAIL: {what}: {e}")?;
            }
        }
        io::Result::Ok(())
    };
    let bridge = setup.bridge;

    let created = netdev::ensure_bridge(bridge, Some(setup.addr)).map(|created| {
        if created {
            format!(" (created with {})", setup.addr)
        } else {
            " (it existed; address left alone)".to_owned()
        }
    });
    let bridge_ok = created.is_ok();
    check(out, format!("ensure bridge {bridge}"), created)?;
    if !bridge_ok {
        return Ok(false);
    }

    let mut taps = Vec::new();
    for name in [setup.sender, setup.receiver] {
        match Tap::create(name) {
            Ok(tap) => {
                check(out, format!("create TAP {}", tap.name()), Ok(String::new()))?;
                taps.push(tap);
            }
            Err(e) => check(out, format!("create TAP {name}"), Err(e))?,
        }
    }
    let [sender, receiver] = taps.as_slice() else {
        return Ok(false);
    };
    for tap in [sender, receiver] {
        let name = tap.name();
        let r = netdev::set_mtu(name, 1500)
            .and_then(|()| netdev::attach_to_bridge(bridge, name))
            .and_then(|()| netdev::set_up(name))
            .and_then(|()| match netdev::master_of(name) {
                Some(m) if m == bridge => Ok(format!(" (master {m})")),
                other => Err(io::Error::other(format!(
                    "sysfs names {other:?} as its master"
                ))),
            });
        check(out, format!("attach {name} to {bridge}, MTU 1500, up"), r)?;
    }

    let frame = test_frame();
    let wrote = sender
        .write_frame(&frame)
        .map(|()| format!(" ({} bytes, EtherType {TEST_ETHERTYPE:#06x})", frame.len()));
    let wrote_ok = wrote.is_ok();
    check(
        out,
        format!("write a broadcast frame into {}", sender.name()),
        wrote,
    )?;
    if wrote_ok {
        let got = wait_for(receiver, &frame);
        check(
            out,
            format!("{} receives it through {bridge}", receiver.name()),
            got,
        )?;
    }
    Ok(pass)
}

/// Reads frames from `tap` until `frame` arrives (other traffic, e.g. IPv6 neighbour
/// discovery, is skipped) or [`DELIVERY_TIMEOUT`] passes.
fn wait_for(tap: &Tap, frame: &[u8]) -> io::Result<String> {
    let start = Instant::now();
    let mut buf = vec![0u8; 65536];
    let mut others = 0u32;
    loop {
        match tap.read_frame(&mut buf) {
            Ok(n) if buf[..n] == *frame => {
                return Ok(format!(
                    " after {} ms ({others} other frame(s) skipped)",
                    start.elapsed().as_millis()
                ));
            }
            Ok(_) => others += 1,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if start.elapsed() > DELIVERY_TIMEOUT {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!(
                            "not delivered within {} s ({others} other frame(s) seen)",
                            DELIVERY_TIMEOUT.as_secs()
                        ),
                    ));
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(e),
        }
    }
}
