//! The microvisor: a Xen-style microhypervisor for x86_64 (AMD SVM + NPT).
#![cfg_attr(target_os = "none", no_std)]

#[cfg(not(target_os = "none"))]
extern crate std;

pub mod bundle;
