//! The boot bundle: the one `-initrd` module QEMU hands the microvisor (PVH passes at most
//! one module), holding every image the microvisor starts at boot.
//!
//! Layout (all integers little-endian):
//!
//! ```text
//! 0x00  BundleHeader (64 B)       magic "MVBUNDL\0", version, entry count, total size
//! 0x40  BundleEntry[count] (128 B each)
//! ...   payloads, each 4 KiB aligned, at the offsets the entries name
//! ```
//!
//! The parser treats the bundle as untrusted bytes: every offset, size and string is checked
//! before use, and a malformed bundle is an error, never a panic. xtask writes bundles with
//! [`BundleBuilder`] (host only), so the format lives in this one place.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Bundle magic.
pub const BUNDLE_MAGIC: [u8; 8] = *b"MVBUNDL\0";
/// Bundle format version. Version 2 moved command lines out of the entry into their own
/// payloads (Linux command lines outgrow a fixed field) and added the Dom0 entries.
pub const BUNDLE_VERSION: u32 = 2;
/// Most entries a bundle may hold.
pub const MAX_ENTRIES: usize = 64;
/// Payload alignment.
pub const PAYLOAD_ALIGN: u64 = 4096;
/// Longest command line an entry may carry, in bytes (Linux's x86 limit is 2048 with the
/// NUL).
pub const MAX_CMDLINE: usize = 2047;

/// Bundle header.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct BundleHeader {
    /// [`BUNDLE_MAGIC`].
    pub magic: [u8; 8],
    /// [`BUNDLE_VERSION`].
    pub version: u32,
    /// Number of entries following the header.
    pub entry_count: u32,
    /// Size of the whole bundle in bytes.
    pub total_size: u64,
    /// Reserved, zero.
    pub reserved: [u8; 40],
}
const _: () = assert!(core::mem::size_of::<BundleHeader>() == 64);

/// One image in the bundle.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct BundleEntry {
    /// [`EntryKind`] as `u32`.
    pub kind: u32,
    /// Memory of the domain in MiB (0 for [`EntryKind::Dom0Initrd`]).
    pub mem_mib: u32,
    /// Offset of the payload from the start of the bundle.
    pub offset: u64,
    /// Size of the payload in bytes.
    pub size: u64,
    /// Domain name, NUL-padded ASCII.
    pub name: [u8; 32],
    /// Offset of the command line (printable ASCII, no NUL) from the start of the bundle.
    pub cmdline_offset: u64,
    /// Length of the command line in bytes, at most [`MAX_CMDLINE`]; 0 for none.
    pub cmdline_size: u32,
    /// Reserved, zero.
    pub reserved: [u8; 60],
}
const _: () = assert!(core::mem::size_of::<BundleEntry>() == 128);
const _: () = assert!(core::mem::offset_of!(BundleEntry, name) == 24);
const _: () = assert!(core::mem::offset_of!(BundleEntry, cmdline_offset) == 56);

/// What an entry holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum EntryKind {
    /// A PVH ELF kernel started as an unprivileged domain at boot.
    DomU = 1,
    /// The PVH ELF kernel of domain 0 (at most one). `mem_mib` and the command line are
    /// Dom0's; this entry is the boot configuration of Dom0.
    Dom0 = 2,
    /// Dom0's initramfs, handed to Dom0 as its first module (at most one; needs a
    /// [`EntryKind::Dom0`] entry).
    Dom0Initrd = 3,
}

/// Why a bundle was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BundleError {
    /// Shorter than its header or entry table.
    Truncated,
    /// Wrong magic: not a bundle.
    BadMagic,
    /// A format version this microvisor does not read.
    UnsupportedVersion(u32),
    /// More than [`MAX_ENTRIES`] entries.
    TooManyEntries(u32),
    /// Header's total size disagrees with the module size.
    SizeMismatch,
    /// Entry `n` has an unknown kind.
    UnknownKind(usize),
    /// Entry `n`'s payload or command line lies outside the bundle.
    PayloadOutOfBounds(usize),
    /// Entry `n`'s name or command line is not printable ASCII (or the name is empty, or
    /// the command line is longer than [`MAX_CMDLINE`]).
    BadString(usize),
    /// Entry `n` is a second Dom0 kernel or initramfs, or an initramfs without a kernel.
    BadDom0(usize),
}

