//! One DomU vCPU: its initial PVH state and the handling of every #VMEXIT.
//!
//! Portable: the machine is reached only through [`Host`], so each exit path is tested on
//! the host against a fake VMCB and fake memory. The world switch itself is in
//! `arch::x86_64::svm`.

use crate::control::{Action, ControlCall, Dom0Evtchn};
use crate::evtchn::{Hub, Platform};
use crate::exit::{IoAccess, NpfInfo, SvmExit};
use crate::grant::{Grants, TableMem};
use crate::guest_walk::{self, PagingMode};
use crate::hypercall::{self, GuestEnv, HypercallArgs, Outcome};
use crate::mm::PhysMemory;
use crate::mm::npt::{Access, Ownership};
use crate::mm::npt::{Npt, copy};
use crate::policy::{self, CpuidCtx, CpuidRegs, MsrResult, msr};
use crate::runstate::{Runstate, State as RunstateKind};
use crate::vmcb::{
    EventInj, INT_CTL_V_IGN_TPR, INT_CTL_V_INTR_MASKING, INT_CTL_V_INTR_PRIO_MASK, INT_CTL_V_IRQ,
    Intercepts, NESTED_CTL_NP_ENABLE, Vmcb, VmcbSegment,
};
use crate::window::MapKind;
use shared_abi::Errno;
use shared_abi::control::{CONTROL_HYPERCALL, GrantCopySegment, MAX_BUFFER};
use shared_abi::cpuid::XEN_HYPERCALL_MSR;
use shared_abi::sched::ShutdownReason;
use shared_abi::shared_info::VcpuTimeInfo;
use zerocopy::FromBytes;

/// Guest general-purpose registers the world switch saves (RAX and RSP live in the VMCB).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct GuestRegs {
    /// RBX.
    pub rbx: u64,
    /// RCX.
    pub rcx: u64,
    /// RDX.
    pub rdx: u64,
    /// RSI.
    pub rsi: u64,
    /// RDI.
    pub rdi: u64,
    /// RBP.
    pub rbp: u64,
    /// R8.
    pub r8: u64,
    /// R9.
    pub r9: u64,
    /// R10.
    pub r10: u64,
    /// R11.
    pub r11: u64,
    /// R12.
    pub r12: u64,
    /// R13.
    pub r13: u64,
    /// R14.
    pub r14: u64,
    /// R15.
    pub r15: u64,
}
// The world-switch stub addresses these by offset.
const _: () = assert!(core::mem::offset_of!(GuestRegs, rsi) == 24);
const _: () = assert!(core::mem::offset_of!(GuestRegs, r15) == 104);

/// The machine services an exit handler needs.
pub trait Host: crate::control::ControlSource {
    /// Physical memory (guest RAM is reached through the domain's NPT).
    type Mem: PhysMemory;
    /// The physical memory.
    fn mem(&mut self) -> &mut Self::Mem;
    /// The physical memory, for reading.
    fn phys(&self) -> &Self::Mem;
    /// Executes CPUID on the host.
    fn cpuid(&self, leaf: u32, subleaf: u32) -> CpuidRegs;
    /// The host TSC.
    fn rdtsc(&self) -> u64;
    /// TSC frequency in kHz.
    fn tsc_khz(&self) -> u32;
    /// Emits console output of the domain.
    fn console(&mut self, bytes: &[u8]);
    /// Notes a denied or unusual guest action (rate-limited by the caller).
    fn note(&mut self, what: Note);
    /// Pins frame `gfn` of `domid` for foreign-window `slot` and returns its machine
    /// address (`EBUSY` if the slot is taken, `ESRCH` no such domain, `EINVAL` not its RAM).
    fn foreign_acquire(&mut self, slot: u64, domid: u32, gfn: u64) -> Result<u64, Errno>;
    /// Releases foreign-window `slot`, which holds a `ForeignMap` mapping (freeing the frame
    /// if its domain has ended).
    fn foreign_release(&mut self, slot: u64);
    /// What foreign-window `slot` holds (`None`: empty or outside the window).
    fn window_kind(&self, slot: u64) -> Option<MapKind>;
    /// Pins grant `gref` of DomU `domid` for domain 0 (writable if `write`) for
    /// foreign-window `slot` and returns the granted frame's machine address (errors as
    /// [`shared_abi::control::ControlOp::GrantMap`]).
    fn grant_acquire(
        &mut self,
        slot: u64,
        domid: u16,
        gref: u32,
        write: bool,
    ) -> Result<u64, Errno>;
    /// Releases foreign-window `slot`, which holds a grant mapping: unpins the grant, or
    /// frees the frame with its last holder if the granter has ended.
    fn grant_release(&mut self, slot: u64);
    /// One `GrantCopy` segment over the staged buffer `buf` (segments in its first
    /// `data_start` bytes); returns its `GNTST_*` status.
    fn grant_copy(&mut self, seg: &GrantCopySegment, buf: &mut [u8], data_start: usize) -> i16;
    /// Creates an empty, paused DomU with `mem_mib` MiB (see
    /// [`shared_abi::control::ControlOp::DomainCreate`]) and returns its domid.
    fn create_domain(&mut self, mem_mib: u32, name: &str) -> Result<u32, Errno>;
    /// Sets the PVH entry state of DomU `domid`, which must not have run yet.
    fn set_entry(&mut self, domid: u32, entry: u64, start_info: u64) -> Result<(), Errno>;
    /// Pauses, unpauses or destroys DomU `domid` (see [`crate::lifecycle`]).
    fn lifecycle(&mut self, op: crate::control::LifecycleOp, domid: u32) -> Result<(), Errno>;
    /// Whether `[gpa, gpa + len)` lies in domain 0's RAM (not its MMIO).
    fn is_dom0_ram(&self, gpa: u64, len: u64) -> bool;
    /// Domain 0's access to a port the microvisor proxies (the PCI configuration ports):
    /// `Some(value read)` if handled, `None` to deny it like any intercepted port.
    fn dom0_port(&mut self, port: u16, size: u8, is_in: bool, value: u32) -> Option<u32>;
    /// The machine behind the event channels.
    type Events: Platform;
    /// Every domain's event channels.
    fn hub(&self) -> Hub<'_, Self::Events>;
    /// The memory grant tables live in.
    type Table: TableMem;
    /// Every DomU's grant table.
    fn grants(&self) -> Grants<'_, Self::Table>;
    /// System time: nanoseconds since the microvisor booted.
    fn now_ns(&self) -> u64;
    /// The pvclock record a `shared_info` page gets.
    fn time_info(&self) -> VcpuTimeInfo;
    /// The exiting domain's event counter (changes whenever an event reaches it).
    fn event_seq(&self) -> u64;
    /// Sets or cancels the exiting vCPU's single-shot timer (absolute ns).
    fn set_timer(&mut self, deadline_ns: Option<u64>);
}

/// Guest actions worth a (rate-limited) log line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Note {
    /// A port access was denied.
    PortDenied {
        /// Port.
        port: u16,
        /// Direction.
        is_in: bool,
    },
    /// An MSR access raised #GP.
    MsrDenied {
        /// MSR.
        msr: u32,
        /// Direction.
        write: bool,
    },
    /// An SVM instruction or other forbidden instruction raised #UD.
    InstructionDenied(SvmExit),
    /// Domain 0 touched guest-physical memory that is not mapped for it (the microvisor's
    /// or a DomU's RAM) and got #GP.
    Dom0Fault {
        /// The fault.
        info: NpfInfo,
        /// Guest RIP.
        rip: u64,
    },
}

/// What the scheduler does after an exit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitAction {
    /// Re-enter the guest.
    Resume,
    /// Re-enter later: let other vCPUs on this pCPU run first.
    Yield,
    /// The vCPU halted or blocked; it stays off the run queue until what it waits for
    /// arrives (the scheduler checks under its lock that it has not already).
    Block(BlockOn),
    /// A physical interrupt is pending: take it, then re-enter.
    HostInterrupt,
    /// The domain asked to shut down.
    Shutdown(ShutdownReason),
    /// The domain broke the rules: crash it.
    Crash(CrashReason),
}

/// What a blocking vCPU waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockOn {
    /// An upcall: HLT with interrupts enabled, `SCHEDOP_block`.
    Upcall,
    /// `SCHEDOP_poll`: any event reaching the domain after the event counter read `seq`,
    /// or `deadline_ns` (0: none).
    Poll {
        /// The domain's event counter when the call began.
        seq: u64,
        /// Absolute ns of system time, or 0.
        deadline_ns: u64,
    },
    /// Nothing: HLT with interrupts disabled (only Dom0's requests move the vCPU).
    Forever,
}

/// Programs the virtual interrupt for the next VMRUN: the callback vector while an upcall
/// is pending (`V_IRQ`, top priority, TPR ignored), nothing otherwise. The CPU clears
/// `V_IRQ` when it delivers the interrupt, so this runs before every entry.
pub fn set_upcall_irq(vmcb: &mut Vmcb, vector: Option<u8>) {
    let c = &mut vmcb.control;
    c.int_ctl &= !(INT_CTL_V_IRQ | INT_CTL_V_IGN_TPR | INT_CTL_V_INTR_PRIO_MASK);
    if let Some(v) = vector {
        c.int_ctl |= INT_CTL_V_IRQ | INT_CTL_V_IGN_TPR | INT_CTL_V_INTR_PRIO_MASK;
        c.int_vector = u32::from(v);
    }
}

/// Why a domain was crashed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrashReason {
    /// It touched guest-physical memory it does not own.
    NestedPageFault {
        /// The fault.
        info: NpfInfo,
        /// Guest RIP.
        rip: u64,
    },
    /// It triple-faulted.
    TripleFault {
        /// Guest RIP at the shutdown.
        rip: u64,
    },
    /// VMRUN refused its state (VMEXIT_INVALID).
    InvalidState,
    /// An exit the microvisor never enabled.
    UnexpectedExit(u64),
}

impl core::fmt::Display for CrashReason {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            CrashReason::NestedPageFault { info, rip } => {
                write!(f, "nested page fault: {info} at rip {rip:#x}")
            }
            CrashReason::TripleFault { rip } => write!(f, "triple fault at rip {rip:#x}"),
            CrashReason::InvalidState => {
                write!(f, "VMRUN refused the guest state (VMEXIT_INVALID)")
            }
            CrashReason::UnexpectedExit(c) => write!(f, "unexpected exit code {c:#x}"),
        }
    }
}

/// A vCPU of a DomU or of domain 0.
#[derive(Debug)]
pub struct Vcpu {
    /// Domain id.
    pub domid: u16,
    /// Domain 0: may use the control hypercall, sees the Dom0 CPUID, and an access to
    /// unmapped memory is a #GP in the guest rather than a crash of the domain.
    pub privileged: bool,
    /// vCPU number in the domain.
    pub id: u32,
    /// The domain's nested page table.
    pub npt: Npt,
    /// Saved general registers.
    pub regs: GuestRegs,
    /// Guest XCR0 (the world switch loads it; XSETBV does not exit under TCG).
    pub xcr0: u64,
    /// The guest's PAT (QEMU 7.2 does not load G_PAT; kept for reads).
    pub pat: u64,
    /// Runstate accounting and the guest's registered runstate area.
    pub runstate: Runstate,
}

/// Power-on PAT value.
pub const DEFAULT_PAT: u64 = 0x0007_0406_0007_0406;

impl Vcpu {
    /// vCPU 0 of a domain, with power-on XCR0 and PAT, entering with `regs`.
    pub fn new(domid: u16, privileged: bool, npt: Npt, regs: GuestRegs) -> Self {
        Self {
            domid,
            privileged,
            id: 0,
            npt,
            regs,
            xcr0: 1,
            pat: DEFAULT_PAT,
            runstate: Runstate::new(RunstateKind::Runnable, 0),
        }
    }

