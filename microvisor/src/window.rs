//! Domain 0's foreign window: which slot holds which domain's frame, as a foreign mapping
//! ([`ControlOp::ForeignMap`](shared_abi::control::ControlOp::ForeignMap), the builder's
//! tool) or a grant mapping (`GrantMap`, the back-ends'), what a domain's end does to
//! them, and grant copies.
//!
//! The machine keeps one [`Window`] behind one lock. Everything that could free a frame
//! Dom0 reaches holds that lock too: a domain's end hands the frames Dom0 still maps to
//! Dom0 ([`Window::orphan_domain`], before the domain's memory goes) and a copy runs under
//! it ([`Window::copy_segment`]), so no frame is freed while it is mapped or being copied.
//! An orphaned frame is freed when its last slot is released ([`Released::free`]); the
//! last grant mapping of an ended domain going is reported so the machine can drop a
//! dying domain's record ([`Released::last_grant_of`]).
//!
//! Lock order: the window, then a granter's grant table ([`Grants`]).
//!
//! Portable: a granter's memory is reached through a `resolve` function (domid, GFN →
//! machine address), the frames through [`PhysMemory`].

use crate::grant::{Grants, TableMem};
use crate::mm::PhysMemory;
use shared_abi::Errno;
use shared_abi::control::GrantCopySegment;
use shared_abi::grant_table::{
    GNTCOPY_DEST_GREF, GNTCOPY_SOURCE_GREF, GNTST_BAD_COPY_ARG, GNTST_BAD_DOMAIN, GNTST_BAD_GNTREF,
    GNTST_BAD_PAGE, GNTST_GENERAL_ERROR, GNTST_NO_SPACE, GNTST_OKAY, GNTST_PERMISSION_DENIED,
};

/// What a filled slot holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapKind {
    /// A frame mapped with `ForeignMap`.
    Foreign,
    /// A grant mapped with `GrantMap`.
    Grant,
}

/// A filled slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slot {
    /// The domain whose frame it is.
    pub domid: u16,
    /// The frame's GFN in that domain.
    pub gfn: u64,
    /// Its machine address.
    pub hpa: u64,
    /// The domain has ended: the frame is Dom0's to release, and is freed when it does.
    pub orphan: bool,
    /// For a grant mapping: the reference and whether it is writable.
    pub grant: Option<(u32, bool)>,
}

impl Slot {
    /// What the slot holds.
    pub fn kind(&self) -> MapKind {
        if self.grant.is_some() {
            MapKind::Grant
        } else {
            MapKind::Foreign
        }
    }
}

/// What the caller must do after a slot is released.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Released {
    /// Free this frame: its domain has ended and no slot holds it any more.
    pub free: Option<u64>,
    /// The last grant mapping of this ended domain went (drop its record if it is dying).
    pub last_grant_of: Option<u16>,
}

/// Maps a failed grant pin to the control operation's errno.
pub fn pin_errno(status: i16) -> Errno {
    match status {
        GNTST_BAD_DOMAIN => Errno::ESRCH,
        GNTST_BAD_GNTREF => Errno::ENOENT,
        GNTST_PERMISSION_DENIED => Errno::EPERM,
        GNTST_BAD_PAGE => Errno::ERANGE,
        GNTST_NO_SPACE => Errno::ENOSPC,
        GNTST_GENERAL_ERROR => Errno::EAGAIN,
        _ => Errno::EINVAL,
    }
}

/// One side of a copy segment, checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    /// Bytes of the call's buffer from this offset.
    Buffer(usize),
    /// A granted page.
    Grant {
        domid: u16,
        gref: u32,
        offset: usize,
    },
}

/// Dom0's foreign window of `N` slots.
#[derive(Debug)]
pub struct Window<const N: usize> {
    slots: [Option<Slot>; N],
}

impl<const N: usize> Default for Window<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> Window<N> {
    /// No slot filled.
    pub const fn new() -> Self {
        Self { slots: [None; N] }
    }

    /// The slot's contents (`None` for an empty slot or one outside the window).
    pub fn get(&self, slot: u64) -> Option<Slot> {
        usize::try_from(slot)
            .ok()
            .and_then(|i| self.slots.get(i))
            .copied()
            .flatten()
    }

    /// What the slot holds.
    pub fn kind(&self, slot: u64) -> Option<MapKind> {
        self.get(slot).map(|s| s.kind())
    }

    /// Every filled slot.
    pub fn filled(&self) -> impl Iterator<Item = &Slot> {
        self.slots.iter().flatten()
    }

    /// The empty slot `slot`: `EINVAL` outside the window, `EBUSY` filled.
    fn free_slot(&mut self, slot: u64) -> Result<&mut Option<Slot>, Errno> {
        let entry = usize::try_from(slot)
            .ok()
            .and_then(|i| self.slots.get_mut(i))
            .ok_or(Errno::EINVAL)?;
        if entry.is_some() {
            return Err(Errno::EBUSY);
        }
        Ok(entry)
    }

