//! Any text as a manifest file: parsing reports problems (never panics),
//! and whatever parsed translates to a snapshot (never panics).
#![no_main]

use libfuzzer_sys::fuzz_target;
use portico_sources::manifests::{build_store, parse_file, ManifestSet};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let parsed = parse_file("fuzz.yaml", text);
    let set: ManifestSet = [("fuzz.yaml".into(), parsed)].into_iter().collect();
    let (store, _) = build_store(&set);
    let settings = portico_translate::Settings::new(vec!["192.0.2.1".parse().unwrap()]);
    let spec = portico_translate::translate(&store, &settings);
    // Every problem names where it is.
    for p in &spec.problems {
        assert!(!p.location.is_empty(), "a problem with no location: {p:?}");
    }
});