    /// The vCPU enters runstate `to` at system time `now_ns` (a scheduling point, with the
    /// domain's lock held); the registered area, if any, is written, translated afresh
    /// through the guest's page tables (the paging registers in `vmcb`) and the NPT.
    pub fn runstate_change(
        &mut self,
        vmcb: &Vmcb,
        mem: &mut impl PhysMemory,
        to: RunstateKind,
        now_ns: u64,
    ) {
        self.runstate.change(to, now_ns);
        let (npt, mode) = (self.npt, Self::paging_mode(vmcb));
        self.runstate
            .publish(mem, |mem, la| writable_ram_page(mem, &npt, &mode, la));
    }
}

/// The machine address of the frame behind linear page `la` (4 KiB aligned) if the guest
/// maps it writable (by its own page tables in `mode`) and it is the domain's own writable
/// RAM in `npt`.
pub fn writable_ram_page<M: PhysMemory>(
    mem: &M,
    npt: &Npt,
    mode: &PagingMode,
    la: u64,
) -> Option<u64> {
    let gpa = guest_walk::linear_to_gpa(mode, la, true, |pte_gpa| {
        let mut b = [0u8; 8];
        copy::from_gpa(npt, mem, pte_gpa, &mut b)
            .ok()
            .map(|()| u64::from_le_bytes(b))
    })
    .ok()?;
    npt.ram_page(mem, gpa)
}

/// The permission maps a VMCB points at.
#[derive(Clone, Copy, Debug)]
pub struct PermissionMaps {
    /// I/O permission map (12 KiB).
    pub iopm: u64,
    /// MSR permission map (8 KiB).
    pub msrpm: u64,
}

/// Fills a VMCB for a PVH entry: 32-bit protected mode, paging off, `EBX` = start info.
/// `privileged` selects domain 0's intercepts and direct physical interrupts.
pub fn init_pvh_vmcb(
    vmcb: &mut Vmcb,
    npt: &Npt,
    asid: u32,
    maps: PermissionMaps,
    entry: u32,
    start_info_gpa: u64,
    privileged: bool,
) -> GuestRegs {
    let c = &mut vmcb.control;
    c.set_intercepts(if privileged {
        Intercepts::DOM0
    } else {
        Intercepts::DOMU
    });
    // Intercept #MC so a machine check in the guest reaches the microvisor? Under TCG none
    // arrive; no exception is intercepted.
    c.exceptions = 0;
    c.iopm_base = maps.iopm;
    c.msrpm_base = maps.msrpm;
    c.asid = asid;
    c.tlb_control = 1;
    // DomUs: physical interrupts exit to the microvisor whatever the guest's IF. Dom0:
    // they are delivered to it directly, masked by its own IF.
    c.int_ctl = if privileged {
        0
    } else {
        INT_CTL_V_INTR_MASKING
    };
    c.nested_ctl = NESTED_CTL_NP_ENABLE;
    c.nested_cr3 = npt.root();
    let s = &mut vmcb.save;
    s.cs = VmcbSegment::FLAT_CODE32;
    for seg in [&mut s.ds, &mut s.es, &mut s.ss, &mut s.fs, &mut s.gs] {
        *seg = VmcbSegment::FLAT_DATA32;
    }
    s.tr = VmcbSegment::TSS32_BUSY;
    s.ldtr = VmcbSegment::default();
    s.gdtr = VmcbSegment::default();
    s.idtr = VmcbSegment::default();
    s.cpl = 0;
    s.efer = policy::efer::SVME;
    s.cr0 = 0x11; // PE | ET
    s.cr4 = 0;
    s.cr3 = 0;
    s.dr6 = 0xFFFF_0FF0;
    s.dr7 = 0x400;
    s.rflags = 0x2;
    s.rip = u64::from(entry);
    s.rsp = 0;
    s.rax = 0;
    s.g_pat = DEFAULT_PAT;
    GuestRegs {
        rbx: start_info_gpa,
        ..GuestRegs::default()
    }
}

/// RFLAGS.IF.
const RFLAGS_IF: u64 = 1 << 9;

fn advance(vmcb: &mut Vmcb, len: u64) {
    vmcb.save.rip = vmcb.save.rip.wrapping_add(len);
    vmcb.control.int_state = 0;
}

fn inject(vmcb: &mut Vmcb, event: EventInj) {
    vmcb.control.event_inj = event.encode();
}

/// Guest memory as seen by a hypercall: linear addresses through the guest's page tables,
/// then guest-physical through the NPT.
struct CallEnv<'a, H: Host> {
    host: &'a mut H,
    domid: u16,
    npt: Npt,
    mode: PagingMode,
    runstate: &'a mut Runstate,
}

impl<H: Host> CallEnv<'_, H> {
    fn for_each_page(
        &mut self,
        la: u64,
        len: usize,
        write: bool,
        mut f: impl FnMut(&mut H::Mem, &Npt, u64, core::ops::Range<usize>) -> Result<(), Errno>,
    ) -> Result<(), Errno> {
        la.checked_add(len as u64).ok_or(Errno::EFAULT)?;
        let mut done = 0;
        while done < len {
            let at = la + done as u64;
            let n = ((0x1000 - (at & 0xFFF)) as usize).min(len - done);
            let npt = self.npt;
            let mem = self.host.mem();
            let gpa = guest_walk::linear_to_gpa(&self.mode, at, write, |pte_gpa| {
                let mut b = [0u8; 8];
                copy::from_gpa(&npt, mem, pte_gpa, &mut b)
                    .ok()
                    .map(|()| u64::from_le_bytes(b))
            })
            .map_err(|_| Errno::EFAULT)?;
            f(mem, &npt, gpa, done..done + n)?;
            done += n;
        }
        Ok(())
    }
}

impl<H: Host> GuestEnv for CallEnv<'_, H> {
    fn copy_from_guest(&mut self, la: u64, buf: &mut [u8]) -> Result<(), Errno> {
        self.for_each_page(la, buf.len(), false, |mem, npt, gpa, r| {
            copy::from_gpa(npt, mem, gpa, &mut buf[r]).map_err(|_| Errno::EFAULT)
        })
    }

    fn copy_to_guest(&mut self, la: u64, buf: &[u8]) -> Result<(), Errno> {
        // Validate every page before writing any, so a fault leaves guest memory untouched.
        self.for_each_page(la, buf.len(), true, |mem, npt, gpa, _| {
            match npt.translate(mem, gpa) {
                Some((_, true)) => Ok(()),
                _ => Err(Errno::EFAULT),
            }
        })?;
        self.for_each_page(la, buf.len(), true, |mem, npt, gpa, r| {
            copy::to_gpa(npt, mem, gpa, &buf[r]).map_err(|_| Errno::EFAULT)
        })
    }

    fn console_write(&mut self, bytes: &[u8]) {
        self.host.console(bytes);
    }

    type Events = H::Events;

    fn domid(&self) -> u16 {
        self.domid
    }

    fn hub(&self) -> Hub<'_, H::Events> {
        self.host.hub()
    }

    type Table = H::Table;

    fn grants(&self) -> Grants<'_, H::Table> {
        self.host.grants()
    }

    fn now_ns(&self) -> u64 {
        self.host.now_ns()
    }

    fn time_info(&self) -> VcpuTimeInfo {
        self.host.time_info()
    }

    fn event_seq(&self) -> u64 {
        self.host.event_seq()
    }

    fn set_timer(&mut self, deadline_ns: Option<u64>) {
        self.host.set_timer(deadline_ns);
    }

    fn ram_frame(&mut self, gpfn: u64) -> Option<u64> {
        let gpa = gpfn.checked_mul(0x1000)?;
        self.npt.ram_page(self.host.mem(), gpa)
    }

    fn register_runstate(&mut self, la: u64) {
        self.runstate.set_area(Some(la));
        let (npt, mode) = (self.npt, self.mode);
        self.runstate.publish(self.host.mem(), |mem, page| {
            writable_ram_page(mem, &npt, &mode, page)
        });
    }
}

impl Vcpu {
    fn paging_mode(vmcb: &Vmcb) -> PagingMode {
        PagingMode {
            cr0: vmcb.save.cr0,
            cr3: vmcb.save.cr3,
            cr4: vmcb.save.cr4,
            efer: vmcb.save.efer,
        }
    }

    /// Handles the exit recorded in `vmcb`.
    pub fn handle_exit(&mut self, vmcb: &mut Vmcb, host: &mut impl Host) -> ExitAction {
        let code = vmcb.control.exit_code;
        let exit = match SvmExit::try_from(code) {
            Ok(e) => e,
            Err(code) => return ExitAction::Crash(CrashReason::UnexpectedExit(code)),
        };
        match exit {
            SvmExit::Vmmcall => self.hypercall(vmcb, host),
            SvmExit::Cpuid => {
                self.cpuid(vmcb, host);
                ExitAction::Resume
            }
            SvmExit::Msr => self.msr(vmcb, host),
            SvmExit::Ioio => self.port_io(vmcb, host),
            SvmExit::Hlt => {
                advance(vmcb, 1);
                // With interrupts off only an NMI would end the halt, and none comes.
                ExitAction::Block(if vmcb.save.rflags & RFLAGS_IF != 0 {
                    BlockOn::Upcall
                } else {
                    BlockOn::Forever
                })
            }
            SvmExit::Intr | SvmExit::Nmi | SvmExit::Smi | SvmExit::Init => {
                ExitAction::HostInterrupt
            }
            SvmExit::Invd => {
                advance(vmcb, 2);
                ExitAction::Resume
            }
            SvmExit::Vmrun
            | SvmExit::Vmload
            | SvmExit::Vmsave
            | SvmExit::Stgi
            | SvmExit::Clgi
            | SvmExit::Skinit
            | SvmExit::Invlpga
            | SvmExit::Monitor
            | SvmExit::Mwait
            | SvmExit::Xsetbv
            | SvmExit::Icebp => {
                host.note(Note::InstructionDenied(exit));
                inject(vmcb, EventInj::UD);
                ExitAction::Resume
            }
            SvmExit::Shutdown => ExitAction::Crash(CrashReason::TripleFault { rip: vmcb.save.rip }),
            SvmExit::Npf => {
                let info = NpfInfo::decode(vmcb.control.exit_info1, vmcb.control.exit_info2);
                let rip = vmcb.save.rip;
                if self.privileged {
                    // Dom0 is the machine's OS: a stray access (say, root reading
                    // /dev/mem) is its own fault, delivered as #GP without touching RIP.
                    host.note(Note::Dom0Fault { info, rip });
                    inject(vmcb, EventInj::GP0);
                    ExitAction::Resume
                } else {
                    ExitAction::Crash(CrashReason::NestedPageFault { info, rip })
                }
            }
            SvmExit::Invalid => ExitAction::Crash(CrashReason::InvalidState),
            SvmExit::Exception(_) | SvmExit::Vintr | SvmExit::TaskSwitch => {
                ExitAction::Crash(CrashReason::UnexpectedExit(code))
            }
        }
    }

    fn hypercall(&mut self, vmcb: &mut Vmcb, host: &mut impl Host) -> ExitAction {
        if vmcb.save.rax == CONTROL_HYPERCALL {
            advance(vmcb, 3);
            vmcb.save.rax = match self.control(vmcb, host) {
                Ok(v) => v as u64,
                Err(e) => e.to_ret() as u64,
            };
            return ExitAction::Resume;
        }
        let r = &self.regs;
        let call = HypercallArgs {
            nr: vmcb.save.rax,
            args: [r.rdi, r.rsi, r.rdx, r.r10, r.r8],
            cpl: vmcb.save.cpl,
        };
        let mut env = CallEnv {
            host,
            domid: self.domid,
            npt: self.npt,
            mode: Self::paging_mode(vmcb),
            runstate: &mut self.runstate,
        };
        let outcome = hypercall::dispatch(&mut env, call);
        advance(vmcb, 3);
        match outcome {
            Outcome::Return(v) => {
                vmcb.save.rax = v as u64;
                ExitAction::Resume
            }
            Outcome::Yield => {
                vmcb.save.rax = 0;
                ExitAction::Yield
            }
            Outcome::Shutdown(reason) => ExitAction::Shutdown(reason),
            Outcome::Block => {
                vmcb.save.rax = 0;
                ExitAction::Block(BlockOn::Upcall)
            }
            Outcome::Poll { seq, deadline_ns } => {
                vmcb.save.rax = 0;
                ExitAction::Block(BlockOn::Poll { seq, deadline_ns })
            }
        }
    }

