//! Grant tables, v1 ([`shared_abi::grant_table`]): the granting side.
//!
//! A guest shares one of its frames with another domain (a back-end in domain 0) by
//! filling an entry of its grant table; the entry's index (the *reference*) then travels
//! to the other side. The microvisor reads and marks entries with atomic operations while
//! the guest may write them, so [`GrantFrame`] is made of atomics only, laid out exactly
//! as a table frame of [`GrantEntryV1`]s: per entry one 32-bit word with `flags` in its
//! low half and `domid` in its high half (the word the microvisor compares and swaps),
//! then the 32-bit frame number.
//!
//! - [`GrantFrame::grant_access`] writes the grantee and the frame with the flags still
//!   0, then the flags with a release store, so whoever sees the flags sees the rest.
//! - [`GrantFrame::end_access`] revokes an entry with one compare-and-swap of the word that
//!   succeeds only while neither `GTF_READING` nor `GTF_WRITING` is set: a grant that the
//!   other side maps or is copying cannot be taken back (the granter must wait and retry).
//!
//! On bare metal, [`init`] places the runtime's static, page-aligned frame as table frame
//! 0 (`XENMEM_add_to_physmap`, space `grant_table`; its guest-physical address is its
//! address, as the runtime identity-maps 0..4 GiB), and [`grant_access`] / [`end_access`]
//! use it. Host tests use ordinary instances.

use core::sync::atomic::{AtomicU32, Ordering};

use shared_abi::grant_table::{
    ENTRIES_PER_FRAME, GTF_PERMIT_ACCESS, GTF_READING, GTF_READONLY, GTF_WRITING, GrantEntryV1,
};

/// One entry, as atomics (8 bytes).
#[derive(Debug)]
#[repr(C)]
pub struct Entry {
    /// `flags` (bits 15:0) and `domid` (bits 31:16), as the microvisor swaps them.
    word: AtomicU32,
    /// The granted frame.
    frame: AtomicU32,
}

/// One frame of a v1 grant table, as atomics (4096 bytes, page-aligned).
#[derive(Debug)]
#[repr(C, align(4096))]
pub struct GrantFrame {
    entries: [Entry; ENTRIES_PER_FRAME as usize],
}

const _: () = {
    use core::mem::{offset_of, size_of};
    assert!(size_of::<Entry>() == size_of::<GrantEntryV1>());
    assert!(offset_of!(GrantEntryV1, flags) == 0 && offset_of!(GrantEntryV1, domid) == 2);
    assert!(offset_of!(Entry, frame) == offset_of!(GrantEntryV1, frame));
    assert!(size_of::<GrantFrame>() == shared_abi::PAGE_SIZE);
};

/// Why a grant call was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GrantError {
    /// The reference is not an entry of the table.
    BadRef,
    /// The frame number does not fit an entry (32 bits).
    BadFrame,
    /// The grantee still uses the entry (`GTF_READING`/`GTF_WRITING` set): try later.
    InUse,
    /// The table has not been placed ([`init`]) or cannot be (no hypervisor).
    NoTable,
}

impl core::fmt::Display for GrantError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            GrantError::BadRef => "no such grant reference",
            GrantError::BadFrame => "frame number beyond 32 bits",
            GrantError::InUse => "the grantee still uses the entry",
            GrantError::NoTable => "no grant table placed",
        })
    }
}

/// The flags of an entry word.
fn flags_of(word: u32) -> u16 {
    word as u16
}

/// An entry word of `flags` and `domid`.
fn word_of(flags: u16, domid: u16) -> u32 {
    u32::from(flags) | (u32::from(domid) << 16)
}

impl Entry {
    const fn new() -> Self {
        Self {
            word: AtomicU32::new(0),
            frame: AtomicU32::new(0),
        }
    }
}

impl GrantFrame {
    /// A frame of invalid entries.
    pub const fn new() -> Self {
        Self {
            entries: [const { Entry::new() }; ENTRIES_PER_FRAME as usize],
        }
    }

    fn entry(&self, gref: u32) -> Result<&Entry, GrantError> {
        self.entries.get(gref as usize).ok_or(GrantError::BadRef)
    }

