//! hello: the smallest useful DomU guest.
//!
//! Greets, reports the hypervisor's Xen version and feature submap 0, checks that an
//! unknown hypercall returns `-ENOSYS`, reports RAM from the memory map, and powers off.
//! Without a hypervisor (bare QEMU) it says so, reports RAM, and powers off.
//!
//! When the domain has a PV console (a DomU built by Dom0), everything it prints goes to
//! the console ring (`dom0 logs hello`); otherwise (boot-time DomUs) to `console_io`, the
//! microvisor log, as before.
//!
//! With `events-selftest` on its command line it also checks events and time: a loopback
//! event channel (`alloc_unbound` + `bind_interdomain` to itself, then `send`) must reach
//! its upcall handler, and a 100 ms sleep on the single-shot timer must take at least
//! 100 ms of pvclock time; then the `vcpu_op` timer calls (`ETIME` for a past deadline
//! with `VCPU_SSHOTTMR_FUTURE`, `EINVAL` for another vCPU) and `SCHEDOP_poll` on the
//! timer's port. Each step prints one `hello: events: ...` line.
//!
//! With `flood=N` it then prints `N` numbered lines of 64 bytes
//! (`hello: flood <i>/<N> ...`) as fast as it can: far more than the PV console ring holds,
//! so it exercises the wait for the back-end while the ring is full.
//!
//! With `wait-for-dom0` on its command line it then waits, before powering off, until
//! domain 0 writes [`RELEASE_MAGIC`] into its memory at guest-physical
//! [`RELEASE_GPA`] through a foreign mapping (the Dom0 scenario tests use this to exercise
//! foreign mappings and the event interrupt its shutdown raises).
//!
//! With `grant-demo` on its command line it then shares a page with domain 0 through its
//! grant table: it places table frame 0, fills a page with the pattern byte `i` =
//! `i as u8 ^ 0x5a`, grants it to domain 0 writable as reference [`DEMO_REF`] and prints
//! `hello: granted page <gfn> as ref 8`. It sleeps on the timer until the page's first 8
//! bytes hold [`DOM0_MAGIC`] (written by `dom0-probe grant` through its grant mapping),
//! prints `hello: dom0 wrote through the grant`, tries `end_access(8)` (which must be
//! refused while Dom0 still maps the grant) and tells Dom0 the outcome in the page's
//! next 8 bytes ([`ACK_REFUSED`] or [`ACK_REVOKED`]); then it retries until the revoke
//! succeeds (once Dom0 has unmapped) and powers off. It gives up (crash) after
//! [`GRANT_WAIT_SECS`] seconds at each wait.
#![no_std]
#![no_main]

use core::sync::atomic::{AtomicU64, Ordering};

use guest_rt::console::{self, PvStatus};
use guest_rt::fmt::{HypercallRet, Size};
use guest_rt::shared_abi::guest::{
    evtchn_alloc_unbound, evtchn_bind_interdomain, evtchn_close, evtchn_send, hypercall_raw,
    sched_poll, vcpu_set_singleshot_timer, vcpu_stop_periodic_timer, vcpu_stop_singleshot_timer,
    xen_features, xen_version,
};
use guest_rt::shared_abi::vcpu::VCPU_SSHOTTMR_FUTURE;
use guest_rt::shared_abi::version::feature;
use guest_rt::shared_abi::{DomId, Errno};
use guest_rt::time::{self, NS_PER_SEC, deadline_after};
use guest_rt::{BootInfo, ShutdownReason, events, grants, println};

guest_rt::entry!(main);

/// A hypercall number that no Xen version defines.
const INVALID_HYPERCALL: u64 = 9999;
/// Where `wait-for-dom0` looks for Dom0's release (free low RAM, identity-mapped).
const RELEASE_GPA: u64 = 0x2000;
/// The value Dom0 writes to release the guest ("MVGO").
const RELEASE_MAGIC: u64 = 0x4F47_564D;
/// The grant reference `grant-demo` uses (the first after the reserved ones).
const DEMO_REF: u32 = 8;
/// What Dom0 writes into the first 8 bytes of the granted page ("DVMGRANT" read as
/// little-endian bytes).
const DOM0_MAGIC: u64 = 0x544e_4152_474d_5644;
/// What `grant-demo` writes at byte 8 of the page when `end_access` was refused while
/// Dom0 mapped the grant ("REFUSED!").
const ACK_REFUSED: u64 = 0x2144_4553_5546_4552;
/// ... and when it was not ("REVOKED!"): the entry could be taken back under a mapping.
const ACK_REVOKED: u64 = 0x2144_454b_4f56_4552;
/// How long `grant-demo` waits for Dom0 at each step.
const GRANT_WAIT_SECS: u64 = 120;

