//! The `shared_info` page, `vcpu_info` and pvclock time (`xen/include/public/xen.h`,
//! `arch-x86/xen.h`).
//!
//! One page per domain, placed by the guest with `XENMEM_add_to_physmap`
//! ([`crate::memory`]). The microvisor writes the event bitmaps and the time; the guest
//! clears pending bits and sets mask bits. Both sides use atomic operations on the
//! bitmap words, never plain read-modify-write.
//!
//! | offset | field |
//! |--------|-------|
//! | `0x000` | `vcpu_info[32]`, 64 bytes each (vCPU *n* at `64·n`) |
//! | `0x800` | `evtchn_pending[64]`, `u64` words: port *p* is bit `p % 64` of word `p / 64` |
//! | `0xA00` | `evtchn_mask[64]`: same layout; a set bit suppresses the upcall |
//! | `0xC00` | `wc_version`, `wc_sec`, `wc_nsec`, `wc_sec_hi` (wall clock; zero here) |
//!
//! `vcpu_info` (64 bytes): `evtchn_upcall_pending` u8 at 0 (the microvisor sets it, the
//! guest clears it), `evtchn_upcall_mask` u8 at 1 (PV only; PVH guests mask with
//! `RFLAGS.IF`), `evtchn_pending_sel` u64 at 8 (bit *w*: word *w* of `evtchn_pending` may
//! have work), then [`VcpuTimeInfo`] at 32.
//!
//! vCPU 0's `vcpu_info` is slot 0 here until the guest moves it into its own RAM with
//! `VCPUOP_register_vcpu_info` ([`crate::vcpu`]); from then on the selector, the upcall
//! byte and the time record below are in that area, and slot 0 is no longer written.
//!
//! ## Delivery (what the microvisor does to send port *p*)
//! 1. test-and-set `evtchn_pending[p]`; stop if it was set;
//! 2. stop if `evtchn_mask[p]` is set;
//! 3. test-and-set bit `p / 64` of `evtchn_pending_sel`; stop if it was set;
//! 4. set `evtchn_upcall_pending` and interrupt the vCPU with the callback vector
//!    (`HVM_PARAM_CALLBACK_IRQ`, [`crate::hvm`]) as soon as its `RFLAGS.IF` allows.
//!
//! The upcall behaves like a level interrupt: it is injected on every entry while
//! `evtchn_upcall_pending` is set and `IF` is 1, and needs no EOI. A handler clears
//! `evtchn_upcall_pending` first, then swaps `evtchn_pending_sel` with 0 and, for each of
//! its bits, handles and clears `pending & !mask`.
//!
//! ## Time
//! System time is nanoseconds since the microvisor booted:
//! `ns = system_time + ((tsc - tsc_timestamp) shifted left by tsc_shift (right if
//! negative)) * tsc_to_system_mul >> 32` ([`VcpuTimeInfo::ns_at`]). `version` is odd while
//! the microvisor updates the record; read it, the fields, and `version` again, and retry
//! if it changed or was odd.
//!
//! The record (vCPU 0's) is written when the page is placed (and when `vcpu_info` is
//! moved) and may never change after:
//! `tsc_timestamp` can be the boot-time TSC, so `tsc - tsc_timestamp` grows with uptime.
//! Do the multiplication in 128 bits, as [`VcpuTimeInfo::ns_at`] does.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Size of one `vcpu_info`.
pub const VCPU_INFO_SIZE: usize = 64;
/// Offset of `evtchn_upcall_pending` in `vcpu_info`.
pub const VCPU_INFO_UPCALL_PENDING: usize = 0;
/// Offset of `evtchn_upcall_mask` in `vcpu_info`.
pub const VCPU_INFO_UPCALL_MASK: usize = 1;
/// Offset of `evtchn_pending_sel` in `vcpu_info`.
pub const VCPU_INFO_PENDING_SEL: usize = 8;
/// Offset of the [`VcpuTimeInfo`] in `vcpu_info`.
pub const VCPU_INFO_TIME: usize = 32;
/// Offset of `evtchn_pending[]` in `shared_info`.
pub const EVTCHN_PENDING: usize = 0x800;
/// Offset of `evtchn_mask[]` in `shared_info`.
pub const EVTCHN_MASK: usize = 0xA00;
/// Offset of `wc_version` in `shared_info`.
pub const WC_VERSION: usize = 0xC00;

/// Offset in `shared_info` of the `u64` word holding port `port`'s bit in the bitmap at
/// `bitmap` ([`EVTCHN_PENDING`] or [`EVTCHN_MASK`]), and the bit.
pub const fn port_word(bitmap: usize, port: u32) -> (usize, u64) {
    (bitmap + (port as usize / 64) * 8, 1 << (port % 64))
}

