//! Plugin instances per worker thread, as Envoy runs proxy-wasm: each
//! worker thread has one instance of each plugin, and every stream on that
//! thread is a context inside it. Requests never instantiate anything; a
//! thread starts its instance on first use and keeps it.
//!
//! This relies on the L7 service running without work stealing (each
//! worker is a single-threaded runtime), so a request's phases all run on
//! the thread whose instance holds its context. A phase that finds itself
//! elsewhere, or finds its instance replaced after a failure, sees the
//! context as lost and applies the plugin's fail policy.
//!
//! A failed call poisons its instance; the next stream on that thread gets
//! a fresh one. A superseded plugin (reload) keeps its instances until
//! their last context ends.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use wasmtime::Linker;

use super::host::{self, VmState};
use super::registry::Plugin;
use super::sandbox::{HostState, PluginError};
use super::vm::{Vm, ROOT_CONTEXT};

/// One instance on this thread.
pub struct Instance {
    pub plugin: Arc<Plugin>,
    pub vm: Vm,
    /// Unique across threads and time.
    pub id: u64,
    next_context: i32,
    /// Stream contexts alive in it.
    active: usize,
    ticking: bool,
    /// The header map a paused stream waits in (request or response
    /// headers), by context: callbacks (an HTTP call's answer, a tick) may
    /// read and edit it.
    pub parked: HashMap<u32, Parked>,
}

/// A paused stream's header map, held by its instance.
#[derive(Default)]
pub struct Parked {
    /// `REQUEST_HEADERS` or `RESPONSE_HEADERS`.
    pub map_id: i32,
    pub headers: super::headers::HeaderSlot,
    /// Whether a callback changed it.
    pub edited: bool,
}

impl Instance {
    /// A context id for a new stream. Ids are never reused within an
    /// instance (wrapping after 2^31 streams, far past any instance's
    /// life in practice).
    pub fn new_context(&mut self) -> i32 {
        let id = self.next_context;
        self.next_context = self.next_context.checked_add(1).unwrap_or(ROOT_CONTEXT + 1);
        self.active += 1;
        self.vm.sandbox.data_mut().live_contexts.insert(id as u32);
        id
    }
}

/// This thread's instances. A handful of plugins at most, looked up
/// several times per request: a scan of a short vector beats hashing.
#[derive(Default)]
struct Worker {
    /// One per plugin generation.
    instances: Vec<Instance>,
    /// Generations whose start failed, and when: a plugin that cannot
    /// start must not be retried on every request.
    failed_start: Vec<(u64, Instant)>,
}

impl Worker {
    fn get_mut(&mut self, generation: u64) -> Option<&mut Instance> {
        self.instances
            .iter_mut()
            .find(|i| i.plugin.generation == generation)
    }

    fn remove(&mut self, generation: u64) {
        self.instances.retain(|i| i.plugin.generation != generation);
    }
}

thread_local! {
    static WORKER: RefCell<Worker> = RefCell::new(Worker::default());
}

static NEXT_INSTANCE: AtomicU64 = AtomicU64::new(1);
/// How long a thread waits before retrying a plugin that failed to start.
const START_RETRY: Duration = Duration::from_secs(1);

pub fn linker() -> Result<&'static Linker<HostState<VmState>>, String> {
    static LINKER: OnceLock<Result<Linker<HostState<VmState>>, String>> = OnceLock::new();
    LINKER
        .get_or_init(|| super::engine().and_then(|e| host::linker(&e)))
        .as_ref()
        .map_err(Clone::clone)
}

/// Runs `f` on this thread's instance of `plugin`, starting one if there
/// is none or the last one failed.
pub fn with_instance<R>(
    plugin: &Arc<Plugin>,
    f: impl FnOnce(&mut Instance) -> R,
) -> Result<R, PluginError> {
    WORKER.with(|w| {
        let mut w = w.borrow_mut();
        let gen = plugin.generation;
        let fresh = match w.get_mut(gen) {
            Some(i) => i.vm.sandbox.is_poisoned(),
            None => true,
        };
        if fresh {
            if let Some((_, t)) = w.failed_start.iter().find(|(g, _)| *g == gen) {
                if t.elapsed() < START_RETRY {
                    return Err(PluginError::Setup("did not start on this worker".into()));
                }
            }
            let id = NEXT_INSTANCE.fetch_add(1, Ordering::Relaxed);
            let started = linker().and_then(|l| plugin.start_with(l, queue_notifier(plugin, id)));
            match started {
                Ok(vm) => {
                    w.failed_start.retain(|(g, _)| *g != gen);
                    // Versions of this plugin a reload replaced go once
                    // idle; the instance this replaces (if any) goes now,
                    // with its streams, which then see their context lost.
                    w.instances.retain(|i| {
                        i.plugin.generation != gen
                            && (i.plugin.name != plugin.name
                                || i.active > 0
                                || !i.plugin.superseded.load(Ordering::Relaxed))
                    });
                    metrics::counter!("portico_plugin_instances_started_total", "plugin" => plugin.name.clone())
                        .increment(1);
                    w.instances.push(
                        Instance {
                            plugin: plugin.clone(),
                            vm,
                            id,
                            next_context: ROOT_CONTEXT + 1,
                            active: 0,
                            ticking: false,
                            parked: HashMap::new(),
                        },
                    );
                }
                Err(e) => {
                    w.failed_start.retain(|(g, _)| *g != gen);
                    w.failed_start.push((gen, Instant::now()));
                    w.remove(gen);
                    return Err(PluginError::Setup(e));
                }
            }
        }
        let inst = w.get_mut(gen).expect("inserted above");
        let r = f(inst);
        let tick = !inst.ticking && inst.vm.sandbox.data().tick_period_ms > 0 && plugin.exports.tick;
        if tick {
            inst.ticking = true;
            spawn_ticker(plugin.clone(), inst.id);
        }
        Ok(r)
    })
}

