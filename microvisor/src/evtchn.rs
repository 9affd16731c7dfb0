//! Event channels (the 2-level ABI of [`shared_abi::event_channel`]), HVM parameters and
//! each DomU's `shared_info` page.
//!
//! Every domain has a [`DomainEvents`]: its port table, its HVM parameters and, for a DomU,
//! the machine address of the page that holds its `shared_info` (a microvisor-owned frame
//! until the guest places the page in its RAM with `XENMEM_add_to_physmap`). Domain 0 is
//! native Linux without `shared_info`: its pending ports are a private bitmap that it takes
//! with a control operation, and a port becoming pending raises `EVENT_EVTCHN`.
//!
//! The tables live behind one spin lock per domain, never the lock a pCPU holds while it
//! runs the domain. [`Hub`] is the only way to them and keeps the lock discipline:
//!
//! - one domain's lock at a time, except `bind_interdomain` and `close`, which take both
//!   ends in domid order;
//! - a send reads its own port under its own lock, then delivers under the peer's lock
//!   after checking that the peer port still names the sender (so a channel closed or
//!   rebound in between never gets a stray event);
//! - every write to a `shared_info` page (or to the `vcpu_info` the guest moved into its
//!   RAM with `VCPUOP_register_vcpu_info`) happens under its domain's lock, and
//!   [`Hub::teardown`] forgets both under that lock, so nothing writes to a frame once its
//!   domain has ended;
//! - the [`Platform`] is told about new upcalls and pending ports only after the lock is
//!   released (it takes the scheduler's locks to wake or kick a vCPU).
//!
//! Portable and host-tested: the page is reached through [`SharedMem`] (atomic operations
//! on machine addresses), the scheduler through [`Platform::notify`].

use shared_abi::Errno;
use shared_abi::event_channel::{
    EVTCHNSTAT_CLOSED, EVTCHNSTAT_INTERDOMAIN, EVTCHNSTAT_UNBOUND, EVTCHNSTAT_VIRQ, MAX_PORTS,
    VIRQ_TIMER,
};
use shared_abi::hvm::{
    HVM_PARAM_CALLBACK_IRQ, HVM_PARAM_CALLBACK_TYPE_SHIFT, HVM_PARAM_CALLBACK_TYPE_VECTOR,
    HVM_PARAM_CONSOLE_EVTCHN, HVM_PARAM_CONSOLE_PFN, HVM_PARAM_STORE_EVTCHN, HVM_PARAM_STORE_PFN,
};
use shared_abi::shared_info::{
    EVTCHN_MASK, EVTCHN_PENDING, VCPU_INFO_PENDING_SEL, VCPU_INFO_SIZE, VCPU_INFO_TIME,
    VCPU_INFO_UPCALL_PENDING, VcpuTimeInfo, port_word,
};
use spin::{Mutex, MutexGuard};

/// Ports per domain (`1..PORTS` are usable; 0 is never allocated).
pub const PORTS: usize = MAX_PORTS as usize;
const WORDS: usize = PORTS / 64;

/// One port of a domain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Port {
    /// Not allocated.
    Free,
    /// Allocated; domain `remote` may bind to it.
    Unbound {
        /// The domain allowed to bind (the domid of a dead peer after its end).
        remote: u16,
    },
    /// Connected to `remote_port` of `remote_dom`.
    Interdomain {
        /// The peer domain.
        remote_dom: u16,
        /// The peer's port.
        remote_port: u32,
    },
    /// Bound to a virtual IRQ.
    Virq(u32),
}

/// Atomic access to machine memory holding `shared_info` pages. Addresses are machine
/// addresses inside a page the caller holds (naturally aligned for the access size).
pub trait SharedMem {
    /// Atomic OR into the `u64` at `pa`; returns the old value.
    fn fetch_or(&self, pa: u64, mask: u64) -> u64;
    /// Atomic AND into the `u64` at `pa`; returns the old value.
    fn fetch_and(&self, pa: u64, mask: u64) -> u64;
    /// Atomic load of the `u64` at `pa`.
    fn load(&self, pa: u64) -> u64;
    /// Atomic store of the `u64` at `pa`.
    fn store(&self, pa: u64, v: u64);
    /// Atomic load of the byte at `pa`.
    fn load_u8(&self, pa: u64) -> u8;
    /// Atomic store of the byte at `pa`.
    fn store_u8(&self, pa: u64, v: u8);
}

/// What the scheduler hears from the hub.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Notify {
    /// DomU `domid` has a new upcall pending: wake it if it is blocked, or interrupt its
    /// pCPU so the callback vector is injected promptly.
    Upcall(u16),
    /// A port of DomU `domid` became pending without a new upcall (masked, or the
    /// selector was already set): wake it only if it is polling.
    Pending(u16),
    /// Some domain 0 ports became pending: raise `EVENT_EVTCHN`.
    Dom0,
}

/// The machine behind the hub.
pub trait Platform {
    /// Memory of the `shared_info` pages.
    type Mem: SharedMem;
    /// The memory.
    fn shared(&self) -> &Self::Mem;
    /// Called with no event lock held.
    fn notify(&self, what: Notify);
}

/// A domain's table is open for a DomU, domain 0, or closed (no such domain, or ended).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Closed,
    Dom0,
    DomU,
}

/// The outcome of marking a port pending.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Delivery {
    /// It was already pending (or the domain is closed): nothing changed.
    Nothing,
    /// Newly pending, no new upcall.
    Pending,
    /// Newly pending and the upcall was raised.
    Upcall,
}

/// Index in [`DomainEvents::params`] of an HVM parameter.
fn param_slot(index: u32) -> Option<usize> {
    Some(match index {
        HVM_PARAM_CALLBACK_IRQ => 0,
        HVM_PARAM_STORE_PFN => 1,
        HVM_PARAM_STORE_EVTCHN => 2,
        HVM_PARAM_CONSOLE_PFN => 3,
        HVM_PARAM_CONSOLE_EVTCHN => 4,
        _ => return None,
    })
}

/// The callback vector a `CALLBACK_IRQ` value selects, if it is a valid vector value.
pub fn callback_vector(value: u64) -> Option<u8> {
    let kind = value >> HVM_PARAM_CALLBACK_TYPE_SHIFT;
    let middle = value & ((1 << HVM_PARAM_CALLBACK_TYPE_SHIFT) - 1) & !0xFF;
    let vector = (value & 0xFF) as u8;
    (kind == HVM_PARAM_CALLBACK_TYPE_VECTOR && middle == 0 && vector >= 0x20).then_some(vector)
}

/// One domain's event state.
#[derive(Debug)]
pub struct DomainEvents {
    kind: Kind,
    domid: u16,
    ports: [Port; PORTS],
    /// Domain 0's pending ports.
    dom0_pending: [u64; WORDS],
    /// The port bound to `VIRQ_TIMER` (0: none).
    timer_port: u32,
    /// `CALLBACK_IRQ`, `STORE_PFN`, `STORE_EVTCHN`, `CONSOLE_PFN`, `CONSOLE_EVTCHN`.
    params: [u64; 5],
    /// Machine address of the page holding `shared_info` now.
    shared_info: u64,
    /// The microvisor-owned frame that holds it until the guest places it.
    own_frame: u64,
    /// The guest frame it was placed at.
    placed_gpfn: Option<u64>,
    /// Machine address of vCPU 0's `vcpu_info` once the guest moved it into its RAM with
    /// `VCPUOP_register_vcpu_info` (0: slot 0 of `shared_info`).
    vcpu_info: u64,
    /// The domain's RAM, in pages.
    mem_pages: u64,
}