impl core::fmt::Display for BundleError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            BundleError::Truncated => write!(f, "bundle is truncated"),
            BundleError::BadMagic => write!(f, "not a boot bundle (bad magic)"),
            BundleError::UnsupportedVersion(v) => write!(
                f,
                "unsupported bundle version {v} (this microvisor reads {BUNDLE_VERSION}; rebuild the image with `cargo xtask image`)"
            ),
            BundleError::TooManyEntries(n) => {
                write!(f, "{n} entries, at most {MAX_ENTRIES} are allowed")
            }
            BundleError::SizeMismatch => write!(f, "bundle size does not match its header"),
            BundleError::UnknownKind(i) => write!(f, "entry {i} has an unknown kind"),
            BundleError::PayloadOutOfBounds(i) => write!(f, "entry {i} lies outside the bundle"),
            BundleError::BadString(i) => write!(f, "entry {i} has a malformed name or cmdline"),
            BundleError::BadDom0(i) => write!(
                f,
                "entry {i}: a bundle holds at most one Dom0 kernel and one Dom0 initramfs, and an initramfs needs the kernel"
            ),
        }
    }
}

/// A validated entry.
#[derive(Clone, Copy, Debug)]
pub struct Image<'a> {
    /// What the payload is.
    pub kind: EntryKind,
    /// Domain name.
    pub name: &'a str,
    /// Kernel command line.
    pub cmdline: &'a str,
    /// Memory of the domain in MiB.
    pub mem_mib: u32,
    /// The payload bytes.
    pub payload: &'a [u8],
}

/// Domain 0 as the bundle describes it.
#[derive(Clone, Copy, Debug)]
pub struct Dom0Images<'a> {
    /// Kernel, memory size and command line.
    pub kernel: Image<'a>,
    /// Initramfs, if any.
    pub initrd: Option<Image<'a>>,
}

/// A parsed, validated bundle.
#[derive(Clone, Copy, Debug)]
pub struct Bundle<'a> {
    bytes: &'a [u8],
    count: usize,
}

fn fixed_str(field: &[u8], allow_empty: bool) -> Option<&str> {
    let text = shared_abi::control::fixed_str(field)?;
    (allow_empty || !text.is_empty()).then_some(text)
}

fn printable(text: &[u8]) -> bool {
    text.iter().all(|b| (0x20..0x7f).contains(b))
}

impl<'a> Bundle<'a> {
    /// Parses and validates `bytes` (the module QEMU loaded).
    pub fn parse(bytes: &'a [u8]) -> Result<Self, BundleError> {
        let (header, _) =
            BundleHeader::read_from_prefix(bytes).map_err(|_| BundleError::Truncated)?;
        if header.magic != BUNDLE_MAGIC {
            return Err(BundleError::BadMagic);
        }
        if header.version != BUNDLE_VERSION {
            return Err(BundleError::UnsupportedVersion(header.version));
        }
        if header.entry_count as usize > MAX_ENTRIES {
            return Err(BundleError::TooManyEntries(header.entry_count));
        }
        let total = usize::try_from(header.total_size).map_err(|_| BundleError::SizeMismatch)?;
        if total > bytes.len() {
            return Err(BundleError::SizeMismatch);
        }
        let count = header.entry_count as usize;
        let table_end = 64 + count * 128;
        if table_end > total {
            return Err(BundleError::Truncated);
        }
        let bundle = Bundle {
            bytes: &bytes[..total],
            count,
        };
        let (mut dom0, mut initrd) = (false, false);
        for i in 0..count {
            let seen = match bundle.entry(i)?.kind {
                EntryKind::DomU => continue,
                EntryKind::Dom0 => &mut dom0,
                EntryKind::Dom0Initrd => &mut initrd,
            };
            if *seen {
                return Err(BundleError::BadDom0(i));
            }
            *seen = true;
        }
        if initrd && !dom0 {
            return Err(BundleError::BadDom0(count.saturating_sub(1)));
        }
        Ok(bundle)
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether the bundle holds no entries.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    fn slice(&self, i: usize, offset: u64, size: u64) -> Result<&'a [u8], BundleError> {
        let start = usize::try_from(offset).map_err(|_| BundleError::PayloadOutOfBounds(i))?;
        let size = usize::try_from(size).map_err(|_| BundleError::PayloadOutOfBounds(i))?;
        let end = start
            .checked_add(size)
            .ok_or(BundleError::PayloadOutOfBounds(i))?;
        self.bytes
            .get(start..end)
            .ok_or(BundleError::PayloadOutOfBounds(i))
    }