    /// Grants `domid` access to frame `gfn` through entry `gref` (read-only if `readonly`).
    ///
    /// The entry must not be in use (the caller owns its references): its grantee and
    /// frame are written first, with the flags 0, then the flags.
    ///
    /// # Errors
    /// [`GrantError::BadRef`], [`GrantError::BadFrame`].
    pub fn grant_access(
        &self,
        gref: u32,
        domid: u16,
        gfn: u64,
        readonly: bool,
    ) -> Result<(), GrantError> {
        let e = self.entry(gref)?;
        let frame = u32::try_from(gfn).map_err(|_| GrantError::BadFrame)?;
        // ORDERING: Relaxed stores of the grantee (flags still 0: nothing is granted yet)
        // and the frame; the Release store of the flags below keeps them before it, so a
        // reader that sees GTF_PERMIT_ACCESS (the microvisor compares and swaps the word,
        // then reads the frame) sees this grantee and this frame.
        e.word.store(word_of(0, domid), Ordering::Relaxed);
        e.frame.store(frame, Ordering::Relaxed);
        let flags = GTF_PERMIT_ACCESS | if readonly { GTF_READONLY } else { 0 };
        e.word.store(word_of(flags, domid), Ordering::Release);
        Ok(())
    }

    /// Revokes entry `gref`: sets its flags to 0, provided the grantee is not using it.
    ///
    /// # Errors
    /// [`GrantError::BadRef`]; [`GrantError::InUse`] while `GTF_READING` or
    /// `GTF_WRITING` is set (the entry is left as it is).
    pub fn end_access(&self, gref: u32) -> Result<(), GrantError> {
        let e = self.entry(gref)?;
        // ORDERING: SeqCst read-modify-write on the word the microvisor swaps to pin the
        // entry: either its pin comes first (the bits are seen and the revoke refused) or
        // this swap does (its pin then finds no permit-access grant and fails).
        let mut word = e.word.load(Ordering::SeqCst);
        loop {
            if flags_of(word) & (GTF_READING | GTF_WRITING) != 0 {
                return Err(GrantError::InUse);
            }
            match e.word.compare_exchange(
                word,
                word & 0xFFFF_0000,
                Ordering::SeqCst,
                Ordering::SeqCst,
            ) {
                Ok(_) => return Ok(()),
                Err(now) => word = now,
            }
        }
    }

    /// A copy of entry `gref` as it is now.
    pub fn entry_copy(&self, gref: u32) -> Option<GrantEntryV1> {
        let e = self.entries.get(gref as usize)?;
        // ORDERING: Acquire, pairing with grant_access's Release store of the flags.
        let word = e.word.load(Ordering::Acquire);
        Some(GrantEntryV1 {
            flags: flags_of(word),
            domid: (word >> 16) as u16,
            frame: e.frame.load(Ordering::Relaxed),
        })
    }

    /// Sets `bits` in entry `gref`'s flags as the microvisor's pin does (host tests).
    #[cfg(test)]
    fn pin(&self, gref: u32, bits: u16) {
        self.entries[gref as usize]
            .word
            .fetch_or(u32::from(bits), Ordering::SeqCst);
    }
}

impl Default for GrantFrame {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(target_os = "none")]
pub use bare::{end_access, grant_access, init, table_gfn};

#[cfg(target_os = "none")]
mod bare {
    use core::sync::atomic::{AtomicBool, Ordering};

    use shared_abi::Errno;
    use shared_abi::guest::add_to_physmap_grant_table;

    use super::{GrantError, GrantFrame};

    /// Table frame 0, once placed. Page-aligned by its type, in `.bss` (guest RAM).
    static TABLE: GrantFrame = GrantFrame::new();
    /// `TABLE` has been placed. ORDERING: one vCPU; written once by `init`, Relaxed.
    static PLACED: AtomicBool = AtomicBool::new(false);

    /// The guest frame of table frame 0.
    pub fn table_gfn() -> u64 {
        (core::ptr::from_ref(&TABLE).addr() as u64) >> 12
    }

