//! # guest-rt: a runtime for DomU guest kernels on the microvisor
//!
//! A guest kernel built on this crate is a `#![no_std] #![no_main]` binary for
//! `x86_64-unknown-none` that names its main function with [`entry!`]:
//!
//! ```ignore
//! #![no_std]
//! #![no_main]
//!
//! use guest_rt::{BootInfo, ShutdownReason, println};
//!
//! guest_rt::entry!(main);
//!
//! fn main(boot: &BootInfo) -> ShutdownReason {
//!     println!("Hello! cmdline: {}", boot.cmdline());
//!     ShutdownReason::Poweroff
//! }
//! ```
//!
//! Its `build.rs` calls [`build::link_guest`] (guest-rt as a build-dependency) to link with
//! the shared linker script, and it is
//! built with `-C relocation-model=static -C code-model=small`.
//!
//! ## What the runtime does
//!
//! 1. **PVH entry** ([`arch`], bare-metal only): the Xen ELF note, 32-bit entry, own GDT,
//!    zeroed `.bss`, a 64 KiB stack, identity page tables for 0..4 GiB with 2 MiB pages,
//!    long mode.
//! 2. **Boot**: installs an IDT for exceptions 0–31, detects the hypervisor by the Xen
//!    CPUID signature, copies and validates `hvm_start_info`, its memory map and command
//!    line into a [`BootInfo`].
//! 3. Calls `main(&BootInfo)`, then shuts down with the [`ShutdownReason`] it returns.
//!
//! An unexpected exception prints the vector, error code, RIP and CR2, and shuts down with
//! [`ShutdownReason::Crash`]; so does a panic (`panic: <location> <message>`).
//! [`expect_fault`] runs code that must fault and returns the fault instead.
//!
//! ## Events, time and the PV console (opt-in)
//!
//! Nothing of this runs unless the guest asks for it, so guests that do not (`hostile`,
//! `bench`) keep interrupts disabled and print through `console_io` as before.
//!
//! - [`console::init_pv`]: if the domain has a PV console (`HVM_PARAM_CONSOLE_PFN` is not
//!   0), sets up events and sends `print!`/`println!` to the console ring; otherwise changes
//!   nothing. [`console::read`] / [`console::read_blocking`] read its input. Panics,
//!   exceptions and shutdown messages always go to `console_io` too (the emergency path,
//!   which never waits on the ring).
//! - [`events::init`]: places `shared_info`, installs the upcall vector, binds
//!   `VIRQ_TIMER`, enables interrupts; [`events::wait_for_event`] blocks until an event.
//! - [`time::now_ns`] (pvclock system time, TSC fallback), [`time::sleep_until`] /
//!   [`time::sleep_ns`] (blocked on the timer when events are set up, spinning otherwise).
//!
//! When `main` returns, the runtime waits (at most about a second) until the console
//! back-end has consumed the queued output, then shuts down.
//!
//! ## Without a hypervisor
//!
//! When the Xen CPUID signature is absent (plain QEMU), the console falls back to QEMU's
//! debug console (port 0xE9, `-debugcon stdio`) and shutdown to `isa-debug-exit` (port
//! 0xF4: 0x10 for poweroff, 0x11 otherwise). Hypercalls must not be made then: check
//! [`hypervisor_present`] first.
//!
//! ## Portability
//!
//! Everything outside [`arch`], the console and the runtime core is plain Rust that builds
//! and is unit-tested on the host (`cargo test -p guest-rt`): command-line parsing, the
//! memory map, boot-info validation, formatting, statistics, fault-probe bookkeeping, the
//! `shared_info` layout and pvclock read, the upcall's 2-level scan, the PV console's
//! write/wait/flush logic and page checks, and the PV block and network front-ends'
//! node parsing and buffer bookkeeping ([`blkfront`], [`netfront`], [`pvdev`]).
#![no_std]

#[cfg(any(test, not(target_os = "none")))]
extern crate std;

pub mod blkfront;
pub mod boot;
pub mod cmdline;
pub mod control;
pub mod events;
pub mod exception;
pub mod fmt;
pub mod grants;
pub mod hv;
pub mod memmap;
pub mod netfront;
pub mod probe;
pub mod pvconsole;
pub mod pvdev;
pub mod shared_info;
pub mod stats;
pub mod time;

#[cfg(not(target_os = "none"))]
pub mod build;

#[cfg(target_os = "none")]
pub mod arch;
#[cfg(target_os = "none")]
pub mod console;
#[cfg(target_os = "none")]
mod rt;

pub use boot::BootInfo;
pub use probe::{Fault, expect_fault};
pub use shared_abi;
pub use shared_abi::sched::ShutdownReason;

#[cfg(target_os = "none")]
#[doc(hidden)]
pub use console::_print;
#[cfg(target_os = "none")]
#[doc(hidden)]
pub use rt::__rt_main;
#[cfg(target_os = "none")]
pub use rt::{GuestMain, hypervisor_present, shutdown, xen_cpuid_base};

/// Prints to the console (the PV console ring once [`console::init_pv`] found one, else
/// the hypervisor console, or port 0xE9 without a hypervisor).
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => {
        $crate::_print(::core::format_args!($($arg)*))
    };
}

/// Prints a line to the console (see [`print!`]).
#[macro_export]
macro_rules! println {
    () => {
        $crate::_print(::core::format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::_print(::core::format_args!("{}\n", ::core::format_args!($($arg)*)))
    };
}

/// Declares the guest's main function, `fn(&BootInfo) -> ShutdownReason`.
///
/// Expands to the 64-bit entry symbol that the runtime's boot code calls, so the guest
/// needs no `#[no_mangle]` and no unsafe code. Use it exactly once per binary; a missing
/// or duplicate `entry!` is a link error (`guest_rt_main64`).
#[macro_export]
macro_rules! entry {
    ($main:path) => {
        /// Called by the runtime's boot code, in long mode on the boot stack.
        extern "C" fn __guest_rt_entry(start_info_paddr: u64) -> ! {
            let main: $crate::GuestMain = $main;
            $crate::__rt_main(start_info_paddr, main)
        }

        ::core::arch::global_asm!(
            ".pushsection .text.guest_rt.main64, \"ax\", @progbits",
            ".globl guest_rt_main64",
            "guest_rt_main64:",
            "jmp {entry}",
            ".popsection",
            entry = sym __guest_rt_entry,
        );
    };
}