    fn entry(&self, i: usize) -> Result<Image<'a>, BundleError> {
        let off = 64 + i * 128;
        let raw = self
            .bytes
            .get(off..off + 128)
            .ok_or(BundleError::Truncated)?;
        let (e, _) = BundleEntry::read_from_prefix(raw).map_err(|_| BundleError::Truncated)?;
        let kind = match e.kind {
            1 => EntryKind::DomU,
            2 => EntryKind::Dom0,
            3 => EntryKind::Dom0Initrd,
            _ => return Err(BundleError::UnknownKind(i)),
        };
        let payload = self.slice(i, e.offset, e.size)?;
        let name = fixed_str(&raw[24..56], false).ok_or(BundleError::BadString(i))?;
        if e.cmdline_size as usize > MAX_CMDLINE {
            return Err(BundleError::BadString(i));
        }
        let cmdline = self.slice(i, e.cmdline_offset, u64::from(e.cmdline_size))?;
        if !printable(cmdline) {
            return Err(BundleError::BadString(i));
        }
        let cmdline = core::str::from_utf8(cmdline).map_err(|_| BundleError::BadString(i))?;
        Ok(Image {
            kind,
            name,
            cmdline,
            mem_mib: e.mem_mib,
            payload,
        })
    }

    /// Every entry, in bundle order.
    pub fn images(&self) -> impl Iterator<Item = Image<'a>> + '_ {
        (0..self.count).filter_map(|i| self.entry(i).ok())
    }

    /// The boot-time DomUs, in bundle order.
    pub fn domus(&self) -> impl Iterator<Item = Image<'a>> + '_ {
        self.images().filter(|img| img.kind == EntryKind::DomU)
    }

    /// Domain 0, if the bundle has one.
    pub fn dom0(&self) -> Option<Dom0Images<'a>> {
        let kernel = self.images().find(|img| img.kind == EntryKind::Dom0)?;
        let initrd = self.images().find(|img| img.kind == EntryKind::Dom0Initrd);
        Some(Dom0Images { kernel, initrd })
    }
}

/// Builds bundles (host only; used by xtask and tests).
#[cfg(not(target_os = "none"))]
#[derive(Debug, Default)]
pub struct BundleBuilder {
    entries: std::vec::Vec<(BundleEntry, std::vec::Vec<u8>, std::string::String)>,
}

#[cfg(not(target_os = "none"))]
impl BundleBuilder {
    /// An empty bundle.
    pub fn new() -> Self {
        Self::default()
    }

