//! The PV network device protocol (`xen/include/public/io/netif.h`), the subset served here:
//! one queue, copy-mode receive, no scatter-gather offloads, no extra-info slots.
//!
//! ## Discovery (xenstore)
//!
//! The toolstack creates the back-end directory
//! `/local/domain/0/backend/vif/<frontend-domid>/<handle>/` and the front-end directory
//! `/local/domain/<frontend-domid>/device/vif/<handle>/`. The back-end directory holds:
//!
//! | key | value |
//! |-----|-------|
//! | `frontend` | the front-end directory's path |
//! | `frontend-id` | the front-end's domid, decimal |
//! | `handle` | the device handle, decimal |
//! | `mac` | the guest's MAC, `00:16:3e:xx:xx:xx` |
//! | `bridge` | the Dom0 bridge the vif is attached to |
//! | `ip` | optional, `10.0.0.2/24` style: an address hint for guests without DHCP |
//! | `feature-rx-copy` | `1`: received data is grant-copied into posted buffers (Linux netfront refuses to connect without it) |
//! | `feature-sg` | `0`: one slot per received packet; tx chains are still accepted |
//! | `feature-gso-tcpv4` | `0`: no segmentation offload, hence no extra-info slots |
//! | `state` | a [`crate::io::xenbus::XenbusState`] number |
//!
//! The front-end directory holds `backend` (the back-end directory's path), `backend-id`,
//! `handle`, `mac` and `state`. The front-end grants one page per ring and writes
//! `tx-ring-ref`, `rx-ring-ref` (grant references, decimal), `event-channel` (one unbound
//! port for the back-end's domain, serving both rings) and `request-rx-copy` = `1`, then
//! goes to Initialised; the back-end maps both rings, binds the port and goes to Connected.
//! The handshake is in [`crate::io::xenbus`].
//!
//! ## The rings
//!
//! Two one-page shared rings (`io/ring.h`: a 64-byte header, then entries):
//!
//! - **tx** ([`NET_TX_RING_SIZE`] entries of 12 bytes): the front-end sends packets. A packet
//!   is a chain of 1..=[`NETIF_MAX_TX_SLOTS`] consecutive [`NetifTxRequest`]s; every slot but
//!   the last carries [`NETTXF_MORE_DATA`]. The first slot's `size` is the whole packet's
//!   length; each later slot's `size` is its own fragment's length, and the first fragment is
//!   `first.size - sum(later sizes)` bytes. Every fragment lies inside its granted page
//!   (`offset + length <= 4096`). The back-end answers every slot with a
//!   [`NetifTxResponse`] carrying that slot's `id` and the packet's status
//!   ([`NETIF_RSP_OKAY`], [`NETIF_RSP_ERROR`] or [`NETIF_RSP_DROPPED`]), so the front-end can
//!   free each slot's buffer; [`NETIF_RSP_NULL`] answers only extra-info slots (Linux's
//!   netfront skips `NULL` responses when it frees tx buffers).
//!   Responses may come in any order.
//! - **rx** ([`NET_RX_RING_SIZE`] entries of 8 bytes): the front-end posts empty buffers
//!   ([`NetifRxRequest`]: an `id` and a page it grants writable). For each received packet
//!   the back-end grant-copies the data into the oldest posted buffer and answers with a
//!   [`NetifRxResponse`] **in the same ring slot as that buffer's request** (Linux netfront
//!   finds the buffer by slot), `status` = bytes received (> 0) or a negative
//!   `NETIF_RSP_*`, `offset` = where in the page the data start.
//!
//! One event channel serves both rings, in both directions.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// tx flag: the protocol checksum field is blank (checksum offload; not requested here).
pub const NETTXF_CSUM_BLANK: u16 = 1;
/// tx flag: the protocol checksum was validated by the sender.
pub const NETTXF_DATA_VALIDATED: u16 = 2;
/// tx flag: another slot of this packet follows.
pub const NETTXF_MORE_DATA: u16 = 4;
/// tx flag: an extra-info slot follows (GSO and similar; never negotiated here).
pub const NETTXF_EXTRA_INFO: u16 = 8;

/// rx flag: the protocol checksum was validated.
pub const NETRXF_DATA_VALIDATED: u16 = 1;
/// rx flag: the protocol checksum field is blank.
pub const NETRXF_CSUM_BLANK: u16 = 2;
/// rx flag: another slot of this packet follows (only with `feature-sg`).
pub const NETRXF_MORE_DATA: u16 = 4;
/// rx flag: an extra-info slot follows (never sent here).
pub const NETRXF_EXTRA_INFO: u16 = 8;

