//! The VMCB (AMD APM vol. 2, appendix B): control area at 0x000, state-save area at 0x400,
//! one 4 KiB page. Every architectural offset is pinned by a const assert.

use bitflags::bitflags;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// A segment register in the state-save area.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct VmcbSegment {
    /// Selector.
    pub selector: u16,
    /// Packed attributes: bits 0-7 type/S/DPL/P, bits 8-11 AVL/L/DB/G.
    pub attrib: u16,
    /// Limit.
    pub limit: u32,
    /// Base.
    pub base: u64,
}

impl VmcbSegment {
    /// A flat 32-bit code segment (read/execute, accessed, present, DB, G).
    pub const FLAT_CODE32: Self = Self {
        selector: 0x08,
        attrib: 0xC9B,
        limit: 0xFFFF_FFFF,
        base: 0,
    };
    /// A flat 32-bit data segment (read/write, accessed, present, DB, G).
    pub const FLAT_DATA32: Self = Self {
        selector: 0x10,
        attrib: 0xC93,
        limit: 0xFFFF_FFFF,
        base: 0,
    };
    /// A busy 32-bit TSS with base 0 and limit 0x67, as PVH requires.
    pub const TSS32_BUSY: Self = Self {
        selector: 0x18,
        attrib: 0x8B,
        limit: 0x67,
        base: 0,
    };
    /// An LDT/descriptor-table placeholder: present, LDT type.
    pub const LDT_EMPTY: Self = Self {
        selector: 0,
        attrib: 0x82,
        limit: 0xFFFF,
        base: 0,
    };
}

/// Control area.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct VmcbControl {
    /// CR read intercepts.
    pub cr_read: u16,
    /// CR write intercepts.
    pub cr_write: u16,
    /// DR read intercepts.
    pub dr_read: u16,
    /// DR write intercepts.
    pub dr_write: u16,
    /// Exception intercepts (bit per vector).
    pub exceptions: u32,
    /// Instruction intercepts, word 3 (low half of [`Intercepts`]).
    pub intercepts_lo: u32,
    /// Instruction intercepts, word 4 (high half of [`Intercepts`]).
    pub intercepts_hi: u32,
    /// Reserved.
    pub _rsvd1: [u8; 0x3C - 0x14],
    /// Pause filter threshold.
    pub pause_filter_threshold: u16,
    /// Pause filter count.
    pub pause_filter_count: u16,
    /// Physical address of the I/O permission map (12 KiB).
    pub iopm_base: u64,
    /// Physical address of the MSR permission map (8 KiB).
    pub msrpm_base: u64,
    /// Added to the guest's TSC.
    pub tsc_offset: u64,
    /// Guest ASID (non-zero).
    pub asid: u32,
    /// TLB control (1 = flush all).
    pub tlb_control: u8,
    /// Reserved.
    pub _rsvd2: [u8; 3],
    /// V_TPR, V_IRQ, V_INTR_MASKING, ...
    pub int_ctl: u32,
    /// Virtual interrupt vector.
    pub int_vector: u32,
    /// Interrupt shadow.
    pub int_state: u64,
    /// Exit code.
    pub exit_code: u64,
    /// EXITINFO1.
    pub exit_info1: u64,
    /// EXITINFO2.
    pub exit_info2: u64,
    /// EXITINTINFO.
    pub exit_int_info: u64,
    /// Nested control (bit 0 = NPT enable).
    pub nested_ctl: u64,
    /// AVIC APIC BAR (unused).
    pub avic_apic_bar: u64,
    /// GHCB (unused).
    pub ghcb: u64,
    /// Event injection.
    pub event_inj: u64,
    /// Nested page table root.
    pub nested_cr3: u64,
    /// LBR virtualisation enable.
    pub virt_ext: u64,
    /// VMCB clean bits (ignored by TCG).
    pub clean_bits: u32,
    /// Reserved.
    pub _rsvd3: u32,
    /// Next sequential RIP (always 0 under TCG: no NRIP save).
    pub next_rip: u64,
    /// Rest of the control area.
    pub _rsvd4: [u8; 0x400 - 0xD0],
}

