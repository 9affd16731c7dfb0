//! The guest's view of its `shared_info` page ([`shared_abi::shared_info`]).
//!
//! The microvisor writes the page at any time (event bits, pvclock data), so the guest
//! never forms a plain reference to its bytes: [`SharedInfo`] is made of atomics only,
//! laid out exactly as the ABI's page (checked below against the `shared_abi` offsets).
//! The runtime keeps one page-aligned static instance and places it with
//! `XENMEM_add_to_physmap` ([`crate::events`]); host tests use ordinary instances.

use core::sync::atomic::{AtomicI8, AtomicU8, AtomicU32, AtomicU64, Ordering, fence};

use shared_abi::shared_info::{
    EVTCHN_MASK, EVTCHN_PENDING, VCPU_INFO_PENDING_SEL, VCPU_INFO_SIZE, VCPU_INFO_TIME,
    VCPU_INFO_UPCALL_MASK, VCPU_INFO_UPCALL_PENDING, VcpuTimeInfo, WC_VERSION,
};

/// Number of `vcpu_info` slots in the page.
pub const VCPU_SLOTS: usize = 32;
/// Number of `u64` words in each event bitmap (`evtchn_pending`, `evtchn_mask`).
pub const EVTCHN_WORDS: usize = 64;

/// `vcpu_time_info`, as atomics (32 bytes).
#[derive(Debug)]
#[repr(C)]
pub struct TimeInfo {
    /// Odd while the microvisor updates the record.
    pub version: AtomicU32,
    pad0: AtomicU32,
    /// TSC at which `system_time` was taken.
    pub tsc_timestamp: AtomicU64,
    /// System time (ns) at `tsc_timestamp`.
    pub system_time: AtomicU64,
    /// TSC-to-ns multiplier (32.32 fixed point).
    pub tsc_to_system_mul: AtomicU32,
    /// Shift of the TSC delta (negative: right).
    pub tsc_shift: AtomicI8,
    /// `PVCLOCK_*` flags.
    pub flags: AtomicU8,
    pad1: [AtomicU8; 2],
}

/// `vcpu_info`, as atomics (64 bytes).
#[derive(Debug)]
#[repr(C)]
pub struct VcpuInfo {
    /// `evtchn_upcall_pending`: set by the microvisor, cleared by the upcall handler.
    pub upcall_pending: AtomicU8,
    /// `evtchn_upcall_mask` (PV only; unused by PVH guests).
    pub upcall_mask: AtomicU8,
    pad0: [AtomicU8; 6],
    /// `evtchn_pending_sel`: bit *w* means word *w* of `evtchn_pending` may have work.
    pub pending_sel: AtomicU64,
    /// `arch.cr2` (PV only).
    cr2: AtomicU64,
    pad1: AtomicU64,
    /// The pvclock record.
    pub time: TimeInfo,
}

/// The `shared_info` page, as atomics (4096 bytes, page-aligned).
#[derive(Debug)]
#[repr(C, align(4096))]
pub struct SharedInfo {
    /// `vcpu_info[32]`.
    pub vcpu_info: [VcpuInfo; VCPU_SLOTS],
    /// `evtchn_pending[64]`: port *p* is bit `p % 64` of word `p / 64`.
    pub evtchn_pending: [AtomicU64; EVTCHN_WORDS],
    /// `evtchn_mask[64]`: a set bit suppresses the upcall for that port.
    pub evtchn_mask: [AtomicU64; EVTCHN_WORDS],
    /// Wall clock and the rest of the page (not used by the guest).
    rest: [AtomicU64; (4096 - WC_VERSION) / 8],
}

