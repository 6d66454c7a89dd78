//! A small whoami-style backend for the quickstart and the end-to-end tests.
//!
//! HTTP/1.1 (hyper's server: keep-alive, Content-Length and chunked
//! request bodies): answers every request with a JSON description of it. `/status/NNN` answers with
//! that status, `/delay/MS` waits first, `/bytes/N` sends N bytes. WebSocket
//! upgrades echo frames back. TCP: sends `<name>\n`, then echoes until the
//! client half-closes. UDP: answers each datagram with `<name>:` + payload.
//! HTTPS: the same HTTP/1.1 answers over TLS (a self-signed certificate).
//! h2c: HTTP/2 with prior knowledge, answering `{"name", "proto": "h2",
//! "path", "content_type", "body_bytes"}` and, for gRPC requests, the
//! trailer `grpc-status: 0`.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use base64::Engine;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

pub struct EchoConfig {
    pub name: String,
    pub http: Vec<SocketAddr>,
    pub tcp: Vec<SocketAddr>,
    pub udp: Vec<SocketAddr>,
    pub https: Vec<SocketAddr>,
    pub h2c: Vec<SocketAddr>,
}

fn bind_err(addr: SocketAddr, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}"))
}

/// Binds everything first (so a failure names the address), then serves.
pub async fn serve(cfg: EchoConfig) -> io::Result<()> {
    let mut tasks = Vec::new();
    for addr in &cfg.http {
        let l = TcpListener::bind(addr)
            .await
            .map_err(|e| bind_err(*addr, e))?;
        tasks.push(tokio::spawn(accept_loop(l, cfg.name.clone(), Mode::Http)));
    }
    for addr in &cfg.tcp {
        let l = TcpListener::bind(addr)
            .await
            .map_err(|e| bind_err(*addr, e))?;
        tasks.push(tokio::spawn(accept_loop(l, cfg.name.clone(), Mode::Tcp)));
    }
    if !cfg.https.is_empty() {
        let acceptor = tls_acceptor().map_err(io::Error::other)?;
        for addr in &cfg.https {
            let l = TcpListener::bind(addr)
                .await
                .map_err(|e| bind_err(*addr, e))?;
            tasks.push(tokio::spawn(accept_loop(
                l,
                cfg.name.clone(),
                Mode::Https(acceptor.clone()),
            )));
        }
    }
    for addr in &cfg.h2c {
        let l = TcpListener::bind(addr)
            .await
            .map_err(|e| bind_err(*addr, e))?;
        tasks.push(tokio::spawn(accept_loop(l, cfg.name.clone(), Mode::H2c)));
    }
    for addr in &cfg.udp {
        let s = UdpSocket::bind(addr)
            .await
            .map_err(|e| bind_err(*addr, e))?;
        tasks.push(tokio::spawn(udp_loop(s, cfg.name.clone())));
    }
    for t in tasks {
        let _ = t.await;
    }
    Ok(())
}

#[derive(Clone)]
enum Mode {
    Http,
    Https(tokio_rustls::TlsAcceptor),
    H2c,
    Tcp,
}

/// A self-signed certificate for `echo.test`: backends behind
/// `backend-protocol: HTTPS` are not verified (they are pod IPs).
fn tls_acceptor() -> Result<tokio_rustls::TlsAcceptor, String> {
    let key = rcgen::generate_simple_self_signed(vec!["echo.test".to_string()])
        .map_err(|e| format!("echo certificate: {e}"))?;
    let cert = key.cert.der().clone();
    let private = rustls::pki_types::PrivateKeyDer::Pkcs8(key.signing_key.serialize_der().into());
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(vec![cert], private)
        .map_err(|e| format!("echo certificate: {e}"))?;
    Ok(tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config)))
}

async fn accept_loop(listener: TcpListener, name: String, mode: Mode) {
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        let name = name.clone();
        let mode = mode.clone();
        tokio::spawn(async move {
            let _ = match mode {
                Mode::Http => http_conn(stream, peer, &name).await,
                Mode::Https(acceptor) => match acceptor.accept(stream).await {
                    Ok(tls) => http_conn(tls, peer, &name).await,
                    Err(e) => Err(e),
                },
                Mode::H2c => h2c_conn(stream, &name).await,
                Mode::Tcp => tcp_echo(stream, &name).await,
            };
        });
    }
}

