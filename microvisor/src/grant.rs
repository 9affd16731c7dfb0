//! Grant tables (v1): pinning a granted frame for a back-end and releasing it.
//!
//! The granter's table lives in its own memory and it may rewrite an entry at any moment,
//! so an entry is only trusted through one compare-and-swap of its 32-bit `flags`+`domid`
//! word that both checks the grant and marks it in use (`GTF_READING`, plus `GTF_WRITING`
//! for writable use). While a pin is held the microvisor uses its own copy of the frame
//! number (the *active* entry), never the guest's again; the granter cannot revoke an
//! entry whose in-use bits are set. A granter that keeps changing the word makes the pin
//! fail after [`GNTTAB_PIN_ATTEMPTS`] tries instead of stalling the microvisor.
//!
//! Portable: the table is reached through [`GrantEntries`], the pins are plain data.

use shared_abi::grant_table::{
    GNTST_BAD_GNTREF, GNTST_GENERAL_ERROR, GNTST_PERMISSION_DENIED, GNTTAB_PIN_ATTEMPTS,
    GTF_PERMIT_ACCESS, GTF_READING, GTF_READONLY, GTF_SUB_PAGE, GTF_TYPE_MASK, GTF_WRITING,
};

/// Atomic access to one domain's grant entries.
pub trait GrantEntries {
    /// Number of entries in the table.
    fn entries(&self) -> u32;
    /// The `flags` (low 16 bits) + `domid` (high 16 bits) word of entry `r`.
    fn load_header(&self, r: u32) -> u32;
    /// Compare-and-swap of that word; returns the value found (equal to `old` on success).
    fn cas_header(&self, r: u32, old: u32, new: u32) -> u32;
    /// Atomically clears `bits` in entry `r`'s flags.
    fn clear_flags(&self, r: u32, bits: u16);
    /// The `frame` field of entry `r`.
    fn frame(&self, r: u32) -> u32;
}

/// A pinned entry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Active {
    gref: u32,
    frame: u32,
    grantee: u16,
    /// Every pin, read or write.
    pins: u16,
    /// Writable pins.
    writers: u16,
}

/// Entries of one granter that may be pinned at once.
pub const MAX_ACTIVE: usize = 1024;

/// Why a pin failed, as a `GNTST_*` status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GrantStatus(pub i16);

/// The pinned entries of one granting domain.
#[derive(Debug)]
pub struct Pins {
    active: [Active; MAX_ACTIVE],
    used: usize,
}

impl Default for Pins {
    fn default() -> Self {
        Self::new()
    }
}

impl Pins {
    /// No pins.
    pub const fn new() -> Self {
        Self {
            active: [Active {
                gref: 0,
                frame: 0,
                grantee: 0,
                pins: 0,
                writers: 0,
            }; MAX_ACTIVE],
            used: 0,
        }
    }

    /// Whether any entry is pinned (a dying domain's frames must stay until none is).
    pub fn any(&self) -> bool {
        self.used > 0
    }

    fn find(&mut self, gref: u32) -> Option<&mut Active> {
        self.active[..self.used].iter_mut().find(|a| a.gref == gref)
    }

    fn remove(&mut self, gref: u32) {
        if let Some(i) = self.active[..self.used].iter().position(|a| a.gref == gref) {
            self.used -= 1;
            self.active.swap(i, self.used);
            self.active[self.used] = Active::default();
        }
    }

