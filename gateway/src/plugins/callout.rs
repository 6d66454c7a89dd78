//! `proxy_http_call`: a plugin's HTTP request to a named upstream, and
//! the answer delivered back through `proxy_on_http_call_response`.
//!
//! Upstream names are Portico backends, `namespace/service:port` (the
//! Service port's name, or its number when unnamed, as `/config` shows
//! it) of a Service that an Ingress or L4 listener uses, so a plugin
//! reaches only what the gateway already routes to, balanced like any
//! request. The request is
//! HTTP/1.1 with `Connection: close`; the answer is read whole (at most
//! `MAX_RESPONSE` bytes) within the plugin's timeout.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A call the plugin made; started by the host once the plugin returns.
#[derive(Debug, Clone)]
pub struct Callout {
    pub token: u32,
    /// The context that made it (its answer goes there).
    pub context: u32,
    pub upstream: String,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
    pub timeout: Duration,
}

/// The answer: headers with `:status` first, body, trailers (none over
/// HTTP/1.1). `None` for a call that failed (connect, timeout, bad
/// answer), which proxy-wasm reports as an answer with no headers.
#[derive(Debug, Clone, Default)]
pub struct CalloutResponse {
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
}

/// The most response a callout reads.
pub const MAX_RESPONSE: usize = 4 << 20;

type Resolve = dyn Fn(&str) -> Result<SocketAddr, String> + Send + Sync;

static RESOLVER: OnceLock<Arc<Resolve>> = OnceLock::new();

/// Sets how upstream names become an endpoint (once, at startup).
pub fn set_resolver(f: Arc<Resolve>) {
    let _ = RESOLVER.set(f);
}

/// Whether a name can be called now: checked when the plugin calls, so a
/// bad name fails the call at once (`BadArgument`) rather than later.
pub fn resolve(upstream: &str) -> Result<SocketAddr, String> {
    match RESOLVER.get() {
        Some(r) => r(upstream),
        None => Err("HTTP callouts are not available in this process".into()),
    }
}

fn header<'a>(headers: &'a [(String, Vec<u8>)], name: &str) -> Option<&'a [u8]> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_slice())
}

/// The request on the wire.
pub fn encode(c: &Callout) -> Result<Vec<u8>, String> {
    let method = header(&c.headers, ":method").unwrap_or(b"GET");
    let path = header(&c.headers, ":path").ok_or("the call has no :path header")?;
    let authority = header(&c.headers, ":authority").unwrap_or(c.upstream.as_bytes());
    let ok = |b: &[u8]| !b.iter().any(|&x| x == b'\r' || x == b'\n');
    let mut out = Vec::with_capacity(256 + c.body.len());
    for part in [method, path, authority] {
        if !ok(part) || part.is_empty() {
            return Err("a pseudo-header of the call is empty or has a line break".into());
        }
    }
    out.extend_from_slice(method);
    out.push(b' ');
    out.extend_from_slice(path);
    out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    out.extend_from_slice(authority);
    out.extend_from_slice(b"\r\n");
    for (k, v) in &c.headers {
        let framing = matches!(
            k.as_str(),
            "host" | "content-length" | "transfer-encoding" | "connection"
        );
        if k.starts_with(':') || framing {
            continue;
        }
        if !ok(k.as_bytes()) || !ok(v) || k.is_empty() {
            return Err(format!("header {k:?} of the call has a line break"));
        }
        out.extend_from_slice(k.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(v);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("content-length: {}\r\n", c.body.len()).as_bytes());
    out.extend_from_slice(b"connection: close\r\n\r\n");
    out.extend_from_slice(&c.body);
    Ok(out)
}

/// Parses a whole HTTP/1.1 response (read until the server closed).
pub fn decode(raw: &[u8]) -> Result<CalloutResponse, String> {
    let mut headers = [httparse::EMPTY_HEADER; 100];
    let mut resp = httparse::Response::new(&mut headers);
    let head = match resp.parse(raw) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Err("the answer ended inside its headers".into()),
        Err(e) => return Err(format!("the answer is not HTTP/1.1: {e}")),
    };
    let status = resp.code.unwrap_or(0);
    let mut out = CalloutResponse::default();
    out.headers
        .push((":status".into(), status.to_string().into_bytes()));
    let mut chunked = false;
    let mut length = None;
    for h in resp.headers.iter() {
        let name = h.name.to_ascii_lowercase();
        if name == "transfer-encoding" {
            chunked = String::from_utf8_lossy(h.value)
                .to_ascii_lowercase()
                .contains("chunked");
        }
        if name == "content-length" {
            length = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok());
        }
        out.headers.push((name, h.value.to_vec()));
    }
    let rest = &raw[head..];
    out.body = if chunked {
        dechunk(rest)?
    } else {
        match length {
            Some(n) if n <= rest.len() => rest[..n].to_vec(),
            Some(_) => return Err("the answer ended inside its body".into()),
            None => rest.to_vec(),
        }
    };
    Ok(out)
}

