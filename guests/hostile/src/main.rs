//! hostile: a DomU guest that attacks the microvisor.
//!
//! First a series of non-fatal checks, one line each (`hostile: <check> ... ok` or
//! `hostile: <check> ... UNEXPECTED (<detail>)`): garbage hypercall numbers and arguments,
//! port I/O, forbidden MSR accesses and SVM instructions, CPUID. Then a summary line and a
//! fatal attack chosen by the command line:
//!
//! - `attack=npf` (default): write to guest-physical `ram_end + 1 MiB`, beyond RAM;
//! - `attack=triple`: load an empty IDT and execute `ud2`, a triple fault.
//!
//! The microvisor must crash this domain and keep running. If the guest survives the
//! attack it prints `hostile: UNEXPECTED survived the attack` and shuts down with Crash.
//!
//! Without a hypervisor (bare QEMU) only the fault-probe self-test runs.
#![no_std]
#![no_main]

mod insn;

use core::fmt;

use guest_rt::arch::cpu::{self, CpuidResult};
use guest_rt::arch::port;
use guest_rt::exception::vector;
use guest_rt::fmt::HypercallRet;
use guest_rt::shared_abi::console::{CONSOLEIO_MAX_WRITE, CONSOLEIO_WRITE};
use guest_rt::shared_abi::cpuid::{LEAF1_ECX_HYPERVISOR, XEN_CPUID_BASE, XEN_CPUID_SIGNATURE};
use guest_rt::shared_abi::guest::hypercall_raw;
use guest_rt::shared_abi::sched::{SCHEDOP_SHUTDOWN, SchedShutdown};
use guest_rt::shared_abi::version::{XENVER_GET_FEATURES, XenFeatureInfo};
use guest_rt::shared_abi::{Errno, Hypercall};
use guest_rt::{BootInfo, ShutdownReason, expect_fault, println};

use insn::SvmInsn;

guest_rt::entry!(main);

const MIB: u64 = 1 << 20;
/// End of the runtime's identity map: linear addresses from here on are not mapped.
const IDENTITY_MAP_END: u64 = 4 << 30;
/// A sub-operation number no call defines.
const BAD_SUBOP: u64 = 99;
/// A `sched_shutdown` reason Xen does not define.
const BAD_REASON: u32 = 77;
/// The lowest non-canonical address (bit 63 set, bits 62..47 clear).
const NON_CANONICAL: u64 = 0x8000_0000_0000_0000;

const MSR_EFER: u32 = 0xC000_0080;
const MSR_VM_CR: u32 = 0xC001_0114;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
const EFER_SVME: u64 = 1 << 12;

/// The oversized console write count must exceed the documented limit.
const HUGE_COUNT: u64 = 1 << 40;
const _: () = assert!(HUGE_COUNT > CONSOLEIO_MAX_WRITE);
/// get_features writes a whole `XenFeatureInfo` through the pointer.
const _: () = assert!(core::mem::size_of::<XenFeatureInfo>() == 8);

fn main(boot: &BootInfo) -> ShutdownReason {
    let mut checks = Checks::default();
    checks.probe_self_test();
    if !guest_rt::hypervisor_present() {
        println!(
            "hostile: no hypervisor (Xen CPUID signature absent): skipping the checks and the attack"
        );
        return if checks.failed == 0 {
            ShutdownReason::Poweroff
        } else {
            ShutdownReason::Crash
        };
    }

    let ram_end = boot.ram_end();
    println!(
        "hostile: ram_end {ram_end:#x}, cmdline \"{}\"",
        boot.cmdline()
    );
    checks.garbage_hypercall_numbers();
    // Beyond every entry of the map: the reserved console and xenstore pages that a Dom0
    // builder puts above RAM are this domain's memory too.
    checks.garbage_hypercall_arguments(boot.map_end().max(ram_end));
    checks.port_io();
    checks.msrs();
    checks.svm_instructions();
    checks.cpuid();
    if checks.failed == 0 {
        println!(
            "hostile: all non-fatal checks passed ({} checks)",
            checks.passed
        );
    } else {
        println!(
            "hostile: some checks UNEXPECTED ({} of {})",
            checks.failed,
            checks.passed + checks.failed
        );
    }

    match boot.cmdline_value("attack").unwrap_or("npf") {
        "npf" => attack_npf(ram_end),
        "triple" => attack_triple(),
        other => {
            println!("hostile: unknown attack={other} (expected npf or triple)");
            return ShutdownReason::Crash;
        }
    }
    println!("hostile: UNEXPECTED survived the attack");
    ShutdownReason::Crash
}

