//! The machine side of event channels: the per-domain event tables, `shared_info` pages
//! reached through their machine addresses, waking and kicking vCPUs, system time and the
//! vCPUs' single-shot timers.
//!
//! A child of `hv`: it shares the scheduler state (`SCHED`, `RUNQ`, `DOMAIN_PCPU`,
//! `LAST_SLOT`) there.

use super::super::MAX_CPUS;
use super::{
    DOMAIN_PCPU, DomainState, EVENT_EVTCHN, Effect, LAST_SLOT, MAX_DOMAINS, Mutex, Ordering, SCHED,
    cpu, domains, raise_dom0_event,
};
use crate::evtchn::{DomainEvents, Hub, Notify, Platform, SharedMem};
use crate::lifecycle::Wake;
use core::sync::atomic::{AtomicU8, AtomicU64};
use shared_abi::event_channel::VIRQ_TIMER;
use shared_abi::shared_info::{PVCLOCK_TSC_STABLE_BIT, PvclockScale, VcpuTimeInfo};

/// Each domain's event channels, parameters and `shared_info` location, by domid (0 is
/// Dom0). Never held across a guest run; lock order: `SCHED`, then `EVENTS` (a vCPU
/// checks for a pending upcall under its `SCHED` lock); notifications are sent with no
/// `EVENTS` lock held.
static EVENTS: [Mutex<DomainEvents>; MAX_DOMAINS + 1] =
    [const { Mutex::new(DomainEvents::EMPTY) }; MAX_DOMAINS + 1];
/// Counts the events that reached each domain (a poll ends when it changes).
pub(super) static EVENT_SEQ: [AtomicU64; MAX_DOMAINS + 1] =
    [const { AtomicU64::new(0) }; MAX_DOMAINS + 1];
/// Each DomU vCPU's single-shot timer: the TSC value at which it fires (0: none). Fired
/// only by the domain's own pCPU.
static TIMER_TSC: [AtomicU64; MAX_DOMAINS + 1] = [const { AtomicU64::new(0) }; MAX_DOMAINS + 1];
/// The timeout of a DomU vCPU's poll, as TSC (0: none).
pub(super) static POLL_TSC: [AtomicU64; MAX_DOMAINS + 1] =
    [const { AtomicU64::new(0) }; MAX_DOMAINS + 1];
/// For each pCPU, no later than the earliest timer of the vCPUs it owns (TSC; `u64::MAX`
/// for none), so most exits skip the scan. Timers are only set on their owner pCPU; a
/// cancelled one leaves the hint early, which costs one scan.
static PCPU_NEXT: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(u64::MAX) }; MAX_CPUS];
/// When each blocked or paused DomU vCPU was last made runnable (system-time ns; 0: not
/// since it last ran), for its runstate: the waker stamps it, the vCPU's pCPU takes it
/// when it schedules the vCPU in.
static WOKEN_NS: [AtomicU64; MAX_DOMAINS + 1] = [const { AtomicU64::new(0) }; MAX_DOMAINS + 1];
/// The pvclock scale: `mul | shift << 32`, set once the TSC is calibrated.
static PVCLOCK: AtomicU64 = AtomicU64::new(0);

/// `shared_info` pages through the identity map.
#[derive(Debug)]
pub(super) struct PhysShared;

fn word(pa: u64) -> &'static AtomicU64 {
    debug_assert!(pa.is_multiple_of(8));
    // SAFETY: the hub passes only addresses inside the `shared_info` page of a live domain,
    // 8-byte aligned, under that domain's `EVENTS` lock: a frame of guest RAM or a
    // microvisor frame, identity-mapped below 4 GiB, which stays allocated until the
    // domain's teardown has forgotten it (under the same lock). The guest writes the page
    // concurrently, which is why every access is atomic.
    unsafe { &*(pa as *const AtomicU64) }
}

fn byte(pa: u64) -> &'static AtomicU8 {
    // SAFETY: as for `word` (a byte needs no alignment).
    unsafe { &*(pa as *const AtomicU8) }
}

