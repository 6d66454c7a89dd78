//! `portico_http_call`: an HTTP/1.1 request a control-plane plugin makes
//! and waits for, such as `cloud-lb` asking an external load-balancer API
//! for addresses.
//!
//! Control hooks run off the data path (the LoadBalancer allocator in a
//! blocking task), so the call simply blocks, within its timeout. Only
//! instances the host allows (see `ControlClient::allow_blocking_calls`)
//! may make it; data-plane plugins have `proxy_http_call` instead.
//!
//! Request (JSON): `{"method", "url": "http://host[:port]/path",
//! "headers": {name: value}, "body": "...", "timeoutMs": 2000}`.
//! Answer (JSON): `{"status", "headers": {name: value}, "body": "..."}`,
//! or `{"error": "why"}` when there is no answer (bad URL, connect
//! failure, timeout).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::callout::{decode, encode, Callout, MAX_RESPONSE};

/// Longest wait a plugin can ask for.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_TIMEOUT_MS: u64 = 2000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Request {
    #[serde(default = "get")]
    pub method: String,
    pub url: String,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub body: String,
    #[serde(default = "default_timeout")]
    pub timeout_ms: u64,
}

fn get() -> String {
    "GET".into()
}

fn default_timeout() -> u64 {
    DEFAULT_TIMEOUT_MS
}

#[derive(Debug, Default, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Response {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub body: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `http://host[:port]/path` split into (host, port, path).
fn split_url(url: &str) -> Result<(&str, u16, &str), String> {
    let rest = url.strip_prefix("http://").ok_or_else(|| {
        format!("url {url:?}: only http:// is supported (put a TLS-terminating proxy in front of an https API)")
    })?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    // A bracketed IPv6 address has colons of its own: the port, if any,
    // follows the `]`.
    let host_end = if authority.starts_with('[') {
        authority
            .find(']')
            .map(|i| i + 1)
            .ok_or_else(|| format!("url {url:?}: unclosed [ in the host"))?
    } else {
        authority.find(':').unwrap_or(authority.len())
    };
    let (host, port) = match &authority[host_end..] {
        "" => (&authority[..host_end], 80),
        rest => {
            let p = rest.strip_prefix(':').unwrap_or(rest);
            let port = p
                .parse::<u16>()
                .map_err(|_| format!("url {url:?}: bad port {p:?}"))?;
            (&authority[..host_end], port)
        }
    };
    if host.is_empty() {
        return Err(format!("url {url:?} has no host"));
    }
    Ok((host, port, path))
}

/// Performs the request; every failure is an answer with `error`.
pub fn perform(req: &Request) -> Response {
    match try_perform(req) {
        Ok(r) => r,
        Err(e) => Response {
            error: Some(e),
            ..Response::default()
        },
    }
}

