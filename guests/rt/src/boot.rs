//! Boot information: a validated copy of `hvm_start_info`, its memory map and command line.
//!
//! [`BootInfo::read`] copies everything out of guest-physical memory through a [`PhysMem`]
//! reader, so the boot structures may be overwritten afterwards and the parsing is testable
//! on the host with a fake memory.

use core::fmt;

use shared_abi::pvh::{HVM_START_MAGIC, HvmMemmapEntry, HvmStartInfo};
use zerocopy::{FromZeros, IntoBytes};

use crate::{cmdline, memmap};

/// At most this many memory-map entries are kept (QEMU's `pvh.bin` also stops at 128).
pub const MAX_MEMMAP_ENTRIES: usize = 128;
/// At most this many command-line bytes are read, including the terminating NUL.
pub const MAX_CMDLINE_LEN: usize = 2048;

/// Reads guest-physical memory.
pub trait PhysMem {
    /// Fills `buf` from guest-physical `paddr..paddr + buf.len()`, or refuses with
    /// [`BootError::Unreadable`] when the range cannot be read.
    fn read(&mut self, paddr: u64, buf: &mut [u8]) -> Result<(), BootError>;
}

/// Why the boot information could not be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootError {
    /// `EBX` held 0 instead of the address of `hvm_start_info`.
    NullStartInfo,
    /// A structure lies where it cannot be read.
    Unreadable {
        /// What was being read.
        what: &'static str,
        /// Its guest-physical address.
        paddr: u64,
        /// Its length in bytes.
        len: u64,
    },
    /// `hvm_start_info.magic` is not [`HVM_START_MAGIC`].
    BadMagic(u32),
}

impl fmt::Display for BootError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            BootError::NullStartInfo => f.write_str("no hvm_start_info (EBX = 0)"),
            BootError::Unreadable { what, paddr, len } => {
                write!(f, "{what} at {paddr:#x} ({len} bytes) is not readable")
            }
            BootError::BadMagic(m) => {
                write!(
                    f,
                    "hvm_start_info magic {m:#x}, expected {HVM_START_MAGIC:#x}"
                )
            }
        }
    }
}

/// Non-fatal oddities found while reading the boot information.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BootWarnings {
    /// More than [`MAX_MEMMAP_ENTRIES`] memory-map entries; the rest were ignored.
    pub memmap_truncated: bool,
    /// `hvm_start_info.version` is 0, so it has no memory map.
    pub no_memmap: bool,
    /// The memory map lists no RAM.
    pub no_ram: bool,
    /// `hvm_start_info` itself does not lie in RAM according to the memory map.
    pub start_info_outside_ram: bool,
    /// The command line address is not in RAM; the command line was ignored.
    pub cmdline_outside_ram: bool,
    /// No NUL within [`MAX_CMDLINE_LEN`] bytes or before the end of RAM; it was cut there.
    pub cmdline_truncated: bool,
    /// The command line is not valid UTF-8; only the valid prefix is kept.
    pub cmdline_not_utf8: bool,
}

impl BootWarnings {
    /// One message per warning that is set.
    pub fn messages(&self) -> impl Iterator<Item = &'static str> {
        [
            (
                self.memmap_truncated,
                "memory map has too many entries; extra entries ignored",
            ),
            (self.no_memmap, "hvm_start_info version 0 has no memory map"),
            (self.no_ram, "memory map lists no RAM"),
            (
                self.start_info_outside_ram,
                "hvm_start_info does not lie in RAM",
            ),
            (
                self.cmdline_outside_ram,
                "command line is not in RAM; ignored",
            ),
            (
                self.cmdline_truncated,
                "command line not NUL-terminated; truncated",
            ),
            (
                self.cmdline_not_utf8,
                "command line is not UTF-8; truncated at the first bad byte",
            ),
        ]
        .into_iter()
        .filter_map(|(set, msg)| set.then_some(msg))
    }
}

/// Everything the domain builder told the guest at boot, copied and validated.
#[derive(Clone)]
pub struct BootInfo {
    start_info_paddr: u64,
    start_info: HvmStartInfo,
    memmap: [HvmMemmapEntry; MAX_MEMMAP_ENTRIES],
    memmap_len: usize,
    cmdline: [u8; MAX_CMDLINE_LEN],
    cmdline_len: usize,
    warnings: BootWarnings,
}

