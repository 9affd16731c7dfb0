//! Privileged control operations: the microvisor's own hypercall, for domain 0 only.
//!
//! These are not part of the Xen ABI. They live in their own hypercall number,
//! [`CONTROL_HYPERCALL`], far above Xen's range, and every structure here is versioned by
//! [`CONTROL_VERSION`]. Dom0 reaches them through the `/dev/microvisor` kernel module
//! ([`ioctl`]), which issues the `VMMCALL` from ring 0 on behalf of `dom0d`.
//!
//! ## Calling convention
//!
//! | register | meaning |
//! |----------|---------|
//! | `RAX` | [`CONTROL_HYPERCALL`] |
//! | `RDI` | operation, a [`ControlOp`] |
//! | `RSI` | guest-physical address of the caller's buffer (Dom0 is identity-mapped, so this is the buffer's machine address) |
//! | `RDX` | buffer length in bytes, at most [`MAX_BUFFER`] |
//! | `R10` | operation argument (see each operation) |
//! | `R8`  | [`CONTROL_VERSION`] the caller was built against |
//!
//! Result in `RAX`: a non-negative count (see each operation) or a negated
//! [`Errno`](crate::errno::Errno).
//!
//! ## Errors common to every operation
//!
//! | errno | when |
//! |-------|------|
//! | `EPERM` | the caller is not domain 0, or not at CPL 0 |
//! | `EACCES` | `R8` is not [`CONTROL_VERSION`] (rebuild the caller against this crate) |
//! | `ENOSYS` | unknown operation |
//! | `EINVAL` | buffer length above [`MAX_BUFFER`], or a reserved argument is not zero |
//! | `EFAULT` | the buffer is not RAM that domain 0 owns |
//! | `ENOSPC` | the buffer is too small for even one result record |
//!
//! ## Operations
//!
//! | op | `R10` | buffer out | returns |
//! |----|-------|------------|---------|
//! | [`ControlOp::HostInfo`] | 0 | one [`HostInfo`] | size of [`HostInfo`] |
//! | [`ControlOp::DomainList`] | first domid to report | as many [`DomainInfo`] as fit, ascending domid, starting at the first existing domid `>= R10` | number of records written (0: no more domains) |
//! | [`ControlOp::DomainInfo`] | domid | one [`DomainInfo`] | size of [`DomainInfo`]; `ESRCH` if no such domain |
//! | [`ControlOp::EventsTake`] | 0 | nothing (length may be 0) | the `EVENT_*` bits raised since the last call, clearing them |
//! | [`ControlOp::ForeignMap`] | window slot | in: one [`ForeignMapRequest`] | 0 |
//! | [`ControlOp::ForeignUnmap`] | window slot | nothing | 0 |
//! | [`ControlOp::DomainPause`] | domid | nothing | 0 once the domain will not run again until unpaused |
//! | [`ControlOp::DomainUnpause`] | domid | nothing | 0 |
//! | [`ControlOp::DomainDestroy`] | domid | nothing | 0; its memory is back in the pool |
//! | [`ControlOp::DomainCreate`] | 0 | in: one [`DomainCreateRequest`] | the new domid |
//! | [`ControlOp::DomainSetEntry`] | domid | in: one [`VcpuEntry`] | 0 |
//! | [`ControlOp::EvtchnAllocUnbound`] | domid | nothing | a new port of DomU `domid`, unbound, that domain 0 may bind |
//! | [`ControlOp::EvtchnBindInterdomain`] | `domid << 32 \| port` | nothing | domain 0's new port, connected to that unbound port (it starts pending, as in Xen) |
//! | [`ControlOp::EvtchnSend`] | domain 0 port | nothing | 0 |
//! | [`ControlOp::EvtchnClose`] | domain 0 port | nothing | 0 |
//! | [`ControlOp::EvtchnTakePending`] | 0 | as many `u32` pending domain 0 ports as fit, ascending | number of ports written, each now cleared (0: none pending) |
//! | [`ControlOp::DomainSetParam`] | domid | in: one [`DomainParam`] | 0 |
//! | [`ControlOp::GrantMap`] | window slot | in: one [`GrantMapRequest`] | 0 |
//! | [`ControlOp::GrantUnmap`] | window slot | nothing | 0 |
//! | [`ControlOp::GrantCopy`] | number of segments `n` | in: `n` [`GrantCopySegment`]s, then data; out: the same with each `status` set and the data copied in | number of segments with status `GNTST_OKAY` |
//!
//! ## Building a domain
//!
//! The microvisor never parses guest images; Dom0's builder does:
//!
//! 1. [`ControlOp::DomainCreate`] makes a domain with zeroed RAM at guest-physical
//!    `0..memory`, one vCPU, and no kernel. It is **paused** and has never run.
//! 2. The builder writes the kernel's segments, `hvm_start_info` and the memory map into
//!    that RAM through the foreign window ([`ControlOp::ForeignMap`]).
//! 3. [`ControlOp::DomainSetEntry`] sets the PVH entry state (32-bit protected mode, paging
//!    off, `EIP` = entry, `EBX` = start info).
//! 4. [`ControlOp::DomainUnpause`] starts it.
//!
//! | errno | when |
//! |-------|------|
//! | `EINVAL` | create: `vcpus` is not 1, memory outside [`MIN_DOMAIN_MEM_MIB`]..=[`MAX_DOMAIN_MEM_MIB`], the name is empty or not printable ASCII, a reserved field is not zero; set-entry: the entry or start info is not below the domain's memory |
//! | `EEXIST` | create: a domain already has that name |
//! | `ENOMEM` | create: not enough free memory (see [`HostInfo::mem_free_kib`]) |
//! | `ENOSPC` | create: no free domain id |
//! | `EBUSY` | set-entry: the domain has already run |
//!
//! ## Event channels of domain 0
//!
//! Domain 0 has ports like any domain (`1..`[`MAX_PORTS`](crate::event_channel::MAX_PORTS)),
//! but no `shared_info`: when a DomU sends on a channel whose other end is a domain 0 port,
//! the microvisor marks that port pending and raises [`EVENT_EVTCHN`]; Dom0 then takes the
//! pending ports with [`ControlOp::EvtchnTakePending`] until it returns 0. A back-end
//! connects to a DomU the Xen way: the builder allocates an unbound DomU port for domain 0
//! ([`ControlOp::EvtchnAllocUnbound`]) and tells the guest (an HVM parameter or xenstore);
//! Dom0 binds to it ([`ControlOp::EvtchnBindInterdomain`]). When the DomU goes, domain 0's
//! port becomes unbound (sends are dropped) until Dom0 closes it. Closing a port clears
//! its pending bit.
//!
//! | errno | when |
//! |-------|------|
//! | `ESRCH` | no such DomU (alloc, bind), or domid 0 |
//! | `EINVAL` | bind: the port is not an unbound port for domain 0; send/close: the domain 0 port is not allocated |
//! | `ENOSPC` | no free port in the domain |
//!
//! ## HVM parameters
//!
//! [`ControlOp::DomainSetParam`] sets the parameters a guest reads with `HVMOP_get_param`
//! ([`crate::hvm`]): `STORE_PFN`, `STORE_EVTCHN`, `CONSOLE_PFN` and `CONSOLE_EVTCHN`.
//! `EINVAL` for another index, a non-zero reserved field, a frame outside the domain's RAM
//! or a port outside `1..MAX_PORTS`; `ESRCH` no such DomU.
//!
//! ## Lifecycle errors
//!
//! | errno | when |
//! |-------|------|
//! | `ESRCH` | no such domain |
//! | `EPERM` | the target is domain 0 |
//! | `EBUSY` | pause of a paused domain, unpause of a domain that is not paused |
//! | `EINVAL` | pause or unpause of a domain that has shut down or crashed (destroy it) |
//!
//! Pausing takes effect at the domain's next exit: the microvisor interrupts its pCPU, so
//! that is immediate. Destroy works in every state; for a domain that already shut down or
//! crashed it removes the record that `DomainList` still shows.
//!
//! ## Foreign mappings
//!
//! Domain 0 reaches another domain's memory through the *foreign window*: guest-physical
//! pages [`HostInfo::foreign_window_gpa`] + slot × 4096, for slot below
//! [`HostInfo::foreign_window_pages`], which Dom0's memory map reports as reserved.
//! [`ControlOp::ForeignMap`] maps frame `gfn` of domain `domid` into a slot;
//! `/dev/microvisor`'s `mmap` (offset = slot × 4096) then maps the slot into a process.
//! A frame stays allocated while it is mapped, even if its domain ends, until
//! [`ControlOp::ForeignUnmap`] releases the slot.
//!
//! | errno | when |
//! |-------|------|
//! | `EINVAL` | slot outside the window, a reserved field not zero, or `gfn` is not RAM of the domain |
//! | `ESRCH` | no such running domain, or `domid` is 0 |
//! | `EBUSY` | the slot is already mapped (map) |
//! | `ENOENT` | the slot is not mapped (unmap) |
//! | `EINVAL` | unmap: the slot holds a grant mapping (use [`ControlOp::GrantUnmap`]) |
//!
//! ## Grant mappings and copies (back-ends)
//!
//! A DomU shares a frame with domain 0 through its grant table
//! ([`crate::grant_table`]): an entry naming domain 0 as grantee. A back-end in Dom0 then
//! maps that grant into a slot of the foreign window, or copies to and from it:
//!
//! - [`ControlOp::GrantMap`] (`R10` = slot, buffer = one [`GrantMapRequest`]) marks entry
//!   `gref` of DomU `domid` in use (`GTF_READING`, plus `GTF_WRITING` unless
//!   [`GRANT_MAP_READONLY`]) with one compare-and-swap that also checks that the entry
//!   still grants that access to domain 0, then maps the granted frame into the slot,
//!   read-only or writable. The slot is the mapping's handle. While it is mapped the
//!   granter cannot revoke the entry (Xen's rule: revoke only while neither in-use bit
//!   is set) and the microvisor keeps using the frame it found at map time.
//! - [`ControlOp::GrantUnmap`] (`R10` = slot) removes the mapping, then releases the
//!   entry (clearing `GTF_WRITING` with its last writable use and `GTF_READING` with its
//!   last use). Domain 0 runs only on its own pCPU and this call is its own exit, so it
//!   executes nothing between the unmap and its next entry, which flushes its TLB: no
//!   stale translation of the frame survives the call, on any pCPU.
//! - [`ControlOp::GrantCopy`] (`R10` = `n`) copies, for each of the `n`
//!   [`GrantCopySegment`]s at the start of the buffer in order, `len` bytes between a
//!   grant (flag `GNTCOPY_SOURCE_GREF` / `GNTCOPY_DEST_GREF`: `u` = reference, `domid` =
//!   the granter, `offset` = byte in the granted page) and the buffer (flag clear: `u` =
//!   byte offset in this call's buffer, at or after the segments; `domid` and `offset`
//!   0), or between two grants. Each grant is in use (reading for a source, writing for
//!   a destination) only during its segment. Each segment lies within one page and gets
//!   its own `GNTST_*` status; later segments see the buffer as earlier ones left it.
//!   With a buffer of at most [`MAX_BUFFER`] bytes, one call moves up to
//!   `MAX_BUFFER - 24 n` bytes to or from Dom0 and up to a page per grant-to-grant
//!   segment.
//!
//! | errno (map, unmap, copy call) | when |
//! |-------|------|
//! | `EINVAL` | slot outside the window, a reserved field or unknown flag not zero, the buffer shorter than the request; unmap: the slot holds a [`ControlOp::ForeignMap`] mapping; copy: `n` is 0 or the segments do not fit in the buffer |
//! | `ESRCH` | map: `domid` is 0 or not a live DomU (it has ended, or is dying) |
//! | `EBUSY` | map: the slot is already mapped |
//! | `ENOENT` | map: `gref` is beyond the DomU's placed table, or the entry is not a permit-access grant (`GNTST_BAD_GNTREF`); unmap: the slot is empty |
//! | `EPERM` | map: the entry grants another domain, or is read-only and the map is writable (`GNTST_PERMISSION_DENIED`) |
//! | `ERANGE` | map: the granted frame is not RAM of the DomU (`GNTST_BAD_PAGE`) |
//! | `EAGAIN` | map: the entry kept changing under the compare-and-swap (`GNTST_GENERAL_ERROR`) |
//! | `ENOSPC` | map: too many entries of that DomU in use at once (`GNTST_NO_SPACE`) |
//!
//! Segment statuses: `GNTST_OKAY`; `GNTST_BAD_COPY_ARG` (unknown flag or non-zero pad,
//! neither side a grant, `len` above 4096, a grant side crossing its page, a buffer side
//! outside the data after the segments or with `domid`/`offset` not 0); `GNTST_BAD_DOMAIN`
//! (granter 0 or not a live DomU); `GNTST_BAD_GNTREF`; `GNTST_PERMISSION_DENIED`;
//! `GNTST_BAD_PAGE`; `GNTST_GENERAL_ERROR` (the entry kept changing); `GNTST_NO_SPACE`.
//!
//! **A granter that ends while mapped.** When a DomU shuts down, crashes or is destroyed
//! while Dom0 still maps some of its grants, those frames are handed to Dom0 (taken out
//! of the DomU's memory; everything else is freed at once) and freed when Dom0 unmaps
//! them. A destroyed DomU with grant mappings left stays listed with state
//! [`DOMAIN_STATE_DYING`], and its domid is not reused, until Dom0 unmaps the last one;
//! then its record goes ([`EVENT_DOMAIN_STATE`]). A DomU that shut down or crashed keeps
//! its state until it is destroyed, then is dying the same way if mappings remain.
//! Destroying a dying domain again is `ESRCH` (it is destroyed already); pause and unpause
//! are `ESRCH` too. A dying domain keeps its name: [`ControlOp::DomainCreate`] with that
//! name is `EEXIST` until it is gone, so a toolstack that restarts a domain releases its
//! back-ends' grant mappings first.
//!
//! ## Events
//!
//! The microvisor interrupts domain 0 through a PCI function that only Dom0 sees (vendor
//! [`EVENT_VENDOR_ID`], device [`EVENT_DEVICE_ID`], one MSI vector, no BARs). Whenever it
//! raises an event bit it sends the MSI that Dom0 programmed into the function, as a fixed
//! interrupt to Dom0's pCPU; Dom0 then collects the bits with [`ControlOp::EventsTake`].
//! Events raised before Dom0 enabled MSI stay pending until taken.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Hypercall number of the control call (outside Xen's numbering).
pub const CONTROL_HYPERCALL: u64 = 0x4d56_0000;
/// Version of the control structures. Bumped on any layout or meaning change.
pub const CONTROL_VERSION: u64 = 1;
/// Largest buffer one control call accepts.
pub const MAX_BUFFER: usize = 4096;

