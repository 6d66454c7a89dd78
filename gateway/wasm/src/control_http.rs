//! `portico_http_call`: an HTTP/1.1 request a control-plane plugin makes
//! and waits for, such as `cloud-lb` asking an external load-balancer API
//! for addresses.
//!
//! Control hooks run off the data path (the LoadBalancer allocator in a
//! blocking task), so the call simply blocks, within its timeout. Only
//! instances the host allows (see `ControlClient::allow_blocking_calls`)
//! may make it; data-plane plugins have `proxy_http_call` instead.
//!
//! Request (JSON): `{"method", "url": "http[s]://host[:port]/path",
//! "headers": {name: value}, "body": "...", "timeoutMs": 2000,
//! "caPem": "-----BEGIN CERTIFICATE-----..."}`.
//! Answer (JSON): `{"status", "headers": {name: value}, "body": "..."}`,
//! or `{"error": "why"}` when there is no answer (bad URL, connect
//! failure, timeout, a certificate that does not verify).
//!
//! `https://` verifies the server's certificate and name (rustls) against
//! the system's trusted roots, or only against `caPem` when given (an
//! in-house IPAM with a private CA). There is no way to skip
//! verification: an allocator's answer decides which addresses the
//! cluster announces.

use std::collections::BTreeMap;
use std::net::ToSocketAddrs;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use rustls::pki_types::ServerName;

use serde::{Deserialize, Serialize};

use crate::http_client;

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
    /// For `https://`: trust only these CA certificates (PEM), not the
    /// system's.
    #[serde(default)]
    pub ca_pem: Option<String>,
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

/// Where a request goes.
#[derive(Debug, PartialEq, Eq)]
struct Target {
    tls: bool,
    /// As written (an IPv6 address keeps its brackets).
    host: String,
    port: u16,
    /// Path and query, `/` when the URL has none.
    path: String,
}

/// `http[s]://host[:port]/path`, parsed by `http::Uri`.
fn split_url(url: &str) -> Result<Target, String> {
    let tls = match url.split_once("://") {
        Some(("http", _)) => false,
        Some(("https", _)) => true,
        _ => {
            return Err(format!(
                "url {url:?}: only http:// and https:// are supported"
            ))
        }
    };
    let uri = http::Uri::try_from(url).map_err(|e| format!("url {url:?}: {e}"))?;
    let host = uri
        .host()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| format!("url {url:?} has no host"))?;
    // `Uri::port` is `None` for a port that is not a number: read it here.
    let after_host = uri
        .authority()
        .map_or("", |a| a.as_str().rsplit_once(host).map_or("", |(_, p)| p));
    let port = match after_host.strip_prefix(':') {
        Some(p) => p
            .parse::<u16>()
            .map_err(|_| format!("url {url:?}: bad port {p:?}"))?,
        None if tls => 443,
        None => 80,
    };
    let authority = url.split_once("://").map_or("", |(_, rest)| rest);
    if authority
        .split(['/', '?', '#'])
        .next()
        .is_some_and(|a| a.contains('@'))
    {
        return Err(format!("url {url:?}: user information is not supported"));
    }
    Ok(Target {
        tls,
        host: host.to_string(),
        port,
        path: uri.path_and_query().map_or("/", |p| p.as_str()).to_string(),
    })
}

/// The system's trusted CA certificates, read once.
fn system_roots() -> Arc<rustls::RootCertStore> {
    static ROOTS: OnceLock<Arc<rustls::RootCertStore>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let found = rustls_native_certs::load_native_certs();
            for e in &found.errors {
                tracing::warn!(error = %e, "reading the system's trusted CA certificates");
            }
            let mut roots = rustls::RootCertStore::empty();
            let (_, ignored) = roots.add_parsable_certificates(found.certs);
            if ignored > 0 {
                tracing::debug!(ignored, "system CA certificates that do not parse");
            }
            Arc::new(roots)
        })
        .clone()
}