/// The page `grant-demo` grants: page-aligned, in `.bss`, accessed with atomics only
/// (Dom0 writes it concurrently).
#[repr(C, align(4096))]
struct SharedPage([AtomicU64; 512]);

static DEMO_PAGE: SharedPage = SharedPage([const { AtomicU64::new(0) }; 512]);

fn main(boot: &BootInfo) -> ShutdownReason {
    let pv = console::init_pv();
    println!("Hello, world! from a PVH guest on the microvisor");
    match pv {
        Ok(PvStatus::Active { paddr, port }) => {
            println!("hello: PV console ring at {paddr:#x}, event channel {port}");
        }
        Ok(PvStatus::Absent) => {}
        Err(e) => println!("hello: PV console unusable ({e}); printing through console_io"),
    }
    let ok = match guest_rt::xen_cpuid_base() {
        Some(base) => {
            println!("hello: Xen CPUID leaves at {base:#x}");
            let mut ok = hypervisor_checks();
            if guest_rt::cmdline::words(boot.cmdline()).any(|w| w == "events-selftest") {
                ok &= events_selftest();
            }
            ok
        }
        None => {
            println!("hello: no hypervisor (Xen CPUID signature absent): running on bare metal");
            true
        }
    };
    report_memory(boot);
    if let Some(n) = boot.cmdline_value("flood") {
        flood(n.parse().unwrap_or(0));
    }
    if guest_rt::cmdline::words(boot.cmdline()).any(|w| w == "wait-for-dom0") {
        wait_for_dom0();
    }
    let ok = if guest_rt::cmdline::words(boot.cmdline()).any(|w| w == "grant-demo") {
        grant_demo() && ok
    } else {
        ok
    };
    if ok {
        ShutdownReason::Poweroff
    } else {
        ShutdownReason::Crash
    }
}

/// Version, features and the -ENOSYS check. Returns whether every check held.
fn hypervisor_checks() -> bool {
    let (major, minor) = xen_version();
    println!("xen_version: {major}.{minor}");

    match xen_features(0) {
        Ok(bits) => {
            println!("xen_features[0]: {bits:#010x}");
            for (bit, name) in [
                (feature::AUTO_TRANSLATED_PHYSMAP, "auto_translated_physmap"),
                (feature::HVM_CALLBACK_VECTOR, "hvm_callback_vector"),
                (feature::HVM_SAFE_PVCLOCK, "hvm_safe_pvclock"),
            ] {
                let state = if bits & (1 << bit) != 0 { "yes" } else { "no" };
                println!("  XENFEAT {bit} {name}: {state}");
            }
        }
        Err(e) => println!("xen_features[0]: error -{e}"),
    }

    // SAFETY: an unknown hypercall takes no pointer arguments; all arguments are 0.
    let ret = unsafe { hypercall_raw(INVALID_HYPERCALL, 0, 0, 0, 0, 0) };
    if ret == Errno::ENOSYS.to_ret() {
        println!("invalid hypercall {INVALID_HYPERCALL} -> -ENOSYS (expected)");
        true
    } else {
        println!(
            "hello: ERROR: invalid hypercall {INVALID_HYPERCALL} -> {}, expected -ENOSYS",
            HypercallRet(ret)
        );
        false
    }
}

/// The `events-selftest` checks. Returns whether every check held.
fn events_selftest() -> bool {
    if let Err(e) = events::init() {
        println!("hello: events: ERROR: setting up events failed: -{e}");
        return false;
    }
    println!(
        "hello: events: set up (callback vector {:#x}, timer port {:?}, clock {:?})",
        events::CALLBACK_VECTOR,
        events::timer_port(),
        time::clock()
    );
    let loopback = loopback_event();
    let start = time::now_ns();
    time::sleep_ns(NS_PER_SEC / 10);
    let slept = time::now_ns().saturating_sub(start);
    let timer = slept >= NS_PER_SEC / 10;
    if timer {
        println!("hello: events: slept 100 ms on the timer: {slept} ns passed");
    } else {
        println!("hello: events: ERROR: a 100 ms sleep took only {slept} ns");
    }
    let vcpu_timers = vcpu_timer_ops();
    loopback && timer && vcpu_timers
}

