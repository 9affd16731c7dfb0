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
