//! dom0d's domain builder: what [`Request::Create`](crate::proto::Request::Create) does.
//!
//! The microvisor never parses guest images (`shared_abi::control`, "Building a domain");
//! this module does, with the microvisor crate's own parser and layout so that boot-time
//! DomUs and DomUs built here look the same to the guest:
//!
//! 1. **Check everything before the domain exists** ([`layout`], [`check_host`]): the config again
//!    ([`DomainConfig::check`]); the kernel file is readable and at most
//!    [`MAX_KERNEL_BYTES`]; it is an x86-64 ELF executable with a PVH entry note
//!    (`microvisor::elf::PvhImage`); every `PT_LOAD` segment lies inside guest RAM, clear
//!    of page 0, the boot page and the xenstore and console pages (the last two pages of
//!    RAM), and the entry point inside a segment (`microvisor::domain::check`); the command
//!    line fits the boot page; the ramdisk fits between the kernel's end and those pages;
//!    the memory is at most what `HostInfo` reports free; no domain has the name; the
//!    microvisor has a foreign window.
//! 2. `DomainCreate`: an empty, paused domain with zeroed RAM at `0..memory`.
//! 3. Its memory is written through [`WINDOW_SLOTS`] foreign-window slots, reused in
//!    batches: `ForeignMap` each page of a batch into a slot, `mmap` the slots, copy,
//!    `munmap`, `ForeignUnmap` ([`write_memory`]). What is written: the kernel's segments
//!    (the bytes from the file; the rest of each segment is already zero), the boot page
//!    at [`BOOT_INFO_GPA`] (`hvm_start_info`, the command line and the memory map, as
//!    `microvisor::domain::boot_info_page` lays them out, with the map split in two: RAM
//!    `0..memory - 8 KiB` and the xenstore and console pages as `E820_RESERVED`, so the
//!    guest never uses them as memory) and the ramdisk, page-aligned just below them, as
//!    the start info's one module.
//! 4. The PV console and xenstore pages ([`setup_ring`]): the console page is the last
//!    page of RAM, the xenstore page the one below (zero, like all fresh RAM). For each,
//!    `EvtchnAllocUnbound` makes the DomU's port, `EvtchnBindInterdomain` binds a domain 0
//!    port to it, the page is mapped into dom0d for the domain's life ([`PagePool`]), and
//!    `DomainSetParam` sets `CONSOLE_PFN`/`CONSOLE_EVTCHN` or `STORE_PFN`/`STORE_EVTCHN`
//!    for the guest to read. A microvisor without event channels (`ENOSYS`) builds
//!    domains without either (logged once).
//! 5. `DomainSetEntry { entry, start_info: 0x1000 }`.
//! 6. `DomainUnpause`, unless the request asks for a paused domain.
//!
//! On any failure after step 2 the rings' ports are closed and their pages unmapped, the
//! domain is destroyed (and dom0d waits until it is gone), so nothing is left half-made and
//! the free memory is what it was before; only if that destroy fails too does the error say
//! which domain is left. The window slots are unmapped on every path. Each create is
//! logged with its duration.
#![forbid(unsafe_code)]

use std::io::{self, Read};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ::microvisor::domain::BuildError;
use ::microvisor::elf::PvhImage;
use shared_abi::control::{ControlOp, DomainCreateRequest, HostInfo, VcpuEntry, fill_fixed_str};
use shared_abi::hvm::{
    HVM_PARAM_CONSOLE_EVTCHN, HVM_PARAM_CONSOLE_PFN, HVM_PARAM_STORE_EVTCHN, HVM_PARAM_STORE_PFN,
};
use shared_abi::pvh::{E820_RAM, E820_RESERVED, HvmMemmapEntry, HvmStartInfo};
use zerocopy::{FromBytes, IntoBytes};

use crate::config::DomainConfig;
use crate::log::{self, Level};
use crate::microvisor::{
    self, ESRCH, Microvisor, domain_set_param, evtchn_alloc_unbound, evtchn_bind_interdomain,
    evtchn_close, foreign_map, foreign_unmap,
};
use crate::pages::{MappedPage, PagePool};
use crate::proto::{
    ApiError, Cleanup, CreateError, CreateReport, FileProblem, ImageKind, Plan, RamdiskPlan,
    SegmentPlan, domain_label, errno_text, os_error_text,
};

/// Guest-physical address of the boot page (`hvm_start_info`), as for boot-time DomUs.
pub const BOOT_INFO_GPA: u64 = ::microvisor::domain::BOOT_INFO_GPA;
/// Largest kernel file dom0d reads.
pub const MAX_KERNEL_BYTES: u64 = 256 << 20;
/// Foreign-window slots one build uses at a time (a batch of pages).
pub const WINDOW_SLOTS: u64 = 64;

const PAGE: u64 = 4096;
const ENOMEM: i32 = 12;
const ENOSYS: i32 = 38;
const EBUSY: i32 = 16;
const EEXIST: i32 = 17;
const EINVAL: i32 = 22;
const ENOSPC: i32 = 28;

/// The files a config names, read into memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Images {
    /// The kernel file.
    pub kernel: Vec<u8>,
    /// The ramdisk file, if any.
    pub ramdisk: Option<Vec<u8>>,
}

/// Reads the file at `path` (at most `max` bytes).
///
/// # Errors
/// [`CreateError::Unreadable`].
pub fn read_file(what: ImageKind, path: &str, max: u64) -> Result<Vec<u8>, CreateError> {
    let unreadable = |reason: String, problem| CreateError::Unreadable {
        what,
        path: path.to_owned(),
        reason,
        problem,
    };
    let io_error = |e: io::Error| {
        let problem = match e.kind() {
            io::ErrorKind::NotFound => FileProblem::NotFound,
            io::ErrorKind::PermissionDenied => FileProblem::PermissionDenied,
            _ => FileProblem::Other,
        };
        unreadable(os_error_text(&e), problem)
    };
    let file = std::fs::File::open(path).map_err(io_error)?;
    let meta = file.metadata().map_err(io_error)?;
    if !meta.is_file() {
        let what = if meta.is_dir() {
            "it is a directory"
        } else {
            "it is not a regular file"
        };
        return Err(unreadable(what.to_owned(), FileProblem::Other));
    }
    if meta.len() > max {
        return Err(unreadable(
            format!(
                "it is {} bytes, more than the {} MiB limit",
                meta.len(),
                max >> 20
            ),
            FileProblem::Other,
        ));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    file.take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(io_error)?;
    if bytes.len() as u64 > max {
        return Err(unreadable(
            format!("it grew beyond the {} MiB limit while read", max >> 20),
            FileProblem::Other,
        ));
    }
    Ok(bytes)
}

/// Checks every `disk` image of `config` as the block back-end will open it: a regular
/// file, readable (and writable unless `access=ro`), at least one 512-byte sector.
///
/// # Errors
/// [`CreateError::Unreadable`] naming the disk (exit 3 for a missing file).
pub fn check_disks(config: &DomainConfig) -> Result<(), CreateError> {
    for d in &config.disks {
        let unreadable = |reason: String, problem| CreateError::Unreadable {
            what: ImageKind::Disk,
            path: d.path.clone(),
            reason,
            problem,
        };
        let io_error = |e: io::Error| {
            let problem = match e.kind() {
                io::ErrorKind::NotFound => FileProblem::NotFound,
                io::ErrorKind::PermissionDenied => FileProblem::PermissionDenied,
                _ => FileProblem::Other,
            };
            unreadable(os_error_text(&e), problem)
        };
        let meta = std::fs::metadata(&d.path).map_err(io_error)?;
        if !meta.is_file() {
            return Err(unreadable(
                "it is not a regular file".to_owned(),
                FileProblem::Other,
            ));
        }
        if meta.len() < shared_abi::io::blkif::SECTOR_SIZE {
            return Err(unreadable(
                format!("it is {} bytes, less than one 512-byte sector", meta.len()),
                FileProblem::Other,
            ));
        }
        std::fs::OpenOptions::new()
            .read(true)
            .write(!d.read_only)
            .open(&d.path)
            .map_err(io_error)?;
    }
    Ok(())
}

/// Where a build publishes its PV devices: dom0d's xenstore, block back-end and network
/// back-end.
pub trait DeviceHost: Sync {
    /// Introduces new domain `domid` to the store and publishes `disks` and `vifs` (each
    /// back-end in InitWait; vif handle = index), before the domain runs.
    ///
    /// # Errors
    /// What failed; nothing is left published then.
    fn attach(
        &self,
        mv: &dyn Microvisor,
        domid: u32,
        name: &str,
        disks: &[crate::config::DiskSpec],
        vifs: &[crate::config::VifSpec],
    ) -> Result<(), String>;

    /// Undoes [`Self::attach`].
    fn detach(&self, mv: &dyn Microvisor, domid: u32);
}

/// Reads the kernel and the ramdisk of `config`.
///
/// # Errors
/// [`CreateError::Unreadable`].
pub fn read_images(config: &DomainConfig) -> Result<Images, CreateError> {
    let kernel = read_file(ImageKind::Kernel, &config.kernel, MAX_KERNEL_BYTES)?;
    let ram = u64::from(config.memory_mib) << 20;
    let ramdisk = config
        .ramdisk
        .as_deref()
        .map(|path| read_file(ImageKind::Ramdisk, path, ram))
        .transpose()?;
    Ok(Images { kernel, ramdisk })
}

/// A checked build: the plan and the bytes to write.
#[derive(Debug)]
pub struct Layout<'a> {
    image: PvhImage<'a>,
    ramdisk: Option<&'a [u8]>,
    boot_page: [u8; 4096],
    plan: Plan,
}

impl<'a> Layout<'a> {
    /// The plan.
    #[must_use]
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// The boot page written at [`BOOT_INFO_GPA`].
    #[must_use]
    pub fn boot_page(&self) -> &[u8; 4096] {
        &self.boot_page
    }

    /// Everything to write, as (guest-physical address, bytes), in order: the kernel's
    /// segments (their file bytes), the boot page, the ramdisk.
    #[must_use]
    pub fn writes(&self) -> Vec<(u64, &[u8])> {
        let mut w: Vec<(u64, &[u8])> = self
            .image
            .segments()
            .filter(|s| !s.data.is_empty())
            .map(|s| (s.paddr, s.data))
            .collect();
        w.push((BOOT_INFO_GPA, &self.boot_page));
        if let (Some(r), Some(at)) = (self.ramdisk, self.plan.ramdisk) {
            w.push((at.paddr, r));
        }
        w
    }
}

fn bad_kernel(config: &DomainConfig, reason: String, fix: Option<String>) -> CreateError {
    CreateError::BadKernel {
        path: config.kernel.clone(),
        reason,
        fix,
    }
}

fn mib_up(bytes: u64) -> u64 {
    bytes.div_ceil(1 << 20)
}

