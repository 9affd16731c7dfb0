//! Build-script support for guest crates (host only; use guest-rt as a build-dependency).
//!
//! A guest's whole `build.rs` is `fn main() { guest_rt::build::link_guest(); }`.

/// Links the guest binary with guest-rt's linker script (bare-metal builds only) and warns
/// when the bare-metal RUSTFLAGS are missing.
///
/// guest-rt publishes the script's absolute path through `links = "guest_rt"` metadata,
/// which cargo hands to the guest's build script as `DEP_GUEST_RT_LINKER_SCRIPT`.
pub fn link_guest() {
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() != Ok("none") {
        return;
    }
    let Ok(script) = std::env::var("DEP_GUEST_RT_LINKER_SCRIPT") else {
        panic!("guest-rt did not publish its linker script (DEP_GUEST_RT_LINKER_SCRIPT)");
    };
    std::println!("cargo::rerun-if-changed={script}");
    std::println!("cargo::rustc-link-arg-bins=-T{script}");

    // The image is copied to its physical address without relocation processing, so it
    // must be a static, non-PIE executable; the target's default (static-PIE) fails to link.
    let flags = std::env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default();
    if !flags
        .split('\x1f')
        .any(|f| f.contains("relocation-model=static"))
    {
        std::println!(
            "cargo::warning=guests need CARGO_TARGET_X86_64_UNKNOWN_NONE_RUSTFLAGS=\"-C \
             relocation-model=static -C code-model=small\" (as `cargo xtask build` sets); \
             without it linking fails with R_X86_64_64/-fPIC errors"
        );
    }
}
