//! proxy-wasm HTTP contexts: one request through a chain of plugins.
//!
//! Request phases run the chain in order, response phases in reverse
//! order (as Envoy's encoder filters do). Each plugin sees the headers as
//! the plugins before it left them. Body callbacks follow Envoy's
//! buffering: a plugin that returns `Pause` from a body callback before
//! the end of the stream has the data held for it and is called again
//! with everything so far; a plugin that wants to change a body's length
//! removes `content-length` in its headers callback, and the proxy then
//! frames the body as chunked.
//!
//! A plugin that fails (trap, deadline, memory cap) or whose instance is
//! gone applies its fail policy: `closed` ends the request with 500,
//! `open` drops the plugin from this request's chain.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::oneshot;

use super::body::BodySlot;
use super::breaker;
use super::host::{LocalResponse, VmState};
use super::instances::{self, Instance};
use super::properties::{StreamProps, REQUEST_HEADERS};
use super::registry::Plugin;
use super::sandbox::PluginError;
use super::vm::ROOT_CONTEXT;
use crate::config::FailPolicy;

/// `proxy_map_type_t`.
const RESPONSE_HEADERS: i32 = 2;
const RESPONSE_TRAILERS: i32 = 3;
/// `proxy_buffer_type_t`.
const REQUEST_BODY: i32 = 0;
const RESPONSE_BODY: i32 = 1;
/// `proxy_action_t`.
const ACTION_PAUSE: i32 = 1;

/// The property a TCP plugin sets (to anything) in its new-connection
/// callback when it needs no data callbacks: if every plugin of a
/// connection does, the bytes go by splice(2), not through the plugins.
pub const PASSTHROUGH: &str = "portico.stream.passthrough";

/// The most body a plugin can have buffered for it.
pub const MAX_BUFFERED_BODY: usize = 16 << 20;

pub use super::headers::{HeaderSlot, Pairs};

/// What the proxy does after a phase.
#[derive(Debug)]
pub enum Verdict {
    Continue,
    /// A plugin answered the request itself.
    Respond(LocalResponse),
    /// A plugin paused the request; await `StreamChain::resumed` with this
    /// index, then run the phase again from the next plugin.
    Pause(usize),
    /// A fail-closed plugin failed (or is not loaded).
    Fail(String),
    /// A buffered body passed the limit.
    TooLarge(String),
}

pub(super) struct Filter {
    pub(super) plugin: Arc<Plugin>,
    /// 0 until the context is created.
    pub(super) instance: u64,
    pub(super) context: i32,
    /// Dropped from this request's chain (fail open).
    pub(super) skipped: bool,
    pub(super) request_body: Vec<u8>,
    pub(super) response_body: Vec<u8>,
    /// The plugin set `portico.stream.passthrough` (TCP): it needs no data
    /// callbacks for this connection.
    pub(super) passthrough: bool,
}

/// One stream's plugin contexts: an HTTP request's (this module) or a
/// TCP connection's (`tcp_filter`).
pub struct StreamChain {
    pub(super) filters: Vec<Filter>,
    /// Moved into the instance for each call and back (`None` only
    /// during a call): no reference-count traffic per call.
    props: Option<Arc<StreamProps>>,
    finished: bool,
    /// The endpoint a plugin chose (`proxy_set_upstream_override_host`).
    pub override_host: Option<std::net::SocketAddr>,
    /// A plugin asked to close this stream (`proxy_close_stream`).
    pub close_requested: bool,
    /// The plugins were told the request (response) ended: with its
    /// headers (a request without a body) or a body callback. A body
    /// callback without data after that would tell them nothing (Envoy
    /// makes none), and costs a call into every plugin.
    request_ended: bool,
    response_ended: bool,
}

/// How a plugin call went, after the fail policy.
pub(super) enum Step<T> {
    Ran(T),
    Skipped,
    Failed(String),
}