    /// The control hypercall: `RDI` op, `RSI` buffer GPA, `RDX` length, `R10` argument,
    /// `R8` version. The buffer is checked writable as a whole before anything is written.
    fn control<H: Host>(&mut self, vmcb: &mut Vmcb, host: &mut H) -> Result<i64, Errno> {
        let call = ControlCall {
            op: self.regs.rdi,
            buf_len: self.regs.rdx,
            arg: self.regs.r10,
            version: self.regs.r8,
            privileged: self.privileged,
            cpl: vmcb.save.cpl,
        };
        let gpa = self.regs.rsi;
        let npt = self.npt;
        let mut out = [0u8; MAX_BUFFER];
        // Domain 0's NPT also maps its devices: a buffer must be its RAM, or the microvisor
        // would read or write device registers on its behalf.
        let ram = |len: u64| !self.privileged || host.is_dom0_ram(gpa, len);
        let buffer_ok = ram(call.buf_len);
        let phys = host.phys();
        let read_input = |buf: &mut [u8]| {
            if !buffer_ok {
                return Err(Errno::EFAULT);
            }
            copy::from_gpa(&npt, phys, gpa, buf).map_err(|_| Errno::EFAULT)
        };
        // The whole buffer is Dom0's writable RAM, checked before anything is written.
        let writable = |npt: &Npt, host: &mut H| -> Result<(), Errno> {
            if !buffer_ok {
                return Err(Errno::EFAULT);
            }
            let end = gpa.checked_add(call.buf_len).ok_or(Errno::EFAULT)?;
            let mut page = gpa & !0xFFF;
            while page < end {
                match npt.translate(host.mem(), page) {
                    Some((_, true)) => page += 0x1000,
                    _ => return Err(Errno::EFAULT),
                }
            }
            Ok(())
        };
        let action = crate::control::dispatch(&call, &*host, read_input, &mut out)?;
        match action {
            Action::Reply { ret, len } => {
                writable(&self.npt, host)?;
                copy::to_gpa(&self.npt, host.mem(), gpa, &out[..len]).map_err(|_| Errno::EFAULT)?;
                Ok(ret)
            }
            Action::TakePending { max } => {
                // Checked first: taken ports are cleared, so they must reach the buffer.
                writable(&self.npt, host)?;
                let mut ports = [0u32; MAX_BUFFER / 4];
                let n = host
                    .hub()
                    .take_dom0_pending(&mut ports[..max.min(MAX_BUFFER / 4)]);
                for (i, p) in ports[..n].iter().enumerate() {
                    out[i * 4..i * 4 + 4].copy_from_slice(&p.to_le_bytes());
                }
                copy::to_gpa(&self.npt, host.mem(), gpa, &out[..n * 4])
                    .map_err(|_| Errno::EFAULT)?;
                Ok(n as i64)
            }
            Action::Evtchn(op) => {
                let hub = host.hub();
                match op {
                    Dom0Evtchn::AllocUnbound { domid } => hub.alloc_unbound(domid, 0),
                    Dom0Evtchn::Bind { domid, port } => hub.bind_interdomain(0, domid, port),
                    Dom0Evtchn::Send { port } => hub.send(0, port).map(|()| 0),
                    Dom0Evtchn::Close { port } => hub.close(0, port).map(|()| 0),
                }
                .map(i64::from)
            }
            Action::SetParam {
                domid,
                index,
                value,
            } => host
                .hub()
                .set_builder_param(domid, index, value)
                .map(|()| 0),
            Action::Map { slot, domid, gfn } => {
                let window = host.host_info().foreign_window_gpa;
                let hpa = host.foreign_acquire(slot, domid, gfn)?;
                let at = window + slot * 0x1000;
                match self.npt.map_4k(
                    host.mem(),
                    at,
                    hpa,
                    Access::ReadWriteExec,
                    Ownership::Foreign,
                ) {
                    Ok(()) => Ok(0),
                    Err(_) => {
                        host.foreign_release(slot);
                        Err(Errno::ENOMEM)
                    }
                }
            }
            Action::Lifecycle { op, domid } => host.lifecycle(op, domid).map(|()| 0),
            Action::Create { mem_mib, name } => {
                let name = shared_abi::control::fixed_str(&name).ok_or(Errno::EINVAL)?;
                host.create_domain(mem_mib, name).map(i64::from)
            }
            Action::SetEntry {
                domid,
                entry,
                start_info,
            } => host.set_entry(domid, entry, start_info).map(|()| 0),
            Action::Unmap { slot } | Action::GrantUnmap { slot } => {
                let want = if matches!(action, Action::Unmap { .. }) {
                    MapKind::Foreign
                } else {
                    MapKind::Grant
                };
                match host.window_kind(slot) {
                    None => return Err(Errno::ENOENT),
                    Some(kind) if kind != want => return Err(Errno::EINVAL),
                    Some(_) => {}
                }
                let window = host.host_info().foreign_window_gpa;
                if let Some((_, flush)) = self.npt.unmap_4k(host.mem(), window + slot * 0x1000) {
                    // Domain 0 runs only on this pCPU and is stopped in this exit: it
                    // executes nothing before its next VMRUN, which flushes its TLB. So no
                    // stale translation survives the release below, which may hand the
                    // frame back to its granter or to the pool.
                    vmcb.control.tlb_control = 1;
                    flush.flushed();
                }
                match want {
                    MapKind::Foreign => host.foreign_release(slot),
                    MapKind::Grant => host.grant_release(slot),
                }
                Ok(0)
            }
            Action::GrantMap {
                slot,
                domid,
                gref,
                write,
            } => {
                let window = host.host_info().foreign_window_gpa;
                let hpa = host.grant_acquire(slot, domid, gref, write)?;
                let access = if write {
                    Access::ReadWriteExec
                } else {
                    Access::ReadExec
                };
                let at = window + slot * 0x1000;
                match self
                    .npt
                    .map_4k(host.mem(), at, hpa, access, Ownership::Foreign)
                {
                    Ok(()) => Ok(0),
                    Err(_) => {
                        host.grant_release(slot);
                        Err(Errno::ENOMEM)
                    }
                }
            }
            Action::GrantCopy { count, len } => {
                // The whole buffer is written back (statuses and data): checked first.
                writable(&self.npt, host)?;
                let buf = &mut out[..len];
                copy::from_gpa(&self.npt, host.phys(), gpa, buf).map_err(|_| Errno::EFAULT)?;
                let seg_size = size_of::<GrantCopySegment>();
                let data_start = count * seg_size;
                let mut ok = 0;
                for i in 0..count {
                    let at = i * seg_size;
                    let seg = GrantCopySegment::read_from_bytes(&buf[at..at + seg_size])
                        .map_err(|_| Errno::EINVAL)?;
                    let status = host.grant_copy(&seg, buf, data_start);
                    let status_at = at + core::mem::offset_of!(GrantCopySegment, status);
                    buf[status_at..status_at + 2].copy_from_slice(&status.to_le_bytes());
                    ok += i64::from(status == shared_abi::grant_table::GNTST_OKAY);
                }
                copy::to_gpa(&self.npt, host.mem(), gpa, buf).map_err(|_| Errno::EFAULT)?;
                Ok(ok)
            }
        }
    }

    fn cpuid(&mut self, vmcb: &mut Vmcb, host: &impl Host) {
        let leaf = vmcb.save.rax as u32;
        let subleaf = self.regs.rcx as u32;
        let guest_osxsave = vmcb.save.cr4 & (1 << 18) != 0;
        let ctx = CpuidCtx {
            domid: self.domid,
            vcpu_id: self.id,
            tsc_khz: host.tsc_khz(),
            guest_osxsave,
        };
        let native = host.cpuid(leaf, subleaf);
        let r = if self.privileged {
            policy::dom0_cpuid(leaf, native, guest_osxsave)
        } else {
            policy::guest_cpuid(leaf, native, &ctx)
        };
        vmcb.save.rax = u64::from(r.eax);
        self.regs.rbx = u64::from(r.ebx);
        self.regs.rcx = u64::from(r.ecx);
        self.regs.rdx = u64::from(r.edx);
        advance(vmcb, 2);
    }

    fn msr(&mut self, vmcb: &mut Vmcb, host: &mut impl Host) -> ExitAction {
        let write = vmcb.control.exit_info1 == 1;
        let index = self.regs.rcx as u32;
        let value = (self.regs.rdx << 32) | (vmcb.save.rax & 0xFFFF_FFFF);
        let paging_on = vmcb.save.cr0 & guest_walk::CR0_PG != 0;
        let result = match (index, write) {
            (msr::EFER, false) => MsrResult::Ok(policy::efer_read(vmcb.save.efer)),
            (msr::EFER, true) => match policy::efer_write(vmcb.save.efer, value, paging_on) {
                Some(efer) => {
                    vmcb.save.efer = efer;
                    MsrResult::Ok(0)
                }
                None => MsrResult::Gp,
            },
            (msr::PAT, false) => MsrResult::Ok(self.pat),
            (msr::PAT, true) if policy::pat_valid(value) => {
                self.pat = value;
                vmcb.save.g_pat = value;
                MsrResult::Ok(0)
            }
            (msr::TSC, false) => MsrResult::Ok(host.rdtsc().wrapping_add(vmcb.control.tsc_offset)),
            // Dom0 is not a Xen guest: it has no hypercall page.
            (XEN_HYPERCALL_MSR, true) if !self.privileged => {
                self.install_hypercall_page(value, host)
            }
            _ => MsrResult::Gp,
        };
        match result {
            MsrResult::Ok(v) => {
                if !write {
                    vmcb.save.rax = v & 0xFFFF_FFFF;
                    self.regs.rdx = v >> 32;
                }
                advance(vmcb, 2);
            }
            MsrResult::Gp => {
                host.note(Note::MsrDenied { msr: index, write });
                inject(vmcb, EventInj::GP0);
            }
        }
        ExitAction::Resume
    }

    fn install_hypercall_page(&mut self, value: u64, host: &mut impl Host) -> MsrResult {
        // The low 12 bits select the page index; only one page exists.
        if value & 0xFFF != 0 {
            return MsrResult::Gp;
        }
        match copy::to_gpa(&self.npt, host.mem(), value, &hypercall::hypercall_page()) {
            Ok(()) => MsrResult::Ok(0),
            Err(_) => MsrResult::Gp,
        }
    }

