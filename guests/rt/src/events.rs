//! Event channels: the upcall handler's 2-level scan, the set of ports it found, and (on
//! bare metal) setting everything up and waiting for events.
//!
//! ## How it works
//!
//! [`init`] places the runtime's static, page-aligned [`SharedInfo`] page with
//! `XENMEM_add_to_physmap` (its guest-physical address is its address: the runtime
//! identity-maps 0..4 GiB), installs the IDT gate of [`CALLBACK_VECTOR`], points
//! `HVM_PARAM_CALLBACK_IRQ` at it, binds `VIRQ_TIMER` (for [`crate::time`]) and only then
//! sets `RFLAGS.IF`. From then on the guest runs with interrupts enabled.
//!
//! The upcall handler runs [`scan_upcall`]: clear `evtchn_upcall_pending`, swap
//! `evtchn_pending_sel` with 0, and for each selected word take `pending & !mask`, clear
//! those pending bits and record them in a [`PortSet`]. It allocates nothing, takes no
//! lock and prints nothing. Main code takes the recorded ports with [`wait_for_event`] or
//! [`take_pending`] and re-checks whatever it waits for (ring indices, the time): a port
//! bit is a hint that something may have changed, never data.
//!
//! A batch of ports goes to whoever waited, but a port's event is never lost to code that
//! waits for something else (a store reply, the console): every port a wait or a take
//! returns is also kept in a second set until [`take_signalled`] claims it. Code that
//! waits for one port therefore loops on `take_signalled(port)` and waits for events in
//! between, and sees the event whichever wait took it.
//!
//! [`wait_for_event`] has no lost-wakeup window: with `IF` clear it checks the recorded
//! ports, then calls `SCHEDOP_block`, which returns at once if `evtchn_upcall_pending` is
//! already set, then sets `IF` so that the upcall for whatever woke it runs before it
//! returns.
//!
//! Events are opt-in: guests that never call [`init`] (or [`crate::console::init_pv`])
//! keep interrupts disabled for their whole life, as before.

use core::sync::atomic::{AtomicU64, Ordering};

use crate::shared_info::{EVTCHN_WORDS, SharedInfo};

/// The IDT vector of the event-channel upcall (`HVM_PARAM_CALLBACK_IRQ`).
pub const CALLBACK_VECTOR: u8 = 0xF0;

/// Number of ports a [`PortSet`] can hold (every port of the 2-level ABI).
pub const PORTS: u32 = (EVTCHN_WORDS * 64) as u32;

/// A set of ports that the upcall handler found pending, shared between the handler
/// (which adds) and main code (which takes).
///
/// ORDERING: one vCPU; the handler interrupts main code like a signal handler. Each word is
/// updated with single atomic read-modify-writes (`fetch_or` by the handler, `swap` by the
/// taker), so no port is lost or taken twice whichever interrupts whichever. SeqCst keeps
/// it simple; nothing here is hot.
#[derive(Debug)]
pub struct PortSet {
    words: [AtomicU64; EVTCHN_WORDS],
}

impl PortSet {
    /// An empty set.
    pub const fn new() -> Self {
        Self {
            words: [const { AtomicU64::new(0) }; EVTCHN_WORDS],
        }
    }

    /// Adds the ports of `bits` in word `word` (ports `64 * word ..`).
    pub fn add_word(&self, word: usize, bits: u64) {
        if let Some(w) = self.words.get(word) {
            w.fetch_or(bits, Ordering::SeqCst);
        }
    }

    /// Adds `port` (ignored if out of range).
    pub fn add(&self, port: u32) {
        self.add_word((port / 64) as usize, 1 << (port % 64));
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.words.iter().all(|w| w.load(Ordering::SeqCst) == 0)
    }

    /// Removes `port`; returns whether it was in the set.
    pub fn take(&self, port: u32) -> bool {
        let bit = 1u64 << (port % 64);
        self.words
            .get((port / 64) as usize)
            .is_some_and(|w| w.fetch_and(!bit, Ordering::SeqCst) & bit != 0)
    }

    /// Adds every port of `ports`.
    pub fn add_all(&self, ports: &Ports) {
        for (i, &bits) in ports.words.iter().enumerate() {
            if bits != 0 {
                self.add_word(i, bits);
            }
        }
    }

    /// Empties the set and returns what it held.
    pub fn take_all(&self) -> Ports {
        let mut out = Ports::EMPTY;
        for (o, w) in out.words.iter_mut().zip(&self.words) {
            *o = w.swap(0, Ordering::SeqCst);
        }
        out
    }
}

