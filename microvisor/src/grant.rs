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
//! Each DomU's table ([`DomainGrants`]) lives in frames of its own RAM that it names with
//! `XENMEM_add_to_physmap(XENMAPSPACE_grant_table, N, gpfn)`: the microvisor records the
//! machine address of each and reaches the entries there with atomic operations only
//! ([`TableMem`]), because the guest writes them concurrently. Like event channels, the
//! tables sit behind one spin lock per domain, never the lock a pCPU holds while it runs
//! the domain, and [`Grants`] is the only way to them. The table's frames are guest RAM,
//! so a domain's end frees nothing here: [`Grants::teardown`] forgets the frames and the
//! pins under the lock, before the domain's memory goes, and nothing touches them after.
//! A frame with an entry in use cannot be moved away ([`Grants::place_frame`]).
//!
//! Portable: the table is reached through [`GrantEntries`] / [`TableMem`], the pins are
//! plain data.

use shared_abi::Errno;
use shared_abi::grant_table::{
    ENTRIES_PER_FRAME, GNTST_BAD_DOMAIN, GNTST_BAD_GNTREF, GNTST_GENERAL_ERROR, GNTST_NO_SPACE,
    GNTST_PERMISSION_DENIED, GNTTAB_MAX_FRAMES, GNTTAB_PIN_ATTEMPTS, GRANT_ENTRY_SIZE,
    GTF_PERMIT_ACCESS, GTF_READING, GTF_READONLY, GTF_SUB_PAGE, GTF_TYPE_MASK, GTF_WRITING,
};
use spin::Mutex;

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

    /// Whether an entry in `grefs` is pinned.
    pub fn any_in(&self, grefs: core::ops::Range<u32>) -> bool {
        self.active[..self.used]
            .iter()
            .any(|a| grefs.contains(&a.gref))
    }

    /// The pins of `gref`: (all, writable); (0, 0) if it is not pinned.
    pub fn count(&self, gref: u32) -> (u16, u16) {
        self.active[..self.used]
            .iter()
            .find(|a| a.gref == gref)
            .map_or((0, 0), |a| (a.pins, a.writers))
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
    /// `GNTST_GENERAL_ERROR` (the entry kept changing), `GNTST_NO_SPACE` (too many pins).
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
            let pins = a.pins.checked_add(1).ok_or(GrantStatus(GNTST_NO_SPACE))?;
            if !write || a.writers > 0 {
                a.pins = pins;
                a.writers += u16::from(write);
                return Ok(a.frame);
            }
            // Upgrading a read pin to a write pin checks the entry again.
            mark_in_use(table, gref, grantee, need)?;
            let a = self.find(gref).ok_or(GrantStatus(GNTST_GENERAL_ERROR))?;
            a.pins = pins;
            a.writers = 1;
            return Ok(a.frame);
        }
        if self.used == MAX_ACTIVE {
            return Err(GrantStatus(GNTST_NO_SPACE));
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

/// Atomic access to the machine memory that holds grant-table frames (the guests' own
/// RAM, written by them concurrently). Addresses are 4-byte aligned, inside a frame that
/// the caller knows to be allocated.
pub trait TableMem {
    /// Atomic load of the `u32` at `pa`.
    fn load_u32(&self, pa: u64) -> u32;
    /// Atomic store of the `u32` at `pa`.
    fn store_u32(&self, pa: u64, v: u32);
    /// Compare-and-swap of the `u32` at `pa`; returns the value found.
    fn cas_u32(&self, pa: u64, old: u32, new: u32) -> u32;
    /// Atomic AND into the `u32` at `pa`.
    fn fetch_and_u32(&self, pa: u64, mask: u32);
}

const MAX_FRAMES: usize = GNTTAB_MAX_FRAMES as usize;
const FRAME_BYTES: u64 = ENTRIES_PER_FRAME as u64 * GRANT_ENTRY_SIZE as u64;

/// One domain's grant table: where its frames are, and its pinned entries.
#[derive(Debug)]
pub struct DomainGrants {
    live: bool,
    /// Frames placed so far (always the first `nr_frames`).
    nr_frames: usize,
    /// Machine address of each placed frame.
    frames: [u64; MAX_FRAMES],
    /// The guest frame each was placed at.
    gpfns: [u64; MAX_FRAMES],
    /// The domain's RAM, in pages.
    mem_pages: u64,
    pins: Pins,
}

impl DomainGrants {
    /// A closed table (no domain).
    pub const EMPTY: Self = Self {
        live: false,
        nr_frames: 0,
        frames: [0; MAX_FRAMES],
        gpfns: [0; MAX_FRAMES],
        mem_pages: 0,
        pins: Pins::new(),
    };

    /// Whether the domain is live (its table open).
    pub fn live(&self) -> bool {
        self.live
    }

    /// Frames placed so far.
    pub fn nr_frames(&self) -> u32 {
        self.nr_frames as u32
    }

    /// The guest frames the table's frames were placed at, in order.
    pub fn gpfns(&self) -> &[u64] {
        &self.gpfns[..self.nr_frames]
    }

    /// The pins of `gref`: (all, writable).
    pub fn pins_of(&self, gref: u32) -> (u16, u16) {
        self.pins.count(gref)
    }

    /// Whether any entry is pinned.
    pub fn any_pinned(&self) -> bool {
        self.pins.any()
    }

    fn view<'m, M: TableMem>(&'m self, mem: &'m M) -> View<'m, M> {
        View {
            frames: &self.frames[..self.nr_frames],
            mem,
        }
    }
}

/// The placed frames of one table as [`GrantEntries`].
struct View<'a, M> {
    frames: &'a [u64],
    mem: &'a M,
}