    /// `ForeignMap`: frame `gfn` of `domid` into `slot`; returns its machine address.
    /// `resolve` gives a live domain's frame (`ESRCH` no such domain, `EINVAL` not its
    /// RAM).
    ///
    /// # Errors
    /// `EINVAL` slot outside the window, `EBUSY` slot filled, `ESRCH` domid 0 or not a
    /// live domain, `EINVAL` not its RAM.
    pub fn map_foreign(
        &mut self,
        slot: u64,
        domid: u32,
        gfn: u64,
        resolve: impl FnOnce(u16, u64) -> Result<u64, Errno>,
    ) -> Result<u64, Errno> {
        let entry = self.free_slot(slot)?;
        let domid = u16::try_from(domid)
            .ok()
            .filter(|&d| d != 0)
            .ok_or(Errno::ESRCH)?;
        let hpa = resolve(domid, gfn)? & !0xFFF;
        *entry = Some(Slot {
            domid,
            gfn,
            hpa,
            orphan: false,
            grant: None,
        });
        Ok(hpa)
    }

    /// `GrantMap`: pins grant `gref` of DomU `domid` for domain 0 (writable if `write`)
    /// and puts its frame in `slot`; returns the frame's machine address.
    ///
    /// # Errors
    /// As [`ControlOp::GrantMap`](shared_abi::control::ControlOp::GrantMap): `EINVAL`,
    /// `EBUSY`, `ESRCH`, and a failed pin through [`pin_errno`]; a granted frame that is
    /// not the granter's RAM is `ERANGE` (the pin is released).
    pub fn map_grant<M: TableMem>(
        &mut self,
        slot: u64,
        domid: u32,
        gref: u32,
        write: bool,
        grants: &Grants<'_, M>,
        resolve: impl FnOnce(u16, u64) -> Result<u64, Errno>,
    ) -> Result<u64, Errno> {
        let entry = self.free_slot(slot)?;
        let domid = u16::try_from(domid)
            .ok()
            .filter(|&d| d != 0)
            .ok_or(Errno::ESRCH)?;
        let gfn = grants
            .pin(domid, gref, 0, write)
            .map_err(|s| pin_errno(s.0))?;
        let hpa = match resolve(domid, u64::from(gfn)) {
            Ok(hpa) => hpa & !0xFFF,
            Err(e) => {
                grants.unpin(domid, gref, write);
                return Err(if e == Errno::ESRCH { e } else { Errno::ERANGE });
            }
        };
        *entry = Some(Slot {
            domid,
            gfn: u64::from(gfn),
            hpa,
            orphan: false,
            grant: Some((gref, write)),
        });
        Ok(hpa)
    }

    /// Empties `slot`, which must hold a mapping of kind `want`: a live domain's grant is
    /// unpinned; an ended domain's frame is freed with its last slot.
    ///
    /// # Errors
    /// `EINVAL` slot outside the window or holding the other kind, `ENOENT` empty.
    pub fn release<M: TableMem>(
        &mut self,
        slot: u64,
        want: MapKind,
        grants: &Grants<'_, M>,
    ) -> Result<Released, Errno> {
        let entry = usize::try_from(slot)
            .ok()
            .and_then(|i| self.slots.get_mut(i))
            .ok_or(Errno::EINVAL)?;
        let s = entry.ok_or(Errno::ENOENT)?;
        if s.kind() != want {
            return Err(Errno::EINVAL);
        }
        *entry = None;
        let mut out = Released::default();
        if !s.orphan {
            if let Some((gref, write)) = s.grant {
                grants.unpin(s.domid, gref, write);
            }
            return Ok(out);
        }
        // Dom0 may have mapped the same frame into several slots.
        if !self.filled().any(|o| o.hpa == s.hpa) {
            out.free = Some(s.hpa);
        }
        if s.grant.is_some() && self.grant_orphans(s.domid) == 0 {
            out.last_grant_of = Some(s.domid);
        }
        Ok(out)
    }

    /// `domid` has ended: its slots become Dom0's (orphans), and `take_out(gfn)` is called
    /// for each so the frame leaves the domain's memory before that is freed. Returns the
    /// slots orphaned now: (foreign mappings, grant mappings).
    pub fn orphan_domain(&mut self, domid: u16, mut take_out: impl FnMut(u64)) -> (u64, u64) {
        let (mut foreign, mut grant) = (0, 0);
        for s in self
            .slots
            .iter_mut()
            .flatten()
            .filter(|s| s.domid == domid && !s.orphan)
        {
            s.orphan = true;
            take_out(s.gfn);
            if s.grant.is_some() {
                grant += 1;
            } else {
                foreign += 1;
            }
        }
        (foreign, grant)
    }

    /// Grant mappings of the ended domain `domid` that Dom0 still holds.
    pub fn grant_orphans(&self, domid: u16) -> usize {
        self.filled()
            .filter(|s| s.domid == domid && s.orphan && s.grant.is_some())
            .count()
    }

