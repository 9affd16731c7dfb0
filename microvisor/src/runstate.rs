//! A vCPU's runstate (`VCPUOP_register_runstate_memory_area`, [`shared_abi::vcpu`]): the
//! time it spent running, runnable, blocked and offline, and the guest area it is
//! published in.
//!
//! Portable: the accounting is plain arithmetic on system-time ns, and the area is written
//! through [`PhysMemory`] after a caller-supplied translation of each of its (one or two)
//! pages, done afresh for every write. The owner of the vCPU (the pCPU holding its
//! domain's lock) is the only writer, so the area is never written after the domain ends.

use crate::mm::PhysMemory;
use shared_abi::vcpu::{
    RUNSTATE_BLOCKED, RUNSTATE_OFFLINE, RUNSTATE_RUNNABLE, RUNSTATE_RUNNING, VcpuRunstateInfo,
    XEN_RUNSTATE_UPDATE,
};

/// Size of the guest's `vcpu_runstate_info`.
pub const AREA_SIZE: u64 = core::mem::size_of::<VcpuRunstateInfo>() as u64;

/// The four runstates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// On a pCPU.
    Running,
    /// Waiting for a pCPU.
    Runnable,
    /// Waiting for an event.
    Blocked,
    /// Paused, or not started.
    Offline,
}

impl State {
    /// The ABI value (`RUNSTATE_*`).
    pub const fn abi(self) -> u32 {
        match self {
            State::Running => RUNSTATE_RUNNING,
            State::Runnable => RUNSTATE_RUNNABLE,
            State::Blocked => RUNSTATE_BLOCKED,
            State::Offline => RUNSTATE_OFFLINE,
        }
    }
}

/// The accounting and the registered area of one vCPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Runstate {
    state: State,
    /// System time (ns) at which `state` was entered.
    entry_ns: u64,
    /// Completed periods, by `RUNSTATE_*`.
    time: [u64; 4],
    /// The guest linear address of the area, if registered.
    area: Option<u64>,
}

impl Runstate {
    /// A vCPU in `state` since `now_ns`, with no area.
    pub const fn new(state: State, now_ns: u64) -> Self {
        Self {
            state,
            entry_ns: now_ns,
            time: [0; 4],
            area: None,
        }
    }

    /// The current state.
    pub fn state(&self) -> State {
        self.state
    }

    /// Enters `to` at `at_ns`: the period in the old state (from its entry to `at_ns`, never
    /// negative: a clock reading older than the entry counts as the entry) is added to its
    /// total. Entering the current state again changes nothing.
    pub fn change(&mut self, to: State, at_ns: u64) {
        if to == self.state {
            return;
        }
        let at = at_ns.max(self.entry_ns);
        let slot = &mut self.time[self.state.abi() as usize];
        *slot = slot.saturating_add(at - self.entry_ns);
        self.state = to;
        self.entry_ns = at;
    }

    /// What the guest's area shows.
    pub fn info(&self) -> VcpuRunstateInfo {
        VcpuRunstateInfo {
            state: self.state.abi(),
            pad: 0,
            state_entry_time: self.entry_ns & !XEN_RUNSTATE_UPDATE,
            time: self.time,
        }
    }

    /// The registered area (a guest linear address).
    pub fn area(&self) -> Option<u64> {
        self.area
    }

    /// Registers the area at linear address `la` (`None` or `Some(0)`: unregisters).
    pub fn set_area(&mut self, la: Option<u64>) {
        self.area = la.filter(|&a| a != 0);
    }

