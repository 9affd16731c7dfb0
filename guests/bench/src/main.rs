//! bench: hypercall and CPUID-exit round trips, in TSC cycles, measured side by side.
//!
//! - `hypercall_null`: `xen_version(XENVER_version)`, the cheapest hypercall;
//! - `cpuid_exit`: `cpuid` of leaf 0x40000000, an intercepted exit handled without any
//!   hypercall dispatch.
//!
//! After a warm-up, each of [`BATCHES`] batches times [`ITERATIONS`] back-to-back calls of
//! each kind (alternating which kind goes first), with `lfence; rdtsc; lfence` around the
//! loop. The result is the median over batches of the per-call average. Output:
//!
//! ```text
//! bench hypercall_null <median> cycles
//! bench cpuid_exit <median> cycles
//! bench iterations <batches * iterations> count
//! ```
//!
//! Compare the two numbers of one run; absolute cycles under TCG mean little.
//!
//! With `pingpong=server` or `pingpong=client peer=<domid>` on its command line (two
//! DomUs created from Dom0, see `/etc/dom0/examples/pingpong.toml`) it measures
//! event-channel round trips between the two instead; see [`pingpong`].
#![no_std]
#![no_main]

use guest_rt::arch::cpu::{cpuid, rdtsc_fenced};
use guest_rt::fmt::HypercallRet;
use guest_rt::shared_abi::Hypercall;
use guest_rt::shared_abi::cpuid::XEN_CPUID_BASE;
use guest_rt::shared_abi::guest::hypercall_raw;
use guest_rt::shared_abi::version::XENVER_VERSION;
use guest_rt::stats::{median, per_iteration};
use guest_rt::{BootInfo, ShutdownReason, cmdline, println};

mod pingpong;

guest_rt::entry!(main);

/// Number of timed batches (odd, so the median is one batch's value).
const BATCHES: usize = 31;
/// Calls per batch and kind.
const ITERATIONS: u64 = 200;
/// Untimed calls of each kind before the first batch.
const WARMUP: u64 = 200;

fn null_hypercall() -> i64 {
    // SAFETY: XENVER_version takes no pointer; all other arguments are 0.
    unsafe { hypercall_raw(Hypercall::XenVersion as u64, XENVER_VERSION, 0, 0, 0, 0) }
}

fn cpuid_exit() {
    core::hint::black_box(cpuid(XEN_CPUID_BASE, 0));
}

/// Average TSC cycles per call of `f` over one batch.
fn time_batch(mut f: impl FnMut()) -> u64 {
    let start = rdtsc_fenced();
    for _ in 0..ITERATIONS {
        f();
    }
    let end = rdtsc_fenced();
    per_iteration(end.wrapping_sub(start), ITERATIONS)
}

fn main(boot: &BootInfo) -> ShutdownReason {
    if !guest_rt::hypervisor_present() {
        println!("bench: no hypervisor (Xen CPUID signature absent): nothing to measure");
        return ShutdownReason::Poweroff;
    }
    let version = null_hypercall();
    if version < 0 {
        println!(
            "bench: xen_version(XENVER_version) failed: {}",
            HypercallRet(version)
        );
        return ShutdownReason::Crash;
    }
    if let Some(role) = cmdline::value(boot.cmdline(), "pingpong") {
        return pingpong::run(role, boot.cmdline());
    }

    let hypercall = || {
        core::hint::black_box(null_hypercall());
    };
    for _ in 0..WARMUP {
        hypercall();
        cpuid_exit();
    }

    let mut hypercall_cycles = [0u64; BATCHES];
    let mut cpuid_cycles = [0u64; BATCHES];
    for (batch, (h, c)) in hypercall_cycles
        .iter_mut()
        .zip(cpuid_cycles.iter_mut())
        .enumerate()
    {
        if batch % 2 == 0 {
            *h = time_batch(hypercall);
            *c = time_batch(cpuid_exit);
        } else {
            *c = time_batch(cpuid_exit);
            *h = time_batch(hypercall);
        }
    }

    println!("bench: {BATCHES} batches x {ITERATIONS} calls per kind, median of batch averages");
    let h = median(&mut hypercall_cycles).unwrap_or(0);
    let c = median(&mut cpuid_cycles).unwrap_or(0);
    println!("bench hypercall_null {h} cycles");
    println!("bench cpuid_exit {c} cycles");
    println!("bench iterations {} count", BATCHES as u64 * ITERATIONS);
    ShutdownReason::Poweroff
}
