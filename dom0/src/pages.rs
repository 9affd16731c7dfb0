//! DomU pages that dom0d keeps mapped for a domain's life (its PV console and xenstore
//! rings), each in a foreign-window slot of its own.
//!
//! The window's slots are shared out by convention: `dom0-probe` uses the first two,
//! slot 16 (`grant`) and the last, the builder [`WINDOW_SLOTS`] from the middle
//! ([`builder::window`]), and this pool the slots between the builder's and the last
//! one. A page is mapped with `ForeignMap` into a free slot of the pool and then
//! `mmap`ed ([`Microvisor::map_page`]); it is released in the opposite order: the process
//! mapping is dropped, then `ForeignUnmap` empties the slot. The frame stays allocated
//! while the slot holds it, even after its domain is destroyed, so a console can still be
//! drained after the end; only the release gives the frame back to the microvisor.
#![forbid(unsafe_code)]

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use crate::builder::{self, WINDOW_SLOTS};
use crate::log::{self, Level};
use crate::microvisor::{self, Microvisor, PageMap, foreign_map, foreign_unmap};
use crate::proto::errno_text;

const EBUSY: i32 = 16;

/// A DomU page mapped into dom0d through a slot of the pool.
#[derive(Debug)]
pub struct MappedPage {
    /// The foreign-window slot holding the frame.
    pub slot: u64,
    /// The domain.
    pub domid: u32,
    /// The frame in the domain.
    pub gfn: u64,
    /// The mapping. Clones may be handed out (e.g. to a ring end); all must be dropped
    /// before [`PagePool::release`].
    pub mem: Arc<dyn PageMap>,
}

/// The slots dom0d uses for long-lived page mappings, and which are taken.
#[derive(Debug, Default)]
pub struct PagePool {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// `first..end`, learnt from `HostInfo` on first use.
    range: Option<(u64, u64)>,
    used: BTreeSet<u64>,
}

/// Empties a slot an earlier dom0d left filled without recording it (it died between
/// filling it and saving its state): `ForeignUnmap`, or `GrantUnmap` for a grant mapping.
///
/// # Errors
/// The errno of the last call.
pub fn reclaim(mv: &dyn Microvisor, slot: u64) -> Result<(), i32> {
    foreign_unmap(mv, slot)
        .map(|_| ())
        .or_else(|_| crate::grants::grant_unmap(mv, slot))
}

/// The pool's slots in a window of `pages` slots: after the builder's, before the last.
#[must_use]
pub fn pool_range(pages: u64) -> (u64, u64) {
    let first = pages / 2 + WINDOW_SLOTS;
    (first, pages.saturating_sub(1).max(first))
}

impl PagePool {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Slots of the pool in use.
    #[must_use]
    pub fn in_use(&self) -> usize {
        self.lock().used.len()
    }

    /// Whether fewer than half of the pool's slots are in use (`false` before the first
    /// [`Self::take_slot`] learnt the pool's size). Optional mappings (persistent grants)
    /// are made only then, so they can never take the slots rings and pages need.
    #[must_use]
    pub fn has_room_to_spare(&self) -> bool {
        let inner = self.lock();
        inner
            .range
            .is_some_and(|(first, end)| inner.used.len() * 2 < (end - first) as usize)
    }

    /// Takes a free slot, asking the microvisor for the window on first use.
    pub(crate) fn take_slot(&self, mv: &dyn Microvisor) -> Result<u64, String> {
        let mut inner = self.lock();
        let (first, end) = match inner.range {
            Some(r) => r,
            None => {
                let host = microvisor::host_record(mv).map_err(|e| e.to_string())?;
                builder::window(&host).map_err(|e| e.to_string())?;
                let r = pool_range(host.foreign_window_pages);
                inner.range = Some(r);
                r
            }
        };
        let slot = (first..end)
            .find(|s| !inner.used.contains(s))
            .ok_or_else(|| {
                format!(
                    "all {} page slots of the foreign window are in use",
                    end - first
                )
            })?;
        inner.used.insert(slot);
        Ok(slot)
    }

    pub(crate) fn free_slot(&self, slot: u64) {
        self.lock().used.remove(&slot);
    }

    /// Marks `slot` as taken: an earlier dom0d filled it and this one takes it over
    /// ([`crate::state`]), so nothing else is mapped there.
    pub fn claim(&self, slot: u64) {
        self.lock().used.insert(slot);
    }

    /// Maps again the page an earlier dom0d left in `slot` (which [`Self::claim`] took),
    /// frame `gfn` of `domid`; nothing is mapped with `ForeignMap`.
    ///
    /// # Errors
    /// The `mmap`'s errno, as text; the slot stays taken and filled then.
    pub fn adopt(
        &self,
        mv: &dyn Microvisor,
        slot: u64,
        domid: u32,
        gfn: u64,
    ) -> Result<MappedPage, String> {
        self.claim(slot);
        mv.map_page(slot)
            .map(|mem| MappedPage {
                slot,
                domid,
                gfn,
                mem,
            })
            .map_err(|errno| {
                format!(
                    "mmap of window slot {slot} failed with {}",
                    errno_text(errno)
                )
            })
    }

