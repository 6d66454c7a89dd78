//! The proxy-wasm 0.2.1 host functions, linked by name for every plugin.
//!
//! What a call can see is the `VmState` of its instance: configuration
//! buffers, the header maps and body buffers of the stream being
//! processed (filled in by the data-plane hook that calls into the
//! plugin), properties, a local response if the plugin sent one. Shared
//! data, shared queues and metric definitions are process-wide, as the
//! spec means them: every worker's instance of a plugin sees the same.
//!
//! Not yet wired (return `UNIMPLEMENTED`, status 12): `proxy_http_call`
//! (needs the named-upstream callout), the gRPC calls (not planned), and
//! `proxy_call_foreign_function` (no foreign functions are registered).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use wasmtime::{AsContextMut, Caller, Engine, Extern, Linker};

use super::sandbox::HostState;

/// `proxy_status_t`.
pub mod status {
    pub const OK: i32 = 0;
    pub const NOT_FOUND: i32 = 1;
    pub const BAD_ARGUMENT: i32 = 2;
    pub const INVALID_MEMORY_ACCESS: i32 = 6;
    pub const EMPTY: i32 = 7;
    pub const CAS_MISMATCH: i32 = 8;
    pub const INTERNAL_FAILURE: i32 = 10;
    pub const UNIMPLEMENTED: i32 = 12;
}

/// `proxy_buffer_type_t` values the host fills.
pub mod buffer {
    pub const VM_CONFIGURATION: i32 = 6;
    pub const PLUGIN_CONFIGURATION: i32 = 7;
}

/// WASI errno values the spec uses.
mod errno {
    pub const SUCCESS: i32 = 0;
    pub const BADF: i32 = 8;
    pub const FAULT: i32 = 21;
    pub const INVAL: i32 = 28;
    pub const NOSYS: i32 = 52;
    pub const NOTSUP: i32 = 58;
}

/// WASI `rights::fd_write`.
const RIGHT_FD_WRITE: u64 = 1 << 6;

/// An HTTP response a plugin asked to send instead of proxying.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalResponse {
    /// The context that sent it.
    pub context: u32,
    pub status: u32,
    pub details: String,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
}

/// Buffers and header maps by their small ABI number: an array, not a
/// hash map, as every stream callback reads and writes them.
#[derive(Debug)]
pub struct Slots<T> {
    slots: [Option<T>; 9],
}

impl<T> Default for Slots<T> {
    fn default() -> Self {
        Slots {
            slots: Default::default(),
        }
    }
}

impl<T: Default> Slots<T> {
    fn index(id: i32) -> Option<usize> {
        usize::try_from(id).ok().filter(|i| *i < 9)
    }

    pub fn get(&self, id: &i32) -> Option<&T> {
        Self::index(*id).and_then(|i| self.slots[i].as_ref())
    }

    pub fn get_mut(&mut self, id: &i32) -> Option<&mut T> {
        Self::index(*id).and_then(|i| self.slots[i].as_mut())
    }

    /// Ids outside the ABI's range are ignored (callers check first).
    pub fn insert(&mut self, id: i32, value: T) {
        if let Some(i) = Self::index(id) {
            self.slots[i] = Some(value);
        }
    }

    pub fn remove(&mut self, id: &i32) -> Option<T> {
        Self::index(*id).and_then(|i| self.slots[i].take())
    }

    /// The slot's value, created empty if absent. Panics on an id out of
    /// range, which callers have checked.
    pub fn get_or_default(&mut self, id: i32) -> &mut T {
        let i = Self::index(id).expect("checked id");
        self.slots[i].get_or_insert_with(T::default)
    }

    pub fn clear(&mut self) {
        self.slots.iter_mut().for_each(|s| *s = None);
    }

