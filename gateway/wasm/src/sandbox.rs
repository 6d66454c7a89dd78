//! One plugin instance with its limits: a per-call deadline (epoch
//! interruption), a memory cap, and what happens when either is hit or the
//! plugin traps. A failed instance is poisoned: its memory may be
//! half-updated, so the caller discards it and takes a fresh one rather
//! than calling it again. The process never dies of a plugin.

use std::any::Any;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use wasmtime::{
    Engine, Instance, Linker, Module, ResourceLimiter, Store, Trap, TypedFunc, WasmParams,
    WasmResults,
};

/// Epoch ticks per second while plugins are being called: the deadline's
/// resolution (a deadline fires between its length and one tick later).
/// Each tick is a timer wake-up, which costs about 20 µs of CPU on a VM,
/// so the ticker runs this fast only while calls happen.
const TICKS_PER_SECOND: u64 = 200;
/// With no call for this many ticks, the ticker idles...
const IDLE_AFTER_TICKS: u64 = TICKS_PER_SECOND;
/// ...waking this rarely until the next call unparks it.
const IDLE_TICK: Duration = Duration::from_millis(200);

/// Ticks so far, and the tick of the latest call.
static TICKS: AtomicU64 = AtomicU64::new(0);
static LAST_CALL_TICK: AtomicU64 = AtomicU64::new(0);
static TICKER_IDLE: AtomicBool = AtomicBool::new(false);
static TICKER: OnceLock<std::thread::Thread> = OnceLock::new();

/// Called as a call starts: keeps the ticker at full rate, and wakes it
/// if it idles (rare: the first call after a quiet second).
fn note_call() {
    // Written once per tick, not per call: every worker calls this, and
    // a store on every call would bounce the line between their cores.
    let now = TICKS.load(Ordering::Relaxed);
    if LAST_CALL_TICK.load(Ordering::Relaxed) != now {
        LAST_CALL_TICK.store(now, Ordering::Relaxed);
    }
    if TICKER_IDLE.load(Ordering::Relaxed) && TICKER_IDLE.swap(false, Ordering::Relaxed) {
        if let Some(t) = TICKER.get() {
            t.unpark();
        }
    }
}

/// Limits for every call into one plugin.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub deadline: Duration,
    pub memory_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            deadline: Duration::from_millis(5),
            memory_bytes: 64 << 20,
        }
    }
}

/// Why a call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PluginError {
    /// Ran past its deadline.
    Deadline,
    /// Tried to grow memory past the cap.
    OutOfMemory,
    /// A trap (unreachable, out-of-bounds access, stack overflow...).
    Trap(String),
    /// Instantiation or linking failed, or an export is missing.
    Setup(String),
}

impl PluginError {
    /// The metric label.
    pub fn kind(&self) -> &'static str {
        match self {
            PluginError::Deadline => "deadline",
            PluginError::OutOfMemory => "out_of_memory",
            PluginError::Trap(_) => "trap",
            PluginError::Setup(_) => "setup",
        }
    }
}

impl fmt::Display for PluginError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PluginError::Deadline => f.write_str("ran past its deadline"),
            PluginError::OutOfMemory => f.write_str("tried to grow memory past its cap"),
            PluginError::Trap(t) => write!(f, "trapped: {t}"),
            PluginError::Setup(e) => write!(f, "cannot start: {e}"),
        }
    }
}

/// Starts (once per engine) the thread that advances the epoch, which is
/// what makes deadlines fire.
pub fn start_ticker(engine: &Engine) {
    static STARTED: OnceLock<()> = OnceLock::new();
    STARTED.get_or_init(|| {
        let engine = engine.clone();
        let handle = std::thread::Builder::new()
            .name("wasm-epoch".into())
            .spawn(move || loop {
                if TICKER_IDLE.load(Ordering::Relaxed) {
                    std::thread::park_timeout(IDLE_TICK);
                } else {
                    std::thread::sleep(Duration::from_micros(1_000_000 / TICKS_PER_SECOND));
                }
                let now = TICKS.fetch_add(1, Ordering::Relaxed) + 1;
                engine.increment_epoch();
                if now.saturating_sub(LAST_CALL_TICK.load(Ordering::Relaxed)) > IDLE_AFTER_TICKS {
                    TICKER_IDLE.store(true, Ordering::Relaxed);
                }
            })
            .expect("spawn the Wasm epoch thread");
        let _ = TICKER.set(handle.thread().clone());
    });
}

/// The memory cap, remembering that it was hit so the error says so.
pub struct Cap {
    memory_bytes: usize,
    hit: Arc<AtomicBool>,
}