impl Default for PortSet {
    fn default() -> Self {
        Self::new()
    }
}

/// A snapshot of ports, as taken from a [`PortSet`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ports {
    words: [u64; EVTCHN_WORDS],
}

impl Ports {
    /// No ports.
    pub const EMPTY: Ports = Ports {
        words: [0; EVTCHN_WORDS],
    };

    /// Whether `port` is in the snapshot.
    pub fn contains(&self, port: u32) -> bool {
        self.words
            .get((port / 64) as usize)
            .is_some_and(|w| w & (1 << (port % 64)) != 0)
    }

    /// Whether the snapshot is empty.
    pub fn is_empty(&self) -> bool {
        self.words.iter().all(|&w| w == 0)
    }

    /// The ports, in increasing order.
    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.words.iter().enumerate().flat_map(|(i, &w)| {
            let base = (i * 64) as u32;
            (0..64u32)
                .filter(move |b| w & (1 << b) != 0)
                .map(move |b| base + b)
        })
    }
}

/// The upcall handler's work for vCPU 0: the 2-level scan.
///
/// Clears `evtchn_upcall_pending` first (an event sent after this raises the upcall
/// again), swaps `evtchn_pending_sel` with 0, then for each selected word repeatedly takes
/// `pending & !mask` (re-reading both), clears exactly those pending bits and records them
/// in `found`. Masked ports stay pending, unrecorded. Returns how many words were scanned.
pub fn scan_upcall(si: &SharedInfo, found: &PortSet) -> u32 {
    let vcpu = &si.vcpu_info[0];
    // ORDERING: SeqCst throughout, mirroring the microvisor's atomic bit operations in
    // the ABI's delivery order; clearing upcall_pending before reading the selector means
    // a delivery racing this scan either is seen by it or raises the upcall again.
    vcpu.upcall_pending.store(0, Ordering::SeqCst);
    let mut sel = vcpu.pending_sel.swap(0, Ordering::SeqCst);
    let mut scanned = 0;
    while sel != 0 {
        let w = sel.trailing_zeros() as usize;
        sel &= sel - 1;
        scanned += 1;
        let (Some(pending), Some(mask)) = (si.evtchn_pending.get(w), si.evtchn_mask.get(w)) else {
            continue;
        };
        loop {
            let bits = pending.load(Ordering::SeqCst) & !mask.load(Ordering::SeqCst);
            if bits == 0 {
                break;
            }
            pending.fetch_and(!bits, Ordering::SeqCst);
            found.add_word(w, bits);
        }
    }
    scanned
}

#[cfg(target_os = "none")]
pub use bare::{
    init, initialised, shared_info, take_pending, take_signalled, timer_port, upcall,
    wait_for_event,
};

#[cfg(target_os = "none")]
mod bare {
    use core::sync::atomic::{AtomicBool, AtomicU32, Ordering};

    use shared_abi::Errno;
    use shared_abi::event_channel::VIRQ_TIMER;
    use shared_abi::guest::{
        add_to_physmap_shared_info, evtchn_bind_virq, hvm_set_param, sched_block,
    };
    use shared_abi::hvm::{HVM_PARAM_CALLBACK_IRQ, callback_vector};

    use super::{CALLBACK_VECTOR, PortSet, Ports, scan_upcall};
    use crate::arch::{cpu, idt};
    use crate::shared_info::SharedInfo;

    /// The domain's `shared_info` page, once placed. Page-aligned by its type, in `.bss`
    /// (guest RAM) of the image.
    static SHARED_INFO: SharedInfo = SharedInfo::new();
    /// Ports found pending by the upcall handler and not yet taken.
    static PENDING: PortSet = PortSet::new();
    /// Ports taken from `PENDING` (by any wait or take) and not yet claimed by
    /// [`take_signalled`].
    static SIGNALLED: PortSet = PortSet::new();

    // ORDERING for the flags below: one vCPU; they are written by `init` before `sti`
    // and only read afterwards. Relaxed suffices (the `sti` and every hypercall are
    // compiler barriers too, being `asm!` without `nomem`).
    /// `SHARED_INFO` has been placed: its pvclock data is live.
    static PLACED: AtomicBool = AtomicBool::new(false);
    /// The upcall is wired up and interrupts are enabled.
    static READY: AtomicBool = AtomicBool::new(false);
    /// The port bound to `VIRQ_TIMER`, or 0.
    static TIMER_PORT: AtomicU32 = AtomicU32::new(0);