/// Runs `f` on the instance that holds a stream's context, if it is still
/// there (same thread, not replaced).
pub fn with_existing<R>(
    plugin: &Arc<Plugin>,
    instance: u64,
    f: impl FnOnce(&mut Instance) -> R,
) -> Option<R> {
    WORKER.with(|w| {
        let mut w = w.borrow_mut();
        let inst = w.get_mut(plugin.generation)?;
        if inst.id != instance || inst.vm.sandbox.is_poisoned() {
            return None;
        }
        Some(f(inst))
    })
}

/// Drops this thread's instances of plugin versions a reload replaced or
/// removed, once no stream uses them (a thread that serves no streams,
/// like the plugin main thread, has no stream end to do it).
pub fn drop_superseded() {
    WORKER.with(|w| {
        w.borrow_mut()
            .instances
            .retain(|i| i.active > 0 || !i.plugin.superseded.load(Ordering::Relaxed))
    });
}

/// A stream's context ended: forget it, and drop a superseded instance
/// once nothing uses it.
pub fn release(plugin: &Arc<Plugin>, instance: u64, context: i32) {
    let superseded = plugin.superseded.load(Ordering::Relaxed);
    WORKER.with(|w| {
        let mut w = w.borrow_mut();
        let gen = plugin.generation;
        let Some(inst) = w.get_mut(gen) else {
            return;
        };
        if inst.id != instance {
            return;
        }
        inst.active = inst.active.saturating_sub(1);
        inst.vm
            .sandbox
            .data_mut()
            .live_contexts
            .remove(&(context as u32));
        if inst.active == 0 && superseded {
            w.remove(gen);
        }
    });
}

/// How instance `id` of `plugin` (on this thread) is told that a queue it
/// registered has data: a task on this worker's own runtime calls
/// `proxy_on_queue_ready`, wherever the enqueue happened.
fn queue_notifier(plugin: &Arc<Plugin>, id: u64) -> Option<super::host::QueueNotifier> {
    if !plugin.exports.queue_ready {
        return None;
    }
    let handle = tokio::runtime::Handle::try_current().ok()?;
    // Weak: a queue's owner outlives a reload; the old version must not.
    let plugin = Arc::downgrade(plugin);
    Some(super::host::QueueNotifier(Arc::new(move |queue: u32| {
        let Some(plugin) = plugin.upgrade() else {
            return;
        };
        handle.spawn(async move {
            let failed = with_existing(&plugin, id, |i| {
                i.vm.sandbox.data_mut().effective_context = ROOT_CONTEXT as u32;
                let r = i
                    .vm
                    .sandbox
                    .call::<(i32, i32), ()>("proxy_on_queue_ready", (ROOT_CONTEXT, queue as i32));
                after_root_call(i);
                r.err()
            })
            .flatten();
            if let Some(e) = failed {
                failure_log(&plugin.name, "proxy_on_queue_ready", &e);
            }
        });
    })))
}

/// Calls `proxy_on_tick` on this thread's instance every tick period, for
/// as long as the instance lives and asks for ticks. The task runs on the
/// worker's own single-threaded runtime, so it reaches the same instance.
fn spawn_ticker(plugin: Arc<Plugin>, instance: u64) {
    let Ok(handle) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let thread = std::thread::current().id();
    handle.spawn(async move {
        loop {
            let period = with_existing(&plugin, instance, |i| i.vm.sandbox.data().tick_period_ms);
            let Some(period) = period.filter(|p| *p > 0) else {
                break;
            };
            tokio::time::sleep(Duration::from_millis(period.into())).await;
            if std::thread::current().id() != thread {
                break;
            }
            let done = with_existing(&plugin, instance, |i| {
                let r = i.vm.sandbox.call::<i32, ()>("proxy_on_tick", ROOT_CONTEXT);
                after_root_call(i);
                r
            });
            match done {
                None => break,
                Some(Err(e)) => {
                    failure_log(&plugin.name, "proxy_on_tick", &e);
                    break;
                }
                Some(Ok(())) => {}
            }
        }
        // A later call that sets a period starts a new ticker.
        with_existing(&plugin, instance, |i| i.ticking = false);
    });
}

/// After a root-context call (tick, queue): streams the plugin resumed or
/// answered are woken.
fn after_root_call(inst: &mut Instance) {
    super::http_filter::after_call(inst);
}

/// Logs a plugin failure at most once per plugin every few seconds,
/// counting the ones it folds, so a failing plugin on a busy gateway does
/// not flood the log.
pub fn failure_log(plugin: &str, during: &str, e: &PluginError) {
    static LAST: Mutex<Option<HashMap<String, (Instant, u64)>>> = Mutex::new(None);
    const EVERY: Duration = Duration::from_secs(10);
    metrics::counter!("portico_plugin_failures_total", "plugin" => plugin.to_string(), "kind" => e.kind())
        .increment(1);
    let mut guard = LAST.lock().unwrap_or_else(|p| p.into_inner());
    let map = guard.get_or_insert_with(HashMap::new);
    let entry = map
        .entry(plugin.to_string())
        .or_insert((Instant::now() - EVERY * 2, 0));
    if entry.0.elapsed() >= EVERY {
        let folded = std::mem::take(&mut entry.1);
        entry.0 = Instant::now();
        drop(guard);
        tracing::warn!(
            plugin,
            during,
            error = %e,
            similar_failures_not_logged = folded,
            "plugin failed; its instance is replaced and its fail policy applied"
        );
    } else {
        entry.1 += 1;
    }
}
