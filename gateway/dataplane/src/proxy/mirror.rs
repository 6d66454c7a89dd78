//! Gateway API `RequestMirror`: a copy of a request goes to one endpoint
//! of another backend, and that backend's answer is read and dropped.
//!
//! A mirror never holds the request back. It runs in a task of its own on
//! its own connection pool; its body is fed from the request's as the
//! request's passes through, and a mirror that falls behind by more than
//! `BACKLOG` chunks is dropped rather than waited for. Its outcome is
//! only counted (`portico_mirror_requests_total{backend,result}`).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use pingora::connectors::http::Connector;
use pingora::http::RequestHeader;
use pingora::prelude::HttpPeer;
use tokio::sync::mpsc;

use portico_model::lb::{Pick, PickRequest};
use portico_model::policy::BackendProtocol;
use portico_model::route_rule::MirrorFilter;
use portico_model::snapshot::Snapshot;

/// Body chunks a mirror may fall behind the request by before it is
/// dropped.
const BACKLOG: usize = 32;
/// The longest a mirrored exchange may take, start to end.
const DEADLINE: Duration = Duration::from_secs(30);
/// Copies in flight at once, per proxy: a mirror backend that stalls must
/// not take the proxy's sockets with it. Past this, copies are dropped.
const MAX_IN_FLIGHT: usize = 1024;

enum Chunk {
    Data(Bytes),
    /// The request's body ended: the mirror's may end too. A feed that
    /// goes away without it means the copy is incomplete.
    End,
}

/// The timeouts a mirror's connection gets (the proxy's own).
#[derive(Debug, Clone, Copy)]
pub(super) struct MirrorTimeouts {
    pub connect: Duration,
    pub read: Duration,
    pub write: Duration,
    pub idle: Duration,
}

/// The mirrors' connection pool, shared by every request of the proxy.
pub(super) struct Mirrors {
    connector: Connector,
    timeouts: MirrorTimeouts,
    in_flight: Arc<tokio::sync::Semaphore>,
}

/// Where a request's body goes on to its mirrors.
#[derive(Default)]
pub(super) struct MirrorFeed {
    senders: Vec<(mpsc::Sender<Chunk>, String)>,
}

impl MirrorFeed {
    /// Passes a piece of the request's body on. A mirror without room
    /// for it is dropped.
    pub fn feed(&mut self, data: Option<&Bytes>, end: bool) {
        self.senders.retain(|(tx, backend)| {
            if let Some(b) = data.filter(|b| !b.is_empty()) {
                // One slot is kept for `End`.
                if tx.capacity() <= 1 || tx.try_send(Chunk::Data(b.clone())).is_err() {
                    count(backend, "dropped");
                    return false;
                }
            }
            if end {
                let _ = tx.try_send(Chunk::End);
                return false;
            }
            true
        });
    }

    pub fn is_empty(&self) -> bool {
        self.senders.is_empty()
    }

    /// Ends every copy still being fed, unfinished.
    pub fn drop_all(self) {
        for (_, backend) in &self.senders {
            count(backend, "dropped");
        }
    }
}

fn count(backend: &str, result: &'static str) {
    metrics::counter!("portico_mirror_requests_total", "backend" => backend.to_string(), "result" => result)
        .increment(1);
}