impl StreamChain {
    pub fn new(plugins: impl IntoIterator<Item = Arc<Plugin>>, props: StreamProps) -> Self {
        StreamChain {
            filters: plugins
                .into_iter()
                .map(|plugin| Filter {
                    plugin,
                    instance: 0,
                    context: 0,
                    skipped: false,
                    request_body: Vec::new(),
                    response_body: Vec::new(),
                    passthrough: false,
                })
                .collect(),
            props: Some(Arc::new(props)),
            finished: false,
            override_host: None,
            close_requested: false,
            request_ended: false,
            response_ended: false,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.filters.is_empty()
    }

    pub fn len(&self) -> usize {
        self.filters.len()
    }

    pub fn props_mut(&mut self) -> &mut StreamProps {
        Arc::make_mut(self.props.get_or_insert_with(Default::default))
    }

    /// Adds plugins (a route's, once it is known) to the end of the chain.
    pub fn extend(&mut self, plugins: impl IntoIterator<Item = Arc<Plugin>>) {
        for plugin in plugins {
            if self.filters.iter().any(|f| Arc::ptr_eq(&f.plugin, &plugin)) {
                continue;
            }
            self.filters.push(Filter {
                plugin,
                instance: 0,
                context: 0,
                skipped: false,
                request_body: Vec::new(),
                response_body: Vec::new(),
                passthrough: false,
            });
        }
    }

    /// Calls into filter `i`'s context (creating it on first use) with the
    /// stream's state set up, applying the fail policy on failure.
    pub(super) fn call<T>(
        &mut self,
        i: usize,
        during: &'static str,
        f: impl FnOnce(&mut Instance, i32) -> Result<T, PluginError>,
    ) -> Step<T> {
        let StreamChain {
            filters,
            props,
            override_host,
            close_requested,
            ..
        } = self;
        let filter = &mut filters[i];
        if filter.skipped {
            return Step::Skipped;
        }
        if !filter.plugin.breaker.allow(breaker::now_ms) {
            // The circuit is open: the fail policy, without the call.
            metrics::counter!("portico_plugin_calls_total", "plugin" => filter.plugin.name.clone(), "result" => "circuit_open")
                .increment(1);
            filter.skipped = true;
            return match filter.plugin.fail {
                FailPolicy::Open => Step::Skipped,
                FailPolicy::Closed => Step::Failed(filter.plugin.name.clone()),
            };
        }
        let plugin = &filter.plugin;
        let mut passthrough = false;
        let run = |inst: &mut Instance, ctx: i32| {
            let d = inst.vm.sandbox.data_mut();
            d.effective_context = ctx as u32;
            std::mem::swap(&mut d.stream, props);
            // A header map a phase lent goes into the instance for the
            // call and is taken back after it; if the call unwinds
            // instead, it must not stay there pointing at a header that
            // is about to be dropped.
            let r = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(inst, ctx))) {
                Ok(r) => r,
                Err(panic) => {
                    inst.vm.sandbox.data_mut().maps.retain(|m| !m.is_lent());
                    std::panic::resume_unwind(panic)
                }
            };
            let d = inst.vm.sandbox.data_mut();
            std::mem::swap(&mut d.stream, props);
            if let Some(chosen) = d.override_host.take() {
                *override_host = Some(chosen);
            }
            if !d.closed.is_empty() {
                *close_requested |= d.closed.iter().any(|(c, _)| *c == ctx as u32);
            }
            // Hashing the name on every call would cost more than a small
            // call: most plugins set no property at all.
            passthrough = !d.properties.is_empty() && d.properties.remove(PASSTHROUGH).is_some();
            after_call(inst);
            r
        };
        let result = if filter.instance == 0 {
            instances::with_instance(plugin, |inst| {
                let ctx = inst.new_context();
                let created = inst
                    .vm
                    .sandbox
                    .call::<(i32, i32), ()>("proxy_on_context_create", (ctx, ROOT_CONTEXT));
                (inst.id, ctx, created.and_then(|_| run(inst, ctx)))
            })
            .map(|(id, ctx, r)| {
                filter.instance = id;
                filter.context = ctx;
                r
            })
            .and_then(|r| r)
        } else {
            instances::with_existing(plugin, filter.instance, |inst| run(inst, filter.context))
                .unwrap_or_else(|| {
                    Err(PluginError::Setup(
                        "the plugin instance holding this request was replaced".into(),
                    ))
                })
        };
        if passthrough {
            filter.passthrough = true;
        }
        match result {
            Ok(t) => {
                if filter.plugin.breaker.success() {
                    tracing::info!(plugin = %filter.plugin.name, "plugin answered again: circuit closed, it is called again");
                }
                Step::Ran(t)
            }
            Err(e) => {
                instances::failure_log(&filter.plugin.name, during, &e);
                if filter.plugin.breaker.failure(breaker::now_ms()) == breaker::Tripped::Opened {
                    metrics::counter!("portico_plugin_circuit_opened_total", "plugin" => filter.plugin.name.clone())
                        .increment(1);
                    tracing::warn!(
                        plugin = %filter.plugin.name,
                        failures = breaker::THRESHOLD,
                        window_s = breaker::WINDOW.as_secs(),
                        cool_down_s = breaker::COOL_DOWN.as_secs(),
                        "plugin keeps failing: circuit open, its fail policy applies without calling it until a probe succeeds"
                    );
                }
                filter.skipped = true;
                match filter.plugin.fail {
                    FailPolicy::Open => Step::Skipped,
                    FailPolicy::Closed => Step::Failed(filter.plugin.name.clone()),
                }
            }
        }
    }

    /// `proxy_on_request_headers` for filters `from..`, on `headers` (the
    /// request's: `:method`, `:path`, `:authority`, `:scheme`, then the
    /// rest); `changed` is set when a plugin edited them.
    pub fn on_request_headers(
        &mut self,
        headers: &mut HeaderSlot,
        from: usize,
        end_of_stream: bool,
        changed: &mut bool,
    ) -> Verdict {
        self.request_ended |= end_of_stream;
        for i in from..self.filters.len() {
            if !self.filters[i].plugin.exports.request_headers {
                continue;
            }
            let mut map = std::mem::take(headers);
            let n = map.len() as i32;
            let step = self.call(i, "proxy_on_request_headers", |inst, ctx| {
                let d = inst.vm.sandbox.data_mut();
                d.maps.insert(REQUEST_HEADERS, std::mem::take(&mut map));
                d.maps_dirty = 0;
                let r = inst.vm.sandbox.call::<(i32, i32, i32), i32>(
                    "proxy_on_request_headers",
                    (ctx, n, end_of_stream as i32),
                );
                let d = inst.vm.sandbox.data_mut();
                map = d.maps.remove(&REQUEST_HEADERS).unwrap_or_default();
                if d.maps_dirty & (1 << REQUEST_HEADERS) != 0 {
                    *changed = true;
                }
                r.map(|action| (action, d.local_response.take()))
            });
            *headers = map;
            match step {
                Step::Skipped => {}
                Step::Failed(p) => return Verdict::Fail(p),
                Step::Ran((_, Some(local))) => return Verdict::Respond(local),
                Step::Ran((ACTION_PAUSE, None)) => return Verdict::Pause(i),
                Step::Ran(_) => {}
            }
        }
        Verdict::Continue
    }

    /// Waits, after filter `i` paused the request or response headers
    /// (`which`), until it resumes them (or answers, or fails, or
    /// `timeout` passes); callbacks meanwhile (an HTTP call's answer, a
    /// tick) may edit `headers`, and `changed` is then set.
    pub async fn resumed(
        &mut self,
        i: usize,
        which: Paused,
        timeout: std::time::Duration,
        headers: &mut HeaderSlot,
        changed: &mut bool,
    ) -> Verdict {
        let map_id = match which {
            Paused::Request => REQUEST_HEADERS,
            Paused::Response => RESPONSE_HEADERS,
        };
        self.wait_parked(i, map_id, headers, timeout, changed).await
    }

    async fn wait_parked(
        &mut self,
        i: usize,
        map_id: i32,
        headers: &mut HeaderSlot,
        timeout: std::time::Duration,
        changed: &mut bool,
    ) -> Verdict {
        let (plugin, instance, ctx) = {
            let f = &self.filters[i];
            (f.plugin.clone(), f.instance, f.context as u32)
        };
        // Kept past this call (a callback may read or edit it while the
        // stream waits, and the stream may be dropped meanwhile): owned.
        let mut parked = Some(std::mem::take(headers).into_owned());
        instances::with_existing(&plugin, instance, |inst| {
            inst.parked.insert(
                ctx,
                instances::Parked {
                    map_id,
                    headers: parked.take().unwrap_or_default(),
                    edited: false,
                },
            );
        });
        let (tx, rx) = oneshot::channel();
        PAUSED.with(|p| p.borrow_mut().insert((instance, ctx), tx));
        let outcome = tokio::time::timeout(timeout, rx).await;
        let back =
            instances::with_existing(&plugin, instance, |inst| inst.parked.remove(&ctx)).flatten();
        match (back, parked) {
            (Some(p), _) => {
                *headers = p.headers;
                *changed |= p.edited;
            }
            (None, Some(h)) => *headers = h,
            // The instance went away with the headers: nothing to edit.
            (None, None) => {}
        }
        let f = &self.filters[i];
        match outcome {
            Ok(Ok(Resume::Continue)) => Verdict::Continue,
            Ok(Ok(Resume::Respond(local))) => Verdict::Respond(local),
            Ok(Ok(Resume::Failed)) if f.plugin.fail == FailPolicy::Open => {
                self.filters[i].skipped = true;
                Verdict::Continue
            }
            Ok(Ok(Resume::Close | Resume::Failed)) | Ok(Err(_)) => {
                Verdict::Fail(f.plugin.name.clone())
            }
            Err(_) => {
                PAUSED.with(|p| p.borrow_mut().remove(&(f.instance, f.context as u32)));
                tracing::warn!(plugin = %f.plugin.name, "plugin paused a stream and did not resume it in time");
                Verdict::Fail(f.plugin.name.clone())
            }
        }
    }

    /// `proxy_on_request_body`: passes `body` through the chain, holding
    /// it for a plugin that pauses before the end.
    pub fn on_request_body(&mut self, body: &mut Option<Bytes>, end_of_stream: bool) -> Verdict {
        self.on_body(false, REQUEST_BODY, body, end_of_stream)
    }

    /// `proxy_on_response_body`, in reverse chain order.
    pub fn on_response_body(&mut self, body: &mut Option<Bytes>, end_of_stream: bool) -> Verdict {
        self.on_body(true, RESPONSE_BODY, body, end_of_stream)
    }

    fn on_body(
        &mut self,
        reverse: bool,
        buffer: i32,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
    ) -> Verdict {
        let (export, during) = if buffer == REQUEST_BODY {
            ("proxy_on_request_body", "proxy_on_request_body")
        } else {
            ("proxy_on_response_body", "proxy_on_response_body")
        };
        let ended = if buffer == REQUEST_BODY {
            &mut self.request_ended
        } else {
            &mut self.response_ended
        };
        if *ended && body.as_ref().is_none_or(Bytes::is_empty) {
            return Verdict::Continue;
        }
        *ended |= end_of_stream;
        let n = self.filters.len();
        for k in 0..n {
            let i = if reverse { n - 1 - k } else { k };
            let f = &mut self.filters[i];
            let wanted = if buffer == REQUEST_BODY {
                f.plugin.exports.request_body
            } else {
                f.plugin.exports.response_body
            };
            if !wanted || f.skipped || f.instance == 0 {
                continue;
            }
            let held = if buffer == REQUEST_BODY {
                &mut f.request_body
            } else {
                &mut f.response_body
            };
            // A chunk goes to the plugin as it is (shared), unless the
            // plugin has earlier data held for it.
            let mut data = match body.take() {
                Some(chunk) if held.is_empty() => BodySlot::Shared(chunk),
                chunk => {
                    if let Some(chunk) = chunk {
                        held.extend_from_slice(&chunk);
                    }
                    BodySlot::Owned(std::mem::take(held))
                }
            };
            if data.is_empty() && !end_of_stream {
                continue;
            }
            if data.len() > MAX_BUFFERED_BODY {
                return Verdict::TooLarge(f.plugin.name.clone());
            }
            let len = data.len() as i32;
            let step = self.call(i, during, |inst, ctx| {
                let d = inst.vm.sandbox.data_mut();
                d.buffers.insert(buffer, std::mem::take(&mut data));
                let r = inst
                    .vm
                    .sandbox
                    .call::<(i32, i32, i32), i32>(export, (ctx, len, end_of_stream as i32));
                let d = inst.vm.sandbox.data_mut();
                data = d.buffers.remove(&buffer).unwrap_or_default();
                r.map(|action| (action, d.local_response.take()))
            });
            match step {
                Step::Skipped => *body = non_empty(data),
                Step::Failed(p) => return Verdict::Fail(p),
                Step::Ran((_, Some(local))) => return Verdict::Respond(local),
                Step::Ran((ACTION_PAUSE, None)) if !end_of_stream => {
                    let f = &mut self.filters[i];
                    if buffer == REQUEST_BODY {
                        f.request_body = data.into_vec();
                    } else {
                        f.response_body = data.into_vec();
                    }
                    // Nothing goes further until this plugin lets it.
                    return Verdict::Continue;
                }
                Step::Ran(_) => *body = non_empty(data),
            }
        }
        Verdict::Continue
    }

    /// `proxy_on_response_headers`, in reverse chain order. `headers`
    /// start with `:status`.
    /// `proxy_on_response_headers`, in reverse chain order from filter
    /// `from` (all: `None`). `Pause(i)`: filter `i` waits (an HTTP call);
    /// see [`StreamChain::resumed`], then go on from `i - 1`.
    /// Plugins read the `request` headers too (edits to them are lost).
    pub fn on_response_headers(
        &mut self,
        request: &mut HeaderSlot,
        headers: &mut HeaderSlot,
        end_of_stream: bool,
        changed: &mut bool,
        from: Option<usize>,
    ) -> Verdict {
        self.response_ended |= end_of_stream;
        let phase = HeadersPhase {
            map_id: RESPONSE_HEADERS,
            export: "proxy_on_response_headers",
            end_of_stream: Some(end_of_stream),
        };
        self.on_headers_phase(phase, request, headers, changed, from)
    }

    /// `proxy_on_response_trailers`, in reverse chain order.
    pub fn on_response_trailers(
        &mut self,
        request: &mut HeaderSlot,
        trailers: &mut HeaderSlot,
        changed: &mut bool,
    ) -> Verdict {
        let phase = HeadersPhase {
            map_id: RESPONSE_TRAILERS,
            export: "proxy_on_response_trailers",
            end_of_stream: None,
        };
        self.on_headers_phase(phase, request, trailers, changed, None)
    }

    fn on_headers_phase(
        &mut self,
        phase: HeadersPhase,
        request_headers: &mut HeaderSlot,
        headers: &mut HeaderSlot,
        changed: &mut bool,
        from: Option<usize>,
    ) -> Verdict {
        let HeadersPhase {
            map_id,
            export,
            end_of_stream,
        } = phase;
        let end = from.map_or(self.filters.len(), |f| (f + 1).min(self.filters.len()));
        for i in (0..end).rev() {
            let f = &self.filters[i];
            let wanted = match map_id {
                RESPONSE_HEADERS => f.plugin.exports.response_headers,
                _ => f.plugin.exports.response_trailers,
            };
            if !wanted || f.skipped || f.instance == 0 {
                continue;
            }
            let mut map = std::mem::take(headers);
            let mut request = std::mem::take(request_headers);
            let n = map.len() as i32;
            let step = self.call(i, export, |inst, ctx| {
                let d = inst.vm.sandbox.data_mut();
                d.maps.insert(map_id, std::mem::take(&mut map));
                d.maps.insert(REQUEST_HEADERS, std::mem::take(&mut request));
                d.maps_dirty = 0;
                let r = match end_of_stream {
                    Some(eos) => inst
                        .vm
                        .sandbox
                        .call::<(i32, i32, i32), i32>(export, (ctx, n, eos as i32)),
                    None => inst.vm.sandbox.call::<(i32, i32), i32>(export, (ctx, n)),
                };
                let d = inst.vm.sandbox.data_mut();
                map = d.maps.remove(&map_id).unwrap_or_default();
                request = d.maps.remove(&REQUEST_HEADERS).unwrap_or_default();
                if d.maps_dirty & (1 << map_id) != 0 {
                    *changed = true;
                }
                r.map(|action| (action, d.local_response.take()))
            });
            *headers = map;
            *request_headers = request;
            match step {
                Step::Skipped => {}
                Step::Failed(p) => return Verdict::Fail(p),
                Step::Ran((_, Some(local))) => return Verdict::Respond(local),
                // Response headers may wait (for an HTTP call); trailers
                // cannot, as nothing is left to hold them back.
                Step::Ran((ACTION_PAUSE, None)) if map_id == RESPONSE_HEADERS => {
                    return Verdict::Pause(i)
                }
                Step::Ran(_) => {}
            }
        }
        Verdict::Continue
    }

    /// The request is over: `proxy_on_done`, `proxy_on_log`,
    /// `proxy_on_delete` for every context (reading the `request` headers,
    /// if still at hand), then the contexts are freed.
    pub fn finish(&mut self, request: Option<&mut HeaderSlot>) {
        if std::mem::replace(&mut self.finished, true) {
            return;
        }
        let mut none = HeaderSlot::default();
        let request = request.unwrap_or(&mut none);
        for i in 0..self.filters.len() {
            let f = &self.filters[i];
            if f.instance == 0 {
                continue;
            }
            let (plugin, instance, skipped, context) =
                (f.plugin.clone(), f.instance, f.skipped, f.context);
            if !skipped {
                let ex = plugin.exports;
                let _ = self.call(i, "proxy_on_log", |inst, ctx| {
                    inst.vm
                        .sandbox
                        .data_mut()
                        .maps
                        .insert(REQUEST_HEADERS, std::mem::take(request));
                    let mut r = Ok(());
                    if ex.done {
                        r = r.and_then(|_| {
                            inst.vm
                                .sandbox
                                .call::<i32, i32>("proxy_on_done", ctx)
                                .map(drop)
                        });
                    }
                    if ex.log {
                        r = r.and_then(|_| inst.vm.sandbox.call::<i32, ()>("proxy_on_log", ctx));
                    }
                    if ex.delete {
                        r = r.and_then(|_| inst.vm.sandbox.call::<i32, ()>("proxy_on_delete", ctx));
                    }
                    let d = inst.vm.sandbox.data_mut();
                    *request = d.maps.remove(&REQUEST_HEADERS).unwrap_or_default();
                    d.maps.clear();
                    d.buffers.clear();
                    d.local_response = None;
                    r
                });
            }
            instances::release(&plugin, instance, context);
        }
    }
}

