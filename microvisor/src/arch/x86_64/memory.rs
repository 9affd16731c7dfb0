//! Machine memory: the global frame allocator and identity-mapped physical access.

use crate::mm::PhysMemory;
use crate::mm::frames::FrameAllocator;
use spin::Mutex;

/// Physical memory the microvisor manages: the identity-mapped low 4 GiB.
pub const MANAGED_LIMIT: u64 = 4 << 30;
const WORDS: usize = (MANAGED_LIMIT / 4096 / 64) as usize;

static mut BITMAP: [u64; WORDS] = [0; WORDS];

/// The frame allocator. Never held across a guest run.
pub static FRAMES: Mutex<Option<FrameAllocator<&'static mut [u64]>>> = Mutex::new(None);

/// Creates the allocator (BSP, once).
pub fn init() {
    // SAFETY: called once on the BSP before any other CPU runs; the bitmap is only ever
    // reached through FRAMES afterwards.
    let bitmap = &raw mut BITMAP;
    // SAFETY: as above.
    let bits: &'static mut [u64] = unsafe { &mut *bitmap };
    *FRAMES.lock() = Some(FrameAllocator::new(bits));
}

/// Zeroes the frame at `pa`.
fn zero_frame(pa: u64) {
    // SAFETY: `pa` is a frame just taken from the allocator: identity-mapped RAM below
    // MANAGED_LIMIT that nobody else references.
    unsafe { core::ptr::write_bytes(pa as *mut u8, 0, 4096) };
}

/// Allocates `count` contiguous zeroed frames.
pub fn alloc_zeroed_contiguous(count: u64) -> Option<u64> {
    let pa = FRAMES.lock().as_mut()?.alloc_contiguous(count, 1)?;
    for i in 0..count {
        zero_frame(pa + i * 4096);
    }
    Some(pa)
}

/// Free frames now.
pub fn free_frames() -> u64 {
    FRAMES.lock().as_ref().map_or(0, |f| f.free_frames())
}

/// Identity-mapped physical memory backed by the global allocator.
#[derive(Debug, Default)]
pub struct HostMem;

impl PhysMemory for HostMem {
    fn read_u64(&self, pa: u64) -> u64 {
        // SAFETY: callers pass addresses of page-table entries or guest frames, all
        // identity-mapped RAM below MANAGED_LIMIT; u64 accesses are naturally aligned.
        unsafe { core::ptr::read_volatile(pa as *const u64) }
    }

    fn write_u64(&mut self, pa: u64, val: u64) {
        // SAFETY: as for `read_u64`; the caller owns the table it edits.
        unsafe { core::ptr::write_volatile(pa as *mut u64, val) }
    }

    fn read_bytes(&self, pa: u64, buf: &mut [u8]) {
        // SAFETY: the range lies within one identity-mapped frame owned by a domain; guest
        // memory may change concurrently, so this is a plain copy into private memory.
        unsafe { core::ptr::copy_nonoverlapping(pa as *const u8, buf.as_mut_ptr(), buf.len()) };
    }

    fn write_bytes(&mut self, pa: u64, buf: &[u8]) {
        // SAFETY: as for `read_bytes`.
        unsafe { core::ptr::copy_nonoverlapping(buf.as_ptr(), pa as *mut u8, buf.len()) };
    }

    fn alloc_zeroed_frame(&mut self) -> Option<u64> {
        let pa = FRAMES.lock().as_mut()?.alloc()?;
        zero_frame(pa);
        Some(pa)
    }

    fn free_frame(&mut self, pa: u64) {
        if let Some(Err(e)) = FRAMES.lock().as_mut().map(|f| f.free(pa)) {
            super::fatal(format_args!("frame allocator invariant broken: {e:?}"));
        }
    }
}
