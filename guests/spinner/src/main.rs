//! spinner: runs until stopped, printing a counter once per second of guest time.
//!
//! Guest time is the pvclock system time when the hypervisor provides it (a DomU built by
//! Dom0, or any domain whose hypervisor implements events), else the TSC at the frequency
//! the hypervisor reports in CPUID leaf `base + 3` (ECX, kHz). Output goes to the PV
//! console ring when there is one (`dom0 logs spin`), else to `console_io`. After a pause
//! it resumes counting from where it stopped, one line per second, without catching up.
//!
//! How it waits between prints:
//! - by default it sleeps on the single-shot timer, blocked and off its pCPU (it shows as
//!   `blocked` between prints), falling back to busy-waiting without timer events;
//! - with `busy` on its command line (`spin.toml`) it keeps its pCPU busy, so it shows as
//!   `running` and competes for its pCPU with the other vCPUs there. It still looks at its
//!   events on every turn, so it obeys `dom0 shutdown`/`dom0 reboot`.
#![no_std]
#![no_main]

use guest_rt::console::{self, PvStatus};
use guest_rt::time::{self, Clock, NS_PER_SEC, deadline_after};
use guest_rt::{BootInfo, ShutdownReason, control, events, println};

guest_rt::entry!(main);

fn main(boot: &BootInfo) -> ShutdownReason {
    let pv = console::init_pv();
    // The timer needs events even without a console.
    let have_events = guest_rt::hypervisor_present() && events::init().is_ok();
    let busy = boot.cmdline_value("busy").is_some();
    let how = match (
        time::clock(),
        have_events && events::timer_port().is_some(),
        busy,
    ) {
        (Clock::Pvclock, true, false) => "pvclock, sleeping on the timer",
        (Clock::Pvclock, _, _) => "pvclock, busy-waiting",
        (Clock::Tsc, _, _) => "TSC, busy-waiting",
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
        if busy {
            while time::now_ns() < next {
                // Events are not waited for here, so look at them: a shutdown request
                // arrives through one.
                if have_events {
                    control::on_events(&events::take_pending());
                }
                core::hint::spin_loop();
            }
        } else {
            time::sleep_until(next);
        }
        count += 1;
        println!("spin: {count}");
        next = deadline_after(time::now_ns(), NS_PER_SEC);
    }
}