/// Checks the kernel (and ramdisk) of `config` against its memory and lays the domain
/// out. Touches nothing but `images`.
///
/// # Errors
/// [`CreateError::BadKernel`], [`CreateError::BadRamdisk`],
/// [`CreateError::InvalidConfig`].
pub fn layout<'a>(config: &DomainConfig, images: &'a Images) -> Result<Layout<'a>, CreateError> {
    config
        .check()
        .map_err(|reason| CreateError::InvalidConfig { reason })?;
    let image = PvhImage::parse(&images.kernel).map_err(|e| {
        let fix = match e {
            ::microvisor::elf::ElfError::NotElf if images.kernel.get(0x202..0x206) == Some(b"HdrS") => {
                Some("this is a bzImage; use the kernel's ELF vmlinux, which has the PVH note".to_owned())
            }
            ::microvisor::elf::ElfError::NotElf | ::microvisor::elf::ElfError::NoPvhNote => Some(
                "a PVH kernel is an x86-64 ELF executable with a XEN_ELFNOTE_PHYS32_ENTRY note (Linux: the vmlinux of a kernel built with CONFIG_PVH)"
                    .to_owned(),
            ),
            _ => None,
        };
        bad_kernel(config, e.to_string(), fix)
    })?;
    let cmdline = config.cmdline_str();
    let mem = ::microvisor::domain::check(&image, config.memory_mib, cmdline).map_err(|e| match e {
        BuildError::SegmentOutsideRam { paddr, size } => {
            let end = paddr.saturating_add(size);
            if paddr < BOOT_INFO_GPA + PAGE {
                bad_kernel(
                    config,
                    format!(
                        "its segment at {paddr:#x}..{end:#x} overlaps page 0 or the boot page ({BOOT_INFO_GPA:#x}..{:#x})",
                        BOOT_INFO_GPA + PAGE
                    ),
                    Some("link the kernel at 1 MiB or above".to_owned()),
                )
            } else {
                bad_kernel(
                    config,
                    format!(
                        "its segment at {paddr:#x}..{end:#x} does not fit in the domain's {} MiB of RAM",
                        config.memory_mib
                    ),
                    Some(format!("raise \"memory\" to at least {} MiB", mib_up(end))),
                )
            }
        }
        BuildError::EntryOutsideImage(entry) => bad_kernel(
            config,
            format!("its PVH entry point {entry:#x} is not inside a loaded segment"),
            None,
        ),
        other => CreateError::InvalidConfig {
            reason: other.to_string(),
        },
    })?;
    let special = special_pages_gpa(mem);
    if let Some(s) = image
        .segments()
        .find(|s| s.paddr.saturating_add(s.mem_size) > special)
    {
        let end = s.paddr.saturating_add(s.mem_size);
        return Err(bad_kernel(
            config,
            format!(
                "its segment at {:#x}..{end:#x} overlaps the xenstore and console pages ({special:#x}..{mem:#x}, the last {SPECIAL_PAGES} pages of RAM)",
                s.paddr
            ),
            Some(format!(
                "raise \"memory\" to at least {} MiB",
                mib_up(end + SPECIAL_PAGES * PAGE)
            )),
        ));
    }
    let segments: Vec<SegmentPlan> = image
        .segments()
        .map(|s| SegmentPlan {
            paddr: s.paddr,
            file_bytes: s.data.len() as u64,
            mem_bytes: s.mem_size,
        })
        .collect();
    let kernel_end = segments
        .iter()
        .map(|s| s.paddr + s.mem_bytes)
        .max()
        .unwrap_or(0)
        .max(BOOT_INFO_GPA + PAGE);
    let ramdisk_plan = match (&images.ramdisk, &config.ramdisk) {
        (Some(r), Some(path)) => Some(place_ramdisk(
            path,
            r.len() as u64,
            special,
            kernel_end,
            config,
        )?),
        _ => None,
    };
    let mut boot_page = ::microvisor::domain::boot_info_page(
        mem,
        cmdline,
        ramdisk_plan.map(|r| (r.paddr, r.bytes)),
    );
    reserve_special_pages(&mut boot_page, mem);
    Ok(Layout {
        image,
        ramdisk: images.ramdisk.as_deref(),
        boot_page,
        plan: Plan {
            memory_mib: config.memory_mib,
            entry: u64::from(image.entry),
            start_info: BOOT_INFO_GPA,
            segments,
            ramdisk: ramdisk_plan,
        },
    })
}

/// Pages at the top of a domain's RAM that the builder reserves for the PV rings: the
/// xenstore page, then the console page (the last).
pub const SPECIAL_PAGES: u64 = 2;

/// Guest-physical address of the console page of a domain with `mem` bytes of RAM: its
/// last page.
#[must_use]
pub fn console_gpa(mem: u64) -> u64 {
    mem.saturating_sub(PAGE)
}

/// Guest-physical address of the xenstore page: the page below the console page.
#[must_use]
pub fn store_gpa(mem: u64) -> u64 {
    mem.saturating_sub(2 * PAGE)
}

/// Where the reserved pages start ([`SPECIAL_PAGES`] below the end of RAM).
#[must_use]
pub fn special_pages_gpa(mem: u64) -> u64 {
    mem.saturating_sub(SPECIAL_PAGES * PAGE)
}

/// Rewrites the boot page's memory map (one RAM entry `0..mem`, as
/// `microvisor::domain::boot_info_page` writes it) into two entries: RAM up to the
/// xenstore and console pages, and those pages as `E820_RESERVED`. The map has room for
/// both before the module list.
pub fn reserve_special_pages(page: &mut [u8; 4096], mem: u64) {
    let Ok(mut info) = HvmStartInfo::read_from_bytes(&page[..size_of::<HvmStartInfo>()]) else {
        return;
    };
    let Some(at) = info
        .memmap_paddr
        .checked_sub(BOOT_INFO_GPA)
        .and_then(|o| usize::try_from(o).ok())
        .filter(|&o| o + 2 * size_of::<HvmMemmapEntry>() <= MODLIST_OFFSET)
    else {
        return;
    };
    let special = special_pages_gpa(mem);
    let entries = [
        HvmMemmapEntry {
            addr: 0,
            size: special,
            kind: E820_RAM,
            reserved: 0,
        },
        HvmMemmapEntry {
            addr: special,
            size: SPECIAL_PAGES * PAGE,
            kind: E820_RESERVED,
            reserved: 0,
        },
    ];
    for (i, e) in entries.iter().enumerate() {
        let o = at + i * size_of::<HvmMemmapEntry>();
        page[o..o + size_of::<HvmMemmapEntry>()].copy_from_slice(e.as_bytes());
    }
    info.memmap_entries = 2;
    page[..size_of::<HvmStartInfo>()].copy_from_slice(info.as_bytes());
}

/// Offset of the module list in the boot page: the memory map must end before it.
const MODLIST_OFFSET: usize = ::microvisor::domain::MODLIST_OFFSET as usize;

/// The ramdisk goes page-aligned at the top of RAM below the xenstore and console pages
/// (`top`), above the kernel.
fn place_ramdisk(
    path: &str,
    size: u64,
    top: u64,
    kernel_end: u64,
    config: &DomainConfig,
) -> Result<RamdiskPlan, CreateError> {
    let bad = |reason: String, fix: Option<String>| CreateError::BadRamdisk {
        path: path.to_owned(),
        reason,
        fix,
    };
    if size == 0 {
        return Err(bad("it is empty".to_owned(), None));
    }
    let room = top.saturating_sub(kernel_end.next_multiple_of(PAGE));
    let paddr = top.saturating_sub(size) & !(PAGE - 1);
    if size > room || paddr < kernel_end {
        return Err(bad(
            format!(
                "it is {size} bytes, but only {room} bytes of the domain's {} MiB lie between the kernel and the xenstore and console pages",
                config.memory_mib
            ),
            Some(format!(
                "raise \"memory\" to at least {} MiB",
                mib_up(
                    kernel_end.next_multiple_of(PAGE)
                        + size.next_multiple_of(PAGE)
                        + SPECIAL_PAGES * PAGE
                )
            )),
        ));
    }
    Ok(RamdiskPlan { paddr, bytes: size })
}

fn failed(step: &str, e: &ApiError) -> CreateError {
    CreateError::Failed {
        step: step.to_owned(),
        errno: match e {
            ApiError::Hypercall { errno, .. } => Some(*errno),
            _ => None,
        },
        reason: e.to_string(),
        domid: None,
        cleanup: Cleanup::NotNeeded,
    }
}

/// The foreign-window slots a build uses: [`WINDOW_SLOTS`] from the middle of the window
/// (`dom0-probe` uses its first two, slot 16 and its last slot).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// The first slot.
    pub first_slot: u64,
    /// How many slots.
    pub slots: u64,
}

/// The slots of `host`'s foreign window a build uses.
///
/// # Errors
/// [`CreateError::NoForeignWindow`] if the window is empty.
pub fn window(host: &HostInfo) -> Result<Window, CreateError> {
    let pages = host.foreign_window_pages;
    if host.foreign_window_gpa == 0 || pages == 0 {
        return Err(CreateError::NoForeignWindow);
    }
    let first_slot = pages / 2;
    Ok(Window {
        first_slot,
        slots: WINDOW_SLOTS.min(pages - first_slot),
    })
}

/// The checks that need the microvisor: free memory, a unique name, a foreign window.
/// Returns the slots to build through.
///
/// # Errors
/// [`CreateError::NotEnoughMemory`], [`CreateError::NameInUse`],
/// [`CreateError::NoForeignWindow`], or [`CreateError::Failed`] if the microvisor
/// cannot be asked.
pub fn check_host(mv: &dyn Microvisor, config: &DomainConfig) -> Result<Window, CreateError> {
    let host = microvisor::host_record(mv)
        .map_err(|e| failed("reading the host's free memory (HostInfo)", &e))?;
    let needed_kib = u64::from(config.memory_mib) * 1024;
    if needed_kib > host.mem_free_kib {
        return Err(CreateError::NotEnoughMemory {
            name: config.name.clone(),
            needed_kib,
            free_kib: host.mem_free_kib,
        });
    }
    if let Some(domid) = domid_named(mv, &config.name)? {
        return Err(CreateError::NameInUse {
            name: config.name.clone(),
            domid: Some(domid),
        });
    }
    window(&host)
}

/// The domain called `name`, if any.
fn domid_named(mv: &dyn Microvisor, name: &str) -> Result<Option<u32>, CreateError> {
    let mut from = Some(0);
    while let Some(f) = from {
        let (domains, next) = microvisor::list_domains(mv, f)
            .map_err(|e| failed("listing the domains (DomainList)", &e))?;
        if let Some(d) = domains.iter().find(|d| d.name == name) {
            return Ok(Some(d.domid));
        }
        from = next;
    }
    Ok(None)
}

/// One piece of a write that falls in one page.
struct Chunk<'a> {
    gfn: u64,
    offset: usize,
    bytes: &'a [u8],
}

/// Splits writes into per-page chunks, in order.
fn chunks<'a>(writes: &[(u64, &'a [u8])]) -> Vec<Chunk<'a>> {
    let mut out = Vec::new();
    for &(gpa, bytes) in writes {
        let mut at = gpa;
        let mut rest = bytes;
        while !rest.is_empty() {
            let offset = usize::try_from(at % PAGE).unwrap_or(0);
            let n = rest.len().min(4096 - offset);
            let (now, later) = rest.split_at(n);
            out.push(Chunk {
                gfn: at / PAGE,
                offset,
                bytes: now,
            });
            at += n as u64;
            rest = later;
        }
    }
    out
}

/// A failed step of [`write_memory`]: what, and the errno if a call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteError {
    /// What failed (`ForeignMap of gfn 0x100 into slot 2048`, ...).
    pub what: String,
    /// The errno.
    pub errno: i32,
}

/// Writes `writes` into domain `domid`'s RAM through `window`'s slots, a batch of up to
/// `window.slots` pages at a time. Every slot mapped is unmapped again, also after a
/// failure; the process mapping is removed before the slots are. (Should `ForeignUnmap`
/// fail twice, the slot is left mapped, logged, for the next build to reclaim.)
///
/// # Errors
/// The first step that failed.
pub fn write_memory(
    mv: &dyn Microvisor,
    domid: u32,
    window: Window,
    writes: &[(u64, &[u8])],
) -> Result<(), WriteError> {
    let all = chunks(writes);
    let batch_pages = usize::try_from(window.slots).unwrap_or(1).max(1);
    let mut start = 0;
    while start < all.len() {
        // The longest run of chunks touching at most `batch_pages` distinct pages.
        let mut gfns: Vec<u64> = Vec::new();
        let mut end = start;
        while end < all.len() {
            let gfn = all[end].gfn;
            if !gfns.contains(&gfn) {
                if gfns.len() == batch_pages {
                    break;
                }
                gfns.push(gfn);
            }
            end += 1;
        }
        write_batch(mv, domid, window.first_slot, &gfns, &all[start..end])?;
        start = end;
    }
    Ok(())
}

