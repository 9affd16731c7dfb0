//! What a DomU sees of the CPU: the CPUID filter and the MSR policy.
//!
//! Both are pure functions of the host's answer and the domain's state, tested on the host.

use shared_abi::cpuid::{
    LEAF1_ECX_HYPERVISOR, LEAF4_DOMID_PRESENT, LEAF4_VCPU_ID_PRESENT, MICROVISOR_CPUID_SIGNATURE,
    XEN_CPUID_BASE, XEN_CPUID_LAST_LEAF, XEN_CPUID_SIGNATURE, XEN_HYPERCALL_MSR,
};
use shared_abi::{XEN_VERSION_MAJOR, XEN_VERSION_MINOR};

/// The four CPUID output registers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuidRegs {
    /// EAX.
    pub eax: u32,
    /// EBX.
    pub ebx: u32,
    /// ECX.
    pub ecx: u32,
    /// EDX.
    pub edx: u32,
}

/// Per-vCPU facts the filter needs.
#[derive(Clone, Copy, Debug)]
pub struct CpuidCtx {
    /// Domain id.
    pub domid: u16,
    /// vCPU id (also the initial APIC id reported).
    pub vcpu_id: u32,
    /// Guest TSC frequency in kHz.
    pub tsc_khz: u32,
    /// Guest CR4.OSXSAVE (leaf 1 ECX.OSXSAVE mirrors the guest's CR4, not the host's).
    pub guest_osxsave: bool,
}

const LEAF1_ECX_MONITOR: u32 = 1 << 3;
const LEAF1_ECX_VMX: u32 = 1 << 5;
const LEAF1_ECX_X2APIC: u32 = 1 << 21;
const LEAF1_ECX_TSC_DEADLINE: u32 = 1 << 24;
const LEAF1_ECX_OSXSAVE: u32 = 1 << 27;
const LEAF1_EDX_APIC: u32 = 1 << 9;
const EXT1_ECX_SVM: u32 = 1 << 2;
const EXT1_ECX_MONITORX: u32 = 1 << 29;
const EXT1_EDX_APIC: u32 = 1 << 9;

/// Computes the DomU's view of CPUID `leaf` from the host's answer `host`.
pub fn guest_cpuid(leaf: u32, host: CpuidRegs, ctx: &CpuidCtx) -> CpuidRegs {
    let mut r = host;
    match leaf {
        1 => {
            r.ecx &= !(LEAF1_ECX_MONITOR
                | LEAF1_ECX_VMX
                | LEAF1_ECX_X2APIC
                | LEAF1_ECX_TSC_DEADLINE
                | LEAF1_ECX_OSXSAVE);
            if ctx.guest_osxsave {
                r.ecx |= LEAF1_ECX_OSXSAVE;
            }
            r.ecx |= LEAF1_ECX_HYPERVISOR;
            // DomUs have no local APIC (yet).
            r.edx &= !LEAF1_EDX_APIC;
            // EBX[31:24] initial APIC id = vCPU id; [23:16] one logical processor.
            r.ebx = (r.ebx & 0x0000_FFFF) | (1 << 16) | ((ctx.vcpu_id & 0xFF) << 24);
        }
        // Thermal/power (MWAIT), cache topology and extended topology would describe the
        // host's pCPUs: hide them.
        5 | 6 | 0xB | 0x1F => r = CpuidRegs::default(),
        0x8000_0001 => {
            r.ecx &= !(EXT1_ECX_SVM | EXT1_ECX_MONITORX);
            r.edx &= !EXT1_EDX_APIC;
        }
        // SVM feature leaf.
        0x8000_000A => r = CpuidRegs::default(),
        XEN_CPUID_BASE => {
            r = CpuidRegs {
                eax: XEN_CPUID_LAST_LEAF,
                ebx: XEN_CPUID_SIGNATURE[0],
                ecx: XEN_CPUID_SIGNATURE[1],
                edx: XEN_CPUID_SIGNATURE[2],
            }
        }
        0x4000_0001 => {
            r = CpuidRegs {
                eax: (u32::from(XEN_VERSION_MAJOR) << 16) | u32::from(XEN_VERSION_MINOR),
                ..CpuidRegs::default()
            }
        }
        0x4000_0002 => {
            r = CpuidRegs {
                eax: 1,
                ebx: XEN_HYPERCALL_MSR,
                ..CpuidRegs::default()
            }
        }
        0x4000_0003 => {
            r = CpuidRegs {
                ecx: ctx.tsc_khz,
                ..CpuidRegs::default()
            }
        }
        0x4000_0004 => {
            r = CpuidRegs {
                eax: LEAF4_VCPU_ID_PRESENT | LEAF4_DOMID_PRESENT,
                ebx: ctx.vcpu_id,
                ecx: u32::from(ctx.domid),
                edx: 0,
            }
        }
        0x4000_0005..=0x4FFF_FFFF => r = CpuidRegs::default(),
        _ => {}
    }
    r
}