/// Why a check did not hold.
enum Detail {
    Ret { got: i64, want: Errno },
    NoFault(u8),
    Fault(guest_rt::Fault),
    Value { got: u64, want: u64 },
    Cpuid(u32, CpuidResult),
}

impl fmt::Display for Detail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Detail::Ret { got, want } => write!(f, "got {}, expected -{want}", HypercallRet(*got)),
            Detail::NoFault(v) => {
                write!(f, "no {} raised", guest_rt::exception::mnemonic(*v))
            }
            Detail::Fault(fault) => write!(
                f,
                "{} raised, error code {:#x}",
                guest_rt::exception::mnemonic(fault.vector),
                fault.error_code
            ),
            Detail::Value { got, want } => write!(f, "got {got:#x}, expected {want:#x}"),
            Detail::Cpuid(leaf, r) => write!(
                f,
                "leaf {leaf:#x}: eax={:#x} ebx={:#x} ecx={:#x} edx={:#x}",
                r.eax, r.ebx, r.ecx, r.edx
            ),
        }
    }
}

#[derive(Default)]
struct Checks {
    passed: u32,
    failed: u32,
}

impl Checks {
    fn record(&mut self, name: fmt::Arguments<'_>, outcome: Result<(), Detail>) {
        match outcome {
            Ok(()) => {
                self.passed += 1;
                println!("hostile: {name} ... ok");
            }
            Err(detail) => {
                self.failed += 1;
                println!("hostile: {name} ... UNEXPECTED ({detail})");
            }
        }
    }

    fn ret(&mut self, name: fmt::Arguments<'_>, got: i64, want: Errno) {
        let outcome = if got == want.to_ret() {
            Ok(())
        } else {
            Err(Detail::Ret { got, want })
        };
        self.record(name, outcome);
    }

    fn fault(&mut self, name: fmt::Arguments<'_>, vector: u8, len: u8, f: impl FnOnce()) {
        let outcome = match expect_fault(vector, len, f) {
            Some(_) => Ok(()),
            None => Err(Detail::NoFault(vector)),
        };
        self.record(name, outcome);
    }

    /// The probe machinery itself: `ud2` must come back as #UD.
    fn probe_self_test(&mut self) {
        self.fault(
            format_args!("fault probe self-test (ud2 -> #UD)"),
            vector::UD,
            insn::UD2_LEN,
            insn::ud2,
        );
    }

    fn garbage_hypercall_numbers(&mut self) {
        for nr in [
            0,
            1,
            11,
            64,
            0xFFFF,
            u64::MAX,
            (1 << 32) | Hypercall::XenVersion as u64,
        ] {
            // SAFETY: unknown hypercalls take no pointers; every argument is 0.
            let ret = unsafe { hypercall_raw(nr, 0, 0, 0, 0, 0) };
            self.ret(
                format_args!("hypercall {nr:#x} -> -ENOSYS"),
                ret,
                Errno::ENOSYS,
            );
        }
    }

