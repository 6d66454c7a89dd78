//! Graceful shutdown: SIGTERM stops accepting, in-flight work drains for at
//! most the grace period, then the process exits 0.
//!
//! Pingora's own sequence always sleeps the whole grace period; we count
//! in-flight requests and connections ourselves and exit as soon as they
//! reach zero.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::server::{ShutdownSignal, ShutdownSignalWatch};
use tokio::signal::unix::{signal, SignalKind};

static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);
/// Run once when draining starts, before the listeners stop accepting.
type DrainHook = Box<dyn FnOnce() + Send>;
static ON_DRAIN: Mutex<Vec<DrainHook>> = Mutex::new(Vec::new());

/// Registers `hook` to run when SIGTERM (or SIGINT) arrives, before the
/// listeners stop accepting: the node gives up its announced addresses
/// while it still serves, so clients move to another node without a
/// refused connection.
pub fn on_drain(hook: DrainHook) {
    ON_DRAIN
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(hook);
}

fn run_drain_hooks() {
    let hooks = std::mem::take(&mut *ON_DRAIN.lock().unwrap_or_else(|e| e.into_inner()));
    for hook in hooks {
        hook();
    }
}
static DRAINING: AtomicBool = AtomicBool::new(false);

/// Counts one request or connection as in flight while alive.
pub struct InFlight(());

impl InFlight {
    pub fn start() -> Self {
        IN_FLIGHT.fetch_add(1, Ordering::Relaxed);
        InFlight(())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        IN_FLIGHT.fetch_sub(1, Ordering::Relaxed);
    }
}

pub fn in_flight() -> usize {
    IN_FLIGHT.load(Ordering::Relaxed)
}

/// True once SIGTERM arrived: listeners stop accepting.
pub fn draining() -> bool {
    DRAINING.load(Ordering::Relaxed)
}

pub struct DrainingSignalWatch {
    pub grace: Duration,
    /// Called once right before exit (flushes logs).
    pub on_exit: fn(),
}

#[async_trait]
impl ShutdownSignalWatch for DrainingSignalWatch {
    async fn recv(&self) -> ShutdownSignal {
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
        let mut quit = signal(SignalKind::quit()).expect("SIGQUIT handler");
        tokio::select! {
            _ = term.recv() => {
                run_drain_hooks();
                DRAINING.store(true, Ordering::Relaxed);
                tracing::info!(
                    in_flight = in_flight(),
                    grace_seconds = self.grace.as_secs(),
                    "SIGTERM: no longer accepting; draining in-flight requests and connections"
                );
                let grace = self.grace;
                let on_exit = self.on_exit;
                std::thread::spawn(move || wait_then_exit(grace, on_exit));
                ShutdownSignal::GracefulTerminate
            }
            _ = int.recv() => {
                run_drain_hooks();
                tracing::info!("SIGINT: exiting now");
                ShutdownSignal::FastShutdown
            }
            _ = quit.recv() => {
                DRAINING.store(true, Ordering::Relaxed);
                tracing::info!("SIGQUIT: handing listening sockets to the new process");
                ShutdownSignal::GracefulUpgrade
            }
        }
    }
}

fn wait_then_exit(grace: Duration, on_exit: fn()) {
    let start = Instant::now();
    // Give listeners a moment to stop before judging that nothing is left.
    std::thread::sleep(Duration::from_millis(100));
    loop {
        let left = in_flight();
        if left == 0 {
            tracing::info!(
                elapsed_ms = start.elapsed().as_millis() as u64,
                "drained; exiting"
            );
            break;
        }
        if start.elapsed() >= grace {
            tracing::warn!(
                in_flight = left,
                "grace period over; exiting with work in flight"
            );
            break;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    on_exit();
    std::process::exit(0);
}