    /// Removes the values `keep` refuses.
    pub fn retain(&mut self, keep: impl Fn(&T) -> bool) {
        for s in &mut self.slots {
            if s.as_ref().is_some_and(|v| !keep(v)) {
                *s = None;
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.slots.iter().all(Option::is_none)
    }
}

/// Per-instance state the host functions read and write.
#[derive(Debug, Default)]
pub struct VmState {
    pub plugin: String,
    pub root_id: String,
    /// Buffers by `proxy_buffer_type_t`.
    pub buffers: Slots<super::body::BodySlot>,
    /// Header maps by `proxy_map_type_t`.
    pub maps: Slots<super::headers::HeaderSlot>,
    /// Properties by dotted path (`request.path`, `plugin_name`).
    pub properties: HashMap<String, Vec<u8>>,
    pub tick_period_ms: u32,
    pub local_response: Option<LocalResponse>,
    pub effective_context: u32,
    /// Streams the plugin asked to resume or close: (context,
    /// `proxy_stream_type_t`).
    pub continued: Vec<(u32, i32)>,
    pub closed: Vec<(u32, i32)>,
    /// Bit `1 << id` set when the plugin changed header map `id`...
    pub maps_dirty: u32,
    /// ...or buffer `id`, so the host copies back only what changed.
    pub buffers_dirty: u32,
    /// The stream being processed, for `request.*`, `source.*` and other
    /// properties.
    pub stream: Option<std::sync::Arc<super::properties::StreamProps>>,
    /// HTTP calls the plugin made during the current callback; the host
    /// starts them when it returns.
    pub callouts: Vec<super::callout::Callout>,
    pub last_token: u32,
    /// The endpoint the plugin chose for this stream
    /// (`proxy_set_upstream_override_host`), taken by the host after the
    /// call.
    pub override_host: Option<std::net::SocketAddr>,
    /// What a control-plane hook handed back (`portico_return`).
    pub returned: Option<Vec<u8>>,
    /// Set (to the per-call deadline in epoch ticks, restarted after the
    /// wait) on control instances allowed to block in
    /// `portico_http_call`.
    pub blocking_calls: Option<u64>,
    /// How to tell this instance that a queue it registered has data
    /// (`proxy_on_queue_ready`); none for instances that cannot be told
    /// (checks, control calls).
    pub queue_notifier: Option<QueueNotifier>,
    /// The contexts that exist: the root context and the live stream
    /// contexts (`proxy_set_effective_context` accepts only these).
    /// Keyed by ids the host hands out, never by the plugin's choice, so
    /// a fast hash (one insert and one remove per request).
    pub live_contexts: rustc_hash::FxHashSet<u32>,
    pub started: Option<Instant>,
    /// The instance's exports host calls use, found on first use.
    pub guest: GuestExports,
}

/// The guest's memory and allocator, looked up by name once per instance:
/// an export lookup hashes the name and costs more than most host calls,
/// and reading or handing over a value needs them several times a call.
/// They belong to the store this state lives in, so they never go stale.
#[derive(Default)]
pub struct GuestExports {
    memory: Option<wasmtime::Memory>,
    /// `None` until looked up; `Some(None)` when the module has none.
    alloc: Option<Option<wasmtime::TypedFunc<i32, i32>>>,
}

impl std::fmt::Debug for GuestExports {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuestExports")
            .field("memory", &self.memory.is_some())
            .field("alloc", &matches!(self.alloc, Some(Some(_))))
            .finish()
    }
}

type C<'a> = Caller<'a, HostState<VmState>>;

fn memory(c: &mut C<'_>) -> Option<wasmtime::Memory> {
    if let Some(m) = c.data().data.guest.memory {
        return Some(m);
    }
    match c.get_export("memory") {
        Some(Extern::Memory(m)) => {
            c.data_mut().data.guest.memory = Some(m);
            Some(m)
        }
        _ => None,
    }
}

/// The plugin's allocator (`proxy_on_memory_allocate`, or the older
/// names), moved out of the cache for the call: cloning a typed function
/// costs a type-registry reference. Put it back with [`return_alloc`].
fn take_alloc(c: &mut C<'_>) -> Option<wasmtime::TypedFunc<i32, i32>> {
    // Taken while in use: an allocator that calls back into a host
    // function that hands over data finds none and looks it up again.
    match c.data_mut().data.guest.alloc.take() {
        Some(Some(f)) => return Some(f),
        Some(None) => {
            c.data_mut().data.guest.alloc = Some(None);
            return None;
        }
        None => {}
    }
    let found = ["proxy_on_memory_allocate", "portico_alloc", "malloc"]
        .iter()
        .find_map(|n| c.get_export(n).and_then(Extern::into_func))
        .and_then(|f| f.typed::<i32, i32>(&*c).ok());
    if found.is_none() {
        c.data_mut().data.guest.alloc = Some(None);
    }
    found
}

fn return_alloc(c: &mut C<'_>, alloc: wasmtime::TypedFunc<i32, i32>) {
    c.data_mut().data.guest.alloc = Some(Some(alloc));
}

fn read(c: &mut C<'_>, ptr: i32, len: i32) -> Result<Vec<u8>, i32> {
    let m = memory(c).ok_or(status::INVALID_MEMORY_ACCESS)?;
    let (ptr, len) = (ptr as u32 as usize, len as u32 as usize);
    m.data(&*c)
        .get(ptr..ptr.checked_add(len).ok_or(status::INVALID_MEMORY_ACCESS)?)
        .map(<[u8]>::to_vec)
        .ok_or(status::INVALID_MEMORY_ACCESS)
}

fn read_str(c: &mut C<'_>, ptr: i32, len: i32) -> Result<String, i32> {
    read(c, ptr, len).map(|b| String::from_utf8_lossy(&b).into_owned())
}

fn write(c: &mut C<'_>, ptr: i32, bytes: &[u8]) -> Result<(), i32> {
    let m = memory(c).ok_or(status::INVALID_MEMORY_ACCESS)?;
    m.write(&mut *c, ptr as u32 as usize, bytes)
        .map_err(|_| status::INVALID_MEMORY_ACCESS)
}

fn write_u32(c: &mut C<'_>, ptr: i32, v: u32) -> Result<(), i32> {
    write(c, ptr, &v.to_le_bytes())
}

/// Copies `bytes` into memory the plugin allocates, and writes the
/// pointer and length where it asked.
fn give(c: &mut C<'_>, bytes: &[u8], ret_ptr: i32, ret_len: i32) -> Result<(), i32> {
    let len = i32::try_from(bytes.len()).map_err(|_| status::BAD_ARGUMENT)?;
    let alloc = take_alloc(c).ok_or(status::INTERNAL_FAILURE)?;
    // An empty value still gets a (valid) pointer, as SDKs expect.
    let called = alloc.call(&mut *c, len.max(1));
    return_alloc(c, alloc);
    let ptr = match called {
        Ok(p) => p,
        Err(e) => {
            // The allocator trapped or ran past the deadline: the whole
            // call fails with it (the instance is discarded, the fail policy
            // applies), whatever the plugin does with this status.
            c.data_mut().nested_failure = Some(e);
            return Err(status::INTERNAL_FAILURE);
        }
    };
    if ptr == 0 {
        return Err(status::INTERNAL_FAILURE);
    }
    write(c, ptr, bytes)?;
    write_u32(c, ret_ptr, ptr as u32)?;
    write_u32(c, ret_len, len as u32)
}

fn status_of(r: Result<(), i32>) -> i32 {
    r.err().unwrap_or(status::OK)
}

/// Header maps on the wire (spec, "Serialization"): a count, the key and
/// value lengths, then each key and value followed by a NUL.
pub fn serialize_map(pairs: &[(String, Vec<u8>)]) -> Vec<u8> {
    super::headers::serialize(pairs.iter().map(|(k, v)| (k.as_bytes(), v.as_slice())))
}

pub fn deserialize_map(bytes: &[u8]) -> Option<Vec<(String, Vec<u8>)>> {
    if bytes.len() <= 1 {
        return Some(Vec::new());
    }
    let u32_at = |i: usize| -> Option<usize> {
        Some(u32::from_le_bytes(bytes.get(i..i + 4)?.try_into().ok()?) as usize)
    };
    let n = u32_at(0)?;
    let mut sizes = Vec::with_capacity(n.min(1024));
    for i in 0..n {
        sizes.push((u32_at(4 + i * 8)?, u32_at(8 + i * 8)?));
    }
    let mut at = 4 + n * 8;
    let mut out = Vec::with_capacity(sizes.len());
    for (kl, vl) in sizes {
        let k = bytes.get(at..at + kl)?;
        at += kl + 1;
        let v = bytes.get(at..at + vl)?;
        at += vl + 1;
        out.push((String::from_utf8_lossy(k).into_owned(), v.to_vec()));
    }
    Some(out)
}

/// Shared data: key → (value, cas).
type SharedData = HashMap<String, (Vec<u8>, u32)>;
/// Process-wide, created on first use.
static SHARED: Mutex<Option<SharedData>> = Mutex::new(None);
/// Process-wide shared queues: id - 1 → (name, items).
static QUEUES: Mutex<Vec<(String, VecDeque<Vec<u8>>)>> = Mutex::new(Vec::new());
/// Calls `proxy_on_queue_ready(queue id)` on the instance that holds it.
#[derive(Clone)]
pub struct QueueNotifier(pub std::sync::Arc<dyn Fn(u32) + Send + Sync>);

impl std::fmt::Debug for QueueNotifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("QueueNotifier")
    }
}
/// Queue id → the instance that registered it last (as in Envoy, the
/// registering VM is told).
static QUEUE_OWNERS: Mutex<Vec<(u32, QueueNotifier)>> = Mutex::new(Vec::new());
/// Process-wide plugin metrics: id - 1 → (plugin, name, type, value).
static METRICS: Mutex<Vec<(String, String, i32, i64)>> = Mutex::new(Vec::new());

fn map_known(id: i32) -> bool {
    (0..=7).contains(&id)
}

/// Builds the linker with every function of the ABI table.
pub fn linker(engine: &Engine) -> Result<Linker<HostState<VmState>>, String> {
    let mut l: Linker<HostState<VmState>> = Linker::new(engine);
    link(&mut l).map_err(|e| format!("cannot link the proxy-wasm host functions: {e}"))?;
    Ok(l)
}

fn log_at(plugin: &str, level: i32, msg: &str) -> bool {
    match level {
        0 => tracing::trace!(plugin, "{msg}"),
        1 => tracing::debug!(plugin, "{msg}"),
        2 => tracing::info!(plugin, "{msg}"),
        3 => tracing::warn!(plugin, "{msg}"),
        4 | 5 => tracing::error!(plugin, "{msg}"),
        _ => return false,
    }
    true
}

fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