const _: () = {
    use core::mem::{offset_of, size_of};
    assert!(size_of::<TimeInfo>() == size_of::<VcpuTimeInfo>());
    assert!(offset_of!(TimeInfo, tsc_timestamp) == offset_of!(VcpuTimeInfo, tsc_timestamp));
    assert!(offset_of!(TimeInfo, system_time) == offset_of!(VcpuTimeInfo, system_time));
    assert!(offset_of!(TimeInfo, tsc_to_system_mul) == offset_of!(VcpuTimeInfo, tsc_to_system_mul));
    assert!(offset_of!(TimeInfo, tsc_shift) == offset_of!(VcpuTimeInfo, tsc_shift));
    assert!(offset_of!(TimeInfo, flags) == offset_of!(VcpuTimeInfo, flags));
    assert!(size_of::<VcpuInfo>() == VCPU_INFO_SIZE);
    assert!(offset_of!(VcpuInfo, upcall_pending) == VCPU_INFO_UPCALL_PENDING);
    assert!(offset_of!(VcpuInfo, upcall_mask) == VCPU_INFO_UPCALL_MASK);
    assert!(offset_of!(VcpuInfo, pending_sel) == VCPU_INFO_PENDING_SEL);
    assert!(offset_of!(VcpuInfo, time) == VCPU_INFO_TIME);
    assert!(offset_of!(SharedInfo, evtchn_pending) == EVTCHN_PENDING);
    assert!(offset_of!(SharedInfo, evtchn_mask) == EVTCHN_MASK);
    assert!(offset_of!(SharedInfo, rest) == WC_VERSION);
    assert!(size_of::<SharedInfo>() == shared_abi::PAGE_SIZE);
};

impl TimeInfo {
    const fn new() -> Self {
        Self {
            version: AtomicU32::new(0),
            pad0: AtomicU32::new(0),
            tsc_timestamp: AtomicU64::new(0),
            system_time: AtomicU64::new(0),
            tsc_to_system_mul: AtomicU32::new(0),
            tsc_shift: AtomicI8::new(0),
            flags: AtomicU8::new(0),
            pad1: [const { AtomicU8::new(0) }; 2],
        }
    }

    /// A consistent copy of the record and the TSC read with it.
    ///
    /// Reads `version`, the fields, the TSC (`rdtsc`), and `version` again, and retries
    /// while `version` is odd (an update in progress) or changed in between, so the
    /// returned record and TSC belong to one update.
    pub fn read(&self, mut rdtsc: impl FnMut() -> u64) -> (VcpuTimeInfo, u64) {
        loop {
            // ORDERING: Acquire; the field loads below must not move before this load.
            let v1 = self.version.load(Ordering::Acquire);
            if v1 & 1 != 0 {
                core::hint::spin_loop();
                continue;
            }
            // ORDERING: Relaxed loads, bracketed by the Acquire load above and the
            // Acquire fence below, which keeps them before the second version load. The
            // microvisor runs on the same vCPU's behalf while the guest is not running,
            // or on another pCPU with the writer's version/fields/version order.
            let info = VcpuTimeInfo {
                version: v1,
                pad0: 0,
                tsc_timestamp: self.tsc_timestamp.load(Ordering::Relaxed),
                system_time: self.system_time.load(Ordering::Relaxed),
                tsc_to_system_mul: self.tsc_to_system_mul.load(Ordering::Relaxed),
                tsc_shift: self.tsc_shift.load(Ordering::Relaxed),
                flags: self.flags.load(Ordering::Relaxed),
                pad1: [0; 2],
            };
            let tsc = rdtsc();
            // ORDERING: Acquire fence; keeps the loads above (and the TSC read, which the
            // caller fences) before the second version load.
            fence(Ordering::Acquire);
            let v2 = self.version.load(Ordering::Relaxed);
            if v1 == v2 {
                return (info, tsc);
            }
        }
    }
}

impl VcpuInfo {
    const fn new() -> Self {
        Self {
            upcall_pending: AtomicU8::new(0),
            upcall_mask: AtomicU8::new(0),
            pad0: [const { AtomicU8::new(0) }; 6],
            pending_sel: AtomicU64::new(0),
            cr2: AtomicU64::new(0),
            pad1: AtomicU64::new(0),
            time: TimeInfo::new(),
        }
    }
}