/// State-save area.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct VmcbSave {
    /// ES.
    pub es: VmcbSegment,
    /// CS.
    pub cs: VmcbSegment,
    /// SS.
    pub ss: VmcbSegment,
    /// DS.
    pub ds: VmcbSegment,
    /// FS.
    pub fs: VmcbSegment,
    /// GS.
    pub gs: VmcbSegment,
    /// GDTR (base, limit).
    pub gdtr: VmcbSegment,
    /// LDTR.
    pub ldtr: VmcbSegment,
    /// IDTR (base, limit).
    pub idtr: VmcbSegment,
    /// TR.
    pub tr: VmcbSegment,
    /// Reserved.
    pub _rsvd1: [u8; 0xCB - 0xA0],
    /// Current privilege level.
    pub cpl: u8,
    /// Reserved.
    pub _rsvd2: u32,
    /// EFER.
    pub efer: u64,
    /// Reserved.
    pub _rsvd3: [u8; 0x148 - 0xD8],
    /// CR4.
    pub cr4: u64,
    /// CR3.
    pub cr3: u64,
    /// CR0.
    pub cr0: u64,
    /// DR7.
    pub dr7: u64,
    /// DR6.
    pub dr6: u64,
    /// RFLAGS.
    pub rflags: u64,
    /// RIP.
    pub rip: u64,
    /// Reserved.
    pub _rsvd4: [u8; 0x1D8 - 0x180],
    /// RSP.
    pub rsp: u64,
    /// S_CET, SSP, ISST (unused).
    pub _rsvd5: [u8; 0x1F8 - 0x1E0],
    /// RAX.
    pub rax: u64,
    /// STAR.
    pub star: u64,
    /// LSTAR.
    pub lstar: u64,
    /// CSTAR.
    pub cstar: u64,
    /// SFMASK.
    pub sfmask: u64,
    /// KernelGSBase.
    pub kernel_gs_base: u64,
    /// SYSENTER_CS.
    pub sysenter_cs: u64,
    /// SYSENTER_ESP.
    pub sysenter_esp: u64,
    /// SYSENTER_EIP.
    pub sysenter_eip: u64,
    /// CR2.
    pub cr2: u64,
    /// Reserved.
    pub _rsvd6: [u8; 0x268 - 0x248],
    /// Guest PAT (not loaded by QEMU 7.2).
    pub g_pat: u64,
    /// DBGCTL.
    pub dbgctl: u64,
    /// Rest of the page.
    pub _rsvd7: [u8; 0xC00 - 0x278],
}

/// A whole VMCB page.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C, align(4096))]
pub struct Vmcb {
    /// Control area (0x000).
    pub control: VmcbControl,
    /// State-save area (0x400).
    pub save: VmcbSave,
}

