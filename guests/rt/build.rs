//! Publishes the absolute path of `link.ld` to the build scripts of guests that depend on
//! this crate (`DEP_GUEST_RT_LINKER_SCRIPT`, via `links = "guest_rt"`). Each guest's own
//! build script passes it to the linker with `cargo::rustc-link-arg-bins=-T<path>`.

use std::path::PathBuf;

fn main() {
    let Some(dir) = std::env::var_os("CARGO_MANIFEST_DIR") else {
        panic!("CARGO_MANIFEST_DIR is not set");
    };
    let script = PathBuf::from(dir).join("link.ld");
    println!("cargo::rerun-if-changed=link.ld");
    println!("cargo::metadata=linker_script={}", script.display());
}