/// Computes domain 0's view of CPUID `leaf`. Dom0 is native Linux on a real local APIC, so
/// it sees the host's CPU minus virtualization (SVM, VMX, MONITOR/MWAIT) plus the hypervisor
/// bit and the microvisor's own signature leaf, and never the Xen leaves (which would send
/// Linux down its Xen guest paths).
pub fn dom0_cpuid(leaf: u32, host: CpuidRegs, guest_osxsave: bool) -> CpuidRegs {
    let mut r = host;
    match leaf {
        1 => {
            r.ecx &= !(LEAF1_ECX_MONITOR | LEAF1_ECX_VMX | LEAF1_ECX_OSXSAVE);
            if guest_osxsave {
                r.ecx |= LEAF1_ECX_OSXSAVE;
            }
            r.ecx |= LEAF1_ECX_HYPERVISOR;
        }
        0x8000_0001 => r.ecx &= !(EXT1_ECX_SVM | EXT1_ECX_MONITORX),
        0x8000_000A => r = CpuidRegs::default(),
        XEN_CPUID_BASE => {
            r = CpuidRegs {
                eax: XEN_CPUID_BASE,
                ebx: MICROVISOR_CPUID_SIGNATURE[0],
                ecx: MICROVISOR_CPUID_SIGNATURE[1],
                edx: MICROVISOR_CPUID_SIGNATURE[2],
            }
        }
        0x4000_0001..=0x4FFF_FFFF => r = CpuidRegs::default(),
        _ => {}
    }
    r
}

/// MSR numbers the policy names.
pub mod msr {
    /// Time-stamp counter.
    pub const TSC: u32 = 0x10;
    /// SYSENTER_CS.
    pub const SYSENTER_CS: u32 = 0x174;
    /// SYSENTER_ESP.
    pub const SYSENTER_ESP: u32 = 0x175;
    /// SYSENTER_EIP.
    pub const SYSENTER_EIP: u32 = 0x176;
    /// Page attribute table.
    pub const PAT: u32 = 0x277;
    /// Extended feature enable.
    pub const EFER: u32 = 0xC000_0080;
    /// STAR.
    pub const STAR: u32 = 0xC000_0081;
    /// LSTAR.
    pub const LSTAR: u32 = 0xC000_0082;
    /// CSTAR.
    pub const CSTAR: u32 = 0xC000_0083;
    /// SFMASK.
    pub const SFMASK: u32 = 0xC000_0084;
    /// FS base.
    pub const FS_BASE: u32 = 0xC000_0100;
    /// GS base.
    pub const GS_BASE: u32 = 0xC000_0101;
    /// Kernel GS base.
    pub const KERNEL_GS_BASE: u32 = 0xC000_0102;
    /// Local APIC base and enable.
    pub const APIC_BASE: u32 = 0x1B;
    /// AMD system configuration (memory typing, SEV/SME enables).
    pub const SYSCFG: u32 = 0xC001_0010;
    /// AMD microcode patch loader.
    pub const PATCH_LOADER: u32 = 0xC001_0020;
    /// SVM control (SVMDIS, LOCK).
    pub const VM_CR: u32 = 0xC001_0114;
    /// IGNNE.
    pub const IGNNE: u32 = 0xC001_0115;
    /// SMM control.
    pub const SMM_CTL: u32 = 0xC001_0116;
    /// Host save area of VMRUN.
    pub const VM_HSAVE_PA: u32 = 0xC001_0117;
}

