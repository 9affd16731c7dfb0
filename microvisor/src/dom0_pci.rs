//! The event function: a PCI device that only domain 0 sees, through which the microvisor
//! interrupts Dom0.
//!
//! Dom0 is native Linux, so the natural way for the microvisor to interrupt it is a device
//! with MSI: Linux's own PCI core allocates the vector and programs the MSI capability, the
//! `microvisor` module binds to the device as an ordinary PCI driver, and the microvisor
//! sends that vector as a fixed IPI to Dom0's pCPU, where Dom0's own local APIC delivers it
//! and takes the EOI.
//!
//! Linux reaches the first 256 bytes of configuration space through the type-1 ports
//! (0xCF8 address, 0xCFC-0xCFF data) even when ECAM exists, so the microvisor intercepts
//! only those ports: [`ConfigPorts`] emulates the event function's slot and forwards every
//! other access to the real ports unchanged.
//!
//! | offset | field | value |
//! |--------|-------|-------|
//! | 0x00 | vendor / device | [`VENDOR_ID`] / [`DEVICE_ID`] |
//! | 0x04 | command / status | command bits 2 (bus master) and 10 (INTx disable) writable; status: capabilities list |
//! | 0x08 | revision / class | 1 / 0x088000 (system peripheral, other) |
//! | 0x0E | header type | 0 |
//! | 0x10-0x27 | BARs | none (read as 0, sizing writes ignored) |
//! | 0x2C | subsystem vendor / id | as vendor / device |
//! | 0x34 | capabilities pointer | 0x40 |
//! | 0x3C | interrupt line / pin | line writable, pin 0 (no INTx) |
//! | 0x40 | MSI capability | 64-bit address, one vector, no per-vector masking |
//!
//! Portable and host-tested; the port I/O itself goes through [`PortIo`].

pub use shared_abi::control::{EVENT_DEVICE_ID as DEVICE_ID, EVENT_VENDOR_ID as VENDOR_ID};
/// Offset of the MSI capability.
pub const MSI_CAP: u8 = 0x40;
/// First configuration port (address).
pub const CONFIG_ADDRESS: u16 = 0xCF8;
/// Data ports are `CONFIG_DATA..CONFIG_DATA + 4`.
pub const CONFIG_DATA: u16 = 0xCFC;

const CLASS_SYSTEM_OTHER: u32 = 0x08_8000;
const STATUS_CAP_LIST: u32 = 1 << 4;
const COMMAND_WRITABLE: u16 = (1 << 2) | (1 << 10);
const MSI_CTL_ENABLE: u16 = 1 << 0;
const MSI_CTL_64BIT: u16 = 1 << 7;

/// Real port I/O, for the accesses the proxy forwards.
pub trait PortIo {
    /// `IN` of `size` (1, 2 or 4) bytes.
    fn port_in(&mut self, port: u16, size: u8) -> u32;
    /// `OUT` of `size` bytes.
    fn port_out(&mut self, port: u16, size: u8, value: u32);
}

/// Where MSI messages of the event function go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsiTarget {
    /// Destination APIC id (physical destination mode).
    pub apic_id: u8,
    /// Vector.
    pub vector: u8,
}

/// The event function's configuration registers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventFunction {
    command: u16,
    interrupt_line: u8,
    msi_control: u16,
    msi_address: u64,
    msi_data: u16,
}

impl EventFunction {
    /// Reads the aligned dword at `offset & !3`.
    fn read_dword(&self, offset: u8) -> u32 {
        let ids = u32::from(VENDOR_ID) | (u32::from(DEVICE_ID) << 16);
        match offset & !3 {
            0x00 | 0x2C => ids,
            0x04 => u32::from(self.command) | (STATUS_CAP_LIST << 16),
            0x08 => 1 | (CLASS_SYSTEM_OTHER << 8),
            0x34 => u32::from(MSI_CAP),
            0x3C => u32::from(self.interrupt_line),
            0x40 => 0x05 | (u32::from(self.msi_control | MSI_CTL_64BIT) << 16),
            0x44 => self.msi_address as u32,
            0x48 => (self.msi_address >> 32) as u32,
            0x4C => u32::from(self.msi_data),
            _ => 0,
        }
    }

    /// Reads `size` bytes at `offset` (an access may not cross its dword).
    pub fn read(&self, offset: u8, size: u8) -> u32 {
        let shift = u32::from(offset & 3) * 8;
        let mask = size_mask(size);
        (self.read_dword(offset) >> shift) & mask
    }