impl Drop for StreamChain {
    fn drop(&mut self) {
        self.finish(None);
    }
}

/// An empty chunk is no chunk: writing one after the end of a body is an
/// error in the proxy.
fn non_empty(data: BodySlot) -> Option<Bytes> {
    (!data.is_empty()).then(|| data.into_bytes())
}

/// A response headers or trailers phase: the map it passes, the export
/// it calls, and (headers only) whether the stream ends with them.
struct HeadersPhase {
    map_id: i32,
    export: &'static str,
    end_of_stream: Option<bool>,
}

/// Which headers a paused stream waits with.
#[derive(Debug, Clone, Copy)]
pub enum Paused {
    Request,
    Response,
}

/// What a paused stream is told.
#[derive(Debug)]
enum Resume {
    Continue,
    Respond(LocalResponse),
    /// The plugin closed the stream.
    Close,
    /// The plugin failed while the stream waited (its fail policy applies).
    Failed,
}

thread_local! {
    /// Paused streams on this thread, by (instance, context).
    static PAUSED: RefCell<HashMap<(u64, u32), oneshot::Sender<Resume>>> = RefCell::new(HashMap::new());
}

/// After any call into an instance: starts the HTTP calls it made, and
/// wakes the paused streams it resumed, closed or answered (from a tick,
/// a call's answer, or another stream's callback).
pub fn after_call(inst: &mut Instance) {
    let callouts = std::mem::take(&mut inst.vm.sandbox.data_mut().callouts);
    for c in callouts {
        start_callout(inst.plugin.clone(), inst.id, c);
    }
    wake_paused(inst);
}

