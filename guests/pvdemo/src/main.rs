//! pvdemo: drives the guest's PV devices end to end.
//!
//! Brings up the PV console, then the block device `xvda` ([`guest_rt::blkfront`]):
//! writes [`pattern::PATTERN_BYTES`] (64 MiB) of the pattern of [`pattern`] from sector 0,
//! flushes, reads it back and verifies every sector, and prints
//! `pvdemo: disk: wrote and verified 64 MiB (write X MiB/s, read Y MiB/s)` with throughput
//! from pvclock time (I/O calls only, not the pattern generation). A domain without a
//! vbd prints `pvdemo: disk: none`; a failing disk `pvdemo: disk: FAILED: ...`.
//!
//! Then the network ([`net`]): vif 0 ([`guest_rt::netfront`]) with smoltcp, at the
//! back-end's `ip` hint or 10.0.0.2/24, answering ARP and ICMP echo and serving TCP echo
//! (port 7), HTTP (port 80) and a 16 MiB source (port 19); with `peer=A.B.C.D` on the
//! command line it also checks the peer's echo service with 64 KiB. Lines:
//! `pvdemo: net: vif 0 connected ...`, `pvdemo: net: serving ...`, or `pvdemo: net: none`
//! / `pvdemo: net: FAILED: ...`; `pvdemo: peer A.B.C.D: echoed 65536 bytes ok`.
//!
//! It keeps running, polling the network and blocked on events in between (it obeys
//! `dom0 shutdown`), so `dom0 logs pvdemo` can be read.
//!
//! Dom0 runs it with `/etc/dom0/examples/pvdemo.toml`; xtask's `dom0-pvdemo` scenario
//! compares the image's SHA-256 with the digest of the same pattern.
#![no_std]
#![no_main]

mod net;
mod pattern;

use guest_rt::blkfront::{BlkError, Disk, XVDA};
use guest_rt::console::{self, PvStatus};
use guest_rt::{BootInfo, ShutdownReason, control, events, println, time};

guest_rt::entry!(main);

/// Bytes per read/write call: many requests in flight, refilled as they complete.
const CHUNK: usize = 4 << 20;

/// The I/O buffer (zeroed, in `.bss`).
static BUF: spin::Mutex<[u8; CHUNK]> = spin::Mutex::new([0; CHUNK]);

fn main(boot: &BootInfo) -> ShutdownReason {
    match console::init_pv() {
        Ok(PvStatus::Active { .. }) => println!("pvdemo: console up"),
        Ok(PvStatus::Absent) => println!("pvdemo: no PV console; printing through console_io"),
        Err(e) => println!("pvdemo: PV console unusable ({e}); printing through console_io"),
    }
    match disk_test() {
        Ok(Some((write, read))) => println!(
            "pvdemo: disk: wrote and verified {} MiB (write {} MiB/s, read {} MiB/s)",
            pattern::PATTERN_BYTES >> 20,
            Rate(write),
            Rate(read)
        ),
        Ok(None) => println!("pvdemo: disk: none"),
        Err(why) => println!("pvdemo: disk: FAILED: {why}"),
    }
    let mut net = net::start(boot.cmdline());
    println!("pvdemo: running; waiting for events");
    loop {
        let next = match net.as_mut().map(net::Net::poll) {
            None => None,
            Some(Ok(next)) => Some(next),
            Some(Err(e)) => {
                println!("pvdemo: net: FAILED: {e}");
                net = None;
                None
            }
        };
        // Blocked between events; a `dom0 shutdown` request is acted on in here.
        match next {
            Some(net::Next::At(deadline)) if deadline > time::now_ns() => {
                if time::wait_event_until(deadline).is_none() {
                    // No timer events: poll again soon.
                    time::sleep_ns(1_000_000);
                }
            }
            // More work is waiting: only look at a shutdown request, without blocking.
            Some(_) => control::on_events(&events::take_pending()),
            None if events::initialised() => {
                events::wait_for_event();
            }
            None => time::sleep_ns(time::NS_PER_SEC),
        }
    }
}

/// Nanoseconds spent moving [`pattern::PATTERN_BYTES`], shown as MiB/s with one decimal.
struct Rate(u64);

impl core::fmt::Display for Rate {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let ns = u128::from(self.0.max(1));
        let tenths =
            u128::from(pattern::PATTERN_BYTES) * 10 * u128::from(time::NS_PER_SEC) / (ns << 20);
        write!(f, "{}.{}", tenths / 10, tenths % 10)
    }
}

/// Why the disk test failed.
enum Failure {
    Disk(&'static str, BlkError),
    TooSmall(u64),
    Mismatch(u64),
}

impl core::fmt::Display for Failure {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Failure::Disk(what, e) => write!(f, "{what}: {e}"),
            Failure::TooSmall(bytes) => write!(
                f,
                "the disk has {bytes} bytes, fewer than the {} the test writes",
                pattern::PATTERN_BYTES
            ),
            Failure::Mismatch(sector) => write!(f, "sector {sector} read back differs"),
        }
    }
}

/// Writes, flushes, reads back and verifies the pattern; returns the write and read times
/// (ns), or `None` when the domain has no `xvda`.
fn disk_test() -> Result<Option<(u64, u64)>, Failure> {
    let t0 = time::now_ns();
    let mut disk = match Disk::connect(XVDA) {
        Ok(disk) => disk,
        Err(BlkError::NoDisk(_)) => return Ok(None),
        Err(e) => return Err(Failure::Disk("xvda unavailable", e)),
    };
    let info = disk.info();
    println!(
        "pvdemo: disk: xvda connected in {} ms: {} sectors ({} MiB){}{}, event channel {}",
        (time::now_ns() - t0) / 1_000_000,
        info.sectors,
        info.bytes() >> 20,
        if info.read_only() { ", read-only" } else { "" },
        if info.flush { ", flush" } else { "" },
        disk.port()
    );
    if info.bytes() < pattern::PATTERN_BYTES {
        return Err(Failure::TooSmall(info.bytes()));
    }
    let mut buf = BUF.lock();
    let sectors_per_chunk = (CHUNK / pattern::SECTOR) as u64;
    let chunks = pattern::PATTERN_BYTES / CHUNK as u64;

    let mut write_ns = 0;
    for c in 0..chunks {
        let first = c * sectors_per_chunk;
        for (i, sector) in buf.chunks_exact_mut(pattern::SECTOR).enumerate() {
            pattern::fill_sector(first + i as u64, sector);
        }
        let t = time::now_ns();
        disk.write(first, &buf[..])
            .map_err(|e| Failure::Disk("write", e))?;
        write_ns += time::now_ns() - t;
    }
    let t = time::now_ns();
    disk.flush().map_err(|e| Failure::Disk("flush", e))?;
    write_ns += time::now_ns() - t;

    let mut read_ns = 0;
    for c in 0..chunks {
        let first = c * sectors_per_chunk;
        buf.fill(0);
        let t = time::now_ns();
        disk.read(first, &mut buf[..])
            .map_err(|e| Failure::Disk("read", e))?;
        read_ns += time::now_ns() - t;
        for (i, sector) in buf.chunks_exact(pattern::SECTOR).enumerate() {
            let index = first + i as u64;
            if !pattern::sector_matches(index, sector) {
                return Err(Failure::Mismatch(index));
            }
        }
    }
    Ok(Some((write_ns, read_ns)))
}