macro_rules! at {
    ($t:ty, $f:ident, $off:expr) => {
        const _: () = assert!(core::mem::offset_of!($t, $f) == $off);
    };
}
const _: () = assert!(core::mem::size_of::<Vmcb>() == 4096);
const _: () = assert!(core::mem::size_of::<VmcbControl>() == 0x400);
const _: () = assert!(core::mem::size_of::<VmcbSegment>() == 16);
at!(VmcbControl, exceptions, 0x08);
at!(VmcbControl, intercepts_lo, 0x0C);
at!(VmcbControl, intercepts_hi, 0x10);
at!(VmcbControl, iopm_base, 0x40);
at!(VmcbControl, msrpm_base, 0x48);
at!(VmcbControl, tsc_offset, 0x50);
at!(VmcbControl, asid, 0x58);
at!(VmcbControl, tlb_control, 0x5C);
at!(VmcbControl, int_ctl, 0x60);
at!(VmcbControl, int_vector, 0x64);
at!(VmcbControl, int_state, 0x68);
at!(VmcbControl, exit_code, 0x70);
at!(VmcbControl, exit_info1, 0x78);
at!(VmcbControl, exit_info2, 0x80);
at!(VmcbControl, exit_int_info, 0x88);
at!(VmcbControl, nested_ctl, 0x90);
at!(VmcbControl, event_inj, 0xA8);
at!(VmcbControl, nested_cr3, 0xB0);
at!(VmcbControl, virt_ext, 0xB8);
at!(VmcbControl, clean_bits, 0xC0);
at!(VmcbControl, next_rip, 0xC8);
at!(Vmcb, save, 0x400);
at!(VmcbSave, gdtr, 0x60);
at!(VmcbSave, ldtr, 0x70);
at!(VmcbSave, idtr, 0x80);
at!(VmcbSave, tr, 0x90);
at!(VmcbSave, cpl, 0xCB);
at!(VmcbSave, efer, 0xD0);
at!(VmcbSave, cr4, 0x148);
at!(VmcbSave, cr3, 0x150);
at!(VmcbSave, cr0, 0x158);
at!(VmcbSave, dr7, 0x160);
at!(VmcbSave, dr6, 0x168);
at!(VmcbSave, rflags, 0x170);
at!(VmcbSave, rip, 0x178);
at!(VmcbSave, rsp, 0x1D8);
at!(VmcbSave, rax, 0x1F8);
at!(VmcbSave, star, 0x200);
at!(VmcbSave, kernel_gs_base, 0x220);
at!(VmcbSave, sysenter_eip, 0x238);
at!(VmcbSave, cr2, 0x240);
at!(VmcbSave, g_pat, 0x268);

bitflags! {
    /// Instruction intercepts (VMCB words 3 and 4 as one u64 at 0x0C).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Intercepts: u64 {
        /// Physical interrupts.
        const INTR = 1 << 0;
        /// NMI.
        const NMI = 1 << 1;
        /// SMI.
        const SMI = 1 << 2;
        /// INIT.
        const INIT = 1 << 3;
        /// CPUID.
        const CPUID = 1 << 18;
        /// INVD.
        const INVD = 1 << 22;
        /// HLT.
        const HLT = 1 << 24;
        /// INVLPGA.
        const INVLPGA = 1 << 26;
        /// I/O through the IOPM.
        const IOIO_PROT = 1 << 27;
        /// MSRs through the MSRPM.
        const MSR_PROT = 1 << 28;
        /// Task switch.
        const TASK_SWITCH = 1 << 29;
        /// Shutdown (triple fault).
        const SHUTDOWN = 1 << 31;
        /// VMRUN (mandatory).
        const VMRUN = 1 << 32;
        /// VMMCALL.
        const VMMCALL = 1 << 33;
        /// VMLOAD.
        const VMLOAD = 1 << 34;
        /// VMSAVE.
        const VMSAVE = 1 << 35;
        /// STGI.
        const STGI = 1 << 36;
        /// CLGI.
        const CLGI = 1 << 37;
        /// SKINIT.
        const SKINIT = 1 << 38;
        /// RDTSCP.
        const RDTSCP = 1 << 39;
        /// ICEBP.
        const ICEBP = 1 << 40;
        /// WBINVD.
        const WBINVD = 1 << 41;
        /// MONITOR.
        const MONITOR = 1 << 42;
        /// MWAIT.
        const MWAIT = 1 << 43;
        /// XSETBV.
        const XSETBV = 1 << 45;
    }
}

