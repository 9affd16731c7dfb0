//! Fault probes: run code that is *expected* to raise a given exception, and get control
//! back instead of crashing.
//!
//! The runtime's exception handler consults [`FAULT_PROBE`] first: when the probe is armed
//! for the raised vector it records the fault, advances the saved RIP past the faulting
//! instruction by the length given when arming, disarms, and returns with IRETQ. Any other
//! exception is fatal as usual.
//!
//! Only one probe can be armed at a time, and the closure must fault at most once, on an
//! instruction of exactly `insn_len` bytes (write the instruction as explicit `.byte`s so
//! the length is evident).

use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering, compiler_fence};

/// A fault caught by a probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fault {
    /// The exception vector.
    pub vector: u8,
    /// The error code the CPU pushed (0 for vectors without one).
    pub error_code: u64,
    /// RIP of the faulting instruction.
    pub rip: u64,
}

/// The armed/caught state of one probe.
///
/// ORDERING: every access is on the one vCPU, between normal code and an exception handler
/// that interrupts it synchronously (like a signal handler). `SeqCst` atomics plus compiler
/// fences around the probed code are enough; no cross-CPU ordering is involved.
#[derive(Debug)]
pub struct FaultProbe {
    /// 0 when disarmed, else `ARMED | insn_len << 8 | vector`.
    armed: AtomicU32,
    caught: AtomicBool,
    error_code: AtomicU64,
    rip: AtomicU64,
}

const ARMED: u32 = 1 << 16;

impl FaultProbe {
    /// A disarmed probe.
    pub const fn new() -> Self {
        Self {
            armed: AtomicU32::new(0),
            caught: AtomicBool::new(false),
            error_code: AtomicU64::new(0),
            rip: AtomicU64::new(0),
        }
    }

    /// Runs `f` with the probe armed for `vector`; returns the fault if it was raised.
    ///
    /// # Panics
    ///
    /// If `insn_len` is not 1..=15 (no x86 instruction is longer) or the probe is already
    /// armed (probes do not nest).
    pub fn expect(&self, vector: u8, insn_len: u8, f: impl FnOnce()) -> Option<Fault> {
        assert!(
            (1..=15).contains(&insn_len),
            "bad instruction length {insn_len}"
        );
        self.caught.store(false, Ordering::SeqCst);
        let slot = ARMED | u32::from(insn_len) << 8 | u32::from(vector);
        let prev = self.armed.swap(slot, Ordering::SeqCst);
        assert_eq!(prev, 0, "fault probes do not nest");
        compiler_fence(Ordering::SeqCst);
        f();
        compiler_fence(Ordering::SeqCst);
        self.armed.store(0, Ordering::SeqCst);
        self.caught.swap(false, Ordering::SeqCst).then(|| Fault {
            vector,
            error_code: self.error_code.load(Ordering::SeqCst),
            rip: self.rip.load(Ordering::SeqCst),
        })
    }

    /// Called by the exception handler. If the probe is armed for `vector`, records the
    /// fault, disarms, and returns the instruction length to skip; otherwise `None`.
    pub fn on_exception(&self, vector: u8, error_code: u64, rip: u64) -> Option<u8> {
        let slot = self.armed.load(Ordering::SeqCst);
        if slot & ARMED == 0 || (slot & 0xff) != u32::from(vector) {
            return None;
        }
        if self
            .armed
            .compare_exchange(slot, 0, Ordering::SeqCst, Ordering::SeqCst)
            .is_err()
        {
            return None;
        }
        self.error_code.store(error_code, Ordering::SeqCst);
        self.rip.store(rip, Ordering::SeqCst);
        self.caught.store(true, Ordering::SeqCst);
        u8::try_from((slot >> 8) & 0xff).ok()
    }
}

impl Default for FaultProbe {
    fn default() -> Self {
        Self::new()
    }
}

/// The probe consulted by the runtime's exception handler.
pub static FAULT_PROBE: FaultProbe = FaultProbe::new();

/// Runs `f`, expecting it to raise exception `vector` on an instruction of `insn_len`
/// bytes. Returns the caught fault, or `None` if `f` completed without raising it.
///
/// ```no_run
/// use guest_rt::exception::vector;
/// // `ud2` is 0F 0B: two bytes.
/// let fault = guest_rt::expect_fault(vector::UD, 2, || {
///     // ... execute ud2 here
/// });
/// assert!(fault.is_some());
/// ```
pub fn expect_fault(vector: u8, insn_len: u8, f: impl FnOnce()) -> Option<Fault> {
    FAULT_PROBE.expect(vector, insn_len, f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matching_fault_is_caught_once() {
        let p = FaultProbe::new();
        let got = p.expect(13, 2, || {
            assert_eq!(
                p.on_exception(6, 0, 0x1000),
                None,
                "other vectors are not ours"
            );
            assert_eq!(p.on_exception(13, 0x10, 0x2000), Some(2));
            assert_eq!(
                p.on_exception(13, 0, 0x3000),
                None,
                "disarmed after the first"
            );
        });
        assert_eq!(
            got,
            Some(Fault {
                vector: 13,
                error_code: 0x10,
                rip: 0x2000
            })
        );
    }

    #[test]
    fn no_fault_returns_none() {
        let p = FaultProbe::new();
        assert_eq!(p.expect(6, 3, || {}), None);
        assert_eq!(p.on_exception(6, 0, 0), None, "disarmed after the closure");
        // A later probe starts clean.
        assert!(
            p.expect(6, 3, || assert_eq!(p.on_exception(6, 0, 1), Some(3)))
                .is_some()
        );
        assert_eq!(p.expect(6, 3, || {}), None);
    }

    #[test]
    #[should_panic(expected = "do not nest")]
    fn nesting_panics() {
        let p = FaultProbe::new();
        p.expect(6, 2, || {
            p.expect(6, 2, || {});
        });
    }

    #[test]
    #[should_panic(expected = "bad instruction length")]
    fn zero_length_panics() {
        FaultProbe::new().expect(6, 0, || {});
    }
}
