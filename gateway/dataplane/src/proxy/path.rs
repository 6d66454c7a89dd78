//! One meaning per request path.
//!
//! A backend that normalizes `/x/../api` to `/api` must not be reached
//! through the route (and policies) of `/`: so the path is normalized
//! (RFC 3986 §6.2.2) *before* it is routed, and routing, plugins and the
//! upstream all see the same normalized path. This is the defence Envoy
//! added after CVE-2019-9901 (`normalize_path`, `merge_slashes`,
//! `path_with_escaped_slashes_action`) and what nginx does before matching
//! locations.
//!
//! Steps, in order: percent-escapes are checked and those of unreserved
//! characters decoded (the rest uppercased); encoded `/` and `\` follow
//! [`EscapedSlashes`]; repeated slashes are merged (optional); dot segments
//! are removed. The query is never touched.

use serde::{Deserialize, Serialize};

/// What to do with `%2F` and `%5C` (an encoded `/` or `\`) in a path.
///
/// Some backends decode them and then see a different path than the one
/// routed, so the safe default is to refuse them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase", try_from = "String")]
pub enum EscapedSlashes {
    /// 400 Bad Request.
    #[default]
    Reject,
    /// Forwarded as they are (uppercased); routing sees them as data.
    Keep,
    /// Decoded to `/` and `\` before routing; they then split segments.
    Decode,
}

impl TryFrom<String> for EscapedSlashes {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        match s.as_str() {
            "reject" => Ok(EscapedSlashes::Reject),
            "keep" => Ok(EscapedSlashes::Keep),
            "decode" => Ok(EscapedSlashes::Decode),
            other => Err(format!(
                "{other:?} is not an escaped-slash policy: use \"reject\", \"keep\" or \"decode\""
            )),
        }
    }
}

/// How paths are normalized: the part of `[proxy.paths]` the normalizer needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathRules {
    pub merge_slashes: bool,
    pub escaped_slashes: EscapedSlashes,
}

/// Why a path cannot be given one meaning: answered with 400.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// `%` not followed by two hex digits.
    InvalidEscape,
    /// `%00`: a NUL truncates the path in C backends.
    Nul,
    /// `%2F` or `%5C` while they are refused.
    EscapedSlash,
    /// More `..` segments than there are segments to remove.
    AboveRoot,
    /// The normal form is not a valid URI path (not expected: only
    /// unreserved characters and slashes are ever decoded).
    NotUri,
}

impl PathError {
    /// Short reason, for the 400 body, logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            PathError::InvalidEscape => "invalid percent-escape in path",
            PathError::Nul => "NUL (%00) in path",
            PathError::EscapedSlash => "encoded slash (%2F or %5C) in path",
            PathError::AboveRoot => "path climbs above the root with '..'",
            PathError::NotUri => "path is not a valid URI path",
        }
    }
}

/// The normalized form of `path` (a request path without its query), or
/// `None` when it is already normal: the common case costs one scan and no
/// allocation. Paths that are not origin-form (`*`, empty) are left alone.
pub fn normalize(path: &str, rules: PathRules) -> Result<Option<String>, PathError> {
    if !path.starts_with('/') || !needs_work(path.as_bytes(), rules.merge_slashes) {
        return Ok(None);
    }
    let decoded = decode_escapes(path, rules.escaped_slashes)?;
    let normal = remove_dot_segments(&decoded, rules.merge_slashes)?;
    Ok((normal != path).then_some(normal))
}

/// Whether the slow path could change anything: a `%`, a `.` starting a
/// segment, or (when merging) an empty segment.
fn needs_work(path: &[u8], merge_slashes: bool) -> bool {
    let mut prev = 0u8;
    for &b in path {
        match b {
            b'%' => return true,
            b'.' if prev == b'/' => return true,
            b'/' if merge_slashes && prev == b'/' => return true,
            _ => {}
        }
        prev = b;
    }
    false
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// RFC 3986 §6.2.2.1 and §6.2.2.2: decode escapes of unreserved
/// characters, uppercase the others.
fn decode_escapes(path: &str, slashes: EscapedSlashes) -> Result<String, PathError> {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b != b'%' {
            // Copy the run up to the next escape at once (it is valid
            // UTF-8: it came from a &str and ends before an ASCII '%').
            let end = bytes[i..]
                .iter()
                .position(|&c| c == b'%')
                .map_or(bytes.len(), |p| i + p);
            out.push_str(&path[i..end]);
            i = end;
            continue;
        }
        let (Some(hi), Some(lo)) = (
            bytes.get(i + 1).copied().and_then(hex_value),
            bytes.get(i + 2).copied().and_then(hex_value),
        ) else {
            return Err(PathError::InvalidEscape);
        };
        let value = hi << 4 | lo;
        match value {
            0 => return Err(PathError::Nul),
            b'/' | b'\\' => match slashes {
                EscapedSlashes::Reject => return Err(PathError::EscapedSlash),
                EscapedSlashes::Decode => out.push(value as char),
                EscapedSlashes::Keep => {
                    out.push('%');
                    out.push(HEX[usize::from(hi)] as char);
                    out.push(HEX[usize::from(lo)] as char);
                }
            },
            v if is_unreserved(v) => out.push(v as char),
            _ => {
                out.push('%');
                out.push(HEX[usize::from(hi)] as char);
                out.push(HEX[usize::from(lo)] as char);
            }
        }
        i += 3;
    }
    Ok(out)
}