/// Control operations (`RDI`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u64)]
pub enum ControlOp {
    /// Facts about the machine and the microvisor.
    HostInfo = 1,
    /// A page of domains.
    DomainList = 2,
    /// One domain.
    DomainInfo = 3,
    /// Take (and clear) Dom0's pending event bits.
    EventsTake = 4,
    /// Map another domain's frame into a foreign-window slot.
    ForeignMap = 5,
    /// Unmap a foreign-window slot.
    ForeignUnmap = 6,
    /// Pause a domain.
    DomainPause = 7,
    /// Unpause a domain.
    DomainUnpause = 8,
    /// Destroy a domain and free its memory.
    DomainDestroy = 9,
    /// Create an empty, paused domain.
    DomainCreate = 10,
    /// Set the entry state of a domain that has not run yet.
    DomainSetEntry = 11,
    /// Allocate an unbound port in a DomU for domain 0 to bind.
    EvtchnAllocUnbound = 12,
    /// Bind a new domain 0 port to a DomU's unbound port.
    EvtchnBindInterdomain = 13,
    /// Signal the peer of a domain 0 port.
    EvtchnSend = 14,
    /// Close a domain 0 port.
    EvtchnClose = 15,
    /// Take (and clear) domain 0's pending ports.
    EvtchnTakePending = 16,
    /// Set an HVM parameter of a DomU.
    DomainSetParam = 17,
    /// Map a DomU's grant into a foreign-window slot.
    GrantMap = 18,
    /// Unmap a grant mapping.
    GrantUnmap = 19,
    /// Copy to, from or between granted frames.
    GrantCopy = 20,
}

