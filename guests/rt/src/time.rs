//! Guest time and sleeping.
//!
//! [`now_ns`] is the microvisor's system time from the pvclock record in `vcpu_info[0]`
//! of the `shared_info` page, once [`crate::events::init`] has placed it (and the
//! microvisor has published a record). Before that, or without a hypervisor, it falls
//! back to the TSC scaled by the frequency in CPUID leaf `base + 3` (1 GHz if unknown),
//! counted from the TSC's zero: good for intervals, not comparable with system time.
//!
//! [`sleep_until`] arms the single-shot timer (`set_timer_op`), whose `VIRQ_TIMER` event
//! wakes [`crate::events::wait_for_event`], and blocks between events. Without events (or
//! without a pvclock) it spins on [`now_ns`] instead.

/// TSC frequency assumed when the hypervisor does not report one.
pub const FALLBACK_TSC_KHZ: u64 = 1_000_000;

/// Nanoseconds per second.
pub const NS_PER_SEC: u64 = 1_000_000_000;

/// `now + delta`, saturating (a deadline that far away never passes).
pub const fn deadline_after(now: u64, delta_ns: u64) -> u64 {
    now.saturating_add(delta_ns)
}

#[cfg(target_os = "none")]
pub use bare::{Clock, clock, now_ns, sleep_ns, sleep_until, tsc_khz, wait_event_until};

#[cfg(target_os = "none")]
mod bare {
    use shared_abi::guest::set_timer_op;
    use shared_abi::shared_info::PvclockScale;

    use super::{FALLBACK_TSC_KHZ, deadline_after};
    use crate::arch::cpu::{cpuid, rdtsc_fenced};
    use crate::events::{self, Ports};

    /// Which clock [`now_ns`] reads.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Clock {
        /// The pvclock of the placed `shared_info` page: system time, which timer
        /// deadlines use.
        Pvclock,
        /// The TSC at the CPUID-reported frequency (no timer deadlines).
        Tsc,
    }

    /// The clock [`now_ns`] currently reads.
    pub fn clock() -> Clock {
        match events::shared_info() {
            Some(si) if si.vcpu_info[0].time.tsc_to_system_mul.load(relaxed()) != 0 => {
                Clock::Pvclock
            }
            _ => Clock::Tsc,
        }
    }

    fn relaxed() -> core::sync::atomic::Ordering {
        // ORDERING: only a "has a record been published" probe; `TimeInfo::read` does the
        // ordered, versioned read.
        core::sync::atomic::Ordering::Relaxed
    }

    /// The TSC frequency in kHz reported by the hypervisor (CPUID `base + 3`, ECX), or
    /// [`FALLBACK_TSC_KHZ`].
    pub fn tsc_khz() -> u64 {
        match crate::rt::xen_cpuid_base() {
            Some(base) => match u64::from(cpuid(base + 3, 0).ecx) {
                0 => FALLBACK_TSC_KHZ,
                khz => khz,
            },
            None => FALLBACK_TSC_KHZ,
        }
    }

    /// The current time in nanoseconds (see the [module docs](super)).
    pub fn now_ns() -> u64 {
        if let Some(si) = events::shared_info() {
            let (info, tsc) = si.vcpu_info[0].time.read(rdtsc_fenced);
            if info.tsc_to_system_mul != 0 {
                return info.ns_at(tsc);
            }
        }
        PvclockScale::for_khz(tsc_khz()).ticks_to_ns(rdtsc_fenced())
    }

    /// Whether deadlines can be slept on with the timer.
    fn timer_usable() -> bool {
        events::initialised() && events::timer_port().is_some() && clock() == Clock::Pvclock
    }

    /// Arms the timer for `deadline_ns` and waits for one batch of events (the timer's or
    /// any other), so the caller can re-check its condition. Returns the ports that
    /// fired, or `None` if it cannot block (no timer events: the caller must poll).
    pub fn wait_event_until(deadline_ns: u64) -> Option<Ports> {
        if !timer_usable() || set_timer_op(deadline_ns).is_err() {
            return None;
        }
        Some(events::wait_for_event())
    }

    /// Sleeps until [`now_ns`] reaches `deadline_ns`: blocked on the timer when events
    /// are set up, spinning otherwise. Other events wake it early; it goes back to sleep.
    pub fn sleep_until(deadline_ns: u64) {
        while now_ns() < deadline_ns {
            if wait_event_until(deadline_ns).is_none() {
                core::hint::spin_loop();
            }
        }
    }

    /// Sleeps for `ns` nanoseconds (see [`sleep_until`]).
    pub fn sleep_ns(ns: u64) {
        sleep_until(deadline_after(now_ns(), ns));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_saturate() {
        assert_eq!(deadline_after(5, NS_PER_SEC), 1_000_000_005);
        assert_eq!(deadline_after(u64::MAX - 1, 10), u64::MAX);
    }
}