async fn udp_loop(socket: UdpSocket, name: String) {
    let mut buf = vec![0u8; 65_535];
    loop {
        let Ok((n, from)) = socket.recv_from(&mut buf).await else {
            continue;
        };
        let mut reply = format!("{name}:").into_bytes();
        reply.extend_from_slice(&buf[..n]);
        let _ = socket.send_to(&reply, from).await;
    }
}

async fn tcp_echo(stream: TcpStream, name: &str) -> io::Result<()> {
    let (mut r, mut w) = stream.into_split();
    w.write_all(format!("{name}\n").as_bytes()).await?;
    tokio::io::copy(&mut r, &mut w).await?;
    w.shutdown().await
}

/// How much of a request body the echo answer repeats.
const BODY_KEPT: usize = 4096;

type EchoBody = http_body_util::Full<bytes::Bytes>;

/// HTTP/1.1 on hyper's server connection: keep-alive, bodies of either
/// framing, HEAD, and upgrades (for WebSocket).
async fn http_conn<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    stream: S,
    peer: SocketAddr,
    name: &str,
) -> io::Result<()> {
    let name: std::sync::Arc<str> = name.into();
    let service = hyper::service::service_fn(move |req| answer(req, peer, name.clone()));
    hyper::server::conn::http1::Builder::new()
        .max_headers(128)
        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
        .with_upgrades()
        .await
        .map_err(io::Error::other)
}

fn header<'a>(req: &'a http::request::Parts, name: &str) -> Option<&'a str> {
    req.headers.get(name).and_then(|v| v.to_str().ok())
}

async fn answer(
    req: http::Request<hyper::body::Incoming>,
    peer: SocketAddr,
    name: std::sync::Arc<str>,
) -> Result<http::Response<EchoBody>, hyper::Error> {
    use http_body_util::BodyExt;
    let respond = |status: u16, content_type: &str, body: Vec<u8>| {
        http::Response::builder()
            .status(status)
            .header("content-type", content_type)
            .header("x-echo-name", &*name)
            .body(EchoBody::from(body))
            .expect("a valid answer")
    };
    if req
        .headers()
        .get("upgrade")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"))
    {
        if let Some(key) = req.headers().get("sec-websocket-key") {
            let accept = websocket_accept(&String::from_utf8_lossy(key.as_bytes()));
            let upgrade = hyper::upgrade::on(req);
            let echo_name = name.clone();
            tokio::spawn(async move {
                if let Ok(io) = upgrade.await {
                    let io = hyper_util::rt::TokioIo::new(io);
                    let _ = websocket_echo(io, Vec::new(), &echo_name).await;
                }
            });
            let mut resp = respond(101, "text/plain", Vec::new());
            resp.headers_mut().remove("content-type");
            let h = resp.headers_mut();
            h.insert("upgrade", http::HeaderValue::from_static("websocket"));
            h.insert("connection", http::HeaderValue::from_static("Upgrade"));
            h.insert(
                "sec-websocket-accept",
                http::HeaderValue::from_str(&accept).expect("base64"),
            );
            return Ok(resp);
        }
    }
    let (parts, mut body) = req.into_parts();
    let mut kept = Vec::new();
    let mut body_bytes = 0;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            body_bytes += data.len();
            let room = BODY_KEPT.saturating_sub(kept.len()).min(data.len());
            kept.extend_from_slice(&data[..room]);
        }
    }
    let target = parts.uri.to_string();
    let path = parts.uri.path();
    let mut status = 200u16;
    if let Some(code) = path
        .strip_prefix("/status/")
        .and_then(|c| c.parse::<u16>().ok())
    {
        status = code.clamp(200, 599);
    }
    if let Some(ms) = path
        .strip_prefix("/delay/")
        .and_then(|c| c.parse::<u64>().ok())
    {
        tokio::time::sleep(Duration::from_millis(ms.min(60_000))).await;
    }
    if let Some(n) = path
        .strip_prefix("/bytes/")
        .and_then(|c| c.parse::<usize>().ok())
    {
        return Ok(respond(status, "text/plain", vec![b'x'; n.min(64 << 20)]));
    }
    // One value per name, the last, as a map shows them.
    let headers: BTreeMap<&str, String> = parts
        .headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let mut out = serde_json::to_vec(&serde_json::json!({
        "name": &*name,
        "method": parts.method.as_str(),
        "path": target,
        "host": header(&parts, "host"),
        "peer": peer.to_string(),
        "headers": headers,
        "body_bytes": body_bytes,
        "body": String::from_utf8_lossy(&kept),
    }))
    .unwrap_or_default();
    out.push(b'\n');
    Ok(respond(status, "application/json", out))
}