    fn push(
        &mut self,
        kind: EntryKind,
        name: &str,
        cmdline: &str,
        mem_mib: u32,
        payload: std::vec::Vec<u8>,
    ) -> Result<&mut Self, std::string::String> {
        if name.is_empty() || name.len() > 31 || !printable(name.as_bytes()) {
            return Err(std::format!(
                "domain name {name:?} must be 1-31 printable ASCII bytes"
            ));
        }
        if cmdline.len() > MAX_CMDLINE || !printable(cmdline.as_bytes()) {
            return Err(std::format!(
                "the command line of {name:?} must be at most {MAX_CMDLINE} printable ASCII bytes"
            ));
        }
        let mut entry = BundleEntry {
            kind: kind as u32,
            mem_mib,
            offset: 0,
            size: payload.len() as u64,
            name: [0; 32],
            cmdline_offset: 0,
            cmdline_size: cmdline.len() as u32,
            reserved: [0; 60],
        };
        entry.name[..name.len()].copy_from_slice(name.as_bytes());
        self.entries.push((entry, payload, cmdline.into()));
        Ok(self)
    }

    /// Adds a boot-time DomU: a PVH ELF kernel.
    pub fn add_domu(
        &mut self,
        name: &str,
        cmdline: &str,
        mem_mib: u32,
        elf: std::vec::Vec<u8>,
    ) -> Result<&mut Self, std::string::String> {
        self.push(EntryKind::DomU, name, cmdline, mem_mib, elf)
    }

    /// Adds domain 0: its PVH ELF kernel (e.g. the vmlinux inside Debian's bzImage), memory,
    /// command line and optional initramfs.
    pub fn add_dom0(
        &mut self,
        cmdline: &str,
        mem_mib: u32,
        elf: std::vec::Vec<u8>,
        initrd: Option<std::vec::Vec<u8>>,
    ) -> Result<&mut Self, std::string::String> {
        if self
            .entries
            .iter()
            .any(|(e, ..)| e.kind == EntryKind::Dom0 as u32)
        {
            return Err("a bundle holds one Dom0".into());
        }
        self.push(EntryKind::Dom0, "dom0", cmdline, mem_mib, elf)?;
        if let Some(initrd) = initrd {
            self.push(EntryKind::Dom0Initrd, "dom0-initrd", "", 0, initrd)?;
        }
        Ok(self)
    }