    fn garbage_hypercall_arguments(&mut self, mem_end: u64) {
        let console = Hypercall::ConsoleIo as u64;
        let version = Hypercall::XenVersion as u64;
        let sched = Hypercall::SchedOp as u64;
        let beyond_ram = mem_end.saturating_add(4096);
        let unmapped = IDENTITY_MAP_END.max(mem_end).saturating_add(4096);
        let text = b"hostile: this must not be printed\n";
        let buf = text.as_ptr() as u64;

        // SAFETY: console_io write only reads the buffer; `text` is valid for 34 bytes
        // and the hypervisor must refuse the oversized count before reading anything.
        let ret = unsafe { hypercall_raw(console, CONSOLEIO_WRITE, HUGE_COUNT, buf, 0, 0) };
        self.ret(
            format_args!("console_io write count 1<<40 -> -EINVAL"),
            ret,
            Errno::EINVAL,
        );

        // SAFETY: console_io write only reads; a non-canonical address is no memory.
        let ret = unsafe { hypercall_raw(console, CONSOLEIO_WRITE, 16, NON_CANONICAL, 0, 0) };
        self.ret(
            format_args!("console_io write buffer {NON_CANONICAL:#x} (non-canonical) -> -EFAULT"),
            ret,
            Errno::EFAULT,
        );

        // SAFETY: console_io write only reads; the buffer lies beyond RAM, no Rust memory.
        let ret = unsafe { hypercall_raw(console, CONSOLEIO_WRITE, 16, beyond_ram, 0, 0) };
        self.ret(
            format_args!("console_io write buffer {beyond_ram:#x} (beyond RAM) -> -EFAULT"),
            ret,
            Errno::EFAULT,
        );

        // SAFETY: an unknown sub-operation must not touch memory; `text` is valid anyway.
        let ret = unsafe { hypercall_raw(console, BAD_SUBOP, 16, buf, 0, 0) };
        self.ret(
            format_args!("console_io sub-op {BAD_SUBOP} -> -ENOSYS"),
            ret,
            Errno::ENOSYS,
        );

        // SAFETY: get_features writes 8 bytes at the pointer, which lies beyond RAM where
        // no Rust object lives.
        let ret = unsafe { hypercall_raw(version, XENVER_GET_FEATURES, beyond_ram, 0, 0, 0) };
        self.ret(
            format_args!("xen_version get_features at {beyond_ram:#x} (beyond RAM) -> -EFAULT"),
            ret,
            Errno::EFAULT,
        );

        // SAFETY: as above; the address is not mapped in the guest's page tables at all.
        let ret = unsafe { hypercall_raw(version, XENVER_GET_FEATURES, unmapped, 0, 0, 0) };
        self.ret(
            format_args!("xen_version get_features at {unmapped:#x} (unmapped) -> -EFAULT"),
            ret,
            Errno::EFAULT,
        );

        let bad = SchedShutdown { reason: BAD_REASON };
        // SAFETY: shutdown reads 4 bytes from `bad`, a valid SchedShutdown; the reason is
        // invalid, so the domain must not shut down.
        let ret =
            unsafe { hypercall_raw(sched, SCHEDOP_SHUTDOWN, (&raw const bad) as u64, 0, 0, 0) };
        self.ret(
            format_args!("sched_op shutdown reason {BAD_REASON} -> -EINVAL"),
            ret,
            Errno::EINVAL,
        );

        // SAFETY: shutdown only reads; the pointer lies beyond RAM.
        let ret = unsafe { hypercall_raw(sched, SCHEDOP_SHUTDOWN, beyond_ram, 0, 0, 0) };
        self.ret(
            format_args!("sched_op shutdown at {beyond_ram:#x} (beyond RAM) -> -EFAULT"),
            ret,
            Errno::EFAULT,
        );

        // SAFETY: an unknown sub-operation must not touch memory; the argument is 0.
        let ret = unsafe { hypercall_raw(sched, BAD_SUBOP, 0, 0, 0, 0) };
        self.ret(
            format_args!("sched_op sub-op {BAD_SUBOP} -> -ENOSYS"),
            ret,
            Errno::ENOSYS,
        );
    }

    fn port_io(&mut self) {
        // SAFETY: a DomU has no devices; reading port 0x60 has no effect on this guest.
        let got = unsafe { port::inb(0x60) };
        let outcome = if got == 0xFF {
            Ok(())
        } else {
            Err(Detail::Value {
                got: got.into(),
                want: 0xFF,
            })
        };
        self.record(format_args!("in al, 0x60 reads 0xff"), outcome);

        // SAFETY: the write is dropped under the microvisor. If it reached QEMU's
        // isa-debug-exit it would end the whole machine: that is the hole being checked.
        unsafe { port::outb(port::ISA_DEBUG_EXIT_PORT, port::EXIT_SUCCESS) };
        self.record(
            format_args!("out 0xf4, al=0x10 (isa-debug-exit) has no effect"),
            Ok(()),
        );
    }

