//! xenstore, served by dom0d: the tree, its permissions, watches and transactions
//! ([`store`]), path rules ([`path`]), and the wire protocol spoken over each DomU's store
//! page (`pv_drivers::xenstore` moves the bytes).
//!
//! What a DomU may do: read and write below its home `/local/domain/<id>` (it owns that
//! subtree, except the `name` and `domid` nodes the toolstack writes for it), read nodes
//! whose permissions grant it access (a back-end's public nodes), watch paths, and use
//! transactions. Domain 0 may do everything. Hostile guests are bounded: nodes per domain,
//! bytes per value, watches and transactions per connection are capped, and a request
//! that breaks a rule gets the errno name Xen would send.
#![forbid(unsafe_code)]

pub mod path;
pub mod service;
pub mod store;

pub use store::{Access, ConnId, Perms, Store};

/// A xenstore error, sent to the client as its errno name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XsErr {
    /// Malformed request or path.
    Inval,
    /// Permission denied.
    Acces,
    /// The node exists.
    Exist,
    /// No such node, transaction or watch.
    NoEnt,
    /// A quota is exhausted.
    NoSpc,
    /// The transaction conflicted; retry it.
    Again,
    /// Unsupported operation.
    NoSys,
    /// The value or reply is too large.
    TooBig,
}

impl XsErr {
    /// The errno name on the wire.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Inval => "EINVAL",
            Self::Acces => "EACCES",
            Self::Exist => "EEXIST",
            Self::NoEnt => "ENOENT",
            Self::NoSpc => "ENOSPC",
            Self::Again => "EAGAIN",
            Self::NoSys => "ENOSYS",
            Self::TooBig => "E2BIG",
        }
    }
}

impl std::fmt::Display for XsErr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::error::Error for XsErr {}