impl SharedMem for PhysShared {
    fn fetch_or(&self, pa: u64, mask: u64) -> u64 {
        word(pa).fetch_or(mask, Ordering::SeqCst)
    }
    fn fetch_and(&self, pa: u64, mask: u64) -> u64 {
        word(pa).fetch_and(mask, Ordering::SeqCst)
    }
    fn load(&self, pa: u64) -> u64 {
        word(pa).load(Ordering::SeqCst)
    }
    fn store(&self, pa: u64, v: u64) {
        word(pa).store(v, Ordering::SeqCst);
    }
    fn load_u8(&self, pa: u64) -> u8 {
        byte(pa).load(Ordering::SeqCst)
    }
    fn store_u8(&self, pa: u64, v: u8) {
        byte(pa).store(v, Ordering::SeqCst);
    }
}

/// The hub's view of the machine.
#[derive(Debug)]
pub(super) struct HvPlatform;

static PLATFORM: HvPlatform = HvPlatform;
static SHARED: PhysShared = PhysShared;

impl Platform for HvPlatform {
    type Mem = PhysShared;

    fn shared(&self) -> &PhysShared {
        &SHARED
    }

    fn notify(&self, what: Notify) {
        match what {
            Notify::Dom0 => raise_dom0_event(EVENT_EVTCHN),
            Notify::Upcall(domid) => wake(domid, Wake::Upcall),
            Notify::Pending(domid) => wake(domid, Wake::Event),
        }
    }
}

/// The event-channel hub over every domain.
pub(super) fn hub() -> Hub<'static, HvPlatform> {
    Hub::new(&EVENTS, &PLATFORM)
}

/// An event for DomU `domid`: counts it, then wakes the vCPU if what it waits for came
/// (back on its pCPU's queue, that pCPU interrupted), or interrupts the pCPU running it so
/// that a new upcall is injected at once.
pub(super) fn wake(domid: u16, why: Wake) {
    let id = usize::from(domid);
    if id == 0 || id > MAX_DOMAINS {
        return;
    }
    // Visible before the lock: a vCPU about to block sees it under the lock, or is
    // blocked already and found below.
    EVENT_SEQ[id].fetch_add(1, Ordering::SeqCst);
    let effect = {
        let mut sched = SCHED[id].lock();
        let effect = sched.wake(why);
        if effect == Effect::Requeue {
            domains::set_run_state(domid, DomainState::Running);
            note_runnable(domid);
        }
        effect
    };
    let pcpu = DOMAIN_PCPU[id].load(Ordering::Relaxed);
    match effect {
        Effect::Requeue => domains::requeue(id, pcpu),
        // Only if it is in its run loop there: a vCPU that enters it later computes its
        // upcall before its first VMRUN (LAST_SLOT is written with a full barrier first).
        Effect::Kick
            if LAST_SLOT[pcpu].load(Ordering::SeqCst) == (id - 1) as u32
                && pcpu != super::super::cpu_index() =>
        {
            domains::kick(pcpu)
        }
        _ => {}
    }
}

/// DomU `domid`'s vCPU was made runnable now (woken or unpaused; called under its
/// `SCHED` lock as it goes back on a run queue).
pub(super) fn note_runnable(domid: u16) {
    if let Some(w) = WOKEN_NS.get(usize::from(domid)) {
        w.store(now_ns().max(1), Ordering::SeqCst);
    }
}

/// When DomU `domid`'s vCPU was made runnable since it last ran, if it was (clears it).
pub(super) fn take_runnable_since(domid: u16) -> Option<u64> {
    let w = WOKEN_NS.get(usize::from(domid))?;
    Some(w.swap(0, Ordering::SeqCst)).filter(|&t| t != 0)
}

/// Records the pvclock scale for a TSC of `tsc_khz` (once, at boot).
pub(super) fn init_clock(tsc_khz: u64) {
    let s = PvclockScale::for_khz(tsc_khz);
    PVCLOCK.store(
        u64::from(s.mul) | (u64::from(s.shift as u8) << 32),
        Ordering::Relaxed,
    );
}

fn scale() -> PvclockScale {
    let v = PVCLOCK.load(Ordering::Relaxed);
    PvclockScale {
        mul: v as u32,
        shift: (v >> 32) as u8 as i8,
    }
}