/// Smallest DomU memory, MiB.
pub const MIN_DOMAIN_MEM_MIB: u32 = 2;
/// Largest DomU memory, MiB.
pub const MAX_DOMAIN_MEM_MIB: u32 = 3072;

/// Input of [`ControlOp::DomainCreate`].
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct DomainCreateRequest {
    /// Memory in MiB.
    pub mem_mib: u32,
    /// Number of vCPUs (1 for now).
    pub vcpus: u32,
    /// Reserved, zero.
    pub reserved: [u32; 2],
    /// Name, NUL-padded printable ASCII, unique among domains.
    pub name: [u8; 32],
}
const _: () = assert!(core::mem::size_of::<DomainCreateRequest>() == 48);

/// Input of [`ControlOp::DomainSetEntry`]: the PVH entry state.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct VcpuEntry {
    /// Guest-physical entry point (`XEN_ELFNOTE_PHYS32_ENTRY`).
    pub entry: u64,
    /// Guest-physical address of `hvm_start_info` (loaded into `EBX`).
    pub start_info: u64,
}
const _: () = assert!(core::mem::size_of::<VcpuEntry>() == 16);

/// Input of [`ControlOp::ForeignMap`].
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct ForeignMapRequest {
    /// The domain whose frame is mapped (not 0).
    pub domid: u32,
    /// Reserved, zero.
    pub reserved: u32,
    /// Guest frame number in that domain.
    pub gfn: u64,
}
const _: () = assert!(core::mem::size_of::<ForeignMapRequest>() == 16);