/// MSRs the guest reads and writes directly: state that VMLOAD/VMSAVE switch.
pub const PASSTHROUGH_MSRS: [u32; 10] = [
    msr::SYSENTER_CS,
    msr::SYSENTER_ESP,
    msr::SYSENTER_EIP,
    msr::STAR,
    msr::LSTAR,
    msr::CSTAR,
    msr::SFMASK,
    msr::FS_BASE,
    msr::GS_BASE,
    msr::KERNEL_GS_BASE,
];

/// MSRs domain 0 may not touch directly, with the directions that exit (`(msr, read,
/// write)`). Everything else in the MSRPM ranges is Dom0's to read and write natively: it
/// owns its pCPU, and these are the ones whose native access would expose or break the
/// microvisor (SVM control, the host save area, EFER.SVME, the TSC and APIC base other
/// pCPUs rely on, the PAT that QEMU does not switch, microcode loading).
pub const DOM0_TRAPPED_MSRS: [(u32, bool, bool); 11] = [
    (msr::EFER, true, true),
    (msr::PAT, true, true),
    (msr::TSC, false, true),
    (msr::APIC_BASE, false, true),
    (msr::SYSCFG, false, true),
    (msr::PATCH_LOADER, false, true),
    (msr::VM_CR, true, true),
    (msr::IGNNE, true, true),
    (msr::SMM_CTL, true, true),
    (msr::VM_HSAVE_PA, true, true),
    (shared_abi::cpuid::XEN_HYPERCALL_MSR, true, true),
];

/// Where an MSR's two permission bits (read, then write) live in the 8 KiB MSRPM:
/// `(byte offset, bit of the read permission)`. `None` for MSRs outside the three ranges
/// (those always exit).
pub fn msrpm_position(msr: u32) -> Option<(usize, u8)> {
    let (base, first) = match msr {
        0..=0x1FFF => (0, 0),
        0xC000_0000..=0xC000_1FFF => (0x800, 0xC000_0000),
        0xC001_0000..=0xC001_1FFF => (0x1000, 0xC001_0000),
        _ => return None,
    };
    let bit = (msr - first) as usize * 2;
    Some((base + bit / 8, (bit % 8) as u8))
}

/// EFER bits.
pub mod efer {
    /// System call extensions.
    pub const SCE: u64 = 1 << 0;
    /// Long mode enable.
    pub const LME: u64 = 1 << 8;
    /// Long mode active (read-only).
    pub const LMA: u64 = 1 << 10;
    /// No-execute enable.
    pub const NXE: u64 = 1 << 11;
    /// SVM enable: must be set in a guest's VMCB, hidden from the guest.
    pub const SVME: u64 = 1 << 12;
}

/// The result of an emulated MSR access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MsrResult {
    /// Read value, or a write that took effect.
    Ok(u64),
    /// Inject #GP(0).
    Gp,
}

/// Guest EFER as the guest sees it (SVME hidden).
pub fn efer_read(vmcb_efer: u64) -> u64 {
    vmcb_efer & !efer::SVME
}

/// Validates a guest EFER write. Returns the new VMCB EFER, or `None` for #GP.
///
/// Only SCE, LME and NXE are writable; LMA is kept as the CPU has it; SVME stays set
/// (VMRUN requires it) but the guest may not set it itself. Changing LME while paging is
/// on is #GP, as on hardware.
pub fn efer_write(vmcb_efer: u64, new: u64, paging_on: bool) -> Option<u64> {
    let writable = efer::SCE | efer::LME | efer::NXE;
    // LMA may be written back with its current value (guests do read-modify-write).
    if new & !(writable | efer::LMA) != 0 || (new ^ vmcb_efer) & efer::LMA != 0 {
        return None;
    }
    if paging_on && (new ^ vmcb_efer) & efer::LME != 0 {
        return None;
    }
    Some((new & writable) | (vmcb_efer & efer::LMA) | efer::SVME)
}

