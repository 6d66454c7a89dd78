//! Upstream choice: Portico's extension to proxy-wasm (the gap it leaves:
//! a filter cannot see or pick the endpoint). The host calls are named
//! after Higress's so plugins port easily:
//!
//! ```text
//! proxy_get_upstream_hosts(return_data: *mut *mut u8, return_size: *mut usize) -> proxy_status_t
//!     The endpoints of the backend this stream goes to, as pairs in the
//!     header-map encoding: ("10.0.0.7:8080", "ready" | "serving" |
//!     "cooling-down"). NotFound before the backend is known (listener
//!     plugins on a request no route matches).
//! proxy_set_upstream_override_host(data: *const u8, size: usize) -> proxy_status_t
//!     Send this stream to that endpoint ("ip:port", one of the above).
//!     BadArgument if it is not one. The gateway takes it when the
//!     endpoint can take traffic; otherwise its own policy picks.
//! ```
//!
//! Call them from a request-headers or new-connection callback, before
//! the upstream is connected.

use proxy_wasm::types::Status;

/// How an endpoint is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostState {
    /// Ready (EndpointSlice `ready`).
    Ready,
    /// Terminating but still serving.
    Serving,
    /// Failed recently; the gateway avoids it for a while.
    CoolingDown,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamHost {
    /// `ip:port`.
    pub address: String,
    pub state: HostState,
}

#[cfg(target_arch = "wasm32")]
extern "C" {
    fn proxy_get_upstream_hosts(return_data: *mut *mut u8, return_size: *mut usize) -> u32;
    fn proxy_set_upstream_override_host(data: *const u8, size: usize) -> u32;
}

fn status(code: u32) -> Result<(), Status> {
    match code {
        0 => Ok(()),
        1 => Err(Status::NotFound),
        2 => Err(Status::BadArgument),
        _ => Err(Status::InternalFailure),
    }
}

/// The endpoints of the backend the current stream goes to.
pub fn hosts() -> Result<Vec<UpstreamHost>, Status> {
    let raw = raw_hosts()?;
    let pairs = crate::pairs::decode(&raw).ok_or(Status::InternalFailure)?;
    Ok(pairs
        .into_iter()
        .map(|(address, state)| UpstreamHost {
            address,
            state: match state.as_str() {
                "ready" => HostState::Ready,
                "serving" => HostState::Serving,
                _ => HostState::CoolingDown,
            },
        })
        .collect())
}

#[cfg(target_arch = "wasm32")]
fn raw_hosts() -> Result<Vec<u8>, Status> {
    let mut ptr: *mut u8 = std::ptr::null_mut();
    let mut len: usize = 0;
    // SAFETY: the host writes a pointer it got from this module's
    // allocator (proxy_on_memory_allocate: a Vec of exactly `len` bytes,
    // at least 1) and the length; we take ownership of it.
    unsafe {
        status(proxy_get_upstream_hosts(&mut ptr, &mut len))?;
        if ptr.is_null() {
            return Ok(Vec::new());
        }
        Ok(Vec::from_raw_parts(ptr, len, len.max(1)))
    }
}

#[cfg(not(target_arch = "wasm32"))]
fn raw_hosts() -> Result<Vec<u8>, Status> {
    Err(Status::InternalFailure)
}

/// Sends the current stream to `address` (`ip:port`, one of [`hosts`]).
pub fn choose(address: &str) -> Result<(), Status> {
    #[cfg(target_arch = "wasm32")]
    // SAFETY: the host only reads `size` bytes at `data`.
    unsafe {
        status(proxy_set_upstream_override_host(
            address.as_ptr(),
            address.len(),
        ))
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        let _ = (address, status(0));
        Err(Status::InternalFailure)
    }
}
