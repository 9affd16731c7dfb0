//! The machine side of grant tables: every DomU's table (frames and pins) and atomic access
//! to the table frames through their machine addresses.
//!
//! A child of `hv`. Lock order: `FOREIGN` (Dom0's window, `dom0_host`), then a domain's
//! `GRANTS` entry. Never held across a guest run.

use super::{MAX_DOMAINS, Mutex, Ordering};
use crate::grant::{DomainGrants, Grants, TableMem};
use core::sync::atomic::AtomicU32;

/// Each DomU's grant table, by domid (domain 0 has none).
static GRANTS: [Mutex<DomainGrants>; MAX_DOMAINS + 1] =
    [const { Mutex::new(DomainGrants::EMPTY) }; MAX_DOMAINS + 1];

/// Grant-table frames through the identity map.
#[derive(Debug)]
pub(super) struct PhysTable;

static TABLE: PhysTable = PhysTable;

fn word(pa: u64) -> &'static AtomicU32 {
    debug_assert!(pa.is_multiple_of(4));
    // SAFETY: `Grants` passes only 4-byte aligned addresses inside a table frame of a live
    // domain, under that domain's `GRANTS` lock: a frame of its RAM, identity-mapped below
    // 4 GiB, which stays allocated until its teardown has forgotten the frame (under the
    // same lock, before the domain's memory is freed). The guest writes the frame
    // concurrently, which is why every access is atomic.
    unsafe { &*(pa as *const AtomicU32) }
}

impl TableMem for PhysTable {
    fn load_u32(&self, pa: u64) -> u32 {
        word(pa).load(Ordering::SeqCst)
    }
    fn store_u32(&self, pa: u64, v: u32) {
        word(pa).store(v, Ordering::SeqCst);
    }
    fn cas_u32(&self, pa: u64, old: u32, new: u32) -> u32 {
        match word(pa).compare_exchange(old, new, Ordering::SeqCst, Ordering::SeqCst) {
            Ok(v) | Err(v) => v,
        }
    }
    fn fetch_and_u32(&self, pa: u64, mask: u32) {
        word(pa).fetch_and(mask, Ordering::SeqCst);
    }
}

/// The grant-table operations over every domain.
pub(super) fn grants() -> Grants<'static, PhysTable> {
    Grants::new(&GRANTS, &TABLE)
}
