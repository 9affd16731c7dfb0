//! The local APIC in xAPIC mode (TCG has no x2APIC), at its MMIO page.

use super::cpu;

const BASE: u64 = 0xFEE0_0000;
const ID: u64 = 0x20;
const EOI: u64 = 0xB0;
const SVR: u64 = 0xF0;
const ICR_LOW: u64 = 0x300;
const ICR_HIGH: u64 = 0x310;
const ICR_PENDING: u32 = 1 << 12;
const LVT_TIMER: u64 = 0x320;
const TIMER_INITIAL: u64 = 0x380;
const TIMER_CURRENT: u64 = 0x390;
const TIMER_DIVIDE: u64 = 0x3E0;
/// Divide configuration value for "divide by 16".
const DIVIDE_BY_16: u32 = 0x3;
const LVT_MASKED: u32 = 1 << 16;

fn read(reg: u64) -> u32 {
    // SAFETY: the LAPIC page is identity-mapped uncached by the boot page tables; `reg`
    // is one of the architectural register offsets above.
    unsafe { core::ptr::read_volatile((BASE + reg) as *const u32) }
}

fn write(reg: u64, val: u32) {
    // SAFETY: as for `read`; writes go to this CPU's own LAPIC.
    unsafe { core::ptr::write_volatile((BASE + reg) as *mut u32, val) };
}

/// This CPU's APIC id.
pub fn id() -> u32 {
    read(ID) >> 24
}

/// Software-enables the LAPIC with the spurious vector.
pub fn enable() {
    let base = cpu::rdmsr(0x1B);
    // SAFETY: setting the global-enable bit of IA32_APIC_BASE at its current base keeps
    // the MMIO page where the page tables expect it.
    unsafe { cpu::wrmsr(0x1B, base | (1 << 11)) };
    write(SVR, 0x100 | u32::from(super::desc::SPURIOUS_VECTOR));
}

/// Signals end of interrupt.
pub fn eoi() {
    write(EOI, 0);
}

fn send(dest: u32, low: u32) {
    // On pCPU 0 the local APIC is also Dom0's, which may be between writing ICR_HIGH and
    // ICR_LOW when it exits: put its ICR_HIGH back.
    let saved = read(ICR_HIGH);
    write(ICR_HIGH, dest << 24);
    write(ICR_LOW, low);
    while read(ICR_LOW) & ICR_PENDING != 0 {
        cpu::pause();
    }
    write(ICR_HIGH, saved);
}

/// Sends a fixed interrupt.
pub fn send_ipi(dest: u32, vector: u8) {
    send(dest, u32::from(vector));
}

/// Sends INIT, then two STARTUPs with the trampoline page.
pub fn start_ap(dest: u32, trampoline_pa: u64, tsc_khz: u64) {
    let wait_us = |us: u64| {
        let end = cpu::rdtsc() + us * tsc_khz / 1000;
        while cpu::rdtsc() < end {
            cpu::pause();
        }
    };
    send(dest, 0x4500); // INIT, assert, level
    wait_us(10_000);
    for _ in 0..2 {
        send(dest, 0x4600 | (trampoline_pa >> 12) as u32); // STARTUP
        wait_us(200);
    }
}

/// Measures the local APIC timer (divided by 16) in ticks per millisecond, against the TSC.
pub fn calibrate_timer(tsc_khz: u64) -> u64 {
    write(TIMER_DIVIDE, DIVIDE_BY_16);
    write(
        LVT_TIMER,
        LVT_MASKED | u32::from(super::desc::WAKEUP_VECTOR),
    );
    write(TIMER_INITIAL, u32::MAX);
    let start = cpu::rdtsc();
    while cpu::rdtsc() - start < tsc_khz * 10 {
        cpu::pause();
    }
    let elapsed = u32::MAX - read(TIMER_CURRENT);
    write(TIMER_INITIAL, 0);
    (u64::from(elapsed) / 10).max(1)
}

/// Arms this CPU's timer to raise the wake-up vector once after `ticks` (divided-by-16
/// ticks, at least 1).
pub fn timer_oneshot(ticks: u64) {
    write(TIMER_DIVIDE, DIVIDE_BY_16);
    write(LVT_TIMER, u32::from(super::desc::WAKEUP_VECTOR));
    write(
        TIMER_INITIAL,
        u32::try_from(ticks.max(1)).unwrap_or(u32::MAX),
    );
}

/// Whether this CPU's one-shot timer is still counting.
pub fn timer_armed() -> bool {
    read(TIMER_CURRENT) != 0
}

/// Stops this CPU's timer.
pub fn timer_stop() {
    write(TIMER_INITIAL, 0);
}

/// Measures the TSC frequency against PIT channel 2 over 10 ms.
pub fn calibrate_tsc_khz() -> u64 {
    const PIT_HZ: u64 = 1_193_182;
    let ticks = PIT_HZ / 100;
    // Ports 0x61/0x42/0x43 are the PIT and its gate, owned by the microvisor during boot
    // (no Dom0 exists yet); channel 2 drives only the speaker, kept off.
    // SAFETY: see above.
    let gate = unsafe { cpu::inb(0x61) };
    let program = [
        (0x61, (gate & !0x02) | 0x01),
        (0x43, 0xB0), // channel 2, lo/hi, mode 0
        (0x42, ticks as u8),
        (0x42, (ticks >> 8) as u8),
    ];
    for (port, value) in program {
        // SAFETY: see above.
        unsafe { cpu::outb(port, value) };
    }
    let start = cpu::rdtsc();
    // SAFETY: reading the gate port has no side effects.
    while unsafe { cpu::inb(0x61) } & 0x20 == 0 {
        cpu::pause();
    }
    (cpu::rdtsc() - start) / 10
}

/// Remaps the legacy 8259 PICs to vectors 0x20-0x2F and masks every line, so their
/// interrupts can never be mistaken for exceptions (IRQ 0 defaults to vector 8, #DF).
pub fn disable_legacy_pic() {
    // ICW1-ICW4 then OCW1 (mask all) for master (0x20/0x21) and slave (0xA0/0xA1).
    let program = [
        (0x20, 0x11),
        (0xA0, 0x11),
        (0x21, 0x20),
        (0xA1, 0x28),
        (0x21, 0x04),
        (0xA1, 0x02),
        (0x21, 0x01),
        (0xA1, 0x01),
        (0x21, 0xFF),
        (0xA1, 0xFF),
    ];
    for (port, value) in program {
        // SAFETY: the PICs belong to the microvisor until Dom0 exists; this is the
        // standard initialisation sequence followed by masking every line.
        unsafe { cpu::outb(port, value) };
    }
}
