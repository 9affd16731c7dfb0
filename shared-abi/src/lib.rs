//! # The microvisor guest ABI
//!
//! This crate is everything a guest kernel author needs to talk to the microvisor. The
//! DomU-facing ABI is a subset of the **Xen PVH guest ABI**: the same hypercall numbers,
//! structure layouts and semantics as Xen's public headers, so a guest written against this
//! crate also runs on Xen, and existing PVH guests can run on the microvisor.
//!
//! ## Calling convention
//!
//! A hypercall is the `VMMCALL` instruction (`0F 01 D9`) executed at CPL 0 in 64-bit mode.
//!
//! | slot      | register |
//! |-----------|----------|
//! | number    | `RAX`    |
//! | argument 1| `RDI`    |
//! | argument 2| `RSI`    |
//! | argument 3| `RDX`    |
//! | argument 4| `R10`    |
//! | argument 5| `R8`     |
//! | result    | `RAX`    |
//!
//! The result is `0` or a positive value on success and a negated [`Errno`] on failure.
//! Argument registers may be clobbered by the call; every other register is preserved.
//! Pointer arguments are guest *linear* addresses, translated through the caller's own page
//! tables (or taken as guest-physical when paging is off); a buffer that is not mapped, not
//! backed by the caller's memory, or that wraps the address space yields [`Errno::EFAULT`].
//! A call from CPL > 0 returns [`Errno::EPERM`]. An unknown hypercall number or sub-operation
//! returns [`Errno::ENOSYS`], never success.
//!
//! ## Discovery
//!
//! CPUID leaves from [`cpuid::XEN_CPUID_BASE`] identify the hypervisor with the Xen
//! signature (see [`cpuid`]); the version leaf reports the Xen interface level that this ABI
//! mirrors ([`XEN_VERSION_MAJOR`].[`XEN_VERSION_MINOR`]).
//!
//! ## Calls
//!
//! Each call is documented on its [`Hypercall`] variant and, in detail, in its module:
//!
//! | number | call | module | status |
//! |--------|------|--------|--------|
//! | 12 | `memory_op`    | [`memory`]  | add_to_physmap (shared_info, grant table frames) |
//! | 15 | `set_timer_op` | [`vcpu`]    | single-shot timer |
//! | 17 | `xen_version`  | [`version`] | version, extraversion, get_features, pagesize |
//! | 18 | `console_io`   | [`console`] | write |
//! | 20 | `grant_table_op` | [`grant_table`] | query_size, set_version (1), get_version |
//! | 24 | `vcpu_op`      | [`vcpu`]    | set/stop_singleshot_timer, stop_periodic_timer |
//! | 29 | `sched_op`     | [`sched`]   | yield, block, poll, shutdown |
//! | 32 | `event_channel_op` | [`event_channel`] | alloc_unbound, bind_interdomain, bind_virq, close, send, status, unmask |
//! | 34 | `hvm_op`       | [`hvm`]     | set_param (callback vector), get_param |
//!
//! | `0x4d56_0000` | microvisor control | [`control`] | host info, domain list/info, events, foreign map/unmap, create, set entry, pause, unpause, destroy (domain 0 only) |
//!
//! Numbers of the rest of the planned subset are listed in [`Hypercall`]; until a call is
//! implemented it returns `-ENOSYS` so that guests can probe for it.
//!
//! ## Events, time and the console
//!
//! A guest places its [`shared_info`] page, sets its callback vector
//! ([`hvm::HVM_PARAM_CALLBACK_IRQ`]), binds [`event_channel::VIRQ_TIMER`] and sleeps with
//! the single-shot timer and `SCHEDOP_block`. Its PV console is the ring page
//! ([`io::console`]) and event channel named by the console HVM parameters.
//!
//! ## Boot
//!
//! Guests enter through the PVH entry point (ELF note [`pvh::XEN_ELFNOTE_PHYS32_ENTRY`])
//! in 32-bit protected mode with paging off and `EBX` holding the guest-physical address of
//! an [`pvh::HvmStartInfo`]. See [`pvh`].
#![no_std]
#![deny(missing_docs)]

pub mod console;
pub mod control;
pub mod cpuid;
pub mod errno;
pub mod event_channel;
pub mod grant_table;
pub mod hvm;
pub mod hypercall;
pub mod io;
pub mod memory;
pub mod pvh;
pub mod sched;
pub mod shared_info;
pub mod vcpu;
pub mod version;

#[cfg(feature = "guest")]
pub mod guest;

pub use errno::Errno;
pub use hypercall::Hypercall;

/// Version of this crate's interface. Bumped by every addition; nothing is ever renumbered.
pub const INTERFACE_VERSION: u32 = 1;

/// Xen interface level mirrored by this ABI: major version, reported by CPUID and
/// `xen_version(XENVER_version)`.
pub const XEN_VERSION_MAJOR: u16 = 4;
/// Xen interface level mirrored by this ABI: minor version.
pub const XEN_VERSION_MINOR: u16 = 19;

/// Size of a guest page (the only page size of this ABI).
pub const PAGE_SIZE: usize = 4096;

/// A domain identifier. Domain 0 is the privileged control domain.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(transparent)]
pub struct DomId(pub u16);

impl DomId {
    /// The privileged control domain.
    pub const DOM0: DomId = DomId(0);
    /// "The calling domain" in calls that take a domain id (Xen's `DOMID_SELF`).
    pub const SELF: DomId = DomId(0x7FF0);
}
