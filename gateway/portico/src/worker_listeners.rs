//! The L7 listeners, one set per worker thread.
//!
//! Pingora's listening service accepts on one worker thread and spawns each
//! connection on a random worker (`pingora_runtime::current_handle`), but the
//! accepted socket stays registered with the accepting thread's I/O driver.
//! Every readiness event of such a connection then crosses threads: the
//! accepting thread's driver wakes a task owned by another runtime (an
//! `eventfd` write, and a second `epoll_wait` on the other thread). With two
//! workers that measured about 0.6 cross-thread wake-ups per keep-alive
//! request (`strace -c -f`), none with one.
//!
//! So each worker is a service of its own with one thread and its own
//! listening sockets, bound with `SO_REUSEPORT` so that the kernel spreads
//! new connections over the workers (nginx's `reuseport`); a worker serves
//! what it accepts on its own thread. The fd table Pingora passes is for its
//! binary upgrade, which Portico does not use: it is not handed on, since it
//! would give every worker the first worker's socket. Each worker's Pingora
//! proxy is configured for one thread, so that its upstream pool is sized
//! for one (`run::server_conf`).

use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::listeners::TcpSocketOptions;
use pingora::server::{ListenFds, ShutdownWatch};
use pingora::services::listening::Service as ListeningService;
use pingora::services::Service;

/// One worker thread serving the listeners it bound itself.
pub struct WorkerListeners<A> {
    inner: ListeningService<A>,
}

impl<A> WorkerListeners<A> {
    /// `inner`'s listeners must be added with [`socket_options`] when there
    /// is more than one worker.
    pub fn new(inner: ListeningService<A>) -> Self {
        WorkerListeners { inner }
    }
}

/// The listening socket options for `workers` workers: several sockets on
/// one address need `SO_REUSEPORT`; a single worker keeps the default, so
/// that nothing else can bind beside it.
pub fn socket_options(workers: usize) -> Option<TcpSocketOptions> {
    (workers > 1).then(|| {
        let mut options = TcpSocketOptions::default();
        options.so_reuseport = Some(true);
        options
    })
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> Service for WorkerListeners<A> {
    async fn start_service(
        &mut self,
        _fds: Option<ListenFds>,
        shutdown: ShutdownWatch,
        listeners_per_fd: usize,
    ) {
        self.inner
            .start_service(None, shutdown, listeners_per_fd)
            .await
    }

    fn name(&self) -> &str {
        self.inner.name()
    }

    fn threads(&self) -> Option<usize> {
        Some(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn several_workers_share_an_address_by_reuseport_and_one_keeps_it_alone() {
        assert!(socket_options(1).is_none());
        let two = socket_options(2).expect("options for two workers");
        assert_eq!(two.so_reuseport, Some(true));
    }
}