fn link(l: &mut Linker<HostState<VmState>>) -> wasmtime::Result<()> {
    const E: &str = "env";

    // Context lifecycle.
    // The host finishes a context as soon as its callbacks return (it never
    // keeps a `proxy_on_done` pending), so there is never anything for
    // `proxy_done` to complete: `NotFound`, as the spec and Envoy answer.
    l.func_wrap(E, "proxy_done", |_: C<'_>| status::NOT_FOUND)?;
    l.func_wrap(E, "proxy_set_effective_context", |mut c: C<'_>, id: i32| {
        let d = &mut c.data_mut().data;
        if !d.live_contexts.contains(&(id as u32)) {
            return status::BAD_ARGUMENT;
        }
        d.effective_context = id as u32;
        status::OK
    })?;

    // Logging, clocks, timers.
    l.func_wrap(
        E,
        "proxy_log",
        |mut c: C<'_>, level: i32, p: i32, n: i32| match read_str(&mut c, p, n) {
            Ok(msg) => {
                if log_at(&c.data().data.plugin, level, &msg) {
                    status::OK
                } else {
                    status::BAD_ARGUMENT
                }
            }
            Err(e) => e,
        },
    )?;
    l.func_wrap(E, "proxy_get_log_level", |mut c: C<'_>, ret: i32| {
        // The most verbose level the subscriber would record.
        let level = if tracing::enabled!(tracing::Level::TRACE) {
            0
        } else if tracing::enabled!(tracing::Level::DEBUG) {
            1
        } else {
            2
        };
        status_of(write_u32(&mut c, ret, level))
    })?;
    l.func_wrap(
        E,
        "proxy_get_current_time_nanoseconds",
        |mut c: C<'_>, ret: i32| status_of(write(&mut c, ret, &now_nanos().to_le_bytes())),
    )?;
    l.func_wrap(
        E,
        "proxy_set_tick_period_milliseconds",
        |mut c: C<'_>, ms: i32| {
            c.data_mut().data.tick_period_ms = ms as u32;
            status::OK
        },
    )?;

    // Buffers.
    l.func_wrap(
        E,
        "proxy_get_buffer_bytes",
        |mut c: C<'_>, id: i32, start: i32, max: i32, ret_p: i32, ret_n: i32| {
            if !(0..=8).contains(&id) {
                return status::BAD_ARGUMENT;
            }
            let Some(buf) = c.data().data.buffers.get(&id) else {
                return status::NOT_FOUND;
            };
            let (start, max) = (start as u32 as usize, max as u32 as usize);
            if start > buf.len() {
                return status::BAD_ARGUMENT;
            }
            let end = start.saturating_add(max).min(buf.len());
            let slice = buf.as_slice()[start..end].to_vec();
            status_of(give(&mut c, &slice, ret_p, ret_n))
        },
    )?;
    l.func_wrap(
        E,
        "proxy_set_buffer_bytes",
        |mut c: C<'_>, id: i32, start: i32, size: i32, p: i32, n: i32| {
            if !(0..=8).contains(&id) {
                return status::BAD_ARGUMENT;
            }
            let value = match read(&mut c, p, n) {
                Ok(v) => v,
                Err(e) => return e,
            };
            let Some(buf) = c.data_mut().data.buffers.get_mut(&id) else {
                return status::NOT_FOUND;
            };
            let buf = buf.to_mut();
            let start = (start as u32 as usize).min(buf.len());
            let end = start.saturating_add(size as u32 as usize).min(buf.len());
            buf.splice(start..end, value);
            c.data_mut().data.buffers_dirty |= 1 << id;
            status::OK
        },
    )?;
    l.func_wrap(
        E,
        "proxy_get_buffer_status",
        |mut c: C<'_>, id: i32, ret_size: i32, ret_flags: i32| {
            if !(0..=8).contains(&id) {
                return status::BAD_ARGUMENT;
            }
            let Some(len) = c.data().data.buffers.get(&id).map(|b| b.len()) else {
                return status::NOT_FOUND;
            };
            status_of(
                write_u32(&mut c, ret_size, len as u32)
                    .and_then(|_| write_u32(&mut c, ret_flags, 0)),
            )
        },
    )?;

    // Header maps.
    l.func_wrap(
        E,
        "proxy_get_header_map_size",
        |mut c: C<'_>, id: i32, ret: i32| {
            if !map_known(id) {
                return status::BAD_ARGUMENT;
            }
            let size = c
                .data()
                .data
                .maps
                .get(&id)
                .map(|m| m.serialize().len())
                .unwrap_or(0);
            status_of(write_u32(&mut c, ret, size as u32))
        },
    )?;
    l.func_wrap(
        E,
        "proxy_get_header_map_pairs",
        |mut c: C<'_>, id: i32, ret_p: i32, ret_n: i32| {
            if !map_known(id) {
                return status::BAD_ARGUMENT;
            }
            let bytes = c
                .data()
                .data
                .maps
                .get(&id)
                .map(|m| m.serialize())
                .unwrap_or_default();
            status_of(give(&mut c, &bytes, ret_p, ret_n))
        },
    )?;
    l.func_wrap(
        E,
        "proxy_set_header_map_pairs",
        |mut c: C<'_>, id: i32, p: i32, n: i32| {
            if !map_known(id) {
                return status::BAD_ARGUMENT;
            }
            let bytes = match read(&mut c, p, n) {
                Ok(b) => b,
                Err(e) => return e,
            };
            let Some(pairs) = deserialize_map(&bytes) else {
                return status::BAD_ARGUMENT;
            };
            if !pairs
                .iter()
                .all(|(k, v)| valid_field(&k.to_ascii_lowercase(), v))
            {
                return status::BAD_ARGUMENT;
            }
            let pairs = pairs
                .into_iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v))
                .collect();
            let d = &mut c.data_mut().data;
            // Into the slot, not replacing it: a proxy map it holds must
            // go back to the proxy, which applies the difference.
            *d.maps.get_or_default(id).pairs_mut() = pairs;
            d.maps_dirty |= 1 << id;
            status::OK
        },
    )?;
    l.func_wrap(
        E,
        "proxy_get_header_map_value",
        |mut c: C<'_>, id: i32, kp: i32, kn: i32, ret_p: i32, ret_n: i32| {
            if !map_known(id) {
                return status::BAD_ARGUMENT;
            }
            let key = match read_str(&mut c, kp, kn) {
                Ok(k) => k.to_ascii_lowercase(),
                Err(e) => return e,
            };
            let value = c.data().data.maps.get(&id).and_then(|m| m.get(&key));
            match value {
                Some(v) => status_of(give(&mut c, &v, ret_p, ret_n)),
                None => status::NOT_FOUND,
            }
        },
    )?;
    fn edit(c: &mut C<'_>, id: i32, kp: i32, kn: i32, vp: i32, vn: i32, replace: bool) -> i32 {
        if !map_known(id) {
            return status::BAD_ARGUMENT;
        }
        let (key, value) = match (read_str(c, kp, kn), read(c, vp, vn)) {
            (Ok(k), Ok(v)) => (k.to_ascii_lowercase(), v),
            (Err(e), _) | (_, Err(e)) => return e,
        };
        if !valid_field(&key, &value) {
            return status::BAD_ARGUMENT;
        }
        let d = &mut c.data_mut().data;
        d.maps_dirty |= 1 << id;
        let map = d.maps.get_or_default(id).pairs_mut();
        if replace {
            map.retain(|(k, _)| *k != key);
        }
        map.push((key, value));
        status::OK
    }
    l.func_wrap(
        E,
        "proxy_add_header_map_value",
        |mut c: C<'_>, id: i32, kp: i32, kn: i32, vp: i32, vn: i32| {
            edit(&mut c, id, kp, kn, vp, vn, false)
        },
    )?;
    l.func_wrap(
        E,
        "proxy_replace_header_map_value",
        |mut c: C<'_>, id: i32, kp: i32, kn: i32, vp: i32, vn: i32| {
            edit(&mut c, id, kp, kn, vp, vn, true)
        },
    )?;
    l.func_wrap(
        E,
        "proxy_remove_header_map_value",
        |mut c: C<'_>, id: i32, kp: i32, kn: i32| {
            if !map_known(id) {
                return status::BAD_ARGUMENT;
            }
            let key = match read_str(&mut c, kp, kn) {
                Ok(k) => k.to_ascii_lowercase(),
                Err(e) => return e,
            };
            let d = &mut c.data_mut().data;
            if let Some(m) = d.maps.get_mut(&id) {
                m.pairs_mut().retain(|(k, _)| *k != key);
                d.maps_dirty |= 1 << id;
            }
            status::OK
        },
    )?;

    // Streams.
    l.func_wrap(E, "proxy_continue_stream", |mut c: C<'_>, t: i32| {
        if !(0..=3).contains(&t) {
            return status::BAD_ARGUMENT;
        }
        let d = &mut c.data_mut().data;
        d.continued.push((d.effective_context, t));
        status::OK
    })?;
    l.func_wrap(E, "proxy_close_stream", |mut c: C<'_>, t: i32| {
        if !(0..=3).contains(&t) {
            return status::BAD_ARGUMENT;
        }
        let d = &mut c.data_mut().data;
        d.closed.push((d.effective_context, t));
        status::OK
    })?;
    l.func_wrap(E, "proxy_get_status", |_: C<'_>, _: i32, _: i32, _: i32| {
        // Only meaningful in an HTTP-call response, which is not wired yet.
        status::NOT_FOUND
    })?;

    // HTTP.
    l.func_wrap(
        E,
        "proxy_send_local_response",
        |mut c: C<'_>,
         code: i32,
         dp: i32,
         dn: i32,
         bp: i32,
         bn: i32,
         hp: i32,
         hn: i32,
         _grpc: i32| {
            let details = match read_str(&mut c, dp, dn) {
                Ok(d) => d,
                Err(e) => return e,
            };
            let body = match read(&mut c, bp, bn) {
                Ok(b) => b,
                Err(e) => return e,
            };
            let headers = match read(&mut c, hp, hn).map(|b| deserialize_map(&b)) {
                Ok(Some(h)) => h,
                Ok(None) => return status::BAD_ARGUMENT,
                Err(e) => return e,
            };
            let context = c.data().data.effective_context;
            c.data_mut().data.local_response = Some(LocalResponse {
                context,
                status: code as u32,
                details,
                headers,
                body,
            });
            status::OK
        },
    )?;
    l.func_wrap(
        E,
        "proxy_http_call",
        |mut c: C<'_>,
         up_p: i32,
         up_n: i32,
         h_p: i32,
         h_n: i32,
         b_p: i32,
         b_n: i32,
         _t_p: i32,
         _t_n: i32,
         timeout_ms: i32,
         ret_token: i32| {
            let upstream = match read_str(&mut c, up_p, up_n) {
                Ok(u) => u,
                Err(e) => return e,
            };
            let headers = match read(&mut c, h_p, h_n).map(|b| deserialize_map(&b)) {
                Ok(Some(h)) => h,
                Ok(None) => return status::BAD_ARGUMENT,
                Err(e) => return e,
            };
            let body = match read(&mut c, b_p, b_n) {
                Ok(b) => b,
                Err(e) => return e,
            };
            if let Err(why) = super::callout::resolve(&upstream) {
                tracing::debug!(plugin = %c.data().data.plugin, %upstream, %why, "HTTP callout refused");
                return status::BAD_ARGUMENT;
            }
            let d = &mut c.data_mut().data;
            d.last_token = d.last_token.wrapping_add(1).max(1);
            let token = d.last_token;
            d.callouts.push(super::callout::Callout {
                token,
                context: d.effective_context,
                upstream,
                headers: headers
                    .into_iter()
                    .map(|(k, v)| (k.to_ascii_lowercase(), v))
                    .collect(),
                body,
                timeout: std::time::Duration::from_millis(
                    (timeout_ms as u32).clamp(1, 60_000).into(),
                ),
            });
            status_of(write_u32(&mut c, ret_token, token))
        },
    )?;
    // Upstream choice (Portico's extension, named after Higress's):
    // the candidate endpoints of the stream's backend, and the override.
    l.func_wrap(
        E,
        "proxy_get_upstream_hosts",
        |mut c: C<'_>, ret_p: i32, ret_n: i32| {
            let encoded = c
                .data()
                .data
                .stream
                .as_ref()
                .and_then(|s| s.candidates.as_ref())
                .map(|cands| cands.encoded());
            match encoded {
                None => status::NOT_FOUND,
                Some(e) => status_of(give(&mut c, &e, ret_p, ret_n)),
            }
        },
    )?;
    l.func_wrap(
        E,
        "proxy_set_upstream_override_host",
        |mut c: C<'_>, p: i32, n: i32| {
            let addr = match read_str(&mut c, p, n).map(|s| s.parse::<std::net::SocketAddr>()) {
                Ok(Ok(a)) => a,
                Ok(Err(_)) => return status::BAD_ARGUMENT,
                Err(e) => return e,
            };
            let d = &mut c.data_mut().data;
            let known = d
                .stream
                .as_ref()
                .and_then(|s| s.candidates.as_ref())
                .map(|cands| cands.contains(addr));
            match known {
                None => status::NOT_FOUND,
                Some(false) => status::BAD_ARGUMENT,
                Some(true) => {
                    d.override_host = Some(addr);
                    status::OK
                }
            }
        },
    )?;
    l.func_wrap(
        E,
        "portico_return",
        |mut c: C<'_>, p: i32, n: i32| match read(&mut c, p, n) {
            Ok(bytes) => {
                c.data_mut().data.returned = Some(bytes);
                status::OK
            }
            Err(e) => e,
        },
    )?;
    l.func_wrap(
        E,
        "portico_http_call",
        |mut c: C<'_>, p: i32, n: i32, ret_p: i32, ret_n: i32| {
            let Some(deadline) = c.data().data.blocking_calls else {
                tracing::warn!(plugin = %c.data().data.plugin, "portico_http_call is for control-plane hooks that may wait; data-plane plugins use proxy_http_call");
                return status::UNIMPLEMENTED;
            };
            let bytes = match read(&mut c, p, n) {
                Ok(b) => b,
                Err(e) => return e,
            };
            let answer = match serde_json::from_slice::<super::control_http::Request>(&bytes) {
                Ok(req) => {
                    let answer = super::control_http::perform(&req);
                    metrics::counter!("portico_plugin_callouts_total", "plugin" => c.data().data.plugin.clone(), "result" => if answer.error.is_none() { "ok" } else { "error" })
                        .increment(1);
                    answer
                }
                Err(e) => super::control_http::Response {
                    error: Some(format!("portico_http_call request: {e}")),
                    ..Default::default()
                },
            };
            // The wait is not the plugin's running time.
            c.as_context_mut().set_epoch_deadline(deadline);
            let json = serde_json::to_vec(&answer).unwrap_or_default();
            status_of(give(&mut c, &json, ret_p, ret_n))
        },
    )?;
    // Not supported (gRPC): linkable, and answered with UNIMPLEMENTED.
    for name in [
        "proxy_grpc_call",
        "proxy_grpc_stream",
        "proxy_grpc_send",
        "proxy_grpc_cancel",
        "proxy_grpc_close",
    ] {
        let ty = super::abi::func_type(l.engine(), E, name).expect("in the ABI table");
        l.func_new(E, name, ty, |_, _, results| {
            results[0] = wasmtime::Val::I32(status::UNIMPLEMENTED);
            Ok(())
        })?;
    }

    // Shared data, with compare-and-swap across every instance.
    l.func_wrap(
        E,
        "proxy_set_shared_data",
        |mut c: C<'_>, kp: i32, kn: i32, vp: i32, vn: i32, cas: i32| {
            let (key, value) = match (read_str(&mut c, kp, kn), read(&mut c, vp, vn)) {
                (Ok(k), Ok(v)) => (k, v),
                (Err(e), _) | (_, Err(e)) => return e,
            };
            let mut shared = SHARED.lock().unwrap_or_else(|e| e.into_inner());
            let map = shared.get_or_insert_with(HashMap::new);
            let current = map.get(&key).map(|(_, c)| *c).unwrap_or(0);
            if cas != 0 && cas as u32 != current {
                return status::CAS_MISMATCH;
            }
            map.insert(key, (value, current.wrapping_add(1).max(1)));
            status::OK
        },
    )?;
    l.func_wrap(
        E,
        "proxy_get_shared_data",
        |mut c: C<'_>, kp: i32, kn: i32, ret_p: i32, ret_n: i32, ret_cas: i32| {
            let key = match read_str(&mut c, kp, kn) {
                Ok(k) => k,
                Err(e) => return e,
            };
            let found = SHARED
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_ref()
                .and_then(|m| m.get(&key).cloned());
            match found {
                None => status::NOT_FOUND,
                Some((v, cas)) => status_of(
                    give(&mut c, &v, ret_p, ret_n).and_then(|_| write_u32(&mut c, ret_cas, cas)),
                ),
            }
        },
    )?;

    // Shared queues.
    l.func_wrap(
        E,
        "proxy_register_shared_queue",
        |mut c: C<'_>, np: i32, nn: i32, ret: i32| {
            let name = match read_str(&mut c, np, nn) {
                Ok(n) => n,
                Err(e) => return e,
            };
            let id = {
                let mut q = QUEUES.lock().unwrap_or_else(|e| e.into_inner());
                match q.iter().position(|(n, _)| *n == name) {
                    Some(i) => i + 1,
                    None => {
                        q.push((name, VecDeque::new()));
                        q.len()
                    }
                }
            };
            if let Some(n) = c.data().data.queue_notifier.clone() {
                let mut owners = QUEUE_OWNERS.lock().unwrap_or_else(|e| e.into_inner());
                owners.retain(|(q, _)| *q != id as u32);
                owners.push((id as u32, n));
            }
            status_of(write_u32(&mut c, ret, id as u32))
        },
    )?;
    l.func_wrap(
        E,
        "proxy_resolve_shared_queue",
        |mut c: C<'_>, _vp: i32, _vn: i32, np: i32, nn: i32, ret: i32| {
            // One VM per plugin: the VM id does not narrow the search.
            let name = match read_str(&mut c, np, nn) {
                Ok(n) => n,
                Err(e) => return e,
            };
            let id = QUEUES
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .position(|(n, _)| *n == name);
            match id {
                Some(i) => status_of(write_u32(&mut c, ret, i as u32 + 1)),
                None => status::NOT_FOUND,
            }
        },
    )?;
    l.func_wrap(
        E,
        "proxy_enqueue_shared_queue",
        |mut c: C<'_>, id: i32, vp: i32, vn: i32| {
            let value = match read(&mut c, vp, vn) {
                Ok(v) => v,
                Err(e) => return e,
            };
            let pushed = {
                let mut q = QUEUES.lock().unwrap_or_else(|e| e.into_inner());
                match q.get_mut((id as u32 as usize).wrapping_sub(1)) {
                    Some((_, items)) => {
                        items.push_back(value);
                        true
                    }
                    None => false,
                }
            };
            if !pushed {
                return status::NOT_FOUND;
            }
            // Told outside the queue lock: the owner dequeues under it.
            let owner = QUEUE_OWNERS
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .find(|(q, _)| *q == id as u32)
                .map(|(_, n)| n.clone());
            if let Some(notify) = owner {
                (notify.0)(id as u32);
            }
            status::OK
        },
    )?;
    l.func_wrap(
        E,
        "proxy_dequeue_shared_queue",
        |mut c: C<'_>, id: i32, ret_p: i32, ret_n: i32| {
            let item = {
                let mut q = QUEUES.lock().unwrap_or_else(|e| e.into_inner());
                match q.get_mut((id as u32 as usize).wrapping_sub(1)) {
                    None => return status::NOT_FOUND,
                    Some((_, items)) => items.pop_front(),
                }
            };
            match item {
                None => status::EMPTY,
                Some(v) => status_of(give(&mut c, &v, ret_p, ret_n)),
            }
        },
    )?;

    // Metrics: exported as portico_plugin_metric{plugin,name}.
    l.func_wrap(
        E,
        "proxy_define_metric",
        |mut c: C<'_>, kind: i32, np: i32, nn: i32, ret: i32| {
            if !(0..=2).contains(&kind) {
                return status::BAD_ARGUMENT;
            }
            let name = match read_str(&mut c, np, nn) {
                Ok(n) => n,
                Err(e) => return e,
            };
            let plugin = c.data().data.plugin.clone();
            let id = {
                let mut m = METRICS.lock().unwrap_or_else(|e| e.into_inner());
                match m
                    .iter()
                    .position(|(p, n, k, _)| *p == plugin && *n == name && *k == kind)
                {
                    Some(i) => i + 1,
                    None => {
                        m.push((plugin, name, kind, 0));
                        m.len()
                    }
                }
            };
            status_of(write_u32(&mut c, ret, id as u32))
        },
    )?;
    // Envoy's semantics per metric type (kind 0 counter, 1 gauge, 2
    // histogram): recording a counter adds to it (SDK counters rely on
    // that), recording a gauge sets it, recording a histogram adds a
    // sample; incrementing takes a positive step for a counter, any step
    // for a gauge, and is refused for a histogram.
    fn update(id: i32, f: impl FnOnce(i32, i64) -> Option<i64>) -> i32 {
        let mut m = METRICS.lock().unwrap_or_else(|e| e.into_inner());
        let Some((plugin, name, kind, value)) = m.get_mut((id as u32 as usize).wrapping_sub(1))
        else {
            return status::NOT_FOUND;
        };
        match f(*kind, *value) {
            None => status::BAD_ARGUMENT,
            Some(v) => {
                *value = v;
                if *kind == 2 {
                    metrics::histogram!("portico_plugin_histogram", "plugin" => plugin.clone(), "name" => name.clone())
                        .record(v as f64);
                } else {
                    metrics::gauge!("portico_plugin_metric", "plugin" => plugin.clone(), "name" => name.clone())
                        .set(v as f64);
                }
                status::OK
            }
        }
    }
    l.func_wrap(E, "proxy_record_metric", |_: C<'_>, id: i32, v: i64| {
        update(id, |kind, cur| match kind {
            0 => (v >= 0).then(|| cur.saturating_add(v)),
            _ => Some(v),
        })
    })?;
    l.func_wrap(E, "proxy_increment_metric", |_: C<'_>, id: i32, d: i64| {
        update(id, |kind, cur| match kind {
            0 => (d > 0).then(|| cur.saturating_add(d)),
            1 => Some(cur.saturating_add(d)),
            _ => None,
        })
    })?;
    l.func_wrap(E, "proxy_get_metric", |mut c: C<'_>, id: i32, ret: i32| {
        let v = METRICS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get((id as u32 as usize).wrapping_sub(1))
            .map(|m| m.3);
        match v {
            None => status::NOT_FOUND,
            Some(v) => status_of(write(&mut c, ret, &(v as u64).to_le_bytes())),
        }
    })?;

    // Properties: paths arrive as NUL-separated segments.
    l.func_wrap(
        E,
        "proxy_get_property",
        |mut c: C<'_>, pp: i32, pn: i32, ret_p: i32, ret_n: i32| {
            let path = match read(&mut c, pp, pn) {
                Ok(p) => property_path(&p),
                Err(e) => return e,
            };
            let st = &c.data().data;
            let value = match path.as_str() {
                "plugin_name" => Some(st.plugin.clone().into_bytes()),
                "plugin_root_id" => Some(st.root_id.clone().into_bytes()),
                // Set by the plugin, then what the stream says.
                _ => st.properties.get(&path).cloned().or_else(|| {
                    st.stream.as_ref().and_then(|s| {
                        s.get(&path, st.maps.get(&super::properties::REQUEST_HEADERS))
                    })
                }),
            };
            match value {
                None => status::NOT_FOUND,
                Some(v) => status_of(give(&mut c, &v, ret_p, ret_n)),
            }
        },
    )?;
    l.func_wrap(
        E,
        "proxy_set_property",
        |mut c: C<'_>, pp: i32, pn: i32, vp: i32, vn: i32| {
            let (path, value) = match (read(&mut c, pp, pn), read(&mut c, vp, vn)) {
                (Ok(p), Ok(v)) => (property_path(&p), v),
                (Err(e), _) | (_, Err(e)) => return e,
            };
            c.data_mut().data.properties.insert(path, value);
            status::OK
        },
    )?;
    l.func_wrap(
        E,
        "proxy_call_foreign_function",
        |_: C<'_>, _: i32, _: i32, _: i32, _: i32, _: i32, _: i32| status::NOT_FOUND,
    )?;

    for module in super::abi::WASI_MODULES {
        link_wasi(l, module)?;
    }
    Ok(())
}