impl DomainEvents {
    /// A closed table (no domain).
    pub const EMPTY: Self = Self {
        kind: Kind::Closed,
        domid: 0,
        ports: [Port::Free; PORTS],
        dom0_pending: [0; WORDS],
        timer_port: 0,
        params: [0; 5],
        shared_info: 0,
        own_frame: 0,
        placed_gpfn: None,
        vcpu_info: 0,
        mem_pages: 0,
    };

    fn live(&self) -> bool {
        self.kind != Kind::Closed
    }

    /// The port's state (`Free` outside the table).
    pub fn port(&self, port: u32) -> Port {
        self.ports.get(port as usize).copied().unwrap_or(Port::Free)
    }

    /// The guest frame `shared_info` was placed at, if any.
    pub fn placed_gpfn(&self) -> Option<u64> {
        self.placed_gpfn
    }

    /// The machine address of the `vcpu_info` the guest registered, if it moved it.
    pub fn registered_vcpu_info(&self) -> Option<u64> {
        (self.vcpu_info != 0).then_some(self.vcpu_info)
    }

    /// Machine address of vCPU 0's `vcpu_info` now (a DomU's).
    fn vi(&self) -> u64 {
        if self.vcpu_info != 0 {
            self.vcpu_info
        } else {
            self.shared_info
        }
    }

    fn alloc(&mut self) -> Result<u32, Errno> {
        let port = (1..PORTS)
            .find(|&p| self.ports[p] == Port::Free)
            .ok_or(Errno::ENOSPC)?;
        Ok(port as u32)
    }

    /// Frees `port` and clears its pending bit, so a later owner of the number starts
    /// clean.
    fn free(&mut self, port: u32, mem: &impl SharedMem) {
        let Some(slot) = self.ports.get_mut(port as usize) else {
            return;
        };
        if let Port::Virq(_) = *slot {
            self.timer_port = 0;
        }
        *slot = Port::Free;
        let (off, bit) = port_word(EVTCHN_PENDING, port);
        match self.kind {
            Kind::DomU => {
                mem.fetch_and(self.shared_info + off as u64, !bit);
            }
            Kind::Dom0 => self.dom0_pending[port as usize / 64] &= !bit,
            Kind::Closed => {}
        }
    }

    /// Marks `port` pending (the 4-step 2-level algorithm for a DomU; the private bitmap
    /// for domain 0).
    fn deliver(&mut self, port: u32, mem: &impl SharedMem) -> Delivery {
        if port as usize >= PORTS {
            return Delivery::Nothing;
        }
        let (off, bit) = port_word(EVTCHN_PENDING, port);
        match self.kind {
            Kind::Closed => Delivery::Nothing,
            Kind::Dom0 => {
                let word = &mut self.dom0_pending[port as usize / 64];
                if *word & bit != 0 {
                    return Delivery::Nothing;
                }
                *word |= bit;
                Delivery::Pending
            }
            Kind::DomU => {
                let si = self.shared_info;
                if mem.fetch_or(si + off as u64, bit) & bit != 0 {
                    return Delivery::Nothing;
                }
                let (moff, _) = port_word(EVTCHN_MASK, port);
                if mem.load(si + moff as u64) & bit != 0 {
                    return Delivery::Pending;
                }
                self.raise_selector(port, mem)
            }
        }
    }

    /// Steps 3 and 4: set the selector bit and, if it was clear, the upcall.
    fn raise_selector(&self, port: u32, mem: &impl SharedMem) -> Delivery {
        let vi = self.vi();
        let sel = 1u64 << (port / 64);
        if mem.fetch_or(vi + VCPU_INFO_PENDING_SEL as u64, sel) & sel != 0 {
            return Delivery::Pending;
        }
        mem.store_u8(vi + VCPU_INFO_UPCALL_PENDING as u64, 1);
        Delivery::Upcall
    }

    fn unmask(&self, port: u32, mem: &impl SharedMem) -> Delivery {
        if self.kind != Kind::DomU {
            return Delivery::Nothing;
        }
        let si = self.shared_info;
        let (moff, bit) = port_word(EVTCHN_MASK, port);
        let (poff, _) = port_word(EVTCHN_PENDING, port);
        if mem.fetch_and(si + moff as u64, !bit) & bit != 0 && mem.load(si + poff as u64) & bit != 0
        {
            self.raise_selector(port, mem)
        } else {
            Delivery::Nothing
        }
    }

    fn port_pending(&self, port: u32, mem: &impl SharedMem) -> bool {
        if port as usize >= PORTS {
            return false;
        }
        let (off, bit) = port_word(EVTCHN_PENDING, port);
        match self.kind {
            Kind::DomU => mem.load(self.shared_info + off as u64) & bit != 0,
            Kind::Dom0 => self.dom0_pending[port as usize / 64] & bit != 0,
            Kind::Closed => false,
        }
    }

    fn upcall_pending(&self, mem: &impl SharedMem) -> bool {
        self.kind == Kind::DomU && mem.load_u8(self.vi() + VCPU_INFO_UPCALL_PENDING as u64) != 0
    }
}

/// Writes `time` into the `vcpu_time_info` of the `vcpu_info` at `vi`, with the version odd
/// while the fields change.
fn write_time(mem: &impl SharedMem, vi: u64, time: &VcpuTimeInfo) {
    let base = vi + VCPU_INFO_TIME as u64;
    let version = (mem.load(base) as u32).wrapping_add(1) | 1;
    mem.store(base, u64::from(version));
    mem.store(base + 8, time.tsc_timestamp);
    mem.store(base + 16, time.system_time);
    mem.store(
        base + 24,
        u64::from(time.tsc_to_system_mul)
            | (u64::from(time.tsc_shift as u8) << 32)
            | (u64::from(time.flags) << 40),
    );
    mem.store(base, u64::from(version.wrapping_add(1)));
}

fn check_port(port: u32) -> Result<usize, Errno> {
    if port == 0 || port >= MAX_PORTS {
        return Err(Errno::EINVAL);
    }
    Ok(port as usize)
}

/// The event-channel operations over every domain's table.
#[derive(Debug)]
pub struct Hub<'a, P> {
    tables: &'a [Mutex<DomainEvents>],
    platform: &'a P,
}

impl<P> Clone for Hub<'_, P> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<P> Copy for Hub<'_, P> {}

type Guard<'a> = MutexGuard<'a, DomainEvents>;

impl<'a, P: Platform> Hub<'a, P> {
    /// The hub over `tables` (indexed by domid).
    pub fn new(tables: &'a [Mutex<DomainEvents>], platform: &'a P) -> Self {
        Self { tables, platform }
    }

