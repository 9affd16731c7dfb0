//! Reading guest-physical memory through the identity map; the guest image's extent; the
//! PV console page.

use core::ptr::NonNull;

use pv_drivers::MappedMem;

use crate::arch::paging::IDENTITY_MAP_END;
use crate::boot::{BootError, PhysMem};

unsafe extern "C" {
    /// First byte of the image (linker script); only its address is used.
    static __guest_rt_image_start: u8;
    /// End of the image, `.bss` included (linker script); only its address is used.
    static __guest_rt_image_end: u8;
}

/// Guest-physical `start..end` of the loaded image: code, data, `.bss` (stack, page
/// tables, the `shared_info` page).
pub(crate) fn image_range() -> (u64, u64) {
    let start = (&raw const __guest_rt_image_start).addr() as u64;
    let end = (&raw const __guest_rt_image_end).addr() as u64;
    (start, end)
}

/// A page shared with Dom0 (the PV console or xenstore page) at `paddr`, as shared memory.
///
/// The caller has checked (`pvconsole::check_page`) that the page is non-null, page-aligned,
/// inside the identity map and outside the image; it must call this at most once per page
/// and never touch the page otherwise.
pub(crate) fn shared_page(paddr: u64) -> MappedMem {
    let base = core::ptr::with_exposed_provenance_mut::<u8>(paddr as usize);
    let Some(base) = NonNull::new(base) else {
        panic!("shared page at address 0");
    };
    // SAFETY: MappedMem::new's contract: (1) the page lies in (0, 4 GiB), which the
    // runtime identity-maps for reads and writes, and the domain builder backs it with
    // memory of this domain (the page it reported); it is one page, so no wrap.
    // (2) It is outside the image, so no Rust object lives there; the runtime keeps the
    // only MappedMem over it (created once, in `console::init_pv` or `control::init`), and the back-end in
    // Dom0 is an agent outside the program. (3) The mapping is never changed.
    unsafe { MappedMem::new(base, shared_abi::PAGE_SIZE) }
}

/// Reads guest-physical memory in `(0, 4 GiB)` with volatile byte loads.
///
/// Reading memory that is not backed (outside RAM) makes the microvisor crash the domain:
/// callers bound their reads by the memory map wherever they know it.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct IdentityMapped;

impl PhysMem for IdentityMapped {
    fn read(&mut self, paddr: u64, buf: &mut [u8]) -> Result<(), BootError> {
        let len = buf.len() as u64;
        // Address 0 is the null pointer: a range starting there is refused.
        let ok = paddr != 0
            && paddr
                .checked_add(len)
                .is_some_and(|end| end <= IDENTITY_MAP_END);
        if !ok {
            return Err(BootError::Unreadable {
                what: "guest-physical range",
                paddr,
                len,
            });
        }
        for (addr, byte) in (paddr..).zip(buf.iter_mut()) {
            let ptr = core::ptr::with_exposed_provenance::<u8>(addr as usize);
            // SAFETY: `addr` is in (0, 4 GiB), identity-mapped by the runtime's page
            // tables, so the load is to a valid, non-null, aligned (byte) address. The
            // memory belongs to no Rust object (boot structures written by the domain
            // builder), and a volatile load makes no assumptions about its contents.
            *byte = unsafe { ptr.read_volatile() };
        }
        Ok(())
    }
}