    /// Pins entry `gref` for `grantee`, writable if `write`; returns the granted frame.
    ///
    /// # Errors
    /// `GNTST_BAD_GNTREF` (out of range, not a permit-access entry, or sub-page),
    /// `GNTST_PERMISSION_DENIED` (another grantee, or read-only for a write),
    /// `GNTST_GENERAL_ERROR` (the entry kept changing, or too many pins).
    pub fn pin(
        &mut self,
        table: &impl GrantEntries,
        gref: u32,
        grantee: u16,
        write: bool,
    ) -> Result<u32, GrantStatus> {
        if gref >= table.entries() {
            return Err(GrantStatus(GNTST_BAD_GNTREF));
        }
        let need = GTF_READING | if write { GTF_WRITING } else { 0 };
        if let Some(a) = self.find(gref) {
            if a.grantee != grantee {
                return Err(GrantStatus(GNTST_PERMISSION_DENIED));
            }
            if !write || a.writers > 0 {
                a.pins = a
                    .pins
                    .checked_add(1)
                    .ok_or(GrantStatus(GNTST_GENERAL_ERROR))?;
                a.writers += u16::from(write);
                return Ok(a.frame);
            }
            // Upgrading a read pin to a write pin checks the entry again.
            mark_in_use(table, gref, grantee, need)?;
            let a = self.find(gref).ok_or(GrantStatus(GNTST_GENERAL_ERROR))?;
            a.pins = a.pins.saturating_add(1);
            a.writers = 1;
            return Ok(a.frame);
        }
        if self.used == MAX_ACTIVE {
            return Err(GrantStatus(GNTST_GENERAL_ERROR));
        }
        mark_in_use(table, gref, grantee, need)?;
        let frame = table.frame(gref);
        self.active[self.used] = Active {
            gref,
            frame,
            grantee,
            pins: 1,
            writers: u16::from(write),
        };
        self.used += 1;
        Ok(frame)
    }

    /// Releases one pin of `gref` (`write` as it was taken). Clears `GTF_WRITING` with the
    /// last writable pin and `GTF_READING` with the last pin. Returns false if there was no
    /// such pin.
    pub fn unpin(&mut self, table: &impl GrantEntries, gref: u32, write: bool) -> bool {
        let Some(a) = self.find(gref) else {
            return false;
        };
        if a.pins == 0 || (write && a.writers == 0) {
            return false;
        }
        a.pins -= 1;
        if write {
            a.writers -= 1;
            if a.writers == 0 {
                table.clear_flags(gref, GTF_WRITING);
            }
        }
        if a.pins == 0 {
            table.clear_flags(gref, GTF_READING | GTF_WRITING);
            self.remove(gref);
        }
        true
    }
}

