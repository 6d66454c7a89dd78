//! Any request path, under every normalizer setting: never a panic; a
//! path given a normal form is normal (normalizing it again changes
//! nothing) and holds no dot segment, nor an empty one when slashes are
//! merged. Any Host header value normalizes without a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portico_dataplane::proxy::path::{normalize, EscapedSlashes, PathRules};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = portico_model::routing::normalize_host(text);
    for merge_slashes in [true, false] {
        for escaped_slashes in [
            EscapedSlashes::Reject,
            EscapedSlashes::Keep,
            EscapedSlashes::Decode,
        ] {
            let rules = PathRules {
                merge_slashes,
                escaped_slashes,
            };
            let Ok(Some(normal)) = normalize(text, rules) else {
                continue;
            };
            assert!(normal.starts_with('/'), "{text:?} -> {normal:?}");
            for segment in normal.split('/') {
                assert!(segment != "." && segment != "..", "{text:?} -> {normal:?}");
            }
            if merge_slashes {
                assert!(!normal.contains("//"), "{text:?} -> {normal:?}");
            }
            // `Decode` turns `%2F` into `/`, which can make new `..`
            // segments: only the other settings are idempotent.
            if escaped_slashes != EscapedSlashes::Decode {
                assert_eq!(
                    normalize(&normal, rules),
                    Ok(None),
                    "{text:?} -> {normal:?} is not normal"
                );
            }
        }
    }
});