impl<M> View<'_, M> {
    /// Machine address of entry `r` (0 if it is not in a placed frame).
    fn entry(&self, r: u32) -> u64 {
        self.frames
            .get((r / ENTRIES_PER_FRAME) as usize)
            .map_or(0, |f| {
                f + u64::from(r % ENTRIES_PER_FRAME) * GRANT_ENTRY_SIZE as u64
            })
    }
}

impl<M: TableMem> GrantEntries for View<'_, M> {
    fn entries(&self) -> u32 {
        self.frames.len() as u32 * ENTRIES_PER_FRAME
    }
    fn load_header(&self, r: u32) -> u32 {
        match self.entry(r) {
            0 => 0,
            pa => self.mem.load_u32(pa),
        }
    }
    fn cas_header(&self, r: u32, old: u32, new: u32) -> u32 {
        match self.entry(r) {
            0 => !old,
            pa => self.mem.cas_u32(pa, old, new),
        }
    }
    fn clear_flags(&self, r: u32, bits: u16) {
        let pa = self.entry(r);
        if pa != 0 {
            // `flags` is the low half of the little-endian word; `domid` is kept.
            self.mem.fetch_and_u32(pa, !u32::from(bits));
        }
    }
    fn frame(&self, r: u32) -> u32 {
        match self.entry(r) {
            0 => 0,
            pa => self.mem.load_u32(pa + 4),
        }
    }
}

/// The grant-table operations over every domain's table (indexed by domid; domain 0 has
/// none).
#[derive(Debug)]
pub struct Grants<'a, M> {
    tables: &'a [Mutex<DomainGrants>],
    mem: &'a M,
}

impl<M> Clone for Grants<'_, M> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<M> Copy for Grants<'_, M> {}

impl<'a, M: TableMem> Grants<'a, M> {
    /// The operations over `tables` (indexed by domid), reaching frames through `mem`.
    pub fn new(tables: &'a [Mutex<DomainGrants>], mem: &'a M) -> Self {
        Self { tables, mem }
    }