impl SharedInfo {
    /// An all-zero page.
    pub const fn new() -> Self {
        Self {
            vcpu_info: [const { VcpuInfo::new() }; VCPU_SLOTS],
            evtchn_pending: [const { AtomicU64::new(0) }; EVTCHN_WORDS],
            evtchn_mask: [const { AtomicU64::new(0) }; EVTCHN_WORDS],
            rest: [const { AtomicU64::new(0) }; (4096 - WC_VERSION) / 8],
        }
    }

    /// What the microvisor does to send `port` (the 2-level delivery steps of
    /// [`shared_abi::shared_info`]); returns whether the upcall was raised. For tests.
    #[cfg(test)]
    pub(crate) fn deliver(&self, port: u32) -> bool {
        let (w, bit) = ((port / 64) as usize, 1u64 << (port % 64));
        if self.evtchn_pending[w].fetch_or(bit, Ordering::SeqCst) & bit != 0 {
            return false;
        }
        if self.evtchn_mask[w].load(Ordering::SeqCst) & bit != 0 {
            return false;
        }
        let v = &self.vcpu_info[0];
        if v.pending_sel.fetch_or(1 << w, Ordering::SeqCst) & (1 << w) != 0 {
            return false;
        }
        v.upcall_pending.store(1, Ordering::SeqCst);
        true
    }
}

impl Default for SharedInfo {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared_abi::shared_info::PvclockScale;
    use std::boxed::Box;

    #[test]
    fn consistent_read() {
        let si = Box::new(SharedInfo::new());
        let t = &si.vcpu_info[0].time;
        let s = PvclockScale::for_khz(2_000_000);
        t.tsc_timestamp.store(1000, Ordering::SeqCst);
        t.system_time.store(5, Ordering::SeqCst);
        t.tsc_to_system_mul.store(s.mul, Ordering::SeqCst);
        t.tsc_shift.store(s.shift, Ordering::SeqCst);
        t.version.store(2, Ordering::SeqCst);
        let (info, tsc) = t.read(|| 1000 + 2_000_000);
        assert_eq!(info.ns_at(tsc), 5 + 1_000_000);
        assert_eq!(info.version, 2);
    }

    #[test]
    fn read_retries_when_the_version_changed() {
        let si = Box::new(SharedInfo::new());
        let t = &si.vcpu_info[0].time;
        t.version.store(4, Ordering::SeqCst);
        let mut calls = 0;
        // The first TSC read stands for the microvisor updating the record meanwhile
        // (version 4 -> 6, a new system time): that read must be thrown away.
        let (info, _) = t.read(|| {
            calls += 1;
            if calls == 1 {
                t.system_time.store(77, Ordering::SeqCst);
                t.version.store(6, Ordering::SeqCst);
            }
            0
        });
        assert_eq!(calls, 2, "a changed version is read again");
        assert_eq!(info.system_time, 77);
        assert_eq!(info.version, 6);
    }

    #[test]
    fn read_waits_out_an_odd_version() {
        let si = std::sync::Arc::new(SharedInfo::new());
        si.vcpu_info[0].time.version.store(7, Ordering::SeqCst);
        let writer = {
            let si = std::sync::Arc::clone(&si);
            std::thread::spawn(move || {
                std::thread::sleep(std::time::Duration::from_millis(20));
                let t = &si.vcpu_info[0].time;
                t.system_time.store(9, Ordering::SeqCst);
                t.version.store(8, Ordering::SeqCst);
            })
        };
        let (info, _) = si.vcpu_info[0].time.read(|| 0);
        writer.join().unwrap();
        assert_eq!((info.version, info.system_time), (8, 9));
    }

    #[test]
    fn delivery_model_follows_the_abi() {
        let si = Box::new(SharedInfo::new());
        assert!(si.deliver(3));
        assert!(!si.deliver(3), "already pending");
        assert!(!si.deliver(5), "same word: selector already set");
        si.evtchn_mask[1].store(1, Ordering::SeqCst);
        assert!(!si.deliver(64), "masked");
        assert_eq!(si.evtchn_pending[0].load(Ordering::SeqCst), 0b101000);
        assert_eq!(si.vcpu_info[0].pending_sel.load(Ordering::SeqCst), 1);
    }
}
