//! spinner: runs until stopped, printing a counter once per second of guest time.
//!
//! Guest time is the TSC, at the frequency the hypervisor reports in CPUID leaf
//! `base + 3` (ECX, kHz). The guest never halts, so it keeps its pCPU busy: the DomU to
//! watch preemption, pause and unpause with. After a pause it resumes counting from where it
//! stopped, one line per second, without catching up.
#![no_std]
#![no_main]

use guest_rt::arch::cpu::{cpuid, rdtsc_fenced};
use guest_rt::{BootInfo, ShutdownReason, println};

guest_rt::entry!(main);

/// TSC ticks per second used when the hypervisor does not say (no Xen leaves).
const FALLBACK_TSC_KHZ: u64 = 1_000_000;

fn tsc_khz() -> u64 {
    match guest_rt::xen_cpuid_base() {
        Some(base) => match u64::from(cpuid(base + 3, 0).ecx) {
            0 => FALLBACK_TSC_KHZ,
            khz => khz,
        },
        None => FALLBACK_TSC_KHZ,
    }
}

fn main(_boot: &BootInfo) -> ShutdownReason {
    let second = tsc_khz() * 1000;
    println!("spinner: counting once per second of guest time");
    let mut count: u64 = 0;
    let mut next = rdtsc_fenced() + second;
    loop {
        let now = rdtsc_fenced();
        if now >= next {
            count += 1;
            println!("spin: {count}");
            next = now + second;
        }
        core::hint::spin_loop();
    }
}
