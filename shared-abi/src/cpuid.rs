//! Hypervisor CPUID leaves (`xen/include/public/arch-x86/cpuid.h`).
//!
//! Guests scan from [`XEN_CPUID_BASE`] in steps of `0x100` for the signature and require
//! `EAX - base >= 2`. Leaf 1 of standard CPUID has the hypervisor bit (ECX bit 31) set, and
//! SVM is hidden from guests.
//!
//! | leaf | EAX | EBX | ECX | EDX |
//! |------|-----|-----|-----|-----|
//! | base+0 | last leaf (base+4) | `"XenV"` | `"MMXe"` | `"nVMM"` |
//! | base+1 | `(major << 16) \| minor` | 0 | 0 | 0 |
//! | base+2 | hypercall pages (1) | hypercall MSR | 0 | 0 |
//! | base+3 | 0 | 0 | guest TSC kHz | 0 |
//! | base+4 | flags ([`LEAF4_VCPU_ID_PRESENT`], [`LEAF4_DOMID_PRESENT`]) | vCPU id | domid | 0 |

/// First hypervisor leaf.
pub const XEN_CPUID_BASE: u32 = 0x4000_0000;
/// Signature in EBX, ECX, EDX of the base leaf: `"XenVMMXenVMM"`.
pub const XEN_CPUID_SIGNATURE: [u32; 3] = [0x566e_6558, 0x6558_4d4d, 0x4d4d_566e];
/// The last hypervisor leaf the microvisor answers.
pub const XEN_CPUID_LAST_LEAF: u32 = XEN_CPUID_BASE + 4;
/// MSR that installs the hypercall page (reported in base+2 EBX).
pub const XEN_HYPERCALL_MSR: u32 = 0x4000_0000;
/// base+4 EAX: EBX holds the vCPU id.
pub const LEAF4_VCPU_ID_PRESENT: u32 = 1 << 3;
/// base+4 EAX: ECX holds the domain id.
pub const LEAF4_DOMID_PRESENT: u32 = 1 << 4;
/// Standard leaf 1 ECX: running under a hypervisor.
pub const LEAF1_ECX_HYPERVISOR: u32 = 1 << 31;

/// Signature domain 0 sees in the base leaf instead of Xen's: `"MicrovisorMV"`. Domain 0 is
/// native Linux and must not take its Xen guest paths, so it sees only this leaf (EAX =
/// base, no further leaves) plus the hypervisor bit.
pub const MICROVISOR_CPUID_SIGNATURE: [u32; 3] = [
    u32::from_le_bytes(*b"Micr"),
    u32::from_le_bytes(*b"ovis"),
    u32::from_le_bytes(*b"orMV"),
];