fn boot_tsc() -> u64 {
    super::BOOT_TSC.load(Ordering::Relaxed)
}

/// System time: nanoseconds since the microvisor booted, by the pvclock formula.
pub(super) fn now_ns() -> u64 {
    scale().ticks_to_ns(cpu::rdtsc().wrapping_sub(boot_tsc()))
}

/// The pvclock record of every `vcpu_info`. It never changes: its base is the boot TSC,
/// so every reader, and the microvisor's own deadlines, compute exactly the same system
/// time from a TSC value.
pub(super) fn time_info() -> VcpuTimeInfo {
    let s = scale();
    VcpuTimeInfo {
        tsc_timestamp: boot_tsc(),
        system_time: 0,
        tsc_to_system_mul: s.mul,
        tsc_shift: s.shift,
        flags: PVCLOCK_TSC_STABLE_BIT,
        ..VcpuTimeInfo::default()
    }
}

/// The TSC value at which system time reaches `ns` (never early; at least 1).
pub(super) fn ns_to_tsc(ns: u64) -> u64 {
    boot_tsc().saturating_add(scale().ns_to_ticks(ns)).max(1)
}

/// Sets or cancels DomU `domid`'s single-shot timer (on the vCPU's own pCPU).
pub(super) fn set_timer(domid: u16, deadline_ns: Option<u64>) {
    if let Some(t) = TIMER_TSC.get(usize::from(domid)).filter(|_| domid != 0) {
        let tsc = deadline_ns.map_or(0, ns_to_tsc);
        t.store(tsc, Ordering::SeqCst);
        if tsc != 0 {
            note_deadline(domid, tsc);
        }
    }
}

/// Sets DomU `domid`'s poll timeout (on the vCPU's own pCPU).
pub(super) fn set_poll_timeout(domid: u16, deadline_ns: u64) {
    let tsc = ns_to_tsc(deadline_ns);
    POLL_TSC[usize::from(domid)].store(tsc, Ordering::SeqCst);
    note_deadline(domid, tsc);
}

fn note_deadline(domid: u16, tsc: u64) {
    let pcpu = DOMAIN_PCPU[usize::from(domid)].load(Ordering::Relaxed);
    if let Some(next) = PCPU_NEXT.get(pcpu) {
        next.fetch_min(tsc, Ordering::SeqCst);
    }
}

/// Forgets DomU `domid`'s timers (at its creation and its end).
pub(super) fn cancel_timers(domid: u16) {
    let id = usize::from(domid);
    TIMER_TSC[id].store(0, Ordering::SeqCst);
    POLL_TSC[id].store(0, Ordering::SeqCst);
}

/// Fires the expired timers of the vCPUs pCPU `me` owns (running, queued or blocked):
/// `VIRQ_TIMER` for a single-shot timer, a wake-up for a poll's timeout. Returns the
/// earliest deadline still pending (TSC).
pub(super) fn expire_timers(me: usize) -> Option<u64> {
    let now = cpu::rdtsc();
    let hint = PCPU_NEXT.get(me)?;
    let next = hint.load(Ordering::SeqCst);
    if now < next {
        return (next != u64::MAX).then_some(next);
    }
    let mut earliest: Option<u64> = None;
    for id in 1..=MAX_DOMAINS {
        if DOMAIN_PCPU[id].load(Ordering::Relaxed) != me {
            continue;
        }
        for (timer, is_poll) in [(&TIMER_TSC[id], false), (&POLL_TSC[id], true)] {
            let t = timer.load(Ordering::SeqCst);
            if t == 0 {
                continue;
            }
            if t > now {
                earliest = Some(earliest.map_or(t, |e| e.min(t)));
                continue;
            }
            if timer
                .compare_exchange(t, 0, Ordering::SeqCst, Ordering::SeqCst)
                .is_err()
            {
                continue;
            }
            if is_poll {
                wake(id as u16, Wake::PollTimeout);
            } else {
                hub().fire_virq(id as u16, VIRQ_TIMER);
            }
        }
    }
    hint.store(earliest.unwrap_or(u64::MAX), Ordering::SeqCst);
    earliest
}
