//! Parsing PVH kernels: ELF64 headers, `PT_LOAD` segments and the Xen PVH entry note.
//!
//! The image is untrusted bytes: every offset and size is checked, nothing panics, and a
//! kernel without a PVH entry note is refused (as QEMU refuses it).

use shared_abi::pvh::XEN_ELFNOTE_PHYS32_ENTRY;
use zerocopy::{FromBytes, Immutable, KnownLayout};

#[derive(Clone, Copy, Debug, FromBytes, Immutable, KnownLayout)]
#[repr(C)]
struct Elf64Header {
    ident: [u8; 16],
    kind: u16,
    machine: u16,
    version: u32,
    entry: u64,
    phoff: u64,
    shoff: u64,
    flags: u32,
    ehsize: u16,
    phentsize: u16,
    phnum: u16,
    shentsize: u16,
    shnum: u16,
    shstrndx: u16,
}
const _: () = assert!(core::mem::size_of::<Elf64Header>() == 64);

#[derive(Clone, Copy, Debug, FromBytes, Immutable, KnownLayout)]
#[repr(C)]
struct Elf64Phdr {
    kind: u32,
    flags: u32,
    offset: u64,
    vaddr: u64,
    paddr: u64,
    filesz: u64,
    memsz: u64,
    align: u64,
}
const _: () = assert!(core::mem::size_of::<Elf64Phdr>() == 56);

const PT_LOAD: u32 = 1;
const PT_NOTE: u32 = 4;
const EM_X86_64: u16 = 62;
const ET_EXEC: u16 = 2;
/// Most program headers we look at.
const MAX_PHDRS: u16 = 64;

/// Why an image was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ElfError {
    /// Not an ELF file.
    NotElf,
    /// ELF, but not a little-endian x86-64 executable (ELF32 is not supported yet).
    Unsupported,
    /// Headers point outside the file or are malformed.
    Malformed,
    /// No `XEN_ELFNOTE_PHYS32_ENTRY` note: not a PVH kernel.
    NoPvhNote,
    /// No loadable segment.
    NoSegments,
}

impl core::fmt::Display for ElfError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            ElfError::NotElf => "not an ELF file",
            ElfError::Unsupported => "not a little-endian x86-64 ELF executable",
            ElfError::Malformed => "malformed ELF headers",
            ElfError::NoPvhNote => "no PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY)",
            ElfError::NoSegments => "no loadable segments",
        })
    }
}

/// One loadable segment, already checked against the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment<'a> {
    /// Guest-physical load address (`p_paddr`).
    pub paddr: u64,
    /// Bytes to copy.
    pub data: &'a [u8],
    /// Size in memory (`>= data.len()`; the rest is zero).
    pub mem_size: u64,
}

/// A validated PVH kernel image.
#[derive(Clone, Copy, Debug)]
pub struct PvhImage<'a> {
    bytes: &'a [u8],
    phoff: usize,
    phnum: u16,
    /// The 32-bit physical entry point from the PVH note.
    pub entry: u32,
}

fn phdr(bytes: &[u8], phoff: usize, i: u16) -> Result<Elf64Phdr, ElfError> {
    let off = phoff + usize::from(i) * 56;
    let raw = bytes.get(off..off + 56).ok_or(ElfError::Malformed)?;
    Elf64Phdr::read_from_bytes(raw).map_err(|_| ElfError::Malformed)
}

fn file_range(bytes: &[u8], offset: u64, size: u64) -> Result<&[u8], ElfError> {
    let start = usize::try_from(offset).map_err(|_| ElfError::Malformed)?;
    let len = usize::try_from(size).map_err(|_| ElfError::Malformed)?;
    let end = start.checked_add(len).ok_or(ElfError::Malformed)?;
    bytes.get(start..end).ok_or(ElfError::Malformed)
}

