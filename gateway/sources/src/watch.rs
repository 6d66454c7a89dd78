//! Watches the manifest folders and hands changed files to the pipeline.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use notify::{RecursiveMode, Watcher};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use super::manifests;
use super::pipeline::ManifestPipeline;

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
        // Files may have changed between the first read and the watch:
        // re-read those (by mtime, and files that came or went), then report
        // ready, so no edit after /readyz is missed.
        self.catch_up();
        self.publisher.mark_ready();
        let (names_tx, mut resolved_rx) = crate::dns::spawn(&self.dns);
        names_tx.send_replace(self.external_names());
        loop {
            tokio::select! {
                // Never closed while `names_tx` lives.
                _ = resolved_rx.changed() => {
                    let resolved = resolved_rx.borrow_and_update().clone();
                    self.set_resolved(&resolved);
                }
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
                    let names = self.external_names();
                    names_tx.send_if_modified(|cur| {
                        let changed = *cur != names;
                        *cur = names;
                        changed
                    });
                }
                _ = shutdown.changed() => break,
            }
        }
    }
}
