//! The xenstore wire protocol and ring page (`xen/include/public/io/xs_wire.h`,
//! `docs/misc/xenstore.txt`).
//!
//! A guest talks to the store through one page (its frame in `HVM_PARAM_STORE_PFN`,
//! notified through `HVM_PARAM_STORE_EVTCHN`, see [`crate::hvm`]) holding two byte streams:
//! requests to the store and responses plus watch events from it. Each message is a
//! [`MsgHeader`] followed by `len` payload bytes, usually NUL-terminated strings; a
//! message may wrap around the ring and may be split across notifications.
//!
//! | offset | field |
//! |--------|-------|
//! | 0    | `req[1024]` (guest to store) |
//! | 1024 | `rsp[1024]` (store to guest) |
//! | 2048 | `req_cons`, 2052 `req_prod`, 2056 `rsp_cons`, 2060 `rsp_prod` (`u32`, free-running) |
//! | 2064 | `server_features`, 2068 `connection`, 2072 `error` (`u32`) |
//!
//! Paths: absolute (`/local/domain/3/name`) or relative to the domain's home
//! `/local/domain/<domid>`. Errors travel as an [`XS_ERROR`] message whose payload is the
//! errno *name* (`"ENOENT\0"`).

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Offset of the request ring.
pub const REQ: usize = 0;
/// Offset of the response ring.
pub const RSP: usize = 1024;
/// Size of each ring.
pub const RING_SIZE: u32 = 1024;
/// Offset of `req_cons`.
pub const REQ_CONS: usize = 2048;
/// Offset of `req_prod`.
pub const REQ_PROD: usize = 2052;
/// Offset of `rsp_cons`.
pub const RSP_CONS: usize = 2056;
/// Offset of `rsp_prod`.
pub const RSP_PROD: usize = 2060;
/// Offset of `server_features`.
pub const SERVER_FEATURES: usize = 2064;
/// Offset of `connection`.
pub const CONNECTION: usize = 2068;
/// Offset of `error`.
pub const ERROR: usize = 2072;

/// Largest payload of one message.
pub const PAYLOAD_MAX: u32 = 4096;
/// Longest absolute path.
pub const ABS_PATH_MAX: usize = 3072;
/// Longest relative path.
pub const REL_PATH_MAX: usize = 2048;

/// List the children of a node: payload `path\0`; reply: child names, each `\0`-terminated.
pub const XS_DIRECTORY: u32 = 1;
/// Read a node: `path\0`; reply: the value (not terminated).
pub const XS_READ: u32 = 2;
/// Read permissions: `path\0`; reply: permission strings, each `\0`-terminated.
pub const XS_GET_PERMS: u32 = 3;
/// Watch a subtree: `path\0token\0`; reply `OK\0`, then an [`XS_WATCH_EVENT`] at once and
/// on every change at or below the path.
pub const XS_WATCH: u32 = 4;
/// Remove a watch: `path\0token\0`.
pub const XS_UNWATCH: u32 = 5;
/// Start a transaction: `\0`; reply: the transaction id as decimal text.
pub const XS_TRANSACTION_START: u32 = 6;
/// End a transaction (header `tx_id`): `T\0` commits, `F\0` aborts; a conflicting commit
/// fails with `EAGAIN`.
pub const XS_TRANSACTION_END: u32 = 7;
/// Ask for the domain's home path: `domid\0`; reply: `/local/domain/<domid>\0`.
pub const XS_GET_DOMAIN_PATH: u32 = 10;
/// Write a node (creating it and missing parents): `path\0value` (value not terminated).
pub const XS_WRITE: u32 = 11;
/// Create a node with an empty value if it does not exist: `path\0`.
pub const XS_MKDIR: u32 = 12;
/// Remove a node and its subtree: `path\0`.
pub const XS_RM: u32 = 13;
/// Set permissions: `path\0perm\0perm\0...` (see `docs/misc/xenstore.txt`: a letter `n`,
/// `r`, `w` or `b` then a domid; the first names the owner and everyone's default).
pub const XS_SET_PERMS: u32 = 14;
/// Store to client only: `path\0token\0`.
pub const XS_WATCH_EVENT: u32 = 15;
/// Store to client only: the errno name, `\0`-terminated.
pub const XS_ERROR: u32 = 16;
/// Remove all of the connection's watches.
pub const XS_RESET_WATCHES: u32 = 21;

/// The header of every message (`struct xsd_sockmsg`), little-endian.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct MsgHeader {
    /// `XS_*`.
    pub msg_type: u32,
    /// Chosen by the client, echoed in the reply.
    pub req_id: u32,
    /// Transaction id, 0 for none.
    pub tx_id: u32,
    /// Payload bytes that follow, at most [`PAYLOAD_MAX`].
    pub len: u32,
}
const _: () = assert!(core::mem::size_of::<MsgHeader>() == 16);
