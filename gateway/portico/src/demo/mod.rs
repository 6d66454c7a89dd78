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
        let mut servers = tokio::task::JoinSet::new();
        for (i, addr) in self.addrs.iter().enumerate() {
            servers.spawn(echo::serve(echo::EchoConfig {
                name: format!("demo-echo-{}", i + 1),
                http: vec![*addr],
                tcp: vec![],
                udp: vec![],
                https: vec![],
                h2c: vec![],
            }));
        }
        loop {
            tokio::select! {
                done = servers.join_next() => match done {
                    Some(Ok(Err(e))) => tracing::error!(error = %e, "demo echo server failed"),
                    Some(_) => {}
                    None => break,
                },
                _ = shutdown.changed() => break,
            }
        }
    }
}