fn write_batch(
    mv: &dyn Microvisor,
    domid: u32,
    first_slot: u64,
    gfns: &[u64],
    chunks: &[Chunk<'_>],
) -> Result<(), WriteError> {
    let mut mapped = 0u64;
    let result = (|| {
        for (i, &gfn) in (0u64..).zip(gfns) {
            let slot = first_slot + i;
            map_slot(mv, slot, domid, gfn).map_err(|errno| WriteError {
                what: format!("ForeignMap of gfn {gfn:#x} into window slot {slot}"),
                errno,
            })?;
            mapped += 1;
        }
        let mut m = mv
            .map_window(first_slot, gfns.len())
            .map_err(|errno| WriteError {
                what: format!("mmap of window slots {first_slot}..{}", first_slot + mapped),
                errno,
            })?;
        for c in chunks {
            let index = gfns.iter().position(|&g| g == c.gfn).unwrap_or(0);
            let offset = index * 4096 + c.offset;
            if let Err(errno) = m.write(offset, c.bytes) {
                return Err(WriteError {
                    what: format!("writing gfn {:#x} through the window", c.gfn),
                    errno,
                });
            }
        }
        m.unmap().map_err(|errno| WriteError {
            what: "munmap of the window slots".to_owned(),
            errno,
        })
    })();
    for slot in first_slot..first_slot + mapped {
        unmap_slot(mv, slot);
    }
    result
}

/// `ForeignUnmap`, tried twice. A slot that stays mapped does not fail the build (the
/// pages were written): it is logged, and the next build reclaims it ([`map_slot`]).
fn unmap_slot(mv: &dyn Microvisor, slot: u64) {
    if let Err(errno) = foreign_unmap(mv, slot).or_else(|_| foreign_unmap(mv, slot)) {
        log::limited(
            Level::Warn,
            format_args!(
                "create: ForeignUnmap of window slot {slot} failed with {}; it stays mapped until the next create reclaims it",
                errno_text(errno)
            ),
        );
    }
}

/// `ForeignMap`; a slot still mapped (left by a dom0d that died mid-build: only the
/// builder uses these slots, one build at a time) is unmapped and mapped again once.
fn map_slot(mv: &dyn Microvisor, slot: u64, domid: u32, gfn: u64) -> Result<(), i32> {
    match foreign_map(mv, slot, domid, gfn) {
        Err(EBUSY) => {
            log::limited(
                Level::Warn,
                format_args!("create: window slot {slot} was still mapped; unmapping it"),
            );
            foreign_unmap(mv, slot)?;
            foreign_map(mv, slot, domid, gfn).map(|_| ())
        }
        other => other.map(|_| ()),
    }
}

/// Destroys `domid` and waits (up to `limit`) until it is gone from the domain list.
pub fn destroy_and_wait(
    mv: &dyn Microvisor,
    domid: u32,
    limit: Duration,
    poll: Duration,
) -> Cleanup {
    match mv.control(ControlOp::DomainDestroy as u64, u64::from(domid), &mut []) {
        Ok(_) | Err(ESRCH) => {}
        Err(errno) => {
            return Cleanup::Failed {
                reason: format!("DomainDestroy failed with {}", errno_text(errno)),
            };
        }
    }
    let started = Instant::now();
    loop {
        match microvisor::domain_info(mv, domid) {
            Err(ApiError::NoSuchDomain { .. }) => return Cleanup::Destroyed,
            Ok(d) if started.elapsed() >= limit => {
                return Cleanup::Failed {
                    reason: format!(
                        "it was still listed ({}) {} ms after DomainDestroy",
                        d.state.name(),
                        limit.as_millis()
                    ),
                };
            }
            Err(e) if started.elapsed() >= limit => {
                return Cleanup::Failed {
                    reason: format!("cannot tell whether it is gone: {e}"),
                };
            }
            _ => std::thread::sleep(poll),
        }
    }
}

/// Which shared page a [`RingSetup`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RingKind {
    /// The PV console (`CONSOLE_PFN`/`CONSOLE_EVTCHN`), the last page of RAM.
    Console,
    /// The xenstore page (`STORE_PFN`/`STORE_EVTCHN`), the page below it.
    Store,
}

impl RingKind {
    /// `"console"` or `"xenstore"`, for messages.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Console => "console",
            Self::Store => "xenstore",
        }
    }

    /// The frame of this page in a domain with `mem` bytes of RAM.
    #[must_use]
    pub fn gfn(self, mem: u64) -> u64 {
        match self {
            Self::Console => console_gpa(mem) / PAGE,
            Self::Store => store_gpa(mem) / PAGE,
        }
    }

    fn params(self) -> [(u32, &'static str); 2] {
        match self {
            Self::Console => [
                (HVM_PARAM_CONSOLE_PFN, "CONSOLE_PFN"),
                (HVM_PARAM_CONSOLE_EVTCHN, "CONSOLE_EVTCHN"),
            ],
            Self::Store => [
                (HVM_PARAM_STORE_PFN, "STORE_PFN"),
                (HVM_PARAM_STORE_EVTCHN, "STORE_EVTCHN"),
            ],
        }
    }
}

/// A new domain's PV console or xenstore page, as [`setup_ring`] made it: the DomU's
/// port, domain 0's port bound to it, and the page mapped into dom0d. Whoever takes it
/// over (dom0d's console back-end, its xenstore) closes the port and releases the page
/// when the domain is gone ([`undo_ring`]).
#[derive(Debug)]
pub struct RingSetup {
    /// Which page.
    pub kind: RingKind,
    /// The domain.
    pub domid: u32,
    /// The page's frame in the domain (the `*_PFN` parameter).
    pub gfn: u64,
    /// The DomU's port (the `*_EVTCHN` parameter).
    pub remote_port: u32,
    /// Domain 0's port, bound to `remote_port`.
    pub port: u32,
    /// The page, mapped.
    pub page: MappedPage,
}

impl RingSetup {
    /// Where the page and ports are, for dom0d's state file.
    #[must_use]
    pub fn record(&self) -> crate::state::RingRecord {
        crate::state::RingRecord {
            slot: self.page.slot,
            gfn: self.gfn,
            port: self.port,
            remote_port: self.remote_port,
        }
    }

    /// The page and ports an earlier dom0d set up for `domid` (`rec`), the page mapped
    /// again from its slot ([`PagePool::adopt`]).
    ///
    /// # Errors
    /// Why the page cannot be mapped; the slot is emptied and the port closed then.
    pub fn adopt(
        mv: &dyn Microvisor,
        pool: &PagePool,
        kind: RingKind,
        domid: u32,
        rec: crate::state::RingRecord,
    ) -> Result<Self, String> {
        match pool.adopt(mv, rec.slot, domid, rec.gfn) {
            Ok(page) => Ok(Self {
                kind,
                domid,
                gfn: rec.gfn,
                remote_port: rec.remote_port,
                port: rec.port,
                page,
            }),
            Err(why) => {
                close_port(mv, rec.port);
                if foreign_unmap(mv, rec.slot).is_ok() {
                    pool.free_slot(rec.slot);
                }
                Err(why)
            }
        }
    }
}

/// A failed step: what, the errno if a call failed, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepError {
    /// What dom0d was doing.
    pub step: String,
    /// The errno of the failed call.
    pub errno: Option<i32>,
    /// What went wrong.
    pub reason: String,
}

impl StepError {
    fn call(step: &str, errno: i32) -> Self {
        Self {
            step: step.to_owned(),
            errno: Some(errno),
            reason: format!("the microvisor answered {}", errno_text(errno)),
        }
    }
}

static NO_EVTCHN_LOGGED: AtomicBool = AtomicBool::new(false);

/// Step 4 of the module docs for one page: the console or xenstore page of `domid`
/// (which has `mem` bytes of RAM and has not run). Returns `None`, building nothing, if
/// the microvisor has no event channels (`ENOSYS`).
///
/// # Errors
/// The failed step; everything this function made is undone first (the domain itself is
/// the caller's to destroy).
pub fn setup_ring(
    mv: &dyn Microvisor,
    pool: &PagePool,
    domid: u32,
    mem: u64,
    kind: RingKind,
) -> Result<Option<RingSetup>, StepError> {
    let what = kind.name();
    let gfn = kind.gfn(mem);
    let remote_port = match evtchn_alloc_unbound(mv, domid) {
        Ok(p) => p,
        Err(ENOSYS) => {
            if !NO_EVTCHN_LOGGED.swap(true, Ordering::Relaxed) {
                log::write(
                    Level::Warn,
                    format_args!(
                        "create: the microvisor has no event channels (EvtchnAllocUnbound: ENOSYS); domains are built without a PV console or xenstore"
                    ),
                );
            }
            return Ok(None);
        }
        Err(errno) => {
            return Err(StepError::call(
                &format!("allocating the {what}'s event channel (EvtchnAllocUnbound)"),
                errno,
            ));
        }
    };
    let port = evtchn_bind_interdomain(mv, domid, remote_port).map_err(|errno| {
        StepError::call(
            &format!("binding the {what}'s event channel (EvtchnBindInterdomain)"),
            errno,
        )
    })?;
    let page = match pool.map(mv, domid, gfn) {
        Ok(page) => page,
        Err(reason) => {
            close_port(mv, port);
            return Err(StepError {
                step: format!("mapping the {what} page"),
                errno: None,
                reason,
            });
        }
    };
    let setup = RingSetup {
        kind,
        domid,
        gfn,
        remote_port,
        port,
        page,
    };
    let [(pfn_index, pfn_name), (port_index, port_name)] = kind.params();
    for (index, value, name) in [
        (pfn_index, gfn, pfn_name),
        (port_index, u64::from(remote_port), port_name),
    ] {
        if let Err(errno) = domain_set_param(mv, domid, index, value) {
            undo_ring(mv, pool, setup);
            return Err(StepError::call(
                &format!("setting {name} (DomainSetParam)"),
                errno,
            ));
        }
    }
    Ok(Some(setup))
}

fn close_port(mv: &dyn Microvisor, port: u32) {
    if let Err(errno) = evtchn_close(mv, port) {
        log::limited(
            Level::Warn,
            format_args!(
                "EvtchnClose of domain 0 port {port} failed with {}",
                errno_text(errno)
            ),
        );
    }
}

/// Closes the ring's domain 0 port and releases its page (its domain may be gone).
pub fn undo_ring(mv: &dyn Microvisor, pool: &PagePool, ring: RingSetup) {
    close_port(mv, ring.port);
    let what = ring.kind.name();
    if let Err(page) = pool.release(mv, ring.page) {
        log::write(
            Level::Error,
            format_args!(
                "the {what} page of domain {} (slot {}) is still in use; it stays mapped (a dom0d bug)",
                page.domid, page.slot
            ),
        );
    }
}

/// What [`create`] built.
#[derive(Debug)]
pub struct Built {
    /// The report for the client.
    pub report: CreateReport,
    /// The new domain's console (`None` for a dry run, or without event channels).
    pub console: Option<RingSetup>,
    /// The new domain's xenstore page (`None` likewise).
    pub store: Option<RingSetup>,
}

/// How a create runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// Check and plan only.
    pub dry_run: bool,
    /// Leave the domain paused.
    pub paused: bool,
    /// How long to wait for a failed build's domain to disappear.
    pub destroy_wait: Duration,
    /// Time between two checks of that.
    pub poll: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            dry_run: false,
            paused: false,
            destroy_wait: Duration::from_secs(5),
            poll: Duration::from_millis(5),
        }
    }
}

