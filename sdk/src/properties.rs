//! Typed access to the stream properties Portico provides
//! (`proxy_get_property`). Names follow Envoy's attributes; integers are
//! 8-byte little-endian; Portico's own start with `portico.`.

use proxy_wasm::hostcalls::get_property;

fn text(path: Vec<&str>) -> Option<String> {
    get_property(path)
        .ok()
        .flatten()
        .map(|b| String::from_utf8_lossy(&b).into_owned())
}

fn int(path: Vec<&str>) -> Option<i64> {
    let b = get_property(path).ok().flatten()?;
    if b.len() != 8 {
        return None;
    }
    let mut a = [0u8; 8];
    a.copy_from_slice(&b);
    Some(i64::from_le_bytes(a))
}

/// `source.address`: the client, `ip:port`.
pub fn source_address() -> Option<String> {
    text(vec!["source", "address"])
}

/// The client's IP (from `source.address`).
pub fn source_ip() -> Option<String> {
    let a = source_address()?;
    let ip = match a.rfind(':') {
        Some(i) => &a[..i],
        None => &a,
    };
    Some(ip.trim_start_matches('[').trim_end_matches(']').to_string())
}

/// `destination.address`: the gateway address the client reached.
pub fn destination_address() -> Option<String> {
    text(vec!["destination", "address"])
}

/// `request.path` (with the query).
pub fn request_path() -> Option<String> {
    text(vec!["request", "path"])
}

/// `request.host`.
pub fn request_host() -> Option<String> {
    text(vec!["request", "host"])
}

/// `request.method`.
pub fn request_method() -> Option<String> {
    text(vec!["request", "method"])
}

/// `response.code`, once the response headers are known.
pub fn response_code() -> Option<i64> {
    int(vec!["response", "code"])
}

/// `connection.requested_server_name`: the TLS SNI.
pub fn requested_server_name() -> Option<String> {
    text(vec!["connection", "requested_server_name"])
}

/// `portico.route`: the Ingress (`namespace/name`) routing the request,
/// or the Service of an L4 connection.
pub fn route() -> Option<String> {
    text(vec!["portico", "route"])
}

/// `portico.service`: the backend, `namespace/service:port`.
pub fn service() -> Option<String> {
    text(vec!["portico", "service"])
}

/// `portico.namespace`.
pub fn namespace() -> Option<String> {
    text(vec!["portico", "namespace"])
}

/// `plugin_name`: this plugin's name in `portico.toml`.
pub fn plugin_name() -> Option<String> {
    text(vec!["plugin_name"])
}
