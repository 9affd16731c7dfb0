//! Kernel command line parsing: whitespace-separated words, `key=value` or bare `key`.
//!
//! There is no quoting. When a key appears more than once, the last occurrence wins, as
//! with Linux kernel parameters.

/// The value of the last `key=value` word in `cmdline`, or `""` for a bare `key` word.
///
/// Returns `None` when no word has that key. `key` must not be empty or contain `=`.
///
/// ```
/// use guest_rt::cmdline::value;
/// assert_eq!(value("console=xen attack=triple", "attack"), Some("triple"));
/// assert_eq!(value("quiet", "quiet"), Some(""));
/// assert_eq!(value("attacker=x", "attack"), None);
/// ```
pub fn value<'a>(cmdline: &'a str, key: &str) -> Option<&'a str> {
    if key.is_empty() || key.contains('=') {
        return None;
    }
    words(cmdline)
        .filter_map(|word| match word.split_once('=') {
            Some((k, v)) if k == key => Some(v),
            None if word == key => Some(""),
            _ => None,
        })
        .last()
}

/// The words of `cmdline`, split on ASCII whitespace.
pub fn words(cmdline: &str) -> impl Iterator<Item = &str> {
    cmdline.split_ascii_whitespace()
}

/// Length of a NUL-terminated string held in `bytes`: the index of the first NUL, and
/// whether one was found (`false` means the string was cut at `bytes.len()`).
pub fn nul_terminated_len(bytes: &[u8]) -> (usize, bool) {
    match bytes.iter().position(|&b| b == 0) {
        Some(n) => (n, true),
        None => (bytes.len(), false),
    }
}

/// The longest prefix of `bytes` that is valid UTF-8.
pub fn utf8_prefix(bytes: &[u8]) -> &str {
    match core::str::from_utf8(bytes) {
        Ok(s) => s,
        // `valid_up_to` is a char boundary of valid UTF-8, so this cannot fail.
        Err(e) => core::str::from_utf8(&bytes[..e.valid_up_to()]).unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_key_value_words() {
        assert_eq!(value("attack=npf", "attack"), Some("npf"));
        assert_eq!(
            value("  a=1\tattack=triple \n b ", "attack"),
            Some("triple")
        );
        assert_eq!(value("a=1 b=2", "b"), Some("2"));
        assert_eq!(value("a=1 b=2", "c"), None);
        assert_eq!(value("", "a"), None);
    }

    #[test]
    fn last_occurrence_wins() {
        assert_eq!(value("attack=npf attack=triple", "attack"), Some("triple"));
        assert_eq!(value("attack=npf attack", "attack"), Some(""));
    }

    #[test]
    fn bare_keys_and_empty_values() {
        assert_eq!(value("debug", "debug"), Some(""));
        assert_eq!(value("debug=", "debug"), Some(""));
        assert_eq!(value("k=v=w", "k"), Some("v=w"));
    }

    #[test]
    fn prefixes_do_not_match() {
        assert_eq!(value("attacker=x", "attack"), None);
        assert_eq!(value("xattack=x", "attack"), None);
        assert_eq!(value("attack_mode", "attack"), None);
    }

    #[test]
    fn rejects_bad_keys() {
        assert_eq!(value("=x", ""), None);
        assert_eq!(value("a=b=c", "a=b"), None);
    }

    #[test]
    fn nul_termination() {
        assert_eq!(nul_terminated_len(b"abc\0def"), (3, true));
        assert_eq!(nul_terminated_len(b"\0"), (0, true));
        assert_eq!(nul_terminated_len(b"abc"), (3, false));
        assert_eq!(nul_terminated_len(b""), (0, false));
    }

    #[test]
    fn utf8_prefix_cuts_at_invalid_bytes() {
        assert_eq!(utf8_prefix(b"hello"), "hello");
        assert_eq!(utf8_prefix(b"ab\xffcd"), "ab");
        // A multi-byte character cut in the middle is dropped entirely.
        assert_eq!(utf8_prefix("aé".as_bytes().split_at(2).0), "a");
        assert_eq!(utf8_prefix(b""), "");
    }
}
