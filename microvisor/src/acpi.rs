//! Finding the CPUs: the local APIC ids in the ACPI MADT.
//!
//! Portable: physical memory is read through a closure; every table is length- and
//! checksum-checked before use.

/// Why the CPUs could not be enumerated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AcpiError {
    /// No valid RSDP at the given address.
    BadRsdp,
    /// A table failed its length or checksum check.
    BadTable,
    /// No MADT.
    NoMadt,
}

fn checksum_ok(bytes: &[u8]) -> bool {
    bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b)) == 0
}

fn u32_at(b: &[u8], i: usize) -> u32 {
    b.get(i..i + 4)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u32::from_le_bytes)
}

fn u64_at(b: &[u8], i: usize) -> u64 {
    b.get(i..i + 8)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u64::from_le_bytes)
}

/// Largest table we read.
const MAX_TABLE: usize = 4096;

/// Reads the table at `pa` into `buf`, returning its length if valid.
fn read_table(
    read: &impl Fn(u64, &mut [u8]),
    pa: u64,
    buf: &mut [u8; MAX_TABLE],
) -> Result<usize, AcpiError> {
    read(pa, &mut buf[..36]);
    let len = u32_at(buf, 4) as usize;
    if !(36..=MAX_TABLE).contains(&len) {
        return Err(AcpiError::BadTable);
    }
    read(pa, &mut buf[..len]);
    if !checksum_ok(&buf[..len]) {
        return Err(AcpiError::BadTable);
    }
    Ok(len)
}

/// Writes the APIC ids of enabled processors into `out`, returning how many were found
/// (at most `out.len()`).
pub fn local_apic_ids(
    read: impl Fn(u64, &mut [u8]),
    rsdp_pa: u64,
    out: &mut [u32],
) -> Result<usize, AcpiError> {
    let mut rsdp = [0u8; 36];
    read(rsdp_pa, &mut rsdp);
    if &rsdp[..8] != b"RSD PTR " || !checksum_ok(&rsdp[..20]) {
        return Err(AcpiError::BadRsdp);
    }
    let (root, entry_size) = if rsdp[15] >= 2 && u64_at(&rsdp, 24) != 0 {
        (u64_at(&rsdp, 24), 8)
    } else {
        (u64::from(u32_at(&rsdp, 16)), 4)
    };
    let mut buf = [0u8; MAX_TABLE];
    let root_len = read_table(&read, root, &mut buf)?;
    let entries = (root_len - 36) / entry_size;
    let mut madt_pa = None;
    for i in 0..entries {
        let at = 36 + i * entry_size;
        let pa = if entry_size == 8 {
            u64_at(&buf, at)
        } else {
            u64::from(u32_at(&buf, at))
        };
        let mut sig = [0u8; 4];
        read(pa, &mut sig);
        if &sig == b"APIC" {
            madt_pa = Some(pa);
            break;
        }
    }
    let madt_len = read_table(&read, madt_pa.ok_or(AcpiError::NoMadt)?, &mut buf)?;
    let mut found = 0;
    let mut at = 44;
    while at + 2 <= madt_len {
        let (kind, len) = (buf[at], usize::from(buf[at + 1]));
        if len < 2 || at + len > madt_len {
            return Err(AcpiError::BadTable);
        }
        // Type 0: processor local APIC {uid u8, apic id u8, flags u32}; bit 0 = enabled.
        if kind == 0 && len >= 8 && u32_at(&buf, at + 4) & 1 != 0 && found < out.len() {
            out[found] = u32::from(buf[at + 3]);
            found += 1;
        }
        at += len;
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn fix_checksum(t: &mut [u8], at: usize) {
        t[at] = 0;
        let sum = t.iter().fold(0u8, |a, b| a.wrapping_add(*b));
        t[at] = sum.wrapping_neg();
    }

    fn machine(cpus: &[(u8, bool)]) -> BTreeMap<u64, std::vec::Vec<u8>> {
        let mut rsdp = std::vec![0u8; 20];
        rsdp[..8].copy_from_slice(b"RSD PTR ");
        rsdp[16..20].copy_from_slice(&0x1000u32.to_le_bytes());
        fix_checksum(&mut rsdp, 8);
        let mut rsdt = std::vec![0u8; 40];
        rsdt[..4].copy_from_slice(b"RSDT");
        rsdt[4..8].copy_from_slice(&40u32.to_le_bytes());
        rsdt[36..40].copy_from_slice(&0x2000u32.to_le_bytes());
        fix_checksum(&mut rsdt, 9);
        let mut madt = std::vec![0u8; 44];
        madt[..4].copy_from_slice(b"APIC");
        for (id, enabled) in cpus {
            madt.extend_from_slice(&[0, 8, *id, *id, u8::from(*enabled), 0, 0, 0]);
        }
        madt.extend_from_slice(&[1, 12, 0, 0, 0, 0, 0xC0, 0xFE, 0, 0, 0, 0]); // an IOAPIC
        let len = madt.len() as u32;
        madt[4..8].copy_from_slice(&len.to_le_bytes());
        fix_checksum(&mut madt, 9);
        BTreeMap::from([(0xE0000, rsdp), (0x1000, rsdt), (0x2000, madt)])
    }

    fn reader(m: &BTreeMap<u64, std::vec::Vec<u8>>) -> impl Fn(u64, &mut [u8]) + '_ {
        move |pa, buf| {
            buf.fill(0);
            if let Some(t) = m.get(&pa) {
                let n = buf.len().min(t.len());
                buf[..n].copy_from_slice(&t[..n]);
            }
        }
    }

    #[test]
    fn finds_enabled_cpus() {
        let m = machine(&[(0, true), (1, true), (2, false), (3, true)]);
        let mut ids = [0u32; 8];
        assert_eq!(local_apic_ids(reader(&m), 0xE0000, &mut ids), Ok(3));
        assert_eq!(&ids[..3], &[0, 1, 3]);
        let mut two = [0u32; 2];
        assert_eq!(local_apic_ids(reader(&m), 0xE0000, &mut two), Ok(2));
    }

    #[test]
    fn rejects_corrupt_tables() {
        let mut m = machine(&[(0, true)]);
        m.get_mut(&0x2000).unwrap()[50] ^= 1;
        let mut ids = [0u32; 8];
        assert_eq!(
            local_apic_ids(reader(&m), 0xE0000, &mut ids),
            Err(AcpiError::BadTable)
        );
        assert_eq!(
            local_apic_ids(reader(&m), 0x1234, &mut ids),
            Err(AcpiError::BadRsdp)
        );
    }
}
