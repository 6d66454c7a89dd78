//! Hot reload: plugin files and the `[plugins]` section of the config
//! file are checked every `plugins.reload_interval_ms`; a changed plugin is
//! compiled, checked and test-started off the data path, then swapped in.
//! Requests already running finish on the version they started with. A
//! plugin that fails to load keeps its previous version, and the reason is
//! logged and counted.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use super::registry::{self, Registry};
use crate::config::PluginsConfig;

pub type RegistryHandle = Arc<ArcSwap<Registry>>;

/// Reads `[plugins]` from the config file (the binary knows how the whole
/// file is loaded and checked).
pub type ReadPluginsConfig = Arc<dyn Fn(&Path) -> Result<PluginsConfig, String> + Send + Sync>;

pub struct PluginReloader {
    pub registry: RegistryHandle,
    pub config: PluginsConfig,
    /// The config file, re-read for `[plugins]` changes (none when the
    /// embedded default is used), and how.
    pub config_file: Option<(PathBuf, ReadPluginsConfig)>,
}

impl PluginReloader {
    /// One check: returns whether anything was swapped.
    pub fn check_once(&self, config: &PluginsConfig) -> bool {
        let current = self.registry.load_full();
        let (next, errors) = registry::load_all(config, Some(&current));
        for e in &errors {
            tracing::error!(error = %e, "plugin reload failed");
        }
        if !errors.is_empty() {
            metrics::counter!("portico_plugin_reloads_total", "result" => "error")
                .increment(errors.len() as u64);
        }
        let same = next.plugins.len() == current.plugins.len()
            && next.plugins.iter().all(|(n, p)| {
                current
                    .plugins
                    .get(n)
                    .is_some_and(|old| Arc::ptr_eq(old, p))
            })
            && same_chain(&next.http, &current.http)
            && same_chain(&next.tcp, &current.tcp);
        if same {
            return false;
        }
        for (name, old) in &current.plugins {
            if next.plugins.get(name).is_none_or(|p| !Arc::ptr_eq(p, old)) {
                old.superseded.store(true, Ordering::Relaxed);
            }
        }
        for (name, p) in &next.plugins {
            if current
                .plugins
                .get(name)
                .is_none_or(|old| !Arc::ptr_eq(p, old))
            {
                tracing::info!(plugin = %name, path = %p.path.display(), generation = p.generation, "plugin loaded; new requests use it");
                metrics::counter!("portico_plugin_reloads_total", "result" => "ok").increment(1);
            }
        }
        self.registry.store(Arc::new(next));
        true
    }

    /// `applies_to` is decided by translation from the configuration it
    /// started with; a reload keeps those scopes (and says so) so the
    /// listener chains and the snapshot's routes never disagree.
    fn keep_scopes(&self, mut next: PluginsConfig) -> PluginsConfig {
        for p in &mut next.load {
            let started = self
                .config
                .load
                .iter()
                .find(|o| o.name == p.name)
                .and_then(|o| o.applies_to.clone());
            if p.applies_to != started {
                tracing::warn!(plugin = %p.name, "plugins.load applies_to changed; it takes effect at the next restart");
                p.applies_to = started;
            }
        }
        next
    }

    fn read_config(&self) -> Option<PluginsConfig> {
        let (file, read) = self.config_file.as_ref()?;
        match read(file) {
            Ok(plugins) => Some(self.keep_scopes(plugins)),
            Err(e) => {
                tracing::error!(error = %e, "config file changed but does not load; plugins unchanged");
                None
            }
        }
    }
}

#[async_trait]
impl BackgroundService for PluginReloader {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut config = self.config.clone();
        let mut config_stamp = stamp(self.config_file.as_ref().map(|(f, _)| f));
        let every = Duration::from_millis(self.config.reload_interval_ms);
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = shutdown.changed() => return,
            }
            let now = stamp(self.config_file.as_ref().map(|(f, _)| f));
            if now != config_stamp {
                config_stamp = now;
                if let Some(c) = self.read_config() {
                    config = c;
                }
            }
            // Compiling is CPU work: keep it off the async threads.
            let me = PluginReloader {
                registry: self.registry.clone(),
                config: config.clone(),
                config_file: None,
            };
            let c = config.clone();
            let _ = tokio::task::spawn_blocking(move || me.check_once(&c)).await;
        }
    }
}

fn same_chain(a: &[Arc<super::registry::Plugin>], b: &[Arc<super::registry::Plugin>]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| Arc::ptr_eq(x, y))
}

fn stamp(file: Option<&PathBuf>) -> Option<std::time::SystemTime> {
    std::fs::metadata(file?).and_then(|m| m.modified()).ok()
}