/// `proxy_map_type_t` / `proxy_buffer_type_t` of a call's answer.
const CALL_RESPONSE_HEADERS: i32 = 6;
const CALL_RESPONSE_TRAILERS: i32 = 7;
const CALL_RESPONSE_BODY: i32 = 4;

/// Runs one HTTP call on this worker's runtime and hands the answer to
/// the instance that made it (`proxy_on_http_call_response`).
fn start_callout(plugin: Arc<Plugin>, instance: u64, c: super::callout::Callout) {
    let Ok(handle) = tokio::runtime::Handle::try_current() else {
        return;
    };
    handle.spawn(async move {
        let answer = match super::callout::resolve(&c.upstream) {
            Ok(addr) => super::callout::perform(addr, &c).await,
            Err(e) => Err(e),
        };
        let outcome = if answer.is_ok() { "ok" } else { "error" };
        metrics::counter!("portico_plugin_callouts_total", "plugin" => plugin.name.clone(), "result" => outcome)
            .increment(1);
        if let Err(e) = &answer {
            tracing::debug!(plugin = %plugin.name, upstream = %c.upstream, error = %e, "plugin HTTP call failed");
        }
        let answer = answer.unwrap_or_default();
        let delivered = instances::with_existing(&plugin, instance, |inst| {
            let parked = inst
                .parked
                .get_mut(&c.context)
                .map(|p| (p.map_id, std::mem::take(&mut p.headers)));
            let d = inst.vm.sandbox.data_mut();
            let (n_headers, body_len) = (answer.headers.len() as i32, answer.body.len() as i32);
            d.maps_dirty = 0;
            if let Some((map_id, h)) = parked {
                d.maps.insert(map_id, h);
            }
            d.maps
                .insert(CALL_RESPONSE_HEADERS, HeaderSlot::Pairs(answer.headers));
            d.maps.insert(CALL_RESPONSE_TRAILERS, HeaderSlot::default());
            d.buffers.insert(CALL_RESPONSE_BODY, answer.body.into());
            d.effective_context = c.context;
            let r = inst.vm.sandbox.call::<(i32, i32, i32, i32, i32), ()>(
                "proxy_on_http_call_response",
                (c.context as i32, c.token as i32, n_headers, body_len, 0),
            );
            let d = inst.vm.sandbox.data_mut();
            d.maps.remove(&CALL_RESPONSE_HEADERS);
            d.maps.remove(&CALL_RESPONSE_TRAILERS);
            d.buffers.remove(&CALL_RESPONSE_BODY);
            if let Some(p) = inst.parked.get_mut(&c.context) {
                p.edited |= d.maps_dirty & (1 << p.map_id) != 0;
                if let Some(h) = d.maps.remove(&p.map_id) {
                    p.headers = h;
                }
            }
            if let Err(e) = &r {
                instances::failure_log(&plugin.name, "proxy_on_http_call_response", e);
            }
            after_call(inst);
            r.is_ok()
        });
        if delivered != Some(true) {
            // The instance is gone or failed: the stream waiting for this
            // answer must not wait for its timeout.
            PAUSED.with(|p| {
                if let Some(tx) = p.borrow_mut().remove(&(instance, c.context)) {
                    let _ = tx.send(Resume::Failed);
                }
            });
        }
    });
}