/// Input of [`ControlOp::DomainSetParam`].
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct DomainParam {
    /// `HVM_PARAM_STORE_PFN`, `STORE_EVTCHN`, `CONSOLE_PFN` or `CONSOLE_EVTCHN`.
    pub index: u32,
    /// Reserved, zero.
    pub reserved: u32,
    /// The value.
    pub value: u64,
}
const _: () = assert!(core::mem::size_of::<DomainParam>() == 16);

/// Input of [`ControlOp::GrantMap`].
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct GrantMapRequest {
    /// The granting DomU (not 0).
    pub domid: u32,
    /// The grant reference (entry index) in its table.
    pub gref: u32,
    /// [`GRANT_MAP_READONLY`] or 0.
    pub flags: u32,
    /// Reserved, zero.
    pub reserved: u32,
}
const _: () = assert!(core::mem::size_of::<GrantMapRequest>() == 16);

/// [`GrantMapRequest::flags`]: map read-only (only `GTF_READING` is set; the entry may be
/// a read-only grant).
pub const GRANT_MAP_READONLY: u32 = 1 << 0;

/// One side of a [`GrantCopySegment`] (Xen's `gnttab_copy` side, with a buffer offset in
/// place of a local frame).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct GrantCopyPtr {
    /// A grant side: the grant reference. The buffer side: the byte offset in the call's
    /// buffer.
    pub u: u32,
    /// A grant side: the granting DomU. The buffer side: 0.
    pub domid: u16,
    /// A grant side: the byte offset in the granted page. The buffer side: 0.
    pub offset: u16,
}
const _: () = assert!(core::mem::size_of::<GrantCopyPtr>() == 8);