    /// Maps frame `gfn` of `domid` for as long as the caller keeps it, until
    /// [`Self::release`]. A slot still filled by an earlier dom0d is emptied and reused.
    ///
    /// # Errors
    /// What failed, as text (no free slot, `ForeignMap`'s or `mmap`'s errno); nothing is
    /// left mapped then.
    pub fn map(&self, mv: &dyn Microvisor, domid: u32, gfn: u64) -> Result<MappedPage, String> {
        let slot = self.take_slot(mv)?;
        let mapped = match foreign_map(mv, slot, domid, gfn) {
            Err(EBUSY) => {
                log::limited(
                    Level::Warn,
                    format_args!("page slot {slot} was still mapped; unmapping it"),
                );
                reclaim(mv, slot).and_then(|()| foreign_map(mv, slot, domid, gfn))
            }
            other => other,
        };
        if let Err(errno) = mapped {
            self.free_slot(slot);
            return Err(format!(
                "ForeignMap of gfn {gfn:#x} into window slot {slot} failed with {}",
                errno_text(errno)
            ));
        }
        match mv.map_page(slot) {
            Ok(mem) => Ok(MappedPage {
                slot,
                domid,
                gfn,
                mem,
            }),
            Err(errno) => {
                self.unmap_slot(mv, slot);
                Err(format!(
                    "mmap of window slot {slot} failed with {}",
                    errno_text(errno)
                ))
            }
        }
    }

    /// Empties `slot` (tried twice) and returns it to the pool; a slot that stays filled is
    /// logged and kept out of the pool, so it is never reused with a stale frame.
    fn unmap_slot(&self, mv: &dyn Microvisor, slot: u64) {
        match foreign_unmap(mv, slot).or_else(|_| foreign_unmap(mv, slot)) {
            Ok(_) => self.free_slot(slot),
            Err(errno) => log::limited(
                Level::Error,
                format_args!(
                    "ForeignUnmap of page slot {slot} failed with {}; the slot stays out of use",
                    errno_text(errno)
                ),
            ),
        }
    }

    /// Drops the mapping and empties its slot, giving the frame back (if its domain is
    /// gone, the microvisor frees it now).
    ///
    /// # Errors
    /// The page itself if clones of the mapping are still alive: nothing is released then
    /// (the slot stays filled, so the clones stay valid).
    pub fn release(&self, mv: &dyn Microvisor, page: MappedPage) -> Result<(), MappedPage> {
        if Arc::strong_count(&page.mem) != 1 {
            return Err(page);
        }
        let slot = page.slot;
        drop(page);
        self.unmap_slot(mv, slot);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use pv_drivers::SharedMem;

    use super::*;
    use crate::fake::{FAKE_WINDOW_PAGES, FakeMicrovisor, OP_MAP_PAGE};

    #[test]
    fn the_pool_sits_between_the_builders_slots_and_the_last() {
        assert_eq!(pool_range(4096), (2048 + 64, 4095));
        assert_eq!(pool_range(FAKE_WINDOW_PAGES).0, 2112);
        let (first, end) = pool_range(100);
        assert!(first >= end, "a tiny window has no pool: {first}..{end}");
    }

    #[test]
    fn pages_are_shared_with_the_guest_and_released() {
        let fake = FakeMicrovisor::new();
        let pool = PagePool::default();
        let a = pool.map(&fake, 1, 3).unwrap();
        let b = pool.map(&fake, 2, 3).unwrap();
        assert_eq!((a.slot, b.slot), (2112, 2113));
        assert_eq!(fake.foreign_slots(), [(2112, 1, 3), (2113, 2, 3)]);
        // The guest's writes show through the mapping and ours reach the guest.
        fake.write_guest(1, 3 * 4096 + 8, b"hi");
        let mut buf = [0u8; 2];
        a.mem.read_bytes(8, &mut buf).unwrap();
        assert_eq!(&buf, b"hi");
        a.mem.write_bytes(100, b"yo").unwrap();
        assert_eq!(fake.read_guest(1, 3 * 4096 + 100, 2).unwrap(), b"yo");
        // A clone blocks the release; without it the slot goes back to the pool.
        let clone = Arc::clone(&a.mem);
        let a = pool.release(&fake, a).unwrap_err();
        assert_eq!(pool.in_use(), 2);
        drop(clone);
        pool.release(&fake, a).unwrap();
        assert_eq!(fake.foreign_slots(), [(2113, 2, 3)]);
        assert_eq!(pool.in_use(), 1);
        pool.release(&fake, b).unwrap();
        assert!(fake.foreign_slots().is_empty());
        assert_eq!(fake.page_maps(), 0);
    }

    #[test]
    fn a_failed_mmap_leaves_nothing_mapped_and_a_stale_slot_is_reclaimed() {
        let fake = FakeMicrovisor::new();
        let pool = PagePool::default();
        fake.fail_nth(OP_MAP_PAGE, 1, 12);
        let e = pool.map(&fake, 1, 0).unwrap_err();
        assert_eq!(
            e,
            "mmap of window slot 2112 failed with ENOMEM (Cannot allocate memory)"
        );
        assert!(fake.foreign_slots().is_empty());
        assert_eq!(pool.in_use(), 0);
        // An earlier dom0d left slot 2112 filled.
        microvisor::foreign_map(&fake, 2112, 2, 0).unwrap();
        let p = pool.map(&fake, 1, 1).unwrap();
        assert_eq!(fake.foreign_slots(), [(2112, 1, 1)]);
        pool.release(&fake, p).unwrap();
        assert!(fake.foreign_slots().is_empty());
        assert_eq!(fake.page_maps(), 0);
        // No such domain: nothing taken.
        assert!(pool.map(&fake, 99, 0).unwrap_err().contains("ESRCH"));
        assert_eq!(pool.in_use(), 0);
    }
}