fn wake_paused(inst: &mut Instance) {
    let id = inst.id;
    let d: &mut VmState = inst.vm.sandbox.data_mut();
    if d.continued.is_empty() && d.closed.is_empty() && d.local_response.is_none() {
        return;
    }
    let continued = std::mem::take(&mut d.continued);
    let closed = std::mem::take(&mut d.closed);
    // A stream's own callbacks take their local response before this
    // runs; one left here came from another callback (a call's answer, a
    // tick) and goes to the stream it names, if that one is waiting.
    let local = d.local_response.take();
    PAUSED.with(|p| {
        let mut p = p.borrow_mut();
        if let Some(local) = local {
            if let Some(tx) = p.remove(&(id, local.context)) {
                let _ = tx.send(Resume::Respond(local));
            }
        }
        for (ctx, _) in closed {
            if let Some(tx) = p.remove(&(id, ctx)) {
                let _ = tx.send(Resume::Close);
            }
        }
        for (ctx, _) in continued {
            if let Some(tx) = p.remove(&(id, ctx)) {
                let _ = tx.send(Resume::Continue);
            }
        }
    });
}

/// Header names and their values in order, grouped by name.
fn grouped(pairs: &[(String, Vec<u8>)]) -> Vec<(&str, Vec<&[u8]>)> {
    let mut out: Vec<(&str, Vec<&[u8]>)> = Vec::new();
    for (k, v) in pairs {
        if k.starts_with(':') {
            continue;
        }
        match out.iter_mut().find(|(n, _)| n == k) {
            Some((_, vs)) => vs.push(v),
            None => out.push((k, vec![v])),
        }
    }
    out
}