/// One segment of [`ControlOp::GrantCopy`].
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct GrantCopySegment {
    /// Where the bytes come from.
    pub source: GrantCopyPtr,
    /// Where they go.
    pub dest: GrantCopyPtr,
    /// Bytes to copy, at most 4096; neither grant side may cross its page.
    pub len: u16,
    /// `GNTCOPY_SOURCE_GREF` and/or `GNTCOPY_DEST_GREF`
    /// ([`crate::grant_table`]); at least one.
    pub flags: u16,
    /// Out: `GNTST_*`.
    pub status: i16,
    /// Reserved, zero.
    pub pad: u16,
}
const _: () = assert!(core::mem::size_of::<GrantCopySegment>() == 24);

/// Event bit: a domain was created, paused, unpaused, shut down, crashed or went.
/// Switches between running and blocked do not raise it (they follow the guest's own
/// pace, every idle halt); [`ControlOp::DomainInfo`] shows them.
pub const EVENT_DOMAIN_STATE: u64 = 1 << 0;
/// Event bit: some domain 0 event-channel ports are pending
/// ([`ControlOp::EvtchnTakePending`]).
pub const EVENT_EVTCHN: u64 = 1 << 1;
/// PCI vendor id of the event function ("MV").
pub const EVENT_VENDOR_ID: u16 = 0x4D56;
/// PCI device id of the event function.
pub const EVENT_DEVICE_ID: u16 = 0x0001;