/// The roots a request trusts: its own `caPem`, or the system's.
fn roots(ca_pem: Option<&str>) -> Result<Arc<rustls::RootCertStore>, String> {
    use rustls::pki_types::pem::PemObject;
    let Some(pem) = ca_pem else {
        return Ok(system_roots());
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes()) {
        let cert = cert.map_err(|e| format!("caPem: {e}"))?;
        roots
            .add(cert)
            .map_err(|e| format!("caPem: a certificate is not usable as a CA: {e}"))?;
    }
    if roots.is_empty() {
        return Err("caPem holds no PEM certificate".into());
    }
    Ok(Arc::new(roots))
}

fn tls_config(ca_pem: Option<&str>) -> Result<Arc<rustls::ClientConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_root_certificates(roots(ca_pem)?)
        .with_no_client_auth();
    Ok(Arc::new(config))
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
    let Target {
        tls,
        host,
        port,
        path,
    } = split_url(&req.url)?;
    let authority = if port == if tls { 443 } else { 80 } {
        host.clone()
    } else {
        format!("{host}:{port}")
    };
    let mut headers: Vec<(String, Vec<u8>)> = vec![
        (":method".into(), req.method.clone().into_bytes()),
        (":path".into(), path.into_bytes()),
        (":authority".into(), authority.into_bytes()),
    ];
    headers.extend(
        req.headers
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.clone().into_bytes())),
    );
    let mut request = http_client::request(&headers, req.body.clone().into(), "")?;
    // One request per connection: a blocking call has no pool to return to.
    request.headers_mut().insert(
        http::header::CONNECTION,
        http::HeaderValue::from_static("close"),
    );
    let host_name = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    // Checked before connecting: a bad `caPem` is the request's fault.
    let tls = match tls {
        true => {
            let name = ServerName::try_from(host_name.clone())
                .map_err(|e| format!("TLS: {host:?} is not a valid server name: {e}"))?;
            Some((tls_config(req.ca_pem.as_deref())?, name))
        }
        false => None,
    };
    let addr = (host_name.as_str(), port)
        .to_socket_addrs()
        .map_err(|e| format!("resolve {host}: {e}"))?
        .next()
        .ok_or_else(|| format!("resolve {host}: no address"))?;
    let work = async move {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect to {addr}: {e}"))?;
        let peer = addr.to_string();
        match tls {
            None => http_client::once(tcp, &peer, request).await,
            Some((config, name)) => {
                let stream = tokio_rustls::TlsConnector::from(config)
                    .connect(name, tcp)
                    .await
                    .map_err(|e| format!("TLS handshake with {addr} ({host_name}): {e}"))?;
                http_client::once(stream, &peer, request).await
            }
        }
    };
    let answer = block_on(async move {
        tokio::time::timeout(timeout, work)
            .await
            .unwrap_or_else(|_| Err(format!("no answer from {addr} within {timeout:?}")))
    })?;
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