    /// Sets up event delivery (see the [module docs](super)) and enables interrupts.
    /// Idempotent: once it has succeeded, later calls return `Ok` at once.
    ///
    /// # Errors
    /// `ENOSYS` without a hypervisor; otherwise the first failing hypercall's error
    /// (interrupts then stay disabled). A failure to bind `VIRQ_TIMER` is not an error:
    /// [`timer_port`] then stays `None` and [`crate::time`] sleeps by spinning.
    pub fn init() -> Result<(), Errno> {
        if READY.load(Ordering::Relaxed) {
            return Ok(());
        }
        if !crate::rt::hypervisor_present() {
            return Err(Errno::ENOSYS);
        }
        if !PLACED.load(Ordering::Relaxed) {
            let gpfn = shared_info_paddr() >> 12;
            add_to_physmap_shared_info(gpfn)?;
            PLACED.store(true, Ordering::Relaxed);
        }
        idt::install_callback_gate(CALLBACK_VECTOR);
        hvm_set_param(HVM_PARAM_CALLBACK_IRQ, callback_vector(CALLBACK_VECTOR))?;
        if let Ok(port) = evtchn_bind_virq(VIRQ_TIMER, 0) {
            TIMER_PORT.store(port, Ordering::Relaxed);
        }
        READY.store(true, Ordering::Relaxed);
        cpu::enable_interrupts();
        Ok(())
    }

    fn shared_info_paddr() -> u64 {
        core::ptr::from_ref(&SHARED_INFO).addr() as u64
    }

    /// Whether [`init`] has succeeded (events are delivered, interrupts are on).
    pub fn initialised() -> bool {
        READY.load(Ordering::Relaxed)
    }

