//! spinner: runs until stopped, printing a counter once per second of guest time.
//!
//! With events (a DomU built by Dom0, or any domain whose hypervisor implements them),
//! guest time is the pvclock system time and the guest sleeps on the single-shot timer
//! between prints, blocked and off its pCPU; its output goes to the PV console ring when
//! it has one (`dom0 logs spin`). Without events it falls back to what it always did: the
//! TSC at the frequency the hypervisor reports in CPUID leaf `base + 3` (ECX, kHz), busy
//! waiting, so it keeps its pCPU busy. After a pause it resumes counting from where it
//! stopped, one line per second, without catching up.
#![no_std]
#![no_main]

use guest_rt::console::{self, PvStatus};
use guest_rt::time::{self, Clock, NS_PER_SEC, deadline_after};
use guest_rt::{BootInfo, ShutdownReason, events, println};

guest_rt::entry!(main);

fn main(_boot: &BootInfo) -> ShutdownReason {
    let pv = console::init_pv();
    // The timer needs events even without a console.
    let have_events = guest_rt::hypervisor_present() && events::init().is_ok();
    let how = match (time::clock(), have_events && events::timer_port().is_some()) {
        (Clock::Pvclock, true) => "pvclock, sleeping on the timer",
        (Clock::Pvclock, false) => "pvclock, busy-waiting",
        (Clock::Tsc, _) => "TSC, busy-waiting",
    };
    println!("spinner: counting once per second of guest time ({how})");
    if let Err(e) = pv {
        println!("spinner: PV console unusable ({e}); printing through console_io");
    } else if let Ok(PvStatus::Active { port, .. }) = pv {
        println!("spinner: PV console on event channel {port}");
    }
    let mut count: u64 = 0;
    let mut next = deadline_after(time::now_ns(), NS_PER_SEC);
    loop {
        time::sleep_until(next);
        count += 1;
        println!("spin: {count}");
        next = deadline_after(time::now_ns(), NS_PER_SEC);
    }
}
