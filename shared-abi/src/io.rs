//! Layouts of the shared pages of the PV device protocols (`xen/include/public/io/`).
//! The ring logic that uses them is in the `pv-drivers` crate.

pub mod blkif;
pub mod console;
pub mod netif;
pub mod xenbus;
pub mod xenstore;
