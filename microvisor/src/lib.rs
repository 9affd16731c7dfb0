//! The microvisor: a Xen-style microhypervisor for x86_64 (AMD SVM + NPT).
//!
//! Global assumptions of the bare-metal build: the microvisor runs at CPL 0 in one address
//! space that identity-maps the low 4 GiB of machine memory; it uses no FPU/SSE state (the
//! target is soft-float), so guest floating-point state stays in the registers across exits;
//! code between `CLGI` and `STGI` is only the world-switch stub in `arch::x86_64::svm`.
//!
//! Everything outside `arch/` is portable and tested on the host with `cargo test`.
#![cfg_attr(target_os = "none", no_std)]

#[cfg(not(target_os = "none"))]
extern crate std;

pub mod acpi;
pub mod bundle;
pub mod control;
pub mod dom0;
pub mod dom0_pci;
pub mod domain;
pub mod elf;
pub mod evtchn;
pub mod exit;
pub mod grant;
pub mod guest_walk;
pub mod hypercall;
pub mod lifecycle;
pub mod mm;
pub mod policy;
pub mod runstate;
pub mod vcpu;
pub mod vmcb;
pub mod window;

pub mod arch;