/// `vcpu_time_info`: pvclock data (32 bytes at offset 32 of `vcpu_info`).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct VcpuTimeInfo {
    /// Odd while an update is in progress.
    pub version: u32,
    /// Padding.
    pub pad0: u32,
    /// TSC at which `system_time` was taken.
    pub tsc_timestamp: u64,
    /// System time (ns) at `tsc_timestamp`.
    pub system_time: u64,
    /// TSC-to-ns multiplier, a 32.32 fixed-point fraction.
    pub tsc_to_system_mul: u32,
    /// Shift applied to the TSC delta before multiplying (negative: right shift).
    pub tsc_shift: i8,
    /// `PVCLOCK_TSC_STABLE_BIT` (bit 0): the TSC is the same on every vCPU.
    pub flags: u8,
    /// Padding.
    pub pad1: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<VcpuTimeInfo>() == 32);

/// `flags` bit: the TSC is synchronised across vCPUs.
pub const PVCLOCK_TSC_STABLE_BIT: u8 = 1;

/// A TSC-to-nanoseconds scale in pvclock form.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PvclockScale {
    /// `tsc_to_system_mul`, in `[2^31, 2^32)`.
    pub mul: u32,
    /// `tsc_shift`.
    pub shift: i8,
}

impl PvclockScale {
    /// The most precise scale for a TSC running at `tsc_khz` kHz (`tsc_khz` > 0; 0 is
    /// treated as 1).
    pub fn for_khz(tsc_khz: u64) -> Self {
        let khz = u128::from(tsc_khz.max(1));
        // ns per tick = 1e6 / khz; mul(shift) = that * 2^32 / 2^shift.
        let exact = (1_000_000u128 << 64) / khz; // ns per tick * 2^64
        let mut shift: i32 = -32;
        loop {
            let mul = exact >> (32 + shift);
            if mul < (1u128 << 32) || shift == 31 {
                return Self {
                    mul: u32::try_from(mul).unwrap_or(u32::MAX),
                    shift: shift as i8,
                };
            }
            shift += 1;
        }
    }

    /// Nanoseconds in `delta` TSC ticks.
    pub fn ticks_to_ns(self, delta: u64) -> u64 {
        let shifted = if self.shift >= 0 {
            u128::from(delta) << self.shift
        } else {
            u128::from(delta) >> (-i32::from(self.shift))
        };
        u64::try_from((shifted * u128::from(self.mul)) >> 32).unwrap_or(u64::MAX)
    }

    /// The smallest number of TSC ticks whose [`Self::ticks_to_ns`] is at least `ns`
    /// (saturating), so a deadline computed with it never fires early.
    pub fn ns_to_ticks(self, ns: u64) -> u64 {
        if ns == 0 {
            return 0;
        }
        let mul = u128::from(self.mul.max(1));
        // shifted >= ceil(ns * 2^32 / mul)
        let shifted = (u128::from(ns) << 32).div_ceil(mul);
        let mut ticks = if self.shift >= 0 {
            shifted.div_ceil(1u128 << self.shift)
        } else {
            shifted << (-i32::from(self.shift))
        };
        let ticks_u64 = |t: u128| u64::try_from(t).unwrap_or(u64::MAX);
        // Integer truncation in ticks_to_ns may still fall a tick short: step up.
        while ticks_u64(ticks) < u64::MAX && self.ticks_to_ns(ticks_u64(ticks)) < ns {
            ticks += 1;
        }
        ticks_u64(ticks)
    }
}

impl VcpuTimeInfo {
    /// System time in ns at TSC value `tsc`.
    pub fn ns_at(&self, tsc: u64) -> u64 {
        let scale = PvclockScale {
            mul: self.tsc_to_system_mul,
            shift: self.tsc_shift,
        };
        self.system_time
            .wrapping_add(scale.ticks_to_ns(tsc.wrapping_sub(self.tsc_timestamp)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scale_is_precise_and_inverse_never_early() {
        for khz in [
            1, 999, 1_000_000, 2_000_000, 2_893_012, 3_700_000, 10_000_000,
        ] {
            let s = PvclockScale::for_khz(khz);
            assert!(s.mul >= 1 << 31 || s.shift == 31, "{khz}: {s:?}");
            // One second of ticks is one second, to within 2 ns.
            let ns = s.ticks_to_ns(khz * 1000);
            assert!(ns.abs_diff(1_000_000_000) <= 2, "{khz}: {ns}");
            for want in [1, 999, 1_000_000, 10_000_000_000, 1 << 50] {
                let t = s.ns_to_ticks(want);
                assert!(s.ticks_to_ns(t) >= want, "{khz} {want}");
                assert!(
                    t == 0 || s.ticks_to_ns(t - 1) < want,
                    "{khz} {want} not minimal"
                );
            }
        }
    }

    #[test]
    fn time_info_formula() {
        let s = PvclockScale::for_khz(2_000_000);
        let t = VcpuTimeInfo {
            tsc_timestamp: 1000,
            system_time: 5,
            tsc_to_system_mul: s.mul,
            tsc_shift: s.shift,
            ..VcpuTimeInfo::default()
        };
        assert_eq!(t.ns_at(1000 + 2_000_000), 5 + 1_000_000);
        assert_eq!(port_word(EVTCHN_MASK, 65), (0xA08, 2));
    }
}