impl Mirrors {
    pub fn new(timeouts: MirrorTimeouts) -> Self {
        Mirrors {
            connector: Connector::new(None),
            timeouts,
            in_flight: Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT)),
        }
    }

    /// Starts a copy of `head` (the request as sent upstream) to each of
    /// `mirrors` that takes this request. With `body`, the copies wait
    /// for the request's body through the returned feed.
    pub fn start(
        self: &Arc<Self>,
        snapshot: &Snapshot,
        mirrors: &[MirrorFilter],
        head: &RequestHeader,
        client: Option<IpAddr>,
        protocol: Option<BackendProtocol>,
        body: bool,
    ) -> MirrorFeed {
        let mut feed = MirrorFeed::default();
        for m in mirrors {
            if !m.wants(|n| fastrand::u32(0..n)) {
                continue;
            }
            let backend = m.backend.to_string();
            let pick = snapshot.pool(&m.backend).and_then(|pool| {
                pool.pick(&PickRequest {
                    preferred: None,
                    client_ip: client,
                    exclude: &[],
                })
            });
            let Some(pick) = pick else {
                count(&backend, "no_endpoint");
                continue;
            };
            let Ok(permit) = self.in_flight.clone().try_acquire_owned() else {
                count(&backend, "dropped");
                continue;
            };
            let mut peer = super::http::upstream_peer_for(pick.addr, &m.backend, protocol, None);
            let t = self.timeouts;
            peer.options.connection_timeout = Some(t.connect);
            peer.options.read_timeout = Some(t.read);
            peer.options.write_timeout = Some(t.write);
            peer.options.idle_timeout = Some(t.idle);
            let head = mirror_head(head, body, protocol);
            let rx = body.then(|| {
                let (tx, rx) = mpsc::channel(BACKLOG + 1);
                feed.senders.push((tx, backend.clone()));
                rx
            });
            let mirrors = self.clone();
            tokio::spawn(async move {
                let result =
                    match tokio::time::timeout(DEADLINE, mirrors.exchange(&peer, head, rx, pick))
                        .await
                    {
                        Ok(r) => r,
                        Err(_) => Err("timeout"),
                    };
                count(&backend, result.err().unwrap_or("sent"));
                drop(permit);
            });
        }
        feed
    }

    /// One mirrored request: sent, its answer read to the end and
    /// dropped, the connection kept for the next.
    async fn exchange(
        &self,
        peer: &HttpPeer,
        head: RequestHeader,
        body: Option<mpsc::Receiver<Chunk>>,
        // Held to the end: it counts as a request in flight to the
        // endpoint for least-request balancing.
        _pick: Pick,
    ) -> Result<(), &'static str> {
        let failed = |e: Box<pingora::Error>| {
            tracing::debug!(peer = %peer, error = %e, "mirrored request failed");
            "failed"
        };
        let (mut s, _) = self
            .connector
            .get_http_session(peer)
            .await
            .map_err(failed)?;
        // The connector leaves these to the caller (the proxy sets them
        // on its own sessions).
        s.set_read_timeout(Some(self.timeouts.read));
        s.set_write_timeout(Some(self.timeouts.write));
        s.write_request_header(Box::new(head))
            .await
            .map_err(failed)?;
        if let Some(mut rx) = body {
            loop {
                match rx.recv().await {
                    Some(Chunk::Data(b)) => s.write_request_body(b, false).await.map_err(failed)?,
                    Some(Chunk::End) => break,
                    // The request's body was not all copied.
                    None => return Err("dropped"),
                }
            }
        }
        s.finish_request_body().await.map_err(failed)?;
        // Interim answers (100, 103) come before the real one.
        loop {
            s.read_response_header().await.map_err(failed)?;
            match s.response_header().map(|h| h.status.as_u16()) {
                Some(code) if (100..200).contains(&code) && code != 101 => continue,
                _ => break,
            }
        }
        while s.read_response_body().await.map_err(failed)?.is_some() {}
        self.connector
            .release_http_session(s, peer, Some(self.timeouts.idle))
            .await;
        Ok(())
    }
}

/// The request head a mirror sends: the upstream request's, without
/// `Expect` (the body is streamed regardless), and framed as chunked
/// over HTTP/1.1 when it has a body but says nothing of its length (a
/// request that came over HTTP/2).
fn mirror_head(
    head: &RequestHeader,
    body: bool,
    protocol: Option<BackendProtocol>,
) -> RequestHeader {
    let mut head = head.clone();
    head.remove_header(&http::header::EXPECT);
    let h1 = matches!(
        protocol,
        None | Some(BackendProtocol::Http) | Some(BackendProtocol::Https)
    );
    if body
        && h1
        && head.headers.get(http::header::CONTENT_LENGTH).is_none()
        && head.headers.get(http::header::TRANSFER_ENCODING).is_none()
    {
        let _ = head.insert_header(http::header::TRANSFER_ENCODING, "chunked");
    }
    head
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(headers: &[(&str, &str)]) -> RequestHeader {
        let mut h = RequestHeader::build("POST", b"/x", None).unwrap();
        for (k, v) in headers {
            h.insert_header(k.to_string(), *v).unwrap();
        }
        h
    }

    #[test]
    fn a_mirror_head_is_framed_for_its_body() {
        let h = mirror_head(&head(&[("expect", "100-continue")]), true, None);
        assert!(h.headers.get("expect").is_none());
        assert_eq!(h.headers.get("transfer-encoding").unwrap(), "chunked");
        let h = mirror_head(&head(&[("content-length", "3")]), true, None);
        assert!(h.headers.get("transfer-encoding").is_none());
        let h = mirror_head(&head(&[]), false, None);
        assert!(h.headers.get("transfer-encoding").is_none());
        // HTTP/2 frames bodies itself.
        let h = mirror_head(&head(&[]), true, Some(BackendProtocol::Grpc));
        assert!(h.headers.get("transfer-encoding").is_none());
    }

    #[test]
    fn a_feed_drops_a_mirror_that_falls_behind_and_ends_the_others() {
        let (tx, mut rx) = mpsc::channel(BACKLOG + 1);
        let mut feed = MirrorFeed {
            senders: vec![(tx, "ns/shadow:80".into())],
        };
        let chunk = Bytes::from_static(b"abc");
        for _ in 0..BACKLOG {
            feed.feed(Some(&chunk), false);
        }
        assert!(!feed.is_empty());
        // One more than the backlog: dropped, and its channel closes
        // without `End`.
        feed.feed(Some(&chunk), false);
        assert!(feed.is_empty());
        let mut data = 0;
        while let Ok(c) = rx.try_recv() {
            assert!(matches!(c, Chunk::Data(_)));
            data += 1;
        }
        assert_eq!(data, BACKLOG);

        let (tx, mut rx) = mpsc::channel(BACKLOG + 1);
        let mut feed = MirrorFeed {
            senders: vec![(tx, "ns/shadow:80".into())],
        };
        feed.feed(Some(&chunk), false);
        feed.feed(Some(&Bytes::new()), true);
        assert!(feed.is_empty());
        assert!(matches!(rx.try_recv(), Ok(Chunk::Data(_))));
        assert!(matches!(rx.try_recv(), Ok(Chunk::End)));
    }
}
