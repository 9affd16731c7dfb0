//! echo: echoes its PV console input back.
//!
//! Prints a banner, then writes every byte it reads from the console back to the console,
//! with `\r` (what a terminal sends for Enter) turned into `\r\n`. Between inputs it is
//! blocked on events (`SCHEDOP_block`), off its pCPU. It runs until destroyed.
//!
//! It needs a PV console, which DomUs built by Dom0 have (`dom0 create
//! /etc/dom0/examples/echo.toml`). Without one (a boot-time DomU) there is nothing to
//! echo: it says so and powers off.
#![no_std]
#![no_main]

use guest_rt::console::{self, PvStatus};
use guest_rt::pvconsole::expand_cr;
use guest_rt::{BootInfo, ShutdownReason, print, println};

guest_rt::entry!(main);

fn main(_boot: &BootInfo) -> ShutdownReason {
    match console::init_pv() {
        Ok(PvStatus::Active { port, .. }) => {
            // CR LF: a terminal attached in raw mode (`dom0 console echo`) needs the CR.
            print!(
                "echo: ready on the PV console (event channel {port}); type and it comes back\r\n"
            );
        }
        Ok(PvStatus::Absent) => {
            println!("echo: no PV console (HVM_PARAM_CONSOLE_PFN is 0): nothing to echo");
            return ShutdownReason::Poweroff;
        }
        Err(e) => {
            println!("echo: PV console unusable: {e}");
            return ShutdownReason::Crash;
        }
    }
    let mut buf = [0u8; 256];
    loop {
        let n = console::read_blocking(&mut buf);
        if n == 0 {
            println!("echo: the console ring failed; giving up");
            return ShutdownReason::Crash;
        }
        expand_cr(&buf[..n], console::write_bytes);
    }
}
