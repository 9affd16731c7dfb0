//! The machine boundary. Every `asm!`/`global_asm!` and every `unsafe` block of the
//! runtime lives in this module tree:
//!
//! - [`entry`]: the PVH note and the 32-bit entry that switches to long mode;
//! - [`paging`]: the identity page tables (0..4 GiB, 2 MiB pages) and their builder;
//! - [`idt`]: the exception stubs, the event-channel upcall stub, and the IDT;
//! - [`port`]: port I/O;
//! - [`cpu`]: CPUID, TSC, MSRs, control registers, halt;
//! - [`phys`]: reads of guest-physical memory through the identity map.
//!
//! Assumptions, for every module here: CPL 0, one vCPU, one address space that
//! identity-maps guest-physical 0..4 GiB. Interrupts stay disabled unless the guest opts
//! into events ([`crate::events::init`]): only then, after the callback vector's gate is
//! installed, is RFLAGS.IF set, and the only interrupt ever raised is that upcall.

pub mod cpu;
pub(crate) mod entry;
pub(crate) mod idt;
pub(crate) mod paging;
pub(crate) mod phys;
pub mod port;
