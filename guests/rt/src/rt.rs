//! The runtime proper: boot (`__rt_main`), hypervisor detection, shutdown, the fatal
//! exception report and the panic handler.

use core::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use shared_abi::guest::sched_shutdown;
use shared_abi::sched::ShutdownReason;

use crate::arch::idt::ExceptionFrame;
use crate::arch::{cpu, idt, phys, port};
use crate::boot::BootInfo;
use crate::exception;
use crate::println;

/// The guest's main function: gets the boot information, returns how to shut down.
pub type GuestMain = fn(&BootInfo) -> ShutdownReason;

/// The Xen CPUID base once detected: `UNKNOWN`, `ABSENT`, or the base leaf.
///
/// ORDERING: one vCPU; detection is idempotent, so a racing exception handler could only
/// repeat it. Relaxed suffices.
static XEN_BASE: AtomicU32 = AtomicU32::new(UNKNOWN);
const UNKNOWN: u32 = 0;
const ABSENT: u32 = 1;

/// The CPUID leaf where the Xen signature was found (normally `0x4000_0000`), or `None`
/// when there is no Xen-compatible hypervisor (e.g. bare QEMU).
pub fn xen_cpuid_base() -> Option<u32> {
    let mut base = XEN_BASE.load(Ordering::Relaxed);
    if base == UNKNOWN {
        base = crate::hv::find_xen_base(|leaf| cpu::cpuid(leaf, 0).to_array()).unwrap_or(ABSENT);
        XEN_BASE.store(base, Ordering::Relaxed);
    }
    (base != ABSENT).then_some(base)
}

/// Whether the guest runs under the microvisor (or Xen): hypercalls may be used only then.
pub fn hypervisor_present() -> bool {
    xen_cpuid_base().is_some()
}

/// Shuts the domain down with `reason` and never returns.
///
/// First gives the PV console's back-end a bounded time to take queued output
/// ([`crate::console::flush`]); from then on the console only uses the emergency path.
///
/// Under a hypervisor: `sched_op(SCHEDOP_shutdown)`. Without one: writes 0x10 (poweroff)
/// or 0x11 (anything else) to QEMU's `isa-debug-exit` port. If either returns, the vCPU
/// halts forever.
pub fn shutdown(reason: ShutdownReason) -> ! {
    // Let the PV console back-end take what is queued (bounded; skipped on the emergency
    // path), then never wait on the ring again.
    crate::console::flush();
    crate::console::emergency();
    if hypervisor_present() {
        let err = sched_shutdown(reason);
        println!(
            "guest-rt: sched_op shutdown ({}) returned -{err}; halting",
            reason.name()
        );
    } else {
        println!(
            "guest-rt: no hypervisor; {} through isa-debug-exit",
            reason.name()
        );
        let code = match reason {
            ShutdownReason::Poweroff => port::EXIT_SUCCESS,
            _ => port::EXIT_FAILURE,
        };
        port::debug_exit(code);
        println!("guest-rt: isa-debug-exit absent; halting");
    }
    cpu::halt_forever()
}

/// How many times the fatal path has been entered (a fault while reporting a fault).
static FATAL_DEPTH: AtomicU32 = AtomicU32::new(0);

/// Reports an unexpected exception and crashes the domain.
pub(crate) fn fatal_exception(frame: &ExceptionFrame) -> ! {
    crate::console::emergency();
    match FATAL_DEPTH.fetch_add(1, Ordering::Relaxed) {
        0 => {
            let vector = u8::try_from(frame.vector).unwrap_or(u8::MAX);
            println!(
                "exception: vector {} ({}) error_code={:#x} rip={:#x} cr2={:#x} rsp={:#x}",
                frame.vector,
                exception::mnemonic(vector),
                frame.error_code,
                frame.rip,
                cpu::read_cr2(),
                frame.rsp,
            );
            shutdown(ShutdownReason::Crash)
        }
        // Printing faulted: try to shut down without printing.
        1 => shutdown(ShutdownReason::Crash),
        _ => cpu::halt_forever(),
    }
}

static PANICKING: AtomicBool = AtomicBool::new(false);

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    crate::console::emergency();
    if !PANICKING.swap(true, Ordering::Relaxed) {
        match info.location() {
            Some(loc) => println!("panic: {loc} {}", info.message()),
            None => println!("panic: <unknown location> {}", info.message()),
        }
    }
    shutdown(ShutdownReason::Crash)
}

/// Boots the runtime and runs `main`; called by the code [`crate::entry!`] generates.
///
/// Installs the IDT, detects the hypervisor, copies and validates the boot information,
/// runs `main`, and shuts down with the reason it returns.
#[doc(hidden)]
pub fn __rt_main(start_info_paddr: u64, main: GuestMain) -> ! {
    idt::install();
    xen_cpuid_base();
    let boot = match BootInfo::read(start_info_paddr, &mut phys::IdentityMapped) {
        Ok(boot) => boot,
        Err(e) => {
            println!("guest-rt: bad boot information: {e}");
            shutdown(ShutdownReason::Crash)
        }
    };
    for msg in boot.warnings().messages() {
        println!("guest-rt: warning: {msg}");
    }
    let reason = main(&boot);
    shutdown(reason)
}