    /// Writes the snapshot into the registered area. `page` translates the linear address
    /// of a page (4 KiB aligned) to the machine address of its frame if that frame is the
    /// domain's own writable RAM now; it is asked for every page the area touches before
    /// anything is written. If any page fails, or the area wraps the address space, the
    /// registration is dropped and nothing is written. Returns whether it was written.
    ///
    /// Order, for a reader that retries while the flag is set or the entry time changed:
    /// `state_entry_time | XEN_RUNSTATE_UPDATE`, then `state` and `time[]`, then
    /// `state_entry_time`. Each aligned `u64` is one store; an unaligned area is written
    /// byte by byte.
    pub fn publish<M: PhysMemory>(
        &mut self,
        mem: &mut M,
        page: impl Fn(&M, u64) -> Option<u64>,
    ) -> bool {
        let Some(la) = self.area else {
            return false;
        };
        let resolved = la.checked_add(AREA_SIZE - 1).and_then(|end| {
            let first = la & !0xFFF;
            let last = end & !0xFFF;
            let p0 = page(mem, first)?;
            let p1 = if last == first { p0 } else { page(mem, last)? };
            Some((first, p0, p1))
        });
        let Some((first, p0, p1)) = resolved else {
            self.area = None;
            return false;
        };
        let pa = |l: u64| {
            let base = if l & !0xFFF == first { p0 } else { p1 };
            base | (l & 0xFFF)
        };
        let put = |mem: &mut M, off: u64, v: u64| {
            let l = la + off;
            if l.is_multiple_of(8) {
                mem.write_u64(pa(l), v);
            } else {
                for (i, b) in (0u64..).zip(v.to_le_bytes()) {
                    mem.write_bytes(pa(l + i), &[b]);
                }
            }
        };
        let info = self.info();
        put(mem, 8, info.state_entry_time | XEN_RUNSTATE_UPDATE);
        // Stores are not reordered with stores on x86; this keeps the compiler from it.
        core::sync::atomic::fence(core::sync::atomic::Ordering::Release);
        put(mem, 0, u64::from(info.state));
        for (i, t) in (0u64..).zip(info.time) {
            put(mem, 16 + 8 * i, t);
        }
        core::sync::atomic::fence(core::sync::atomic::Ordering::Release);
        put(mem, 8, info.state_entry_time);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mm::fake::FakeMem;
    use zerocopy::FromBytes;

    /// Three frames of fake memory; linear page `n` is frame `n` (pages 0 and 1 writable
    /// RAM, page 2 not).
    fn mem() -> (FakeMem, [u64; 3]) {
        let mut m = FakeMem::new();
        let f = [0; 3].map(|_| m.alloc_zeroed_frame().unwrap());
        (m, f)
    }

    fn read(m: &FakeMem, pa: u64) -> VcpuRunstateInfo {
        let mut b = [0u8; 48];
        let n = (0x1000 - (pa & 0xFFF)).min(48) as usize;
        m.read_bytes(pa, &mut b[..n]);
        VcpuRunstateInfo::read_from_bytes(&b).unwrap()
    }

    #[test]
    fn accounting_adds_up() {
        let mut r = Runstate::new(State::Offline, 100);
        r.change(State::Runnable, 150);
        r.change(State::Running, 170);
        r.change(State::Running, 180);
        r.change(State::Blocked, 400);
        r.change(State::Runnable, 390); // a stale clock reading counts as the entry
        r.change(State::Running, 1000);
        let i = r.info();
        assert_eq!(i.state, RUNSTATE_RUNNING);
        assert_eq!(i.state_entry_time, 1000);
        assert_eq!(i.time, [230, 20 + 600, 0, 50]);
        assert_eq!(
            i.time.iter().sum::<u64>() + (1000 - i.state_entry_time),
            900
        );
    }

    #[test]
    fn publish_writes_translated_pages_and_drops_bad_areas() {
        let (mut m, f) = mem();
        let ok = move |_: &FakeMem, la: u64| match la {
            0 => Some(f[0]),
            0x1000 => Some(f[1]),
            _ => None,
        };
        let mut r = Runstate::new(State::Running, 7);
        r.change(State::Blocked, 10);
        assert!(!r.publish(&mut m, ok), "nothing registered");
        // Inside one page, aligned.
        r.set_area(Some(0x100));
        assert!(r.publish(&mut m, ok));
        assert_eq!(read(&m, f[0] + 0x100), r.info());
        assert_eq!(read(&m, f[0] + 0x100).time[0], 3);
        // Crossing into page 1, unaligned: each byte lands in the right frame.
        r.set_area(Some(0xFE3));
        assert!(r.publish(&mut m, ok));
        let mut b = [0u8; 48];
        m.read_bytes(f[0] + 0xFE3, &mut b[..29]);
        m.read_bytes(f[1], &mut b[29..]);
        assert_eq!(VcpuRunstateInfo::read_from_bytes(&b).unwrap(), r.info());
        // Crossing into page 2 (not RAM): dropped, nothing written to page 1's frame.
        let before = read(&m, f[1]);
        r.set_area(Some(0x1FF0));
        assert!(!r.publish(&mut m, ok));
        assert_eq!(r.area(), None);
        assert_eq!(read(&m, f[1]), before);
        // Wrapping the address space, and unregistering.
        r.set_area(Some(u64::MAX - 8));
        assert!(!r.publish(&mut m, ok));
        assert_eq!(r.area(), None);
        r.set_area(Some(0x100));
        r.set_area(Some(0));
        assert_eq!(r.area(), None);
    }

    proptest::proptest! {
        /// Any sequence of changes keeps the totals consistent with the elapsed time, and
        /// any area address either is written within the translated pages or dropped.
        #[test]
        fn garbage_never_panics(
            steps in proptest::collection::vec((0u8..4, 0u64..1_000_000), 0..40),
            la in proptest::num::u64::ANY,
        ) {
            let (mut m, f) = mem();
            let ok = move |_: &FakeMem, p: u64| match p {
                0 => Some(f[0]),
                0x1000 => Some(f[1]),
                _ => None,
            };
            let mut r = Runstate::new(State::Runnable, 0);
            let mut now = 0;
            for (s, dt) in steps {
                now += dt;
                let to = [State::Running, State::Runnable, State::Blocked, State::Offline][usize::from(s)];
                r.change(to, now);
            }
            let i = r.info();
            proptest::prop_assert_eq!(i.time.iter().sum::<u64>() + (now - i.state_entry_time), now);
            r.set_area(Some(la % 0x3000));
            let wrote = r.publish(&mut m, ok);
            proptest::prop_assert_eq!(wrote, la % 0x3000 != 0 && la % 0x3000 + 47 < 0x2000);
            r.set_area(Some(la));
            let _ = r.publish(&mut m, ok);
        }
    }
}