    fn port_io(&mut self, vmcb: &mut Vmcb, host: &mut impl Host) -> ExitAction {
        let io = IoAccess::decode(vmcb.control.exit_info1);
        let mask = match io.size {
            1 => 0xFF,
            2 => 0xFFFF,
            _ => 0xFFFF_FFFF,
        };
        if self.privileged
            && !io.string
            && let Some(v) =
                host.dom0_port(io.port, io.size, io.is_in, (vmcb.save.rax & mask) as u32)
        {
            if io.is_in {
                vmcb.save.rax = (vmcb.save.rax & !mask) | (u64::from(v) & mask);
            }
            vmcb.save.rip = vmcb.control.exit_info2;
            vmcb.control.int_state = 0;
            return ExitAction::Resume;
        }
        host.note(Note::PortDenied {
            port: io.port,
            is_in: io.is_in,
        });
        if io.string {
            // INS/OUTS would need memory emulation for a port nobody owns: refuse.
            inject(vmcb, EventInj::GP0);
            return ExitAction::Resume;
        }
        if io.is_in {
            // No device: the bus floats high.
            vmcb.save.rax = (vmcb.save.rax & !mask) | mask;
        }
        vmcb.save.rip = vmcb.control.exit_info2;
        vmcb.control.int_state = 0;
        ExitAction::Resume
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain;
    use crate::elf::{PvhImage, tests::tiny_pvh};
    use crate::evtchn::fake::FakePlatform;
    use crate::mm::fake::FakeMem;
    use zerocopy::FromZeros;

    struct FakeHost {
        mem: FakeMem,
        /// Dom0's foreign window (4 slots).
        window: crate::window::Window<4>,
        /// DomU 1's memory (2 MiB), while it lives.
        domu: Option<Npt>,
        /// Domains whose last grant mapping went after their end.
        last_grant_of: std::vec::Vec<u16>,
        console: std::vec::Vec<u8>,
        notes: std::vec::Vec<Note>,
        events: std::vec::Vec<spin::Mutex<crate::evtchn::DomainEvents>>,
        grant_tables: std::vec::Vec<spin::Mutex<crate::grant::DomainGrants>>,
        plat: FakePlatform,
        timer: Option<Option<u64>>,
    }

    /// Machine address of the fake shared pages: they cover the fake RAM frames (grant
    /// tables live there), and the own `shared_info` frames of domains 1 and 2 are at the
    /// top.
    const SHARED_BASE: u64 = 0x10_0000;
    const SHARED_PAGES: usize = 2048;
    const OWN_FRAMES: u64 = SHARED_BASE + 2000 * 4096;

    /// A frame of the live DomU 1 (the only DomU with memory here).
    fn resolve(mem: &FakeMem, domu: Option<&Npt>, domid: u16, gfn: u64) -> Result<u64, Errno> {
        let npt = domu.filter(|_| domid == 1).ok_or(Errno::ESRCH)?;
        let gpa = gfn.checked_mul(4096).ok_or(Errno::EINVAL)?;
        npt.translate(mem, gpa)
            .map(|(hpa, _)| hpa & !0xFFF)
            .ok_or(Errno::EINVAL)
    }

    impl FakeHost {
        fn finish(&mut self, r: crate::window::Released) {
            if let Some(hpa) = r.free {
                self.mem.free_frame(hpa);
            }
            self.last_grant_of.extend(r.last_grant_of);
        }

        /// DomU 1 ends: its grant table closes, the frames Dom0 maps become Dom0's, the
        /// rest of its memory is freed.
        fn end_domu(&mut self) -> (u64, u64) {
            self.grants().teardown(1);
            let npt = self.domu.take().unwrap();
            let mem = &mut self.mem;
            let handed = self.window.orphan_domain(1, |gfn| {
                if let Some((_, f)) = npt.unmap_4k(mem, gfn * 4096) {
                    f.flushed();
                }
            });
            npt.destroy(&mut self.mem);
            handed
        }
    }

    impl crate::control::ControlSource for FakeHost {
        fn host_info(&self) -> shared_abi::control::HostInfo {
            shared_abi::control::HostInfo {
                pcpus: 3,
                foreign_window_gpa: 0x10_0000_0000,
                foreign_window_pages: 4,
                ..Default::default()
            }
        }
        fn domain_from(&self, from: u32) -> Option<shared_abi::control::DomainInfo> {
            // Domain 0 and DomUs 1 and 2.
            (from <= 2).then_some(shared_abi::control::DomainInfo {
                domid: from,
                ..Default::default()
            })
        }
        fn take_events(&self) -> u64 {
            0
        }
    }

    impl Host for FakeHost {
        type Mem = FakeMem;
        type Events = FakePlatform;
        fn hub(&self) -> Hub<'_, FakePlatform> {
            Hub::new(&self.events, &self.plat)
        }
        type Table = crate::evtchn::fake::FakeShared;
        fn grants(&self) -> Grants<'_, crate::evtchn::fake::FakeShared> {
            Grants::new(&self.grant_tables, &self.plat.mem)
        }
        fn now_ns(&self) -> u64 {
            5_000
        }
        fn time_info(&self) -> VcpuTimeInfo {
            VcpuTimeInfo::default()
        }
        fn event_seq(&self) -> u64 {
            3
        }
        fn set_timer(&mut self, deadline_ns: Option<u64>) {
            self.timer = Some(deadline_ns);
        }
        fn mem(&mut self) -> &mut FakeMem {
            &mut self.mem
        }
        fn phys(&self) -> &FakeMem {
            &self.mem
        }
        fn cpuid(&self, _: u32, _: u32) -> CpuidRegs {
            CpuidRegs {
                eax: 0,
                ebx: 0,
                ecx: !0,
                edx: !0,
            }
        }
        fn rdtsc(&self) -> u64 {
            1000
        }
        fn tsc_khz(&self) -> u32 {
            1_000_000
        }
        fn console(&mut self, bytes: &[u8]) {
            self.console.extend_from_slice(bytes);
        }
        fn note(&mut self, what: Note) {
            self.notes.push(what);
        }
        fn foreign_acquire(&mut self, slot: u64, domid: u32, gfn: u64) -> Result<u64, Errno> {
            let (mem, domu) = (&self.mem, self.domu.as_ref());
            self.window
                .map_foreign(slot, domid, gfn, |d, g| resolve(mem, domu, d, g))
        }
        fn foreign_release(&mut self, slot: u64) {
            let grants = Grants::new(&self.grant_tables, &self.plat.mem);
            let r = self
                .window
                .release(slot, MapKind::Foreign, &grants)
                .unwrap();
            self.finish(r);
        }
        fn window_kind(&self, slot: u64) -> Option<MapKind> {
            self.window.kind(slot)
        }
        fn grant_acquire(
            &mut self,
            slot: u64,
            domid: u16,
            gref: u32,
            write: bool,
        ) -> Result<u64, Errno> {
            let grants = Grants::new(&self.grant_tables, &self.plat.mem);
            let (mem, domu) = (&self.mem, self.domu.as_ref());
            self.window
                .map_grant(slot, u32::from(domid), gref, write, &grants, |d, g| {
                    resolve(mem, domu, d, g)
                })
        }
        fn grant_release(&mut self, slot: u64) {
            let grants = Grants::new(&self.grant_tables, &self.plat.mem);
            let r = self.window.release(slot, MapKind::Grant, &grants).unwrap();
            self.finish(r);
        }
        fn grant_copy(&mut self, seg: &GrantCopySegment, buf: &mut [u8], data_start: usize) -> i16 {
            let grants = Grants::new(&self.grant_tables, &self.plat.mem);
            let domu = self.domu.as_ref();
            self.window.copy_segment(
                seg,
                buf,
                data_start,
                &grants,
                |mem: &FakeMem, d, g| resolve(mem, domu, d, g),
                &mut self.mem,
            )
        }
        fn lifecycle(&mut self, _: crate::control::LifecycleOp, _: u32) -> Result<(), Errno> {
            Err(Errno::EBUSY)
        }
        fn create_domain(&mut self, _: u32, _: &str) -> Result<u32, Errno> {
            Err(Errno::ENOMEM)
        }
        fn set_entry(&mut self, _: u32, _: u64, _: u64) -> Result<(), Errno> {
            Err(Errno::EBUSY)
        }
        fn is_dom0_ram(&self, gpa: u64, len: u64) -> bool {
            // The fake Dom0 owns the low 2 MiB.
            gpa.checked_add(len).is_some_and(|end| end <= 2 << 20)
        }
        fn dom0_port(&mut self, port: u16, _: u8, is_in: bool, value: u32) -> Option<u32> {
            // A proxied port that echoes writes back as 0x5A5A_0000 | value.
            (port == 0xCFC).then_some(if is_in {
                0x1234_5678
            } else {
                0x5A5A_0000 | value
            })
        }
    }

    fn setup() -> (Vcpu, std::boxed::Box<Vmcb>, FakeHost) {
        setup_as(false)
    }

    fn setup_as(privileged: bool) -> (Vcpu, std::boxed::Box<Vmcb>, FakeHost) {
        let f = tiny_pvh(0x10_0000);
        let img = PvhImage::parse(&f).unwrap();
        let mut mem = FakeMem::new();
        let npt = domain::build(&mut mem, &img, 2, "").unwrap();
        let mut vmcb = std::boxed::Box::new(Vmcb::new_zeroed());
        let maps = PermissionMaps { iopm: 0, msrpm: 0 };
        let regs = init_pvh_vmcb(
            &mut vmcb,
            &npt,
            1,
            maps,
            img.entry,
            domain::BOOT_INFO_GPA,
            privileged,
        );
        let vcpu = Vcpu::new(if privileged { 0 } else { 1 }, privileged, npt, regs);
        // The granter, for Dom0's vCPU: DomU 1, with memory of its own.
        let domu = privileged.then(|| domain::build(&mut mem, &img, 2, "").unwrap());
        let host = FakeHost {
            mem,
            window: crate::window::Window::new(),
            domu,
            last_grant_of: std::vec::Vec::new(),
            console: std::vec::Vec::new(),
            notes: std::vec::Vec::new(),
            events: crate::evtchn::fake::tables(3),
            grant_tables: (0..3)
                .map(|_| spin::Mutex::new(crate::grant::DomainGrants::EMPTY))
                .collect(),
            plat: FakePlatform::new(SHARED_BASE, SHARED_PAGES),
            timer: None,
        };
        host.hub().open_dom0();
        host.hub().open_domu(1, OWN_FRAMES, 512);
        host.hub().open_domu(2, OWN_FRAMES + 0x1000, 512);
        host.grants().open(1, 512);
        (vcpu, vmcb, host)
    }

    #[test]
    fn dom0_faults_are_its_own_and_domu_faults_crash() {
        let (mut v, mut vmcb, mut host) = setup_as(true);
        assert_eq!(vmcb.control.int_ctl & INT_CTL_V_INTR_MASKING, 0);
        assert!(!Intercepts::DOM0.contains(Intercepts::HLT));
        vmcb.control.exit_code = 0x400;
        vmcb.control.exit_info1 = 0x1_0000_0004;
        vmcb.control.exit_info2 = 0x20_0000;
        vmcb.save.rip = 0x1234;
        assert_eq!(v.handle_exit(&mut vmcb, &mut host), ExitAction::Resume);
        assert_eq!(vmcb.control.event_inj, EventInj::GP0.encode());
        assert_eq!(vmcb.save.rip, 0x1234, "a fault does not advance RIP");
        assert!(matches!(host.notes[0], Note::Dom0Fault { rip: 0x1234, .. }));

        let (mut v, mut vmcb, mut host) = setup();
        vmcb.control.exit_code = 0x400;
        vmcb.control.exit_info1 = 0x1_0000_0004;
        assert!(matches!(
            v.handle_exit(&mut vmcb, &mut host),
            ExitAction::Crash(CrashReason::NestedPageFault { .. })
        ));
    }

    #[test]
    fn dom0_proxied_ports() {
        let (mut v, mut vmcb, mut host) = setup_as(true);
        vmcb.control.exit_code = 0x7B;
        vmcb.control.exit_info1 = (0xCFC << 16) | (1 << 5) | 1; // in ax, dx
        vmcb.control.exit_info2 = 0x2000;
        vmcb.save.rax = 0xFFFF_FFFF_0000_0000;
        assert_eq!(v.handle_exit(&mut vmcb, &mut host), ExitAction::Resume);
        assert_eq!(vmcb.save.rax, 0xFFFF_FFFF_0000_5678);
        assert_eq!(vmcb.save.rip, 0x2000);
        assert!(host.notes.is_empty());
        // A DomU touching the same port is denied.
        let (mut v, mut vmcb, mut host) = setup();
        vmcb.control.exit_code = 0x7B;
        vmcb.control.exit_info1 = (0xCFC << 16) | (1 << 5) | 1;
        v.handle_exit(&mut vmcb, &mut host);
        assert_eq!(vmcb.save.rax & 0xFFFF, 0xFFFF);
        assert_eq!(host.notes.len(), 1);
    }

    #[test]
    fn dom0_cpuid_has_no_xen_leaves() {
        let (mut v, mut vmcb, mut host) = setup_as(true);
        vmcb.control.exit_code = 0x72;
        vmcb.save.rax = 0x4000_0000;
        v.handle_exit(&mut vmcb, &mut host);
        assert_eq!(
            v.regs.rbx as u32,
            shared_abi::cpuid::MICROVISOR_CPUID_SIGNATURE[0]
        );
    }

    fn control(
        v: &mut Vcpu,
        vmcb: &mut Vmcb,
        host: &mut FakeHost,
        op: u64,
        gpa: u64,
        len: u64,
    ) -> i64 {
        control_with(v, vmcb, host, op, gpa, len, 0)
    }

    fn control_with(
        v: &mut Vcpu,
        vmcb: &mut Vmcb,
        host: &mut FakeHost,
        op: u64,
        gpa: u64,
        len: u64,
        arg: u64,
    ) -> i64 {
        vmcb.control.exit_code = 0x81;
        vmcb.save.rax = CONTROL_HYPERCALL;
        v.regs.rdi = op;
        v.regs.rsi = gpa;
        v.regs.rdx = len;
        v.regs.r10 = arg;
        v.regs.r8 = shared_abi::control::CONTROL_VERSION;
        assert_eq!(v.handle_exit(vmcb, host), ExitAction::Resume);
        vmcb.save.rax as i64
    }

    #[test]
    fn foreign_map_and_unmap() {
        let (mut v, mut vmcb, mut host) = setup_as(true);
        let req = shared_abi::control::ForeignMapRequest {
            domid: 1,
            reserved: 0,
            gfn: 0x42,
        };
        copy::to_gpa(
            &v.npt,
            &mut host.mem,
            0x5000,
            zerocopy::IntoBytes::as_bytes(&req),
        )
        .unwrap();
        let window = 0x10_0000_0000;
        let domu = host.domu.unwrap();
        copy::to_gpa(&domu, &mut host.mem, 0x42 * 4096, &0x42u64.to_le_bytes()).unwrap();
        v.regs.r10 = 2;
        assert_eq!(
            control_with(&mut v, &mut vmcb, &mut host, 5, 0x5000, 16, 2),
            0
        );
        let mut got = [0u8; 8];
        copy::from_gpa(&v.npt, &host.mem, window + 0x2000, &mut got).unwrap();
        assert_eq!(
            u64::from_le_bytes(got),
            0x42,
            "slot 2 shows the foreign frame"
        );
        assert_eq!(
            control_with(&mut v, &mut vmcb, &mut host, 5, 0x5000, 16, 2),
            Errno::EBUSY.to_ret()
        );
        assert_eq!(
            control_with(&mut v, &mut vmcb, &mut host, 5, 0x5000, 16, 4),
            Errno::EINVAL.to_ret()
        );
        vmcb.control.tlb_control = 0;
        assert_eq!(control_with(&mut v, &mut vmcb, &mut host, 6, 0, 0, 2), 0);
        assert_eq!(vmcb.control.tlb_control, 1, "an unmap flushes");
        assert!(copy::from_gpa(&v.npt, &host.mem, window + 0x2000, &mut got).is_err());
        assert_eq!(host.window.filled().count(), 0);
        assert!(
            host.mem.freed.is_empty(),
            "a live domain's frame stays its own"
        );
        assert_eq!(
            control_with(&mut v, &mut vmcb, &mut host, 6, 0, 0, 2),
            Errno::ENOENT.to_ret()
        );
    }

    /// DomU 1 places its table frame 0 at guest frame 0x1F0 and grants domain 0 frame
    /// 0x42 (ref 8, writable, holding "shared ring") and frame 0x43 (ref 9, read-only).
    /// Returns the table frame's machine address.
    fn granter(host: &mut FakeHost) -> u64 {
        use crate::grant::TableMem as _;
        use shared_abi::grant_table::{GTF_PERMIT_ACCESS, GTF_READONLY};
        let domu = host.domu.unwrap();
        let (table, _) = domu.translate(&host.mem, 0x1F0 * 4096).unwrap();
        host.grants().place_frame(1, 0, 0x1F0, table).unwrap();
        for (gref, frame, flags) in [
            (8u64, 0x42u32, GTF_PERMIT_ACCESS),
            (9, 0x43, GTF_PERMIT_ACCESS | GTF_READONLY),
        ] {
            host.plat.mem.store_u32(table + gref * 8 + 4, frame);
            host.plat.mem.store_u32(table + gref * 8, u32::from(flags));
        }
        copy::to_gpa(&domu, &mut host.mem, 0x42 * 4096, b"shared ring").unwrap();
        copy::to_gpa(&domu, &mut host.mem, 0x43 * 4096, b"read only").unwrap();
        table
    }

    fn put_request<T: zerocopy::IntoBytes + zerocopy::Immutable>(
        v: &Vcpu,
        host: &mut FakeHost,
        gpa: u64,
        req: &T,
    ) {
        copy::to_gpa(&v.npt, &mut host.mem, gpa, req.as_bytes()).unwrap();
    }

    #[test]
    fn grant_map_and_unmap_through_the_control_call() {
        use shared_abi::control::{GRANT_MAP_READONLY, GrantMapRequest};
        use shared_abi::grant_table::{GTF_PERMIT_ACCESS as PA, GTF_READING, GTF_WRITING};
        let (mut v, mut vmcb, mut host) = setup_as(true);
        granter(&mut host);
        let window = 0x10_0000_0000u64;
        let req = |domid, gref, flags, reserved| GrantMapRequest {
            domid,
            gref,
            flags,
            reserved,
        };
        let flags = |host: &FakeHost| host.grants().header(1, 8).unwrap() as u16;
        // Writable map of ref 8 in slot 1.
        put_request(&v, &mut host, 0x5000, &req(1, 8, 0, 0));
        assert_eq!(
            control_with(&mut v, &mut vmcb, &mut host, 18, 0x5000, 16, 1),
            0
        );
        let mut got = [0u8; 11];
        copy::from_gpa(&v.npt, &host.mem, window + 0x1000, &mut got).unwrap();
        assert_eq!(&got, b"shared ring");
        assert!(
            v.npt.translate(&host.mem, window + 0x1000).unwrap().1,
            "writable"
        );
        assert_eq!(flags(&host), PA | GTF_READING | GTF_WRITING);
        // Read-only map of the read-only ref 9 in slot 2: Dom0 cannot write it.
        put_request(&v, &mut host, 0x5000, &req(1, 9, GRANT_MAP_READONLY, 0));
        assert_eq!(
            control_with(&mut v, &mut vmcb, &mut host, 18, 0x5000, 16, 2),
            0
        );
        assert!(
            !v.npt.translate(&host.mem, window + 0x2000).unwrap().1,
            "read-only"
        );
        // Hostile and mistaken requests.
        let mut c = |host: &mut FakeHost, r: GrantMapRequest, len, slot| {
            put_request(&v, host, 0x5000, &r);
            control_with(&mut v, &mut vmcb, host, 18, 0x5000, len, slot)
        };
        for (r, len, slot, err) in [
            (req(1, 8, 0, 0), 16, 1, Errno::EBUSY),       // slot taken
            (req(1, 8, 0, 0), 16, 4, Errno::EINVAL),      // outside the window
            (req(1, 8, 0, 0), 15, 3, Errno::EINVAL),      // short buffer
            (req(1, 8, 0, 1), 16, 3, Errno::EINVAL),      // reserved
            (req(1, 8, 2, 0), 16, 3, Errno::EINVAL),      // unknown flag
            (req(0, 8, 0, 0), 16, 3, Errno::ESRCH),       // domain 0
            (req(1 << 16, 8, 0, 0), 16, 3, Errno::ESRCH), // not a domid
            (req(2, 8, 0, 0), 16, 3, Errno::ESRCH),       // a DomU without a table
            (req(1, 7, 0, 0), 16, 3, Errno::ENOENT),      // nothing granted
            (req(1, 512, 0, 0), 16, 3, Errno::ENOENT),    // beyond the table
            (req(1, 9, 0, 0), 16, 3, Errno::EPERM),       // read-only, writable map
        ] {
            assert_eq!(
                c(&mut host, r, len, slot),
                err.to_ret(),
                "{r:?} slot {slot}"
            );
        }
        let fault = c(&mut host, req(1, 8, 0, 0), 16, 3);
        assert_eq!(fault, 0, "slot 3 is still free after all that");
        let mut c =
            |host: &mut FakeHost, op, slot| control_with(&mut v, &mut vmcb, host, op, 0, 0, slot);
        assert_eq!(c(&mut host, 19, 3), 0);
        // ForeignUnmap of a grant slot is refused and changes nothing.
        assert_eq!(c(&mut host, 6, 1), Errno::EINVAL.to_ret());
        assert!(v.npt.translate(&host.mem, window + 0x1000).is_some());
        // GrantUnmap: the mapping goes, Dom0's TLB is flushed before it runs again, the
        // entry is released.
        vmcb.control.tlb_control = 0;
        assert_eq!(control_with(&mut v, &mut vmcb, &mut host, 19, 0, 0, 1), 0);
        assert_eq!(vmcb.control.tlb_control, 1);
        assert!(v.npt.translate(&host.mem, window + 0x1000).is_none());
        assert_eq!(flags(&host), PA);
        let mut c =
            |host: &mut FakeHost, op, slot| control_with(&mut v, &mut vmcb, host, op, 0, 0, slot);
        assert_eq!(
            c(&mut host, 19, 1),
            Errno::ENOENT.to_ret(),
            "unmapped twice"
        );
        assert_eq!(c(&mut host, 19, 0), Errno::ENOENT.to_ret(), "never mapped");
        assert_eq!(c(&mut host, 19, 4), Errno::EINVAL.to_ret());
        assert_eq!(c(&mut host, 19, u64::MAX), Errno::EINVAL.to_ret());
        // A ForeignMap slot is not a grant.
        put_request(
            &v,
            &mut host,
            0x5000,
            &shared_abi::control::ForeignMapRequest {
                domid: 1,
                reserved: 0,
                gfn: 0x44,
            },
        );
        assert_eq!(
            control_with(&mut v, &mut vmcb, &mut host, 5, 0x5000, 16, 3),
            0
        );
        assert_eq!(
            control_with(&mut v, &mut vmcb, &mut host, 19, 0, 0, 3),
            Errno::EINVAL.to_ret()
        );

        // The granter ends while Dom0 maps ref 9 (slot 2) and frame 0x44 (slot 3): those
        // frames become Dom0's and are freed only when it unmaps them.
        let frame43 = host.window.get(2).unwrap().hpa;
        let frame44 = host.window.get(3).unwrap().hpa;
        assert_eq!(host.end_domu(), (1, 1));
        assert!(!host.mem.freed.contains(&frame43));
        assert!(!host.mem.freed.contains(&frame44));
        let mut got = [0u8; 9];
        copy::from_gpa(&v.npt, &host.mem, window + 0x2000, &mut got).unwrap();
        assert_eq!(&got, b"read only", "still readable by Dom0");
        put_request(&v, &mut host, 0x5000, &req(1, 8, 0, 0));
        assert_eq!(
            control_with(&mut v, &mut vmcb, &mut host, 18, 0x5000, 16, 0),
            Errno::ESRCH.to_ret(),
            "a dead granter"
        );
        assert_eq!(control_with(&mut v, &mut vmcb, &mut host, 19, 0, 0, 2), 0);
        assert!(host.mem.freed.contains(&frame43));
        assert_eq!(host.last_grant_of, [1]);
        assert_eq!(control_with(&mut v, &mut vmcb, &mut host, 6, 0, 0, 3), 0);
        assert!(host.mem.freed.contains(&frame44));
        assert_eq!(host.window.filled().count(), 0);
    }

    #[test]
    fn grant_copy_through_the_control_call() {
        use shared_abi::control::{GrantCopyPtr, GrantCopySegment};
        use shared_abi::grant_table::{
            GNTCOPY_DEST_GREF as D, GNTCOPY_SOURCE_GREF as S, GNTST_BAD_COPY_ARG,
            GNTST_PERMISSION_DENIED,
        };
        use zerocopy::IntoBytes as _;
        let (mut v, mut vmcb, mut host) = setup_as(true);
        granter(&mut host);
        let side = |u, domid, offset| GrantCopyPtr { u, domid, offset };
        let seg = |source, dest, len, flags| GrantCopySegment {
            source,
            dest,
            len,
            flags,
            status: 0x7777,
            pad: 0,
        };
        // Three segments, then data at 72: ref 8 -> buffer; buffer -> read-only ref 9
        // (refused); buffer -> ref 8 at offset 100.
        let segs = [
            seg(side(8, 1, 0), side(72, 0, 0), 11, S),
            seg(side(72, 0, 0), side(9, 1, 0), 4, D),
            seg(side(88, 0, 0), side(8, 1, 100), 8, D),
        ];
        let mut buf = std::vec![0u8; 72 + 24];
        for (i, s) in segs.iter().enumerate() {
            buf[i * 24..i * 24 + 24].copy_from_slice(s.as_bytes());
        }
        buf[88..96].copy_from_slice(b"backend!");
        copy::to_gpa(&v.npt, &mut host.mem, 0x6000, &buf).unwrap();
        assert_eq!(
            control_with(&mut v, &mut vmcb, &mut host, 20, 0x6000, 96, 3),
            2
        );
        copy::from_gpa(&v.npt, &host.mem, 0x6000, &mut buf).unwrap();
        let status =
            |buf: &[u8], i: usize| i16::from_le_bytes([buf[i * 24 + 20], buf[i * 24 + 21]]);
        assert_eq!(
            [status(&buf, 0), status(&buf, 1), status(&buf, 2)],
            [0, GNTST_PERMISSION_DENIED, 0]
        );
        assert_eq!(&buf[72..83], b"shared ring");
        let domu = host.domu.unwrap();
        let mut got = [0u8; 8];
        copy::from_gpa(&domu, &host.mem, 0x42 * 4096 + 100, &mut got).unwrap();
        assert_eq!(&got, b"backend!");
        copy::from_gpa(&domu, &host.mem, 0x43 * 4096, &mut got).unwrap();
        assert_eq!(&got, b"read onl", "the read-only grant is untouched");
        assert_eq!(host.grants().inspect(1, |t| t.any_pinned()), Some(false));
        // Call-level errors: no segment, segments beyond the buffer, a buffer that is not
        // Dom0's RAM (nothing copied).
        let npt = v.npt;
        let mut c = |host: &mut FakeHost, gpa, len, n| {
            control_with(&mut v, &mut vmcb, host, 20, gpa, len, n)
        };
        assert_eq!(c(&mut host, 0x6000, 96, 0), Errno::EINVAL.to_ret());
        assert_eq!(c(&mut host, 0x6000, 71, 3), Errno::EINVAL.to_ret());
        assert_eq!(c(&mut host, 0x6000, 96, u64::MAX), Errno::EINVAL.to_ret());
        assert_eq!(c(&mut host, 0x6000, 96, 1 << 60), Errno::EINVAL.to_ret());
        assert_eq!(c(&mut host, (2 << 20) - 48, 96, 1), Errno::EFAULT.to_ret());
        // A segment whose buffer side points into the segments themselves.
        let bad = seg(side(8, 1, 0), side(0, 0, 0), 4, S);
        copy::to_gpa(&npt, &mut host.mem, 0x7000, bad.as_bytes()).unwrap();
        assert_eq!(c(&mut host, 0x7000, 64, 1), 0);
        let mut st = [0u8; 24];
        copy::from_gpa(&npt, &host.mem, 0x7000, &mut st).unwrap();
        assert_eq!(i16::from_le_bytes([st[20], st[21]]), GNTST_BAD_COPY_ARG);
        assert_eq!(
            &st[..8],
            bad.source.as_bytes(),
            "the segment itself is intact"
        );
    }

    #[test]
    fn control_hypercall() {
        let (mut v, mut vmcb, mut host) = setup_as(true);
        assert_eq!(control(&mut v, &mut vmcb, &mut host, 1, 0x5000, 4096), 96);
        let mut buf = [0u8; 8];
        copy::from_gpa(&v.npt, &host.mem, 0x5000, &mut buf).unwrap();
        assert_eq!(buf[4], 3, "pcpus");
        // The buffer must be the caller's RAM, all of it, before anything is written.
        let edge = (2 << 20) - 48;
        assert_eq!(
            control(&mut v, &mut vmcb, &mut host, 1, edge, 96),
            Errno::EFAULT.to_ret()
        );
        assert_eq!(
            control(&mut v, &mut vmcb, &mut host, 1, u64::MAX - 10, 96),
            Errno::EFAULT.to_ret()
        );
        copy::from_gpa(&v.npt, &host.mem, edge, &mut buf).unwrap();
        assert_eq!(buf, [0; 8]);
        // Mapped for Dom0 but not its RAM (its devices): refused before anything is touched.
        v.npt
            .map_4k(
                &mut host.mem,
                0x30_0000,
                0x30_0000,
                Access::ReadWriteExec,
                Ownership::Foreign,
            )
            .unwrap();
        assert_eq!(
            control(&mut v, &mut vmcb, &mut host, 1, 0x30_0000, 96),
            Errno::EFAULT.to_ret()
        );
        assert_eq!(
            control(&mut v, &mut vmcb, &mut host, 42, 0x5000, 80),
            Errno::ENOSYS.to_ret()
        );

        let (mut v, mut vmcb, mut host) = setup();
        assert_eq!(
            control(&mut v, &mut vmcb, &mut host, 1, 0x5000, 4096),
            Errno::EPERM.to_ret()
        );
    }

    #[test]
    fn hlt_blocks_on_upcalls_only_with_interrupts_on() {
        let (mut v, mut vmcb, mut host) = setup();
        vmcb.control.exit_code = 0x78;
        vmcb.save.rflags = 0x202;
        assert_eq!(
            v.handle_exit(&mut vmcb, &mut host),
            ExitAction::Block(BlockOn::Upcall)
        );
        assert_eq!(vmcb.save.rip, 0x10_0001);
        vmcb.save.rflags = 0x2;
        assert_eq!(
            v.handle_exit(&mut vmcb, &mut host),
            ExitAction::Block(BlockOn::Forever)
        );
    }

    #[test]
    fn sched_block_and_poll_become_block_exits() {
        let (mut v, mut vmcb, mut host) = setup();
        vmcb.control.exit_code = 0x81;
        vmcb.save.rax = 29;
        (v.regs.rdi, v.regs.rsi) = (1, 0);
        assert_eq!(
            v.handle_exit(&mut vmcb, &mut host),
            ExitAction::Block(BlockOn::Upcall)
        );
        assert_eq!(vmcb.save.rax, 0);
        let poll = shared_abi::sched::SchedPoll {
            ports: 0,
            nr_ports: 0,
            pad: 0,
            timeout: 9_000,
        };
        copy::to_gpa(
            &v.npt,
            &mut host.mem,
            0x5000,
            zerocopy::IntoBytes::as_bytes(&poll),
        )
        .unwrap();
        vmcb.save.rax = 29;
        (v.regs.rdi, v.regs.rsi) = (3, 0x5000);
        assert_eq!(
            v.handle_exit(&mut vmcb, &mut host),
            ExitAction::Block(BlockOn::Poll {
                seq: 3,
                deadline_ns: 9_000
            })
        );
        // set_timer_op reaches the host.
        vmcb.save.rax = 15;
        v.regs.rdi = 123;
        assert_eq!(v.handle_exit(&mut vmcb, &mut host), ExitAction::Resume);
        assert_eq!(host.timer, Some(Some(123)));
    }

    #[test]
    fn shared_info_lands_in_the_guest_frame() {
        let (mut v, mut vmcb, mut host) = setup();
        let req = shared_abi::memory::XenAddToPhysmap {
            domid: shared_abi::DomId::SELF.0,
            size: 0,
            space: 0,
            idx: 0,
            gpfn: 0x1F0,
        };
        copy::to_gpa(
            &v.npt,
            &mut host.mem,
            0x5000,
            zerocopy::IntoBytes::as_bytes(&req),
        )
        .unwrap();
        vmcb.control.exit_code = 0x81;
        vmcb.save.rax = 12;
        (v.regs.rdi, v.regs.rsi) = (7, 0x5000);
        assert_eq!(v.handle_exit(&mut vmcb, &mut host), ExitAction::Resume);
        assert_eq!(vmcb.save.rax, 0);
        assert_eq!(
            host.hub()
                .inspect(1, crate::evtchn::DomainEvents::placed_gpfn),
            Some(Some(0x1F0))
        );
        // The page's pvclock version (the hub writes through the shared memory, which
        // shadows the guest frame's machine address here) is even and non-zero.
        let (hpa, _) = v.npt.translate(&host.mem, 0x1F_0000).unwrap();
        let version = crate::evtchn::SharedMem::load(&host.plat.mem, hpa + 32);
        assert!(version >= 2 && version.is_multiple_of(2));
        // Beyond RAM: EINVAL.
        let req = shared_abi::memory::XenAddToPhysmap { gpfn: 0x200, ..req };
        copy::to_gpa(
            &v.npt,
            &mut host.mem,
            0x5000,
            zerocopy::IntoBytes::as_bytes(&req),
        )
        .unwrap();
        vmcb.save.rax = 12;
        v.handle_exit(&mut vmcb, &mut host);
        assert_eq!(vmcb.save.rax as i64, Errno::EINVAL.to_ret());
    }

    /// Writes `v` at guest-physical `gpa` of the vCPU's domain.
    fn put_gpa<T: zerocopy::IntoBytes + zerocopy::Immutable>(
        v: &Vcpu,
        host: &mut FakeHost,
        gpa: u64,
        val: &T,
    ) {
        copy::to_gpa(&v.npt, &mut host.mem, gpa, val.as_bytes()).unwrap();
    }

    fn runstate_at(v: &Vcpu, host: &FakeHost, gpa: u64) -> shared_abi::vcpu::VcpuRunstateInfo {
        let mut b = [0u8; 48];
        copy::from_gpa(&v.npt, &host.mem, gpa, &mut b).unwrap();
        shared_abi::vcpu::VcpuRunstateInfo::read_from_bytes(&b).unwrap()
    }

    fn register_runstate(v: &mut Vcpu, vmcb: &mut Vmcb, host: &mut FakeHost, la: u64) -> i64 {
        put_gpa(
            v,
            host,
            0x5000,
            &shared_abi::vcpu::VcpuRegisterRunstateMemoryArea { addr: la },
        );
        vmcb.control.exit_code = 0x81;
        vmcb.save.rax = 24;
        (v.regs.rdi, v.regs.rsi, v.regs.rdx) = (5, 0, 0x5000);
        assert_eq!(v.handle_exit(vmcb, host), ExitAction::Resume);
        vmcb.save.rax as i64
    }

    #[test]
    fn runstate_area_follows_scheduling_with_paging_off() {
        use shared_abi::vcpu::{RUNSTATE_BLOCKED, RUNSTATE_RUNNING};
        let (mut v, mut vmcb, mut host) = setup();
        v.runstate = Runstate::new(RunstateKind::Runnable, 40);
        v.runstate_change(&vmcb, &mut host.mem, RunstateKind::Running, 100);
        assert_eq!(register_runstate(&mut v, &mut vmcb, &mut host, 0x3000), 0);
        let r = runstate_at(&v, &host, 0x3000);
        assert_eq!((r.state, r.state_entry_time), (RUNSTATE_RUNNING, 100));
        assert_eq!(r.time, [0, 60, 0, 0]);
        v.runstate_change(&vmcb, &mut host.mem, RunstateKind::Blocked, 250);
        v.runstate_change(&vmcb, &mut host.mem, RunstateKind::Runnable, 300);
        v.runstate_change(&vmcb, &mut host.mem, RunstateKind::Running, 310);
        v.runstate_change(&vmcb, &mut host.mem, RunstateKind::Blocked, 1000);
        let r = runstate_at(&v, &host, 0x3000);
        assert_eq!((r.state, r.state_entry_time), (RUNSTATE_BLOCKED, 1000));
        assert_eq!(r.time, [150 + 690, 70, 50, 0]);
        assert_eq!(r.time.iter().sum::<u64>() + (1200 - 1000), 1200 - 40);
        // Unregistered: the area is left as it was.
        assert_eq!(register_runstate(&mut v, &mut vmcb, &mut host, 0), 0);
        v.runstate_change(&vmcb, &mut host.mem, RunstateKind::Running, 2000);
        assert_eq!(runstate_at(&v, &host, 0x3000), r);
        // Crossing the end of RAM (2 MiB): accepted, dropped at once, nothing written.
        assert_eq!(
            register_runstate(&mut v, &mut vmcb, &mut host, 0x1F_FFF0),
            0
        );
        assert_eq!(v.runstate.area(), None);
        // Beyond 32 bits with paging off: the same.
        assert_eq!(register_runstate(&mut v, &mut vmcb, &mut host, 1 << 32), 0);
        assert_eq!(v.runstate.area(), None);
        // A bad argument pointer is EFAULT.
        vmcb.save.rax = 24;
        (v.regs.rdi, v.regs.rsi, v.regs.rdx) = (5, 0, 0x20_0000);
        v.handle_exit(&mut vmcb, &mut host);
        assert_eq!(vmcb.save.rax as i64, Errno::EFAULT.to_ret());
    }

    #[test]
    fn runstate_area_is_translated_afresh_through_the_guest_page_tables() {
        use shared_abi::vcpu::RUNSTATE_RUNNABLE;
        let (mut v, mut vmcb, mut host) = setup();
        // Long mode: PML4 0x10000 -> PDPT 0x11000 -> PD 0x12000 -> PT 0x13000; linear
        // 0x40_0000 maps gpa 0x20000, 0x40_1000 maps gpa 0x30000 (not adjacent).
        let (p, w) = (1u64, 2u64);
        put_gpa(&v, &mut host, 0x10000, &(0x11000 | p | w));
        put_gpa(&v, &mut host, 0x11000, &(0x12000 | p | w));
        put_gpa(&v, &mut host, 0x12000 + 2 * 8, &(0x13000 | p | w));
        put_gpa(&v, &mut host, 0x13000, &(0x20000 | p | w));
        put_gpa(&v, &mut host, 0x13008, &(0x30000 | p | w));
        vmcb.save.cr0 = guest_walk::CR0_PG | guest_walk::CR0_WP | 1;
        vmcb.save.cr3 = 0x10000;
        vmcb.save.cr4 = guest_walk::CR4_PAE;
        vmcb.save.efer = guest_walk::EFER_LMA | (1 << 8) | (1 << 12);
        // The argument is in the mapped page too (linear 0x40_0100).
        v.runstate = Runstate::new(RunstateKind::Running, 0);
        put_gpa(
            &v,
            &mut host,
            0x20100,
            &shared_abi::vcpu::VcpuRegisterRunstateMemoryArea { addr: 0x40_0FE8 },
        );
        vmcb.control.exit_code = 0x81;
        vmcb.save.rax = 24;
        (v.regs.rdi, v.regs.rsi, v.regs.rdx) = (5, 0, 0x40_0100);
        v.handle_exit(&mut vmcb, &mut host);
        assert_eq!(vmcb.save.rax, 0);
        assert_eq!(v.runstate.area(), Some(0x40_0FE8));
        v.runstate_change(&vmcb, &mut host.mem, RunstateKind::Runnable, 500);
        // 24 bytes in each page: state, entry time and time[0] in the first, time[1..4] in
        // the second.
        let mut b = [0u8; 48];
        copy::from_gpa(&v.npt, &host.mem, 0x20FE8, &mut b[..24]).unwrap();
        copy::from_gpa(&v.npt, &host.mem, 0x30000, &mut b[24..]).unwrap();
        let r = shared_abi::vcpu::VcpuRunstateInfo::read_from_bytes(&b).unwrap();
        assert_eq!((r.state, r.state_entry_time), (RUNSTATE_RUNNABLE, 500));
        assert_eq!(r.time, [500, 0, 0, 0]);
        // The guest remaps the second page to gpa 0x31000: the next write follows it.
        put_gpa(&v, &mut host, 0x13008, &(0x31000 | p | w));
        v.runstate_change(&vmcb, &mut host.mem, RunstateKind::Running, 700);
        let mut t = [0u8; 8];
        copy::from_gpa(&v.npt, &host.mem, 0x31000, &mut t).unwrap();
        assert_eq!(
            u64::from_le_bytes(t),
            200,
            "time[runnable] in the new frame"
        );
        // The second page becomes read-only: the registration is dropped and the first
        // page is not written either.
        put_gpa(&v, &mut host, 0x13008, &(0x31000 | p));
        let mut before = [0u8; 24];
        copy::from_gpa(&v.npt, &host.mem, 0x20FE8, &mut before).unwrap();
        v.runstate_change(&vmcb, &mut host.mem, RunstateKind::Blocked, 900);
        assert_eq!(v.runstate.area(), None);
        let mut after = [0u8; 24];
        copy::from_gpa(&v.npt, &host.mem, 0x20FE8, &mut after).unwrap();
        assert_eq!(before, after);
        // A page the guest maps but that is not RAM (beyond its 2 MiB) is refused too.
        put_gpa(&v, &mut host, 0x13008, &(0x20_0000 | p | w));
        put_gpa(
            &v,
            &mut host,
            0x20100,
            &shared_abi::vcpu::VcpuRegisterRunstateMemoryArea { addr: 0x40_1000 },
        );
        vmcb.save.rax = 24;
        (v.regs.rdi, v.regs.rsi, v.regs.rdx) = (5, 0, 0x40_0100);
        v.handle_exit(&mut vmcb, &mut host);
        assert_eq!(vmcb.save.rax, 0);
        assert_eq!(v.runstate.area(), None);
    }

    #[test]
    fn upcall_irq_programming() {
        let (_, mut vmcb, _) = setup();
        let base = vmcb.control.int_ctl;
        set_upcall_irq(&mut vmcb, Some(0xF3));
        assert_eq!(vmcb.control.int_vector, 0xF3);
        assert_eq!(
            vmcb.control.int_ctl,
            base | (1 << 8) | (1 << 20) | (0xF << 16)
        );
        assert_ne!(vmcb.control.int_ctl & INT_CTL_V_INTR_MASKING, 0, "kept");
        set_upcall_irq(&mut vmcb, None);
        assert_eq!(vmcb.control.int_ctl, base);
    }

    #[test]
    fn dom0_event_channel_control_ops() {
        let (mut v, mut vmcb, mut host) = setup_as(true);
        let mut c = |host: &mut FakeHost, op, gpa, len, arg| {
            control_with(&mut v, &mut vmcb, host, op, gpa, len, arg)
        };
        // The builder's steps: a DomU port for Dom0, the console parameters, Dom0's bind.
        let domu_port = c(&mut host, 12, 0, 0, 1);
        assert_eq!(domu_port, 1);
        assert_eq!(c(&mut host, 12, 0, 0, 0), Errno::ESRCH.to_ret(), "not Dom0");
        assert_eq!(c(&mut host, 12, 0, 0, 3), Errno::ESRCH.to_ret());
        let param = shared_abi::control::DomainParam {
            index: shared_abi::hvm::HVM_PARAM_CONSOLE_EVTCHN,
            reserved: 0,
            value: domu_port as u64,
        };
        copy::to_gpa(
            &v.npt,
            &mut host.mem,
            0x6000,
            zerocopy::IntoBytes::as_bytes(&param),
        )
        .unwrap();
        let mut c = |host: &mut FakeHost, op, gpa, len, arg| {
            control_with(&mut v, &mut vmcb, host, op, gpa, len, arg)
        };
        assert_eq!(c(&mut host, 17, 0x6000, 16, 1), 0);
        assert_eq!(
            host.hub()
                .param(1, shared_abi::hvm::HVM_PARAM_CONSOLE_EVTCHN),
            Ok(domu_port as u64)
        );
        let d0 = c(&mut host, 13, 0, 0, (1 << 32) | domu_port as u64);
        assert_eq!(d0, 1);
        assert_eq!(
            c(&mut host, 13, 0, 0, (1 << 32) | domu_port as u64),
            Errno::EINVAL.to_ret(),
            "bound already"
        );
        // Take-pending: the bind marked Dom0's new port pending.
        assert_eq!(c(&mut host, 16, 0x5000, 8, 0), 1);
        assert_eq!(c(&mut host, 16, 0x5000, 8, 0), 0);
        // DomU -> Dom0.
        host.hub().send(1, domu_port as u32).unwrap();
        // A buffer outside Dom0's RAM takes nothing.
        assert_eq!(
            c(&mut host, 16, (2 << 20) - 2, 8, 0),
            Errno::EFAULT.to_ret()
        );
        assert_eq!(c(&mut host, 16, 0x5000, 4, 0), 1);
        let mut got = [0u8; 4];
        // Dom0 -> DomU, then close.
        assert_eq!(c(&mut host, 14, 0, 0, d0 as u64), 0);
        assert!(host.hub().port_pending(1, domu_port as u32));
        assert_eq!(c(&mut host, 15, 0, 0, d0 as u64), 0);
        assert_eq!(c(&mut host, 14, 0, 0, d0 as u64), Errno::EINVAL.to_ret());
        copy::from_gpa(&v.npt, &host.mem, 0x5000, &mut got).unwrap();
        assert_eq!(u32::from_le_bytes(got), d0 as u32);
    }

    proptest::proptest! {
        /// Runstate and vcpu_info registrations with garbage arguments, under garbage
        /// guest page tables (long mode or paging off), never panic; whatever area stays
        /// registered was writable RAM when last written.
        #[test]
        fn hostile_vcpu_op_registrations_never_panic(
            steps in proptest::collection::vec(
                (proptest::sample::select(std::vec![5u64, 10]), 0u64..2,
                 proptest::num::u64::ANY, proptest::num::u64::ANY, 0u64..0x20_0000,
                 proptest::bool::ANY),
                1..12)
        ) {
            let (mut v, mut vmcb, mut host) = setup();
            let mut now = 0;
            for (cmd, vcpu, word0, word1, table, paging) in steps {
                if paging {
                    vmcb.save.cr0 = guest_walk::CR0_PG | guest_walk::CR0_WP | 1;
                    vmcb.save.cr3 = table & !0xFFF;
                    vmcb.save.cr4 = guest_walk::CR4_PAE;
                    vmcb.save.efer = guest_walk::EFER_LMA | (1 << 8) | (1 << 12);
                    // Some self-referencing garbage in the tables.
                    put_gpa(&v, &mut host, table & !0xFFF, &(table | 3));
                } else {
                    vmcb.save.cr0 = 1;
                }
                put_gpa(&v, &mut host, 0x5000, &[word0, word1]);
                vmcb.control.exit_code = 0x81;
                vmcb.save.rax = 24;
                (v.regs.rdi, v.regs.rsi, v.regs.rdx) = (cmd, vcpu, if paging { table } else { 0x5000 });
                proptest::prop_assert_eq!(v.handle_exit(&mut vmcb, &mut host), ExitAction::Resume);
                now += word1 % 1000;
                let to = [RunstateKind::Running, RunstateKind::Runnable, RunstateKind::Blocked][(word0 % 3) as usize];
                v.runstate_change(&vmcb, &mut host.mem, to, now);
                if let Some(la) = v.runstate.area() {
                    let mode = Vcpu::paging_mode(&vmcb);
                    proptest::prop_assert!(writable_ram_page(&host.mem, &v.npt, &mode, la & !0xFFF).is_some());
                }
            }
        }
    }

    proptest::proptest! {
        /// Hostile control calls for the event and parameter operations (any argument,
        /// length and buffer contents) never panic and leave the tables consistent.
        #[test]
        fn hostile_event_control_calls_never_panic(
            calls in proptest::collection::vec(
                (12u64..18, proptest::num::u64::ANY, 0u64..40, proptest::num::u64::ANY,
                 proptest::sample::select(std::vec![0x5000u64, (2 << 20) - 8, 0x30_0000, u64::MAX])),
                1..40)
        ) {
            let (mut v, mut vmcb, mut host) = setup_as(true);
            for (op, arg, len, word, gpa) in calls {
                let arg = match arg % 4 {
                    0 => arg,
                    1 => arg % 4,
                    2 => ((arg % 3) << 32) | ((arg >> 40) % 8),
                    _ => (arg >> 8) % 1100,
                };
                let _ = copy::to_gpa(&v.npt, &mut host.mem, 0x5000, &word.to_le_bytes());
                let _ = copy::to_gpa(&v.npt, &mut host.mem, 0x5008, &(word >> 50).to_le_bytes());
                let _ = control_with(&mut v, &mut vmcb, &mut host, op, gpa, len, arg);
            }
            for d in 0..3u16 {
                for p in 1..shared_abi::event_channel::MAX_PORTS {
                    if let Some(crate::evtchn::Port::Interdomain { remote_dom, remote_port }) =
                        host.hub().inspect(d, |t| t.port(p))
                    {
                        let back = host.hub().inspect(remote_dom, |t| t.port(remote_port));
                        proptest::prop_assert_eq!(back, Some(crate::evtchn::Port::Interdomain {
                            remote_dom: d,
                            remote_port: p,
                        }));
                    }
                }
            }
        }
    }

    proptest::proptest! {
        /// Hostile grant and foreign-window control calls (any slot, request bytes,
        /// lengths, segment counts), with the granter rewriting its entries and ending
        /// part-way: never a panic or a double free; Dom0's NPT maps exactly the filled
        /// slots; the granter's pins match the grant mappings Dom0 holds.
        #[test]
        fn hostile_grant_control_calls_never_panic(
            calls in proptest::collection::vec(
                (proptest::sample::select(std::vec![5u64, 6, 18, 19, 20]),
                 0u64..6, 0u64..200, proptest::array::uniform32(proptest::num::u8::ANY),
                 0u32..12, proptest::num::u32::ANY),
                1..40),
            end_at in 0usize..60,
        ) {
            use crate::grant::TableMem as _;
            let (mut v, mut vmcb, mut host) = setup_as(true);
            let table = granter(&mut host);
            let window = 0x10_0000_0000u64;
            for (i, (op, arg, len, bytes, gref, word)) in calls.into_iter().enumerate() {
                if i == end_at && host.domu.is_some() {
                    host.end_domu();
                }
                if host.domu.is_some() {
                    // The granter rewrites an entry: often a plausible grant, sometimes
                    // garbage, always keeping the in-use bits it cannot clear legally.
                    let pa = table + u64::from(gref) * 8;
                    let cur = host.plat.mem.load_u32(pa);
                    let word = if word % 2 == 0 { (word & 0x4) | 1 } else { word };
                    host.plat.mem.store_u32(pa + 4, 0x40 + (word >> 28));
                    host.plat.mem.store_u32(pa, word | (cur & 0x18));
                }
                let mut req = bytes;
                if bytes[0] % 2 == 0 {
                    // A plausible request: domid 1, a small ref, a small frame.
                    req[0..4].copy_from_slice(&1u32.to_le_bytes());
                    req[4..8].copy_from_slice(&(gref % 12).to_le_bytes());
                    req[8..12].copy_from_slice(&u32::from(bytes[8] % 2).to_le_bytes());
                    req[12..16].copy_from_slice(&0u32.to_le_bytes());
                }
                copy::to_gpa(&v.npt, &mut host.mem, 0x5000, &req).unwrap();
                let arg = if op == 20 { arg % 3 } else { arg };
                let _ = control_with(&mut v, &mut vmcb, &mut host, op, 0x5000, len, arg);
                for slot in 0..4u64 {
                    let mapped = v.npt.translate(&host.mem, window + slot * 0x1000);
                    let held = host.window.get(slot);
                    proptest::prop_assert_eq!(mapped.map(|m| m.0), held.map(|s| s.hpa));
                    if let Some(s) = held.filter(|s| s.grant.is_some_and(|g| !g.1)) {
                        proptest::prop_assert_eq!(mapped.map(|m| m.1), Some(false), "{:?}", s);
                    }
                }
                if host.domu.is_some() {
                    for gref in 0..12 {
                        let held: std::vec::Vec<_> = host.window.filled()
                            .filter(|s| !s.orphan && s.grant.map(|g| g.0) == Some(gref))
                            .collect();
                        let writers = held.iter().filter(|s| s.grant.unwrap().1).count();
                        let pins = host.grants().inspect(1, |t| t.pins_of(gref)).unwrap();
                        proptest::prop_assert_eq!(
                            (usize::from(pins.0), usize::from(pins.1)),
                            (held.len(), writers)
                        );
                    }
                }
            }
            for slot in 0..4 {
                let _ = control_with(&mut v, &mut vmcb, &mut host, 19, 0, 0, slot);
                let _ = control_with(&mut v, &mut vmcb, &mut host, 6, 0, 0, slot);
            }
            proptest::prop_assert_eq!(host.window.filled().count(), 0);
            if host.domu.is_some() {
                proptest::prop_assert_eq!(host.grants().inspect(1, |t| t.any_pinned()), Some(false));
            }
        }
    }

    #[test]
    fn pvh_entry_state() {
        let (v, vmcb, _) = setup();
        assert_eq!(v.regs.rbx, domain::BOOT_INFO_GPA);
        assert_eq!(vmcb.save.rip, 0x10_0000);
        assert_ne!(vmcb.control.asid, 0);
        assert_ne!(vmcb.save.efer & policy::efer::SVME, 0);
        assert_eq!(
            vmcb.control.intercepts_hi & 1,
            1,
            "VMRUN intercept is mandatory"
        );
    }

    #[test]
    fn hypercall_console_with_paging_off() {
        let (mut v, mut vmcb, mut host) = setup();
        copy::to_gpa(&v.npt, &mut host.mem, 0x5000, b"hi!\n").unwrap();
        vmcb.control.exit_code = 0x81;
        vmcb.save.rax = 18;
        (v.regs.rdi, v.regs.rsi, v.regs.rdx) = (0, 4, 0x5000);
        assert_eq!(v.handle_exit(&mut vmcb, &mut host), ExitAction::Resume);
        assert_eq!(vmcb.save.rax, 0);
        assert_eq!(vmcb.save.rip, 0x10_0003);
        assert_eq!(host.console, b"hi!\n");
        // Beyond RAM (2 MiB): EFAULT, nothing printed.
        vmcb.save.rax = 18;
        v.regs.rdx = 2 << 20;
        v.handle_exit(&mut vmcb, &mut host);
        assert_eq!(vmcb.save.rax as i64, -14);
        assert_eq!(host.console, b"hi!\n");
    }

    #[test]
    fn msr_and_io_policy() {
        let (mut v, mut vmcb, mut host) = setup();
        vmcb.control.exit_code = 0x7C;
        vmcb.control.exit_info1 = 0;
        v.regs.rcx = 0xC001_0114; // VM_CR
        v.handle_exit(&mut vmcb, &mut host);
        assert_eq!(vmcb.control.event_inj, EventInj::GP0.encode());
        assert_eq!(
            vmcb.save.rip, 0x10_0000,
            "a faulting RDMSR does not advance"
        );
        vmcb.control.event_inj = 0;
        v.regs.rcx = u64::from(msr::EFER);
        v.handle_exit(&mut vmcb, &mut host);
        assert_eq!(vmcb.save.rax & policy::efer::SVME, 0, "SVME hidden");
        // WRMSR EFER.SVME: #GP.
        vmcb.control.exit_info1 = 1;
        vmcb.save.rax = policy::efer::SVME;
        v.handle_exit(&mut vmcb, &mut host);
        assert_eq!(vmcb.control.event_inj, EventInj::GP0.encode());
        // IN al, 0x60 reads 0xFF; RIP comes from EXITINFO2.
        vmcb.control.exit_code = 0x7B;
        vmcb.control.exit_info1 = 0x0060_0011;
        vmcb.control.exit_info2 = 0x10_0042;
        vmcb.save.rax = 0x1234_5600;
        v.handle_exit(&mut vmcb, &mut host);
        assert_eq!(vmcb.save.rax, 0x1234_56FF);
        assert_eq!(vmcb.save.rip, 0x10_0042);
    }

    #[test]
    fn faults_crash_the_domain() {
        let (mut v, mut vmcb, mut host) = setup();
        vmcb.control.exit_code = 0x400;
        vmcb.control.exit_info1 = 0x1_0000_0006;
        vmcb.control.exit_info2 = 0x30_0000;
        assert!(matches!(
            v.handle_exit(&mut vmcb, &mut host),
            ExitAction::Crash(CrashReason::NestedPageFault { .. })
        ));
        vmcb.control.exit_code = 0x7F;
        assert!(matches!(
            v.handle_exit(&mut vmcb, &mut host),
            ExitAction::Crash(CrashReason::TripleFault { .. })
        ));
        vmcb.control.exit_code = 0xFFFF_FFFF;
        assert_eq!(
            v.handle_exit(&mut vmcb, &mut host),
            ExitAction::Crash(CrashReason::InvalidState)
        );
        vmcb.control.exit_code = 0x1234;
        assert_eq!(
            v.handle_exit(&mut vmcb, &mut host),
            ExitAction::Crash(CrashReason::UnexpectedExit(0x1234))
        );
        vmcb.control.exit_code = 0x80;
        assert_eq!(v.handle_exit(&mut vmcb, &mut host), ExitAction::Resume);
        assert_eq!(vmcb.control.event_inj, EventInj::UD.encode());
    }

    #[test]
    fn hypercall_page_msr() {
        let (mut v, mut vmcb, mut host) = setup();
        vmcb.control.exit_code = 0x7C;
        vmcb.control.exit_info1 = 1;
        v.regs.rcx = u64::from(XEN_HYPERCALL_MSR);
        vmcb.save.rax = 0x8000;
        v.handle_exit(&mut vmcb, &mut host);
        assert_eq!(vmcb.control.event_inj, 0);
        let mut stub = [0u8; 5];
        copy::from_gpa(&v.npt, &host.mem, 0x8000 + 17 * 32, &mut stub).unwrap();
        assert_eq!(stub, [0xB8, 17, 0, 0, 0]);
        vmcb.save.rax = 3 << 20; // beyond RAM
        v.handle_exit(&mut vmcb, &mut host);
        assert_eq!(vmcb.control.event_inj, EventInj::GP0.encode());
    }
}