impl BootInfo {
    /// Reads and validates the `hvm_start_info` at `start_info_paddr`, then copies its
    /// memory map and command line.
    ///
    /// Fails if the structure is missing, unreadable or has the wrong magic, or if the
    /// memory map is unreadable. Problems with the command line are only warnings.
    pub fn read(start_info_paddr: u64, mem: &mut impl PhysMem) -> Result<Self, BootError> {
        if start_info_paddr == 0 {
            return Err(BootError::NullStartInfo);
        }
        let mut start_info = HvmStartInfo::new_zeroed();
        mem.read(start_info_paddr, start_info.as_mut_bytes())?;
        if start_info.magic != HVM_START_MAGIC {
            return Err(BootError::BadMagic(start_info.magic));
        }

        let mut info = BootInfo {
            start_info_paddr,
            start_info,
            memmap: [HvmMemmapEntry::new_zeroed(); MAX_MEMMAP_ENTRIES],
            memmap_len: 0,
            cmdline: [0; MAX_CMDLINE_LEN],
            cmdline_len: 0,
            warnings: BootWarnings::default(),
        };
        info.read_memmap(mem)?;
        info.read_cmdline(mem);
        Ok(info)
    }

    fn read_memmap(&mut self, mem: &mut impl PhysMem) -> Result<(), BootError> {
        let si = &self.start_info;
        if si.version == 0 {
            self.warnings.no_memmap = true;
            self.warnings.no_ram = true;
            return Ok(());
        }
        let given = usize::try_from(si.memmap_entries).unwrap_or(usize::MAX);
        let n = given.min(MAX_MEMMAP_ENTRIES);
        self.warnings.memmap_truncated = given > MAX_MEMMAP_ENTRIES;
        if n != 0 {
            let bytes = self.memmap[..n].as_mut_bytes();
            mem.read(si.memmap_paddr, bytes)
                .map_err(|_| BootError::Unreadable {
                    what: "memory map",
                    paddr: si.memmap_paddr,
                    len: bytes.len() as u64,
                })?;
        }
        self.memmap_len = n;
        self.warnings.no_ram = memmap::ram_end(self.memmap()) == 0;
        let si_len = core::mem::size_of::<HvmStartInfo>() as u64;
        self.warnings.start_info_outside_ram =
            !self.warnings.no_ram && !memmap::is_ram(self.memmap(), self.start_info_paddr, si_len);
        Ok(())
    }

    fn read_cmdline(&mut self, mem: &mut impl PhysMem) {
        let paddr = self.start_info.cmdline_paddr;
        if paddr == 0 {
            return;
        }
        // Never read past the RAM entry holding the command line (when RAM is known).
        let avail = if self.warnings.no_ram {
            MAX_CMDLINE_LEN as u64
        } else {
            memmap::ram_bytes_from(self.memmap(), paddr)
        };
        let len = usize::try_from(avail)
            .unwrap_or(usize::MAX)
            .min(MAX_CMDLINE_LEN);
        if len == 0 || mem.read(paddr, &mut self.cmdline[..len]).is_err() {
            self.warnings.cmdline_outside_ram = true;
            return;
        }
        let (n, terminated) = cmdline::nul_terminated_len(&self.cmdline[..len]);
        // A string that fills the whole buffer keeps room for nothing: cut one byte so the
        // kept text is always shorter than MAX_CMDLINE_LEN, as with a NUL-terminated copy.
        let n = if terminated {
            n
        } else {
            n.min(MAX_CMDLINE_LEN - 1)
        };
        self.warnings.cmdline_truncated = !terminated;
        let valid = cmdline::utf8_prefix(&self.cmdline[..n]).len();
        self.warnings.cmdline_not_utf8 = valid != n;
        self.cmdline_len = valid;
    }

    /// The guest-physical address `hvm_start_info` was read from.
    pub fn start_info_paddr(&self) -> u64 {
        self.start_info_paddr
    }

    /// The copied `hvm_start_info`.
    pub fn start_info(&self) -> &HvmStartInfo {
        &self.start_info
    }

    /// The memory map (at most [`MAX_MEMMAP_ENTRIES`] entries).
    pub fn memmap(&self) -> &[HvmMemmapEntry] {
        &self.memmap[..self.memmap_len]
    }

    /// End (exclusive) of the highest RAM entry: guest RAM is below this address.
    pub fn ram_end(&self) -> u64 {
        memmap::ram_end(self.memmap())
    }

    /// End of the memory map, reserved entries included ([`memmap::map_end`]).
    pub fn map_end(&self) -> u64 {
        memmap::map_end(self.memmap())
    }

