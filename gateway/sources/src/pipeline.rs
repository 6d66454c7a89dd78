//! The manifests pipeline: files → store → translation → publish, with
//! last-good retention for broken files and an endpoints-only fast path.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use super::manifests::{self, ManifestSet};
use portico_model::problems::Problem;
use portico_model::publish::Publisher;
use portico_model::snapshot::{BackendKey, SnapshotSpec};
use portico_model::store::{AnyObject, ObjectKey, Store};
use portico_translate::backend::SERVICE_NAME_LABEL;
use portico_translate::{translate, Settings};

/// Loads manifest folders, translates and publishes; keeps the last good
/// version of files that turn bad. An edit that only touches EndpointSlices
/// takes the incremental path: the store is patched, only the affected
/// Services' backends are recomputed, and only their pools are rebuilt.
pub struct ManifestPipeline {
    pub dirs: Vec<PathBuf>,
    pub dns: crate::config::DnsConfig,
    /// Locked after `state` when both are needed.
    settings: Mutex<Settings>,
    pub publisher: Arc<Publisher>,
    state: Mutex<State>,
}

struct State {
    set: ManifestSet,
    /// When `set` was first read (for the start-up catch-up).
    loaded_at: std::time::SystemTime,
    /// Problems already logged, so each is logged once.
    logged: Vec<Problem>,
    store: Store,
    /// Duplicate-object problems from the last full store build.
    store_problems: Vec<Problem>,
    /// Translation of `store` (translation problems only).
    spec: SnapshotSpec,
}

