//! hello: the smallest useful DomU guest.
//!
//! Greets, reports the hypervisor's Xen version and feature submap 0, checks that an
//! unknown hypercall returns `-ENOSYS`, reports RAM from the memory map, and powers off.
//! Without a hypervisor (bare QEMU) it says so, reports RAM, and powers off.
#![no_std]
#![no_main]

use guest_rt::fmt::{HypercallRet, Size};
use guest_rt::shared_abi::Errno;
use guest_rt::shared_abi::guest::{hypercall_raw, xen_features, xen_version};
use guest_rt::shared_abi::version::feature;
use guest_rt::{BootInfo, ShutdownReason, println};

guest_rt::entry!(main);

/// A hypercall number that no Xen version defines.
const INVALID_HYPERCALL: u64 = 9999;

fn main(boot: &BootInfo) -> ShutdownReason {
    println!("Hello, world! from a PVH guest on the microvisor");
    let ok = match guest_rt::xen_cpuid_base() {
        Some(base) => {
            println!("hello: Xen CPUID leaves at {base:#x}");
            hypervisor_checks()
        }
        None => {
            println!("hello: no hypervisor (Xen CPUID signature absent): running on bare metal");
            true
        }
    };
    report_memory(boot);
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
