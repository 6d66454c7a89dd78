//! Demo backends for the quickstart and the end-to-end tests.

pub mod echo;

use std::net::SocketAddr;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

/// Runs the `[demo] echo` servers inside the gateway process, so that the
/// example manifests answer right after `portico run`.
pub struct EchoService {
    addrs: Vec<SocketAddr>,
}

impl EchoService {
    pub fn new(addrs: Vec<SocketAddr>) -> Self {
        EchoService { addrs }
    }
}

#[async_trait]
impl BackgroundService for EchoService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let servers = self.addrs.iter().enumerate().map(|(i, addr)| {
            echo::serve(echo::EchoConfig {
                name: format!("demo-echo-{}", i + 1),
                http: vec![*addr],
                tcp: vec![],
                udp: vec![],
            })
        });
        let all = async {
            for res in futures_join_all(servers).await {
                if let Err(e) = res {
                    tracing::error!(error = %e, "demo echo server failed");
                }
            }
        };
        tokio::select! {
            _ = all => {},
            _ = shutdown.changed() => {},
        }
    }
}

async fn futures_join_all<F>(futs: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futs.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        if let Ok(v) = h.await {
            out.push(v);
        }
    }
    out
}