fn pseudo<'a>(pairs: &'a [(String, Vec<u8>)], name: &str) -> Option<&'a [u8]> {
    pairs
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_slice())
}

/// One change to a header map.
enum Edit<'a> {
    Remove(&'a str),
    Append(&'a str, &'a [u8]),
}

/// The edits that turn `before` into `pairs` (pseudo-headers aside),
/// touching only names whose values changed. Edits go through pingora's
/// header API, which keeps header-name case alongside the map.
fn header_edits<'a>(before: &'a http::HeaderMap, pairs: &'a [(String, Vec<u8>)]) -> Vec<Edit<'a>> {
    let after = grouped(pairs);
    let mut edits = Vec::new();
    for k in before.keys() {
        if !after.iter().any(|(n, _)| *n == k.as_str()) {
            edits.push(Edit::Remove(k.as_str()));
        }
    }
    for (name, values) in after {
        let old: Vec<&[u8]> = before.get_all(name).iter().map(|v| v.as_bytes()).collect();
        if old == values {
            continue;
        }
        edits.push(Edit::Remove(name));
        edits.extend(values.into_iter().map(|v| Edit::Append(name, v)));
    }
    edits
}

/// Pingora's request and response headers, edited the same way.
trait EditHeaders {
    fn remove(&mut self, name: &str);
    fn append(&mut self, name: String, value: &[u8]) -> pingora::Result<bool>;
}