    /// Places the runtime's table frame as frame 0 of the domain's grant table.
    /// Idempotent.
    ///
    /// # Errors
    /// `ENOSYS` without a hypervisor; otherwise the error of `add_to_physmap`.
    pub fn init() -> Result<(), Errno> {
        if PLACED.load(Ordering::Relaxed) {
            return Ok(());
        }
        if !crate::rt::hypervisor_present() {
            return Err(Errno::ENOSYS);
        }
        add_to_physmap_grant_table(0, table_gfn())?;
        PLACED.store(true, Ordering::Relaxed);
        Ok(())
    }

    fn table() -> Result<&'static GrantFrame, GrantError> {
        if PLACED.load(Ordering::Relaxed) {
            Ok(&TABLE)
        } else {
            Err(GrantError::NoTable)
        }
    }

    /// [`GrantFrame::grant_access`] on the placed table.
    ///
    /// # Errors
    /// As there, and [`GrantError::NoTable`] before [`init`].
    pub fn grant_access(gref: u32, domid: u16, gfn: u64, readonly: bool) -> Result<(), GrantError> {
        table()?.grant_access(gref, domid, gfn, readonly)
    }

    /// [`GrantFrame::end_access`] on the placed table.
    ///
    /// # Errors
    /// As there, and [`GrantError::NoTable`] before [`init`].
    pub fn end_access(gref: u32) -> Result<(), GrantError> {
        table()?.end_access(gref)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::boxed::Box;

    #[test]
    fn grant_writes_a_v1_entry() {
        let t = Box::new(GrantFrame::new());
        t.grant_access(8, 0, 0x1234, false).unwrap();
        assert_eq!(
            t.entry_copy(8),
            Some(GrantEntryV1 {
                flags: GTF_PERMIT_ACCESS,
                domid: 0,
                frame: 0x1234
            })
        );
        t.grant_access(9, 7, 0x55, true).unwrap();
        let e = t.entry_copy(9).unwrap();
        assert_eq!(
            (e.flags, e.domid, e.frame),
            (GTF_PERMIT_ACCESS | GTF_READONLY, 7, 0x55)
        );
        // The word is a v1 entry's first 4 bytes: flags, then domid (little-endian).
        assert_eq!(t.entries[9].word.load(Ordering::SeqCst), 0x0007_0005);
        assert_eq!(t.entries[9].frame.load(Ordering::SeqCst), 0x55);
    }

    #[test]
    fn bad_refs_and_frames_are_refused() {
        let t = Box::new(GrantFrame::new());
        assert_eq!(t.grant_access(512, 0, 1, false), Err(GrantError::BadRef));
        assert_eq!(t.end_access(512), Err(GrantError::BadRef));
        assert_eq!(
            t.grant_access(8, 0, 1 << 32, false),
            Err(GrantError::BadFrame)
        );
        assert_eq!(t.entry_copy(8).unwrap().flags, 0, "left untouched");
        assert_eq!(t.entry_copy(512), None);
    }

    #[test]
    fn end_access_is_refused_while_in_use() {
        let t = Box::new(GrantFrame::new());
        t.grant_access(8, 0, 0x1000, false).unwrap();
        t.pin(8, GTF_READING | GTF_WRITING);
        assert_eq!(t.end_access(8), Err(GrantError::InUse));
        assert_eq!(
            t.entry_copy(8).unwrap().flags,
            GTF_PERMIT_ACCESS | GTF_READING | GTF_WRITING
        );
        // Unpinned (the microvisor clears the bits with the last user): revoked.
        t.entries[8]
            .word
            .fetch_and(!u32::from(GTF_READING | GTF_WRITING), Ordering::SeqCst);
        assert_eq!(t.end_access(8), Ok(()));
        let e = t.entry_copy(8).unwrap();
        assert_eq!((e.flags, e.domid, e.frame), (0, 0, 0x1000));
        // Reading alone also blocks the revoke.
        t.grant_access(10, 0, 1, true).unwrap();
        t.pin(10, GTF_READING);
        assert_eq!(t.end_access(10), Err(GrantError::InUse));
        // Revoking an invalid entry is harmless.
        assert_eq!(t.end_access(11), Ok(()));
    }
}
