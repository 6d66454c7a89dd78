//! TLS acceptance: the certificate for each handshake, by SNI, from the
//! current snapshot.

use std::collections::HashSet;
use std::fmt;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use portico_model::certs::Certificate;
use portico_model::snapshot::Snapshot;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// Picks the certificate during the handshake from the current snapshot, so
/// a new snapshot changes certificates without touching listeners.
pub struct SniResolver {
    snapshot: Arc<ArcSwap<Snapshot>>,
    default: Certificate,
    /// Hosts whose fallback was already logged, with the reason logged.
    logged: Mutex<HashSet<(String, String)>>,
}

impl fmt::Debug for SniResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SniResolver")
    }
}

impl SniResolver {
    pub fn new(snapshot: Arc<ArcSwap<Snapshot>>, default: Certificate) -> Self {
        SniResolver {
            snapshot,
            default,
            logged: Mutex::new(HashSet::new()),
        }
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let snap = self.snapshot.load();
        let sni = hello.server_name().unwrap_or("");
        if let Some(cert) = snap.certs.find(sni) {
            metrics::counter!("portico_tls_handshakes_total", "certificate" => "sni").increment(1);
            return Some(cert.key.clone());
        }
        metrics::counter!("portico_tls_handshakes_total", "certificate" => "default").increment(1);
        let reason = if sni.is_empty() {
            "client sent no SNI".to_string()
        } else {
            snap.certs.fallback_reason(sni)
        };
        metrics::counter!("portico_tls_default_certificate_total", "reason" => reason_class(&reason))
            .increment(1);
        let mut logged = self.logged.lock().unwrap_or_else(|e| e.into_inner());
        if logged.len() < 10_000 && logged.insert((sni.to_string(), reason.clone())) {
            tracing::warn!(sni, %reason, "serving the default certificate");
        }
        Some(self.default.key.clone())
    }
}

/// A bounded label for the fallback metric.
fn reason_class(reason: &str) -> &'static str {
    if reason.contains("not found") {
        "secret-missing"
    } else if reason.contains("does not cover") {
        "host-not-covered"
    } else if reason.contains("no SNI") {
        "no-sni"
    } else if reason.contains("no Ingress TLS") {
        "no-tls-entry"
    } else {
        "secret-invalid"
    }
}
