//! Plumbing shared by dom0d's split-device back-ends ([`crate::blkback`],
//! [`crate::netback`]): publishing a device's two xenstore directories with the right
//! permissions, reading the front-end's state and ring details strictly, mapping a ring
//! page the front-end granted into a slot of the page pool (and giving it back), and
//! closing an event channel.
//!
//! Every function takes the back-end's log prefix (`"blkback"`, `"netback"`) for the
//! lines it writes.
#![forbid(unsafe_code)]

use std::sync::Arc;

use shared_abi::io::xenbus::XenbusState;

use crate::grants::{grant_map, grant_unmap};
use crate::log::{self, Level};
use crate::microvisor::{Microvisor, PageMap, evtchn_close};
use crate::pages::PagePool;
use crate::proto::errno_text;
use crate::xenstore::store::{Access, Perms, Store};

/// Permissions of a back-end directory: domain 0's, readable by DomU `domid`.
#[must_use]
pub fn backend_perms(domid: u32) -> Perms {
    Perms {
        owner: 0,
        others: Access::None,
        acl: vec![(domid, Access::Read)],
    }
}

/// Permissions of a front-end directory: DomU `domid`'s, readable by domain 0.
#[must_use]
pub fn frontend_perms(domid: u32) -> Perms {
    Perms {
        owner: domid,
        others: Access::None,
        acl: vec![(0, Access::Read)],
    }
}

/// Writes `value` at `path` as domain 0 and gives the node `perms`.
///
/// # Errors
/// The store's refusal, as text naming the path.
pub fn write_node(store: &mut Store, path: &str, value: &str, perms: &Perms) -> Result<(), String> {
    store
        .write(0, path, value.as_bytes())
        .and_then(|()| store.set_perms(0, path, perms.clone()))
        .map_err(|e| format!("writing {path}: {e}"))
}

/// Creates directory `dir` and its `(leaf, value)` nodes, all with `perms`.
///
/// # Errors
/// As [`write_node`]; what was written stays (the caller removes `dir`).
pub fn write_dir(
    store: &mut Store,
    dir: &str,
    nodes: &[(&str, String)],
    perms: &Perms,
) -> Result<(), String> {
    write_node(store, dir, "", perms)?;
    for (leaf, value) in nodes {
        write_node(store, &format!("{dir}/{leaf}"), value, perms)?;
    }
    Ok(())
}

/// Writes `state` into `dir/state` (domain 0 may write anywhere: only a full store could
/// refuse, which is logged).
pub fn set_state(who: &str, store: &mut Store, dir: &str, state: XenbusState) {
    if let Err(e) = store.write(
        0,
        &format!("{dir}/state"),
        state.as_u32().to_string().as_bytes(),
    ) {
        log::limited(
            Level::Error,
            format_args!("{who}: writing {dir}/state: {e}"),
        );
    }
}

/// The xenbus state in `dir/state`, [`XenbusState::Unknown`] if absent or malformed.
#[must_use]
pub fn read_state(store: &Store, dir: &str) -> XenbusState {
    store
        .read(0, &format!("{dir}/state"))
        .ok()
        .and_then(|raw| XenbusState::parse(&raw))
        .unwrap_or(XenbusState::Unknown)
}

/// The domains of a back-end's devices, keyed `(domid, device)`: each once, in order.
#[must_use]
pub fn domains_of<V>(devices: &std::collections::BTreeMap<(u32, u32), V>) -> Vec<u32> {
    let mut d: Vec<u32> = devices.keys().map(|k| k.0).collect();
    d.dedup();
    d
}

/// A strict decimal `u32` node (1 to 10 ASCII digits, nothing else).
///
/// # Errors
/// The node is missing or not such a number, as text naming the path.
pub fn read_u32(store: &Store, path: &str) -> Result<u32, String> {
    let raw = store.read(0, path).map_err(|e| format!("{path}: {e}"))?;
    let text = std::str::from_utf8(&raw)
        .ok()
        .filter(|t| !t.is_empty() && t.len() <= 10 && t.bytes().all(|b| b.is_ascii_digit()));
    text.and_then(|t| t.parse().ok())
        .ok_or_else(|| format!("{path} is not a decimal number"))
}

const EBUSY: i32 = 16;

/// A ring page the front-end granted, mapped writable into a slot of the page pool.
#[derive(Debug)]
pub struct MappedRing {
    /// The pool slot holding the grant mapping.
    pub slot: u64,
    /// The mapping (hand clones to a ring end; all must be gone before [`unmap_ring`]).
    pub mem: Arc<dyn PageMap>,
}

/// Maps `gref` of DomU `domid` writable (`GrantMap`) into a free slot of `pool` and
/// `mmap`s it. `what` names the reference in errors (`ring-ref`, `tx-ring-ref`).
///
/// # Errors
/// What failed, as text; nothing stays mapped then.
pub fn map_ring(
    who: &str,
    mv: &dyn Microvisor,
    pool: &PagePool,
    domid: u32,
    gref: u32,
    what: &str,
) -> Result<MappedRing, String> {
    let slot = pool.take_slot(mv)?;
    let mapped = match grant_map(mv, slot, domid, gref, false) {
        // Left filled by an earlier dom0d that died before recording it.
        Err(EBUSY) => {
            log::limited(
                Level::Warn,
                format_args!("{who}: slot {slot} was still mapped; unmapping it"),
            );
            crate::pages::reclaim(mv, slot).and_then(|()| grant_map(mv, slot, domid, gref, false))
        }
        other => other,
    };
    if let Err(errno) = mapped {
        pool.free_slot(slot);
        return Err(format!(
            "GrantMap of {what} {gref} failed with {}",
            errno_text(errno)
        ));
    }
    match mv.map_page(slot) {
        Ok(mem) => Ok(MappedRing { slot, mem }),
        Err(errno) => {
            unmap_slot(who, mv, pool, slot);
            Err(format!(
                "mmap of slot {slot} failed with {}",
                errno_text(errno)
            ))
        }
    }
}

/// Undoes [`map_ring`]: drops the mapping (every clone must be gone already) and empties
/// the slot.
pub fn unmap_ring(who: &str, mv: &dyn Microvisor, pool: &PagePool, ring: MappedRing) {
    let MappedRing { slot, mem } = ring;
    drop(mem);
    unmap_slot(who, mv, pool, slot);
}

/// `GrantUnmap` of `slot` (tried twice), returning it to the pool; a slot that stays
/// filled is logged and kept out of use.
pub fn unmap_slot(who: &str, mv: &dyn Microvisor, pool: &PagePool, slot: u64) {
    match grant_unmap(mv, slot).or_else(|_| grant_unmap(mv, slot)) {
        Ok(()) => pool.free_slot(slot),
        Err(errno) => log::limited(
            Level::Error,
            format_args!(
                "{who}: GrantUnmap of slot {slot} failed with {}; the slot stays out of use",
                errno_text(errno)
            ),
        ),
    }
}

/// Closes domain 0's `port`, logging a failure.
pub fn close_port(who: &str, mv: &dyn Microvisor, port: u32) {
    if let Err(errno) = evtchn_close(mv, port) {
        log::limited(
            Level::Warn,
            format_args!(
                "{who}: closing port {port} failed with {}",
                errno_text(errno)
            ),
        );
    }
}