impl ResourceLimiter for Cap {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory_bytes {
            self.hit.store(true, Ordering::Relaxed);
            // A trap rather than `memory.grow` returning -1: most plugins
            // abort on allocation failure anyway, and a trap is contained.
            return Err(wasmtime::Error::msg("memory cap reached"));
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}

/// What the store carries: the plugin's host state and the cap.
pub struct HostState<T> {
    pub data: T,
    cap: Cap,
    /// A trap or deadline in a guest function the host called from inside
    /// a host call (the plugin's allocator, handed data): the host call can
    /// only answer a status, so the failure is kept here and the outer call
    /// fails with it, as any other trap.
    pub nested_failure: Option<wasmtime::Error>,
}

#[cfg(test)]
pub fn test_state() -> HostState<crate::host::VmState> {
    HostState {
        data: Default::default(),
        cap: Cap {
            memory_bytes: 1 << 20,
            hit: Arc::new(AtomicBool::new(false)),
        },
        nested_failure: None,
    }
}

pub struct Sandbox<T: 'static> {
    pub name: String,
    store: Store<HostState<T>>,
    instance: Instance,
    /// The per-call deadline in epoch ticks.
    deadline_ticks: u64,
    oom: Arc<AtomicBool>,
    poisoned: bool,
    /// Typed exports by name, looked up once: a request makes several
    /// calls, and a lookup costs more than a small call.
    funcs: Vec<(&'static str, Box<dyn Any + Send + Sync>)>,
    /// Metric handles, registered once per instance for the same reason.
    calls_ok: metrics::Counter,
    call_time: metrics::Histogram,
    calls: u32,
    /// Successful calls not yet added to `calls_ok`.
    unreported_ok: u32,
}

/// Every how many calls one is timed for
/// `portico_plugin_call_duration_seconds`: reading the clock (twice) costs
/// about as much as a small call on a virtual machine.
const TIME_SAMPLE: u32 = 32;
/// Every how many calls the successful ones are added to
/// `portico_plugin_calls_total`: a shared counter's atomic add on every
/// call would cost a fifth of a small call. The count lags by fewer than
/// this many calls per instance (none once the instance is dropped).
const COUNT_BATCH: u32 = 8;

impl<T: 'static> Sandbox<T> {
    /// Instantiates `module` with `linker`'s host functions under `limits`.
    pub fn new(
        name: &str,
        engine: &Engine,
        module: &Module,
        linker: &Linker<HostState<T>>,
        limits: Limits,
        data: T,
    ) -> Result<Self, PluginError> {
        start_ticker(engine);
        let oom = Arc::new(AtomicBool::new(false));
        let mut store = Store::new(
            engine,
            HostState {
                data,
                cap: Cap {
                    memory_bytes: limits.memory_bytes,
                    hit: oom.clone(),
                },
                nested_failure: None,
            },
        );
        store.limiter(|s| &mut s.cap);
        store.epoch_deadline_trap();
        store.set_epoch_deadline(ticks(limits.deadline));
        let instance = linker
            .instantiate(&mut store, module)
            .map_err(|e| classify(e, &oom))?;
        Ok(Sandbox {
            name: name.to_string(),
            store,
            instance,
            deadline_ticks: ticks(limits.deadline),
            oom,
            poisoned: false,
            funcs: Vec::new(),
            calls_ok: metrics::counter!("portico_plugin_calls_total", "plugin" => name.to_string(), "result" => "ok"),
            call_time: metrics::histogram!("portico_plugin_call_duration_seconds", "plugin" => name.to_string()),
            calls: 0,
            unreported_ok: 0,
        })
    }

    /// The per-call deadline, in epoch ticks.
    pub fn deadline_ticks(&self) -> u64 {
        self.deadline_ticks
    }

    /// Changes the per-call deadline for the calls that follow.
    pub fn set_deadline(&mut self, deadline: Duration) {
        self.deadline_ticks = ticks(deadline);
    }

    /// Whether a call failed: the instance must be replaced.
    pub fn is_poisoned(&self) -> bool {
        self.poisoned
    }

    pub fn data(&self) -> &T {
        &self.store.data().data
    }

    pub fn data_mut(&mut self) -> &mut T {
        &mut self.store.data_mut().data
    }

    /// Copies `bytes` into the instance's memory at `at`; false when out
    /// of bounds or the module has no memory.
    pub fn write_memory(&mut self, at: usize, bytes: &[u8]) -> bool {
        match self.instance.get_memory(&mut self.store, "memory") {
            Some(m) => m.write(&mut self.store, at, bytes).is_ok(),
            None => false,
        }
    }

    pub fn has_export(&mut self, name: &str) -> bool {
        self.instance.get_func(&mut self.store, name).is_some()
    }