fn dechunk(mut rest: &[u8]) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    loop {
        let line_end = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("bad chunked body")?;
        let size_text = std::str::from_utf8(&rest[..line_end]).map_err(|_| "bad chunk size")?;
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| "bad chunk size")?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Ok(body);
        }
        if rest.len() < size + 2 {
            return Err("the answer ended inside a chunk".into());
        }
        body.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}

/// Performs the call.
pub async fn perform(addr: SocketAddr, c: &Callout) -> Result<CalloutResponse, String> {
    let request = encode(c)?;
    let work = async {
        let mut s = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect to {addr}: {e}"))?;
        s.write_all(&request)
            .await
            .map_err(|e| format!("write to {addr}: {e}"))?;
        let mut raw = Vec::new();
        let mut limited = (&mut s).take(MAX_RESPONSE as u64 + 1);
        limited
            .read_to_end(&mut raw)
            .await
            .map_err(|e| format!("read from {addr}: {e}"))?;
        if raw.len() > MAX_RESPONSE {
            return Err(format!("the answer is larger than {MAX_RESPONSE} bytes"));
        }
        decode(&raw)
    };
    match tokio::time::timeout(c.timeout, work).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer from {addr} within {:?}", c.timeout)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(headers: &[(&str, &str)]) -> Callout {
        Callout {
            token: 1,
            context: 2,
            upstream: "default/auth:http".into(),
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
                .collect(),
            body: b"hi".to_vec(),
            timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn requests_are_framed_by_the_host() {
        let wire = encode(&call(&[
            (":method", "POST"),
            (":path", "/check"),
            (":authority", "auth"),
            ("x-a", "1"),
            ("content-length", "999"),
        ]))
        .unwrap();
        let text = String::from_utf8(wire).unwrap();
        assert!(
            text.starts_with("POST /check HTTP/1.1\r\nhost: auth\r\n"),
            "{text}"
        );
        assert!(text.contains("x-a: 1\r\n"));
        assert!(text.contains("content-length: 2\r\n") && !text.contains("999"));
        assert!(text.ends_with("\r\n\r\nhi"));
        assert!(encode(&call(&[(":method", "GET")])).is_err(), "no :path");
        assert!(encode(&call(&[(":path", "/a\r\nx: y")])).is_err());
    }

    #[test]
    fn answers_with_length_or_chunks() {
        let r =
            decode(b"HTTP/1.1 201 Created\r\nContent-Length: 3\r\nX-Y: z\r\n\r\nabcdef").unwrap();
        assert_eq!(r.headers[0], (":status".to_string(), b"201".to_vec()));
        assert!(r.headers.contains(&("x-y".to_string(), b"z".to_vec())));
        assert_eq!(r.body, b"abc");
        let r = decode(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
            .unwrap();
        assert_eq!(r.body, b"abcde");
        assert!(decode(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nab").is_err());
        assert!(decode(b"garbage").is_err());
    }
}