    /// Writes `size` bytes at `offset`; read-only bits keep their value.
    pub fn write(&mut self, offset: u8, size: u8, value: u32) {
        let shift = u32::from(offset & 3) * 8;
        let mask = size_mask(size) << shift;
        let merged = (self.read_dword(offset) & !mask) | ((value << shift) & mask);
        match offset & !3 {
            0x04 => self.command = merged as u16 & COMMAND_WRITABLE,
            0x3C => self.interrupt_line = merged as u8,
            // Only MSI enable is writable: one vector, multiple-message enable stays 0.
            0x40 => self.msi_control = (merged >> 16) as u16 & MSI_CTL_ENABLE,
            0x44 => self.msi_address = (self.msi_address & !0xFFFF_FFFF) | u64::from(merged & !3),
            0x48 => self.msi_address = (self.msi_address & 0xFFFF_FFFF) | (u64::from(merged) << 32),
            0x4C => self.msi_data = merged as u16,
            _ => {}
        }
    }

    /// Where to send an event, if Dom0 has enabled MSI with a usable message: a fixed (or
    /// lowest-priority) interrupt at a vector from 0x20 to 0xFE, to the local APIC window.
    pub fn msi_target(&self) -> Option<MsiTarget> {
        let enabled = self.msi_control & MSI_CTL_ENABLE != 0;
        let in_apic_window = self.msi_address >> 20 == 0xFEE;
        let delivery = (self.msi_data >> 8) & 7;
        let vector = self.msi_data as u8;
        (enabled && in_apic_window && delivery <= 1 && (0x20..0xFF).contains(&vector)).then_some(
            MsiTarget {
                apic_id: (self.msi_address >> 12) as u8,
                vector,
            },
        )
    }
}

fn size_mask(size: u8) -> u32 {
    match size {
        1 => 0xFF,
        2 => 0xFFFF,
        _ => 0xFFFF_FFFF,
    }
}

/// Dom0's view of the type-1 configuration ports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConfigPorts {
    /// Last value Dom0 wrote to [`CONFIG_ADDRESS`].
    address: u32,
    /// Bus 0 device number of the event function.
    device: u8,
    /// The function's registers.
    pub function: EventFunction,
}

impl ConfigPorts {
    /// The event function at bus 0, `device`, function 0.
    pub fn new(device: u8) -> Self {
        Self {
            address: 0,
            device: device & 0x1F,
            function: EventFunction::default(),
        }
    }

    /// Bus 0 device number of the event function.
    pub fn device(&self) -> u8 {
        self.device
    }

    /// The config-space offset the latched address selects, if it selects the event
    /// function (enable bit set, bus 0, our device, function 0).
    fn selected(&self) -> Option<u8> {
        let a = self.address;
        let enabled = a & 0x8000_0000 != 0;
        let bus = (a >> 16) & 0xFF;
        let device = ((a >> 11) & 0x1F) as u8;
        let function = (a >> 8) & 7;
        (enabled && bus == 0 && device == self.device && function == 0).then_some((a & 0xFC) as u8)
    }

    /// Handles Dom0's `IN`/`OUT` of `size` bytes at `port` (one of 0xCF8-0xCFF); returns
    /// the value read for `IN`. Accesses to anything but the event function reach the real
    /// ports unchanged.
    pub fn access(
        &mut self,
        io: &mut impl PortIo,
        port: u16,
        size: u8,
        is_in: bool,
        value: u32,
    ) -> u32 {
        if port == CONFIG_ADDRESS && size == 4 {
            if is_in {
                return io.port_in(port, size);
            }
            self.address = value;
            io.port_out(port, size, value);
            return 0;
        }
        let data_offset = port.wrapping_sub(CONFIG_DATA);
        match self.selected() {
            Some(reg) if data_offset < 4 => {
                let offset = reg + data_offset as u8;
                if is_in {
                    self.function.read(offset, size)
                } else {
                    self.function.write(offset, size, value);
                    0
                }
            }
            _ if is_in => io.port_in(port, size),
            _ => {
                io.port_out(port, size, value);
                0
            }
        }
    }
}