    /// Calls an export under the deadline; counts the call and its time.
    pub fn call<P: WasmParams + 'static, R: WasmResults + 'static>(
        &mut self,
        export: &'static str,
        params: P,
    ) -> Result<R, PluginError> {
        if self.poisoned {
            return Err(PluginError::Setup(
                "instance discarded after an earlier failure".into(),
            ));
        }
        // A dozen exports at most: a scan beats hashing the name, and
        // the names are literals, so the address usually decides.
        let slot = match self
            .funcs
            .iter()
            .position(|(n, _)| std::ptr::eq(*n, export) || *n == export)
        {
            Some(i) => i,
            None => {
                let f = self
                    .instance
                    .get_typed_func::<P, R>(&mut self.store, export)
                    .map_err(|e| PluginError::Setup(format!("export `{export}`: {e}")))?;
                self.funcs.push((export, Box::new(f)));
                self.funcs.len() - 1
            }
        };
        // Borrowed, not cloned: a clone costs a type-registry reference.
        let f = self.funcs[slot]
            .1
            .downcast_ref::<TypedFunc<P, R>>()
            .ok_or_else(|| {
                PluginError::Setup(format!("export `{export}` called with another signature"))
            })?;
        note_call();
        self.store.set_epoch_deadline(self.deadline_ticks);
        self.calls = self.calls.wrapping_add(1);
        let started = (self.calls % TIME_SAMPLE == 0).then(Instant::now);
        let mut result = f
            .call(&mut self.store, params)
            .map_err(|e| classify(e, &self.oom));
        if let Some(nested) = self.store.data_mut().nested_failure.take() {
            if result.is_ok() {
                result = Err(classify(nested, &self.oom));
            }
        }
        if let Some(t) = started {
            self.call_time.record(t.elapsed().as_secs_f64());
        }
        match &result {
            Ok(_) => {
                self.unreported_ok += 1;
                if self.unreported_ok >= COUNT_BATCH {
                    self.report_calls();
                }
            }
            Err(e) => {
                self.report_calls();
                self.poisoned = true;
                metrics::counter!("portico_plugin_calls_total", "plugin" => self.name.clone(), "result" => e.kind())
                    .increment(1);
            }
        }
        result
    }
}

impl<T: 'static> Sandbox<T> {
    fn report_calls(&mut self) {
        let n = std::mem::take(&mut self.unreported_ok);
        if n > 0 {
            self.calls_ok.increment(n.into());
        }
    }
}

impl<T: 'static> Drop for Sandbox<T> {
    fn drop(&mut self) {
        self.report_calls();
    }
}

fn ticks(d: Duration) -> u64 {
    // At least one full tick: a deadline can fire up to a tick early.
    (d.as_micros() as u64 * TICKS_PER_SECOND / 1_000_000).max(1) + 1
}

fn classify(e: wasmtime::Error, oom: &AtomicBool) -> PluginError {
    if oom.swap(false, Ordering::Relaxed) {
        return PluginError::OutOfMemory;
    }
    match e.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => PluginError::Deadline,
        Some(t) => PluginError::Trap(t.to_string()),
        None => PluginError::Trap(format!("{e:#}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sandbox(wat: &str, limits: Limits) -> Sandbox<()> {
        let engine = crate::engine().unwrap();
        let module = Module::new(&engine, wat).unwrap();
        let linker = Linker::new(&engine);
        Sandbox::new("test", &engine, &module, &linker, limits, ()).unwrap()
    }

    const HOSTILE: &str = r#"(module
        (memory 1)
        (func (export "ok") (result i32) i32.const 7)
        (func (export "spin") (loop br 0))
        (func (export "grow") (result i32) (memory.grow (i32.const 2000)))
        (func (export "crash") unreachable)
        (func $deep (export "deep") (call $deep)))"#;

    #[test]
    fn an_endless_loop_is_stopped_at_the_deadline() {
        let mut s = sandbox(HOSTILE, Limits::default());
        let started = Instant::now();
        assert_eq!(s.call::<(), ()>("spin", ()), Err(PluginError::Deadline));
        // Generous: only proves the loop was interrupted at all.
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(s.is_poisoned());
        assert!(
            s.call::<(), i32>("ok", ()).is_err(),
            "a poisoned instance was called"
        );
    }

    #[test]
    fn growing_past_the_cap_is_out_of_memory() {
        // 2000 pages are 125 MiB, over the 64 MiB default cap.
        let mut s = sandbox(HOSTILE, Limits::default());
        assert_eq!(s.call::<(), i32>("grow", ()), Err(PluginError::OutOfMemory));
        // Under a larger cap the same growth succeeds (returns the old size).
        let mut s = sandbox(
            HOSTILE,
            Limits {
                memory_bytes: 256 << 20,
                ..Limits::default()
            },
        );
        assert_eq!(s.call::<(), i32>("grow", ()), Ok(1));
    }

    #[test]
    fn traps_are_contained_and_a_fresh_instance_works() {
        let mut s = sandbox(HOSTILE, Limits::default());
        match s.call::<(), ()>("crash", ()) {
            Err(PluginError::Trap(t)) => assert!(t.contains("unreachable"), "{t}"),
            other => panic!("{other:?}"),
        }
        let mut s = sandbox(HOSTILE, Limits::default());
        match s.call::<(), ()>("deep", ()) {
            Err(PluginError::Trap(t)) => assert!(t.contains("stack"), "{t}"),
            other => panic!("{other:?}"),
        }
        let mut fresh = sandbox(HOSTILE, Limits::default());
        assert_eq!(fresh.call::<(), i32>("ok", ()), Ok(7));
    }

    #[test]
    fn a_missing_export_is_a_setup_error_not_a_crash() {
        let mut s = sandbox(HOSTILE, Limits::default());
        assert!(matches!(
            s.call::<(), ()>("nope", ()),
            Err(PluginError::Setup(_))
        ));
    }
}
