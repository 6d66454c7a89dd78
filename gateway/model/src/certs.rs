//! Certificates: parsing and checking TLS Secrets, the per-SNI store kept in
//! the snapshot, and the rustls resolver that reads it at handshake time.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::sign::CertifiedKey;

/// A parsed, key-checked certificate with the names it is valid for.
#[derive(Clone)]
pub struct Certificate {
    pub key: Arc<CertifiedKey>,
    /// Where it came from: `namespace/secret` or a file path.
    pub source: String,
}

impl fmt::Debug for Certificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Certificate")
            .field("source", &self.source)
            .finish()
    }
}

/// Parses a PEM chain and key and checks that they belong together.
pub fn parse_pem(cert_pem: &[u8], key_pem: &[u8], source: &str) -> Result<Certificate, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("tls.crt is not valid PEM: {e}"))?;
    if chain.is_empty() {
        return Err("tls.crt holds no certificate".into());
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| format!("tls.key is not a valid PEM private key: {e}"))?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| format!("tls.key is not a supported private key: {e}"))?;
    let certified = CertifiedKey::new(chain, signer);
    certified
        .keys_match()
        .map_err(|e| format!("tls.key does not match the certificate in tls.crt: {e}"))?;
    webpki::EndEntityCert::try_from(&certified.cert[0])
        .map_err(|e| format!("tls.crt's first certificate cannot be parsed: {e:?}"))?;
    Ok(Certificate {
        key: Arc::new(certified),
        source: source.to_string(),
    })
}

/// Does the certificate's SAN (or CN) cover `host` (which may be `*.x`)?
pub fn covers(cert: &Certificate, host: &str) -> bool {
    let Ok(ee) = webpki::EndEntityCert::try_from(&cert.key.cert[0]) else {
        return false;
    };
    // A wildcard rule host is covered by a wildcard certificate for it; test
    // with a representative single-label name.
    let probe = match host.strip_prefix("*.") {
        Some(suffix) => format!("portico-wildcard-probe.{suffix}"),
        None => host.to_string(),
    };
    match ServerName::try_from(probe.as_str()) {
        Ok(name) => ee.verify_is_valid_for_subject_name(&name).is_ok(),
        Err(_) => false,
    }
}

/// Certificates by SNI name for one snapshot.
#[derive(Debug, Clone, Default)]
pub struct CertStore {
    exact: HashMap<String, Certificate>,
    /// Keyed by the suffix after `*.`.
    wildcard: HashMap<String, Certificate>,
    /// Hosts that asked for TLS but got no usable certificate, and why.
    fallback: BTreeMap<String, String>,
    /// For any other name: a Gateway HTTPS listener without a hostname.
    any_host: Option<Certificate>,
}

impl CertStore {
    pub fn insert(&mut self, host: &str, cert: Certificate) -> bool {
        let host = host.to_ascii_lowercase();
        let slot = match host.strip_prefix("*.") {
            Some(suffix) => self.wildcard.entry(suffix.to_string()),
            None => self.exact.entry(host),
        };
        match slot {
            std::collections::hash_map::Entry::Occupied(_) => false,
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(cert);
                true
            }
        }
    }

    /// The certificate for names nothing else covers; the first one set
    /// stays (returns false for a later one).
    pub fn set_any_host(&mut self, cert: Certificate) -> bool {
        if self.any_host.is_some() {
            return false;
        }
        self.any_host = Some(cert);
        true
    }

    pub fn note_fallback(&mut self, host: &str, reason: String) {
        self.fallback
            .entry(host.to_ascii_lowercase())
            .or_insert(reason);
    }

    /// The certificate for an SNI name: exact, then one-label wildcard,
    /// then the one for any host.
    pub fn find(&self, sni: &str) -> Option<&Certificate> {
        let sni = sni.trim_end_matches('.').to_ascii_lowercase();
        self.exact
            .get(&sni)
            .or_else(|| {
                sni.split_once('.')
                    .and_then(|(_, suffix)| self.wildcard.get(suffix))
            })
            .or(self.any_host.as_ref())
    }

    /// Why `sni` gets the default certificate.
    pub fn fallback_reason(&self, sni: &str) -> String {
        let sni = sni.to_ascii_lowercase();
        if let Some(r) = self.fallback.get(&sni) {
            return r.clone();
        }
        if let Some((_, suffix)) = sni.split_once('.') {
            if let Some(r) = self.fallback.get(&format!("*.{suffix}")) {
                return r.clone();
            }
        }
        "no Ingress TLS entry names this host".into()
    }

    pub fn fallbacks(&self) -> &BTreeMap<String, String> {
        &self.fallback
    }

    /// `host → certificate source`, for `/config`.
    pub fn summary(&self) -> BTreeMap<String, String> {
        self.exact
            .iter()
            .map(|(h, c)| (h.clone(), c.source.clone()))
            .chain(
                self.wildcard
                    .iter()
                    .map(|(s, c)| (format!("*.{s}"), c.source.clone())),
            )
            .collect()
    }
}