/// WASI preview 1 under one module name. Plugins are sandboxed: no files,
/// sockets, environment or arguments. Standard output and error are the
/// plugin's log (info and error) and behave as a terminal (so C stdio
/// flushes per line); the rest answers as Envoy's host does: success for
/// what is harmless on stdio, `ENOTSUP`/`ENOSYS`/`EBADF` otherwise, and an
/// empty set of preopened directories, which wasi-libc's start-up needs to
/// see as `EBADF` on descriptor 3.
fn link_wasi(l: &mut Linker<HostState<VmState>>, module: &'static str) -> wasmtime::Result<()> {
    let stdio_out = |fd: i32| fd == 1 || fd == 2;
    l.func_wrap(
        module,
        "fd_write",
        |mut c: C<'_>, fd: i32, iovs: i32, n: i32, ret: i32| -> i32 {
            let level = match fd {
                1 => 2,
                2 => 4,
                _ => return errno::BADF,
            };
            let mut text = Vec::new();
            for i in 0..n.max(0) {
                let Ok(iov) = read(&mut c, iovs + i * 8, 8) else {
                    return errno::FAULT;
                };
                let p = i32::from_le_bytes(iov[0..4].try_into().expect("4 bytes"));
                let len = i32::from_le_bytes(iov[4..8].try_into().expect("4 bytes"));
                match read(&mut c, p, len) {
                    Ok(b) => text.extend_from_slice(&b),
                    Err(_) => return errno::FAULT,
                }
            }
            let msg = String::from_utf8_lossy(&text);
            log_at(&c.data().data.plugin, level, msg.trim_end());
            match write_u32(&mut c, ret, text.len() as u32) {
                Ok(()) => errno::SUCCESS,
                Err(_) => errno::FAULT,
            }
        },
    )?;
    l.func_wrap(
        module,
        "clock_time_get",
        |mut c: C<'_>, id: i32, _precision: i64, ret: i32| -> i32 {
            let ns = match id {
                0 => now_nanos(),
                1 => {
                    let started = *c.data_mut().data.started.get_or_insert_with(Instant::now);
                    started.elapsed().as_nanos() as u64
                }
                _ => return errno::NOTSUP,
            };
            wasi_write(&mut c, ret, &ns.to_le_bytes())
        },
    )?;
    l.func_wrap(
        module,
        "random_get",
        |mut c: C<'_>, p: i32, n: i32| -> i32 {
            if n as u32 > 1 << 16 {
                return errno::INVAL;
            }
            let mut buf = vec![0u8; n as u32 as usize];
            if getrandom::getrandom(&mut buf).is_err() {
                return errno::NOTSUP;
            }
            wasi_write(&mut c, p, &buf)
        },
    )?;
    // No environment and no arguments: a plugin sees nothing of the host's.
    for name in ["environ_sizes_get", "args_sizes_get"] {
        l.func_wrap(module, name, |mut c: C<'_>, a: i32, b: i32| -> i32 {
            match write_u32(&mut c, a, 0).and_then(|_| write_u32(&mut c, b, 0)) {
                Ok(()) => errno::SUCCESS,
                Err(_) => errno::FAULT,
            }
        })?;
    }
    for name in ["environ_get", "args_get"] {
        l.func_wrap(module, name, |_: C<'_>, _: i32, _: i32| -> i32 {
            errno::SUCCESS
        })?;
    }
    l.func_wrap(
        module,
        "proc_exit",
        |_: C<'_>, code: i32| -> wasmtime::Result<()> {
            Err(wasmtime::Error::msg(format!(
                "plugin called proc_exit({code})"
            )))
        },
    )?;
    l.func_wrap(
        module,
        "clock_res_get",
        |mut c: C<'_>, id: i32, ret: i32| -> i32 {
            if !(0..=1).contains(&id) {
                return errno::NOTSUP;
            }
            wasi_write(&mut c, ret, &1u64.to_le_bytes())
        },
    )?;
    l.func_wrap(
        module,
        "fd_fdstat_get",
        move |mut c: C<'_>, fd: i32, ret: i32| -> i32 {
            if !stdio_out(fd) {
                return errno::BADF;
            }
            // fdstat: filetype u8 (character device), flags u16, then
            // rights base and inheriting (u64 each): write only.
            let mut stat = [0u8; 24];
            stat[0] = 2;
            stat[8..16].copy_from_slice(&RIGHT_FD_WRITE.to_le_bytes());
            wasi_write(&mut c, ret, &stat)
        },
    )?;
    l.func_wrap(
        module,
        "fd_filestat_get",
        move |mut c: C<'_>, fd: i32, ret: i32| -> i32 {
            if !stdio_out(fd) {
                return errno::BADF;
            }
            // filestat (64 bytes): all zero but the filetype at offset 16.
            let mut stat = [0u8; 64];
            stat[16] = 2;
            wasi_write(&mut c, ret, &stat)
        },
    )?;
    l.func_wrap(
        module,
        "fd_seek",
        move |mut c: C<'_>, fd: i32, _off: i64, _whence: i32, ret: i32| -> i32 {
            if !(0..=2).contains(&fd) {
                return errno::BADF;
            }
            wasi_write(&mut c, ret, &0u64.to_le_bytes())
        },
    )?;
    l.func_wrap(
        module,
        "fd_tell",
        move |mut c: C<'_>, fd: i32, ret: i32| -> i32 {
            if !stdio_out(fd) {
                return errno::BADF;
            }
            wasi_write(&mut c, ret, &0u64.to_le_bytes())
        },
    )?;
    l.func_wrap(module, "fd_close", |_: C<'_>, fd: i32| -> i32 {
        if (0..=2).contains(&fd) {
            errno::SUCCESS
        } else {
            errno::BADF
        }
    })?;
    for name in ["fd_datasync", "fd_sync"] {
        l.func_wrap(module, name, move |_: C<'_>, fd: i32| -> i32 {
            if stdio_out(fd) {
                errno::SUCCESS
            } else {
                errno::BADF
            }
        })?;
    }
    l.func_wrap(
        module,
        "fd_advise",
        |_: C<'_>, _: i32, _: i64, _: i64, _: i32| -> i32 { errno::SUCCESS },
    )?;
    l.func_wrap(
        module,
        "poll_oneoff",
        |mut c: C<'_>, _in: i32, _out: i32, _n: i32, ret: i32| -> i32 {
            // Nothing to wait for; Go's runtime needs success here.
            match write_u32(&mut c, ret, 0) {
                Ok(()) => errno::SUCCESS,
                Err(_) => errno::FAULT,
            }
        },
    )?;
    l.func_wrap(module, "sched_yield", |_: C<'_>| -> i32 { errno::SUCCESS })?;
    // No preopened directories.
    l.func_wrap(
        module,
        "fd_prestat_get",
        |_: C<'_>, _: i32, _: i32| -> i32 { errno::BADF },
    )?;
    l.func_wrap(
        module,
        "fd_prestat_dir_name",
        |_: C<'_>, _: i32, _: i32, _: i32| -> i32 { errno::BADF },
    )?;
    // Everything else: no file system, no sockets, nothing to read.
    for name in [
        "fd_allocate",
        "fd_fdstat_set_rights",
        "fd_filestat_set_size",
        "fd_filestat_set_times",
        "fd_readdir",
        "fd_renumber",
        "path_create_directory",
        "path_filestat_get",
        "path_filestat_set_times",
        "path_link",
        "path_open",
        "path_readlink",
        "path_remove_directory",
        "path_rename",
        "path_symlink",
        "path_unlink_file",
        "sock_accept",
        "sock_recv",
        "sock_send",
        "sock_shutdown",
    ] {
        link_errno(l, module, name, errno::NOTSUP)?;
    }
    for name in ["fd_read", "fd_pread", "fd_pwrite", "fd_fdstat_set_flags"] {
        link_errno(l, module, name, errno::NOSYS)?;
    }
    Ok(())
}

