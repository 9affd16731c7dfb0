//! badfront: a hostile PV front-end, the test guest for dom0d's back-ends.
//!
//! It does the xenbus handshake itself (its own ring pages, grant references and event
//! channels, not `guest_rt::blkfront`/`netfront`) and then breaks the protocol, one
//! attack per device, so that each attack stops only its own device:
//!
//! | device | attack | line |
//! |---|---|---|
//! | `xvda` | a valid write (must be answered okay), then `req_prod` a billion past the ring | `ring-index` |
//! | `xvdb` | a write whose segments use a reference never granted and one beyond the table | `bad-grant` |
//! | `xvdc` | writes with `first_sect > last_sect`, with `last_sect` 9, and one crossing the disk's end | `bad-segments` |
//! | `xvdd` | a full ring (32) of valid writes, then each unanswered slot rewritten with garbage (id, grant, sector, segment count, sectors, operation) and back to valid, over and over for a second | `rewrite` |
//! | `vif0` | a tx packet whose grant reference was never granted | `bad-tx-grant` |
//! | `vif1` | a valid frame (must be answered), then tx `req_prod` a billion past the ring | `tx-ring-index` |
//!
//! After each attack it waits (10 s at most) until the back-end leaves Connected and
//! prints `badfront: <attack> on <device>: back-end state <n>` (6 = Closed: dom0d stopped
//! the device), or `badfront: <attack> on <device>: FAILED: <why>` when the attack could
//! not be made (no such device, the handshake failed, a valid request was refused).
//! The rewrite attack also prints what it saw (`badfront: rewrite on xvdd: N of 32
//! answered (...)`): a back-end acting on private copies either serves what it copied
//! (valid: okay; an unsupported operation: an error status) or stops the device. Then it
//! prints `badfront: done` and keeps running, blocked on events (it obeys `dom0 shutdown`).
//!
//! Grant references: disk `k` uses 200 + 4k (ring) and 201 + 4k (data), vif `h` 240 + 4h
//! (tx ring), 241 + 4h (rx ring) and 242 + 4h (data); [`BAD_REF_UNGRANTED`] is never
//! granted. These overlap `guest_rt::blkfront`'s (16..=368), which this guest does not use.
//!
//! Dom0 runs it with `/etc/dom0/examples/badfront.toml`; xtask's `dom0-hostile-front`
//! scenario runs it next to `pvdemo`.
#![no_std]
#![no_main]

mod blk;
mod front;
mod net;

use guest_rt::console::{self, PvStatus};
use guest_rt::{BootInfo, ShutdownReason, events, println, time};

guest_rt::entry!(main);

/// A grant reference inside the table that this guest never grants.
pub(crate) const BAD_REF_UNGRANTED: u32 = 299;
/// A grant reference far beyond any grant table.
pub(crate) const BAD_REF_OUT_OF_TABLE: u32 = 0x7FFF_FFF0;

fn main(_boot: &BootInfo) -> ShutdownReason {
    match console::init_pv() {
        Ok(PvStatus::Active { .. }) => println!("badfront: console up"),
        Ok(PvStatus::Absent) => println!("badfront: no PV console; printing through console_io"),
        Err(e) => println!("badfront: PV console unusable ({e}); printing through console_io"),
    }
    if events::initialised() {
        blk::run();
        net::run();
    } else {
        println!("badfront: no events or xenstore: nothing to attack");
    }
    println!("badfront: done");
    loop {
        if events::initialised() {
            // A `dom0 shutdown` request is acted on in here.
            events::wait_for_event();
        } else {
            time::sleep_ns(time::NS_PER_SEC);
        }
    }
}