impl EditHeaders for pingora::http::RequestHeader {
    fn remove(&mut self, name: &str) {
        self.remove_header(name);
    }
    fn append(&mut self, name: String, value: &[u8]) -> pingora::Result<bool> {
        self.append_header(name, value)
    }
}

impl EditHeaders for pingora::http::ResponseHeader {
    fn remove(&mut self, name: &str) {
        self.remove_header(name);
    }
    fn append(&mut self, name: String, value: &[u8]) -> pingora::Result<bool> {
        self.append_header(name, value)
    }
}

fn apply_edits(
    before: &http::HeaderMap,
    pairs: &[(String, Vec<u8>)],
    target: &mut impl EditHeaders,
) -> Result<(), String> {
    for edit in header_edits(before, pairs) {
        match edit {
            Edit::Remove(k) => target.remove(k),
            Edit::Append(k, v) => {
                target
                    .append(k.to_string(), v)
                    .map_err(|e| format!("a plugin set header {k}: {e}"))?;
            }
        }
    }
    Ok(())
}

/// Writes plugins' edits back into the request header: pseudo-headers
/// change the method, path and host.
pub fn apply_request(
    req: &mut pingora::http::RequestHeader,
    pairs: &[(String, Vec<u8>)],
) -> Result<(), String> {
    if let Some(m) = pseudo(pairs, ":method") {
        if m != req.method.as_str().as_bytes() {
            let m = http::Method::from_bytes(m).map_err(|_| "a plugin set an invalid :method")?;
            req.set_method(m);
        }
    }
    if let Some(p) = pseudo(pairs, ":path") {
        let now = req.uri.path_and_query().map_or("/", |p| p.as_str());
        if p != now.as_bytes() {
            let uri = http::Uri::try_from(p).map_err(|_| "a plugin set an invalid :path")?;
            req.set_uri(uri);
        }
    }
    let before = req.headers.clone();
    apply_edits(&before, pairs, req)?;
    if let Some(a) = pseudo(pairs, ":authority") {
        if pseudo(pairs, "host") == before.get(http::header::HOST).map(|h| h.as_bytes())
            && before.get(http::header::HOST).map(|h| h.as_bytes()) != Some(a)
        {
            req.insert_header(http::header::HOST, a)
                .map_err(|e| format!("a plugin set :authority: {e}"))?;
        }
    }
    Ok(())
}

/// Writes plugins' edits back into the response header (`:status` too).
pub fn apply_response(
    resp: &mut pingora::http::ResponseHeader,
    pairs: &[(String, Vec<u8>)],
) -> Result<(), String> {
    if let Some(s) = pseudo(pairs, ":status") {
        let code = std::str::from_utf8(s)
            .ok()
            .and_then(|s| s.parse::<u16>().ok())
            .filter(|c| (100..=999).contains(c))
            .ok_or("a plugin set an invalid :status")?;
        if code != resp.status.as_u16() {
            resp.set_status(code)
                .map_err(|_| "a plugin set an invalid :status")?;
        }
    }
    let before = resp.headers.clone();
    apply_edits(&before, pairs, resp)?;
    Ok(())
}

/// Trailers edited by plugins.
pub fn apply_trailers(map: &mut http::HeaderMap, headers: &HeaderSlot) {
    let Some(pairs) = headers.as_pairs() else {
        return;
    };
    map.clear();
    for (k, v) in pairs {
        if let (Ok(k), Ok(v)) = (
            http::HeaderName::from_bytes(k.as_bytes()),
            http::HeaderValue::from_bytes(v),
        ) {
            map.append(k, v);
        }
    }
}

