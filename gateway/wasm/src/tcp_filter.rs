//! proxy-wasm TCP stream contexts: one L4 connection through a chain of
//! plugins. Data from the client runs the chain in order, data from the
//! upstream in reverse order (Envoy's read and write filters). A plugin
//! that returns `Pause` from a data callback before the end has the data
//! held and is called again with everything so far; what it leaves in the
//! buffer is what goes on, so it may change lengths freely.

use super::body::BodySlot;
use super::http_filter::{Step, StreamChain};

/// `proxy_buffer_type_t`.
const DOWNSTREAM_DATA: i32 = 2;
const UPSTREAM_DATA: i32 = 3;
/// `proxy_action_t`.
const ACTION_PAUSE: i32 = 1;
/// `proxy_peer_type_t`: the connection closed on its own (not known to be
/// local or remote here).
const PEER_UNKNOWN: i32 = 0;

/// What the relay does next.
#[derive(Debug, PartialEq, Eq)]
pub enum TcpVerdict {
    Continue,
    /// A plugin closed the connection (`proxy_close_stream`).
    Close,
    /// A fail-closed plugin failed: close the connection.
    Fail(String),
}

impl StreamChain {
    /// `proxy_on_new_connection` for every plugin, before the upstream is
    /// chosen (so a plugin may choose it).
    pub fn on_new_connection(&mut self) -> TcpVerdict {
        for i in 0..self.len() {
            if self.filters[i].plugin.exports.new_connection {
                let step = self.call(i, "proxy_on_new_connection", |inst, ctx| {
                    inst.vm
                        .sandbox
                        .call::<i32, i32>("proxy_on_new_connection", ctx)
                });
                if let Step::Failed(p) = step {
                    return TcpVerdict::Fail(p);
                }
            } else {
                // Still a context, so data callbacks have one.
                let step = self.call(i, "proxy_on_context_create", |_, _| Ok(()));
                if let Step::Failed(p) = step {
                    return TcpVerdict::Fail(p);
                }
            }
            if self.close_requested {
                return TcpVerdict::Close;
            }
        }
        TcpVerdict::Continue
    }

    /// Whether every plugin asked for no data callbacks (and none failed
    /// closed): the connection can be spliced.
    pub fn passthrough(&self) -> bool {
        self.filters.iter().all(|f| f.passthrough || f.skipped)
    }

    /// Passes `data` (client → upstream when `downstream`) through the
    /// chain; afterwards `data` is what to write on.
    pub fn on_data(
        &mut self,
        downstream: bool,
        data: &mut Vec<u8>,
        end_of_stream: bool,
    ) -> TcpVerdict {
        let (buffer, export) = if downstream {
            (DOWNSTREAM_DATA, "proxy_on_downstream_data")
        } else {
            (UPSTREAM_DATA, "proxy_on_upstream_data")
        };
        let n = self.len();
        for k in 0..n {
            let i = if downstream { k } else { n - 1 - k };
            let f = &mut self.filters[i];
            let wanted = if downstream {
                f.plugin.exports.downstream_data
            } else {
                f.plugin.exports.upstream_data
            };
            if !wanted || f.skipped || f.instance == 0 {
                continue;
            }
            let held = if downstream {
                &mut f.request_body
            } else {
                &mut f.response_body
            };
            held.append(data);
            if held.is_empty() && !end_of_stream {
                continue;
            }
            let mut chunk = std::mem::take(held);
            let len = chunk.len() as i32;
            let step = self.call(i, export, |inst, ctx| {
                inst.vm
                    .sandbox
                    .data_mut()
                    .buffers
                    .insert(buffer, std::mem::take(&mut chunk).into());
                let r = inst
                    .vm
                    .sandbox
                    .call::<(i32, i32, i32), i32>(export, (ctx, len, end_of_stream as i32));
                chunk = inst
                    .vm
                    .sandbox
                    .data_mut()
                    .buffers
                    .remove(&buffer)
                    .map(BodySlot::into_vec)
                    .unwrap_or_default();
                r
            });
            match step {
                Step::Failed(p) => return TcpVerdict::Fail(p),
                Step::Ran(ACTION_PAUSE) if !end_of_stream => {
                    let f = &mut self.filters[i];
                    if downstream {
                        f.request_body = chunk;
                    } else {
                        f.response_body = chunk;
                    }
                    return if self.close_requested {
                        TcpVerdict::Close
                    } else {
                        TcpVerdict::Continue
                    };
                }
                Step::Ran(_) | Step::Skipped => *data = chunk,
            }
            if self.close_requested {
                return TcpVerdict::Close;
            }
        }
        TcpVerdict::Continue
    }

    /// One side of the connection closed:
    /// `proxy_on_downstream_connection_close` or
    /// `proxy_on_upstream_connection_close`, once per side.
    pub fn on_close(&mut self, downstream: bool) {
        let export = if downstream {
            "proxy_on_downstream_connection_close"
        } else {
            "proxy_on_upstream_connection_close"
        };
        for i in 0..self.len() {
            let f = &self.filters[i];
            let wanted = if downstream {
                f.plugin.exports.downstream_close
            } else {
                f.plugin.exports.upstream_close
            };
            if !wanted || f.skipped || f.instance == 0 {
                continue;
            }
            let _ = self.call(i, export, |inst, ctx| {
                inst.vm
                    .sandbox
                    .call::<(i32, i32), ()>(export, (ctx, PEER_UNKNOWN))
            });
        }
    }
}
