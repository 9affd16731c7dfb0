//! The microvisor binary: all code lives in the library; the PVH entry point is
//! `arch::x86_64::entry`.
#![cfg_attr(target_os = "none", no_std, no_main)]

// Link the library (its entry symbols and panic handler) into the image.
#[cfg(target_os = "none")]
use microvisor as _;

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("the microvisor runs on bare metal: build and boot it with `cargo xtask run`");
    std::process::exit(2);
}