    fn table(&self, dom: u16) -> Result<&'a Mutex<DomainEvents>, Errno> {
        self.tables.get(usize::from(dom)).ok_or(Errno::ESRCH)
    }

    fn lock_live(&self, dom: u16) -> Result<Guard<'a>, Errno> {
        let t = self.table(dom)?.lock();
        if t.live() { Ok(t) } else { Err(Errno::ESRCH) }
    }

    /// Locks two different domains' tables in domid order; returns (`a`'s, `b`'s).
    fn lock_pair(&self, a: u16, b: u16) -> Result<(Guard<'a>, Guard<'a>), Errno> {
        let (ta, tb) = (self.table(a)?, self.table(b)?);
        Ok(if a < b {
            let ga = ta.lock();
            (ga, tb.lock())
        } else {
            let gb = tb.lock();
            (ta.lock(), gb)
        })
    }

    fn notify(&self, dom: u16, d: Delivery) {
        let what = match d {
            Delivery::Nothing => return,
            _ if dom == 0 => Notify::Dom0,
            Delivery::Pending => Notify::Pending(dom),
            Delivery::Upcall => Notify::Upcall(dom),
        };
        self.platform.notify(what);
    }

    /// Opens DomU `dom`'s table: no ports, no parameters, `shared_info` in `own_frame`
    /// (a zeroed microvisor frame) until the guest places it; `mem_pages` of RAM.
    pub fn open_domu(&self, dom: u16, own_frame: u64, mem_pages: u64) {
        if dom == 0 {
            return;
        }
        if let Ok(t) = self.table(dom) {
            let mut t = t.lock();
            *t = DomainEvents::EMPTY;
            t.kind = Kind::DomU;
            t.domid = dom;
            t.own_frame = own_frame;
            t.shared_info = own_frame;
            t.mem_pages = mem_pages;
        }
    }

    /// Opens domain 0's table.
    pub fn open_dom0(&self) {
        if let Ok(t) = self.table(0) {
            let mut t = t.lock();
            *t = DomainEvents::EMPTY;
            t.kind = Kind::Dom0;
        }
    }

    /// Whether `dom`'s table is open.
    pub fn alive(&self, dom: u16) -> bool {
        self.table(dom).is_ok_and(|t| t.lock().live())
    }

    /// Closes `dom`'s table at its end: no more events reach it and nothing writes to its
    /// `shared_info` page from now on; each interdomain peer port becomes unbound with
    /// the dead domain as its remote (sends on it are dropped). Returns the microvisor-owned
    /// frame to free.
    pub fn teardown(&self, dom: u16) -> Option<u64> {
        let own = {
            let mut t = self.table(dom).ok()?.lock();
            if !t.live() {
                return None;
            }
            t.kind = Kind::Closed;
            t.shared_info = 0;
            t.placed_gpfn = None;
            t.vcpu_info = 0;
            t.params = [0; 5];
            t.timer_port = 0;
            t.dom0_pending = [0; WORDS];
            core::mem::take(&mut t.own_frame)
        };
        // Closed: nobody binds to it, sends to it or allocates in it any more; unhook the
        // peers one at a time, holding one lock at a time.
        let mut port = 1;
        while port < PORTS {
            let peer = {
                let mut t = self.tables[usize::from(dom)].lock();
                let found = (port..PORTS).find_map(|p| match t.ports[p] {
                    Port::Interdomain {
                        remote_dom,
                        remote_port,
                    } => Some((p, remote_dom, remote_port)),
                    _ => None,
                });
                let end = found.map_or(PORTS, |(p, _, _)| p + 1);
                t.ports[port..end].fill(Port::Free);
                found
            };
            let Some((p, rd, rp)) = peer else { break };
            if rd != dom
                && let Ok(r) = self.table(rd)
            {
                let mut r = r.lock();
                let me = Port::Interdomain {
                    remote_dom: dom,
                    remote_port: p as u32,
                };
                if r.port(rp) == me {
                    r.ports[rp as usize] = Port::Unbound { remote: dom };
                }
            }
            port = p + 1;
        }
        (own != 0).then_some(own)
    }

    /// `EVTCHNOP_alloc_unbound` in `dom` for `remote` (also Dom0's `EvtchnAllocUnbound`).
    pub fn alloc_unbound(&self, dom: u16, remote: u16) -> Result<u32, Errno> {
        if !self.alive(remote) {
            return Err(Errno::ESRCH);
        }
        let mut t = self.lock_live(dom)?;
        let port = t.alloc()?;
        t.ports[port as usize] = Port::Unbound { remote };
        Ok(port)
    }

    /// `EVTCHNOP_bind_interdomain`: connects a new port of `dom` to `remote_port` of
    /// `remote`, which must be unbound for `dom`. As in Xen, the new port starts pending,
    /// so a notification sent before the bind is not lost.
    pub fn bind_interdomain(&self, dom: u16, remote: u16, remote_port: u32) -> Result<u32, Errno> {
        let mem = self.platform.shared();
        let want = Port::Unbound { remote: dom };
        let (port, delivery) = if dom == remote {
            let mut t = self.lock_live(dom)?;
            let rp = check_port(remote_port)?;
            if t.ports[rp] != want {
                return Err(Errno::EINVAL);
            }
            let port = t.alloc()?;
            t.ports[port as usize] = Port::Interdomain {
                remote_dom: dom,
                remote_port,
            };
            t.ports[rp] = Port::Interdomain {
                remote_dom: dom,
                remote_port: port,
            };
            (port, t.deliver(port, mem))
        } else {
            let (mut l, mut r) = self.lock_pair(dom, remote)?;
            if !l.live() || !r.live() {
                return Err(Errno::ESRCH);
            }
            let rp = check_port(remote_port)?;
            if r.ports[rp] != want {
                return Err(Errno::EINVAL);
            }
            let port = l.alloc()?;
            l.ports[port as usize] = Port::Interdomain {
                remote_dom: remote,
                remote_port,
            };
            r.ports[rp] = Port::Interdomain {
                remote_dom: dom,
                remote_port: port,
            };
            (port, l.deliver(port, mem))
        };
        self.notify(dom, delivery);
        Ok(port)
    }

    /// `EVTCHNOP_bind_virq`.
    pub fn bind_virq(&self, dom: u16, virq: u32, vcpu: u32) -> Result<u32, Errno> {
        if virq != VIRQ_TIMER || vcpu != 0 {
            return Err(Errno::EINVAL);
        }
        let mut t = self.lock_live(dom)?;
        if t.timer_port != 0 {
            return Err(Errno::EEXIST);
        }
        let port = t.alloc()?;
        t.ports[port as usize] = Port::Virq(virq);
        t.timer_port = port;
        Ok(port)
    }

    /// `EVTCHNOP_close` (also Dom0's `EvtchnClose`): the peer of an interdomain channel
    /// becomes unbound, naming `dom` as its remote.
    pub fn close(&self, dom: u16, port: u32) -> Result<(), Errno> {
        let mem = self.platform.shared();
        let p = check_port(port)?;
        loop {
            let (rd, rp) = {
                let mut t = self.lock_live(dom)?;
                match t.ports[p] {
                    Port::Free => return Err(Errno::EINVAL),
                    Port::Interdomain {
                        remote_dom,
                        remote_port,
                    } if remote_dom != dom => (remote_dom, remote_port),
                    Port::Interdomain { remote_port, .. } => {
                        t.free(port, mem);
                        let me = Port::Interdomain {
                            remote_dom: dom,
                            remote_port: port,
                        };
                        if t.port(remote_port) == me {
                            t.ports[remote_port as usize] = Port::Unbound { remote: dom };
                        }
                        return Ok(());
                    }
                    Port::Unbound { .. } | Port::Virq(_) => {
                        t.free(port, mem);
                        return Ok(());
                    }
                }
            };
            let (mut l, mut r) = self.lock_pair(dom, rd)?;
            if !l.live() {
                return Err(Errno::ESRCH);
            }
            let was = Port::Interdomain {
                remote_dom: rd,
                remote_port: rp,
            };
            if l.ports[p] != was {
                // The peer went meanwhile (our end is unbound now): look again.
                continue;
            }
            l.free(port, mem);
            let me = Port::Interdomain {
                remote_dom: dom,
                remote_port: port,
            };
            if r.port(rp) == me {
                r.ports[rp as usize] = Port::Unbound { remote: dom };
            }
            return Ok(());
        }
    }

    /// `EVTCHNOP_send` (also Dom0's `EvtchnSend`). Sends on an unbound port, or to a peer
    /// that has gone, are dropped.
    pub fn send(&self, dom: u16, port: u32) -> Result<(), Errno> {
        let p = check_port(port)?;
        let (rd, rp) = {
            let t = self.lock_live(dom)?;
            match t.ports[p] {
                Port::Free | Port::Virq(_) => return Err(Errno::EINVAL),
                Port::Unbound { .. } => return Ok(()),
                Port::Interdomain {
                    remote_dom,
                    remote_port,
                } => (remote_dom, remote_port),
            }
        };
        let delivery = {
            let Ok(r) = self.table(rd) else { return Ok(()) };
            let mut r = r.lock();
            let me = Port::Interdomain {
                remote_dom: dom,
                remote_port: port,
            };
            if r.port(rp) != me {
                return Ok(());
            }
            r.deliver(rp, self.platform.shared())
        };
        self.notify(rd, delivery);
        Ok(())
    }

    /// `EVTCHNOP_status`: `(EVTCHNSTAT_*, u)`.
    pub fn status(&self, dom: u16, port: u32) -> Result<(u32, [u32; 2]), Errno> {
        if port >= MAX_PORTS {
            return Err(Errno::EINVAL);
        }
        let t = self.lock_live(dom)?;
        Ok(match t.ports[port as usize] {
            Port::Free => (EVTCHNSTAT_CLOSED, [0, 0]),
            Port::Unbound { remote } => (EVTCHNSTAT_UNBOUND, [u32::from(remote), 0]),
            Port::Interdomain {
                remote_dom,
                remote_port,
            } => (EVTCHNSTAT_INTERDOMAIN, [u32::from(remote_dom), remote_port]),
            Port::Virq(v) => (EVTCHNSTAT_VIRQ, [v, 0]),
        })
    }

    /// `EVTCHNOP_unmask`: clears the mask bit and re-raises the upcall for a pending port.
    pub fn unmask(&self, dom: u16, port: u32) -> Result<(), Errno> {
        if port >= MAX_PORTS {
            return Err(Errno::EINVAL);
        }
        let delivery = self.lock_live(dom)?.unmask(port, self.platform.shared());
        self.notify(dom, delivery);
        Ok(())
    }

    /// Whether `port` of `dom` is pending (false for a closed domain or a bad port).
    pub fn port_pending(&self, dom: u16, port: u32) -> bool {
        self.lock_live(dom)
            .is_ok_and(|t| t.port_pending(port, self.platform.shared()))
    }

    /// Whether DomU `dom`'s vCPU 0 has `evtchn_upcall_pending` set.
    pub fn upcall_pending(&self, dom: u16) -> bool {
        self.lock_live(dom)
            .is_ok_and(|t| t.upcall_pending(self.platform.shared()))
    }

    /// The callback vector to inject into `dom` now: its upcall is pending and it set a
    /// callback vector.
    pub fn pending_upcall(&self, dom: u16) -> Option<u8> {
        let t = self.lock_live(dom).ok()?;
        let vector = callback_vector(t.params[0])?;
        t.upcall_pending(self.platform.shared()).then_some(vector)
    }

    /// Sends `virq` to `dom` if it bound it (the timer expired).
    pub fn fire_virq(&self, dom: u16, virq: u32) {
        let delivery = {
            let Ok(mut t) = self.lock_live(dom) else {
                return;
            };
            if virq != VIRQ_TIMER || t.timer_port == 0 {
                return;
            }
            let port = t.timer_port;
            t.deliver(port, self.platform.shared())
        };
        self.notify(dom, delivery);
    }

    /// Dom0's `EvtchnTakePending`: writes its pending ports ascending into `out`, clearing
    /// each one written; returns how many.
    pub fn take_dom0_pending(&self, out: &mut [u32]) -> usize {
        let Ok(mut t) = self.lock_live(0) else {
            return 0;
        };
        let mut n = 0;
        for w in 0..WORDS {
            while n < out.len() && t.dom0_pending[w] != 0 {
                let bit = t.dom0_pending[w].trailing_zeros();
                t.dom0_pending[w] &= !(1 << bit);
                out[n] = (w * 64) as u32 + bit;
                n += 1;
            }
        }
        n
    }

    /// The guest's `HVMOP_set_param(CALLBACK_IRQ)`: `value` is 0 or a valid vector value.
    pub fn set_callback(&self, dom: u16, value: u64) -> Result<(), Errno> {
        if value != 0 && callback_vector(value).is_none() {
            return Err(Errno::EINVAL);
        }
        self.lock_live(dom)?.params[0] = value;
        Ok(())
    }

    /// Dom0's `DomainSetParam`: a store or console frame (below the domain's RAM) or port
    /// (`1..MAX_PORTS`).
    pub fn set_builder_param(&self, dom: u16, index: u32, value: u64) -> Result<(), Errno> {
        let slot = match index {
            HVM_PARAM_STORE_PFN
            | HVM_PARAM_STORE_EVTCHN
            | HVM_PARAM_CONSOLE_PFN
            | HVM_PARAM_CONSOLE_EVTCHN => param_slot(index),
            _ => None,
        }
        .ok_or(Errno::EINVAL)?;
        let mut t = self.lock_live(dom)?;
        if t.kind != Kind::DomU {
            return Err(Errno::ESRCH);
        }
        let ok = match index {
            HVM_PARAM_STORE_PFN | HVM_PARAM_CONSOLE_PFN => value < t.mem_pages,
            _ => (1..u64::from(MAX_PORTS)).contains(&value),
        };
        if !ok {
            return Err(Errno::EINVAL);
        }
        t.params[slot] = value;
        Ok(())
    }

    /// `HVMOP_get_param`.
    pub fn param(&self, dom: u16, index: u32) -> Result<u64, Errno> {
        let slot = param_slot(index).ok_or(Errno::EINVAL)?;
        Ok(self.lock_live(dom)?.params[slot])
    }

    /// `XENMEM_add_to_physmap(shared_info)`: guest frame `gpfn` (machine address `pa`)
    /// becomes `dom`'s `shared_info`. The current page's contents move there and the
    /// pvclock record is written.
    pub fn place_shared_info(
        &self,
        dom: u16,
        gpfn: u64,
        pa: u64,
        time: &VcpuTimeInfo,
    ) -> Result<(), Errno> {
        let mem = self.platform.shared();
        let mut t = self.lock_live(dom)?;
        if t.kind != Kind::DomU {
            return Err(Errno::ESRCH);
        }
        if gpfn >= t.mem_pages || pa == 0 || pa & 0xFFF != 0 {
            return Err(Errno::EINVAL);
        }
        // Once vcpu_info has moved, slot 0 is not written any more.
        let moved = t.vcpu_info != 0;
        if pa != t.shared_info {
            let old = t.shared_info;
            let from = if moved { VCPU_INFO_SIZE as u64 } else { 0 };
            for off in (from..4096).step_by(8) {
                mem.store(pa + off, mem.load(old + off));
            }
            t.shared_info = pa;
        }
        t.placed_gpfn = Some(gpfn);
        if !moved {
            write_time(mem, pa, time);
        }
        Ok(())
    }

    /// `VCPUOP_register_vcpu_info`: vCPU 0's `vcpu_info` moves to the 64 bytes at machine
    /// address `pa` (8-byte aligned, within one frame of `dom`'s RAM, checked by the
    /// caller). Its current contents are copied there with `time` as the pvclock record,
    /// then every word with a pending unmasked port gets its selector bit (and the upcall
    /// is raised if any is set), so nothing pending is lost in the move. Once per domain:
    /// `EINVAL` if it moved already.
    pub fn register_vcpu_info(&self, dom: u16, pa: u64, time: &VcpuTimeInfo) -> Result<(), Errno> {
        let mem = self.platform.shared();
        let delivery = {
            let mut t = self.lock_live(dom)?;
            if t.kind != Kind::DomU {
                return Err(Errno::ESRCH);
            }
            if t.vcpu_info != 0 || pa == 0 || !pa.is_multiple_of(8) {
                return Err(Errno::EINVAL);
            }
            let old = t.shared_info;
            for off in (0..VCPU_INFO_TIME as u64).step_by(8) {
                mem.store(pa + off, mem.load(old + off));
            }
            write_time(mem, pa, time);
            t.vcpu_info = pa;
            let mut sel = 0;
            for w in 0..WORDS as u64 {
                let pending = mem.load(old + EVTCHN_PENDING as u64 + w * 8);
                let mask = mem.load(old + EVTCHN_MASK as u64 + w * 8);
                if pending & !mask != 0 {
                    sel |= 1 << w;
                }
            }
            let had = mem.fetch_or(pa + VCPU_INFO_PENDING_SEL as u64, sel) | sel;
            if had != 0 && mem.load_u8(pa + VCPU_INFO_UPCALL_PENDING as u64) == 0 {
                mem.store_u8(pa + VCPU_INFO_UPCALL_PENDING as u64, 1);
                Delivery::Upcall
            } else {
                Delivery::Nothing
            }
        };
        self.notify(dom, delivery);
        Ok(())
    }

    /// Runs `f` on `dom`'s table (tests and invariant checks).
    pub fn inspect<R>(&self, dom: u16, f: impl FnOnce(&DomainEvents) -> R) -> Option<R> {
        self.table(dom).ok().map(|t| f(&t.lock()))
    }
}

