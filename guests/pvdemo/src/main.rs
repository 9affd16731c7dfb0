//! pvdemo: drives the guest's PV devices end to end.
//!
//! Brings up the PV console, then the block device `xvda` ([`guest_rt::blkfront`]):
//! writes [`pattern::PATTERN_BYTES`] (64 MiB) of the pattern of [`pattern`] from sector 0,
//! flushes, reads it back and verifies every sector, and prints
//! `pvdemo: disk: wrote and verified 64 MiB (write X MiB/s, read Y MiB/s)` with throughput
//! from pvclock time (I/O calls only, not the pattern generation). A missing or failing
//! disk gives one `pvdemo: disk: ...` line instead. Then it keeps running, blocked on
//! events (it obeys `dom0 shutdown`), so `dom0 logs pvdemo` can be read.
//!
//! Dom0 runs it with `/etc/dom0/examples/pvdemo.toml`; xtask's `dom0-pvdemo` scenario
//! compares the image's SHA-256 with the digest of the same pattern.
#![no_std]
#![no_main]

mod pattern;

use guest_rt::blkfront::{BlkError, Disk, XVDA};
use guest_rt::console::{self, PvStatus};
use guest_rt::{BootInfo, ShutdownReason, events, println, time};

guest_rt::entry!(main);

/// Bytes per read/write call: many requests in flight, refilled as they complete.
const CHUNK: usize = 4 << 20;

/// The I/O buffer (zeroed, in `.bss`).
static BUF: spin::Mutex<[u8; CHUNK]> = spin::Mutex::new([0; CHUNK]);

fn main(_boot: &BootInfo) -> ShutdownReason {
    match console::init_pv() {
        Ok(PvStatus::Active { .. }) => println!("pvdemo: console up"),
        Ok(PvStatus::Absent) => println!("pvdemo: no PV console; printing through console_io"),
        Err(e) => println!("pvdemo: PV console unusable ({e}); printing through console_io"),
    }
    match disk_test() {
        Ok((write, read)) => println!(
            "pvdemo: disk: wrote and verified {} MiB (write {} MiB/s, read {} MiB/s)",
            pattern::PATTERN_BYTES >> 20,
            Rate(write),
            Rate(read)
        ),
        Err(why) => println!("pvdemo: disk: FAILED: {why}"),
    }
    println!("pvdemo: running; waiting for events");
    loop {
        // Blocked between events; a `dom0 shutdown` request is acted on in here.
        if events::initialised() {
            events::wait_for_event();
        } else {
            time::sleep_ns(time::NS_PER_SEC);
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
/// (ns).
fn disk_test() -> Result<(u64, u64), Failure> {
    let t0 = time::now_ns();
    let mut disk = Disk::connect(XVDA).map_err(|e| Failure::Disk("xvda unavailable", e))?;
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
    Ok((write_ns, read_ns))
}
