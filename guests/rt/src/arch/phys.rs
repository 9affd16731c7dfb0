//! Reading guest-physical memory through the identity map.

use crate::arch::paging::IDENTITY_MAP_END;
use crate::boot::{BootError, PhysMem};

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