/// Status: the packet was dropped (no buffer, link down).
pub const NETIF_RSP_DROPPED: i16 = -2;
/// Status: the packet was refused (bad request, grant failure).
pub const NETIF_RSP_ERROR: i16 = -1;
/// Status: done.
pub const NETIF_RSP_OKAY: i16 = 0;
/// Status of every slot of a tx chain but the first.
pub const NETIF_RSP_NULL: i16 = 1;

/// Slots per tx packet a back-end must accept (Xen's `XEN_NETBK_LEGACY_SLOTS_MAX`).
pub const NETIF_MAX_TX_SLOTS: usize = 18;
/// The largest packet: a tx chain's first-slot `size` is a `u16`.
pub const NETIF_MAX_PACKET: usize = 65535;
/// The largest frame our ends send and receive: MTU 1500 plus the 14-byte Ethernet header.
pub const ETH_FRAME_MAX: usize = 1514;
/// Bytes of a granted page; a fragment or received buffer must lie inside one.
pub const NETIF_PAGE_SIZE: usize = 4096;

/// A tx slot (`struct netif_tx_request`).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct NetifTxRequest {
    /// Grant reference of the page holding this fragment.
    pub gref: u32,
    /// Byte offset of the fragment in the page.
    pub offset: u16,
    /// `NETTXF_*`.
    pub flags: u16,
    /// Echoed in this slot's response.
    pub id: u16,
    /// First slot: the packet's length; later slots: this fragment's length.
    pub size: u16,
}
const _: () = assert!(core::mem::size_of::<NetifTxRequest>() == 12);
const _: () = assert!(core::mem::offset_of!(NetifTxRequest, offset) == 4);
const _: () = assert!(core::mem::offset_of!(NetifTxRequest, flags) == 6);
const _: () = assert!(core::mem::offset_of!(NetifTxRequest, id) == 8);
const _: () = assert!(core::mem::offset_of!(NetifTxRequest, size) == 10);

/// A tx response (`struct netif_tx_response`).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct NetifTxResponse {
    /// The slot's `id`.
    pub id: u16,
    /// `NETIF_RSP_*`.
    pub status: i16,
}
const _: () = assert!(core::mem::size_of::<NetifTxResponse>() == 4);
const _: () = assert!(core::mem::offset_of!(NetifTxResponse, status) == 2);

/// An rx buffer posted by the front-end (`struct netif_rx_request`).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct NetifRxRequest {
    /// Echoed in the response.
    pub id: u16,
    /// Padding.
    pub pad: u16,
    /// Grant reference of the (writable) buffer page.
    pub gref: u32,
}
const _: () = assert!(core::mem::size_of::<NetifRxRequest>() == 8);
const _: () = assert!(core::mem::offset_of!(NetifRxRequest, gref) == 4);

/// A received buffer (`struct netif_rx_response`).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct NetifRxResponse {
    /// The buffer's `id`.
    pub id: u16,
    /// Byte offset of the data in the page.
    pub offset: u16,
    /// `NETRXF_*`.
    pub flags: u16,
    /// Bytes received (> 0), or a negative `NETIF_RSP_*`.
    pub status: i16,
}
const _: () = assert!(core::mem::size_of::<NetifRxResponse>() == 8);
const _: () = assert!(core::mem::offset_of!(NetifRxResponse, offset) == 2);
const _: () = assert!(core::mem::offset_of!(NetifRxResponse, flags) == 4);
const _: () = assert!(core::mem::offset_of!(NetifRxResponse, status) == 6);

/// Entries of a one-page tx ring: `(4096 - 64) / 12` = 336, rounded down to a power of two.
pub const NET_TX_RING_SIZE: u32 = 256;
const _: () = assert!((4096 - 64) / 12 >= NET_TX_RING_SIZE as usize);
const _: () = assert!((4096 - 64) / 12 < 2 * NET_TX_RING_SIZE as usize);

/// Entries of a one-page rx ring: `(4096 - 64) / 8` = 504, rounded down to a power of two.
pub const NET_RX_RING_SIZE: u32 = 256;
const _: () = assert!((4096 - 64) / 8 >= NET_RX_RING_SIZE as usize);
const _: () = assert!((4096 - 64) / 8 < 2 * NET_RX_RING_SIZE as usize);