/// Sets `need` in entry `gref`'s flags if it grants that access to `grantee`, in one
/// compare-and-swap, retried at most [`GNTTAB_PIN_ATTEMPTS`] times.
fn mark_in_use(
    table: &impl GrantEntries,
    gref: u32,
    grantee: u16,
    need: u16,
) -> Result<(), GrantStatus> {
    let mut seen = table.load_header(gref);
    for _ in 0..GNTTAB_PIN_ATTEMPTS {
        let flags = seen as u16;
        let domid = (seen >> 16) as u16;
        if flags & GTF_TYPE_MASK != GTF_PERMIT_ACCESS || flags & GTF_SUB_PAGE != 0 {
            return Err(GrantStatus(GNTST_BAD_GNTREF));
        }
        if domid != grantee || (need & GTF_WRITING != 0 && flags & GTF_READONLY != 0) {
            return Err(GrantStatus(GNTST_PERMISSION_DENIED));
        }
        let new = seen | u32::from(need);
        let found = table.cas_header(gref, seen, new);
        if found == seen {
            return Ok(());
        }
        seen = found;
    }
    Err(GrantStatus(GNTST_GENERAL_ERROR))
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::cell::{Cell, RefCell};
    use std::vec::Vec;

    /// A table in plain memory; `flip` makes the "granter" rewrite the word before every
    /// swap, as a hostile guest racing the microvisor would.
    struct Table {
        words: RefCell<Vec<(u32, u32)>>,
        flip: Cell<bool>,
    }

    impl Table {
        fn new(n: usize) -> Self {
            Self {
                words: RefCell::new(std::vec![(0, 0); n]),
                flip: Cell::new(false),
            }
        }
        fn grant(&self, r: usize, grantee: u16, frame: u32, flags: u16) {
            self.words.borrow_mut()[r] = (u32::from(flags) | u32::from(grantee) << 16, frame);
        }
        fn flags(&self, r: usize) -> u16 {
            self.words.borrow()[r].0 as u16
        }
    }

    impl GrantEntries for Table {
        fn entries(&self) -> u32 {
            self.words.borrow().len() as u32
        }
        fn load_header(&self, r: u32) -> u32 {
            self.words.borrow()[r as usize].0
        }
        fn cas_header(&self, r: u32, old: u32, new: u32) -> u32 {
            let mut w = self.words.borrow_mut();
            if self.flip.get() {
                w[r as usize].0 ^= 1 << 20; // the granter keeps changing the domid
            }
            let cur = w[r as usize].0;
            if cur == old {
                w[r as usize].0 = new;
            }
            cur
        }
        fn clear_flags(&self, r: u32, bits: u16) {
            self.words.borrow_mut()[r as usize].0 &= !u32::from(bits);
        }
        fn frame(&self, r: u32) -> u32 {
            self.words.borrow()[r as usize].1
        }
    }

    #[test]
    fn pin_marks_in_use_and_unpin_clears() {
        let t = Table::new(16);
        t.grant(8, 0, 0x1234, GTF_PERMIT_ACCESS);
        let mut p = Pins::new();
        assert_eq!(p.pin(&t, 8, 0, false), Ok(0x1234));
        assert_eq!(t.flags(8), GTF_PERMIT_ACCESS | GTF_READING);
        assert_eq!(p.pin(&t, 8, 0, true), Ok(0x1234));
        assert_eq!(t.flags(8), GTF_PERMIT_ACCESS | GTF_READING | GTF_WRITING);
        // The granter changing the frame now does not change what the pin uses.
        t.words.borrow_mut()[8].1 = 0x9999;
        assert_eq!(p.pin(&t, 8, 0, false), Ok(0x1234));
        assert!(p.unpin(&t, 8, true));
        assert_eq!(t.flags(8), GTF_PERMIT_ACCESS | GTF_READING);
        assert!(p.unpin(&t, 8, false));
        assert!(p.any());
        assert!(p.unpin(&t, 8, false));
        assert_eq!(t.flags(8), GTF_PERMIT_ACCESS);
        assert!(!p.any());
        assert!(!p.unpin(&t, 8, false));
    }

    #[test]
    fn bad_grants_are_refused() {
        let t = Table::new(16);
        let mut p = Pins::new();
        assert_eq!(p.pin(&t, 16, 0, false), Err(GrantStatus(GNTST_BAD_GNTREF)));
        assert_eq!(p.pin(&t, 3, 0, false), Err(GrantStatus(GNTST_BAD_GNTREF)));
        t.grant(3, 5, 1, GTF_PERMIT_ACCESS);
        assert_eq!(
            p.pin(&t, 3, 0, false),
            Err(GrantStatus(GNTST_PERMISSION_DENIED))
        );
        t.grant(4, 0, 1, GTF_PERMIT_ACCESS | GTF_READONLY);
        assert_eq!(
            p.pin(&t, 4, 0, true),
            Err(GrantStatus(GNTST_PERMISSION_DENIED))
        );
        assert_eq!(p.pin(&t, 4, 0, false), Ok(1));
        // A read pin cannot be upgraded on a read-only grant either.
        assert_eq!(
            p.pin(&t, 4, 0, true),
            Err(GrantStatus(GNTST_PERMISSION_DENIED))
        );
        t.grant(5, 0, 1, GTF_PERMIT_ACCESS | GTF_SUB_PAGE);
        assert_eq!(p.pin(&t, 5, 0, false), Err(GrantStatus(GNTST_BAD_GNTREF)));
        assert!(!p.unpin(&t, 4, true));
    }

    #[test]
    fn a_racing_granter_cannot_stall_the_pin() {
        let t = Table::new(16);
        t.grant(9, 0, 7, GTF_PERMIT_ACCESS);
        t.flip.set(true);
        let mut p = Pins::new();
        // Every swap finds a changed word; after 5 attempts the pin gives up (the word
        // alternates between grantee 0 and 16, so some attempts see the wrong grantee).
        let r = p.pin(&t, 9, 0, false);
        assert!(
            matches!(
                r,
                Err(GrantStatus(GNTST_GENERAL_ERROR | GNTST_PERMISSION_DENIED))
            ),
            "{r:?}"
        );
        assert!(!p.any());
    }

    proptest::proptest! {
        #[test]
        fn random_tables_and_calls_never_panic(
            words in proptest::collection::vec((proptest::num::u32::ANY, proptest::num::u32::ANY), 1..32),
            ops in proptest::collection::vec((0u32..40, 0u16..3, proptest::bool::ANY, proptest::bool::ANY), 0..64),
        ) {
            let t = Table { words: RefCell::new(words), flip: Cell::new(false) };
            let mut p = Pins::new();
            for (r, g, w, pin) in ops {
                if pin { let _ = p.pin(&t, r, g, w); } else { let _ = p.unpin(&t, r, w); }
            }
        }
    }
}