/// The vcpu_op timer calls and `SCHEDOP_poll` on the timer's port.
fn vcpu_timer_ops() -> bool {
    let mut ok = true;
    let mut check = |what: &str, got: Result<(), Errno>, want: Result<(), Errno>| {
        if got == want {
            println!("hello: events: {what}: {got:?} (expected)");
        } else {
            println!("hello: events: ERROR: {what}: {got:?}, expected {want:?}");
            ok = false;
        }
    };
    check("stop_periodic_timer", vcpu_stop_periodic_timer(0), Ok(()));
    check(
        "singleshot timer in the past with VCPU_SSHOTTMR_FUTURE",
        vcpu_set_singleshot_timer(0, 1, VCPU_SSHOTTMR_FUTURE),
        Err(Errno::ETIME),
    );
    check(
        "singleshot timer for another vCPU",
        vcpu_set_singleshot_timer(1, 1, 0),
        Err(Errno::EINVAL),
    );
    let start = time::now_ns();
    let deadline = deadline_after(start, NS_PER_SEC / 20);
    check(
        "singleshot timer in 50 ms",
        vcpu_set_singleshot_timer(0, deadline, 0),
        Ok(()),
    );
    // Poll the timer's port until the deadline has passed (poll may return spuriously).
    let port = events::timer_port().unwrap_or(0);
    let mut polled = Ok(());
    while polled.is_ok() && time::now_ns() < deadline {
        polled = sched_poll(&[port], deadline_after(deadline, NS_PER_SEC));
    }
    check("poll on the timer port", polled, Ok(()));
    check(
        "stop_singleshot_timer",
        vcpu_stop_singleshot_timer(0),
        Ok(()),
    );
    ok
}

/// Sends an event to ourselves through a loopback channel and waits (at most a second)
/// for the upcall handler to record it.
fn loopback_event() -> bool {
    let ports = evtchn_alloc_unbound(DomId::SELF)
        .and_then(|a| evtchn_bind_interdomain(DomId::SELF, a).map(|b| (a, b)));
    let (a, b) = match ports {
        Ok(p) => p,
        Err(e) => {
            println!("hello: events: ERROR: loopback channel: -{e}");
            return false;
        }
    };
    // Binding may itself raise an event on `b`: forget what came so far.
    events::take_pending();
    let sent = evtchn_send(b);
    let deadline = deadline_after(time::now_ns(), NS_PER_SEC);
    let mut seen = false;
    while sent.is_ok() && !seen && time::now_ns() < deadline {
        // Without timer events this polls until the deadline.
        let fired = time::wait_event_until(deadline).unwrap_or_else(events::take_pending);
        seen = fired.contains(a);
    }
    let _ = evtchn_close(b);
    let _ = evtchn_close(a);
    match (sent, seen) {
        (Err(e), _) => println!("hello: events: ERROR: send on port {b}: -{e}"),
        (Ok(()), true) => println!("hello: events: loopback event {b} -> {a} delivered"),
        (Ok(()), false) => println!("hello: events: ERROR: no upcall for port {a} within 1 s"),
    }
    sent.is_ok() && seen
}

/// Prints `lines` numbered lines of 64 bytes each.
fn flood(lines: u32) {
    for i in 1..=lines {
        println!("hello: flood {i:>6}/{lines:<6} ....................................");
    }
}

/// Spins until Dom0 writes the release magic at [`RELEASE_GPA`].
fn wait_for_dom0() {
    println!("hello: waiting for dom0 to write {RELEASE_MAGIC:#x} at gpa {RELEASE_GPA:#x}");
    let flag = RELEASE_GPA as *const u64;
    loop {
        // SAFETY: RELEASE_GPA is RAM of this guest below its image, identity-mapped by
        // guest-rt, aligned, and used by nothing else; Dom0 writes it concurrently, hence
        // the volatile read.
        let v = unsafe { core::ptr::read_volatile(flag) };
        if v == RELEASE_MAGIC {
            println!("hello: released by dom0");
            return;
        }
        core::hint::spin_loop();
    }
}

