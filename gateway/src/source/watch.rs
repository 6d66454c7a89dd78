//! Re-applies the manifest folders when a file changes.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use notify::{RecursiveMode, Watcher};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use super::manifests::{self, ManifestSet};
use crate::problems::Problem;
use crate::publish::Publisher;
use crate::translate::{translate, Settings};

/// Loads manifest folders, translates and publishes; keeps the last good
/// version of files that turn bad.
pub struct ManifestPipeline {
    pub dirs: Vec<PathBuf>,
    pub settings: Settings,
    pub publisher: Arc<Publisher>,
    last: Mutex<(ManifestSet, Vec<Problem>)>,
}

impl ManifestPipeline {
    pub fn new(
        dirs: Vec<PathBuf>,
        settings: Settings,
        publisher: Arc<Publisher>,
        initial: ManifestSet,
    ) -> Self {
        ManifestPipeline {
            dirs,
            settings,
            publisher,
            last: Mutex::new((initial, Vec::new())),
        }
    }

    /// Translates and publishes the current set; logs problems not logged
    /// at the previous apply.
    pub fn apply(&self) {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let (set, logged) = &mut *last;
        let started = std::time::Instant::now();
        let (store, mut problems) = manifests::build_store(set);
        for f in set.values() {
            problems.extend(f.problems.iter().cloned());
        }
        let stored = started.elapsed();
        let mut spec = translate(&store, &self.settings);
        let translated = started.elapsed() - stored;
        metrics::histogram!("portico_store_build_duration_seconds").record(stored.as_secs_f64());
        metrics::histogram!("portico_translate_duration_seconds").record(translated.as_secs_f64());
        tracing::debug!(
            store_ms = stored.as_millis() as u64,
            translate_ms = translated.as_millis() as u64,
            "translated"
        );
        problems.append(&mut spec.problems);
        problems.sort();
        problems.dedup();
        let already: BTreeSet<&Problem> = logged.iter().collect();
        for p in problems.iter().filter(|p| !already.contains(p)) {
            let sev = if p.is_error() { "error" } else { "warning" };
            metrics::counter!("portico_config_problems_total", "severity" => sev).increment(1);
            if p.is_error() {
                tracing::error!(location = %p.location, "{}", p.message);
            } else {
                tracing::warn!(location = %p.location, "{}", p.message);
            }
        }
        spec.problems = problems.clone();
        *logged = problems;
        self.publisher.publish(spec);
    }

    /// Re-reads every folder (start-up, or when events cannot be trusted).
    fn reload(&self) {
        let (next, dir_problems) = manifests::read_dirs(&self.dirs);
        for p in &dir_problems {
            tracing::error!(location = %p.location, "{}", p.message);
        }
        self.merge(next, None);
    }

    /// Re-reads only the files that changed; the other files keep their
    /// parsed objects, so a one-file edit costs one file's parse.
    fn reload_files(&self, changed: &BTreeSet<PathBuf>) {
        let mut next = ManifestSet::new();
        let mut removed = Vec::new();
        for path in changed {
            if path.is_file() {
                next.insert(path.clone(), manifests::read_file(path));
            } else {
                removed.push(path.clone());
            }
        }
        self.merge(next, Some(removed));
    }

    /// `removed: None` means `next` is the whole set (a full reload).
    fn merge(&self, next: ManifestSet, removed: Option<Vec<PathBuf>>) {
        let bad = next.values().filter(|f| f.has_errors()).count();
        let files = next.len();
        {
            let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
            let merged = manifests::merge_keep_last_good(&last.0, next);
            match removed {
                None => last.0 = merged,
                Some(removed) => {
                    for r in &removed {
                        last.0.remove(r);
                    }
                    last.0.extend(merged);
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

/// What a batch of watch events asks for.
enum Change {
    Files(BTreeSet<PathBuf>),
    Everything,
}

impl Change {
    fn add(&mut self, ev: &notify::Event) {
        if ev.need_rescan() {
            *self = Change::Everything;
            return;
        }
        if let Change::Files(files) = self {
            for p in &ev.paths {
                if manifests::is_visible_manifest(p) {
                    files.insert(p.clone());
                } else if p.is_dir()
                    || p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with(".."))
                {
                    // A folder came or went, or a ConfigMap volume swapped
                    // its `..data` link: re-read everything.
                    *self = Change::Everything;
                    return;
                }
            }
        }
    }
}

#[async_trait]
impl BackgroundService for ManifestPipeline {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<notify::Event>();
        let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            if let Ok(ev) = res {
                if !matches!(ev.kind, notify::EventKind::Access(_)) {
                    let _ = tx.send(ev);
                }
            }
        });
        let mut watcher = match watcher {
            Ok(w) => w,
            Err(e) => {
                tracing::error!(error = %e, "cannot watch manifest folders; changes need a restart");
                self.publisher.mark_ready();
                return;
            }
        };
        for d in &self.dirs {
            if let Err(e) = watcher.watch(d, RecursiveMode::Recursive) {
                tracing::error!(folder = %d.display(), error = %e, "cannot watch manifest folder");
            }
        }
        // Files may have changed between the first read and the watch: read
        // once more, then report ready, so no edit after /readyz is missed.
        self.reload();
        self.publisher.mark_ready();
        loop {
            tokio::select! {
                ev = rx.recv() => {
                    let Some(ev) = ev else { break };
                    let mut change = Change::Files(BTreeSet::new());
                    change.add(&ev);
                    // Editors write in bursts: settle, then take what queued up.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    while let Ok(ev) = rx.try_recv() {
                        change.add(&ev);
                    }
                    match change {
                        Change::Everything => self.reload(),
                        Change::Files(files) if files.is_empty() => {}
                        Change::Files(files) => self.reload_files(&files),
                    }
                }
                _ = shutdown.changed() => break,
            }
        }
    }
}