/// RFC 3986 §5.2.4 over segments, with optional merging of empty segments;
/// climbing above the root is an error rather than silently clamped, so a
/// probe for `../` never reaches a route.
fn remove_dot_segments(path: &str, merge_slashes: bool) -> Result<String, PathError> {
    let mut kept: Vec<&str> = Vec::new();
    let mut segments = path[1..].split('/').peekable();
    while let Some(segment) = segments.next() {
        let last = segments.peek().is_none();
        match segment {
            "." => {}
            ".." => {
                if kept.pop().is_none() {
                    return Err(PathError::AboveRoot);
                }
            }
            "" if merge_slashes && !last => {}
            s => {
                kept.push(s);
                continue;
            }
        }
        // A path ending in a dot segment names a directory: keep its slash.
        if last {
            kept.push("");
        }
    }
    let mut out = String::with_capacity(path.len());
    for segment in &kept {
        out.push('/');
        out.push_str(segment);
    }
    if out.is_empty() {
        out.push('/');
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULT: PathRules = PathRules {
        merge_slashes: true,
        escaped_slashes: EscapedSlashes::Reject,
    };

    fn norm(path: &str) -> Result<String, PathError> {
        norm_with(path, DEFAULT)
    }

    fn norm_with(path: &str, rules: PathRules) -> Result<String, PathError> {
        normalize(path, rules).map(|n| n.unwrap_or_else(|| path.to_string()))
    }

    #[test]
    fn normal_paths_are_left_alone_without_allocating() {
        for p in [
            "/",
            "/api",
            "/api/v1/",
            "/a.b/c..d/.e",
            "/.well-known/x",
            "*",
            "",
        ] {
            assert_eq!(normalize(p, DEFAULT), Ok(None), "{p}");
        }
    }

    #[test]
    fn dot_segments_are_removed() {
        let cases = [
            ("/x/../api", "/api"),
            ("/./api", "/api"),
            ("/a/b/../../api/./v1", "/api/v1"),
            ("/a/.", "/a/"),
            ("/a/..", "/"),
            ("/a/b/..", "/a/"),
            ("/a/./b/", "/a/b/"),
            ("/..a/b", "/..a/b"),
            ("/a/.../b", "/a/.../b"),
        ];
        for (raw, want) in cases {
            assert_eq!(norm(raw).as_deref(), Ok(want), "{raw}");
        }
    }

    #[test]
    fn escaped_dots_are_dot_segments_too() {
        assert_eq!(norm("/x/%2e%2e/api").as_deref(), Ok("/api"));
        assert_eq!(norm("/x/%2E./api").as_deref(), Ok("/api"));
        assert_eq!(norm("/%2e/api").as_deref(), Ok("/api"));
    }

    #[test]
    fn unreserved_escapes_are_decoded_and_others_uppercased() {
        assert_eq!(norm("/%61pi/%7euser").as_deref(), Ok("/api/~user"));
        assert_eq!(norm("/a%20b/%c3%a9").as_deref(), Ok("/a%20b/%C3%A9"));
        assert_eq!(norm("/q%3f").as_deref(), Ok("/q%3F"));
    }

    #[test]
    fn slashes_are_merged_unless_turned_off() {
        assert_eq!(norm("//api//v1///").as_deref(), Ok("/api/v1/"));
        assert_eq!(norm("/a//../b").as_deref(), Ok("/b"));
        let keep = PathRules {
            merge_slashes: false,
            ..DEFAULT
        };
        assert_eq!(normalize("//api//v1", keep), Ok(None));
        // Without merging, an empty segment is a segment '..' removes.
        assert_eq!(norm_with("/a//../b", keep).as_deref(), Ok("/a/b"));
    }

    #[test]
    fn escaped_slashes_follow_the_policy() {
        assert_eq!(norm("/a%2Fb"), Err(PathError::EscapedSlash));
        assert_eq!(norm("/a%5cb"), Err(PathError::EscapedSlash));
        let keep = PathRules {
            escaped_slashes: EscapedSlashes::Keep,
            ..DEFAULT
        };
        assert_eq!(norm_with("/a%2fb/%5c", keep).as_deref(), Ok("/a%2Fb/%5C"));
        // Kept escapes are data: they do not make '..' climb.
        assert_eq!(norm_with("/a%2f../b", keep).as_deref(), Ok("/a%2F../b"));
        let decode = PathRules {
            escaped_slashes: EscapedSlashes::Decode,
            ..DEFAULT
        };
        assert_eq!(norm_with("/x%2f..%2fapi", decode).as_deref(), Ok("/api"));
        assert_eq!(norm_with("/a%5Cb", decode).as_deref(), Ok("/a\\b"));
    }

    #[test]
    fn paths_without_one_meaning_are_refused() {
        assert_eq!(norm("/.."), Err(PathError::AboveRoot));
        assert_eq!(norm("/a/../../etc/passwd"), Err(PathError::AboveRoot));
        assert_eq!(norm("/%2e%2e/etc"), Err(PathError::AboveRoot));
        assert_eq!(norm("/a%00.html"), Err(PathError::Nul));
        assert_eq!(norm("/a%"), Err(PathError::InvalidEscape));
        assert_eq!(norm("/a%4"), Err(PathError::InvalidEscape));
        assert_eq!(norm("/a%zz"), Err(PathError::InvalidEscape));
    }

    #[test]
    fn normalizing_twice_changes_nothing() {
        let samples = [
            "/x/../api",
            "//a/./b/%2e%2e/c%7e/",
            "/a%20b/%c3%a9/..",
            "/a/b/c/./../../d//",
        ];
        for raw in samples {
            let once = norm(raw).unwrap();
            assert_eq!(normalize(&once, DEFAULT), Ok(None), "{raw} -> {once}");
        }
    }

    #[test]
    fn non_ascii_runs_are_copied_intact() {
        assert_eq!(norm("/é/./ü%41").as_deref(), Ok("/é/üA"));
    }
}