impl ManifestPipeline {
    pub fn new(
        dirs: Vec<PathBuf>,
        dns: crate::config::DnsConfig,
        settings: Settings,
        publisher: Arc<Publisher>,
        initial: ManifestSet,
        loaded_at: std::time::SystemTime,
    ) -> Self {
        ManifestPipeline {
            dirs,
            dns,
            settings: Mutex::new(settings),
            publisher,
            state: Mutex::new(State {
                set: initial,
                loaded_at,
                logged: Vec::new(),
                store: Store::default(),
                store_problems: Vec::new(),
                spec: SnapshotSpec::default(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn settings(&self) -> std::sync::MutexGuard<'_, Settings> {
        self.settings.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// DNS names the current objects' ExternalName Services need.
    pub fn external_names(&self) -> BTreeSet<String> {
        portico_translate::backend::external_names(&self.lock().store)
    }

    /// New DNS answers: retranslates the current store with them.
    pub fn set_resolved(&self, resolved: &crate::dns::Resolved) {
        let mut state = self.lock();
        let spec = {
            let mut settings = self.settings();
            if settings.resolved_names == *resolved {
                return;
            }
            settings.resolved_names = resolved.clone();
            translate(&state.store, &settings)
        };
        state.spec = spec;
        self.publish(&mut state, None);
    }

    /// Builds the store from every file, translates and publishes.
    pub fn apply(&self) {
        let mut state = self.lock();
        let started = std::time::Instant::now();
        let (store, store_problems) = manifests::build_store(&state.set);
        let stored = started.elapsed();
        let spec = translate(&store, &self.settings());
        let translated = started.elapsed() - stored;
        metrics::histogram!("portico_store_build_duration_seconds").record(stored.as_secs_f64());
        metrics::histogram!("portico_translate_duration_seconds").record(translated.as_secs_f64());
        tracing::debug!(
            store_ms = stored.as_millis() as u64,
            translate_ms = translated.as_millis() as u64,
            "translated"
        );
        state.store = store;
        state.store_problems = store_problems;
        state.spec = spec;
        self.publish(&mut state, None);
    }

    /// Publishes `state.spec` with every problem (files, store,
    /// translation) attached; logs the ones not logged before.
    fn publish(&self, state: &mut State, rebuilt: Option<&[BackendKey]>) {
        let mut problems = state.store_problems.clone();
        for f in state.set.values() {
            problems.extend(f.problems.iter().cloned());
        }
        problems.extend(state.spec.problems.iter().cloned());
        problems.sort();
        problems.dedup();
        state.logged = portico_model::problems::log_new(&problems, &state.logged);
        let mut spec = state.spec.clone();
        spec.problems = problems;
        match rebuilt {
            None => self.publisher.publish(spec),
            Some(keys) => self.publisher.publish_incremental(spec, keys),
        };
    }

    /// Re-reads the files changed since the first read (before the watch
    /// existed). A full re-read here would double the start-up memory peak
    /// on large folders.
    pub(crate) fn catch_up(&self) {
        let (loaded_at, known): (std::time::SystemTime, BTreeSet<PathBuf>) = {
            let state = self.lock();
            (state.loaded_at, state.set.keys().cloned().collect())
        };
        let mut changed = BTreeSet::new();
        let mut present = BTreeSet::new();
        for dir in &self.dirs {
            for f in manifests::list_files(dir).unwrap_or_default() {
                let newer = std::fs::metadata(&f)
                    .and_then(|m| m.modified())
                    .map_or(true, |t| t >= loaded_at);
                if newer || !known.contains(&f) {
                    changed.insert(f.clone());
                }
                present.insert(f);
            }
        }
        changed.extend(known.difference(&present).cloned());
        if !changed.is_empty() {
            tracing::info!(
                files = changed.len(),
                "manifests changed during start-up; re-reading them"
            );
            self.reload_files(&changed);
        }
    }

    /// Re-reads every folder (start-up, or when events cannot be trusted).
    pub(crate) fn reload(&self) {
        let (next, dir_problems) = manifests::read_dirs(&self.dirs);
        for p in &dir_problems {
            tracing::error!(location = %p.location, "{}", p.message);
        }
        self.merge(next, None);
    }

    /// Re-reads only the files that changed; the other files keep their
    /// parsed objects, so a one-file edit costs one file's parse.
    pub(crate) fn reload_files(&self, changed: &BTreeSet<PathBuf>) {
        let mut next = ManifestSet::new();
        let mut removed = Vec::new();
        for path in changed {
            if path.is_file() {
                next.insert(path.clone(), manifests::read_file(path));
            } else {
                removed.push(path.clone());
            }
        }
        if self.try_endpoints_only(&next, &removed) {
            return;
        }
        self.merge(next, Some(removed));
    }

    /// The incremental path, taken when every object in the old and new
    /// versions of the changed files is an EndpointSlice this file owns.
    /// Returns false (nothing done) when the full path is needed.
    fn try_endpoints_only(&self, next: &ManifestSet, removed: &[PathBuf]) -> bool {
        let mut state = self.lock();
        let Some(services) = endpoint_only_change(&state, next, removed) else {
            return false;
        };
        let started = std::time::Instant::now();
        for path in next.keys().chain(removed) {
            if let Some(old) = state.set.get(path).cloned() {
                for (obj, _) in &old.objects {
                    state.store.endpoint_slices.remove(&obj.key());
                }
            }
        }
        for r in removed {
            state.set.remove(r);
        }
        for (path, file) in next {
            for (obj, origin) in &file.objects {
                state.store.insert(obj.clone(), Some(origin.clone()));
            }
            state.set.insert(path.clone(), file.clone());
        }
        let State { spec, store, .. } = &mut *state;
        let rebuilt =
            portico_translate::refresh_endpoints(spec, store, &self.settings(), &services);
        metrics::histogram!("portico_translate_duration_seconds")
            .record(started.elapsed().as_secs_f64());
        metrics::counter!("portico_manifest_reloads_total", "result" => "endpoints").increment(1);
        tracing::info!(
            services = services.len(),
            backends = rebuilt.len(),
            "EndpointSlices changed; backends refreshed"
        );
        self.publish(&mut state, Some(&rebuilt));
        true
    }

    /// `removed: None` means `next` is the whole set (a full reload).
    fn merge(&self, next: ManifestSet, removed: Option<Vec<PathBuf>>) {
        let bad = next.values().filter(|f| f.has_errors()).count();
        let files = next.len();
        {
            let mut state = self.lock();
            let merged = manifests::merge_keep_last_good(&state.set, next);
            match removed {
                None => state.set = merged,
                Some(removed) => {
                    for r in &removed {
                        state.set.remove(r);
                    }
                    state.set.extend(merged);
                }
            }
        }
        metrics::counter!("portico_manifest_reloads_total", "result" => if bad == 0 { "ok" } else { "partial" })
            .increment(1);
        if bad > 0 {
            tracing::warn!(
                files_with_errors = bad,
                "manifests reloaded; files with errors keep their previous version"
            );
        } else {
            tracing::info!(files, "manifests reloaded");
        }
        self.apply();
    }
}

/// The Services whose EndpointSlices a file change touches, if the change
/// touches nothing but EndpointSlices owned by those files (no errors, no
/// duplicates elsewhere); `None` means take the full path.
fn endpoint_only_change(
    state: &State,
    next: &ManifestSet,
    removed: &[PathBuf],
) -> Option<BTreeSet<ObjectKey>> {
    if state.spec.backends.is_empty() && state.store.services.is_empty() {
        return None;
    }
    let mut services = BTreeSet::new();
    for path in next.keys().chain(removed) {
        let prefix = format!("{}:", path.display());
        let new_file = next.get(path);
        if new_file.is_some_and(|f| f.has_errors()) {
            return None;
        }
        let old_objects = state
            .set
            .get(path)
            .map(|f| f.objects.as_slice())
            .unwrap_or(&[]);
        let new_objects = new_file.map(|f| f.objects.as_slice()).unwrap_or(&[]);
        for (obj, _) in old_objects.iter().chain(new_objects) {
            let AnyObject::EndpointSlice(slice) = obj else {
                return None;
            };
            let key = obj.key();
            // Another file defines this slice too: duplicates need the full path.
            if let Some(existing) = state.store.endpoint_slices.get(&key) {
                if !existing
                    .origin
                    .as_deref()
                    .is_some_and(|o| o.starts_with(&prefix))
                {
                    return None;
                }
            }
            let owner = slice
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(SERVICE_NAME_LABEL))?;
            services.insert(ObjectKey::new(key.namespace.clone(), owner.clone()));
        }
    }
    (!services.is_empty()).then_some(services)
}