/// Writes `bytes` at `ptr` for a WASI call: its errno.
fn wasi_write(c: &mut C<'_>, ptr: i32, bytes: &[u8]) -> i32 {
    match write(c, ptr, bytes) {
        Ok(()) => errno::SUCCESS,
        Err(_) => errno::FAULT,
    }
}

/// A WASI function that always answers `code`, typed from the ABI table.
fn link_errno(
    l: &mut Linker<HostState<VmState>>,
    module: &'static str,
    name: &'static str,
    code: i32,
) -> wasmtime::Result<()> {
    let ty = super::abi::func_type(l.engine(), module, name).expect("in the ABI table");
    l.func_new(module, name, ty, move |_, _, results| {
        results[0] = wasmtime::Val::I32(code);
        Ok(())
    })?;
    Ok(())
}

/// Whether a plugin's header edit is a field HTTP can carry: a token name
/// (or a pseudo-header, `:path`), a value without CR, LF, NUL or other
/// controls. Anything else is refused at the call (`BadArgument`), so a
/// plugin cannot split a header or smuggle a request line, and a bad edit
/// is the plugin's error, under its fail policy, not a broken response.
fn valid_field(name: &str, value: &[u8]) -> bool {
    let name_ok = match name.strip_prefix(':') {
        Some(pseudo) => {
            !pseudo.is_empty() && http::HeaderName::from_bytes(pseudo.as_bytes()).is_ok()
        }
        None => http::HeaderName::from_bytes(name.as_bytes()).is_ok(),
    };
    name_ok && http::HeaderValue::from_bytes(value).is_ok()
}