#[cfg(test)]
pub(crate) mod fake {
    //! A fake machine for the hub: a run of pages of atomic words, and a log of
    //! notifications.
    use super::{Notify, Platform, SharedMem};
    use core::sync::atomic::{AtomicU64, Ordering};

    /// Machine pages `[base, base + pages * 4096)`.
    #[derive(Debug)]
    pub(crate) struct FakeShared {
        pub(crate) base: u64,
        words: std::vec::Vec<AtomicU64>,
    }

    impl FakeShared {
        pub(crate) fn new(base: u64, pages: usize) -> Self {
            Self {
                base,
                words: (0..pages * 512).map(|_| AtomicU64::new(0)).collect(),
            }
        }
        pub(crate) fn word(&self, pa: u64) -> &AtomicU64 {
            assert_eq!(pa % 8, 0, "unaligned {pa:#x}");
            let i = usize::try_from((pa - self.base) / 8).unwrap();
            &self.words[i]
        }
        fn byte(pa: u64) -> (u64, u32) {
            (pa & !7, ((pa & 7) * 8) as u32)
        }
    }

    impl SharedMem for FakeShared {
        fn fetch_or(&self, pa: u64, mask: u64) -> u64 {
            self.word(pa).fetch_or(mask, Ordering::SeqCst)
        }
        fn fetch_and(&self, pa: u64, mask: u64) -> u64 {
            self.word(pa).fetch_and(mask, Ordering::SeqCst)
        }
        fn load(&self, pa: u64) -> u64 {
            self.word(pa).load(Ordering::SeqCst)
        }
        fn store(&self, pa: u64, v: u64) {
            self.word(pa).store(v, Ordering::SeqCst);
        }
        fn load_u8(&self, pa: u64) -> u8 {
            let (w, shift) = Self::byte(pa);
            (self.load(w) >> shift) as u8
        }
        fn store_u8(&self, pa: u64, v: u8) {
            let (w, shift) = Self::byte(pa);
            let word = self.word(w);
            word.fetch_and(!(0xFF << shift), Ordering::SeqCst);
            word.fetch_or(u64::from(v) << shift, Ordering::SeqCst);
        }
    }