/// Builds (or, for a dry run, plans) the domain `config` describes, as the module docs
/// say, mapping its console and xenstore pages through `pool`. `created` receives the new domain's id as
/// soon as it exists, so a caller can clean up even if this thread dies.
///
/// # Errors
/// [`CreateError`]; after a failure nothing is left behind unless
/// [`CreateError::Failed::cleanup`] says otherwise.
pub fn create(
    mv: &dyn Microvisor,
    pool: &PagePool,
    config: &DomainConfig,
    opts: Options,
    created: &Mutex<Option<u32>>,
) -> Result<Built, CreateError> {
    create_with(mv, pool, config, opts, created, None)
}

/// [`create`], publishing the config's disks and vifs through `devices` (after the
/// xenstore page is set up, before the domain runs; undone if a later step fails). A
/// config with disks or vifs needs `devices` and event channels.
///
/// # Errors
/// As [`create`].
pub fn create_with(
    mv: &dyn Microvisor,
    pool: &PagePool,
    config: &DomainConfig,
    opts: Options,
    created: &Mutex<Option<u32>>,
    devices: Option<&dyn DeviceHost>,
) -> Result<Built, CreateError> {
    let started = Instant::now();
    let result = build(mv, pool, config, opts, created, started, devices);
    let ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    match &result {
        Ok(_) if opts.dry_run => log::limited(
            Level::Debug,
            format_args!("create --dry-run: \"{}\" would fit; {ms} ms", config.name),
        ),
        Ok(Built {
            report: r, console, ..
        }) => {
            let console = console.as_ref().map_or(String::new(), |c| {
                format!(", console port {} (DomU port {})", c.port, c.remote_port)
            });
            let label = domain_label(r.domid.unwrap_or(0), &config.name);
            let ramdisk = r.plan.ramdisk.map_or(String::new(), |rd| {
                format!(", ramdisk {} KiB", rd.bytes.div_ceil(1024))
            });
            log::limited(
                Level::Info,
                format_args!(
                    "create: {label} {}: {} MiB, entry {:#x}, {} segment(s){ramdisk}{console}; {ms} ms",
                    r.state.map_or("built", |s| s.name()),
                    r.plan.memory_mib,
                    r.plan.entry,
                    r.plan.segments.len(),
                ),
            );
        }
        Err(e) => log::limited(
            Level::Warn,
            format_args!(
                "create: \"{}\" refused or failed after {ms} ms: {e}",
                config.name
            ),
        ),
    }
    result.map(|mut b| {
        b.report.took_ms = ms;
        b
    })
}

fn build(
    mv: &dyn Microvisor,
    pool: &PagePool,
    config: &DomainConfig,
    opts: Options,
    created: &Mutex<Option<u32>>,
    started: Instant,
    devices: Option<&dyn DeviceHost>,
) -> Result<Built, CreateError> {
    config
        .check()
        .map_err(|reason| CreateError::InvalidConfig { reason })?;
    let images = read_images(config)?;
    check_disks(config)?;
    let layout = layout(config, &images)?;
    let window = check_host(mv, config)?;
    let plan = layout.plan().clone();
    let report = |domid, state| CreateReport {
        domid,
        config: config.clone(),
        plan: plan.clone(),
        state,
        took_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
    };
    if opts.dry_run {
        return Ok(Built {
            report: report(None, None),
            console: None,
            store: None,
        });
    }
    let domid = create_empty(mv, config)?;
    *created
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(domid);
    let fail = |StepError {
                    step,
                    errno,
                    reason,
                }| {
        let cleanup = destroy_and_wait(mv, domid, opts.destroy_wait, opts.poll);
        if cleanup == Cleanup::Destroyed {
            *created
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
        }
        CreateError::Failed {
            step,
            errno,
            reason,
            domid: Some(domid),
            cleanup,
        }
    };
    if let Err(e) = write_memory(mv, domid, window, &layout.writes()) {
        return Err(fail(StepError {
            step: "writing the domain's memory".to_owned(),
            errno: Some(e.errno),
            reason: format!("{} failed with {}", e.what, errno_text(e.errno)),
        }));
    }
    let mem = u64::from(config.memory_mib) << 20;
    let console = setup_ring(mv, pool, domid, mem, RingKind::Console).map_err(&fail)?;
    let undo = |rings: [Option<RingSetup>; 2]| {
        for r in rings.into_iter().flatten() {
            undo_ring(mv, pool, r);
        }
    };
    // Without event channels (`console` is `None`) there is no xenstore either.
    let store = match console
        .as_ref()
        .map(|_| setup_ring(mv, pool, domid, mem, RingKind::Store))
        .transpose()
    {
        Ok(store) => store.flatten(),
        Err(e) => {
            undo([console, None]);
            return Err(fail(e));
        }
    };
    // The PV devices: after the xenstore page, before the domain runs.
    let device_host = if config.disks.is_empty() && config.vifs.is_empty() {
        None
    } else {
        let attached = match (&store, devices) {
            (Some(_), Some(host)) => host
                .attach(mv, domid, &config.name, &config.disks, &config.vifs)
                .map(|()| host),
            _ => Err(
                "disks and vifs need dom0d's xenstore and back-ends (and event channels)"
                    .to_owned(),
            ),
        };
        match attached {
            Ok(host) => Some(host),
            Err(reason) => {
                undo([console, store]);
                return Err(fail(StepError {
                    step: "publishing the PV devices".to_owned(),
                    errno: None,
                    reason,
                }));
            }
        }
    };
    if let Err(e) = start(mv, domid, &plan, opts.paused) {
        if let Some(host) = device_host {
            host.detach(mv, domid);
        }
        undo([console, store]);
        return Err(fail(e));
    }
    let state = microvisor::domain_info(mv, domid).ok().map(|d| d.state);
    Ok(Built {
        report: report(Some(domid), state),
        console,
        store,
    })
}

/// Steps 5 and 6: the entry state, and the unpause unless `paused`.
fn start(mv: &dyn Microvisor, domid: u32, plan: &Plan, paused: bool) -> Result<(), StepError> {
    let mut entry = [0u8; size_of::<VcpuEntry>()];
    entry.copy_from_slice(
        VcpuEntry {
            entry: plan.entry,
            start_info: plan.start_info,
        }
        .as_bytes(),
    );
    mv.control(
        ControlOp::DomainSetEntry as u64,
        u64::from(domid),
        &mut entry,
    )
    .map_err(|errno| StepError::call("setting the entry point (DomainSetEntry)", errno))?;
    if !paused {
        mv.control(ControlOp::DomainUnpause as u64, u64::from(domid), &mut [])
            .map_err(|errno| StepError::call("starting the domain (DomainUnpause)", errno))?;
    }
    Ok(())
}

/// `DomainCreate`, its errno turned into a typed error.
fn create_empty(mv: &dyn Microvisor, config: &DomainConfig) -> Result<u32, CreateError> {
    let mut req = DomainCreateRequest {
        mem_mib: config.memory_mib,
        vcpus: config.vcpus,
        ..DomainCreateRequest::default()
    };
    fill_fixed_str(&mut req.name, &config.name);
    let mut buf = [0u8; size_of::<DomainCreateRequest>()];
    buf.copy_from_slice(req.as_bytes());
    match mv.control(ControlOp::DomainCreate as u64, 0, &mut buf) {
        Ok(n) => u32::try_from(n).map_err(|_| CreateError::Failed {
            step: "creating the domain (DomainCreate)".to_owned(),
            errno: None,
            reason: format!("the microvisor returned domain id {n}, which is out of range"),
            domid: None,
            cleanup: Cleanup::Failed {
                reason: "dom0d cannot name it; `dom0 list` may show it".to_owned(),
            },
        }),
        Err(ENOMEM) => Err(CreateError::NotEnoughMemory {
            name: config.name.clone(),
            needed_kib: u64::from(config.memory_mib) * 1024,
            free_kib: microvisor::host_record(mv).map_or(0, |h| h.mem_free_kib),
        }),
        Err(EEXIST) => Err(CreateError::NameInUse {
            name: config.name.clone(),
            domid: domid_named(mv, &config.name).ok().flatten(),
        }),
        Err(ENOSPC) => Err(CreateError::NoFreeDomid),
        Err(EINVAL) => Err(CreateError::InvalidConfig {
            reason: format!(
                "the microvisor refused memory {} MiB, {} vCPU(s) or the name \"{}\" (EINVAL)",
                config.memory_mib, config.vcpus, config.name
            ),
        }),
        Err(errno) => Err(CreateError::Failed {
            step: "creating the domain (DomainCreate)".to_owned(),
            errno: Some(errno),
            reason: format!("the microvisor answered {}", errno_text(errno)),
            domid: None,
            cleanup: Cleanup::NotNeeded,
        }),
    }
}

/// PVH kernel images for tests (here and in the integration tests).
#[doc(hidden)]
pub mod test_elf {
    /// One `PT_LOAD` segment: load address, file bytes, size in memory.
    #[derive(Debug)]
    pub struct Seg {
        /// Load address.
        pub paddr: u64,
        /// Bytes in the file.
        pub data: Vec<u8>,
        /// Size in memory.
        pub mem: u64,
    }

    /// An x86-64 ELF executable with `segs` and a PVH entry note for `entry`.
    #[must_use]
    pub fn pvh_elf(entry: u32, segs: &[Seg]) -> Vec<u8> {
        elf(Some(entry), segs)
    }

    /// [`pvh_elf`] without the note.
    #[must_use]
    pub fn elf_without_note(segs: &[Seg]) -> Vec<u8> {
        elf(None, segs)
    }