fn property_path(raw: &[u8]) -> String {
    raw.split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect::<Vec<_>>()
        .join(".")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_maps_round_trip_in_the_spec_encoding() {
        let pairs = vec![
            ("a".to_string(), b"1".to_vec()),
            ("b".to_string(), b"22".to_vec()),
        ];
        let bytes = serialize_map(&pairs);
        // The spec's own example: {"a": "1"}, {"b": "22"}.
        let mut expected = vec![2, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0];
        expected.extend_from_slice(b"a\x001\x00b\x0022\x00");
        assert_eq!(bytes, expected);
        assert_eq!(deserialize_map(&bytes).unwrap(), pairs);
        assert_eq!(deserialize_map(&[]).unwrap(), vec![]);
        assert_eq!(deserialize_map(&[0]).unwrap(), vec![]);
        assert!(
            deserialize_map(&[5, 0, 0, 0, 1]).is_none(),
            "truncated input accepted"
        );
    }

    #[test]
    fn every_function_of_the_abi_table_is_linked() {
        let engine = crate::engine().unwrap();
        let l = linker(&engine).unwrap();
        let mut store = wasmtime::Store::new(&engine, super::super::sandbox::test_state());
        for (module, name) in super::super::abi::host_function_names() {
            let f = l
                .get(&mut store, module, name)
                .ok()
                .and_then(wasmtime::Extern::into_func)
                .unwrap_or_else(|| panic!("{module}.{name} is in the ABI table but not linked"));
            assert!(
                super::super::abi::signature_matches(module, name, &f.ty(&store)),
                "{module}.{name} is linked with the wrong signature"
            );
        }
    }

    #[test]
    fn wasi_answers_as_envoys_host_under_both_module_names() {
        let engine = crate::engine().unwrap();
        let l = linker(&engine).unwrap();
        let wat = r#"(module
            (import "wasi_unstable" "fd_fdstat_get" (func $fdstat (param i32 i32) (result i32)))
            (import "wasi_snapshot_preview1" "fd_prestat_get" (func $prestat (param i32 i32) (result i32)))
            (import "wasi_unstable" "fd_close" (func $close (param i32) (result i32)))
            (import "wasi_snapshot_preview1" "fd_seek" (func $seek (param i32 i64 i32 i32) (result i32)))
            (import "wasi_unstable" "fd_read" (func $read (param i32 i32 i32 i32) (result i32)))
            (import "wasi_unstable" "path_open"
                (func $open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
            (import "wasi_unstable" "clock_res_get" (func $res (param i32 i32) (result i32)))
            (import "wasi_snapshot_preview1" "sched_yield" (func $yield (result i32)))
            (memory (export "memory") 1)
            (func (export "fdstat") (param i32) (result i32) (call $fdstat (local.get 0) (i32.const 64)))
            (func (export "prestat") (param i32) (result i32) (call $prestat (local.get 0) (i32.const 128)))
            (func (export "close") (param i32) (result i32) (call $close (local.get 0)))
            (func (export "seek") (param i32) (result i32)
                (call $seek (local.get 0) (i64.const 5) (i32.const 0) (i32.const 256)))
            (func (export "read") (result i32)
                (call $read (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0)))
            (func (export "open") (result i32)
                (call $open (i32.const 3) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0)
                    (i64.const 0) (i64.const 0) (i32.const 0) (i32.const 0)))
            (func (export "res") (param i32) (result i32) (call $res (local.get 0) (i32.const 512)))
            (func (export "yield") (result i32) (call $yield)))"#;
        let module = wasmtime::Module::new(&engine, wat).unwrap();
        let mut store = wasmtime::Store::new(&engine, super::super::sandbox::test_state());
        store.set_epoch_deadline(u64::MAX / 2);
        let instance = l.instantiate(&mut store, &module).unwrap();
        let mut call1 = |name: &str, arg: i32| {
            instance
                .get_typed_func::<i32, i32>(&mut store, name)
                .unwrap()
                .call(&mut store, arg)
                .unwrap()
        };
        assert_eq!(call1("fdstat", 1), errno::SUCCESS);
        assert_eq!(call1("fdstat", 0), errno::BADF, "stdin is not writable");
        assert_eq!(call1("prestat", 3), errno::BADF, "no preopened directory");
        assert_eq!(call1("close", 2), errno::SUCCESS);
        assert_eq!(call1("close", 7), errno::BADF);
        assert_eq!(call1("seek", 1), errno::SUCCESS);
        assert_eq!(call1("seek", 9), errno::BADF);
        assert_eq!(call1("res", 1), errno::SUCCESS);
        assert_eq!(call1("res", 9), errno::NOTSUP);
        let mut call0 = |name: &str| {
            instance
                .get_typed_func::<(), i32>(&mut store, name)
                .unwrap()
                .call(&mut store, ())
                .unwrap()
        };
        assert_eq!(call0("read"), errno::NOSYS);
        assert_eq!(call0("open"), errno::NOTSUP);
        assert_eq!(call0("yield"), errno::SUCCESS);
        let memory = instance.get_memory(&mut store, "memory").unwrap();
        let data = memory.data(&store);
        assert_eq!(
            data[64], 2,
            "stdout is a character device (line-buffered stdio)"
        );
        assert_eq!(
            u64::from_le_bytes(data[72..80].try_into().unwrap()),
            RIGHT_FD_WRITE
        );
        assert_eq!(u64::from_le_bytes(data[512..520].try_into().unwrap()), 1);
    }

    #[test]
    fn metrics_follow_envoys_semantics_per_type() {
        let engine = crate::engine().unwrap();
        let l = linker(&engine).unwrap();
        let wat = r#"(module
            (import "env" "proxy_define_metric" (func $define (param i32 i32 i32 i32) (result i32)))
            (import "env" "proxy_record_metric" (func $record (param i32 i64) (result i32)))
            (import "env" "proxy_increment_metric" (func $incr (param i32 i64) (result i32)))
            (import "env" "proxy_get_metric" (func $get (param i32 i32) (result i32)))
            (memory (export "memory") 1)
            (data (i32.const 0) "envoy_semantics_metric")
            (func (export "define") (param i32) (result i32)
                (drop (call $define (local.get 0) (i32.const 0) (i32.const 22) (i32.const 64)))
                (i32.load (i32.const 64)))
            (func (export "record") (param i32 i64) (result i32) (call $record (local.get 0) (local.get 1)))
            (func (export "incr") (param i32 i64) (result i32) (call $incr (local.get 0) (local.get 1)))
            (func (export "get") (param i32) (result i64)
                (drop (call $get (local.get 0) (i32.const 128)))
                (i64.load (i32.const 128))))"#;
        let module = wasmtime::Module::new(&engine, wat).unwrap();
        let mut store = wasmtime::Store::new(&engine, super::super::sandbox::test_state());
        store.set_epoch_deadline(u64::MAX / 2);
        let instance = l.instantiate(&mut store, &module).unwrap();
        let define = instance
            .get_typed_func::<i32, i32>(&mut store, "define")
            .unwrap();
        let record = instance
            .get_typed_func::<(i32, i64), i32>(&mut store, "record")
            .unwrap();
        let incr = instance
            .get_typed_func::<(i32, i64), i32>(&mut store, "incr")
            .unwrap();
        let get = instance
            .get_typed_func::<i32, i64>(&mut store, "get")
            .unwrap();
        let (counter, gauge, histogram) = (
            define.call(&mut store, 0).unwrap(),
            define.call(&mut store, 1).unwrap(),
            define.call(&mut store, 2).unwrap(),
        );
        // The C++ SDK's Counter::increment(1) twice records 1 twice.
        assert_eq!(record.call(&mut store, (counter, 1)).unwrap(), status::OK);
        assert_eq!(record.call(&mut store, (counter, 1)).unwrap(), status::OK);
        assert_eq!(get.call(&mut store, counter).unwrap(), 2);
        assert_eq!(incr.call(&mut store, (counter, 3)).unwrap(), status::OK);
        assert_eq!(get.call(&mut store, counter).unwrap(), 5);
        assert_eq!(
            incr.call(&mut store, (counter, 0)).unwrap(),
            status::BAD_ARGUMENT
        );
        assert_eq!(
            incr.call(&mut store, (counter, -1)).unwrap(),
            status::BAD_ARGUMENT
        );
        assert_eq!(get.call(&mut store, counter).unwrap(), 5);
        // A gauge is set by a record and moves both ways by an increment.
        assert_eq!(record.call(&mut store, (gauge, 7)).unwrap(), status::OK);
        assert_eq!(record.call(&mut store, (gauge, 4)).unwrap(), status::OK);
        assert_eq!(incr.call(&mut store, (gauge, -3)).unwrap(), status::OK);
        assert_eq!(get.call(&mut store, gauge).unwrap(), 1);
        // A histogram takes samples; it has no increment.
        assert_eq!(
            record.call(&mut store, (histogram, 250)).unwrap(),
            status::OK
        );
        assert_eq!(
            incr.call(&mut store, (histogram, 1)).unwrap(),
            status::BAD_ARGUMENT
        );
        assert_eq!(
            record.call(&mut store, (999_999, 1)).unwrap(),
            status::NOT_FOUND
        );
    }

    #[test]
    fn header_edits_that_http_cannot_carry_are_refused() {
        assert!(valid_field("x-tag", b"blue"));
        assert!(valid_field(":path", b"/a?b=c"));
        assert!(valid_field("x-tab", b"a\tb"));
        assert!(valid_field("x-utf8", "caf\u{e9}".as_bytes()));
        for (name, value) in [
            ("x-split", &b"a\r\nx-injected: 1"[..]),
            ("x-lf", b"a\nb"),
            ("x-nul", b"a\0b"),
            ("bad name", b"v"),
            ("x-colon:", b"v"),
            (":", b"v"),
            ("", b"v"),
        ] {
            assert!(!valid_field(name, value), "{name:?} {value:?}");
        }
    }

    /// Each host call's answer to bad arguments, as the v0.2.1 spec lists
    /// them: one row per (call, case, expected status).
    #[test]
    fn host_calls_answer_bad_arguments_with_the_specs_status_codes() {
        let engine = crate::engine().unwrap();
        let l = linker(&engine).unwrap();
        // Each export makes one call; addresses past the one page of memory
        // are invalid (0x20000), `16` holds "k", `32` an empty map.
        let wat = r#"(module
            (import "env" "proxy_log" (func $log (param i32 i32 i32) (result i32)))
            (import "env" "proxy_get_current_time_nanoseconds" (func $time (param i32) (result i32)))
            (import "env" "proxy_set_buffer_bytes" (func $setbuf (param i32 i32 i32 i32 i32) (result i32)))
            (import "env" "proxy_get_buffer_bytes" (func $getbuf (param i32 i32 i32 i32 i32) (result i32)))
            (import "env" "proxy_get_buffer_status" (func $bufstatus (param i32 i32 i32) (result i32)))
            (import "env" "proxy_get_header_map_size" (func $mapsize (param i32 i32) (result i32)))
            (import "env" "proxy_get_header_map_pairs" (func $pairs (param i32 i32 i32) (result i32)))
            (import "env" "proxy_get_header_map_value" (func $value (param i32 i32 i32 i32 i32) (result i32)))
            (import "env" "proxy_remove_header_map_value" (func $remove (param i32 i32 i32) (result i32)))
            (import "env" "proxy_continue_stream" (func $continue (param i32) (result i32)))
            (import "env" "proxy_close_stream" (func $close (param i32) (result i32)))
            (import "env" "proxy_get_shared_data" (func $shared (param i32 i32 i32 i32 i32) (result i32)))
            (import "env" "proxy_enqueue_shared_queue" (func $enqueue (param i32 i32 i32) (result i32)))
            (import "env" "proxy_dequeue_shared_queue" (func $dequeue (param i32 i32 i32) (result i32)))
            (import "env" "proxy_define_metric" (func $define (param i32 i32 i32 i32) (result i32)))
            (import "env" "proxy_get_metric" (func $getmetric (param i32 i32) (result i32)))
            (import "env" "proxy_get_property" (func $prop (param i32 i32 i32 i32) (result i32)))
            (import "env" "proxy_call_foreign_function" (func $foreign (param i32 i32 i32 i32 i32 i32) (result i32)))
            (memory (export "memory") 1)
            (data (i32.const 16) "k")
            (data (i32.const 24) "portico-no-such-key-for-status-test")
            (func (export "log_bad_level") (result i32) (call $log (i32.const 9) (i32.const 16) (i32.const 1)))
            (func (export "log_bad_memory") (result i32) (call $log (i32.const 2) (i32.const 0x20000) (i32.const 4)))
            (func (export "time_bad_memory") (result i32) (call $time (i32.const 0x20000)))
            (func (export "setbuf_unknown") (result i32) (call $setbuf (i32.const 99) (i32.const 0) (i32.const 0) (i32.const 16) (i32.const 1)))
            (func (export "getbuf_unknown") (result i32) (call $getbuf (i32.const 99) (i32.const 0) (i32.const 1) (i32.const 64) (i32.const 68)))
            (func (export "getbuf_absent") (result i32) (call $getbuf (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 64) (i32.const 68)))
            (func (export "bufstatus_unknown") (result i32) (call $bufstatus (i32.const 99) (i32.const 64) (i32.const 68)))
            (func (export "mapsize_unknown") (result i32) (call $mapsize (i32.const 99) (i32.const 64)))
            (func (export "pairs_unknown") (result i32) (call $pairs (i32.const 99) (i32.const 64) (i32.const 68)))
            (func (export "value_unknown_map") (result i32) (call $value (i32.const 99) (i32.const 16) (i32.const 1) (i32.const 64) (i32.const 68)))
            (func (export "value_absent_key") (result i32) (call $value (i32.const 0) (i32.const 16) (i32.const 1) (i32.const 64) (i32.const 68)))
            (func (export "remove_absent_key") (result i32) (call $remove (i32.const 0) (i32.const 16) (i32.const 1)))
            (func (export "remove_unknown_map") (result i32) (call $remove (i32.const 99) (i32.const 16) (i32.const 1)))
            (func (export "continue_unknown") (result i32) (call $continue (i32.const 9)))
            (func (export "close_unknown") (result i32) (call $close (i32.const 9)))
            (func (export "shared_absent") (result i32) (call $shared (i32.const 24) (i32.const 35) (i32.const 64) (i32.const 68) (i32.const 72)))
            (func (export "enqueue_unknown") (result i32) (call $enqueue (i32.const 0x7ffffff0) (i32.const 16) (i32.const 1)))
            (func (export "dequeue_unknown") (result i32) (call $dequeue (i32.const 0x7ffffff0) (i32.const 64) (i32.const 68)))
            (func (export "define_bad_type") (result i32) (call $define (i32.const 9) (i32.const 16) (i32.const 1) (i32.const 64)))
            (func (export "getmetric_unknown") (result i32) (call $getmetric (i32.const 0x7ffffff0) (i32.const 64)))
            (func (export "prop_absent") (result i32) (call $prop (i32.const 24) (i32.const 35) (i32.const 64) (i32.const 68)))
            (func (export "foreign_absent") (result i32) (call $foreign (i32.const 16) (i32.const 1) (i32.const 16) (i32.const 1) (i32.const 64) (i32.const 68))))"#;
        let module = wasmtime::Module::new(&engine, wat).unwrap();
        let mut store = wasmtime::Store::new(&engine, super::super::sandbox::test_state());
        store.set_epoch_deadline(u64::MAX / 2);
        let instance = l.instantiate(&mut store, &module).unwrap();
        let table = [
            ("log_bad_level", status::BAD_ARGUMENT),
            ("log_bad_memory", status::INVALID_MEMORY_ACCESS),
            ("time_bad_memory", status::INVALID_MEMORY_ACCESS),
            ("setbuf_unknown", status::BAD_ARGUMENT),
            ("getbuf_unknown", status::BAD_ARGUMENT),
            ("getbuf_absent", status::NOT_FOUND),
            ("bufstatus_unknown", status::BAD_ARGUMENT),
            ("mapsize_unknown", status::BAD_ARGUMENT),
            ("pairs_unknown", status::BAD_ARGUMENT),
            ("value_unknown_map", status::BAD_ARGUMENT),
            ("value_absent_key", status::NOT_FOUND),
            ("remove_absent_key", status::OK),
            ("remove_unknown_map", status::BAD_ARGUMENT),
            ("continue_unknown", status::BAD_ARGUMENT),
            ("close_unknown", status::BAD_ARGUMENT),
            ("shared_absent", status::NOT_FOUND),
            ("enqueue_unknown", status::NOT_FOUND),
            ("dequeue_unknown", status::NOT_FOUND),
            ("define_bad_type", status::BAD_ARGUMENT),
            ("getmetric_unknown", status::NOT_FOUND),
            ("prop_absent", status::NOT_FOUND),
            ("foreign_absent", status::NOT_FOUND),
        ];
        let mut wrong = Vec::new();
        for (call, expected) in table {
            let got = instance
                .get_typed_func::<(), i32>(&mut store, call)
                .unwrap()
                .call(&mut store, ())
                .unwrap();
            if got != expected {
                wrong.push(format!("{call}: {got}, the spec says {expected}"));
            }
        }
        assert!(wrong.is_empty(), "{wrong:#?}");
    }

    #[test]
    fn property_paths_are_dotted() {
        assert_eq!(property_path(b"request\0path\0"), "request.path");
        assert_eq!(property_path(b"plugin_name"), "plugin_name");
    }
}