    /// Grant-table frames in the same fake pages (each `u32` is half of an atomic word).
    impl crate::grant::TableMem for FakeShared {
        fn load_u32(&self, pa: u64) -> u32 {
            let shift = (pa & 4) * 8;
            (self.word(pa & !7).load(Ordering::SeqCst) >> shift) as u32
        }
        fn store_u32(&self, pa: u64, v: u32) {
            let _ = self.swap_u32(pa, |_| Some(v));
        }
        fn cas_u32(&self, pa: u64, old: u32, new: u32) -> u32 {
            match self.swap_u32(pa, |cur| (cur == old).then_some(new)) {
                Ok(v) | Err(v) => v,
            }
        }
        fn fetch_and_u32(&self, pa: u64, mask: u32) {
            let _ = self.swap_u32(pa, |cur| Some(cur & mask));
        }
    }

    impl FakeShared {
        /// Replaces the `u32` at `pa` with `f(current)` atomically; `Err(current)` if `f`
        /// declines.
        fn swap_u32(&self, pa: u64, f: impl Fn(u32) -> Option<u32>) -> Result<u32, u32> {
            assert_eq!(pa % 4, 0, "unaligned {pa:#x}");
            let shift = (pa & 4) * 8;
            let word = self.word(pa & !7);
            let mut cur = word.load(Ordering::SeqCst);
            loop {
                let old = (cur >> shift) as u32;
                let new = f(old).ok_or(old)?;
                let next = (cur & !(0xFFFF_FFFF << shift)) | (u64::from(new) << shift);
                match word.compare_exchange(cur, next, Ordering::SeqCst, Ordering::SeqCst) {
                    Ok(_) => return Ok(old),
                    Err(seen) => cur = seen,
                }
            }
        }
    }

    /// Records every notification.
    #[derive(Debug)]
    pub(crate) struct FakePlatform {
        pub(crate) mem: FakeShared,
        pub(crate) notes: std::sync::Mutex<std::vec::Vec<Notify>>,
    }

    impl FakePlatform {
        pub(crate) fn new(base: u64, pages: usize) -> Self {
            Self {
                mem: FakeShared::new(base, pages),
                notes: std::sync::Mutex::new(std::vec::Vec::new()),
            }
        }
        pub(crate) fn take_notes(&self) -> std::vec::Vec<Notify> {
            core::mem::take(&mut *self.notes.lock().unwrap())
        }
    }

    impl Platform for FakePlatform {
        type Mem = FakeShared;
        fn shared(&self) -> &FakeShared {
            &self.mem
        }
        fn notify(&self, what: Notify) {
            self.notes.lock().unwrap().push(what);
        }
    }