/// Picks the highest free device number on bus 0 for the event function (function 0's
/// vendor id reads 0xFFFF), among 0x10-0x1F; `None` if every slot is taken.
pub fn free_slot(io: &mut impl PortIo) -> Option<u8> {
    (0x10..=0x1Fu8).rev().find(|&dev| {
        io.port_out(CONFIG_ADDRESS, 4, 0x8000_0000 | (u32::from(dev) << 11));
        io.port_in(CONFIG_DATA, 2) == 0xFFFF
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Real ports of a bus with devices at slots 0-0x1D: 0xCF8 latches, data reads return
    /// a fixed id for present slots.
    #[derive(Default)]
    struct Bus {
        address: u32,
        log: std::vec::Vec<(u16, u8, bool, u32)>,
    }

    impl PortIo for Bus {
        fn port_in(&mut self, port: u16, size: u8) -> u32 {
            self.log.push((port, size, true, 0));
            if port == CONFIG_ADDRESS {
                return self.address;
            }
            let dev = (self.address >> 11) & 0x1F;
            if dev <= 0x1D {
                0x1234_8086 & size_mask(size)
            } else {
                size_mask(size)
            }
        }
        fn port_out(&mut self, port: u16, size: u8, value: u32) {
            self.log.push((port, size, false, value));
            if port == CONFIG_ADDRESS {
                self.address = value;
            }
        }
    }

    fn select(p: &mut ConfigPorts, bus: &mut Bus, offset: u8) {
        let addr = 0x8000_0000 | (u32::from(p.device()) << 11) | u32::from(offset);
        p.access(bus, CONFIG_ADDRESS, 4, false, addr);
    }

    #[test]
    fn finds_a_free_slot() {
        assert_eq!(free_slot(&mut Bus::default()), Some(0x1F));
    }

    #[test]
    fn emulates_the_function_and_forwards_the_rest() {
        let mut bus = Bus::default();
        let mut p = ConfigPorts::new(0x1F);
        select(&mut p, &mut bus, 0);
        assert_eq!(p.access(&mut bus, CONFIG_DATA, 4, true, 0), 0x0001_4D56);
        assert_eq!(p.access(&mut bus, CONFIG_DATA + 2, 2, true, 0), 0x0001);
        select(&mut p, &mut bus, 0x08);
        assert_eq!(p.access(&mut bus, CONFIG_DATA + 3, 1, true, 0), 0x08);
        // BAR sizing finds no BAR.
        select(&mut p, &mut bus, 0x10);
        p.access(&mut bus, CONFIG_DATA, 4, false, 0xFFFF_FFFF);
        assert_eq!(p.access(&mut bus, CONFIG_DATA, 4, true, 0), 0);
        let before = bus.log.len();
        // Another device: forwarded, data and all.
        p.access(&mut bus, CONFIG_ADDRESS, 4, false, 0x8000_1000);
        assert_eq!(p.access(&mut bus, CONFIG_DATA, 2, true, 0), 0x8086);
        p.access(&mut bus, CONFIG_DATA + 1, 1, false, 0x55);
        assert_eq!(
            bus.log[before..],
            [
                (CONFIG_ADDRESS, 4, false, 0x8000_1000),
                (CONFIG_DATA, 2, true, 0),
                (CONFIG_DATA + 1, 1, false, 0x55)
            ]
        );
        // Our function, but function 1 or bus 1: not ours.
        p.access(&mut bus, CONFIG_ADDRESS, 4, false, 0x8000_F900);
        assert_eq!(p.access(&mut bus, CONFIG_DATA, 2, true, 0), 0xFFFF);
        p.access(&mut bus, CONFIG_ADDRESS, 4, false, 0x8001_F800);
        assert_eq!(p.access(&mut bus, CONFIG_DATA, 2, true, 0), 0xFFFF);
    }

    #[test]
    fn msi_programming() {
        let mut bus = Bus::default();
        let mut p = ConfigPorts::new(0x1F);
        select(&mut p, &mut bus, 0x34);
        assert_eq!(p.access(&mut bus, CONFIG_DATA, 1, true, 0), 0x40);
        select(&mut p, &mut bus, 0x40);
        let cap = p.access(&mut bus, CONFIG_DATA, 4, true, 0);
        assert_eq!(cap & 0xFF, 5);
        assert_ne!(cap >> 16 & u32::from(MSI_CTL_64BIT), 0);
        select(&mut p, &mut bus, 0x44);
        p.access(&mut bus, CONFIG_DATA, 4, false, 0xFEE0_0000);
        select(&mut p, &mut bus, 0x4C);
        p.access(&mut bus, CONFIG_DATA, 2, false, 0x0041);
        assert_eq!(p.function.msi_target(), None, "not enabled yet");
        select(&mut p, &mut bus, 0x40);
        // Enable plus an attempt at multiple-message enable (ignored).
        p.access(&mut bus, CONFIG_DATA + 2, 2, false, 0x0071);
        assert_eq!(
            p.function.msi_target(),
            Some(MsiTarget {
                apic_id: 0,
                vector: 0x41
            })
        );
        assert_eq!(p.access(&mut bus, CONFIG_DATA + 2, 2, true, 0), 0x81);
        // Hostile messages are not sent: a vector below 0x20, SMI/NMI/INIT delivery, or
        // an address outside the APIC window.
        for (addr, data) in [
            (0xFEE0_0000, 0x0010),
            (0xFEE0_0000, 0x0541),
            (0xFED0_0000, 0x41),
        ] {
            p.function.write(0x44, 4, addr);
            p.function.write(0x4C, 2, data);
            assert_eq!(p.function.msi_target(), None, "{addr:#x} {data:#x}");
        }
    }
}
