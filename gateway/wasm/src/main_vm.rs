//! The main-thread instance of each data-plane plugin that uses timers or
//! queues, as Envoy has one: a root context that starts with the gateway,
//! so `proxy_on_tick` and `proxy_on_queue_ready` run from the start, not
//! only once some worker has served a request with the plugin. It serves
//! no streams. A reloaded plugin's new version gets one too; the old
//! one, or a removed plugin's, goes at the next check.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use super::instances;
use super::registry::Plugin;
use super::reload::RegistryHandle;

/// How often the registry is looked at for plugins (new or reloaded)
/// that still need their main instance.
const CHECK_EVERY: Duration = Duration::from_millis(500);

fn wants_main_instance(p: &Plugin) -> bool {
    !p.info.control && (p.exports.tick || p.exports.queue_ready)
}

/// Starts the `plugin-main` thread (its own single-threaded runtime runs
/// the instances' timers and queue callbacks).
pub fn spawn(registry: RegistryHandle) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("plugin main thread: {e}"))?;
    std::thread::Builder::new()
        .name("plugin-main".into())
        .spawn(move || {
            rt.block_on(async move {
                // Generations started, or that failed to (logged once).
                let mut done: HashSet<u64> = HashSet::new();
                loop {
                    // A removed plugin's instance (and its timer) goes.
                    instances::drop_superseded();
                    let current = registry.load_full();
                    for p in current.plugins.values().filter(|p| wants_main_instance(p)) {
                        if done.insert(p.generation) {
                            start(p);
                        }
                    }
                    tokio::time::sleep(CHECK_EVERY).await;
                }
            })
        })
        .map_err(|e| format!("plugin main thread: {e}"))?;
    Ok(())
}

fn start(p: &Arc<Plugin>) {
    match instances::with_instance(p, |_| ()) {
        Ok(()) => tracing::debug!(plugin = %p.name, "main-thread instance started"),
        Err(e) => tracing::warn!(
            plugin = %p.name,
            error = %e,
            "the plugin's main-thread instance did not start: its timers run only on workers that serve it"
        ),
    }
}
