//! A header map as a plugin sees it, converted to proxy-wasm pairs only
//! when the plugin asks for more than single values.
//!
//! A request passes every plugin's headers callback even when the plugin
//! never looks at a header (a no-op filter, or one that reads one value).
//! Converting each header to an owned pair costs two allocations per
//! header per phase; keeping a clone of the proxy's own map (whose values
//! are shared, not copied) until a plugin edits or lists the headers
//! makes that cost disappear for such plugins.

use http::{HeaderMap, Method, Uri};

use super::host::serialize_map;

pub type Pairs = Vec<(String, Vec<u8>)>;

/// The pseudo-headers of a lazily held map.
#[derive(Debug, Clone)]
pub enum Pseudo {
    Request {
        method: Method,
        uri: Uri,
        authority: String,
        scheme: &'static str,
    },
    Response {
        status: u16,
    },
}

// Not boxed: the lazy variant exists to save allocations, and a slot is
// only moved a few times per request.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum HeaderSlot {
    Pairs(Pairs),
    Lazy { pseudo: Pseudo, headers: HeaderMap },
}

impl Default for HeaderSlot {
    fn default() -> Self {
        HeaderSlot::Pairs(Vec::new())
    }
}

impl Pseudo {
    fn pairs(&self) -> Vec<(&'static str, Vec<u8>)> {
        match self {
            Pseudo::Request {
                method,
                uri,
                authority,
                scheme,
            } => vec![
                (":authority", authority.as_bytes().to_vec()),
                (
                    ":path",
                    uri.path_and_query()
                        .map_or(b"/".to_vec(), |p| p.as_str().as_bytes().to_vec()),
                ),
                (":method", method.as_str().as_bytes().to_vec()),
                (":scheme", scheme.as_bytes().to_vec()),
            ],
            Pseudo::Response { status } => vec![(":status", status.to_string().into_bytes())],
        }
    }

    fn get(&self, key: &str) -> Option<Vec<u8>> {
        match (self, key) {
            (Pseudo::Request { authority, .. }, ":authority") => {
                Some(authority.as_bytes().to_vec())
            }
            (Pseudo::Request { uri, .. }, ":path") => Some(
                uri.path_and_query()
                    .map_or(b"/".to_vec(), |p| p.as_str().as_bytes().to_vec()),
            ),
            (Pseudo::Request { method, .. }, ":method") => {
                Some(method.as_str().as_bytes().to_vec())
            }
            (Pseudo::Request { scheme, .. }, ":scheme") => Some(scheme.as_bytes().to_vec()),
            (Pseudo::Response { status }, ":status") => Some(status.to_string().into_bytes()),
            _ => None,
        }
    }

    fn count(&self) -> usize {
        match self {
            Pseudo::Request { .. } => 4,
            Pseudo::Response { .. } => 1,
        }
    }
}

impl HeaderSlot {
    /// A request's headers: pseudo-headers, then the rest.
    pub fn request(
        req: &pingora::http::RequestHeader,
        authority: &str,
        scheme: &'static str,
    ) -> Self {
        HeaderSlot::Lazy {
            pseudo: Pseudo::Request {
                method: req.method.clone(),
                uri: req.uri.clone(),
                authority: authority.to_string(),
                scheme,
            },
            headers: req.headers.clone(),
        }
    }

    /// A response's headers, `:status` first.
    pub fn response(resp: &pingora::http::ResponseHeader) -> Self {
        HeaderSlot::Lazy {
            pseudo: Pseudo::Response {
                status: resp.status.as_u16(),
            },
            headers: resp.headers.clone(),
        }
    }

    /// Number of pairs (what the headers callbacks are told).
    pub fn len(&self) -> usize {
        match self {
            HeaderSlot::Pairs(p) => p.len(),
            HeaderSlot::Lazy { pseudo, headers } => pseudo.count() + headers.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The first value of `key` (lower case), without converting.
    pub fn get(&self, key: &str) -> Option<Vec<u8>> {
        match self {
            HeaderSlot::Pairs(p) => p.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone()),
            HeaderSlot::Lazy { pseudo, headers } => {
                if key.starts_with(':') {
                    pseudo.get(key)
                } else {
                    headers.get(key).map(|v| v.as_bytes().to_vec())
                }
            }
        }
    }

    /// The map in the proxy-wasm encoding, without converting.
    pub fn serialize(&self) -> Vec<u8> {
        match self {
            HeaderSlot::Pairs(p) => serialize_map(p),
            HeaderSlot::Lazy { .. } => serialize_map(&self.clone().into_pairs()),
        }
    }

    /// Converts (once) and gives the pairs to edit.
    pub fn pairs_mut(&mut self) -> &mut Pairs {
        if let HeaderSlot::Lazy { .. } = self {
            let pairs = std::mem::take(self).into_pairs();
            *self = HeaderSlot::Pairs(pairs);
        }
        match self {
            HeaderSlot::Pairs(p) => p,
            HeaderSlot::Lazy { .. } => unreachable!("converted above"),
        }
    }

    /// The pairs, if converted (an edited map always is).
    pub fn as_pairs(&self) -> Option<&Pairs> {
        match self {
            HeaderSlot::Pairs(p) => Some(p),
            HeaderSlot::Lazy { .. } => None,
        }
    }

    pub fn into_pairs(self) -> Pairs {
        match self {
            HeaderSlot::Pairs(p) => p,
            HeaderSlot::Lazy { pseudo, headers } => {
                let mut out: Pairs = pseudo
                    .pairs()
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v))
                    .collect();
                out.extend(
                    headers
                        .iter()
                        .map(|(k, v)| (k.as_str().to_string(), v.as_bytes().to_vec())),
                );
                out
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lazy_and_converted_maps_agree() {
        let mut req = pingora::http::RequestHeader::build("POST", b"/a?b=1", None).unwrap();
        req.insert_header("Host", "x.test").unwrap();
        req.append_header("x-multi", "1").unwrap();
        req.append_header("x-multi", "2").unwrap();
        let lazy = HeaderSlot::request(&req, "x.test", "https");
        let pairs = HeaderSlot::Pairs(lazy.clone().into_pairs());
        assert_eq!(lazy.len(), 7);
        assert_eq!(pairs.len(), 7);
        for key in [
            ":authority",
            ":path",
            ":method",
            ":scheme",
            "host",
            "x-multi",
            "nope",
        ] {
            assert_eq!(lazy.get(key), pairs.get(key), "{key}");
        }
        assert_eq!(lazy.get(":path").unwrap(), b"/a?b=1");
        assert_eq!(lazy.serialize(), pairs.serialize());
        let mut edited = lazy.clone();
        edited.pairs_mut().push(("x-new".into(), b"v".to_vec()));
        assert_eq!(edited.as_pairs().unwrap().len(), 8);
        assert!(lazy.as_pairs().is_none());
    }
}
