//! The machine boundary: everything that touches hardware lives under here.

#[cfg(all(target_os = "none", target_arch = "x86_64"))]
pub mod x86_64;

#[cfg(all(target_os = "none", not(target_arch = "x86_64")))]
compile_error!("the microvisor supports only x86_64");
