//! Decoding #VMEXIT codes and their EXITINFO fields (QEMU 7.2 TCG semantics; see
//! PLATFORM-FACTS 1.4).

/// The exits the microvisor knows about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SvmExit {
    /// Exception `0x40 + vector` (only those we intercept).
    Exception(u8),
    /// Physical interrupt (0x60).
    Intr,
    /// NMI (0x61).
    Nmi,
    /// SMI (0x62).
    Smi,
    /// INIT (0x63).
    Init,
    /// Virtual interrupt window (0x64).
    Vintr,
    /// CPUID (0x72).
    Cpuid,
    /// INVD (0x76).
    Invd,
    /// HLT (0x78).
    Hlt,
    /// INVLPGA (0x7A).
    Invlpga,
    /// I/O port access (0x7B).
    Ioio,
    /// RDMSR/WRMSR (0x7C).
    Msr,
    /// Task switch (0x7D).
    TaskSwitch,
    /// Shutdown: a triple fault (0x7F).
    Shutdown,
    /// VMRUN (0x80).
    Vmrun,
    /// VMMCALL (0x81).
    Vmmcall,
    /// VMLOAD (0x82).
    Vmload,
    /// VMSAVE (0x83).
    Vmsave,
    /// STGI (0x84).
    Stgi,
    /// CLGI (0x85).
    Clgi,
    /// SKINIT (0x86).
    Skinit,
    /// ICEBP (0x88).
    Icebp,
    /// MONITOR (0x8A).
    Monitor,
    /// MWAIT (0x8B).
    Mwait,
    /// XSETBV (0x8D).
    Xsetbv,
    /// Nested page fault (0x400).
    Npf,
    /// VMEXIT_INVALID: the VMCB failed VMRUN's consistency checks.
    Invalid,
}

impl TryFrom<u64> for SvmExit {
    type Error = u64;

    /// Decodes an exit code; unknown codes are returned as the error.
    fn try_from(code: u64) -> Result<Self, u64> {
        // QEMU 7.2 stores VMEXIT_INVALID as a 32-bit -1 (PLATFORM-FACTS 1.3).
        if code as u32 == 0xFFFF_FFFF {
            return Ok(SvmExit::Invalid);
        }
        Ok(match code {
            0x40..=0x5F => SvmExit::Exception((code - 0x40) as u8),
            0x60 => SvmExit::Intr,
            0x61 => SvmExit::Nmi,
            0x62 => SvmExit::Smi,
            0x63 => SvmExit::Init,
            0x64 => SvmExit::Vintr,
            0x72 => SvmExit::Cpuid,
            0x76 => SvmExit::Invd,
            0x78 => SvmExit::Hlt,
            0x7A => SvmExit::Invlpga,
            0x7B => SvmExit::Ioio,
            0x7C => SvmExit::Msr,
            0x7D => SvmExit::TaskSwitch,
            0x7F => SvmExit::Shutdown,
            0x80 => SvmExit::Vmrun,
            0x81 => SvmExit::Vmmcall,
            0x82 => SvmExit::Vmload,
            0x83 => SvmExit::Vmsave,
            0x84 => SvmExit::Stgi,
            0x85 => SvmExit::Clgi,
            0x86 => SvmExit::Skinit,
            0x88 => SvmExit::Icebp,
            0x8A => SvmExit::Monitor,
            0x8B => SvmExit::Mwait,
            0x8D => SvmExit::Xsetbv,
            0x400 => SvmExit::Npf,
            _ => return Err(code),
        })
    }
}

/// A decoded IOIO exit (EXITINFO1; EXITINFO2 is the next RIP).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IoAccess {
    /// Port number.
    pub port: u16,
    /// `true` for IN/INS.
    pub is_in: bool,
    /// String instruction (INS/OUTS).
    pub string: bool,
    /// REP prefix.
    pub rep: bool,
    /// Operand size in bytes (1, 2 or 4).
    pub size: u8,
}

impl IoAccess {
    /// Decodes EXITINFO1 of an IOIO exit.
    pub fn decode(info1: u64) -> Self {
        let size = if info1 & (1 << 4) != 0 {
            1
        } else if info1 & (1 << 5) != 0 {
            2
        } else {
            4
        };
        Self {
            port: (info1 >> 16) as u16,
            is_in: info1 & 1 != 0,
            string: info1 & (1 << 2) != 0,
            rep: info1 & (1 << 3) != 0,
            size,
        }
    }
}

/// A decoded nested page fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NpfInfo {
    /// Faulting guest-physical address.
    pub gpa: u64,
    /// The page was present (a protection fault) rather than missing.
    pub present: bool,
    /// A write access.
    pub write: bool,
    /// An instruction fetch.
    pub fetch: bool,
    /// Fault during the guest's own page-table walk (rather than on the final address).
    pub in_walk: bool,
}

impl NpfInfo {
    /// Decodes EXITINFO1/EXITINFO2 of an NPF exit.
    pub fn decode(info1: u64, info2: u64) -> Self {
        Self {
            gpa: info2,
            present: info1 & 1 != 0,
            write: info1 & 2 != 0,
            fetch: info1 & (1 << 4) != 0,
            in_walk: info1 & (1 << 33) != 0,
        }
    }
}

impl core::fmt::Display for NpfInfo {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let access = if self.fetch {
            "fetch"
        } else if self.write {
            "write"
        } else {
            "read"
        };
        let why = if self.present {
            "protection"
        } else {
            "not present"
        };
        let walk = if self.in_walk {
            ", during guest page walk"
        } else {
            ""
        };
        write!(f, "gpa {:#x} ({access}, {why}{walk})", self.gpa)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_exit_codes() {
        assert_eq!(SvmExit::try_from(0x81), Ok(SvmExit::Vmmcall));
        assert_eq!(SvmExit::try_from(0x4E), Ok(SvmExit::Exception(14)));
        assert_eq!(SvmExit::try_from(0xFFFF_FFFF), Ok(SvmExit::Invalid));
        assert_eq!(SvmExit::try_from(u64::MAX), Ok(SvmExit::Invalid));
        assert_eq!(SvmExit::try_from(0x401), Err(0x401));
    }

    #[test]
    fn decodes_ioio_as_measured() {
        // `out %al,$0x80` and `in $0x71,%al` under QEMU 7.2 (PLATFORM-FACTS 1.4).
        let out = IoAccess::decode(0x0080_0010);
        assert_eq!((out.port, out.is_in, out.size), (0x80, false, 1));
        let inp = IoAccess::decode(0x0071_0011);
        assert_eq!((inp.port, inp.is_in, inp.size), (0x71, true, 1));
    }

    #[test]
    fn decodes_npf_as_measured() {
        let npf = NpfInfo::decode(0x1_0000_0004, 0xC000_0000);
        assert!(!npf.present && !npf.write && !npf.in_walk);
        assert_eq!(npf.gpa, 0xC000_0000);
        let walk = NpfInfo::decode(0x2_0000_0006, 0x5000);
        assert!(walk.in_walk && walk.write);
    }
}