    /// The `shared_info` page, once placed (for its pvclock data).
    pub fn shared_info() -> Option<&'static SharedInfo> {
        PLACED.load(Ordering::Relaxed).then_some(&SHARED_INFO)
    }

    /// The port bound to `VIRQ_TIMER`, if [`init`] bound one.
    pub fn timer_port() -> Option<u32> {
        match TIMER_PORT.load(Ordering::Relaxed) {
            0 => None,
            port => Some(port),
        }
    }

    /// The upcall handler proper; called from the IDT stub of [`CALLBACK_VECTOR`] with
    /// interrupts disabled.
    #[doc(hidden)]
    pub fn upcall() {
        scan_upcall(&SHARED_INFO, &PENDING);
    }

    /// Takes the ports recorded since the last take, without waiting.
    pub fn take_pending() -> Ports {
        take_recorded()
    }

    /// Takes what the upcall handler recorded, keeping a copy for [`take_signalled`].
    fn take_recorded() -> Ports {
        let ports = PENDING.take_all();
        SIGNALLED.add_all(&ports);
        ports
    }

    /// Whether `port` fired since the last `take_signalled(port)`, whichever wait or take
    /// saw it; claims the event. Does not wait.
    pub fn take_signalled(port: u32) -> bool {
        // Both takes run: a port in both sets is claimed once, and no other port moves.
        let recorded = PENDING.take(port);
        SIGNALLED.take(port) | recorded
    }

    /// Waits until the upcall handler has recorded at least one port, then takes and
    /// returns the recorded ports (returns at once if some already are).
    ///
    /// Callers re-check what they wait for after it returns: wakeups may be spurious
    /// (a port they do not care about, a stale timer). Before [`init`] it returns
    /// [`Ports::EMPTY`] at once.
    pub fn wait_for_event() -> Ports {
        if !initialised() {
            return Ports::EMPTY;
        }
        let ports = wait_once();
        crate::control::on_events(&ports);
        ports
    }

    fn wait_once() -> Ports {
        loop {
            cpu::disable_interrupts();
            if !PENDING.is_empty() {
                cpu::enable_interrupts();
                return take_recorded();
            }
            // With IF clear the handler cannot run, so nothing was recorded since the
            // check; an event sent since then has set evtchn_upcall_pending, which makes
            // SCHEDOP_block return at once. Either way the upcall runs right after `sti`.
            if sched_block().is_err() {
                // No SCHEDOP_block: halt with the same guarantee (`sti` shadows `hlt`).
                cpu::enable_interrupts_and_halt();
            } else {
                cpu::enable_interrupts();
            }
            let ports = take_recorded();
            if !ports.is_empty() {
                return ports;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::boxed::Box;
    use std::vec::Vec;

    #[test]
    fn port_set_adds_and_takes() {
        let s = PortSet::new();
        assert!(s.is_empty());
        s.add(1);
        s.add(64);
        s.add(4095);
        s.add(4096); // out of range: ignored
        assert!(!s.is_empty());
        assert!(s.take(64));
        assert!(!s.take(64));
        assert!(!s.take(100_000));
        let p = s.take_all();
        assert!(s.is_empty());
        assert!(p.contains(1) && p.contains(4095) && !p.contains(64) && !p.contains(9999));
        assert_eq!(p.iter().collect::<Vec<_>>(), [1, 4095]);
        assert!(Ports::EMPTY.is_empty());
        assert!(!p.is_empty());
    }

    #[test]
    fn add_all_keeps_what_another_set_handed_out() {
        let batch = PortSet::new();
        batch.add(3);
        batch.add(200);
        let kept = PortSet::new();
        kept.add(7);
        kept.add_all(&batch.take_all());
        assert!(batch.is_empty());
        assert!(kept.take(200) && kept.take(3) && kept.take(7));
        assert!(kept.is_empty());
        kept.add_all(&Ports::EMPTY);
        assert!(kept.is_empty());
    }

    #[test]
    fn scan_records_and_clears_unmasked_pending_ports() {
        let si = Box::new(SharedInfo::new());
        let found = PortSet::new();
        for port in [1, 2, 70, 1023] {
            si.deliver(port);
        }
        // A masked port: pending stays set and is not recorded.
        si.evtchn_mask[2].store(1 << 1, Ordering::SeqCst);
        si.deliver(129);
        assert_eq!(si.vcpu_info[0].upcall_pending.load(Ordering::SeqCst), 1);

        assert_eq!(scan_upcall(&si, &found), 3, "words 0, 1 and 15");
        let v = &si.vcpu_info[0];
        assert_eq!(v.upcall_pending.load(Ordering::SeqCst), 0);
        assert_eq!(v.pending_sel.load(Ordering::SeqCst), 0);
        assert_eq!(
            found.take_all().iter().collect::<Vec<_>>(),
            [1, 2, 70, 1023]
        );
        assert_eq!(si.evtchn_pending[0].load(Ordering::SeqCst), 0);
        assert_eq!(
            si.evtchn_pending[2].load(Ordering::SeqCst),
            1 << 1,
            "masked"
        );

        // After the scan, a new delivery raises the upcall again.
        assert!(si.deliver(2));
        assert_eq!(scan_upcall(&si, &found), 1);
        assert_eq!(found.take_all().iter().collect::<Vec<_>>(), [2]);
    }

    #[test]
    fn spurious_upcall_finds_nothing() {
        let si = Box::new(SharedInfo::new());
        let found = PortSet::new();
        si.vcpu_info[0].upcall_pending.store(1, Ordering::SeqCst);
        si.vcpu_info[0].pending_sel.store(1 << 63, Ordering::SeqCst);
        assert_eq!(scan_upcall(&si, &found), 1);
        assert!(found.is_empty());
    }

    #[test]
    fn concurrent_deliveries_are_never_lost() {
        // A "microvisor" thread sends ports while this thread plays the upcall handler
        // whenever upcall_pending is set. Every port sent is found exactly when it was not
        // already pending (the ABI coalesces repeated sends of a pending port).
        let si = std::sync::Arc::new(SharedInfo::new());
        let found = std::sync::Arc::new(PortSet::new());
        let sender = {
            let si = std::sync::Arc::clone(&si);
            std::thread::spawn(move || {
                for round in 0..2000u32 {
                    si.deliver(1 + round % 200);
                }
            })
        };
        let mut seen = [false; 256];
        let mut drain = || {
            if si.vcpu_info[0].upcall_pending.load(Ordering::SeqCst) != 0 {
                scan_upcall(&si, &found);
            }
            for p in found.take_all().iter() {
                seen[p as usize] = true;
            }
        };
        while !sender.is_finished() {
            drain();
        }
        sender.join().unwrap();
        drain();
        assert!(seen[1..=200].iter().all(|&s| s), "every port was found");
        for w in &si.evtchn_pending {
            assert_eq!(w.load(Ordering::SeqCst), 0, "nothing left pending");
        }
    }
}