/// HTTP/2 with prior knowledge: one JSON answer per stream.
async fn h2c_conn(stream: TcpStream, name: &str) -> io::Result<()> {
    let mut conn = h2::server::handshake(stream)
        .await
        .map_err(io::Error::other)?;
    while let Some(next) = conn.accept().await {
        let (req, mut respond) = next.map_err(io::Error::other)?;
        let name = name.to_string();
        tokio::spawn(async move {
            let (parts, mut body) = req.into_parts();
            let mut body_bytes = 0;
            while let Some(Ok(chunk)) = body.data().await {
                body_bytes += chunk.len();
                let _ = body.flow_control().release_capacity(chunk.len());
            }
            let content_type = parts
                .headers
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            let grpc = content_type.starts_with("application/grpc");
            let mut answer = serde_json::to_vec(&serde_json::json!({
                "name": name,
                "proto": "h2",
                "method": parts.method.as_str(),
                "path": parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"),
                "content_type": content_type,
                "body_bytes": body_bytes,
            }))
            .unwrap_or_default();
            answer.push(b'\n');
            let head = http::Response::builder()
                .status(200)
                .header(
                    "content-type",
                    if grpc {
                        "application/grpc"
                    } else {
                        "application/json"
                    },
                )
                .header("x-echo-name", name.as_str())
                .body(())
                .unwrap_or_default();
            let Ok(mut send) = respond.send_response(head, false) else {
                return;
            };
            let _ = send.send_data(answer.into(), !grpc);
            if grpc {
                let mut trailers = http::HeaderMap::new();
                trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
                let _ = send.send_trailers(trailers);
            }
        });
    }
    Ok(())
}

/// `Sec-WebSocket-Accept` for a key (RFC 6455 section 4.2.2).
pub fn websocket_accept(key: &str) -> String {
    let mut sha = sha1_smol::Sha1::new();
    sha.update(key.trim().as_bytes());
    sha.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(sha.digest().bytes())
}

/// One WebSocket frame (no fragmentation support beyond passing FIN along).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub fin: bool,
    pub opcode: u8,
    pub payload: Vec<u8>,
}

/// Parses a frame from the front of `buf`; returns it and its length.
pub fn decode_frame(buf: &[u8]) -> Option<(Frame, usize)> {
    if buf.len() < 2 {
        return None;
    }
    let fin = buf[0] & 0x80 != 0;
    let opcode = buf[0] & 0x0f;
    let masked = buf[1] & 0x80 != 0;
    let mut len = u64::from(buf[1] & 0x7f);
    let mut pos = 2;
    if len == 126 {
        if buf.len() < 4 {
            return None;
        }
        len = u64::from(u16::from_be_bytes([buf[2], buf[3]]));
        pos = 4;
    } else if len == 127 {
        if buf.len() < 10 {
            return None;
        }
        len = u64::from_be_bytes(buf[2..10].try_into().ok()?);
        pos = 10;
    }
    let mask = if masked {
        if buf.len() < pos + 4 {
            return None;
        }
        let m = [buf[pos], buf[pos + 1], buf[pos + 2], buf[pos + 3]];
        pos += 4;
        Some(m)
    } else {
        None
    };
    let len = usize::try_from(len).ok()?;
    if buf.len() < pos + len {
        return None;
    }
    let mut payload = buf[pos..pos + len].to_vec();
    if let Some(m) = mask {
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= m[i % 4];
        }
    }
    Some((
        Frame {
            fin,
            opcode,
            payload,
        },
        pos + len,
    ))
}