    fn msrs(&mut self) {
        self.fault(
            format_args!("rdmsr VM_CR {MSR_VM_CR:#x} -> #GP"),
            vector::GP,
            insn::MSR_INSN_LEN,
            || {
                // SAFETY: reading VM_CR has no side effects; #GP is expected.
                unsafe { insn::rdmsr(MSR_VM_CR) };
            },
        );

        let mut efer = 0;
        let outcome = match expect_fault(vector::GP, insn::MSR_INSN_LEN, || {
            // SAFETY: reading EFER has no side effects.
            efer = unsafe { insn::rdmsr(MSR_EFER) };
        }) {
            Some(fault) => Err(Detail::Fault(fault)),
            None if efer & EFER_SVME != 0 => Err(Detail::Value {
                got: efer,
                want: efer & !EFER_SVME,
            }),
            None => Ok(()),
        };
        self.record(format_args!("rdmsr EFER shows SVME clear"), outcome);

        let value = EFER_LME | EFER_LMA | EFER_SVME;
        self.fault(
            format_args!("wrmsr EFER {value:#x} (SVME) -> #GP"),
            vector::GP,
            insn::MSR_INSN_LEN,
            || {
                // SAFETY: #GP is expected; if the write went through, EFER keeps LME and LMA
                // (the guest's current long-mode setting) and only gains SVME.
                unsafe { insn::wrmsr(MSR_EFER, value) };
            },
        );
    }

    fn svm_instructions(&mut self) {
        for i in SvmInsn::ALL {
            self.fault(
                format_args!("{} -> #UD", i.name()),
                vector::UD,
                insn::SVM_INSN_LEN,
                || {
                    // SAFETY: #UD is expected; see `insn::svm` for what happens otherwise.
                    unsafe { insn::svm(i) };
                },
            );
        }
    }

    fn cpuid(&mut self) {
        let ext = cpu::cpuid(0x8000_0001, 0);
        let outcome = if ext.ecx & (1 << 2) == 0 {
            Ok(())
        } else {
            Err(Detail::Cpuid(0x8000_0001, ext))
        };
        self.record(
            format_args!("cpuid 0x80000001 ecx.SVM (bit 2) clear"),
            outcome,
        );

        let svm = cpu::cpuid(0x8000_000A, 0);
        let outcome = if svm.to_array() == [0; 4] {
            Ok(())
        } else {
            Err(Detail::Cpuid(0x8000_000A, svm))
        };
        self.record(format_args!("cpuid 0x8000000a all zero"), outcome);

        let std1 = cpu::cpuid(1, 0);
        let outcome = if std1.ecx & LEAF1_ECX_HYPERVISOR != 0 {
            Ok(())
        } else {
            Err(Detail::Cpuid(1, std1))
        };
        self.record(format_args!("cpuid 1 ecx.hypervisor (bit 31) set"), outcome);

        let base = cpu::cpuid(XEN_CPUID_BASE, 0);
        let sig_ok =
            [base.ebx, base.ecx, base.edx] == XEN_CPUID_SIGNATURE && base.eax >= XEN_CPUID_BASE + 2;
        let outcome = if sig_ok {
            Ok(())
        } else {
            Err(Detail::Cpuid(XEN_CPUID_BASE, base))
        };
        self.record(
            format_args!("cpuid {XEN_CPUID_BASE:#x} \"XenVMMXenVMM\""),
            outcome,
        );
    }
}

/// Writes beyond RAM: a nested page fault, for which the microvisor must crash us.
fn attack_npf(ram_end: u64) {
    let addr = ram_end.saturating_add(MIB);
    println!("hostile: touching guest-physical {addr:#x} beyond RAM");
    if addr.saturating_add(8) > IDENTITY_MAP_END {
        println!(
            "hostile: note: {addr:#x} is above the 4 GiB identity map: expect a guest #PF, not an NPF"
        );
    }
    // SAFETY: `addr` lies 1 MiB beyond the end of RAM, where no Rust object lives; it is
    // page-aligned whenever ram_end is.
    unsafe { insn::write_u64(addr, 0x6e70_665f_6869_7421) };
}

/// Triple-faults: the microvisor must treat the shutdown intercept as a domain crash.
fn attack_triple() {
    println!("hostile: loading an empty IDT and executing ud2 (triple fault)");
    // SAFETY: this is the attack; nothing after it relies on the IDT.
    unsafe { insn::triple_fault() };
}