impl Intercepts {
    /// What every DomU runs with: each exit we handle, plus the SVM instructions (which
    /// the guest cannot see, so they raise #UD).
    pub const DOMU: Self = Self::INTR
        .union(Self::NMI)
        .union(Self::SMI)
        .union(Self::INIT)
        .union(Self::CPUID)
        .union(Self::INVD)
        .union(Self::HLT)
        .union(Self::INVLPGA)
        .union(Self::IOIO_PROT)
        .union(Self::MSR_PROT)
        .union(Self::TASK_SWITCH)
        .union(Self::SHUTDOWN)
        .union(Self::VMRUN)
        .union(Self::VMMCALL)
        .union(Self::VMLOAD)
        .union(Self::VMSAVE)
        .union(Self::STGI)
        .union(Self::CLGI)
        .union(Self::SKINIT)
        .union(Self::ICEBP)
        .union(Self::MONITOR)
        .union(Self::MWAIT)
        .union(Self::XSETBV);
}

impl Intercepts {
    /// What domain 0 runs with: the DomU set without INTR, NMI and HLT. Dom0 owns pCPU 0,
    /// so physical interrupts go straight through its own IDT (with `V_INTR_MASKING`
    /// clear, its RFLAGS.IF masks them) and HLT really halts the pCPU until its next
    /// interrupt.
    pub const DOM0: Self = Self::DOMU
        .difference(Self::INTR)
        .difference(Self::NMI)
        .difference(Self::HLT);
}

impl VmcbControl {
    /// Sets the instruction intercepts (words 3 and 4).
    pub fn set_intercepts(&mut self, i: Intercepts) {
        self.intercepts_lo = i.bits() as u32;
        self.intercepts_hi = (i.bits() >> 32) as u32;
    }
}

/// `int_ctl`: a virtual interrupt (`int_vector`) is pending; the CPU clears it when it
/// delivers the interrupt.
pub const INT_CTL_V_IRQ: u32 = 1 << 8;
/// `int_ctl`: the priority of the virtual interrupt (bits 19:16).
pub const INT_CTL_V_INTR_PRIO_MASK: u32 = 0xF << 16;
/// `int_ctl`: ignore the virtual TPR when delivering V_IRQ.
pub const INT_CTL_V_IGN_TPR: u32 = 1 << 20;
/// `int_ctl`: virtualise RFLAGS.IF/TPR masking (host IF governs physical interrupts).
pub const INT_CTL_V_INTR_MASKING: u32 = 1 << 24;
/// `nested_ctl`: enable nested paging.
pub const NESTED_CTL_NP_ENABLE: u64 = 1;

/// An event to inject (EVENTINJ layout).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventInj {
    /// Vector.
    pub vector: u8,
    /// Type: 0 INTR, 2 NMI, 3 exception, 4 software INT.
    pub kind: u8,
    /// Error code, if the vector pushes one.
    pub error_code: Option<u32>,
}

impl EventInj {
    /// A hardware exception, with the error code that `vector` architecturally pushes.
    pub const fn exception(vector: u8, error_code: Option<u32>) -> Self {
        Self {
            vector,
            kind: 3,
            error_code,
        }
    }

    /// #GP(0).
    pub const GP0: Self = Self::exception(13, Some(0));
    /// #UD.
    pub const UD: Self = Self::exception(6, None);

    /// Encodes to the EVENTINJ field.
    pub const fn encode(self) -> u64 {
        let mut v = self.vector as u64 | ((self.kind as u64 & 7) << 8) | (1 << 31);
        if let Some(ec) = self.error_code {
            v |= (1 << 11) | ((ec as u64) << 32);
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_event_injection() {
        assert_eq!(EventInj::UD.encode(), 0x8000_0306);
        assert_eq!(EventInj::GP0.encode(), 0x8000_0B0D);
        assert_eq!(EventInj::exception(14, Some(2)).encode(), 0x2_8000_0B0E);
    }

    #[test]
    fn domu_intercepts_include_vmrun_and_vmmcall() {
        assert!(Intercepts::DOMU.contains(Intercepts::VMRUN | Intercepts::VMMCALL));
        assert_eq!(Intercepts::VMRUN.bits(), 1 << 32);
        assert_eq!(Intercepts::SHUTDOWN.bits(), 1 << 31);
    }
}
