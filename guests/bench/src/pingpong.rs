//! `pingpong=server` / `pingpong=client peer=<server domid>`: event-channel round trips
//! between two DomUs (created by Dom0, so they have a PV console and xenstore), measured
//! side by side with the null hypercall.
//!
//! ## Rendezvous (xenstore)
//!
//! 1. The server (domain S) creates `data/pingpong/client` in its home, owned by S and
//!    writable (not readable) by every other domain (perms `wS`), and polls it.
//! 2. The client writes its domid there (retrying until the node exists and is writable).
//! 3. The server allocates an unbound port for that domain (`EVTCHNOP_alloc_unbound`),
//!    writes it to `data/pingpong/port` and makes that node readable by everyone (`rS`).
//! 4. The client polls `/local/domain/S/data/pingpong/port` and binds to it
//!    (`EVTCHNOP_bind_interdomain`). The bind leaves its new port pending, as in Xen; the
//!    client takes that event before anything is timed.
//! 5. The client sends once and waits for the first answer. An event that reaches the
//!    server while it still waits for the store is not lost: guest-rt keeps every port a
//!    wait takes until `events::take_signalled` claims it.
//!
//! ## Measurement
//!
//! Both sides are **blocked between events** (`SCHEDOP_block` through
//! [`events::wait_for_event`]), so a round trip includes two wake-ups of a blocked vCPU on
//! another pCPU: client `EVTCHNOP_send`, the server's vCPU wakes, takes the upcall and
//! sends back, the client's vCPU wakes and takes the upcall. The client reads the TSC
//! (`lfence; rdtsc; lfence`) around each round trip. [`BATCHES`] batches of
//! [`ROUND_TRIPS`] round trips alternate with batches of the null hypercall (as the plain
//! bench mode times it: the average of [`crate::ITERATIONS`] back-to-back calls), after
//! [`WARMUP`] untimed round trips. The client prints
//!
//! ```text
//! bench evtchn_pingpong <median of every round trip> cycles
//! bench hypercall_null <median of the batch averages> cycles
//! bench pingpong_round_trips <count> count
//! bench pingpong: done (blocked between events)
//! ```
//!
//! or `bench pingpong: FAILED: <why>`. Both sides then stay blocked until they are
//! destroyed or shut down (the server keeps answering), so their console output stays in
//! `dom0 logs`.

use core::fmt;

use guest_rt::arch::cpu::rdtsc_fenced;
use guest_rt::console::{self, PvStatus};
use guest_rt::control::{StoreError, store_read, store_set_perms, store_write};
use guest_rt::pvdev::{Text, parse_decimal, text};
use guest_rt::shared_abi::guest::{
    evtchn_alloc_unbound, evtchn_bind_interdomain, evtchn_send, set_timer_op,
};
use guest_rt::shared_abi::{DomId, Errno};
use guest_rt::stats::median;
use guest_rt::{ShutdownReason, cmdline, events, println, time};

/// Timed batches of round trips (odd).
const BATCHES: usize = 31;
/// Round trips per batch; each is one sample.
const ROUND_TRIPS: usize = 16;
/// Untimed round trips before the first batch.
const WARMUP: usize = 32;
/// How long either side waits for the other during the rendezvous and the first round
/// trip.
const RENDEZVOUS_NS: u64 = 60 * time::NS_PER_SEC;
/// Pause between two looks at a store node that is not ready yet.
const POLL_NS: u64 = 20_000_000;
/// Largest domid of an ordinary domain (`DOMID_FIRST_RESERVED - 1`).
const MAX_DOMID: u64 = 0x7FEF;

/// The server's node the client writes its domid to (relative to the server's home).
const CLIENT_NODE: &str = "data/pingpong/client";
/// The server's node holding the port offered to the client.
const PORT_NODE: &str = "data/pingpong/port";