    /// Total bytes of RAM in the memory map.
    pub fn ram_size(&self) -> u64 {
        memmap::ram_size(self.memmap())
    }

    /// The command line (empty when there is none).
    pub fn cmdline(&self) -> &str {
        cmdline::utf8_prefix(&self.cmdline[..self.cmdline_len])
    }

    /// The value of the last `key=value` word of the command line (`""` for a bare `key`).
    pub fn cmdline_value(&self, key: &str) -> Option<&str> {
        cmdline::value(self.cmdline(), key)
    }

    /// Non-fatal problems found while reading.
    pub fn warnings(&self) -> &BootWarnings {
        &self.warnings
    }
}

impl fmt::Debug for BootInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BootInfo")
            .field("start_info_paddr", &self.start_info_paddr)
            .field("start_info", &self.start_info)
            .field("memmap", &self.memmap())
            .field("cmdline", &self.cmdline())
            .field("warnings", &self.warnings)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared_abi::pvh::{E820_RAM, E820_RESERVED};
    use std::vec;
    use std::vec::Vec;

    /// Guest-physical memory `[0, bytes.len())`; reads beyond it are refused.
    struct FakeMem {
        bytes: Vec<u8>,
        reads: Vec<(u64, usize)>,
    }

    impl FakeMem {
        fn new(size: usize) -> Self {
            Self {
                bytes: vec![0xAA; size],
                reads: Vec::new(),
            }
        }
        fn put(&mut self, paddr: u64, data: &[u8]) {
            let at = usize::try_from(paddr).unwrap();
            self.bytes[at..at + data.len()].copy_from_slice(data);
        }
    }

    impl PhysMem for FakeMem {
        fn read(&mut self, paddr: u64, buf: &mut [u8]) -> Result<(), BootError> {
            self.reads.push((paddr, buf.len()));
            let err = BootError::Unreadable {
                what: "fake",
                paddr,
                len: buf.len() as u64,
            };
            let start = usize::try_from(paddr).map_err(|_| err)?;
            let end = start.checked_add(buf.len()).ok_or(err)?;
            buf.copy_from_slice(self.bytes.get(start..end).ok_or(err)?);
            Ok(())
        }
    }

    const SI: u64 = 0x1000;
    const MAP: u64 = 0x1100;
    const CMD: u64 = 0x1800;
    const RAM: u64 = 0x4000;

    fn start_info(entries: u32, cmdline: u64) -> HvmStartInfo {
        HvmStartInfo {
            magic: HVM_START_MAGIC,
            version: 1,
            cmdline_paddr: cmdline,
            memmap_paddr: MAP,
            memmap_entries: entries,
            ..Default::default()
        }
    }

    fn ram(addr: u64, size: u64) -> HvmMemmapEntry {
        HvmMemmapEntry {
            addr,
            size,
            kind: E820_RAM,
            reserved: 0,
        }
    }

    /// A domain with `RAM` bytes of RAM and a NUL-terminated `cmd`.
    fn guest(cmd: &[u8]) -> FakeMem {
        let mut m = FakeMem::new(usize::try_from(RAM).unwrap());
        m.put(SI, start_info(1, CMD).as_bytes());
        m.put(MAP, ram(0, RAM).as_bytes());
        m.put(CMD, cmd);
        m
    }

    #[test]
    fn reads_a_well_formed_domain() {
        let mut m = guest(b"attack=triple x\0garbage");
        let b = BootInfo::read(SI, &mut m).unwrap();
        assert_eq!(b.start_info_paddr(), SI);
        assert_eq!(b.memmap().len(), 1);
        assert_eq!(b.ram_end(), RAM);
        assert_eq!(b.ram_size(), RAM);
        assert_eq!(b.cmdline(), "attack=triple x");
        assert_eq!(b.cmdline_value("attack"), Some("triple"));
        assert_eq!(b.cmdline_value("x"), Some(""));
        assert_eq!(b.cmdline_value("garbage"), None);
        assert_eq!(*b.warnings(), BootWarnings::default());
        assert_eq!(b.warnings().messages().count(), 0);
    }

    #[test]
    fn fatal_errors() {
        let mut m = guest(b"\0");
        assert_eq!(
            BootInfo::read(0, &mut m).err(),
            Some(BootError::NullStartInfo)
        );
        m.put(SI, &0x1234_5678u32.to_le_bytes());
        assert_eq!(
            BootInfo::read(SI, &mut m).err(),
            Some(BootError::BadMagic(0x1234_5678))
        );
        assert!(matches!(
            BootInfo::read(RAM - 8, &mut m),
            Err(BootError::Unreadable { .. })
        ));
    }

    #[test]
    fn unreadable_memmap_is_fatal() {
        let mut m = guest(b"\0");
        let mut si = start_info(2, CMD);
        si.memmap_paddr = RAM - 24;
        m.put(SI, si.as_bytes());
        let err = BootInfo::read(SI, &mut m).err();
        assert_eq!(
            err,
            Some(BootError::Unreadable {
                what: "memory map",
                paddr: RAM - 24,
                len: 48
            })
        );
    }

    #[test]
    fn memmap_is_bounded() {
        let mut m = guest(b"\0");
        m.put(SI, start_info(u32::MAX, CMD).as_bytes());
        m.bytes.resize(0x10000, 0);
        let b = BootInfo::read(SI, &mut m).unwrap();
        assert_eq!(b.memmap().len(), MAX_MEMMAP_ENTRIES);
        assert!(b.warnings().memmap_truncated);
        assert_eq!(m.reads[1], (MAP, MAX_MEMMAP_ENTRIES * 24));
    }

    #[test]
    fn version_zero_has_no_memmap() {
        let mut m = guest(b"a=b\0");
        let mut si = start_info(1, CMD);
        si.version = 0;
        m.put(SI, si.as_bytes());
        let b = BootInfo::read(SI, &mut m).unwrap();
        assert!(b.memmap().is_empty());
        assert_eq!(b.ram_end(), 0);
        assert!(b.warnings().no_memmap && b.warnings().no_ram);
        assert_eq!(b.cmdline(), "a=b");
    }

    #[test]
    fn cmdline_reads_stop_at_the_end_of_ram() {
        let mut m = guest(b"\0");
        let near_end = RAM - 5;
        m.put(SI, start_info(1, near_end).as_bytes());
        m.put(near_end, b"abcde");
        let b = BootInfo::read(SI, &mut m).unwrap();
        assert_eq!(
            m.reads.last(),
            Some(&(near_end, 5)),
            "read only what is RAM"
        );
        assert_eq!(b.cmdline(), "abcde");
        assert!(b.warnings().cmdline_truncated);
    }

    #[test]
    fn cmdline_outside_ram_is_ignored() {
        let mut m = guest(b"\0");
        m.put(SI, start_info(1, RAM + 0x1000).as_bytes());
        let b = BootInfo::read(SI, &mut m).unwrap();
        assert_eq!(b.cmdline(), "");
        assert!(b.warnings().cmdline_outside_ram);
        assert_eq!(m.reads.len(), 2, "no read attempted beyond RAM");
    }

    #[test]
    fn long_cmdline_is_truncated_to_the_buffer() {
        let mut m = guest(&[b'x'; 3000]);
        let b = BootInfo::read(SI, &mut m).unwrap();
        assert_eq!(b.cmdline().len(), MAX_CMDLINE_LEN - 1);
        assert!(b.warnings().cmdline_truncated);
    }

    #[test]
    fn non_utf8_cmdline_keeps_the_valid_prefix() {
        let mut m = guest(b"ok=1 \xff\xfe bad\0");
        let b = BootInfo::read(SI, &mut m).unwrap();
        assert_eq!(b.cmdline(), "ok=1 ");
        assert_eq!(b.cmdline_value("ok"), Some("1"));
        assert!(b.warnings().cmdline_not_utf8);
    }

    #[test]
    fn start_info_outside_ram_warns() {
        let mut m = guest(b"\0");
        m.put(
            MAP,
            HvmMemmapEntry {
                addr: 0x1010,
                size: RAM - 0x1010,
                kind: E820_RAM,
                reserved: 0,
            }
            .as_bytes(),
        );
        let b = BootInfo::read(SI, &mut m).unwrap();
        assert!(b.warnings().start_info_outside_ram);
        assert_eq!(b.warnings().messages().count(), 1);
    }

    #[test]
    fn reserved_only_map_has_no_ram() {
        let mut m = guest(b"q\0");
        m.put(
            MAP,
            HvmMemmapEntry {
                addr: 0,
                size: RAM,
                kind: E820_RESERVED,
                reserved: 0,
            }
            .as_bytes(),
        );
        let b = BootInfo::read(SI, &mut m).unwrap();
        assert!(b.warnings().no_ram);
        assert_eq!(b.ram_end(), 0);
        assert_eq!(b.cmdline(), "q", "bounded read when RAM is unknown");
    }
}