/// Runs `work` to completion on a runtime of its own. Control hooks run
/// on blocking threads, but a runtime cannot be entered from a thread
/// that is already inside one: there the work gets a thread of its own.
fn block_on<T: Send>(
    work: impl std::future::Future<Output = Result<T, String>> + Send,
) -> Result<T, String> {
    let run = move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("starting the call's runtime: {e}"))?
            .block_on(work)
    };
    if tokio::runtime::Handle::try_current().is_err() {
        return run();
    }
    std::thread::scope(|s| {
        s.spawn(run)
            .join()
            .unwrap_or_else(|_| Err("the call's thread panicked".into()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;
    use std::time::Instant;

    #[test]
    fn urls() {
        let t = |url| split_url(url).map(|t| (t.tls, t.host, t.port, t.path));
        let ok =
            |tls, host: &str, port, path: &str| (tls, host.to_string(), port, path.to_string());
        assert_eq!(t("http://a.test/x").unwrap(), ok(false, "a.test", 80, "/x"));
        assert_eq!(
            t("http://a.test/x?y=1").unwrap(),
            ok(false, "a.test", 80, "/x?y=1")
        );
        assert_eq!(
            t("http://127.0.0.1:9000").unwrap(),
            ok(false, "127.0.0.1", 9000, "/")
        );
        assert_eq!(
            t("http://[::1]:81/p").unwrap(),
            ok(false, "[::1]", 81, "/p")
        );
        assert_eq!(t("http://[::1]/p").unwrap(), ok(false, "[::1]", 80, "/p"));
        assert_eq!(
            t("https://a.test/v1").unwrap(),
            ok(true, "a.test", 443, "/v1")
        );
        assert_eq!(
            t("https://a.test:8443").unwrap(),
            ok(true, "a.test", 8443, "/")
        );
        for (url, why) in [
            ("http://[::1/p", "invalid"),
            ("ftp://a.test/", "only http:// and https://"),
            ("a.test/x", "only http:// and https://"),
            ("http://a.test:x/", "bad port"),
            ("http://a.test:70000/", "bad port"),
            ("http:///p", "invalid"),
            ("http://u:p@a.test/", "user information"),
        ] {
            let e = split_url(url).unwrap_err();
            assert!(e.contains(url) && e.contains(why), "{url}: {e}");
        }
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
            ca_pem: None,
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
                ca_pem: None,
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

    /// A CA, and a server certificate it signed for `names`.
    fn ca_and_leaf(names: &[&str]) -> (String, rustls::ServerConfig) {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(rcgen::DnType::CommonName, "control_http test CA");
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca, ca_key);
        let key = rcgen::KeyPair::generate().unwrap();
        let leaf =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap()
                .signed_by(&key, &issuer)
                .unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
        (ca_cert.pem(), config)
    }

    /// An HTTPS server on 127.0.0.1 answering one connection with
    /// `answer` (if the handshake succeeds); returns what it read.
    fn tls_server(
        config: rustls::ServerConfig,
        answer: &'static [u8],
    ) -> (std::net::SocketAddr, std::thread::JoinHandle<String>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (sock, _) = l.accept().unwrap();
            sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let conn = rustls::ServerConnection::new(Arc::new(config)).unwrap();
            let mut s = rustls::StreamOwned::new(conn, sock);
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut buf) {
                    Ok(n) if n > 0 => got.extend_from_slice(&buf[..n]),
                    // The client refused the handshake.
                    _ => return String::new(),
                }
            }
            s.write_all(answer).unwrap();
            s.conn.send_close_notify();
            let _ = s.flush();
            String::from_utf8(got).unwrap()
        });
        (addr, server)
    }

    fn get_tls(url: String, ca_pem: Option<String>) -> Response {
        perform(&Request {
            method: "GET".into(),
            url,
            headers: BTreeMap::new(),
            body: String::new(),
            timeout_ms: 3000,
            ca_pem,
        })
    }

    #[test]
    fn https_verifies_the_server_against_the_given_ca() {
        let (ca, config) = ca_and_leaf(&["127.0.0.1"]);
        let (addr, server) = tls_server(
            config,
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
        );
        let r = get_tls(format!("https://{addr}/v1/allocate"), Some(ca));
        assert_eq!(r.error, None);
        assert_eq!(r.status, Some(200));
        assert_eq!(r.body, "ok");
        let seen = server.join().unwrap();
        assert!(seen.starts_with("GET /v1/allocate HTTP/1.1\r\n"), "{seen}");
    }

    #[test]
    fn https_refuses_an_untrusted_or_misnamed_certificate() {
        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
        // Signed by a CA the system does not trust, and no caPem given.
        let (_, config) = ca_and_leaf(&["127.0.0.1"]);
        let (addr, server) = tls_server(config, ok);
        let e = get_tls(format!("https://{addr}/"), None).error.unwrap();
        assert!(
            e.contains("TLS handshake with") && e.contains("UnknownIssuer"),
            "{e}"
        );
        assert_eq!(server.join().unwrap(), "", "the request was sent");
        // Trusted CA, but the certificate names another host.
        let (ca, config) = ca_and_leaf(&["ipam.example"]);
        let (addr, server) = tls_server(config, ok);
        let e = get_tls(format!("https://{addr}/"), Some(ca)).error.unwrap();
        assert!(
            e.contains("TLS handshake with") && e.contains("not valid for name"),
            "{e}"
        );
        assert_eq!(server.join().unwrap(), "", "the request was sent");
    }

    #[test]
    fn a_bad_ca_pem_is_named() {
        let e = get_tls("https://127.0.0.1:1/".into(), Some("not a PEM".into()))
            .error
            .unwrap();
        assert!(e.contains("caPem holds no PEM certificate"), "{e}");
    }
}