impl TryFrom<u64> for ControlOp {
    type Error = crate::errno::Errno;
    fn try_from(v: u64) -> Result<Self, Self::Error> {
        Ok(match v {
            1 => ControlOp::HostInfo,
            2 => ControlOp::DomainList,
            3 => ControlOp::DomainInfo,
            4 => ControlOp::EventsTake,
            5 => ControlOp::ForeignMap,
            6 => ControlOp::ForeignUnmap,
            7 => ControlOp::DomainPause,
            8 => ControlOp::DomainUnpause,
            9 => ControlOp::DomainDestroy,
            10 => ControlOp::DomainCreate,
            11 => ControlOp::DomainSetEntry,
            12 => ControlOp::EvtchnAllocUnbound,
            13 => ControlOp::EvtchnBindInterdomain,
            14 => ControlOp::EvtchnSend,
            15 => ControlOp::EvtchnClose,
            16 => ControlOp::EvtchnTakePending,
            17 => ControlOp::DomainSetParam,
            18 => ControlOp::GrantMap,
            19 => ControlOp::GrantUnmap,
            20 => ControlOp::GrantCopy,
            _ => return Err(crate::errno::Errno::ENOSYS),
        })
    }
}

/// Facts about the host ([`ControlOp::HostInfo`]).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct HostInfo {
    /// [`CONTROL_VERSION`] of the microvisor.
    pub control_version: u32,
    /// Physical CPUs the microvisor runs on.
    pub pcpus: u32,
    /// The pCPU dedicated to domain 0.
    pub dom0_pcpu: u32,
    /// Reserved, zero.
    pub reserved0: u32,
    /// Usable RAM of the machine, in KiB.
    pub mem_total_kib: u64,
    /// RAM not given to any domain nor used by the microvisor, in KiB.
    pub mem_free_kib: u64,
    /// TSC frequency in kHz, as calibrated at boot.
    pub tsc_khz: u64,
    /// Time since the microvisor started, in nanoseconds.
    pub uptime_ns: u64,
    /// Microvisor version, NUL-padded ASCII (e.g. `"0.1.0"`).
    pub version: [u8; 32],
    /// Guest-physical address of Dom0's foreign window (0: none).
    pub foreign_window_gpa: u64,
    /// Pages in the foreign window.
    pub foreign_window_pages: u64,
}
const _: () = assert!(core::mem::size_of::<HostInfo>() == 96);