fn try_perform(req: &Request) -> Result<Response, String> {
    let timeout = Duration::from_millis(req.timeout_ms).min(MAX_TIMEOUT);
    let deadline = Instant::now() + timeout;
    let (host, port, path) = split_url(&req.url)?;
    let authority = if port == 80 {
        host.to_string()
    } else {
        format!("{host}:{port}")
    };
    let mut headers: Vec<(String, Vec<u8>)> = vec![
        (":method".into(), req.method.clone().into_bytes()),
        (":path".into(), path.as_bytes().to_vec()),
        (":authority".into(), authority.into_bytes()),
    ];
    headers.extend(
        req.headers
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.clone().into_bytes())),
    );
    let wire = encode(&Callout {
        token: 0,
        context: 0,
        upstream: req.url.clone(),
        headers,
        body: req.body.clone().into_bytes(),
        timeout,
    })?;
    let host_name = host.trim_start_matches('[').trim_end_matches(']');
    let addr = (host_name, port)
        .to_socket_addrs()
        .map_err(|e| format!("resolve {host}: {e}"))?
        .next()
        .ok_or_else(|| format!("resolve {host}: no address"))?;
    let left = |what: &str| {
        deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| format!("no answer from {addr} within {timeout:?} ({what})"))
    };
    let mut s = TcpStream::connect_timeout(&addr, left("connect")?)
        .map_err(|e| format!("connect to {addr}: {e}"))?;
    s.set_write_timeout(Some(left("write")?))
        .and_then(|_| s.write_all(&wire))
        .map_err(|e| format!("write to {addr}: {e}"))?;
    let mut raw = Vec::new();
    let mut buf = [0u8; 16 << 10];
    loop {
        s.set_read_timeout(Some(left("read")?))
            .map_err(|e| format!("read from {addr}: {e}"))?;
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err(format!("no answer from {addr} within {timeout:?}"))
            }
            Err(e) => return Err(format!("read from {addr}: {e}")),
        }
        if raw.len() > MAX_RESPONSE {
            return Err(format!("the answer is larger than {MAX_RESPONSE} bytes"));
        }
    }
    let answer = decode(&raw)?;
    let mut out = Response::default();
    for (k, v) in answer.headers {
        let v = String::from_utf8_lossy(&v).into_owned();
        if k == ":status" {
            out.status = v.parse().ok();
        } else {
            out.headers.insert(k, v);
        }
    }
    out.body = String::from_utf8_lossy(&answer.body).into_owned();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn urls() {
        assert_eq!(split_url("http://a.test/x").unwrap(), ("a.test", 80, "/x"));
        assert_eq!(
            split_url("http://127.0.0.1:9000").unwrap(),
            ("127.0.0.1", 9000, "/")
        );
        assert_eq!(split_url("http://[::1]:81/p").unwrap(), ("[::1]", 81, "/p"));
        assert_eq!(split_url("http://[::1]/p").unwrap(), ("[::1]", 80, "/p"));
        assert!(split_url("http://[::1/p").unwrap_err().contains("unclosed"));
        assert!(split_url("https://a.test/")
            .unwrap_err()
            .contains("only http://"));
        assert!(split_url("http://a.test:x/")
            .unwrap_err()
            .contains("bad port"));
        assert!(split_url("http:///p").unwrap_err().contains("no host"));
    }

    #[test]
    fn a_request_and_its_answer() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            while !got.ends_with(b"{\"a\":1}") {
                let n = s.read(&mut buf).unwrap();
                assert!(n > 0, "request ended early: {got:?}");
                got.extend_from_slice(&buf[..n]);
            }
            s.write_all(b"HTTP/1.1 201 Created\r\ncontent-type: application/json\r\ncontent-length: 11\r\n\r\n{\"ok\":true}")
                .unwrap();
            String::from_utf8(got).unwrap()
        });
        let r = perform(&Request {
            method: "POST".into(),
            url: format!("http://{addr}/allocate"),
            headers: [("X-Token".to_string(), "t".to_string())].into(),
            body: "{\"a\":1}".into(),
            timeout_ms: 3000,
        });
        let seen = server.join().unwrap();
        assert!(seen.starts_with("POST /allocate HTTP/1.1\r\n"), "{seen}");
        assert!(seen.contains("x-token: t\r\n"), "{seen}");
        assert_eq!(r.error, None);
        assert_eq!(r.status, Some(201));
        assert_eq!(r.body, "{\"ok\":true}");
        assert_eq!(r.headers["content-type"], "application/json");
    }

    #[test]
    fn no_server_and_no_answer_are_errors_within_the_timeout() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let get = |addr: std::net::SocketAddr| {
            perform(&Request {
                method: "GET".into(),
                url: format!("http://{addr}/"),
                headers: BTreeMap::new(),
                body: String::new(),
                timeout_ms: 300,
            })
        };
        let addr = l.local_addr().unwrap();
        // Accepts (the kernel does) but never answers.
        let started = Instant::now();
        assert!(get(addr).error.unwrap().contains("no answer"));
        assert!(started.elapsed() < Duration::from_secs(5));
        drop(l);
        assert!(
            get(addr).error.unwrap().contains("connect"),
            "connection refused"
        );
    }
}
