//! x86 exception vectors 0–31: names and which ones push an error code.

/// Exception vector numbers used by guests and tests.
pub mod vector {
    /// Divide error.
    pub const DE: u8 = 0;
    /// Breakpoint (`int3`).
    pub const BP: u8 = 3;
    /// Invalid opcode (`ud2`, or an instruction the CPU or hypervisor refuses).
    pub const UD: u8 = 6;
    /// Double fault.
    pub const DF: u8 = 8;
    /// General protection (e.g. a refused `rdmsr`/`wrmsr`).
    pub const GP: u8 = 13;
    /// Page fault; CR2 holds the linear address.
    pub const PF: u8 = 14;
}

/// Number of exception vectors the runtime's IDT covers.
pub const EXCEPTION_VECTORS: usize = 32;

/// Bit `v` is set when the CPU pushes an error code for vector `v`:
/// #DF 8, #TS 10, #NP 11, #SS 12, #GP 13, #PF 14, #AC 17, #CP 21, #VC 29, #SX 30.
pub const ERROR_CODE_VECTORS: u32 = (1 << 8)
    | (1 << 10)
    | (1 << 11)
    | (1 << 12)
    | (1 << 13)
    | (1 << 14)
    | (1 << 17)
    | (1 << 21)
    | (1 << 29)
    | (1 << 30);

/// Whether the CPU pushes an error code for `vector`.
pub fn has_error_code(vector: u8) -> bool {
    vector < 32 && ERROR_CODE_VECTORS & (1 << vector) != 0
}

/// The mnemonic of exception `vector`, e.g. `"#GP"`.
pub fn mnemonic(vector: u8) -> &'static str {
    const NAMES: [&str; EXCEPTION_VECTORS] = [
        "#DE", "#DB", "NMI", "#BP", "#OF", "#BR", "#UD", "#NM", "#DF", "CSO", "#TS", "#NP", "#SS",
        "#GP", "#PF", "#15", "#MF", "#AC", "#MC", "#XM", "#VE", "#CP", "#22", "#23", "#24", "#25",
        "#26", "#27", "#HV", "#VC", "#SX", "#31",
    ];
    NAMES.get(usize::from(vector)).copied().unwrap_or("#??")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_code_vectors() {
        let with: [u8; 10] = [8, 10, 11, 12, 13, 14, 17, 21, 29, 30];
        for v in 0..=255u8 {
            assert_eq!(has_error_code(v), with.contains(&v), "vector {v}");
        }
        assert_eq!(ERROR_CODE_VECTORS, 0x6022_7d00);
    }

    #[test]
    fn names() {
        assert_eq!(mnemonic(vector::UD), "#UD");
        assert_eq!(mnemonic(vector::GP), "#GP");
        assert_eq!(mnemonic(vector::PF), "#PF");
        assert_eq!(mnemonic(31), "#31");
        assert_eq!(mnemonic(32), "#??");
    }
}