/// Domain states in [`DomainInfo::state`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum DomainState {
    /// Runnable or running.
    Running = 1,
    /// Waiting for an event (halted or blocked).
    Blocked = 2,
    /// Paused by the toolstack.
    Paused = 3,
    /// Shut down by itself; [`DomainInfo::shutdown_reason`] says why.
    Shutdown = 4,
    /// Crashed; the microvisor's log says why.
    Crashed = 5,
    /// Destroyed while domain 0 still maps some of its grants: its memory is back in the
    /// pool except those frames, and the record (and the domid) stays until Dom0 unmaps
    /// the last of them; `mem_kib` is 0.
    Dying = 6,
}

/// [`DomainState::Dying`] as `u32`.
pub const DOMAIN_STATE_DYING: u32 = DomainState::Dying as u32;

impl DomainState {
    /// Decodes a state; `None` for values this version does not know.
    pub const fn from_u32(v: u32) -> Option<Self> {
        Some(match v {
            1 => DomainState::Running,
            2 => DomainState::Blocked,
            3 => DomainState::Paused,
            4 => DomainState::Shutdown,
            5 => DomainState::Crashed,
            6 => DomainState::Dying,
            _ => return None,
        })
    }

    /// Lower-case name, as the toolstack prints it.
    pub const fn name(self) -> &'static str {
        match self {
            DomainState::Running => "running",
            DomainState::Blocked => "blocked",
            DomainState::Paused => "paused",
            DomainState::Shutdown => "shutdown",
            DomainState::Crashed => "crashed",
            DomainState::Dying => "dying",
        }
    }
}

/// [`DomainInfo::flags`]: the domain is privileged (domain 0).
pub const DOMAIN_FLAG_PRIVILEGED: u32 = 1 << 0;

/// One domain ([`ControlOp::DomainInfo`], [`ControlOp::DomainList`]).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct DomainInfo {
    /// Domain id.
    pub domid: u32,
    /// A [`DomainState`] as `u32`.
    pub state: u32,
    /// [`DOMAIN_FLAG_PRIVILEGED`] and future flags.
    pub flags: u32,
    /// Number of vCPUs.
    pub vcpus: u32,
    /// The pCPU the domain's vCPU runs on.
    pub pcpu: u32,
    /// For [`DomainState::Shutdown`]: the `SHUTDOWN_*` reason of
    /// [`sched`](crate::sched); otherwise 0.
    pub shutdown_reason: u32,
    /// Memory given to the domain, in KiB.
    pub mem_kib: u64,
    /// Time the domain's vCPUs spent in guest mode, in nanoseconds. Domain 0 owns its pCPU
    /// and halts in guest mode, so its figure includes its idle time.
    pub cpu_time_ns: u64,
    /// Domain name, NUL-padded ASCII.
    pub name: [u8; 32],
}
const _: () = assert!(core::mem::size_of::<DomainInfo>() == 72);

/// Returns the text of a NUL-padded ASCII field, or `None` if it is malformed.
pub fn fixed_str(field: &[u8]) -> Option<&str> {
    let len = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    let (text, pad) = field.split_at(len);
    if pad.iter().any(|&b| b != 0) || !text.iter().all(|b| (0x20..0x7f).contains(b)) {
        return None;
    }
    core::str::from_utf8(text).ok()
}

/// Copies `s` into a NUL-padded field, truncating it to leave at least one NUL.
pub fn fill_fixed_str(field: &mut [u8], s: &str) {
    field.fill(0);
    let n = s.len().min(field.len().saturating_sub(1));
    field[..n].copy_from_slice(&s.as_bytes()[..n]);
}