    fn table(&self, dom: u16) -> Option<&'a Mutex<DomainGrants>> {
        self.tables.get(usize::from(dom)).filter(|_| dom != 0)
    }

    /// Opens DomU `dom`'s table: no frames, no pins; `mem_pages` of RAM.
    pub fn open(&self, dom: u16, mem_pages: u64) {
        if let Some(t) = self.table(dom) {
            let mut t = t.lock();
            *t = DomainGrants::EMPTY;
            t.live = true;
            t.mem_pages = mem_pages;
        }
    }

    /// Closes `dom`'s table at its end: its frames and pins are forgotten (the in-use bits
    /// stay in its dying memory; nobody reads them again). Returns whether it was open.
    pub fn teardown(&self, dom: u16) -> bool {
        let Some(t) = self.table(dom) else {
            return false;
        };
        let mut t = t.lock();
        let was = t.live;
        *t = DomainGrants::EMPTY;
        was
    }

    /// Whether `dom`'s table is open.
    pub fn alive(&self, dom: u16) -> bool {
        self.table(dom).is_some_and(|t| t.lock().live)
    }

    /// `XENMEM_add_to_physmap(grant_table, idx, gpfn)`: guest frame `gpfn` (machine
    /// address `pa`) becomes frame `idx` of `dom`'s table. Moving a placed frame copies its
    /// entries to the new frame.
    ///
    /// # Errors
    /// `ESRCH` no such DomU; `EINVAL` `idx` beyond the next frame or the maximum, `gpfn`
    /// not below the domain's RAM, `pa` not a frame address, or `gpfn` already another
    /// frame of the table; `EBUSY` moving a frame with an entry in use.
    pub fn place_frame(&self, dom: u16, idx: u64, gpfn: u64, pa: u64) -> Result<(), Errno> {
        let mut t = self.table(dom).ok_or(Errno::ESRCH)?.lock();
        if !t.live {
            return Err(Errno::ESRCH);
        }
        let i = usize::try_from(idx)
            .ok()
            .filter(|&i| i < MAX_FRAMES && i <= t.nr_frames)
            .ok_or(Errno::EINVAL)?;
        if gpfn >= t.mem_pages || pa == 0 || pa & 0xFFF != 0 {
            return Err(Errno::EINVAL);
        }
        if let Some(other) = t.gpfns().iter().position(|&g| g == gpfn) {
            return if other == i {
                Ok(())
            } else {
                Err(Errno::EINVAL)
            };
        }
        if i < t.nr_frames {
            let first = i as u32 * ENTRIES_PER_FRAME;
            if t.pins.any_in(first..first + ENTRIES_PER_FRAME) {
                return Err(Errno::EBUSY);
            }
            let old = t.frames[i];
            for off in (0..FRAME_BYTES).step_by(4) {
                self.mem.store_u32(pa + off, self.mem.load_u32(old + off));
            }
        } else {
            t.nr_frames += 1;
        }
        t.frames[i] = pa;
        t.gpfns[i] = gpfn;
        Ok(())
    }

    /// Frames of `dom`'s table placed so far; `ESRCH` no such DomU.
    pub fn nr_frames(&self, dom: u16) -> Result<u32, Errno> {
        let t = self.table(dom).ok_or(Errno::ESRCH)?.lock();
        if t.live {
            Ok(t.nr_frames())
        } else {
            Err(Errno::ESRCH)
        }
    }

    /// Pins entry `gref` of `granter` for `grantee` (see [`Pins::pin`]); returns the
    /// granted frame (a GFN of the granter). `GNTST_BAD_DOMAIN` if `granter` is not a live
    /// DomU.
    pub fn pin(
        &self,
        granter: u16,
        gref: u32,
        grantee: u16,
        write: bool,
    ) -> Result<u32, GrantStatus> {
        let bad_domain = GrantStatus(GNTST_BAD_DOMAIN);
        let mut t = self.table(granter).ok_or(bad_domain)?.lock();
        if !t.live {
            return Err(bad_domain);
        }
        let t = &mut *t;
        let view = View {
            frames: &t.frames[..t.nr_frames],
            mem: self.mem,
        };
        t.pins.pin(&view, gref, grantee, write)
    }

    /// Releases one pin of `gref` (as it was taken). False if `granter` has ended (its pins
    /// went with it) or holds no such pin.
    pub fn unpin(&self, granter: u16, gref: u32, write: bool) -> bool {
        let Some(t) = self.table(granter) else {
            return false;
        };
        let mut t = t.lock();
        if !t.live {
            return false;
        }
        let t = &mut *t;
        let view = View {
            frames: &t.frames[..t.nr_frames],
            mem: self.mem,
        };
        t.pins.unpin(&view, gref, write)
    }

    /// The header word (`flags | domid << 16`) of entry `gref` of `dom` as the guest sees
    /// it (tests and invariant checks); `None` outside the placed table.
    pub fn header(&self, dom: u16, gref: u32) -> Option<u32> {
        let t = self.table(dom)?.lock();
        let view = t.view(self.mem);
        (gref < view.entries()).then(|| view.load_header(gref))
    }

    /// Runs `f` on `dom`'s table (tests and invariant checks).
    pub fn inspect<R>(&self, dom: u16, f: impl FnOnce(&DomainGrants) -> R) -> Option<R> {
        self.table(dom).map(|t| f(&t.lock()))
    }
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

    #[test]
    fn tables_open_place_and_close() {
        use crate::evtchn::fake::FakeShared;
        let mem = FakeShared::new(0x10_0000, 8);
        let tables: Vec<Mutex<DomainGrants>> =
            (0..3).map(|_| Mutex::new(DomainGrants::EMPTY)).collect();
        let g = Grants::new(&tables, &mem);
        // Domain 0 never has a table; closed tables refuse everything.
        g.open(0, 16);
        assert!(!g.alive(0));
        assert_eq!(g.nr_frames(0), Err(Errno::ESRCH));
        assert_eq!(g.nr_frames(1), Err(Errno::ESRCH));
        assert_eq!(g.nr_frames(9), Err(Errno::ESRCH));
        assert_eq!(g.place_frame(1, 0, 1, 0x10_1000), Err(Errno::ESRCH));
        assert_eq!(g.pin(1, 0, 0, false), Err(GrantStatus(GNTST_BAD_DOMAIN)));
        assert_eq!(g.pin(0, 0, 0, false), Err(GrantStatus(GNTST_BAD_DOMAIN)));
        assert_eq!(
            g.pin(u16::MAX, 0, 0, false),
            Err(GrantStatus(GNTST_BAD_DOMAIN))
        );
        g.open(1, 4);
        assert_eq!(g.nr_frames(1), Ok(0));
        // No frame placed: no entry exists.
        assert_eq!(g.pin(1, 0, 0, false), Err(GrantStatus(GNTST_BAD_GNTREF)));
        assert_eq!(g.header(1, 0), None);
        for (idx, gpfn, pa, err) in [
            (0, 4, 0x10_1000, Errno::EINVAL), // beyond RAM
            (0, 1, 0, Errno::EINVAL),         // no frame
            (0, 1, 0x10_1008, Errno::EINVAL), // unaligned
            (1, 1, 0x10_1000, Errno::EINVAL), // out of order
            (4, 1, 0x10_1000, Errno::EINVAL), // beyond the maximum
            (u64::MAX, 1, 0x10_1000, Errno::EINVAL),
        ] {
            assert_eq!(
                g.place_frame(1, idx, gpfn, pa),
                Err(err),
                "{idx} {gpfn} {pa:#x}"
            );
        }
        g.place_frame(1, 0, 1, 0x10_1000).unwrap();
        mem.store_u32(0x10_1000 + 8 * 8 + 4, 2);
        mem.store_u32(0x10_1000 + 8 * 8, u32::from(GTF_PERMIT_ACCESS));
        assert_eq!(g.pin(1, 8, 0, true), Ok(2));
        assert_eq!(
            g.header(1, 8),
            Some(u32::from(GTF_PERMIT_ACCESS | GTF_READING | GTF_WRITING))
        );
        assert_eq!(g.header(1, 512), None);
        // The end forgets the pins; a release afterwards is refused and touches nothing.
        assert!(g.teardown(1));
        assert!(!g.teardown(1));
        assert!(!g.unpin(1, 8, true));
        assert_eq!(
            mem.load_u32(0x10_1000 + 8 * 8),
            u32::from(GTF_PERMIT_ACCESS | GTF_READING | GTF_WRITING)
        );
        // Reopened (a new domain with that id): empty.
        g.open(1, 4);
        assert_eq!(g.nr_frames(1), Ok(0));
        assert_eq!(g.inspect(1, DomainGrants::any_pinned), Some(false));
    }

    #[test]
    fn too_many_pins_is_no_space() {
        let t = Table::new(MAX_ACTIVE + 1);
        for r in 0..=MAX_ACTIVE {
            t.grant(r, 0, r as u32, GTF_PERMIT_ACCESS);
        }
        let mut p = Pins::new();
        for r in 0..MAX_ACTIVE as u32 {
            assert!(p.pin(&t, r, 0, false).is_ok());
        }
        assert_eq!(
            p.pin(&t, MAX_ACTIVE as u32, 0, false),
            Err(GrantStatus(GNTST_NO_SPACE))
        );
        assert_eq!(t.flags(MAX_ACTIVE), GTF_PERMIT_ACCESS, "not marked");
        // More pins of an entry already pinned still work.
        assert!(p.pin(&t, 0, 0, true).is_ok());
        assert_eq!(p.count(0), (2, 1));
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