    /// One segment of `GrantCopy` over the call's staged buffer `buf`, whose first
    /// `data_start` bytes are the segments themselves. Each grant is pinned for the
    /// segment only (reading for the source, writing for the destination) and its frame
    /// found with `resolve` (as for [`Window::map_grant`], given `mem`). Runs under the window's lock
    /// (`&self`), so no frame it touches is freed meanwhile. Returns the segment's
    /// `GNTST_*` status.
    pub fn copy_segment<M: TableMem, P: PhysMemory>(
        &self,
        seg: &GrantCopySegment,
        buf: &mut [u8],
        data_start: usize,
        grants: &Grants<'_, M>,
        mut resolve: impl FnMut(&P, u16, u64) -> Result<u64, Errno>,
        mem: &mut P,
    ) -> i16 {
        let (src, dst, len) = match check_segment(seg, buf.len(), data_start) {
            Ok(v) => v,
            Err(status) => return status,
        };
        // Pin the grant sides (source first), remembering what to release.
        let mut pinned: [Option<(u16, u32, bool)>; 2] = [None, None];
        let mut addr = [0u64; 2];
        let mut status = GNTST_OKAY;
        for (i, (side, write)) in [(src, false), (dst, true)].into_iter().enumerate() {
            let Side::Grant {
                domid,
                gref,
                offset,
            } = side
            else {
                continue;
            };
            let gfn = match grants.pin(domid, gref, 0, write) {
                Ok(gfn) => gfn,
                Err(s) => {
                    status = s.0;
                    break;
                }
            };
            pinned[i] = Some((domid, gref, write));
            match resolve(mem, domid, u64::from(gfn)) {
                Ok(hpa) => addr[i] = (hpa & !0xFFF) + offset as u64,
                Err(e) => {
                    status = if e == Errno::ESRCH {
                        GNTST_BAD_DOMAIN
                    } else {
                        GNTST_BAD_PAGE
                    };
                    break;
                }
            }
        }
        if status == GNTST_OKAY {
            // Through a bounce buffer: a segment may copy within one page.
            let mut bounce = [0u8; 4096];
            let bytes = &mut bounce[..len];
            match src {
                Side::Buffer(at) => bytes.copy_from_slice(&buf[at..at + len]),
                Side::Grant { .. } => mem.read_bytes(addr[0], bytes),
            }
            match dst {
                Side::Buffer(at) => buf[at..at + len].copy_from_slice(bytes),
                Side::Grant { .. } => mem.write_bytes(addr[1], bytes),
            }
        }
        for (domid, gref, write) in pinned.into_iter().flatten() {
            grants.unpin(domid, gref, write);
        }
        status
    }
}