/// Why the ping-pong could not run.
enum Failure {
    /// The command line is wrong.
    Usage(&'static str),
    /// A store access failed.
    Store(&'static str, StoreError),
    /// A hypercall failed.
    Hypercall(&'static str, Errno),
    /// Something else, described.
    Other(&'static str),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Usage(why) => write!(
                f,
                "{why} (use pingpong=server, or pingpong=client peer=<server domid>)"
            ),
            Failure::Store(what, e) => write!(f, "{what}: {e}"),
            Failure::Hypercall(what, e) => write!(f, "{what}: {e}"),
            Failure::Other(why) => f.write_str(why),
        }
    }
}

/// Runs the role `role` (the value of `pingpong=`) with the rest of `cmdline`.
pub(crate) fn run(role: &str, cmdline: &str) -> ShutdownReason {
    match console::init_pv() {
        Ok(PvStatus::Active { .. }) if events::initialised() => {}
        Ok(_) => {
            println!("bench pingpong: FAILED: no PV console (create the guest from Dom0)");
            return ShutdownReason::Crash;
        }
        Err(e) => {
            println!("bench pingpong: FAILED: PV console unusable ({e})");
            return ShutdownReason::Crash;
        }
    }
    let result = match role {
        "server" => server(),
        "client" => match cmdline::value(cmdline, "peer").and_then(|v| domid(v.as_bytes())) {
            Some(peer) => client(peer),
            None => Err(Failure::Usage("the client needs peer=<server domid>")),
        },
        _ => Err(Failure::Usage("unknown role")),
    };
    if let Err(why) = result {
        println!("bench pingpong: FAILED: {why}");
    }
    idle()
}

/// Blocked until destroyed or shut down (`dom0 shutdown` is acted on in the wait).
fn idle() -> ShutdownReason {
    loop {
        events::wait_for_event();
    }
}

/// A strict domid node value or argument: an ordinary domain's id, not Domain-0's.
fn domid(raw: &[u8]) -> Option<u16> {
    parse_decimal(raw)
        .filter(|d| (1..=MAX_DOMID).contains(d))
        .and_then(|d| u16::try_from(d).ok())
}

/// This domain's id, from its home's `domid` node.
fn own_domid() -> Result<u16, Failure> {
    let mut buf = [0u8; 16];
    let n = store_read("domid", &mut buf).map_err(|e| Failure::Store("reading domid", e))?;
    domid(&buf[..n]).ok_or(Failure::Other("the domid node is not a domain id"))
}

/// Calls `f` until it returns a value, every [`POLL_NS`] (blocked on the timer), for at
/// most [`RENDEZVOUS_NS`].
fn poll<T>(what: &'static str, mut f: impl FnMut() -> Option<T>) -> Result<T, Failure> {
    let deadline = time::now_ns().saturating_add(RENDEZVOUS_NS);
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if time::now_ns() >= deadline {
            return Err(Failure::Other(what));
        }
        time::sleep_ns(POLL_NS);
    }
}

/// `<letter><domid>`: a xenstore permission entry.
fn perm(letter: char, dom: u16) -> Result<Text<8>, Failure> {
    text(format_args!("{letter}{dom}")).ok_or(Failure::Other("permission entry too long"))
}

/// A path in domain `dom`'s home.
fn remote(dom: u16, node: &str) -> Result<Text<64>, Failure> {
    text(format_args!("/local/domain/{dom}/{node}")).ok_or(Failure::Other("path too long"))
}

fn server() -> Result<(), Failure> {
    let me = own_domid()?;
    store_write(CLIENT_NODE, b"")
        .map_err(|e| Failure::Store("creating data/pingpong/client", e))?;
    store_set_perms(CLIENT_NODE, &[perm('w', me)?.as_str()])
        .map_err(|e| Failure::Store("opening data/pingpong/client", e))?;
    println!(
        "bench pingpong: server domain {me}: waiting for a client to write its domid to {CLIENT_NODE}"
    );
    let client = poll("no client wrote its domid within 60 s", || {
        let mut buf = [0u8; 16];
        store_read(CLIENT_NODE, &mut buf)
            .ok()
            .and_then(|n| domid(&buf[..n]))
            .filter(|&d| d != me)
    })?;
    let port = evtchn_alloc_unbound(DomId(client))
        .map_err(|e| Failure::Hypercall("EVTCHNOP_alloc_unbound", e))?;
    let value: Text<16> = text(format_args!("{port}")).ok_or(Failure::Other("port too long"))?;
    store_write(PORT_NODE, value.as_str().as_bytes())
        .map_err(|e| Failure::Store("writing data/pingpong/port", e))?;
    store_set_perms(PORT_NODE, &[perm('r', me)?.as_str()])
        .map_err(|e| Failure::Store("publishing data/pingpong/port", e))?;
    println!(
        "bench pingpong: server: port {port} offered to domain {client}; answering every event \
         on it, blocked between events"
    );
    loop {
        if events::take_signalled(port) {
            let _ = evtchn_send(port);
        } else {
            events::wait_for_event();
        }
    }
}

