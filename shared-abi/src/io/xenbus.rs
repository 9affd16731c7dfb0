//! xenbus device states (`xen/include/public/io/xenbus.h`).
//!
//! Each end of a split device keeps its state in its own xenstore directory as a decimal
//! string in the `state` node: the back-end in
//! `/local/domain/<backend>/backend/<type>/<frontend-domid>/<devid>/state`, the front-end
//! in `/local/domain/<frontend>/device/<type>/<devid>/state`. Each end watches the other's.
//!
//! The connection handshake (block devices; see [`crate::io::blkif`]):
//!
//! 1. The toolstack creates both directories, the back-end's in [`XenbusState::Initialising`]
//!    and the front-end's in [`XenbusState::Initialising`].
//! 2. The back-end publishes its features and goes to [`XenbusState::InitWait`].
//! 3. The front-end grants its ring, allocates an unbound event channel for the back-end,
//!    writes `ring-ref` and `event-channel`, and goes to [`XenbusState::Initialised`].
//! 4. The back-end maps the ring, binds the channel and goes to [`XenbusState::Connected`].
//! 5. The front-end goes to [`XenbusState::Connected`].
//!
//! Either end moves to [`XenbusState::Closing`] then [`XenbusState::Closed`] to disconnect.

/// A xenbus state (`enum xenbus_state`), written as its decimal number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u32)]
pub enum XenbusState {
    /// Unknown: the node is absent or unreadable (Xen's `XenbusStateUnknown`).
    Unknown = 0,
    /// The device is being set up.
    Initialising = 1,
    /// The back-end waits for the front-end's ring details (back-ends only).
    InitWait = 2,
    /// The front-end has published its ring details.
    Initialised = 3,
    /// The ring is in use.
    Connected = 4,
    /// The device is being torn down.
    Closing = 5,
    /// The device is torn down.
    Closed = 6,
    /// The back-end is being reconfigured (not used here).
    Reconfiguring = 7,
    /// The back-end was reconfigured (not used here).
    Reconfigured = 8,
}

impl XenbusState {
    /// The value written to a `state` node.
    #[must_use]
    pub const fn as_u32(self) -> u32 {
        self as u32
    }

    /// Decodes a state number; `None` for numbers outside 0..=8.
    #[must_use]
    pub const fn from_u32(v: u32) -> Option<Self> {
        Some(match v {
            0 => Self::Unknown,
            1 => Self::Initialising,
            2 => Self::InitWait,
            3 => Self::Initialised,
            4 => Self::Connected,
            5 => Self::Closing,
            6 => Self::Closed,
            7 => Self::Reconfiguring,
            8 => Self::Reconfigured,
            _ => return None,
        })
    }

    /// Parses the content of a `state` node: ASCII decimal, optionally NUL-terminated,
    /// nothing else. `None` for anything else, including a number outside 0..=8.
    #[must_use]
    pub fn parse(raw: &[u8]) -> Option<Self> {
        let digits = raw.strip_suffix(&[0]).unwrap_or(raw);
        if digits.is_empty() || digits.len() > 2 || !digits.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let v = digits
            .iter()
            .fold(0u32, |acc, d| acc * 10 + u32::from(d - b'0'));
        Self::from_u32(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_match_xenbus_h() {
        assert_eq!(XenbusState::Initialising.as_u32(), 1);
        assert_eq!(XenbusState::InitWait.as_u32(), 2);
        assert_eq!(XenbusState::Initialised.as_u32(), 3);
        assert_eq!(XenbusState::Connected.as_u32(), 4);
        assert_eq!(XenbusState::Closing.as_u32(), 5);
        assert_eq!(XenbusState::Closed.as_u32(), 6);
        for v in 0..=8 {
            assert_eq!(XenbusState::from_u32(v).map(XenbusState::as_u32), Some(v));
        }
        assert_eq!(XenbusState::from_u32(9), None);
    }

    #[test]
    fn state_nodes_parse_strictly() {
        assert_eq!(XenbusState::parse(b"4"), Some(XenbusState::Connected));
        assert_eq!(XenbusState::parse(b"3\0"), Some(XenbusState::Initialised));
        assert_eq!(XenbusState::parse(b"04"), Some(XenbusState::Connected));
        for bad in [&b""[..], b"9", b"-1", b" 4", b"4 ", b"x", b"123", b"\0"] {
            assert_eq!(XenbusState::parse(bad), None, "{bad:?}");
        }
    }
}