    /// Lays the bundle out and returns its bytes.
    pub fn build(&self) -> std::vec::Vec<u8> {
        let align = |v: u64| v.div_ceil(PAYLOAD_ALIGN) * PAYLOAD_ALIGN;
        let mut offset = align(64 + 128 * self.entries.len() as u64);
        let mut table = std::vec::Vec::new();
        for (entry, payload, cmdline) in &self.entries {
            let mut e = *entry;
            e.offset = offset;
            offset = align(offset + payload.len() as u64);
            e.cmdline_offset = offset;
            offset = align(offset + cmdline.len() as u64);
            table.push(e);
        }
        let header = BundleHeader {
            magic: BUNDLE_MAGIC,
            version: BUNDLE_VERSION,
            entry_count: self.entries.len() as u32,
            total_size: offset,
            reserved: [0; 40],
        };
        let mut out = std::vec![0u8; offset as usize];
        out[..64].copy_from_slice(header.as_bytes());
        for (i, e) in table.iter().enumerate() {
            out[64 + i * 128..64 + (i + 1) * 128].copy_from_slice(e.as_bytes());
            let (_, payload, cmdline) = &self.entries[i];
            let start = e.offset as usize;
            out[start..start + payload.len()].copy_from_slice(payload);
            let start = e.cmdline_offset as usize;
            out[start..start + cmdline.len()].copy_from_slice(cmdline.as_bytes());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> std::vec::Vec<u8> {
        let mut b = BundleBuilder::new();
        b.add_domu("hello", "", 16, std::vec![1, 2, 3]).unwrap();
        b.add_domu("hello2", "verbose", 32, std::vec![9; 5000])
            .unwrap();
        b.build()
    }

    #[test]
    fn round_trip() {
        let bytes = sample();
        let bundle = Bundle::parse(&bytes).unwrap();
        let images: std::vec::Vec<_> = bundle.images().collect();
        assert_eq!(images.len(), 2);
        assert_eq!(images[0].name, "hello");
        assert_eq!(images[0].payload, &[1, 2, 3]);
        assert_eq!(images[1].cmdline, "verbose");
        assert_eq!(images[1].mem_mib, 32);
        assert_eq!(images[1].payload.len(), 5000);
    }

    #[test]
    fn rejects_malformed_bundles() {
        let good = sample();
        assert_eq!(
            Bundle::parse(&good[..10]).unwrap_err(),
            BundleError::Truncated
        );
        let mut bad = good.clone();
        bad[0] = b'X';
        assert_eq!(Bundle::parse(&bad).unwrap_err(), BundleError::BadMagic);
        let mut bad = good.clone();
        bad[8] = 9;
        assert_eq!(
            Bundle::parse(&bad).unwrap_err(),
            BundleError::UnsupportedVersion(9)
        );
        let mut bad = good.clone();
        bad[64 + 8..64 + 16].copy_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(
            Bundle::parse(&bad).unwrap_err(),
            BundleError::PayloadOutOfBounds(0)
        );
        let mut bad = good.clone();
        bad[64 + 24] = 0xff;
        assert_eq!(Bundle::parse(&bad).unwrap_err(), BundleError::BadString(0));
        let mut bad = good.clone();
        bad[64 + 128 + 64..64 + 128 + 68].copy_from_slice(&4000u32.to_le_bytes());
        assert_eq!(Bundle::parse(&bad).unwrap_err(), BundleError::BadString(1));
        assert_eq!(
            Bundle::parse(&good[..good.len() - 1]).unwrap_err(),
            BundleError::SizeMismatch
        );
    }

    #[test]
    fn dom0_entries() {
        let long = "console=ttyS0 ".repeat(100);
        let mut b = BundleBuilder::new();
        b.add_domu("hello", "", 16, std::vec![1]).unwrap();
        b.add_dom0(
            long.trim_end(),
            512,
            std::vec![7; 9000],
            Some(std::vec![8; 10]),
        )
        .unwrap();
        assert!(b.add_dom0("", 1, std::vec![], None).is_err());
        let bytes = b.build();
        let bundle = Bundle::parse(&bytes).unwrap();
        let dom0 = bundle.dom0().unwrap();
        assert_eq!(dom0.kernel.mem_mib, 512);
        assert_eq!(dom0.kernel.cmdline, long.trim_end());
        assert_eq!(dom0.initrd.unwrap().payload, &[8; 10]);
        assert_eq!(bundle.domus().count(), 1);

        // A second Dom0 kernel, or an initramfs without one, is refused.
        let mut dup = bytes.clone();
        dup[64 + 256..64 + 260].copy_from_slice(&2u32.to_le_bytes());
        assert_eq!(Bundle::parse(&dup).unwrap_err(), BundleError::BadDom0(2));
        let mut orphan = bytes.clone();
        orphan[64 + 128..64 + 132].copy_from_slice(&1u32.to_le_bytes());
        assert!(matches!(
            Bundle::parse(&orphan),
            Err(BundleError::BadDom0(_))
        ));
        assert!(
            BundleBuilder::new()
                .add_dom0(&"x".repeat(MAX_CMDLINE + 1), 1, std::vec![], None)
                .is_err()
        );
    }

    proptest::proptest! {
        #[test]
        fn never_panics_on_garbage(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..2048)) {
            let _ = Bundle::parse(&bytes);
        }

        #[test]
        fn never_panics_on_mutated_bundles(idx in 0usize..512, val in proptest::num::u8::ANY) {
            let mut bytes = sample();
            let i = idx % bytes.len();
            bytes[i] = val;
            if let Ok(b) = Bundle::parse(&bytes) {
                for img in b.images() { let _ = img.payload.len(); }
            }
        }
    }
}