/// Finds the PVH entry in a note segment's bytes.
fn pvh_entry_in_notes(mut notes: &[u8]) -> Option<u32> {
    let word = |b: &[u8], i: usize| -> Option<u32> {
        Some(u32::from_le_bytes(b.get(i..i + 4)?.try_into().ok()?))
    };
    while notes.len() >= 12 {
        let namesz = word(notes, 0)? as usize;
        let descsz = word(notes, 4)? as usize;
        let kind = word(notes, 8)?;
        let name_end = 12usize.checked_add(namesz.checked_next_multiple_of(4)?)?;
        let desc_end = name_end.checked_add(descsz.checked_next_multiple_of(4)?)?;
        let name = notes.get(12..12 + namesz)?;
        let desc = notes.get(name_end..name_end + descsz)?;
        if kind == XEN_ELFNOTE_PHYS32_ENTRY && name.starts_with(b"Xen") && desc.len() >= 4 {
            // The descriptor is 4 or 8 bytes; the entry is its low 32 bits.
            return word(desc, 0);
        }
        notes = notes.get(desc_end..)?;
    }
    None
}

impl<'a> PvhImage<'a> {
    /// Validates `bytes` as a PVH kernel.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, ElfError> {
        let (h, _) = Elf64Header::read_from_prefix(bytes).map_err(|_| ElfError::NotElf)?;
        if h.ident[..4] != *b"\x7fELF" {
            return Err(ElfError::NotElf);
        }
        // ELFCLASS64, little-endian, version 1, x86-64 executable.
        if h.ident[4] != 2 || h.ident[5] != 1 || h.machine != EM_X86_64 || h.kind != ET_EXEC {
            return Err(ElfError::Unsupported);
        }
        if h.phentsize != 56 || h.phnum == 0 || h.phnum > MAX_PHDRS {
            return Err(ElfError::Malformed);
        }
        let phoff = usize::try_from(h.phoff).map_err(|_| ElfError::Malformed)?;
        let mut entry = None;
        let mut loads = 0;
        for i in 0..h.phnum {
            let p = phdr(bytes, phoff, i)?;
            match p.kind {
                PT_NOTE => {
                    let notes = file_range(bytes, p.offset, p.filesz)?;
                    entry = entry.or(pvh_entry_in_notes(notes));
                }
                PT_LOAD => {
                    file_range(bytes, p.offset, p.filesz)?;
                    if p.filesz > p.memsz || p.paddr.checked_add(p.memsz).is_none() {
                        return Err(ElfError::Malformed);
                    }
                    loads += 1;
                }
                _ => {}
            }
        }
        let entry = entry.ok_or(ElfError::NoPvhNote)?;
        if loads == 0 {
            return Err(ElfError::NoSegments);
        }
        Ok(Self {
            bytes,
            phoff,
            phnum: h.phnum,
            entry,
        })
    }

    /// The loadable segments.
    pub fn segments(&self) -> impl Iterator<Item = Segment<'a>> + '_ {
        (0..self.phnum).filter_map(move |i| {
            let p = phdr(self.bytes, self.phoff, i).ok()?;
            if p.kind != PT_LOAD {
                return None;
            }
            let data = file_range(self.bytes, p.offset, p.filesz).ok()?;
            Some(Segment {
                paddr: p.paddr,
                data,
                mem_size: p.memsz,
            })
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A minimal PVH ELF: one PT_LOAD at 1 MiB and a note segment.
    pub(crate) fn tiny_pvh(entry: u32) -> std::vec::Vec<u8> {
        tiny_pvh_at(0x10_0000, entry)
    }

    /// [`tiny_pvh`] with its PT_LOAD at `paddr`.
    pub(crate) fn tiny_pvh_at(paddr: u64, entry: u32) -> std::vec::Vec<u8> {
        let mut f = std::vec![0u8; 0x200];
        f[..4].copy_from_slice(b"\x7fELF");
        f[4] = 2;
        f[5] = 1;
        f[6] = 1;
        f[16..18].copy_from_slice(&ET_EXEC.to_le_bytes());
        f[18..20].copy_from_slice(&EM_X86_64.to_le_bytes());
        f[32..40].copy_from_slice(&64u64.to_le_bytes()); // phoff
        f[54..56].copy_from_slice(&56u16.to_le_bytes());
        f[56..58].copy_from_slice(&2u16.to_le_bytes());
        let mut ph = |i: usize, kind: u32, off: u64, paddr: u64, filesz: u64, memsz: u64| {
            let b = 64 + i * 56;
            f[b..b + 4].copy_from_slice(&kind.to_le_bytes());
            f[b + 8..b + 16].copy_from_slice(&off.to_le_bytes());
            f[b + 24..b + 32].copy_from_slice(&paddr.to_le_bytes());
            f[b + 32..b + 40].copy_from_slice(&filesz.to_le_bytes());
            f[b + 40..b + 48].copy_from_slice(&memsz.to_le_bytes());
        };
        ph(0, PT_LOAD, 0x180, paddr, 0x10, 0x2000);
        ph(1, PT_NOTE, 0x100, 0, 24, 24);
        let note = [4u32, 8, XEN_ELFNOTE_PHYS32_ENTRY];
        for (i, w) in note.iter().enumerate() {
            f[0x100 + i * 4..0x104 + i * 4].copy_from_slice(&w.to_le_bytes());
        }
        f[0x10c..0x110].copy_from_slice(b"Xen\0");
        f[0x110..0x118].copy_from_slice(&u64::from(entry).to_le_bytes());
        f[0x180..0x190].copy_from_slice(&[0xAA; 16]);
        f
    }

    #[test]
    fn parses_a_pvh_kernel() {
        let f = tiny_pvh(0x10_0040);
        let img = PvhImage::parse(&f).unwrap();
        assert_eq!(img.entry, 0x10_0040);
        let segs: std::vec::Vec<_> = img.segments().collect();
        assert_eq!(segs.len(), 1);
        assert_eq!(segs[0].paddr, 0x10_0000);
        assert_eq!(segs[0].data, &[0xAA; 16]);
        assert_eq!(segs[0].mem_size, 0x2000);
    }

    #[test]
    fn refuses_bad_images() {
        assert_eq!(PvhImage::parse(b"hello").unwrap_err(), ElfError::NotElf);
        assert_eq!(PvhImage::parse(&[0u8; 64]).unwrap_err(), ElfError::NotElf);
        let mut f = tiny_pvh(1);
        f[0x108] = 99; // note type
        assert_eq!(PvhImage::parse(&f).unwrap_err(), ElfError::NoPvhNote);
        let mut f = tiny_pvh(1);
        f[18] = 3; // EM_386
        assert_eq!(PvhImage::parse(&f).unwrap_err(), ElfError::Unsupported);
        let mut f = tiny_pvh(1);
        f[64 + 32..64 + 40].copy_from_slice(&u64::MAX.to_le_bytes()); // filesz
        assert_eq!(PvhImage::parse(&f).unwrap_err(), ElfError::Malformed);
        let mut f = tiny_pvh(1);
        f[0x100..0x104].copy_from_slice(&u32::MAX.to_le_bytes()); // namesz
        assert_eq!(PvhImage::parse(&f).unwrap_err(), ElfError::NoPvhNote);
    }

    proptest! {
        #[test]
        fn never_panics_on_mutations(idx in 0usize..0x200, val in any::<u8>()) {
            let mut f = tiny_pvh(0x10_0000);
            f[idx] = val;
            if let Ok(img) = PvhImage::parse(&f) {
                for s in img.segments() { prop_assert!(s.data.len() as u64 <= s.mem_size); }
            }
        }

        #[test]
        fn never_panics_on_garbage(bytes in proptest::collection::vec(any::<u8>(), 0..1024)) {
            let _ = PvhImage::parse(&bytes);
        }
    }
}