/// Waits (blocked) for an event on `port`.
fn wait_for(port: u32) {
    while !events::take_signalled(port) {
        events::wait_for_event();
    }
}

/// Waits for an event on `port` for at most `ns`; whether it came.
fn wait_for_within(port: u32, ns: u64) -> bool {
    let deadline = time::now_ns().saturating_add(ns);
    loop {
        if events::take_signalled(port) {
            // Cancel the timer, so it does not wake a timed round trip later.
            let _ = set_timer_op(0);
            return true;
        }
        if time::now_ns() >= deadline {
            return false;
        }
        if time::wait_event_until(deadline).is_none() {
            // No timer events: spin on whatever the upcall records.
            core::hint::spin_loop();
        }
    }
}

/// One round trip: send on `port`, wait for the answer; TSC cycles.
fn round_trip(port: u32) -> u64 {
    let start = rdtsc_fenced();
    let _ = evtchn_send(port);
    wait_for(port);
    rdtsc_fenced().wrapping_sub(start)
}

fn client(peer: u16) -> Result<(), Failure> {
    let me = own_domid()?;
    if me == peer {
        return Err(Failure::Usage("peer= names this domain"));
    }
    let client_node = remote(peer, CLIENT_NODE)?;
    let port_node = remote(peer, PORT_NODE)?;
    let mine: Text<8> = text(format_args!("{me}")).ok_or(Failure::Other("domid too long"))?;
    poll(
        "the server's data/pingpong/client did not become writable within 60 s",
        || store_write(client_node.as_str(), mine.as_str().as_bytes()).ok(),
    )?;
    let remote_port = poll("the server published no port within 60 s", || {
        let mut buf = [0u8; 16];
        store_read(port_node.as_str(), &mut buf)
            .ok()
            .and_then(|n| parse_decimal(&buf[..n]))
            .and_then(|p| u32::try_from(p).ok())
            .filter(|&p| p != 0)
    })?;
    let port = evtchn_bind_interdomain(DomId(peer), remote_port)
        .map_err(|e| Failure::Hypercall("EVTCHNOP_bind_interdomain", e))?;
    // The new port starts pending: take that event, so it is not mistaken for an answer.
    if !wait_for_within(port, RENDEZVOUS_NS) {
        return Err(Failure::Other("the bound port did not start pending"));
    }
    println!(
        "bench pingpong: client domain {me}: port {port} bound to port {remote_port} of \
         domain {peer}; blocked between events on both sides"
    );
    // The first round trip. An event the server's store or console waits take is kept
    // for it (guest_rt::events::take_signalled), so one send is enough.
    let _ = evtchn_send(port);
    if !wait_for_within(port, RENDEZVOUS_NS) {
        return Err(Failure::Other("the server did not answer within 60 s"));
    }
    for _ in 0..WARMUP {
        round_trip(port);
        crate::null_hypercall();
    }
    let hypercall = || {
        core::hint::black_box(crate::null_hypercall());
    };
    let mut samples = [0u64; BATCHES * ROUND_TRIPS];
    let mut hypercall_cycles = [0u64; BATCHES];
    for (batch, (rts, h)) in samples
        .chunks_exact_mut(ROUND_TRIPS)
        .zip(hypercall_cycles.iter_mut())
        .enumerate()
    {
        if batch % 2 == 1 {
            *h = crate::time_batch(hypercall);
        }
        for rt in rts.iter_mut() {
            *rt = round_trip(port);
        }
        if batch % 2 == 0 {
            *h = crate::time_batch(hypercall);
        }
    }
    let count = samples.len();
    let pp = median(&mut samples).unwrap_or(0);
    let h = median(&mut hypercall_cycles).unwrap_or(0);
    println!(
        "bench pingpong: {BATCHES} batches of {ROUND_TRIPS} round trips (each timed) \
         alternating with {BATCHES} batches of {} null hypercalls (batch averages)",
        crate::ITERATIONS
    );
    println!("bench evtchn_pingpong {pp} cycles");
    println!("bench hypercall_null {h} cycles");
    println!("bench pingpong_round_trips {count} count");
    println!("bench pingpong: done (blocked between events)");
    Ok(())
}