/// Encodes a frame; `mask` is required for client-to-server frames.
pub fn encode_frame(frame: &Frame, mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut out = vec![(if frame.fin { 0x80 } else { 0 }) | (frame.opcode & 0x0f)];
    let mbit = if mask.is_some() { 0x80 } else { 0 };
    let len = frame.payload.len();
    if len < 126 {
        out.push(mbit | len as u8);
    } else if len <= u16::MAX as usize {
        out.push(mbit | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(mbit | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    match mask {
        Some(m) => {
            out.extend_from_slice(&m);
            out.extend(frame.payload.iter().enumerate().map(|(i, b)| b ^ m[i % 4]));
        }
        None => out.extend_from_slice(&frame.payload),
    }
    out
}

async fn websocket_echo<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    mut buf: Vec<u8>,
    name: &str,
) -> io::Result<()> {
    let mut chunk = [0u8; 8192];
    loop {
        while let Some((frame, used)) = decode_frame(&buf) {
            buf.drain(..used);
            let reply = match frame.opcode {
                0x1 => {
                    let mut p = format!("{name}: ").into_bytes();
                    p.extend_from_slice(&frame.payload);
                    Frame {
                        payload: p,
                        ..frame
                    }
                }
                0x2 | 0x0 => frame,
                0x9 => Frame {
                    opcode: 0xA,
                    ..frame
                },
                0x8 => {
                    stream.write_all(&encode_frame(&frame, None)).await?;
                    return stream.shutdown().await;
                }
                _ => continue,
            };
            stream.write_all(&encode_frame(&reply, None)).await?;
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_key_matches_rfc_example() {
        assert_eq!(
            websocket_accept("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn frames_round_trip_at_every_length_encoding() {
        for len in [0usize, 5, 125, 126, 65_535, 65_536, 70_000] {
            let f = Frame {
                fin: true,
                opcode: 2,
                payload: (0..len).map(|i| i as u8).collect(),
            };
            for mask in [None, Some([1, 2, 3, 4])] {
                let wire = encode_frame(&f, mask);
                let (back, used) = decode_frame(&wire).unwrap();
                assert_eq!(used, wire.len());
                assert_eq!(back, f, "len {len} mask {mask:?}");
                assert!(decode_frame(&wire[..wire.len() - 1]).is_none());
            }
        }
    }

    #[test]
    fn rfc_masked_hello() {
        // RFC 6455 section 5.7: a masked "Hello".
        let wire = [
            0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
        ];
        let (f, _) = decode_frame(&wire).unwrap();
        assert_eq!(f.payload, b"Hello");
        assert_eq!(f.opcode, 1);
    }

    #[tokio::test]
    async fn http_echo_and_tcp_and_udp() {
        let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let (ha, ta, ua) = (
            http.local_addr().unwrap(),
            tcp.local_addr().unwrap(),
            udp.local_addr().unwrap(),
        );
        tokio::spawn(accept_loop(http, "e1".into(), Mode::Http));
        tokio::spawn(accept_loop(tcp, "e1".into(), Mode::Tcp));
        tokio::spawn(udp_loop(udp, "e1".into()));

        let mut s = TcpStream::connect(ha).await.unwrap();
        s.write_all(b"POST /status/201?x=1 HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
            .await
            .unwrap();
        let mut buf = vec![0u8; 4096];
        let n = s.read(&mut buf).await.unwrap();
        let text = String::from_utf8_lossy(&buf[..n]);
        assert!(text.starts_with("HTTP/1.1 201"), "{text}");
        assert!(text.contains("\"body_bytes\":3"), "{text}");
        assert!(text.contains("\"path\":\"/status/201?x=1\""), "{text}");

        let mut t = TcpStream::connect(ta).await.unwrap();
        t.write_all(b"ping").await.unwrap();
        t.shutdown().await.unwrap();
        let mut got = String::new();
        t.read_to_string(&mut got).await.unwrap();
        assert_eq!(got, "e1\nping");

        let c = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        c.send_to(b"hi", ua).await.unwrap();
        let (n, _) = c.recv_from(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"e1:hi");
    }
}