/// A self-signed certificate for connections that match no host.
pub fn generate_default() -> Result<Certificate, String> {
    let (cert, key) = self_signed_pem(
        &["portico-default.invalid"],
        Some("Portico default certificate"),
    )?;
    parse_pem(cert.as_bytes(), key.as_bytes(), "generated default")
}

/// A new key and a self-signed certificate for `names` (PEM: certificate,
/// key). Also what tests of other layers build their certificates with.
pub fn self_signed_pem(
    names: &[&str],
    common_name: Option<&str>,
) -> Result<(String, String), String> {
    let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let mut params =
        rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .map_err(|e| e.to_string())?;
    if let Some(cn) = common_name {
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
    }
    let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
    Ok((cert.pem(), key.serialize_pem()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn self_signed(names: &[&str]) -> (String, String) {
        self_signed_pem(names, None).unwrap()
    }

    #[test]
    fn parses_and_checks_coverage() {
        let (c, k) = self_signed(&["a.example.com", "*.wild.example.com"]);
        let cert = parse_pem(c.as_bytes(), k.as_bytes(), "ns/s").unwrap();
        assert!(covers(&cert, "a.example.com"));
        assert!(covers(&cert, "x.wild.example.com"));
        assert!(covers(&cert, "*.wild.example.com"));
        assert!(!covers(&cert, "b.example.com"));
        assert!(!covers(&cert, "*.example.com"));
    }

    #[test]
    fn rejects_mismatched_key_and_garbage() {
        let (c, _) = self_signed(&["a.example.com"]);
        let (_, other_key) = self_signed(&["a.example.com"]);
        let err = parse_pem(c.as_bytes(), other_key.as_bytes(), "x").unwrap_err();
        assert!(err.contains("does not match"), "{err}");
        let err = parse_pem(b"nope", other_key.as_bytes(), "x").unwrap_err();
        assert!(err.contains("tls.crt"), "{err}");
        let err = parse_pem(c.as_bytes(), b"nope", "x").unwrap_err();
        assert!(err.contains("tls.key"), "{err}");
    }

    #[test]
    fn store_finds_exact_then_wildcard() {
        let (c, k) = self_signed(&["*.example.com", "example.com"]);
        let cert = parse_pem(c.as_bytes(), k.as_bytes(), "ns/wild").unwrap();
        let mut store = CertStore::default();
        store.insert("*.example.com", cert.clone());
        let mut exact = cert;
        exact.source = "ns/exact".into();
        store.insert("www.example.com", exact);
        assert_eq!(store.find("WWW.example.com").unwrap().source, "ns/exact");
        assert_eq!(store.find("api.example.com").unwrap().source, "ns/wild");
        assert!(store.find("a.b.example.com").is_none());
        assert!(store.find("example.com").is_none());
    }

    #[test]
    fn default_certificate_generates() {
        let c = generate_default().unwrap();
        assert!(covers(&c, "portico-default.invalid"));
    }
}
