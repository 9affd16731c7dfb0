//! Hypervisor discovery through the CPUID leaves at 0x40000000 (see
//! [`shared_abi::cpuid`]).

use shared_abi::cpuid::{XEN_CPUID_BASE, XEN_CPUID_SIGNATURE};

/// The scan covers `XEN_CPUID_BASE..SCAN_END` in steps of 0x100, as Xen guests do.
pub const SCAN_END: u32 = 0x4001_0000;

/// Finds the Xen leaves: the first base in the scan whose EBX/ECX/EDX hold
/// `"XenVMMXenVMM"` and whose EAX (last leaf) is at least base + 2.
///
/// `cpuid(leaf)` returns `[eax, ebx, ecx, edx]` of the leaf (subleaf 0).
pub fn find_xen_base(mut cpuid: impl FnMut(u32) -> [u32; 4]) -> Option<u32> {
    (XEN_CPUID_BASE..SCAN_END).step_by(0x100).find(|&base| {
        let [eax, ebx, ecx, edx] = cpuid(base);
        [ebx, ecx, edx] == XEN_CPUID_SIGNATURE && eax >= base + 2
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIG: [u32; 3] = XEN_CPUID_SIGNATURE;

    #[test]
    fn finds_base_leaf() {
        let found = find_xen_base(|leaf| match leaf {
            0x4000_0000 => [0x4000_0004, SIG[0], SIG[1], SIG[2]],
            _ => [0; 4],
        });
        assert_eq!(found, Some(0x4000_0000));
    }

    #[test]
    fn finds_shifted_base_behind_viridian() {
        let found = find_xen_base(|leaf| match leaf {
            0x4000_0000 => [0x4000_0006, 0x7263_694d, 0x666f_736f, 0x7648_2074],
            0x4000_0100 => [0x4000_0105, SIG[0], SIG[1], SIG[2]],
            _ => [0; 4],
        });
        assert_eq!(found, Some(0x4000_0100));
    }

    #[test]
    fn rejects_missing_or_short_leaves() {
        assert_eq!(find_xen_base(|_| [0; 4]), None);
        let short = |leaf: u32| [leaf + 1, SIG[0], SIG[1], SIG[2]];
        assert_eq!(find_xen_base(short), None);
        let below = |_| [0x10, SIG[0], SIG[1], SIG[2]];
        assert_eq!(find_xen_base(below), None);
    }
}
