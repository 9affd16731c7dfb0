//! Links the guest with guest-rt's linker script (bare-metal builds only).
//!
//! guest-rt publishes the script's absolute path through `links = "guest_rt"` metadata
//! (`DEP_GUEST_RT_LINKER_SCRIPT`). Copy this file unchanged into a new guest crate.

fn main() {
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() != Ok("none") {
        return;
    }
    let Ok(script) = std::env::var("DEP_GUEST_RT_LINKER_SCRIPT") else {
        panic!("guest-rt did not publish its linker script (DEP_GUEST_RT_LINKER_SCRIPT)");
    };
    println!("cargo::rerun-if-changed={script}");
    println!("cargo::rustc-link-arg-bins=-T{script}");

    // The image is copied to its physical address without relocation processing, so it
    // must be a static, non-PIE executable; the target's default (static-PIE) fails to link.
    let flags = std::env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default();
    if !flags
        .split('\x1f')
        .any(|f| f.contains("relocation-model=static"))
    {
        println!(
            "cargo::warning=guests need CARGO_TARGET_X86_64_UNKNOWN_NONE_RUSTFLAGS=\"-C \
             relocation-model=static -C code-model=small\" (as `cargo xtask build` sets); \
             without it linking fails with R_X86_64_64/-fPIC errors"
        );
    }
}