pub fn trailer_pairs(map: &http::HeaderMap) -> HeaderSlot {
    HeaderSlot::Pairs(
        map.iter()
            .map(|(k, v)| (k.as_str().to_string(), v.as_bytes().to_vec()))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Its request body callback traps (a body-less request must not get
    /// one); its response body callback holds data back (Pause) and traps
    /// when called a third time.
    const BODY_CALLS: &str = r#"(module
        (memory (export "memory") 1)
        (global $next (mut i32) (i32.const 1024))
        (global $response_body_calls (mut i32) (i32.const 0))
        (func (export "proxy_abi_version_0_2_1"))
        (func (export "proxy_on_memory_allocate") (param $n i32) (result i32)
            (local $p i32)
            (local.set $p (global.get $next))
            (global.set $next (i32.add (global.get $next) (local.get $n)))
            (local.get $p))
        (func (export "proxy_on_context_create") (param i32 i32))
        (func (export "proxy_on_configure") (param i32 i32) (result i32) i32.const 1)
        (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32) i32.const 0)
        (func (export "proxy_on_request_body") (param i32 i32 i32) (result i32) unreachable)
        (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32) i32.const 0)
        (func (export "proxy_on_response_body") (param i32 i32 i32) (result i32)
            (global.set $response_body_calls (i32.add (global.get $response_body_calls) (i32.const 1)))
            (if (i32.gt_u (global.get $response_body_calls) (i32.const 2)) (then unreachable))
            i32.const 1)
        (func (export "proxy_on_done") (param i32) (result i32) i32.const 1)
        (func (export "proxy_on_log") (param i32))
        (func (export "proxy_on_delete") (param i32)))"#;

    fn body_calls_plugin() -> Arc<Plugin> {
        let dir = std::env::temp_dir().join(format!("portico-body-calls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("body_calls.wat");
        std::fs::write(&path, BODY_CALLS).unwrap();
        let engine = crate::engine().unwrap();
        let linker = crate::host::linker(&engine).unwrap();
        let plugin = crate::registry::load_one(
            &engine,
            &linker,
            &crate::config::PluginConfig {
                name: "body-calls".into(),
                path,
                config: String::new(),
                root_id: None,
                fail: FailPolicy::Closed,
                deadline_ms: 100,
                memory_mib: 16,
                applies_to: None,
            },
            None,
        )
        .unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        plugin
    }

    #[test]
    fn no_empty_body_callback_after_the_end_was_told() {
        let mut chain = StreamChain::new([body_calls_plugin()], StreamProps::default());
        let req = pingora::http::RequestHeader::build("GET", b"/", None).unwrap();
        let mut headers = HeaderSlot::request(&req, "http");
        let mut changed = false;
        // Headers that end the request: no request body callback follows
        // for the end the proxy reports later (it would trap: fail closed).
        let v = chain.on_request_headers(&mut headers, 0, true, &mut changed);
        assert!(matches!(v, Verdict::Continue), "{v:?}");
        let v = chain.on_request_body(&mut None, true);
        assert!(matches!(v, Verdict::Continue), "{v:?}");
        // A response body: data goes to the plugin (which holds it back),
        // the end goes to it once, and a later empty end does not.
        let resp = pingora::http::ResponseHeader::build(200, None).unwrap();
        let mut request = HeaderSlot::request(&req, "http");
        let mut headers = HeaderSlot::response(&resp);
        let v = chain.on_response_headers(&mut request, &mut headers, false, &mut changed, None);
        assert!(matches!(v, Verdict::Continue), "{v:?}");
        let mut chunk = Some(Bytes::from_static(b"abc"));
        assert!(matches!(
            chain.on_response_body(&mut chunk, false),
            Verdict::Continue
        ));
        assert_eq!(chunk, None, "the plugin was not given the data");
        let mut end = None;
        assert!(matches!(
            chain.on_response_body(&mut end, true),
            Verdict::Continue
        ));
        assert_eq!(
            end.as_deref(),
            Some(&b"abc"[..]),
            "the held data did not come back at the end"
        );
        let v = chain.on_response_body(&mut None, true);
        assert!(matches!(v, Verdict::Continue), "{v:?}");
        // With the end not yet told, an empty end is a callback.
        let mut chain = StreamChain::new([body_calls_plugin()], StreamProps::default());
        let mut headers = HeaderSlot::request(&req, "http");
        assert!(matches!(
            chain.on_request_headers(&mut headers, 0, false, &mut changed),
            Verdict::Continue
        ));
        assert!(matches!(
            chain.on_request_body(&mut None, true),
            Verdict::Fail(_)
        ));
    }

    #[test]
    fn header_edits_touch_only_what_changed() {
        let mut req = pingora::http::RequestHeader::build("GET", b"/a?x=1", None).unwrap();
        req.insert_header("Host", "a.example").unwrap();
        req.insert_header("X-Keep", "1").unwrap();
        req.insert_header("x-drop", "1").unwrap();
        let mut headers = HeaderSlot::request(&req, "http");
        let pairs = headers.pairs_mut();
        pairs.retain(|(k, _)| k != "x-drop");
        pairs.push(("x-new".into(), b"v".to_vec()));
        pairs.iter_mut().find(|(k, _)| k == ":path").unwrap().1 = b"/b".to_vec();
        apply_request(&mut req, headers.as_pairs().unwrap()).unwrap();
        assert_eq!(req.uri.path(), "/b");
        assert!(req.headers.get("x-drop").is_none());
        assert_eq!(req.headers.get("x-new").unwrap(), "v");
        assert_eq!(req.headers.get("x-keep").unwrap(), "1");
        let mut wire = Vec::new();
        req.header_to_h1_wire(&mut wire);
        let wire = String::from_utf8(wire).unwrap();
        // Case kept for untouched names.
        assert!(wire.contains("X-Keep: 1"), "{wire}");
    }

    #[test]
    fn a_bad_status_is_an_error() {
        let mut resp = pingora::http::ResponseHeader::build(200, None).unwrap();
        let mut headers = HeaderSlot::response(&resp);
        headers.pairs_mut()[0].1 = b"abc".to_vec();
        assert!(apply_response(&mut resp, headers.as_pairs().unwrap()).is_err());
        headers.pairs_mut()[0].1 = b"418".to_vec();
        apply_response(&mut resp, headers.as_pairs().unwrap()).unwrap();
        assert_eq!(resp.status.as_u16(), 418);
    }
}
