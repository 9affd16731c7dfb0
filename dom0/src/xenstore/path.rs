//! xenstore paths: validation and resolution of relative paths.
#![forbid(unsafe_code)]

use shared_abi::io::xenstore::{ABS_PATH_MAX, REL_PATH_MAX};

use super::XsErr;

/// The home of domain `domid`: `/local/domain/<domid>`.
#[must_use]
pub fn home(domid: u32) -> String {
    format!("/local/domain/{domid}")
}

/// Whether `c` may appear in a path component (`docs/misc/xenstore.txt`).
fn valid_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'-' | b'/' | b'_' | b'@')
}

/// Resolves `raw` (absolute, or relative to `domid`'s home) into a checked absolute path.
/// Special watch paths (`@releaseDomain`, `@introduceDomain`) are returned unchanged.
///
/// # Errors
/// `EINVAL` for an empty path, a bad character, `//`, a trailing `/` or a path too long.
pub fn resolve(domid: u32, raw: &[u8]) -> Result<String, XsErr> {
    let text = std::str::from_utf8(raw).map_err(|_| XsErr::Inval)?;
    if text.is_empty() || !text.bytes().all(valid_char) {
        return Err(XsErr::Inval);
    }
    if text.starts_with('@') {
        return match text {
            "@releaseDomain" | "@introduceDomain" => Ok(text.to_owned()),
            _ => Err(XsErr::Inval),
        };
    }
    let abs = if text.starts_with('/') {
        if text.len() > ABS_PATH_MAX {
            return Err(XsErr::Inval);
        }
        text.to_owned()
    } else {
        if text.len() > REL_PATH_MAX {
            return Err(XsErr::Inval);
        }
        format!("{}/{text}", home(domid))
    };
    if abs.contains("//") || (abs.len() > 1 && abs.ends_with('/')) || abs.contains('@') {
        return Err(XsErr::Inval);
    }
    Ok(abs)
}

/// The parent of an absolute path (`/` has none).
#[must_use]
pub fn parent(path: &str) -> Option<&str> {
    if path == "/" {
        return None;
    }
    match path.rfind('/') {
        Some(0) => Some("/"),
        Some(i) => Some(&path[..i]),
        None => None,
    }
}

/// Whether `path` is `base` or lies below it.
#[must_use]
pub fn is_at_or_below(path: &str, base: &str) -> bool {
    base == "/"
        || path == base
        || (path.len() > base.len()
            && path.starts_with(base)
            && path.as_bytes()[base.len()] == b'/')
}

/// `path` as the client that registered a relative watch under `domid` sees it.
#[must_use]
pub fn relative_to_home(domid: u32, path: &str) -> String {
    let h = home(domid);
    match path.strip_prefix(&h) {
        Some(rest) if rest.starts_with('/') => rest[1..].to_owned(),
        _ => path.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_and_rejects() {
        assert_eq!(resolve(3, b"name").unwrap(), "/local/domain/3/name");
        assert_eq!(resolve(3, b"/vm/x").unwrap(), "/vm/x");
        assert_eq!(resolve(3, b"/").unwrap(), "/");
        for bad in [
            &b""[..],
            b"a//b",
            b"a/",
            b"/a b",
            b"a\0",
            b"@other",
            b"/a@b",
            &[0xff],
        ] {
            assert_eq!(resolve(3, bad), Err(XsErr::Inval), "{bad:?}");
        }
        assert!(resolve(3, "a".repeat(REL_PATH_MAX + 1).as_bytes()).is_err());
        assert_eq!(parent("/a/b"), Some("/a"));
        assert_eq!(parent("/a"), Some("/"));
        assert_eq!(parent("/"), None);
        assert!(is_at_or_below("/a/b", "/a"));
        assert!(!is_at_or_below("/ab", "/a"));
        assert_eq!(
            relative_to_home(3, "/local/domain/3/control/shutdown"),
            "control/shutdown"
        );
        assert_eq!(
            relative_to_home(3, "/local/domain/30/x"),
            "/local/domain/30/x"
        );
    }
}