/// Validates a PAT value: each byte must be a defined memory type (0, 1, 4, 5, 6, 7).
pub fn pat_valid(pat: u64) -> bool {
    pat.to_le_bytes()
        .iter()
        .all(|t| matches!(t, 0 | 1 | 4 | 5 | 6 | 7))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CTX: CpuidCtx = CpuidCtx {
        domid: 3,
        vcpu_id: 0,
        tsc_khz: 2_000_000,
        guest_osxsave: false,
    };

    #[test]
    fn hides_svm_and_announces_xen() {
        let host = CpuidRegs {
            eax: 0,
            ebx: 0,
            ecx: !0,
            edx: !0,
        };
        let ext = guest_cpuid(0x8000_0001, host, &CTX);
        assert_eq!(ext.ecx & EXT1_ECX_SVM, 0);
        assert_eq!(guest_cpuid(0x8000_000A, host, &CTX), CpuidRegs::default());
        let l1 = guest_cpuid(1, host, &CTX);
        assert_ne!(l1.ecx & LEAF1_ECX_HYPERVISOR, 0);
        assert_eq!(l1.ecx & (LEAF1_ECX_VMX | LEAF1_ECX_OSXSAVE), 0);
        let base = guest_cpuid(XEN_CPUID_BASE, host, &CTX);
        assert_eq!([base.ebx, base.ecx, base.edx], XEN_CPUID_SIGNATURE);
        assert!(base.eax - XEN_CPUID_BASE >= 2);
        assert_eq!(guest_cpuid(0x4000_0001, host, &CTX).eax, 0x0004_0013);
        assert_eq!(guest_cpuid(0x4000_0004, host, &CTX).ecx, 3);
        assert_eq!(guest_cpuid(0x4000_0100, host, &CTX), CpuidRegs::default());
    }

    #[test]
    fn dom0_sees_no_xen_and_no_svm() {
        let host = CpuidRegs {
            eax: 0,
            ebx: 0x0000_0800,
            ecx: !0,
            edx: !0,
        };
        let l1 = dom0_cpuid(1, host, false);
        assert_ne!(l1.ecx & LEAF1_ECX_HYPERVISOR, 0);
        assert_eq!(
            l1.ecx & (LEAF1_ECX_VMX | LEAF1_ECX_OSXSAVE | LEAF1_ECX_MONITOR),
            0
        );
        assert_ne!(l1.edx & LEAF1_EDX_APIC, 0, "Dom0 keeps its real local APIC");
        assert_eq!(l1.ebx, host.ebx, "Dom0 sees its real APIC id");
        assert_ne!(dom0_cpuid(1, host, true).ecx & LEAF1_ECX_OSXSAVE, 0);
        assert_eq!(dom0_cpuid(0x8000_0001, host, false).ecx & EXT1_ECX_SVM, 0);
        assert_eq!(dom0_cpuid(0x8000_000A, host, false), CpuidRegs::default());
        let base = dom0_cpuid(XEN_CPUID_BASE, host, false);
        assert_eq!([base.ebx, base.ecx, base.edx], MICROVISOR_CPUID_SIGNATURE);
        assert_eq!(base.eax, XEN_CPUID_BASE);
        // No Xen signature anywhere Linux scans for it.
        for leaf in (XEN_CPUID_BASE + 0x100..0x4001_0000).step_by(0x100) {
            assert_eq!(dom0_cpuid(leaf, host, false), CpuidRegs::default());
        }
        assert_eq!(dom0_cpuid(7, host, false), host);
    }

    #[test]
    fn msrpm_positions() {
        assert_eq!(msrpm_position(0), Some((0, 0)));
        assert_eq!(msrpm_position(msr::EFER), Some((0x800 + 0x20, 0)));
        assert_eq!(msrpm_position(0xC001_0114), Some((0x1000 + 0x45, 0)));
        assert_eq!(msrpm_position(0x4000_0000), None);
    }

    #[test]
    fn efer_policy() {
        let cur = efer::LME | efer::LMA | efer::SVME;
        assert_eq!(efer_read(cur), efer::LME | efer::LMA);
        assert_eq!(
            efer_write(cur, efer::LME | efer::LMA | efer::NXE, true),
            Some(cur | efer::NXE)
        );
        assert_eq!(
            efer_write(cur, efer::LME | efer::LMA | efer::SVME, true),
            None
        );
        assert_eq!(efer_write(cur, efer::LMA, true), None);
        assert_eq!(
            efer_write(efer::SVME, efer::LME, false),
            Some(efer::LME | efer::SVME)
        );
        assert_eq!(efer_write(efer::SVME, 1 << 20, false), None);
    }

    #[test]
    fn pat_policy() {
        assert!(pat_valid(0x0007_0406_0007_0406));
        assert!(!pat_valid(0x0007_0406_0007_0402));
    }
}