/// The `/dev/microvisor` ioctl interface (Linux, `dom0/kmod`).
///
/// `ioctl(fd, IOCTL_CONTROL, &mut IoctlControl)` copies `buf_len` bytes from `buf` into a
/// kernel page, issues the control hypercall with that page, copies the page back into `buf`,
/// and returns the hypercall's non-negative result. A negative hypercall result becomes `-1`
/// with `errno` set to the same number (Xen's errno values equal Linux's for every code
/// listed above). The module itself fails with `ENOTTY` (unknown ioctl), `EINVAL`
/// (`buf_len` above [`MAX_BUFFER`] or a reserved field not zero), `EFAULT` (bad user
/// pointer) and `EACCES`/`EPERM` (opened without `CAP_SYS_ADMIN`).
pub mod ioctl {
    use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

    /// The ioctl type byte (`'M'`).
    pub const IOCTL_TYPE: u8 = b'M';
    /// The ioctl number within [`IOCTL_TYPE`].
    pub const IOCTL_CONTROL_NR: u8 = 1;
    /// `_IOWR('M', 1, struct mv_control)`: Linux's encoding of direction (3 = read|write),
    /// size, type and number.
    pub const IOCTL_CONTROL: u32 = (3 << 30)
        | ((core::mem::size_of::<IoctlControl>() as u32) << 16)
        | ((IOCTL_TYPE as u32) << 8)
        | IOCTL_CONTROL_NR as u32;

    /// Argument of [`IOCTL_CONTROL`] (`struct mv_control` in `dom0/kmod/microvisor.h`).
    #[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
    #[repr(C)]
    pub struct IoctlControl {
        /// [`ControlOp`](super::ControlOp) (`RDI`).
        pub op: u64,
        /// Operation argument (`R10`).
        pub arg: u64,
        /// [`CONTROL_VERSION`](super::CONTROL_VERSION) (`R8`).
        pub version: u64,
        /// User pointer to the buffer.
        pub buf: u64,
        /// Buffer length in bytes, at most [`MAX_BUFFER`](super::MAX_BUFFER).
        pub buf_len: u32,
        /// Reserved, zero.
        pub reserved: u32,
    }
    const _: () = assert!(core::mem::size_of::<IoctlControl>() == 40);
    const _: () = assert!(IOCTL_CONTROL == 0xc028_4d01);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ops_round_trip_and_unknown_is_enosys() {
        for op in [
            ControlOp::HostInfo,
            ControlOp::DomainList,
            ControlOp::DomainInfo,
            ControlOp::EventsTake,
            ControlOp::ForeignMap,
            ControlOp::ForeignUnmap,
            ControlOp::DomainPause,
            ControlOp::DomainUnpause,
            ControlOp::DomainDestroy,
            ControlOp::DomainCreate,
            ControlOp::DomainSetEntry,
            ControlOp::EvtchnAllocUnbound,
            ControlOp::EvtchnBindInterdomain,
            ControlOp::EvtchnSend,
            ControlOp::EvtchnClose,
            ControlOp::EvtchnTakePending,
            ControlOp::DomainSetParam,
            ControlOp::GrantMap,
            ControlOp::GrantUnmap,
            ControlOp::GrantCopy,
        ] {
            assert_eq!(ControlOp::try_from(op as u64), Ok(op));
        }
        assert_eq!(ControlOp::try_from(0), Err(crate::errno::Errno::ENOSYS));
        assert_eq!(
            ControlOp::try_from(u64::MAX),
            Err(crate::errno::Errno::ENOSYS)
        );
    }

    #[test]
    fn fixed_strings() {
        let mut f = [0u8; 8];
        fill_fixed_str(&mut f, "dom0-long-name");
        assert_eq!(fixed_str(&f), Some("dom0-lo"));
        assert_eq!(fixed_str(b"ab\0c"), None);
        assert_eq!(fixed_str(b"a\x01\0\0"), None);
        assert_eq!(DomainState::from_u32(9), None);
        assert_eq!(
            DomainState::from_u32(DOMAIN_STATE_DYING),
            Some(DomainState::Dying)
        );
        assert_eq!(DomainState::from_u32(7), None);
        assert_eq!(
            DomainState::from_u32(4).map(DomainState::name),
            Some("shutdown")
        );
    }
}