    fn elf(entry: Option<u32>, segs: &[Seg]) -> Vec<u8> {
        let phnum = segs.len() + 1;
        let note_off = 64 + phnum * 56;
        let mut data_off = note_off + 24;
        let mut f = vec![0u8; data_off];
        f[..4].copy_from_slice(b"\x7fELF");
        f[4] = 2; // 64-bit
        f[5] = 1; // little-endian
        f[6] = 1;
        f[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
        f[18..20].copy_from_slice(&62u16.to_le_bytes()); // EM_X86_64
        f[32..40].copy_from_slice(&64u64.to_le_bytes()); // phoff
        f[54..56].copy_from_slice(&56u16.to_le_bytes());
        f[56..58].copy_from_slice(&u16::try_from(phnum).unwrap_or(u16::MAX).to_le_bytes());
        let ph = |f: &mut Vec<u8>,
                  i: usize,
                  kind: u32,
                  off: usize,
                  paddr: u64,
                  filesz: usize,
                  memsz: u64| {
            let b = 64 + i * 56;
            f[b..b + 4].copy_from_slice(&kind.to_le_bytes());
            f[b + 8..b + 16].copy_from_slice(&(off as u64).to_le_bytes());
            f[b + 16..b + 24].copy_from_slice(&(paddr | 0xffff_ffff_8000_0000).to_le_bytes());
            f[b + 24..b + 32].copy_from_slice(&paddr.to_le_bytes());
            f[b + 32..b + 40].copy_from_slice(&(filesz as u64).to_le_bytes());
            f[b + 40..b + 48].copy_from_slice(&memsz.to_le_bytes());
        };
        ph(&mut f, 0, 4, note_off, 0, 24, 24); // PT_NOTE
        let note_type: u32 = if entry.is_some() { 18 } else { 17 };
        for (i, w) in [4u32, 8, note_type].iter().enumerate() {
            f[note_off + i * 4..note_off + i * 4 + 4].copy_from_slice(&w.to_le_bytes());
        }
        f[note_off + 12..note_off + 16].copy_from_slice(b"Xen\0");
        f[note_off + 16..note_off + 24]
            .copy_from_slice(&u64::from(entry.unwrap_or(0x10_0000)).to_le_bytes());
        for (i, s) in segs.iter().enumerate() {
            ph(&mut f, i + 1, 1, data_off, s.paddr, s.data.len(), s.mem);
            f.extend_from_slice(&s.data);
            data_off += s.data.len();
        }
        f
    }

    /// Deterministic filler bytes.
    #[must_use]
    pub fn bytes(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| {
                u8::try_from(i % 251)
                    .unwrap_or(0)
                    .wrapping_mul(7)
                    .wrapping_add(seed)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use shared_abi::control::{DomainState, EVENT_DOMAIN_STATE};
    use shared_abi::pvh::{HVM_START_MAGIC, HvmModlistEntry};

    use std::sync::Arc;

    use super::test_elf::{Seg, bytes, elf_without_note, pvh_elf};
    use super::*;
    use crate::config::OnEvent;
    use crate::fake::{FakeMicrovisor, OP_MAP_PAGE, OP_MMAP, domain_record};
    use crate::proto::State;

    struct Files {
        dir: tempfile::TempDir,
    }

    impl Files {
        fn new() -> Self {
            Self {
                dir: tempfile::tempdir().unwrap(),
            }
        }

        fn put(&self, name: &str, contents: &[u8]) -> String {
            let p = self.dir.path().join(name);
            std::fs::write(&p, contents).unwrap();
            p.to_str().unwrap().to_owned()
        }
    }

    /// A kernel with a 16-byte text segment at 1 MiB (8 KiB in memory), a data segment
    /// sharing its last page with a bss, and the entry at 1 MiB + 0x40.
    fn kernel() -> Vec<u8> {
        pvh_elf(
            0x10_0040,
            &[
                Seg {
                    paddr: 0x10_0000,
                    data: bytes(16, 1),
                    mem: 0x2000,
                },
                Seg {
                    paddr: 0x10_2000,
                    data: bytes(0x1800, 2),
                    mem: 0x3000,
                },
            ],
        )
    }

    fn config(kernel: String) -> DomainConfig {
        DomainConfig {
            name: "web".into(),
            kernel,
            ramdisk: None,
            cmdline: Some("console=hvc0 quiet".into()),
            memory_mib: 16,
            vcpus: 1,
            on_poweroff: OnEvent::Destroy,
            on_reboot: OnEvent::Restart,
            on_crash: OnEvent::Destroy,
            disks: Vec::new(),
            vifs: Vec::new(),
        }
    }

    fn opts() -> Options {
        Options {
            destroy_wait: Duration::from_millis(200),
            poll: Duration::from_millis(1),
            ..Options::default()
        }
    }

    /// Builds with a pool of its own and hands the console and xenstore pages back at
    /// once (closing their ports and unmapping them), so only what the build itself
    /// leaves shows.
    fn run(
        fake: &FakeMicrovisor,
        c: &DomainConfig,
        o: Options,
    ) -> Result<CreateReport, CreateError> {
        let pool = PagePool::default();
        let built = create(fake, &pool, c, o, &Mutex::new(None))?;
        for ring in [built.console, built.store].into_iter().flatten() {
            undo_ring(fake, &pool, ring);
        }
        assert_eq!(pool.in_use(), 0);
        Ok(built.report)
    }

    fn names(fake: &FakeMicrovisor) -> Vec<String> {
        microvisor::list_domains(fake, 0)
            .unwrap()
            .0
            .into_iter()
            .map(|d| d.name)
            .collect()
    }

    fn start_info(fake: &FakeMicrovisor, domid: u32) -> HvmStartInfo {
        let raw = fake.read_guest(domid, BOOT_INFO_GPA, 56).unwrap();
        HvmStartInfo::read_from_bytes(&raw).unwrap()
    }

    #[test]
    fn layout_plans_segments_entry_and_boot_page() {
        let images = Images {
            kernel: kernel(),
            ramdisk: None,
        };
        let c = config("/k".into());
        let l = layout(&c, &images).unwrap();
        assert_eq!(
            *l.plan(),
            Plan {
                memory_mib: 16,
                entry: 0x10_0040,
                start_info: 0x1000,
                segments: vec![
                    SegmentPlan {
                        paddr: 0x10_0000,
                        file_bytes: 16,
                        mem_bytes: 0x2000
                    },
                    SegmentPlan {
                        paddr: 0x10_2000,
                        file_bytes: 0x1800,
                        mem_bytes: 0x3000
                    },
                ],
                ramdisk: None,
            }
        );
        let mut expected =
            ::microvisor::domain::boot_info_page(16 << 20, "console=hvc0 quiet", None);
        reserve_special_pages(&mut expected, 16 << 20);
        assert_eq!(*l.boot_page(), expected);
        let w = l.writes();
        assert_eq!(w.len(), 3);
        assert_eq!(w[2], (BOOT_INFO_GPA, &l.boot_page()[..]));
    }

    #[test]
    fn a_ramdisk_goes_to_the_top_of_ram_as_the_one_module() {
        let images = Images {
            kernel: kernel(),
            ramdisk: Some(bytes(5000, 9)),
        };
        let mut c = config("/k".into());
        c.ramdisk = Some("/r".into());
        let l = layout(&c, &images).unwrap();
        // Below the xenstore and console pages, the last two pages of RAM.
        let top = (16u64 << 20) - 0x2000;
        assert_eq!(
            l.plan().ramdisk,
            Some(RamdiskPlan {
                paddr: top - 0x2000,
                bytes: 5000
            })
        );
        let info = HvmStartInfo::read_from_bytes(&l.boot_page()[..56]).unwrap();
        assert_eq!(info.nr_modules, 1);
        assert_eq!(info.modlist_paddr, 0x1080);
        let m = HvmModlistEntry::read_from_bytes(
            &l.boot_page()[::microvisor::domain::MODLIST_OFFSET as usize..][..32],
        )
        .unwrap();
        assert_eq!((m.paddr, m.size, m.cmdline_paddr), (top - 0x2000, 5000, 0));
        assert_eq!(l.writes().last().unwrap().0, top - 0x2000);
    }

    #[test]
    fn bad_kernels_are_refused_with_the_reason() {
        let c = config("/k".into());
        let check = |kernel: Vec<u8>, c: &DomainConfig| {
            layout(
                c,
                &Images {
                    kernel,
                    ramdisk: None,
                },
            )
            .map(|_| ())
            .unwrap_err()
        };
        let e = check(b"#!/bin/sh\n".to_vec(), &c);
        assert_eq!(e.to_string(), "kernel /k cannot be used: not an ELF file");
        let mut bz = vec![0u8; 0x300];
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        match check(bz, &c) {
            CreateError::BadKernel { fix: Some(fix), .. } => {
                assert!(fix.contains("bzImage"), "{fix}")
            }
            other => panic!("{other:?}"),
        }
        let e = check(
            elf_without_note(&[Seg {
                paddr: 0x10_0000,
                data: vec![1],
                mem: 1,
            }]),
            &c,
        );
        assert_eq!(
            e.to_string(),
            "kernel /k cannot be used: no PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY)"
        );
        let mut i386 = kernel();
        i386[18] = 3;
        assert_eq!(
            check(i386, &c).to_string(),
            "kernel /k cannot be used: not a little-endian x86-64 ELF executable"
        );
        // A segment that ends past 16 MiB.
        let big = pvh_elf(
            0x10_0000,
            &[Seg {
                paddr: 0x10_0000,
                data: vec![1],
                mem: 20 << 20,
            }],
        );
        match check(big, &c) {
            CreateError::BadKernel { reason, fix, .. } => {
                assert_eq!(
                    reason,
                    "its segment at 0x100000..0x1500000 does not fit in the domain's 16 MiB of RAM"
                );
                assert_eq!(fix.as_deref(), Some("raise \"memory\" to at least 21 MiB"));
            }
            other => panic!("{other:?}"),
        }
        let low = pvh_elf(
            0x1000,
            &[Seg {
                paddr: 0x1000,
                data: vec![1],
                mem: 0x10,
            }],
        );
        assert_eq!(
            check(low, &c).to_string(),
            "kernel /k cannot be used: its segment at 0x1000..0x1010 overlaps page 0 or the boot page (0x1000..0x2000)"
        );
        let off = pvh_elf(
            0x90_0000,
            &[Seg {
                paddr: 0x10_0000,
                data: vec![1],
                mem: 0x10,
            }],
        );
        assert_eq!(
            check(off, &c).to_string(),
            "kernel /k cannot be used: its PVH entry point 0x900000 is not inside a loaded segment"
        );
        let mut bad = c.clone();
        bad.vcpus = 2;
        assert!(matches!(
            check(kernel(), &bad),
            CreateError::InvalidConfig { .. }
        ));
    }

    #[test]
    fn ramdisks_that_do_not_fit_are_refused() {
        let mut c = config("/k".into());
        c.ramdisk = Some("/r".into());
        c.memory_mib = 2;
        let check = |size: usize| {
            layout(
                &c,
                &Images {
                    kernel: kernel(),
                    ramdisk: Some(vec![7; size]),
                },
            )
            .map(|l| l.plan().ramdisk)
        };
        // Above the kernel (which ends at 1 MiB + 20 KiB) and below the xenstore and
        // console pages there are 1 MiB - 28 KiB.
        let room = (1 << 20) - 0x7000;
        assert_eq!(
            check(room).unwrap(),
            Some(RamdiskPlan {
                paddr: 0x10_5000,
                bytes: room as u64
            })
        );
        match check(room + 1).unwrap_err() {
            CreateError::BadRamdisk { reason, fix, .. } => {
                assert_eq!(
                    reason,
                    "it is 1019905 bytes, but only 1019904 bytes of the domain's 2 MiB lie between the kernel and the xenstore and console pages"
                );
                assert_eq!(fix.as_deref(), Some("raise \"memory\" to at least 3 MiB"));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            check(0).unwrap_err().to_string(),
            "ramdisk /r cannot be used: it is empty"
        );
    }

    #[test]
    fn files_that_cannot_be_read() {
        let files = Files::new();
        let missing = files.dir.path().join("nope").to_str().unwrap().to_owned();
        match read_file(ImageKind::Kernel, &missing, 100).unwrap_err() {
            CreateError::Unreadable {
                problem, reason, ..
            } => {
                assert_eq!(problem, FileProblem::NotFound);
                assert_eq!(reason, "No such file or directory");
            }
            other => panic!("{other:?}"),
        }
        let dir = files.dir.path().to_str().unwrap();
        assert_eq!(
            read_file(ImageKind::Ramdisk, dir, 100)
                .unwrap_err()
                .to_string(),
            format!("cannot read ramdisk {dir}: it is a directory")
        );
        assert_eq!(
            read_file(ImageKind::Kernel, "/dev/zero", 100)
                .unwrap_err()
                .to_string(),
            "cannot read kernel /dev/zero: it is not a regular file"
        );
        let big = files.put("big", &[0; 2 << 20]);
        assert_eq!(
            read_file(ImageKind::Kernel, &big, 1 << 20)
                .unwrap_err()
                .to_string(),
            format!("cannot read kernel {big}: it is 2097152 bytes, more than the 1 MiB limit")
        );
        let small = files.put("small", b"abc");
        assert_eq!(read_file(ImageKind::Kernel, &small, 3).unwrap(), b"abc");
        // A ramdisk larger than the domain's memory is refused while reading.
        let mut c = config(small.clone());
        c.memory_mib = 1;
        c.ramdisk = Some(big);
        assert!(matches!(
            read_images(&c),
            Err(CreateError::Unreadable {
                what: ImageKind::Ramdisk,
                ..
            })
        ));
    }

    #[test]
    fn builds_a_domain_end_to_end() {
        let files = Files::new();
        let mut c = config(files.put("hello.elf", &kernel()));
        c.ramdisk = Some(files.put("initrd", &bytes(70_000, 5)));
        let fake = FakeMicrovisor::new();
        let free = fake.mem_free_kib();
        let r = run(&fake, &c, opts()).unwrap();
        let domid = r.domid.unwrap();
        assert_eq!(domid, 3, "the lowest free id");
        assert_eq!(r.state, Some(State::Running));
        assert_eq!(r.config, c);
        assert_eq!(fake.mem_free_kib(), free - 16 * 1024);
        let d = microvisor::domain_info(&fake, domid).unwrap();
        assert_eq!((d.name.as_str(), d.mem_kib, d.vcpus), ("web", 16 * 1024, 1));
        let events = fake
            .control(ControlOp::EventsTake as u64, 0, &mut [])
            .unwrap();
        assert_eq!(events & EVENT_DOMAIN_STATE, EVENT_DOMAIN_STATE);

        // The segments, byte for byte; the rest of each segment and of RAM is zero.
        assert_eq!(fake.read_guest(domid, 0x10_0000, 16).unwrap(), bytes(16, 1));
        assert_eq!(
            fake.read_guest(domid, 0x10_0010, 0x2000 - 0x10).unwrap(),
            vec![0; 0x2000 - 0x10]
        );
        assert_eq!(
            fake.read_guest(domid, 0x10_2000, 0x1800).unwrap(),
            bytes(0x1800, 2)
        );
        assert_eq!(fake.read_guest(domid, 0, 0x1000).unwrap(), vec![0; 0x1000]);
        // A valid start info at 0x1000, as the microvisor would write it.
        let info = start_info(&fake, domid);
        assert_eq!(info.magic, HVM_START_MAGIC);
        assert_eq!(info.version, 1);
        assert_eq!(info.cmdline_paddr, 0x1100);
        assert_eq!(
            fake.read_guest(domid, 0x1100, 19).unwrap(),
            b"console=hvc0 quiet\0"
        );
        // RAM up to the xenstore and console pages, which are reserved.
        assert_eq!(info.memmap_entries, 2);
        let mm = fake.read_guest(domid, info.memmap_paddr, 48).unwrap();
        let ram = HvmMemmapEntry::read_from_bytes(&mm[..24]).unwrap();
        assert_eq!(
            (ram.addr, ram.size, ram.kind),
            (0, (16 << 20) - 8192, E820_RAM)
        );
        let special = HvmMemmapEntry::read_from_bytes(&mm[24..]).unwrap();
        assert_eq!(
            (special.addr, special.size, special.kind),
            ((16 << 20) - 8192, 8192, E820_RESERVED)
        );
        // The ramdisk at the top of RAM, named by the module list.
        assert_eq!(info.nr_modules, 1);
        let m = fake.read_guest(domid, info.modlist_paddr, 32).unwrap();
        let m = HvmModlistEntry::read_from_bytes(&m).unwrap();
        assert_eq!(m.size, 70_000);
        assert_eq!(m.paddr % 4096, 0);
        assert_eq!(
            m.paddr,
            (16 << 20) - 8192 - 70_000u64.next_multiple_of(4096)
        );
        assert_eq!(
            fake.read_guest(domid, m.paddr, 70_000).unwrap(),
            bytes(70_000, 5)
        );
        // The entry state, and no window slot left behind.
        let e = fake.entry_of(domid).unwrap();
        assert_eq!((e.entry, e.start_info), (0x10_0040, 0x1000));
        assert!(fake.foreign_slots().is_empty());
    }

    #[test]
    fn large_segments_go_through_the_window_in_batches() {
        // 300 KiB of text (75 pages: two batches of 64 slots), at an unaligned address.
        let files = Files::new();
        let text = bytes(300 * 1024, 3);
        let k = pvh_elf(
            0x20_0800,
            &[Seg {
                paddr: 0x20_0800,
                data: text.clone(),
                mem: 300 * 1024,
            }],
        );
        let c = config(files.put("big.elf", &k));
        let fake = FakeMicrovisor::new();
        let before = fake.calls();
        let r = run(&fake, &c, opts()).unwrap();
        let domid = r.domid.unwrap();
        assert_eq!(fake.read_guest(domid, 0x20_0800, text.len()).unwrap(), text);
        assert!(fake.foreign_slots().is_empty());
        // 76 text pages + the boot page: 77 maps and 77 unmaps, in two batches (2 mmaps).
        let calls = fake.calls() - before;
        assert!(calls >= 77 * 2 + 2, "{calls}");
    }

    #[test]
    fn paused_and_dry_run() {
        let files = Files::new();
        let c = config(files.put("k", &kernel()));
        let fake = FakeMicrovisor::new();
        let free = fake.mem_free_kib();
        let r = run(
            &fake,
            &c,
            Options {
                dry_run: true,
                ..opts()
            },
        )
        .unwrap();
        assert_eq!((r.domid, r.state), (None, None));
        assert_eq!(r.plan.entry, 0x10_0040);
        assert_eq!(names(&fake), ["Domain-0", "hello1", "hello2"]);
        assert_eq!(fake.mem_free_kib(), free);

        let r = run(
            &fake,
            &c,
            Options {
                paused: true,
                ..opts()
            },
        )
        .unwrap();
        assert_eq!(r.state, Some(State::Paused));
        let domid = r.domid.unwrap();
        // It has not run, so its entry could still be set; once unpaused it cannot.
        let mut entry = [0u8; 16];
        assert_eq!(
            fake.control(
                ControlOp::DomainSetEntry as u64,
                u64::from(domid),
                &mut entry
            ),
            Ok(0)
        );
        fake.control(ControlOp::DomainUnpause as u64, u64::from(domid), &mut [])
            .unwrap();
        assert_eq!(
            fake.control(
                ControlOp::DomainSetEntry as u64,
                u64::from(domid),
                &mut entry
            ),
            Err(EBUSY)
        );
    }

    #[test]
    fn host_checks_come_before_the_domain_exists() {
        let files = Files::new();
        let mut c = config(files.put("k", &kernel()));
        let fake = FakeMicrovisor::new();
        let calls_before = fake.calls();
        c.memory_mib = 3072;
        let mut small = FakeMicrovisor::new();
        small = small.with_host(HostInfo {
            mem_free_kib: 100 * 1024 + 512,
            ..microvisor::host_record(&fake).unwrap()
        });
        let e = run(&small, &c, opts()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "domain \"web\" needs 3072 MiB of memory, but the host has only 100 MiB free"
        );
        c.memory_mib = 16;
        c.name = "hello2".into();
        let e = run(&fake, &c, opts()).unwrap_err();
        assert_eq!(
            e,
            CreateError::NameInUse {
                name: "hello2".into(),
                domid: Some(2)
            }
        );
        assert_eq!(
            e.to_string(),
            "a domain named \"hello2\" already exists (domain 2)"
        );
        let nowindow = FakeMicrovisor::new().with_host(HostInfo {
            foreign_window_pages: 0,
            ..microvisor::host_record(&fake).unwrap()
        });
        c.name = "web".into();
        assert_eq!(
            run(&nowindow, &c, opts()).unwrap_err(),
            CreateError::NoForeignWindow
        );
        // None of this created anything.
        assert_eq!(names(&fake), ["Domain-0", "hello1", "hello2"]);
        assert!(fake.calls() > calls_before);
    }

    #[test]
    fn domain_create_errnos_become_typed_errors() {
        let files = Files::new();
        let c = config(files.put("k", &kernel()));
        for (errno, expect) in [
            (
                ENOMEM,
                CreateError::NotEnoughMemory {
                    name: "web".into(),
                    needed_kib: 16 * 1024,
                    free_kib: 3 * 1024 * 1024,
                },
            ),
            (
                EEXIST,
                CreateError::NameInUse {
                    name: "web".into(),
                    domid: None,
                },
            ),
            (ENOSPC, CreateError::NoFreeDomid),
        ] {
            let fake = FakeMicrovisor::new();
            fake.fail_nth(ControlOp::DomainCreate as u64, 1, errno);
            assert_eq!(run(&fake, &c, opts()).unwrap_err(), expect, "{errno}");
        }
        let fake = FakeMicrovisor::new();
        fake.fail_nth(ControlOp::DomainCreate as u64, 1, EINVAL);
        assert!(matches!(
            run(&fake, &c, opts()),
            Err(CreateError::InvalidConfig { .. })
        ));
        let fake = FakeMicrovisor::new();
        fake.fail_nth(ControlOp::DomainCreate as u64, 1, 38);
        assert_eq!(
            run(&fake, &c, opts()).unwrap_err().to_string(),
            "creating the domain (DomainCreate) failed: the microvisor answered ENOSYS (Function not implemented)"
        );
        // The fake's own rules: no domain id left.
        let fake = FakeMicrovisor::new();
        fake.set_domid_limit(2);
        assert_eq!(
            run(&fake, &c, opts()).unwrap_err(),
            CreateError::NoFreeDomid
        );
    }

    /// Every step after DomainCreate, failed in turn: the domain is destroyed, the free
    /// memory is back, no slot is left mapped and the domain list is as before.
    #[test]
    fn a_failure_at_any_step_leaves_nothing_behind() {
        let files = Files::new();
        let mut c = config(files.put(
            "k",
            &pvh_elf(
                0x10_0000,
                &[Seg {
                    paddr: 0x10_0000,
                    data: bytes(100 * 4096, 4),
                    mem: 100 * 4096,
                }],
            ),
        ));
        c.ramdisk = Some(files.put("r", &bytes(10_000, 6)));
        let map = ControlOp::ForeignMap as u64;
        let param = ControlOp::DomainSetParam as u64;
        let steps: [(&str, u64, u32, i32); 20] = [
            ("first ForeignMap", map, 1, EINVAL),
            ("ForeignMap in the second batch", map, 70, 3),
            // 100 kernel pages, 3 ramdisk pages and the boot page.
            ("last ForeignMap of the image", map, 104, EINVAL),
            ("first mmap", OP_MMAP, 1, 12),
            ("second mmap", OP_MMAP, 2, 12),
            (
                "EvtchnAllocUnbound",
                ControlOp::EvtchnAllocUnbound as u64,
                1,
                ENOSPC,
            ),
            (
                "EvtchnBindInterdomain",
                ControlOp::EvtchnBindInterdomain as u64,
                1,
                ENOSPC,
            ),
            ("ForeignMap of the console page", map, 105, EINVAL),
            ("mmap of the console page", OP_MAP_PAGE, 1, 12),
            ("DomainSetParam CONSOLE_PFN", param, 1, EINVAL),
            ("DomainSetParam CONSOLE_EVTCHN", param, 2, EINVAL),
            (
                "EvtchnAllocUnbound of the xenstore",
                ControlOp::EvtchnAllocUnbound as u64,
                2,
                ENOSPC,
            ),
            (
                "EvtchnBindInterdomain of the xenstore",
                ControlOp::EvtchnBindInterdomain as u64,
                2,
                ENOSPC,
            ),
            ("ForeignMap of the xenstore page", map, 106, EINVAL),
            ("mmap of the xenstore page", OP_MAP_PAGE, 2, 12),
            ("DomainSetParam STORE_PFN", param, 3, EINVAL),
            ("DomainSetParam STORE_EVTCHN", param, 4, EINVAL),
            (
                "DomainSetEntry",
                ControlOp::DomainSetEntry as u64,
                1,
                EINVAL,
            ),
            ("DomainUnpause", ControlOp::DomainUnpause as u64, 1, EBUSY),
            (
                "DomainInfo while waiting",
                ControlOp::DomainInfo as u64,
                1,
                5,
            ),
        ];
        for (what, op, nth, errno) in steps {
            let fake = FakeMicrovisor::new();
            let free = fake.mem_free_kib();
            fake.fail_nth(op, nth, errno);
            let pool = PagePool::default();
            let r = create(&fake, &pool, &c, opts(), &Mutex::new(None)).map(|b| b.report);
            let after = (fake.mem_free_kib(), fake.foreign_slots(), names(&fake));
            match r {
                Err(CreateError::Failed {
                    domid: Some(3),
                    cleanup: Cleanup::Destroyed,
                    step,
                    ..
                }) => {
                    // The step that failed is the one named (a xenstore step's undo
                    // includes the console's).
                    let expected = if what.contains("xenstore") || what.contains("STORE_") {
                        ["xenstore", "STORE_"]
                    } else if what.contains("console") || what.contains("CONSOLE_") {
                        ["console", "CONSOLE_"]
                    } else if what.contains("image") || what.contains("batch") {
                        ["writing the domain's memory"; 2]
                    } else {
                        [""; 2]
                    };
                    assert!(expected.iter().any(|e| step.contains(e)), "{what}: {step}");
                }
                // A failed read of the new domain's state after the build is not a
                // failure of the build.
                Ok(r) if op == ControlOp::DomainInfo as u64 => {
                    assert_eq!(r.state, None, "{what}");
                    continue;
                }
                other => panic!("{what}: {other:?}"),
            }
            assert_eq!(after.0, free, "{what}: free memory");
            assert!(
                fake.dom0_ports().is_empty(),
                "{what}: ports {:?}",
                fake.dom0_ports()
            );
            assert_eq!(fake.page_maps(), 0, "{what}: pages still mapped");
            assert_eq!(pool.in_use(), 0, "{what}: page slots");
            assert!(after.1.is_empty(), "{what}: slots {:?}", after.1);
            assert_eq!(after.2, ["Domain-0", "hello1", "hello2"], "{what}");
        }
    }

    /// A [`DeviceHost`] that records what the builder asks of it.
    #[derive(Default)]
    struct Host {
        attached: Mutex<Vec<u32>>,
        detached: Mutex<Vec<u32>>,
        refuse: bool,
    }

    impl DeviceHost for Host {
        fn attach(
            &self,
            _: &dyn Microvisor,
            domid: u32,
            _: &str,
            disks: &[crate::config::DiskSpec],
            vifs: &[crate::config::VifSpec],
        ) -> Result<(), String> {
            assert_eq!(disks.len() + vifs.len(), 1);
            if self.refuse {
                return Err("the store is full".to_owned());
            }
            self.attached.lock().unwrap().push(domid);
            Ok(())
        }

        fn detach(&self, _: &dyn Microvisor, domid: u32) {
            self.detached.lock().unwrap().push(domid);
        }
    }

    #[test]
    fn disks_are_checked_before_the_domain_exists_and_undone_on_a_later_failure() {
        let files = Files::new();
        let mut c = config(files.put("k", &kernel()));
        let img = files.put("d.img", &[0u8; 4096]);
        c.disks = vec![crate::config::DiskSpec {
            path: img.clone(),
            vdev: "xvda".into(),
            read_only: false,
        }];
        let build = |fake: &FakeMicrovisor, c: &DomainConfig, host: Option<&dyn DeviceHost>| {
            let pool = PagePool::default();
            let r = create_with(fake, &pool, c, opts(), &Mutex::new(None), host);
            let r = r.map(|b| {
                for ring in [b.console, b.store].into_iter().flatten() {
                    undo_ring(fake, &pool, ring);
                }
                b.report
            });
            assert_eq!(pool.in_use(), 0);
            r
        };

        // A missing, a short or an unwritable image: refused before any domain exists.
        let mut missing = c.clone();
        missing.disks[0].path = format!("{img}.nope");
        let short = files.put("short.img", &[0u8; 100]);
        let mut too_small = c.clone();
        too_small.disks[0].path = short;
        for (bad, problem) in [
            (&missing, FileProblem::NotFound),
            (&too_small, FileProblem::Other),
        ] {
            let fake = FakeMicrovisor::new();
            let host = Host::default();
            match build(&fake, bad, Some(&host)) {
                Err(CreateError::Unreadable {
                    what: ImageKind::Disk,
                    problem: p,
                    ..
                }) => assert_eq!(p, problem),
                other => panic!("{other:?}"),
            }
            assert_eq!(names(&fake), ["Domain-0", "hello1", "hello2"]);
            assert!(host.attached.lock().unwrap().is_empty());
        }
        // Dry runs check them too.
        let fake = FakeMicrovisor::new();
        let dry = Options {
            dry_run: true,
            ..opts()
        };
        assert!(matches!(
            create_with(
                &fake,
                &PagePool::default(),
                &missing,
                dry,
                &Mutex::new(None),
                None
            ),
            Err(CreateError::Unreadable {
                what: ImageKind::Disk,
                problem: FileProblem::NotFound,
                ..
            })
        ));

        // Published after the xenstore page, before the domain runs.
        let fake = FakeMicrovisor::new();
        let host = Host::default();
        let r = build(&fake, &c, Some(&host)).unwrap();
        assert_eq!(*host.attached.lock().unwrap(), [r.domid.unwrap()]);
        assert!(host.detached.lock().unwrap().is_empty());

        // A failure after the disks were published undoes them with the rest.
        for (fail_op, refuse) in [
            (Some(ControlOp::DomainSetEntry as u64), false),
            (None, true),
        ] {
            let fake = FakeMicrovisor::new();
            let free = fake.mem_free_kib();
            if let Some(op) = fail_op {
                fake.fail_nth(op, 1, EINVAL);
            }
            let host = Host {
                refuse,
                ..Host::default()
            };
            match build(&fake, &c, Some(&host)) {
                Err(CreateError::Failed {
                    step,
                    cleanup: Cleanup::Destroyed,
                    ..
                }) => {
                    assert_eq!(refuse, step == "publishing the PV devices", "{step}");
                }
                other => panic!("{other:?}"),
            }
            let attached = host.attached.lock().unwrap().clone();
            assert_eq!(*host.detached.lock().unwrap(), attached);
            assert_eq!(attached.len(), usize::from(!refuse));
            assert!(fake.dom0_ports().is_empty());
            assert_eq!(fake.page_maps(), 0);
            assert_eq!(fake.mem_free_kib(), free);
            assert_eq!(names(&fake), ["Domain-0", "hello1", "hello2"]);
        }

        // Disks without a back-end to serve them: refused, nothing left.
        let fake = FakeMicrovisor::new();
        match build(&fake, &c, None) {
            Err(CreateError::Failed { step, .. }) => {
                assert_eq!(step, "publishing the PV devices");
            }
            other => panic!("{other:?}"),
        }
        assert!(fake.dom0_ports().is_empty());
        assert_eq!(names(&fake), ["Domain-0", "hello1", "hello2"]);
    }

    #[test]
    fn a_failed_foreign_unmap_is_retried_or_left_for_the_next_build() {
        let files = Files::new();
        let c = config(files.put("k", &kernel()));
        let unmap = ControlOp::ForeignUnmap as u64;
        let fake = FakeMicrovisor::new();
        fake.fail_nth(unmap, 2, 4);
        run(&fake, &c, opts()).unwrap();
        assert!(fake.foreign_slots().is_empty(), "retried");
        // Twice: the slot stays mapped, the build still succeeds, and the next build
        // reclaims the slot.
        fake.fail_nth(unmap, 1, 4);
        fake.fail_nth(unmap, 1, 4);
        let mut c2 = c.clone();
        c2.name = "web2".into();
        run(&fake, &c2, opts()).unwrap();
        assert_eq!(fake.foreign_slots().len(), 1);
        c2.name = "web3".into();
        run(&fake, &c2, opts()).unwrap();
        assert!(fake.foreign_slots().is_empty());
    }

    #[test]
    fn failure_messages_name_the_step() {
        let files = Files::new();
        let c = config(files.put("k", &kernel()));
        let fake = FakeMicrovisor::new();
        fake.fail_nth(ControlOp::ForeignMap as u64, 2, EINVAL);
        assert_eq!(
            run(&fake, &c, opts()).unwrap_err().to_string(),
            "writing the domain's memory failed: ForeignMap of gfn 0x102 into window slot 2049 failed with EINVAL (Invalid argument)"
        );
        let fake = FakeMicrovisor::new();
        fake.fail_nth(ControlOp::DomainSetEntry as u64, 1, EINVAL);
        assert_eq!(
            run(&fake, &c, opts()).unwrap_err().to_string(),
            "setting the entry point (DomainSetEntry) failed: the microvisor answered EINVAL (Invalid argument)"
        );
    }

    #[test]
    fn a_failed_cleanup_says_which_domain_is_left() {
        let files = Files::new();
        let c = config(files.put("k", &kernel()));
        let fake = FakeMicrovisor::new();
        fake.fail_nth(ControlOp::DomainSetEntry as u64, 1, EINVAL);
        fake.fail_nth(ControlOp::DomainDestroy as u64, 1, 5);
        let cell = Mutex::new(None);
        let e = create(&fake, &PagePool::default(), &c, opts(), &cell).unwrap_err();
        assert_eq!(
            e.to_string(),
            "setting the entry point (DomainSetEntry) failed: the microvisor answered EINVAL (Invalid argument); destroying the half-built domain 3 failed too: DomainDestroy failed with EIO (Input/output error)"
        );
        assert_eq!(
            *cell.lock().unwrap(),
            Some(3),
            "the caller knows what is left"
        );
        assert_eq!(
            microvisor::domain_info(&fake, 3).unwrap().state,
            State::Paused
        );
        // A destroy that never shows times out into a failed cleanup too.
        let fake = FakeMicrovisor::new();
        fake.fail_nth(ControlOp::DomainSetEntry as u64, 1, EINVAL);
        fake.set_lag(u32::MAX);
        match run(&fake, &c, opts()).unwrap_err() {
            CreateError::Failed {
                cleanup: Cleanup::Failed { reason },
                ..
            } => assert_eq!(
                reason,
                "it was still listed (paused) 200 ms after DomainDestroy"
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_slot_left_mapped_by_an_earlier_dom0d_is_reclaimed() {
        let files = Files::new();
        let c = config(files.put("k", &kernel()));
        let fake = FakeMicrovisor::new();
        microvisor::foreign_map(&fake, 2048, 1, 0).unwrap();
        let r = run(&fake, &c, opts()).unwrap();
        assert_eq!(
            fake.read_guest(r.domid.unwrap(), 0x10_0000, 16).unwrap(),
            bytes(16, 1)
        );
        assert!(fake.foreign_slots().is_empty());
    }

    #[test]
    fn frames_mapped_when_their_domain_dies_come_back_with_the_last_slot() {
        let fake = FakeMicrovisor::empty();
        fake.insert(domain_record(0, "Domain-0", DomainState::Running, 1024));
        let free = fake.mem_free_kib();
        let mut req = DomainCreateRequest {
            mem_mib: 2,
            vcpus: 1,
            ..DomainCreateRequest::default()
        };
        fill_fixed_str(&mut req.name, "x");
        let mut buf = [0u8; 48];
        buf.copy_from_slice(req.as_bytes());
        let domid = fake
            .control(ControlOp::DomainCreate as u64, 0, &mut buf)
            .unwrap();
        assert_eq!(fake.mem_free_kib(), free - 2048);
        foreign_map(&fake, 0, 1, 5).unwrap();
        foreign_map(&fake, 1, 1, 5).unwrap();
        fake.control(ControlOp::DomainDestroy as u64, domid, &mut [])
            .unwrap();
        assert_eq!(
            fake.mem_free_kib(),
            free - 4,
            "one frame still mapped (twice)"
        );
        foreign_unmap(&fake, 0).unwrap();
        assert_eq!(fake.mem_free_kib(), free - 4);
        foreign_unmap(&fake, 1).unwrap();
        assert_eq!(fake.mem_free_kib(), free);
    }

    #[test]
    fn every_domain_gets_a_console_and_a_xenstore_page_before_it_runs() {
        let files = Files::new();
        let mut c = config(files.put("k", &kernel()));
        c.ramdisk = Some(files.put("initrd", &bytes(9000, 5)));
        let fake = FakeMicrovisor::new();
        let pool = PagePool::default();
        let built = create(
            &fake,
            &pool,
            &c,
            Options {
                paused: true,
                ..opts()
            },
            &Mutex::new(None),
        )
        .unwrap();
        let domid = built.report.domid.unwrap();
        let console = built.console.unwrap();
        let store = built.store.unwrap();
        // The console is the last page of the 16 MiB and the xenstore page the one below
        // it: zero, reserved in the memory map (checked in builds_a_domain_end_to_end),
        // named by the parameters; the ramdisk ends below both.
        let gfn = (16 << 20) / 4096 - 1;
        let store_gfn = gfn - 1;
        assert_eq!(
            (console.kind, console.domid, console.gfn),
            (RingKind::Console, domid, gfn)
        );
        assert_eq!(
            (store.kind, store.domid, store.gfn),
            (RingKind::Store, domid, store_gfn)
        );
        assert_eq!(fake.param(domid, HVM_PARAM_CONSOLE_PFN), Some(gfn));
        assert_eq!(
            fake.param(domid, HVM_PARAM_CONSOLE_EVTCHN),
            Some(u64::from(console.remote_port))
        );
        assert_eq!(fake.param(domid, HVM_PARAM_STORE_PFN), Some(store_gfn));
        assert_eq!(
            fake.param(domid, HVM_PARAM_STORE_EVTCHN),
            Some(u64::from(store.remote_port))
        );
        assert_ne!(console.remote_port, store.remote_port);
        assert_eq!(
            fake.read_guest(domid, store_gfn * 4096, 8192).unwrap(),
            vec![0; 8192]
        );
        let rd = built.report.plan.ramdisk.unwrap();
        assert!(rd.paddr + rd.bytes <= store_gfn * 4096);
        // Domain 0's ports are bound to the DomU's, and the pages stay mapped in their
        // slots.
        assert_eq!(
            fake.dom0_ports(),
            [
                (console.port, Some((domid, console.remote_port))),
                (store.port, Some((domid, store.remote_port)))
            ]
        );
        assert_eq!(
            fake.foreign_slots(),
            [
                (console.page.slot, domid, gfn),
                (store.page.slot, domid, store_gfn)
            ]
        );
        assert_eq!(fake.page_maps(), 2);
        // The xenstore page is the guest's too.
        store.page.mem.write_bytes(0, b"xs").unwrap();
        assert_eq!(fake.read_guest(domid, store_gfn * 4096, 2).unwrap(), b"xs");
        undo_ring(&fake, &pool, store);
        // What the guest writes there, dom0d reads, and the guest's signal reaches it.
        assert_eq!(fake.console_write(domid, b"hello"), Some(5));
        let mut back =
            pv_drivers::console::ConsoleBack::new(Arc::clone(&console.page.mem)).unwrap();
        let mut buf = [0u8; 16];
        assert_eq!(back.read_output(&mut buf).unwrap(), 5);
        assert_eq!(
            microvisor::evtchn_take_pending(&fake),
            Ok(vec![console.port])
        );
        drop(back);
        // Handing it back leaves nothing: no port, no slot, no mapping.
        undo_ring(&fake, &pool, console);
        assert!(fake.dom0_ports().is_empty());
        assert!(fake.foreign_slots().is_empty());
        assert_eq!(fake.page_maps(), 0);
        assert_eq!(pool.in_use(), 0);
    }

    #[test]
    fn without_event_channels_domains_have_no_console_and_no_xenstore() {
        let files = Files::new();
        let c = config(files.put("k", &kernel()));
        let fake = FakeMicrovisor::new();
        // Once: ENOSYS says the microvisor has no event channels at all, so the builder
        // does not ask again for the xenstore page.
        fake.fail_nth(ControlOp::EvtchnAllocUnbound as u64, 1, ENOSYS);
        let pool = PagePool::default();
        let built = create(&fake, &pool, &c, opts(), &Mutex::new(None)).unwrap();
        assert!(built.console.is_none());
        assert!(built.store.is_none());
        let domid = built.report.domid.unwrap();
        assert_eq!(fake.param(domid, HVM_PARAM_CONSOLE_PFN), None);
        assert_eq!(fake.param(domid, HVM_PARAM_STORE_PFN), None);
        assert!(fake.domu_ports(domid).is_empty());
        assert!(fake.dom0_ports().is_empty());
        assert!(fake.foreign_slots().is_empty());
        assert_eq!(pool.in_use(), 0);
        assert_eq!(built.report.state, Some(State::Running));
    }

    #[test]
    fn vifs_are_published_before_the_domain_runs_and_refused_without_event_channels() {
        let files = Files::new();
        let mut c = config(files.put("k", &kernel()));
        c.vifs = vec![crate::config::parse_vif("", &c.name, 0).unwrap()];
        let build = |fake: &FakeMicrovisor, host: Option<&dyn DeviceHost>| {
            let pool = PagePool::default();
            let r = create_with(fake, &pool, &c, opts(), &Mutex::new(None), host);
            let r = r.map(|b| {
                for ring in [b.console, b.store].into_iter().flatten() {
                    undo_ring(fake, &pool, ring);
                }
                b.report
            });
            assert_eq!(pool.in_use(), 0);
            r
        };
        let fake = FakeMicrovisor::new();
        let host = Host::default();
        let r = build(&fake, Some(&host)).unwrap();
        assert_eq!(*host.attached.lock().unwrap(), [r.domid.unwrap()]);

        // A later failure undoes them.
        let fake = FakeMicrovisor::new();
        fake.fail_nth(ControlOp::DomainSetEntry as u64, 1, EINVAL);
        let host = Host::default();
        assert!(build(&fake, Some(&host)).is_err());
        assert_eq!(
            *host.detached.lock().unwrap(),
            *host.attached.lock().unwrap()
        );

        // Without event channels there is no xenstore to publish them in: refused, and
        // nothing is left.
        for host in [None, Some(&Host::default() as &dyn DeviceHost)] {
            let fake = FakeMicrovisor::new();
            fake.fail_nth(ControlOp::EvtchnAllocUnbound as u64, 1, ENOSYS);
            match build(&fake, host) {
                Err(CreateError::Failed {
                    step,
                    reason,
                    cleanup: Cleanup::Destroyed,
                    ..
                }) => {
                    assert_eq!(step, "publishing the PV devices");
                    assert!(reason.contains("event channels"), "{reason}");
                }
                other => panic!("{other:?}"),
            }
            assert!(fake.dom0_ports().is_empty());
            assert_eq!(fake.page_maps(), 0);
            assert_eq!(names(&fake), ["Domain-0", "hello1", "hello2"]);
        }
    }

    #[test]
    fn kernels_must_leave_the_xenstore_and_console_pages_free() {
        let c = config("/k".into());
        let k = pvh_elf(
            0x10_0000,
            &[Seg {
                paddr: 0x10_0000,
                data: vec![1],
                mem: (15 << 20) - 0x800,
            }],
        );
        let e = layout(
            &c,
            &Images {
                kernel: k,
                ramdisk: None,
            },
        )
        .map(|_| ())
        .unwrap_err();
        match e {
            CreateError::BadKernel { reason, fix, .. } => {
                assert_eq!(
                    reason,
                    "its segment at 0x100000..0xfff800 overlaps the xenstore and console pages (0xffe000..0x1000000, the last 2 pages of RAM)"
                );
                assert_eq!(fix.as_deref(), Some("raise \"memory\" to at least 17 MiB"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_xenstore_and_console_pages_are_reserved_in_the_memory_map() {
        let mut page = ::microvisor::domain::boot_info_page(2 << 20, "x", Some((0x1000, 1)));
        let before = page;
        reserve_special_pages(&mut page, 2 << 20);
        let info = shared_abi::pvh::HvmStartInfo::read_from_bytes(&page[..56]).unwrap();
        assert_eq!(info.memmap_entries, 2);
        // Only the memory map changed: the module list and command line are untouched.
        let map = (info.memmap_paddr - BOOT_INFO_GPA) as usize;
        assert_eq!(page[MODLIST_OFFSET..], before[MODLIST_OFFSET..]);
        assert_eq!(page[56..map], before[56..map]);
        let e = |i: usize| {
            shared_abi::pvh::HvmMemmapEntry::read_from_bytes(&page[map + i * 24..map + i * 24 + 24])
                .unwrap()
        };
        assert_eq!((e(0).addr, e(0).size, e(0).kind), (0, 0x1f_e000, E820_RAM));
        assert_eq!(
            (e(1).addr, e(1).size, e(1).kind),
            (0x1f_e000, 0x2000, E820_RESERVED)
        );
    }

    #[test]
    fn the_fake_checks_create_requests_like_the_abi() {
        let fake = FakeMicrovisor::new();
        let good = {
            let mut r = DomainCreateRequest {
                mem_mib: 16,
                vcpus: 1,
                ..DomainCreateRequest::default()
            };
            fill_fixed_str(&mut r.name, "ok");
            r
        };
        let call = |r: DomainCreateRequest, arg: u64| {
            let mut buf = [0u8; 48];
            buf.copy_from_slice(r.as_bytes());
            fake.control(ControlOp::DomainCreate as u64, arg, &mut buf)
        };
        for bad in [
            DomainCreateRequest { vcpus: 0, ..good },
            DomainCreateRequest { vcpus: 2, ..good },
            DomainCreateRequest { mem_mib: 1, ..good },
            DomainCreateRequest {
                mem_mib: 3073,
                ..good
            },
            DomainCreateRequest {
                reserved: [0, 1],
                ..good
            },
            DomainCreateRequest {
                name: [0; 32],
                ..good
            },
            DomainCreateRequest {
                name: [7; 32],
                ..good
            },
        ] {
            assert_eq!(call(bad, 0), Err(EINVAL), "{bad:?}");
        }
        assert_eq!(call(good, 1), Err(EINVAL));
        assert_eq!(
            fake.control(ControlOp::DomainCreate as u64, 0, &mut [0; 47]),
            Err(EINVAL)
        );
        let mut dup = good;
        fill_fixed_str(&mut dup.name, "hello1");
        assert_eq!(call(dup, 0), Err(EEXIST));
        assert_eq!(call(good, 0), Ok(3));
        // 16 MiB of the 3 GiB are gone now.
        let mut big = DomainCreateRequest {
            mem_mib: 3072,
            ..good
        };
        fill_fixed_str(&mut big.name, "big");
        assert_eq!(call(big, 0), Err(ENOMEM));
        // Set-entry: addresses inside RAM, domain 0 and unknown domains refused.
        let entry = |domid: u64, e: u64, s: u64| {
            let mut buf = [0u8; 16];
            buf.copy_from_slice(
                VcpuEntry {
                    entry: e,
                    start_info: s,
                }
                .as_bytes(),
            );
            fake.control(ControlOp::DomainSetEntry as u64, domid, &mut buf)
        };
        assert_eq!(entry(3, 16 << 20, 0x1000), Err(EINVAL));
        assert_eq!(entry(3, 0x10_0000, 16 << 20), Err(EINVAL));
        assert_eq!(entry(0, 0x10_0000, 0x1000), Err(1));
        assert_eq!(entry(99, 0x10_0000, 0x1000), Err(ESRCH));
        assert_eq!(entry(1, 0x10_0000, 0x1000), Err(EBUSY), "hello1 has run");
        assert_eq!(entry(3, 0x10_0000, 0x1000), Ok(0));
        assert_eq!(
            microvisor::domain_info(&fake, 3).unwrap().state,
            State::Paused
        );
    }
}
