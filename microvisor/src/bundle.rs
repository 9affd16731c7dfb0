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
/// Bundle format version.
pub const BUNDLE_VERSION: u32 = 1;
/// Most entries a bundle may hold.
pub const MAX_ENTRIES: usize = 64;
/// Payload alignment.
pub const PAYLOAD_ALIGN: u64 = 4096;

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
    /// Memory of the domain in MiB.
    pub mem_mib: u32,
    /// Offset of the payload from the start of the bundle.
    pub offset: u64,
    /// Size of the payload in bytes.
    pub size: u64,
    /// Domain name, NUL-padded ASCII.
    pub name: [u8; 32],
    /// Kernel command line, NUL-padded ASCII.
    pub cmdline: [u8; 64],
    /// Reserved, zero.
    pub reserved: [u8; 8],
}
const _: () = assert!(core::mem::size_of::<BundleEntry>() == 128);
const _: () = assert!(core::mem::offset_of!(BundleEntry, name) == 24);
const _: () = assert!(core::mem::offset_of!(BundleEntry, cmdline) == 56);

/// What an entry holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum EntryKind {
    /// A PVH ELF kernel started as an unprivileged domain at boot.
    DomU = 1,
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
    /// Entry `n`'s payload lies outside the bundle.
    PayloadOutOfBounds(usize),
    /// Entry `n`'s name or command line is not NUL-padded printable ASCII (or the name is
    /// empty).
    BadString(usize),
}

impl core::fmt::Display for BundleError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            BundleError::Truncated => write!(f, "bundle is truncated"),
            BundleError::BadMagic => write!(f, "not a boot bundle (bad magic)"),
            BundleError::UnsupportedVersion(v) => write!(f, "unsupported bundle version {v}"),
            BundleError::TooManyEntries(n) => {
                write!(f, "{n} entries, at most {MAX_ENTRIES} are allowed")
            }
            BundleError::SizeMismatch => write!(f, "bundle size does not match its header"),
            BundleError::UnknownKind(i) => write!(f, "entry {i} has an unknown kind"),
            BundleError::PayloadOutOfBounds(i) => write!(f, "entry {i} lies outside the bundle"),
            BundleError::BadString(i) => write!(f, "entry {i} has a malformed name or cmdline"),
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
    /// Kernel command line (may be empty).
    pub cmdline: &'a str,
    /// Memory in MiB.
    pub mem_mib: u32,
    /// The payload bytes.
    pub payload: &'a [u8],
}

/// A validated bundle.
#[derive(Clone, Copy, Debug)]
pub struct Bundle<'a> {
    bytes: &'a [u8],
    count: usize,
}

fn fixed_str(field: &[u8], allow_empty: bool) -> Option<&str> {
    let len = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    let (text, pad) = field.split_at(len);
    if pad.iter().any(|&b| b != 0) || (!allow_empty && text.is_empty()) {
        return None;
    }
    if !text.iter().all(|b| (0x20..0x7f).contains(b)) {
        return None;
    }
    core::str::from_utf8(text).ok()
}

impl<'a> Bundle<'a> {
    /// Validates `bytes` as a bundle: header, entry table, and every entry.
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
        // The module QEMU passes may be padded; the header's size must fit inside it.
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
        for i in 0..count {
            bundle.entry(i)?;
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

    fn entry(&self, i: usize) -> Result<Image<'a>, BundleError> {
        let off = 64 + i * 128;
        let raw = self
            .bytes
            .get(off..off + 128)
            .ok_or(BundleError::Truncated)?;
        let (e, _) = BundleEntry::read_from_prefix(raw).map_err(|_| BundleError::Truncated)?;
        let kind = match e.kind {
            1 => EntryKind::DomU,
            _ => return Err(BundleError::UnknownKind(i)),
        };
        let start = usize::try_from(e.offset).map_err(|_| BundleError::PayloadOutOfBounds(i))?;
        let size = usize::try_from(e.size).map_err(|_| BundleError::PayloadOutOfBounds(i))?;
        let end = start
            .checked_add(size)
            .ok_or(BundleError::PayloadOutOfBounds(i))?;
        let payload = self
            .bytes
            .get(start..end)
            .ok_or(BundleError::PayloadOutOfBounds(i))?;
        // Strings borrow from the bundle itself (offsets of `name` and `cmdline` in the entry).
        let name = fixed_str(&raw[24..56], false).ok_or(BundleError::BadString(i))?;
        let cmdline = fixed_str(&raw[56..120], true).ok_or(BundleError::BadString(i))?;
        Ok(Image {
            kind,
            name,
            cmdline,
            mem_mib: e.mem_mib,
            payload,
        })
    }

    /// Iterates over the (already validated) entries.
    pub fn images(&self) -> impl Iterator<Item = Image<'a>> + '_ {
        (0..self.count).filter_map(|i| self.entry(i).ok())
    }
}

/// Writes bundles (host only; used by xtask).
#[cfg(not(target_os = "none"))]
#[derive(Debug, Default)]
pub struct BundleBuilder {
    entries: std::vec::Vec<(BundleEntry, std::vec::Vec<u8>)>,
}

#[cfg(not(target_os = "none"))]
impl BundleBuilder {
    /// An empty bundle.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a DomU kernel. Fails if the name or command line does not fit or is not
    /// printable ASCII.
    pub fn add_domu(
        &mut self,
        name: &str,
        cmdline: &str,
        mem_mib: u32,
        elf: std::vec::Vec<u8>,
    ) -> Result<&mut Self, std::string::String> {
        let mut entry = BundleEntry {
            kind: EntryKind::DomU as u32,
            mem_mib,
            offset: 0,
            size: elf.len() as u64,
            name: [0; 32],
            cmdline: [0; 64],
            reserved: [0; 8],
        };
        let printable = |s: &str| s.bytes().all(|b| (0x20..0x7f).contains(&b));
        if name.is_empty() || name.len() > 31 || !printable(name) {
            return Err(std::format!(
                "domain name {name:?} must be 1-31 printable ASCII bytes"
            ));
        }
        if cmdline.len() > 63 || !printable(cmdline) {
            return Err(std::format!(
                "cmdline {cmdline:?} must be at most 63 printable ASCII bytes"
            ));
        }
        entry.name[..name.len()].copy_from_slice(name.as_bytes());
        entry.cmdline[..cmdline.len()].copy_from_slice(cmdline.as_bytes());
        self.entries.push((entry, elf));
        Ok(self)
    }

    /// Lays the bundle out and returns its bytes.
    pub fn build(&self) -> std::vec::Vec<u8> {
        let align = |v: u64| v.div_ceil(PAYLOAD_ALIGN) * PAYLOAD_ALIGN;
        let mut offset = align(64 + 128 * self.entries.len() as u64);
        let mut table = std::vec::Vec::new();
        for (entry, payload) in &self.entries {
            let mut e = *entry;
            e.offset = offset;
            offset = align(offset + payload.len() as u64);
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
            let start = e.offset as usize;
            out[start..start + self.entries[i].1.len()].copy_from_slice(&self.entries[i].1);
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
        assert_eq!(
            Bundle::parse(&good[..good.len() - 1]).unwrap_err(),
            BundleError::SizeMismatch
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