    /// Tables for `n` domains.
    pub(crate) fn tables(n: usize) -> std::vec::Vec<spin::Mutex<super::DomainEvents>> {
        (0..n)
            .map(|_| spin::Mutex::new(super::DomainEvents::EMPTY))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::fake::{FakePlatform, tables};
    use super::*;
    use shared_abi::shared_info::{PVCLOCK_TSC_STABLE_BIT, PvclockScale};

    const BASE: u64 = 0x10_0000;
    /// Own frame of domain `d`: page `d` of the fake memory.
    fn frame(d: u16) -> u64 {
        BASE + u64::from(d) * 4096
    }

    struct World {
        tables: std::vec::Vec<Mutex<DomainEvents>>,
        p: FakePlatform,
    }

    impl World {
        /// Dom0 and DomUs 1..=domus.
        fn new(domus: u16) -> Self {
            let w = Self {
                tables: tables(8),
                p: FakePlatform::new(BASE, 32),
            };
            w.hub().open_dom0();
            for d in 1..=domus {
                w.hub().open_domu(d, frame(d), 512);
            }
            w
        }
        fn hub(&self) -> Hub<'_, FakePlatform> {
            Hub::new(&self.tables, &self.p)
        }
        fn si(&self, d: u16) -> u64 {
            self.tables[usize::from(d)].lock().shared_info
        }
        fn pending(&self, d: u16, port: u32) -> bool {
            let (off, bit) = port_word(EVTCHN_PENDING, port);
            self.p.mem.load(self.si(d) + off as u64) & bit != 0
        }
        fn set_mask(&self, d: u16, port: u32, on: bool) {
            let (off, bit) = port_word(EVTCHN_MASK, port);
            let pa = self.si(d) + off as u64;
            if on {
                self.p.mem.fetch_or(pa, bit);
            } else {
                self.p.mem.fetch_and(pa, !bit);
            }
        }
        fn upcall(&self, d: u16) -> u8 {
            self.p.mem.load_u8(self.si(d))
        }
        /// What a guest handler does: clear the upcall, swap the selector, clear pending.
        fn handle(&self, d: u16) -> std::vec::Vec<u32> {
            let si = self.si(d);
            self.p.mem.store_u8(si, 0);
            let sel = self.p.mem.fetch_and(si + 8, 0);
            let mut got = std::vec::Vec::new();
            for w in 0..16u64 {
                if sel & (1 << w) == 0 {
                    continue;
                }
                let pend = self.p.mem.load(si + 0x800 + w * 8);
                let mask = self.p.mem.load(si + 0xA00 + w * 8);
                let work = pend & !mask;
                for b in 0..64 {
                    if work & (1 << b) != 0 {
                        got.push((w * 64 + b) as u32);
                        self.p.mem.fetch_and(si + 0x800 + w * 8, !(1 << b));
                    }
                }
            }
            got
        }
        /// Every interdomain port's peer points back at it.
        fn check_consistent(&self) {
            for (d, t) in self.tables.iter().enumerate() {
                let t = t.lock();
                if !t.live() {
                    continue;
                }
                for p in 1..PORTS {
                    if let Port::Interdomain {
                        remote_dom,
                        remote_port,
                    } = t.ports[p]
                    {
                        let back = if usize::from(remote_dom) == d {
                            t.port(remote_port)
                        } else {
                            self.tables[usize::from(remote_dom)]
                                .lock()
                                .port(remote_port)
                        };
                        assert_eq!(
                            back,
                            Port::Interdomain {
                                remote_dom: d as u16,
                                remote_port: p as u32
                            },
                            "d{d} port {p}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn interdomain_channel_delivers_with_the_four_steps() {
        let w = World::new(2);
        let h = w.hub();
        let p1 = h.alloc_unbound(1, 2).unwrap();
        assert_eq!(p1, 1, "port 0 is never allocated");
        assert_eq!(h.status(1, p1), Ok((EVTCHNSTAT_UNBOUND, [2, 0])));
        // Only the named remote may bind.
        assert_eq!(h.bind_interdomain(0, 1, p1), Err(Errno::EINVAL));
        let p2 = h.bind_interdomain(2, 1, p1).unwrap();
        assert_eq!(h.status(2, p2), Ok((EVTCHNSTAT_INTERDOMAIN, [1, p1])));
        assert_eq!(h.status(1, p1), Ok((EVTCHNSTAT_INTERDOMAIN, [2, p2])));
        // The new local port starts pending (Xen's fix-up for early notifications).
        assert!(w.pending(2, p2));
        assert_eq!(w.upcall(2), 1);
        assert_eq!(w.p.take_notes(), [Notify::Upcall(2)]);
        assert_eq!(w.handle(2), [p2]);

        h.send(1, p1).unwrap();
        assert_eq!(w.p.take_notes(), [Notify::Upcall(2)]);
        // Already pending: nothing more.
        h.send(1, p1).unwrap();
        assert!(w.p.take_notes().is_empty());
        assert_eq!(w.handle(2), [p2]);
        // Masked: pending stays set, no upcall, only pollers hear of it.
        w.set_mask(2, p2, true);
        h.send(1, p1).unwrap();
        assert_eq!(w.p.take_notes(), [Notify::Pending(2)]);
        assert_eq!(w.upcall(2), 0);
        assert!(w.pending(2, p2));
        // Unmask re-raises the upcall for the pending port.
        h.unmask(2, p2).unwrap();
        assert_eq!(w.upcall(2), 1);
        assert_eq!(w.p.take_notes(), [Notify::Upcall(2)]);
        assert_eq!(w.handle(2), [p2]);
        // Unmasking an unmasked or idle port does nothing.
        h.unmask(2, p2).unwrap();
        assert!(w.p.take_notes().is_empty());
        // Sending back works too.
        h.send(2, p2).unwrap();
        assert!(w.pending(1, p1));
        w.check_consistent();
    }

    #[test]
    fn selector_already_set_raises_no_second_upcall() {
        let w = World::new(2);
        let h = w.hub();
        let a = h.alloc_unbound(1, 2).unwrap();
        let b = h.alloc_unbound(1, 2).unwrap();
        let pa = h.bind_interdomain(2, 1, a).unwrap();
        let pb = h.bind_interdomain(2, 1, b).unwrap();
        w.handle(2);
        w.p.take_notes();
        h.send(1, a).unwrap();
        h.send(1, b).unwrap();
        assert_eq!(
            w.p.take_notes(),
            [Notify::Upcall(2), Notify::Pending(2)],
            "same selector word"
        );
        let mut got = w.handle(2);
        got.sort_unstable();
        assert_eq!(got, [pa, pb]);
    }

    #[test]
    fn close_unbinds_the_peer_and_clears_pending() {
        let w = World::new(2);
        let h = w.hub();
        let p1 = h.alloc_unbound(1, 2).unwrap();
        let p2 = h.bind_interdomain(2, 1, p1).unwrap();
        assert!(w.pending(2, p2));
        h.close(2, p2).unwrap();
        assert!(!w.pending(2, p2), "a closed port is not left pending");
        assert_eq!(h.status(2, p2), Ok((EVTCHNSTAT_CLOSED, [0, 0])));
        assert_eq!(h.status(1, p1), Ok((EVTCHNSTAT_UNBOUND, [2, 0])));
        // Sending on the unbound end is dropped; the peer may rebind.
        h.send(1, p1).unwrap();
        let again = h.bind_interdomain(2, 1, p1).unwrap();
        assert_eq!(again, p2, "lowest free port");
        assert_eq!(h.close(2, p2), Ok(()));
        assert_eq!(h.close(2, p2), Err(Errno::EINVAL));
        assert_eq!(h.close(2, 0), Err(Errno::EINVAL));
        assert_eq!(h.close(2, MAX_PORTS), Err(Errno::EINVAL));
        assert_eq!(h.send(2, p2), Err(Errno::EINVAL));
        w.check_consistent();
    }

    #[test]
    fn loopback_channel_in_one_domain() {
        let w = World::new(1);
        let h = w.hub();
        let a = h.alloc_unbound(1, 1).unwrap();
        let b = h.bind_interdomain(1, 1, a).unwrap();
        w.handle(1);
        h.send(1, a).unwrap();
        assert_eq!(w.handle(1), [b]);
        h.send(1, b).unwrap();
        assert_eq!(w.handle(1), [a]);
        w.check_consistent();
        h.close(1, a).unwrap();
        assert_eq!(h.status(1, b), Ok((EVTCHNSTAT_UNBOUND, [1, 0])));
    }

    #[test]
    fn virq_timer_binding() {
        let w = World::new(1);
        let h = w.hub();
        assert_eq!(h.bind_virq(1, 1, 0), Err(Errno::EINVAL));
        assert_eq!(h.bind_virq(1, VIRQ_TIMER, 1), Err(Errno::EINVAL));
        // Not bound: the timer is silent.
        h.fire_virq(1, VIRQ_TIMER);
        assert!(w.p.take_notes().is_empty());
        let t = h.bind_virq(1, VIRQ_TIMER, 0).unwrap();
        assert_eq!(h.bind_virq(1, VIRQ_TIMER, 0), Err(Errno::EEXIST));
        assert_eq!(h.status(1, t), Ok((EVTCHNSTAT_VIRQ, [VIRQ_TIMER, 0])));
        assert_eq!(h.send(1, t), Err(Errno::EINVAL), "no sending on a virq");
        h.fire_virq(1, VIRQ_TIMER);
        assert_eq!(w.p.take_notes(), [Notify::Upcall(1)]);
        assert_eq!(w.handle(1), [t]);
        h.close(1, t).unwrap();
        h.fire_virq(1, VIRQ_TIMER);
        assert!(w.p.take_notes().is_empty());
        assert_eq!(h.bind_virq(1, VIRQ_TIMER, 0), Ok(t), "rebindable");
    }

    #[test]
    fn dom0_ports_use_a_private_bitmap() {
        let w = World::new(1);
        let h = w.hub();
        let mut ports = std::vec::Vec::new();
        for _ in 0..3 {
            let u = h.alloc_unbound(1, 0).unwrap();
            ports.push((u, h.bind_interdomain(0, 1, u).unwrap()));
        }
        // Binding marks Dom0's new ports pending.
        let mut out = [0u32; 8];
        assert_eq!(h.take_dom0_pending(&mut out), 3);
        assert_eq!(&out[..3], &[1, 2, 3]);
        assert_eq!(h.take_dom0_pending(&mut out), 0);
        w.p.take_notes();
        // DomU -> Dom0, taken ascending, a few at a time.
        for &(u, _) in ports.iter().rev() {
            h.send(1, u).unwrap();
        }
        assert_eq!(w.p.take_notes(), [Notify::Dom0; 3]);
        let mut two = [0u32; 2];
        assert_eq!(h.take_dom0_pending(&mut two), 2);
        assert_eq!(two, [1, 2]);
        assert_eq!(h.take_dom0_pending(&mut two), 1);
        assert_eq!(two[0], 3);
        // Dom0 -> DomU.
        w.handle(1);
        h.send(0, ports[1].1).unwrap();
        assert_eq!(w.handle(1), [ports[1].0]);
        assert_eq!(w.p.take_notes(), [Notify::Upcall(1)]);
        // Domain 0 cannot bind to itself through the control path (ESRCH there); its
        // closed port leaves the DomU end unbound for domain 0.
        h.close(0, ports[0].1).unwrap();
        assert_eq!(h.status(1, ports[0].0), Ok((EVTCHNSTAT_UNBOUND, [0, 0])));
        w.check_consistent();
    }

    #[test]
    fn teardown_unbinds_peers_and_stops_writes() {
        let w = World::new(3);
        let h = w.hub();
        let u = h.alloc_unbound(1, 0).unwrap();
        let d0 = h.bind_interdomain(0, 1, u).unwrap();
        let u2 = h.alloc_unbound(2, 1).unwrap();
        let p1 = h.bind_interdomain(1, 2, u2).unwrap();
        h.bind_virq(1, VIRQ_TIMER, 0).unwrap();
        let gpfn_pa = frame(20);
        h.place_shared_info(1, 5, gpfn_pa, &VcpuTimeInfo::default())
            .unwrap();
        w.p.take_notes();
        let snapshot: std::vec::Vec<u64> =
            (0..512).map(|i| w.p.mem.load(gpfn_pa + i * 8)).collect();
        assert_eq!(h.teardown(1), Some(frame(1)), "the own frame to free");
        assert_eq!(h.teardown(1), None, "once");
        assert!(!h.alive(1));
        // Peers: unbound with the dead domain as remote; their sends are dropped.
        assert_eq!(h.status(0, d0), Ok((EVTCHNSTAT_UNBOUND, [1, 0])));
        assert_eq!(h.status(2, u2), Ok((EVTCHNSTAT_UNBOUND, [1, 0])));
        h.send(0, d0).unwrap();
        h.send(2, u2).unwrap();
        h.fire_virq(1, VIRQ_TIMER);
        assert!(w.p.take_notes().is_empty());
        // Nothing touched the dead domain's page.
        for i in 0..512 {
            assert_eq!(w.p.mem.load(gpfn_pa + i * 8), snapshot[i as usize]);
        }
        // Every operation on it is ESRCH.
        assert_eq!(h.alloc_unbound(1, 0), Err(Errno::ESRCH));
        assert_eq!(h.alloc_unbound(2, 1), Err(Errno::ESRCH));
        assert_eq!(h.bind_interdomain(2, 1, p1), Err(Errno::ESRCH));
        assert_eq!(h.send(1, p1), Err(Errno::ESRCH));
        assert_eq!(h.param(1, 0), Err(Errno::ESRCH));
        assert!(h.pending_upcall(1).is_none());
        // Reopened (a new domain with the same id) it starts empty.
        h.open_domu(1, frame(1), 512);
        assert_eq!(h.status(1, p1), Ok((EVTCHNSTAT_CLOSED, [0, 0])));
        // Dom0 can close its now-unbound port.
        h.close(0, d0).unwrap();
        w.check_consistent();
    }

    #[test]
    fn shared_info_placement_moves_state_and_writes_pvclock() {
        let w = World::new(2);
        let h = w.hub();
        let u = h.alloc_unbound(1, 2).unwrap();
        let p2 = h.bind_interdomain(2, 1, u).unwrap();
        // An event before placement lands in the own frame.
        assert!(w.pending(2, p2));
        let scale = PvclockScale::for_khz(2_500_000);
        let time = VcpuTimeInfo {
            tsc_timestamp: 1234,
            system_time: 0,
            tsc_to_system_mul: scale.mul,
            tsc_shift: scale.shift,
            flags: PVCLOCK_TSC_STABLE_BIT,
            ..VcpuTimeInfo::default()
        };
        let new = frame(9);
        assert_eq!(
            h.place_shared_info(2, 512, new, &time),
            Err(Errno::EINVAL),
            "beyond RAM"
        );
        h.place_shared_info(2, 7, new, &time).unwrap();
        assert_eq!(w.si(2), new);
        assert!(w.pending(2, p2), "state copied");
        assert_eq!(w.upcall(2), 1);
        let mut raw = [0u8; 32];
        for i in 0..4 {
            raw[i * 8..i * 8 + 8].copy_from_slice(
                &w.p.mem
                    .load(new + VCPU_INFO_TIME as u64 + i as u64 * 8)
                    .to_le_bytes(),
            );
        }
        let t: VcpuTimeInfo = zerocopy::FromBytes::read_from_bytes(&raw[..]).unwrap();
        assert_eq!(t.version % 2, 0, "even when done");
        assert_eq!(
            (t.tsc_timestamp, t.tsc_to_system_mul, t.tsc_shift, t.flags),
            (1234, scale.mul, scale.shift, 1)
        );
        assert!(t.ns_at(1234 + 2_500_000).abs_diff(1_000_000) <= 1);
        // Moving it again: the version keeps growing, the state follows.
        let again = frame(10);
        h.place_shared_info(2, 8, again, &time).unwrap();
        assert!(w.pending(2, p2));
        let v2 = w.p.mem.load(again + VCPU_INFO_TIME as u64) as u32;
        assert!(v2 > t.version && v2.is_multiple_of(2));
        assert_eq!(
            h.inspect(2, DomainEvents::placed_gpfn),
            Some(Some(8)),
            "recorded"
        );
        assert_eq!(
            h.place_shared_info(0, 1, again, &time),
            Err(Errno::ESRCH),
            "not for Dom0"
        );
    }

    #[test]
    fn params_and_callback_vector() {
        let w = World::new(1);
        let h = w.hub();
        assert_eq!(h.param(1, HVM_PARAM_CALLBACK_IRQ), Ok(0));
        assert_eq!(h.param(1, 99), Err(Errno::EINVAL));
        for bad in [0x1F, 1 << 56 | 0x40, 2 << 56 | 1 << 8 | 0x40, 3 << 56] {
            assert_eq!(h.set_callback(1, bad), Err(Errno::EINVAL), "{bad:#x}");
        }
        h.set_callback(1, shared_abi::hvm::callback_vector(0xF3))
            .unwrap();
        assert_eq!(h.pending_upcall(1), None, "nothing pending");
        let u = h.alloc_unbound(1, 1).unwrap();
        h.bind_interdomain(1, 1, u).unwrap();
        assert_eq!(h.pending_upcall(1), Some(0xF3));
        assert!(h.upcall_pending(1));
        h.set_callback(1, 0).unwrap();
        assert_eq!(h.pending_upcall(1), None, "upcalls off");

        assert_eq!(h.set_builder_param(1, HVM_PARAM_STORE_PFN, 511), Ok(()));
        assert_eq!(
            h.set_builder_param(1, HVM_PARAM_CONSOLE_PFN, 512),
            Err(Errno::EINVAL)
        );
        assert_eq!(
            h.set_builder_param(1, HVM_PARAM_STORE_EVTCHN, 0),
            Err(Errno::EINVAL)
        );
        assert_eq!(
            h.set_builder_param(1, HVM_PARAM_CONSOLE_EVTCHN, 1023),
            Ok(())
        );
        assert_eq!(
            h.set_builder_param(1, HVM_PARAM_CALLBACK_IRQ, 0),
            Err(Errno::EINVAL)
        );
        assert_eq!(
            h.set_builder_param(5, HVM_PARAM_STORE_PFN, 1),
            Err(Errno::ESRCH)
        );
        assert_eq!(
            h.set_builder_param(0, HVM_PARAM_STORE_PFN, 1),
            Err(Errno::ESRCH)
        );
        assert_eq!(h.param(1, HVM_PARAM_STORE_PFN), Ok(511));
        assert_eq!(h.param(1, HVM_PARAM_CONSOLE_EVTCHN), Ok(1023));
    }

    #[test]
    fn ports_run_out_with_enospc() {
        let w = World::new(1);
        let h = w.hub();
        for p in 1..MAX_PORTS {
            assert_eq!(h.alloc_unbound(1, 0), Ok(p));
        }
        assert_eq!(h.alloc_unbound(1, 0), Err(Errno::ENOSPC));
        assert_eq!(h.bind_virq(1, VIRQ_TIMER, 0), Err(Errno::ENOSPC));
        h.close(1, 77).unwrap();
        assert_eq!(h.alloc_unbound(1, 0), Ok(77));
        assert_eq!(h.alloc_unbound(7, 0), Err(Errno::ESRCH), "closed domain");
        assert_eq!(h.alloc_unbound(1, 5), Err(Errno::ESRCH), "no such remote");
        assert_eq!(
            h.alloc_unbound(1, 500),
            Err(Errno::ESRCH),
            "beyond the table"
        );
    }

    #[test]
    fn concurrent_sends_closes_and_teardowns_stay_consistent() {
        let w = std::sync::Arc::new(World::new(4));
        let mut threads = std::vec::Vec::new();
        for d in 1..=4u16 {
            let w = w.clone();
            threads.push(std::thread::spawn(move || {
                let h = w.hub();
                let peer = d % 4 + 1;
                for round in 0..300u32 {
                    if let Ok(u) = h.alloc_unbound(d, peer) {
                        let _ = h.bind_interdomain(peer, d, u);
                    }
                    if let Ok(u) = h.alloc_unbound(d, 0) {
                        let _ = h.bind_interdomain(0, d, u);
                    }
                    for p in 1..12 {
                        let _ = h.send(d, p);
                        let _ = h.send(0, p);
                    }
                    let victim = 1 + (round * 7 + u32::from(d)) % 11;
                    let _ = h.close(d, victim);
                    let _ = h.close(0, victim + 3);
                    if d == 3 && round == 150 {
                        h.teardown(3);
                    }
                    let mut out = [0u32; 16];
                    h.take_dom0_pending(&mut out);
                }
            }));
        }
        for t in threads {
            t.join().unwrap();
        }
        w.check_consistent();
    }

    proptest::proptest! {
        #[test]
        fn garbage_operations_never_panic(ops in proptest::collection::vec(
            (0u8..10, 0u16..12, 0u16..12, proptest::num::u32::ANY, proptest::num::u64::ANY), 1..60)
        ) {
            let w = World::new(3);
            let h = w.hub();
            for (op, a, b, port, v) in ops {
                let port = if port % 3 == 0 { port } else { port % 40 };
                match op {
                    0 => { let _ = h.alloc_unbound(a, b); }
                    1 => { let _ = h.bind_interdomain(a, b, port); }
                    2 => { let _ = h.bind_virq(a, port % 2, (v % 2) as u32); }
                    3 => { let _ = h.close(a, port); }
                    4 => { let _ = h.send(a, port); }
                    5 => { let _ = h.status(a, port); }
                    6 => { let _ = h.unmask(a, port); }
                    7 => { let _ = h.set_builder_param(a, port % 20, v); let _ = h.set_callback(a, v); }
                    8 => { h.fire_virq(a, port % 2); let mut o = [0; 3]; h.take_dom0_pending(&mut o); }
                    _ => { if v % 5 == 0 { h.teardown(a); } else { let _ = h.param(a, port); } }
                }
            }
            w.check_consistent();
        }
    }
}
