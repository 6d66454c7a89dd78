//! Re-applies the manifest folders when a file changes.

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
        let (store, mut problems) = manifests::build_store(set);
        for f in set.values() {
            problems.extend(f.problems.iter().cloned());
        }
        let mut spec = translate(&store, &self.settings);
        problems.append(&mut spec.problems);
        problems.sort();
        problems.dedup();
        for p in problems.iter().filter(|p| !logged.contains(p)) {
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

    fn reload(&self) {
        let (next, dir_problems) = manifests::read_dirs(&self.dirs);
        for p in &dir_problems {
            tracing::error!(location = %p.location, "{}", p.message);
        }
        let bad = next.values().filter(|f| f.has_errors()).count();
        {
            let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
            let merged = manifests::merge_keep_last_good(&last.0, next);
            last.0 = merged;
        }
        metrics::counter!("portico_manifest_reloads_total", "result" => if bad == 0 { "ok" } else { "partial" })
            .increment(1);
        if bad > 0 {
            tracing::warn!(
                files_with_errors = bad,
                "manifests reloaded; files with errors keep their previous version"
            );
        } else {
            tracing::info!("manifests reloaded");
        }
        self.apply();
    }
}

#[async_trait]
impl BackgroundService for ManifestPipeline {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            if let Ok(ev) = res {
                if !matches!(ev.kind, notify::EventKind::Access(_)) {
                    let _ = tx.send(());
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
                    if ev.is_none() { break }
                    // Editors write in bursts: settle, then drain queued events.
                    tokio::time::sleep(Duration::from_millis(150)).await;
                    while rx.try_recv().is_ok() {}
                    self.reload();
                }
                _ = shutdown.changed() => break,
            }
        }
    }
}