/// The pattern word `w` of the demo page: bytes `i as u8 ^ 0x5a` for `i` in `8w..8w + 8`.
fn pattern_word(w: usize) -> u64 {
    let mut bytes = [0u8; 8];
    for (k, b) in bytes.iter_mut().enumerate() {
        *b = ((w * 8 + k) as u8) ^ 0x5a;
    }
    u64::from_le_bytes(bytes)
}

/// Sleeps (on the timer once events are set up) until `done` holds or `secs` pass.
/// Returns whether `done` held.
fn wait_until(secs: u64, mut done: impl FnMut() -> bool) -> bool {
    let deadline = deadline_after(time::now_ns(), secs * NS_PER_SEC);
    loop {
        if done() {
            return true;
        }
        if time::now_ns() >= deadline {
            return false;
        }
        time::sleep_ns(NS_PER_SEC / 20);
    }
}

/// The `grant-demo` steps (see the crate docs). Returns whether every step held.
fn grant_demo() -> bool {
    // ORDERING: the page is shared with Dom0, which writes it through its own mapping:
    // the fill is Relaxed and published by grant_access's Release store of the flags; the
    // guest reads Dom0's magic with Acquire, and its acknowledgement is SeqCst.
    let page = &DEMO_PAGE.0;
    if let Err(e) = grants::init() {
        println!("hello: grant-demo: ERROR: placing grant table frame 0 failed: -{e}");
        return false;
    }
    match guest_rt::shared_abi::guest::gnttab_query_size() {
        Ok((frames, max)) => println!(
            "hello: grant table frame 0 at gfn {:#x} ({frames} of {max} frames placed)",
            grants::table_gfn()
        ),
        Err(e) => println!("hello: grant-demo: query_size failed: -{e}"),
    }
    for (w, word) in page.iter().enumerate() {
        word.store(pattern_word(w), Ordering::Relaxed);
    }
    let gfn = (core::ptr::from_ref(&DEMO_PAGE).addr() as u64) >> 12;
    if let Err(e) = grants::grant_access(DEMO_REF, DomId::DOM0.0, gfn, false) {
        println!("hello: grant-demo: ERROR: granting the page failed: {e}");
        return false;
    }
    println!("hello: granted page {gfn:#x} as ref {DEMO_REF}");
    if !wait_until(GRANT_WAIT_SECS, || {
        page[0].load(Ordering::Acquire) == DOM0_MAGIC
    }) {
        println!("hello: grant-demo: ERROR: dom0 wrote nothing within {GRANT_WAIT_SECS} s");
        let _ = grants::end_access(DEMO_REF);
        return false;
    }
    println!("hello: dom0 wrote through the grant");
    let first = grants::end_access(DEMO_REF);
    let refused = first == Err(grants::GrantError::InUse);
    page[1].store(
        if refused { ACK_REFUSED } else { ACK_REVOKED },
        Ordering::SeqCst,
    );
    match first {
        Err(grants::GrantError::InUse) => {
            println!("hello: end_access({DEMO_REF}) refused while dom0 maps the grant");
        }
        Ok(()) => {
            println!("hello: grant-demo: ERROR: end_access({DEMO_REF}) succeeded while mapped");
            return false;
        }
        Err(e) => {
            println!("hello: grant-demo: ERROR: end_access({DEMO_REF}): {e}");
            return false;
        }
    }
    if !wait_until(GRANT_WAIT_SECS, || grants::end_access(DEMO_REF).is_ok()) {
        println!("hello: grant-demo: ERROR: still mapped after {GRANT_WAIT_SECS} s");
        return false;
    }
    println!("hello: end_access({DEMO_REF}) succeeded after dom0 unmapped");
    true
}

fn report_memory(boot: &BootInfo) {
    println!(
        "ram: {} ({} bytes) in {} memory map entries, ram_end {:#x}",
        Size(boot.ram_size()),
        boot.ram_size(),
        boot.memmap().len(),
        boot.ram_end()
    );
    println!("cmdline: \"{}\"", boot.cmdline());
}