/// Checks a segment's shape: `(source, destination, len)` or `GNTST_BAD_COPY_ARG` /
/// `GNTST_BAD_DOMAIN`.
fn check_segment(
    seg: &GrantCopySegment,
    buf_len: usize,
    data_start: usize,
) -> Result<(Side, Side, usize), i16> {
    let len = usize::from(seg.len);
    let known = GNTCOPY_SOURCE_GREF | GNTCOPY_DEST_GREF;
    if seg.flags & !known != 0 || seg.flags == 0 || seg.pad != 0 || len > 4096 {
        return Err(GNTST_BAD_COPY_ARG);
    }
    let side = |p: &shared_abi::control::GrantCopyPtr, gref: bool| {
        if gref {
            let offset = usize::from(p.offset);
            if offset + len > 4096 {
                return Err(GNTST_BAD_COPY_ARG);
            }
            if p.domid == 0 {
                return Err(GNTST_BAD_DOMAIN);
            }
            Ok(Side::Grant {
                domid: p.domid,
                gref: p.u,
                offset,
            })
        } else {
            let at = usize::try_from(p.u).map_err(|_| GNTST_BAD_COPY_ARG)?;
            if p.domid != 0
                || p.offset != 0
                || at < data_start
                || at.checked_add(len).is_none_or(|end| end > buf_len)
            {
                return Err(GNTST_BAD_COPY_ARG);
            }
            Ok(Side::Buffer(at))
        }
    };
    let src = side(&seg.source, seg.flags & GNTCOPY_SOURCE_GREF != 0)?;
    let dst = side(&seg.dest, seg.flags & GNTCOPY_DEST_GREF != 0)?;
    Ok((src, dst, len))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::evtchn::fake::FakeShared;
    use crate::grant::DomainGrants;
    use crate::mm::fake::FakeMem;
    use shared_abi::control::GrantCopyPtr;
    use shared_abi::grant_table::{GTF_PERMIT_ACCESS, GTF_READING, GTF_READONLY, GTF_WRITING};
    use spin::Mutex;
    use std::collections::BTreeMap;
    use std::vec::Vec;

    /// Table frame 0 of domain `d` is fake shared page `d`.
    const TABLES: u64 = 0x10_0000;
    /// Frames of RAM each live DomU has (GFNs `0..RAM`).
    const RAM: u64 = 8;

    /// Domains 1..=3 with one placed table frame each; their RAM frames are real fake
    /// frames (for copies), found by (domid, gfn) while the domain lives.
    struct World {
        tables: Vec<Mutex<DomainGrants>>,
        /// The table pages (shared with a racing "granter" thread in one test).
        shared: std::sync::Arc<FakeShared>,
        mem: FakeMem,
        ram: BTreeMap<(u16, u64), u64>,
        window: Window<8>,
    }

    impl World {
        fn new() -> Self {
            let mut w = Self {
                tables: (0..4).map(|_| Mutex::new(DomainGrants::EMPTY)).collect(),
                shared: std::sync::Arc::new(FakeShared::new(TABLES, 4)),
                mem: FakeMem::new(),
                ram: BTreeMap::new(),
                window: Window::new(),
            };
            for d in 1..=3 {
                w.start(d);
            }
            w
        }
        fn grants(&self) -> Grants<'_, FakeShared> {
            Grants::new(&self.tables, &*self.shared)
        }
        /// (Re)creates domain `d`: fresh RAM, an empty table in its frame 0.
        fn start(&mut self, d: u16) {
            for gfn in 0..RAM {
                let hpa = self.mem.alloc_zeroed_frame().unwrap();
                self.ram.insert((d, gfn), hpa);
            }
            let frame = TABLES + u64::from(d) * 4096;
            for off in (0..4096).step_by(4) {
                self.shared.store_u32(frame + off, 0);
            }
            self.grants().open(d, RAM);
            self.grants().place_frame(d, 0, 0, frame).unwrap();
        }
        /// Domain `d` ends: table closed, mapped frames handed to Dom0, the rest freed.
        fn end(&mut self, d: u16) -> (u64, u64) {
            self.grants().teardown(d);
            let mut taken = Vec::new();
            let handed = self.window.orphan_domain(d, |gfn| taken.push(gfn));
            for gfn in 0..RAM {
                let hpa = self.ram.remove(&(d, gfn)).unwrap();
                if !taken.contains(&gfn) {
                    self.mem.free_frame(hpa);
                }
            }
            handed
        }
        fn grant(&self, d: u16, gref: u32, grantee: u16, frame: u32, flags: u16) {
            let pa = TABLES + u64::from(d) * 4096 + u64::from(gref) * 8;
            self.shared.store_u32(pa + 4, frame);
            self.shared
                .store_u32(pa, u32::from(flags) | u32::from(grantee) << 16);
        }
        fn flags(&self, d: u16, gref: u32) -> u16 {
            self.grants().header(d, gref).unwrap() as u16
        }
        fn map(&mut self, slot: u64, d: u32, gref: u32, write: bool) -> Result<u64, Errno> {
            let grants = Grants::new(&self.tables, &*self.shared);
            let ram = &self.ram;
            self.window
                .map_grant(slot, d, gref, write, &grants, |d, gfn| lookup(ram, d, gfn))
        }
        fn map_foreign(&mut self, slot: u64, d: u32, gfn: u64) -> Result<u64, Errno> {
            let ram = &self.ram;
            self.window
                .map_foreign(slot, d, gfn, |d, gfn| lookup(ram, d, gfn))
        }
        /// Releases a slot; frees what the release says.
        fn release(&mut self, slot: u64, kind: MapKind) -> Result<Released, Errno> {
            let grants = Grants::new(&self.tables, &*self.shared);
            let r = self.window.release(slot, kind, &grants)?;
            if let Some(hpa) = r.free {
                self.mem.free_frame(hpa);
            }
            Ok(r)
        }
        /// Runs one copy segment over `buf`.
        fn copy(&mut self, seg: GrantCopySegment, buf: &mut [u8], data_start: usize) -> i16 {
            let grants = Grants::new(&self.tables, &*self.shared);
            let ram = &self.ram;
            self.window.copy_segment(
                &seg,
                buf,
                data_start,
                &grants,
                |_: &FakeMem, d, gfn| lookup(ram, d, gfn),
                &mut self.mem,
            )
        }
        fn write_ram(&mut self, d: u16, gfn: u64, off: u64, bytes: &[u8]) {
            let hpa = self.ram[&(d, gfn)];
            self.mem.write_bytes(hpa + off, bytes);
        }
        fn read_ram(&self, d: u16, gfn: u64, off: u64, len: usize) -> Vec<u8> {
            let mut v = std::vec![0; len];
            self.mem.read_bytes(self.ram[&(d, gfn)] + off, &mut v);
            v
        }
    }

    /// A live domain's frame (its RAM exists while it lives).
    fn lookup(ram: &BTreeMap<(u16, u64), u64>, d: u16, gfn: u64) -> Result<u64, Errno> {
        if !ram.contains_key(&(d, 0)) {
            return Err(Errno::ESRCH);
        }
        ram.get(&(d, gfn)).copied().ok_or(Errno::EINVAL)
    }

    const PA: u16 = GTF_PERMIT_ACCESS;

    #[test]
    fn map_pins_the_entry_and_release_unpins_it() {
        let mut w = World::new();
        w.grant(1, 8, 0, 3, PA);
        let hpa = w.map(0, 1, 8, true).unwrap();
        assert_eq!(hpa, w.ram[&(1, 3)]);
        assert_eq!(w.flags(1, 8), PA | GTF_READING | GTF_WRITING);
        assert_eq!(w.window.kind(0), Some(MapKind::Grant));
        // The same grant again, read-only, in another slot.
        assert_eq!(w.map(1, 1, 8, false), Ok(hpa));
        assert_eq!(w.grants().inspect(1, |t| t.pins_of(8)), Some((2, 1)));
        // The granter now points the entry elsewhere: the pin keeps its frame.
        w.grant(1, 8, 0, 5, PA | GTF_READING | GTF_WRITING);
        assert_eq!(w.map(2, 1, 8, false), Ok(hpa));
        assert_eq!(
            w.release(0, MapKind::Grant),
            Ok(Released::default()),
            "a live granter's frame is not freed"
        );
        assert_eq!(w.flags(1, 8), PA | GTF_READING, "last writer gone");
        w.release(1, MapKind::Grant).unwrap();
        w.release(2, MapKind::Grant).unwrap();
        assert_eq!(w.flags(1, 8), PA, "last user gone: revocable again");
        assert_eq!(w.grants().inspect(1, |t| t.any_pinned()), Some(false));
        assert!(w.mem.freed.is_empty());
    }

    #[test]
    fn hostile_map_requests_are_refused_without_side_effects() {
        let mut w = World::new();
        w.grant(1, 8, 0, 3, PA);
        w.grant(1, 9, 2, 3, PA); // for domain 2
        w.grant(1, 10, 0, 3, PA | GTF_READONLY);
        w.grant(1, 11, 0, 3, 2); // accept_transfer
        w.grant(1, 12, 0, 3, 3); // transitive
        w.grant(1, 13, 0, RAM as u32, PA); // not RAM
        w.grant(1, 14, 0, u32::MAX, PA);
        w.grant(1, 15, 0, 3, PA | shared_abi::grant_table::GTF_SUB_PAGE);
        let cases: [(u64, u32, u32, bool, Errno); 16] = [
            (0, 1, 512, false, Errno::ENOENT),      // beyond the placed frame
            (0, 1, u32::MAX, false, Errno::ENOENT), // far beyond
            (0, 1, 7, false, Errno::ENOENT),        // never granted
            (0, 1, 11, false, Errno::ENOENT),       // transfer entry
            (0, 1, 12, false, Errno::ENOENT),       // transitive entry
            (0, 1, 15, false, Errno::ENOENT),       // sub-page
            (0, 1, 9, false, Errno::EPERM),         // another grantee
            (0, 1, 10, true, Errno::EPERM),         // read-only grant, writable map
            (0, 1, 13, false, Errno::ERANGE),       // frame beyond its RAM
            (0, 1, 14, true, Errno::ERANGE),
            (0, 0, 8, false, Errno::ESRCH), // domain 0 grants nothing
            (0, 7, 8, false, Errno::ESRCH), // no such domain
            (0, 1 << 16, 8, false, Errno::ESRCH), // not a domid
            (0, u32::MAX, 8, false, Errno::ESRCH),
            (8, 1, 8, false, Errno::EINVAL), // slot outside the window
            (u64::MAX, 1, 8, false, Errno::EINVAL),
        ];
        for (slot, d, gref, write, err) in cases {
            assert_eq!(
                w.map(slot, d, gref, write),
                Err(err),
                "{slot} d{d} ref {gref}"
            );
        }
        // No pin was left behind and no in-use bit set.
        assert_eq!(w.grants().inspect(1, |t| t.any_pinned()), Some(false));
        for r in 8..16 {
            assert_eq!(w.flags(1, r) & (GTF_READING | GTF_WRITING), 0, "ref {r}");
        }
        assert_eq!(w.window.filled().count(), 0);
        // Read-only maps of a read-only grant are fine.
        assert!(w.map(0, 1, 10, false).is_ok());
        assert_eq!(w.flags(1, 10), PA | GTF_READONLY | GTF_READING);
        // Double map of a slot: EBUSY, and no second pin.
        w.grant(1, 8, 0, 3, PA);
        assert_eq!(w.map(0, 1, 8, true), Err(Errno::EBUSY));
        assert_eq!(w.map_foreign(0, 1, 3), Err(Errno::EBUSY));
        assert_eq!(w.grants().inspect(1, |t| t.pins_of(8)), Some((0, 0)));
        assert_eq!(w.flags(1, 8), PA);
        // Unmapping the wrong kind, an empty slot, a slot outside the window.
        assert_eq!(w.release(0, MapKind::Foreign), Err(Errno::EINVAL));
        assert_eq!(w.window.kind(0), Some(MapKind::Grant), "still mapped");
        assert_eq!(w.release(1, MapKind::Grant), Err(Errno::ENOENT));
        assert_eq!(w.release(9, MapKind::Grant), Err(Errno::EINVAL));
        assert_eq!(w.release(u64::MAX, MapKind::Foreign), Err(Errno::EINVAL));
        w.map_foreign(1, 1, 2).unwrap();
        assert_eq!(w.release(1, MapKind::Grant), Err(Errno::EINVAL));
        w.release(1, MapKind::Foreign).unwrap();
        w.release(0, MapKind::Grant).unwrap();
        assert_eq!(w.release(0, MapKind::Grant), Err(Errno::ENOENT), "twice");
        assert_eq!(w.flags(1, 10), PA | GTF_READONLY);
    }

    #[test]
    fn maps_of_an_ended_domain_are_refused() {
        let mut w = World::new();
        w.grant(2, 8, 0, 1, PA);
        w.end(2);
        assert_eq!(w.map(0, 2, 8, false), Err(Errno::ESRCH));
        assert_eq!(w.map_foreign(0, 2, 1), Err(Errno::ESRCH));
        assert_eq!(w.window.filled().count(), 0);
    }

    #[test]
    fn a_granter_that_ends_hands_its_mapped_frames_to_dom0() {
        let mut w = World::new();
        w.grant(1, 8, 0, 3, PA);
        w.grant(1, 9, 0, 4, PA);
        let f3 = w.map(0, 1, 8, true).unwrap();
        assert_eq!(w.map(1, 1, 8, false), Ok(f3), "the same frame twice");
        let f4 = w.map(2, 1, 9, false).unwrap();
        let f5 = w.map_foreign(3, 1, 5).unwrap();
        w.grant(2, 8, 0, 1, PA);
        w.map(4, 2, 8, true).unwrap();
        assert_eq!(w.end(1), (1, 3));
        assert_eq!(w.window.grant_orphans(1), 3);
        assert_eq!(w.window.grant_orphans(2), 0);
        // The frames Dom0 maps are still allocated; the rest of domain 1 is freed.
        assert_eq!(w.mem.freed.len(), RAM as usize - 3);
        for f in [f3, f4, f5] {
            assert!(!w.mem.freed.contains(&f));
        }
        // Orphans are released without touching any table (the domain is gone).
        let r = w.release(0, MapKind::Grant).unwrap();
        assert_eq!(r, Released::default(), "slot 1 still holds the frame");
        let r = w.release(1, MapKind::Grant).unwrap();
        assert_eq!(r.free, Some(f3));
        assert_eq!(r.last_grant_of, None, "slot 2 is still a grant of domain 1");
        let r = w.release(3, MapKind::Foreign).unwrap();
        assert_eq!((r.free, r.last_grant_of), (Some(f5), None));
        let r = w.release(2, MapKind::Grant).unwrap();
        assert_eq!((r.free, r.last_grant_of), (Some(f4), Some(1)));
        // Domain 2 is untouched; a new domain 1 starts clean.
        assert_eq!(w.flags(2, 8), PA | GTF_READING | GTF_WRITING);
        w.start(1);
        w.grant(1, 8, 0, 3, PA);
        assert!(w.map(0, 1, 8, false).is_ok());
        assert_eq!(
            w.mem.freed.len(),
            RAM as usize,
            "every frame freed exactly once"
        );
    }

    fn side(u: u32, domid: u16, offset: u16) -> GrantCopyPtr {
        GrantCopyPtr { u, domid, offset }
    }

    fn seg(source: GrantCopyPtr, dest: GrantCopyPtr, len: u16, flags: u16) -> GrantCopySegment {
        GrantCopySegment {
            source,
            dest,
            len,
            flags,
            status: 0,
            pad: 0,
        }
    }

    #[test]
    fn copies_pin_for_the_segment_only() {
        use shared_abi::grant_table::{GNTCOPY_DEST_GREF as D, GNTCOPY_SOURCE_GREF as S};
        let mut w = World::new();
        w.grant(1, 8, 0, 3, PA);
        w.grant(1, 9, 0, 4, PA | GTF_READONLY);
        w.grant(2, 8, 0, 1, PA);
        w.write_ram(1, 3, 4000, b"granted bytes at the end of the page");
        let mut buf = std::vec![0u8; 256];
        // Grant -> buffer (data after one 24-byte segment).
        let s = seg(side(8, 1, 4000), side(24, 0, 0), 36, S);
        assert_eq!(w.copy(s, &mut buf, 24), GNTST_OKAY);
        assert_eq!(&buf[24..60], b"granted bytes at the end of the page");
        assert_eq!(w.flags(1, 8), PA, "released after the segment");
        // Buffer -> grant, into domain 2.
        buf[100..105].copy_from_slice(b"hello");
        let s = seg(side(100, 0, 0), side(8, 2, 7), 5, D);
        assert_eq!(w.copy(s, &mut buf, 24), GNTST_OKAY);
        assert_eq!(w.read_ram(2, 1, 7, 5), b"hello");
        // Grant -> grant (a read-only grant is a fine source).
        w.write_ram(1, 4, 0, b"ro");
        let s = seg(side(9, 1, 0), side(8, 2, 4094), 2, S | D);
        assert_eq!(w.copy(s, &mut buf, 24), GNTST_OKAY);
        assert_eq!(w.read_ram(2, 1, 4094, 2), b"ro");
        // Within one page, overlapping: like memmove.
        w.write_ram(1, 3, 0, b"abcdef");
        let s = seg(side(8, 1, 0), side(8, 1, 2), 4, S | D);
        assert_eq!(w.copy(s, &mut buf, 24), GNTST_OKAY);
        assert_eq!(w.read_ram(1, 3, 0, 6), b"ababcd");
        // A full page between grants.
        let s = seg(side(8, 1, 0), side(8, 2, 0), 4096, S | D);
        assert_eq!(w.copy(s, &mut buf, 24), GNTST_OKAY);
        assert_eq!(w.read_ram(2, 1, 0, 6), b"ababcd");
        // A copy while the grant is mapped leaves the mapping's pin alone.
        w.map(0, 1, 8, false).unwrap();
        let s = seg(side(8, 1, 0), side(24, 0, 0), 1, S);
        assert_eq!(w.copy(s, &mut buf, 24), GNTST_OKAY);
        assert_eq!(w.grants().inspect(1, |t| t.pins_of(8)), Some((1, 0)));
        assert_eq!(w.flags(1, 8), PA | GTF_READING);
        for d in 1..=2 {
            for r in [8, 9] {
                let (pins, _) = w.grants().inspect(d, |t| t.pins_of(r)).unwrap();
                assert_eq!(pins, u16::from(d == 1 && r == 8), "d{d} ref {r}");
            }
        }
    }

    #[test]
    fn bad_copy_segments_get_their_status_and_touch_nothing() {
        use shared_abi::grant_table::{GNTCOPY_DEST_GREF as D, GNTCOPY_SOURCE_GREF as S};
        let mut w = World::new();
        w.grant(1, 8, 0, 3, PA);
        w.grant(1, 9, 0, 4, PA | GTF_READONLY);
        w.grant(1, 10, 5, 4, PA);
        w.grant(1, 11, 0, 99, PA);
        w.write_ram(1, 3, 0, &[0xAA; 16]);
        let buf_len = 48 + 64;
        let g = |r: u32, off: u16| side(r, 1, off);
        let b = |at: u32| side(at, 0, 0);
        let cases = [
            (seg(g(8, 0), b(48), 8, 0), GNTST_BAD_COPY_ARG), // neither side a grant
            (seg(g(8, 0), b(48), 8, S | 4), GNTST_BAD_COPY_ARG), // unknown flag
            (seg(g(8, 0), b(48), 4097, S), GNTST_BAD_COPY_ARG), // longer than a page
            (seg(g(8, 4090), b(48), 8, S), GNTST_BAD_COPY_ARG), // crosses its page
            (seg(g(8, 0), g(8, 4095), 2, S | D), GNTST_BAD_COPY_ARG),
            (seg(g(8, 0), b(40), 8, S), GNTST_BAD_COPY_ARG), // into the segments
            (
                seg(g(8, 0), b(buf_len as u32 - 4), 8, S),
                GNTST_BAD_COPY_ARG,
            ), // past the end
            (seg(g(8, 0), b(u32::MAX), 8, S), GNTST_BAD_COPY_ARG),
            (seg(g(8, 0), side(48, 1, 0), 8, S), GNTST_BAD_COPY_ARG), // buffer with a domid
            (seg(g(8, 0), side(48, 0, 1), 8, S), GNTST_BAD_COPY_ARG), // buffer with an offset
            (seg(side(8, 0, 0), b(48), 8, S), GNTST_BAD_DOMAIN),      // domain 0 grants nothing
            (seg(side(8, 3, 0), b(48), 8, S), GNTST_BAD_GNTREF),      // nothing granted
            (seg(side(8, 7, 0), b(48), 8, S), GNTST_BAD_DOMAIN),      // no such domain
            (seg(g(600, 0), b(48), 8, S), GNTST_BAD_GNTREF),
            (seg(g(10, 0), b(48), 8, S), GNTST_PERMISSION_DENIED), // another grantee
            (seg(b(48), g(9, 0), 8, D), GNTST_PERMISSION_DENIED),  // read-only destination
            (seg(g(11, 0), b(48), 8, S), GNTST_BAD_PAGE),
            (seg(g(8, 0), g(11, 0), 8, S | D), GNTST_BAD_PAGE), // source pinned, released
        ];
        let mut buf = std::vec![0x55u8; buf_len];
        for (s, want) in cases {
            assert_eq!(w.copy(s, &mut buf, 48), want, "{s:?}");
        }
        let mut padded = seg(g(8, 0), b(48), 8, S);
        padded.pad = 1;
        assert_eq!(w.copy(padded, &mut buf, 48), GNTST_BAD_COPY_ARG);
        assert_eq!(buf, std::vec![0x55u8; buf_len], "nothing copied");
        assert_eq!(w.read_ram(1, 4, 0, 8), [0; 8]);
        assert_eq!(w.grants().inspect(1, |t| t.any_pinned()), Some(false));
        for r in 8..12 {
            assert_eq!(w.flags(1, r) & (GTF_READING | GTF_WRITING), 0);
        }
        // Length 0 is a valid, empty copy.
        assert_eq!(w.copy(seg(g(8, 0), b(48), 0, S), &mut buf, 48), GNTST_OKAY);
    }

    /// A granter rewriting its entry from another CPU while Dom0 maps it: the map either
    /// wins (and the entry is pinned, once) or gives up; it never hangs or panics, and a
    /// won pin is released cleanly.
    #[test]
    fn a_granter_racing_the_map_from_another_thread() {
        use core::sync::atomic::{AtomicBool, Ordering};
        let mut w = World::new();
        let entry = TABLES + 4096 + 8 * 8;
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let shared = w.shared.clone();
        let racer = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut i = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    // Flip between granting domain 0, granting domain 1 and revoking,
                    // keeping any in-use bits the microvisor set.
                    let cur = shared.load_u32(entry);
                    let inuse = cur & u32::from(GTF_READING | GTF_WRITING);
                    let word = match i % 3 {
                        0 => u32::from(PA),
                        1 => u32::from(PA) | 1 << 16,
                        _ => 0,
                    };
                    let _ = shared.cas_u32(entry, cur, word | inuse);
                    i = i.wrapping_add(1);
                }
            })
        };
        for round in 0..2000u64 {
            let slot = round % 8;
            match w.map(slot, 1, 8, round % 2 == 0) {
                Ok(_) => {
                    assert_ne!(w.flags(1, 8) & GTF_READING, 0, "pinned while mapped");
                    w.release(slot, MapKind::Grant).unwrap();
                }
                Err(e) => assert!(
                    matches!(e, Errno::EAGAIN | Errno::EPERM | Errno::ENOENT),
                    "{e:?}"
                ),
            }
            assert_eq!(w.grants().inspect(1, |t| t.any_pinned()), Some(false));
        }
        stop.store(true, Ordering::Relaxed);
        racer.join().unwrap();
    }

    #[derive(Clone, Debug)]
    enum Op {
        Map {
            slot: u64,
            d: u32,
            gref: u32,
            write: bool,
        },
        MapForeign {
            slot: u64,
            d: u32,
            gfn: u64,
        },
        Release {
            slot: u64,
            grant: bool,
        },
        Rewrite {
            d: u16,
            gref: u32,
            word: u32,
            frame: u32,
        },
        Copy {
            seg: GrantCopySegment,
        },
        End {
            d: u16,
        },
        Restart {
            d: u16,
        },
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        let d = 0u32..5;
        let gref = prop_oneof![0u32..16, Just(512), any::<u32>()];
        prop_oneof![
            (0u64..10, d.clone(), gref.clone(), any::<bool>()).prop_map(
                |(slot, d, gref, write)| Op::Map {
                    slot,
                    d,
                    gref,
                    write
                }
            ),
            (0u64..10, d.clone(), 0u64..12).prop_map(|(slot, d, gfn)| Op::MapForeign {
                slot,
                d,
                gfn
            }),
            (0u64..10, any::<bool>()).prop_map(|(slot, grant)| Op::Release { slot, grant }),
            (1u16..4, 0u32..16, any::<u32>(), 0u32..12).prop_map(|(d, gref, word, frame)| {
                // Mostly plausible grants to domain 0, sometimes garbage.
                let word = if word % 3 == 0 {
                    word
                } else {
                    (word & 0x1F) & !0x18 | 1
                };
                Op::Rewrite {
                    d,
                    gref,
                    word,
                    frame,
                }
            }),
            (any::<[u8; 24]>(), 0u16..4, 0u32..16).prop_map(|(raw, d, gref)| {
                use zerocopy::FromBytes;
                let mut seg = GrantCopySegment::read_from_bytes(&raw).unwrap();
                if raw[0] % 2 == 0 {
                    seg.source = GrantCopyPtr {
                        u: gref,
                        domid: d,
                        offset: seg.source.offset % 4096,
                    };
                    seg.len %= 300;
                    seg.flags %= 4;
                    seg.pad = 0;
                }
                Op::Copy { seg }
            }),
            (1u16..4).prop_map(|d| Op::End { d }),
            (1u16..4).prop_map(|d| Op::Restart { d }),
        ]
    }

    proptest::proptest! {
        /// Any sequence of maps, releases, copies, granter rewrites, ends and restarts:
        /// never a panic or a double free; every live granter's pins match the grant
        /// mappings Dom0 holds; once every slot is released, every frame an ended domain
        /// left to Dom0 has been freed exactly once.
        #[test]
        fn window_and_grants_stay_consistent(ops in proptest::collection::vec(op(), 1..80)) {
            let mut w = World::new();
            let mut ended = [false; 4];
            let mut buf = std::vec![0u8; 24 + 400];
            for op in ops {
                match op {
                    Op::Map { slot, d, gref, write } => { let _ = w.map(slot, d, gref, write); }
                    Op::MapForeign { slot, d, gfn } => { let _ = w.map_foreign(slot, d, gfn); }
                    Op::Release { slot, grant } => {
                        let kind = if grant { MapKind::Grant } else { MapKind::Foreign };
                        let _ = w.release(slot, kind);
                    }
                    Op::Rewrite { d, gref, word, frame } => {
                        if !ended[usize::from(d)] {
                            let pa = TABLES + u64::from(d) * 4096 + u64::from(gref) * 8;
                            w.shared.store_u32(pa + 4, frame);
                            w.shared.store_u32(pa, word);
                        }
                    }
                    Op::Copy { seg } => { let _ = w.copy(seg, &mut buf, 24); }
                    Op::End { d } => {
                        if !ended[usize::from(d)] {
                            w.end(d);
                            ended[usize::from(d)] = true;
                        }
                    }
                    Op::Restart { d } => {
                        // As on the machine: a domid comes back only once nothing of the
                        // old domain is held.
                        if ended[usize::from(d)]
                            && !w.window.filled().any(|s| s.domid == d)
                        {
                            w.start(d);
                            ended[usize::from(d)] = false;
                        }
                    }
                }
                for d in 1..=3u16 {
                    if ended[usize::from(d)] {
                        continue;
                    }
                    for gref in w.window.filled().filter_map(|s| s.grant).map(|g| g.0) {
                        let held: Vec<_> = w.window.filled()
                            .filter(|s| s.domid == d && !s.orphan && s.grant.map(|g| g.0) == Some(gref))
                            .collect();
                        let writers = held.iter().filter(|s| s.grant.unwrap().1).count();
                        let pins = w.grants().inspect(d, |t| t.pins_of(gref)).unwrap();
                        proptest::prop_assert_eq!(
                            (usize::from(pins.0), usize::from(pins.1)),
                            (held.len(), writers)
                        );
                    }
                    if !w.window.filled().any(|s| s.domid == d && s.grant.is_some()) {
                        proptest::prop_assert_eq!(
                            w.grants().inspect(d, |t| t.any_pinned()), Some(false)
                        );
                    }
                }
            }
            for slot in 0..8 {
                for kind in [MapKind::Grant, MapKind::Foreign] {
                    let _ = w.release(slot, kind);
                }
            }
            // Every frame of an ended domain is back: the fake allocator holds only the
            // live domains' RAM (FakeMem panics on a double free).
            let live = (1..=3).filter(|&d| !ended[d]).count();
            proptest::prop_assert_eq!(w.mem.frames.len(), live * RAM as usize);
        }
    }
}
