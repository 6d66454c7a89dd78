//! A header map as a plugin sees it, converted to proxy-wasm pairs only
//! when a plugin edits it.
//!
//! A request passes every plugin's headers callback even when the plugin
//! never looks at a header (a no-op filter, or one that reads one value).
//! So the proxy's own map is moved in for the phase (not copied) and
//! moved back after it; only an edit converts it to owned pairs, and the
//! proxy then applies the difference to its map.

use http::HeaderMap;
use pingora::http::{RequestHeader, ResponseHeader};

pub type Pairs = Vec<(String, Vec<u8>)>;

/// The proxy's own header, held whole while plugins run (pingora gives
/// no way to move just the map out of it).
#[derive(Debug, Clone)]
pub enum Proxied {
    /// `:authority` is the URI's authority, or else the `Host` header,
    /// as the proxy routes by.
    Request {
        header: RequestHeader,
        scheme: &'static str,
    },
    Response(ResponseHeader),
}

#[derive(Debug, Clone)]
pub enum HeaderSlot {
    /// Built as pairs (an HTTP call's answer, trailers, a whole map a
    /// plugin set on an empty slot).
    Pairs(Pairs),
    /// The proxy's header, unedited. Boxed: a header is a few hundred
    /// bytes, and a slot moves into and out of an instance on every call.
    Lazy(Box<Proxied>),
    /// The proxy's header after a plugin edited it: what plugins see
    /// now, and the header it came from (to hand back and diff against).
    Edited {
        pairs: Pairs,
        original: Box<Proxied>,
    },
}

impl Default for HeaderSlot {
    fn default() -> Self {
        HeaderSlot::Pairs(Vec::new())
    }
}

const REQUEST_PSEUDO: [&str; 4] = [":authority", ":path", ":method", ":scheme"];

impl Proxied {
    fn headers(&self) -> &HeaderMap {
        match self {
            Proxied::Request { header, .. } => &header.headers,
            Proxied::Response(header) => &header.headers,
        }
    }

    fn pseudo(&self) -> Vec<(&'static str, Vec<u8>)> {
        let names: &[&'static str] = match self {
            Proxied::Request { .. } => &REQUEST_PSEUDO,
            Proxied::Response(_) => &[":status"],
        };
        names
            .iter()
            .filter_map(|k| Some((*k, self.pseudo_value(k)?)))
            .collect()
    }

    fn pseudo_value(&self, key: &str) -> Option<Vec<u8>> {
        match (self, key) {
            (Proxied::Request { header, .. }, ":authority") => match header.uri.authority() {
                Some(a) => Some(a.as_str().as_bytes().to_vec()),
                None => header
                    .headers
                    .get(http::header::HOST)
                    .map(|h| h.as_bytes().to_vec()),
            },
            (Proxied::Request { header, .. }, ":path") => Some(
                header
                    .uri
                    .path_and_query()
                    .map_or(b"/".to_vec(), |p| p.as_str().as_bytes().to_vec()),
            ),
            (Proxied::Request { header, .. }, ":method") => {
                Some(header.method.as_str().as_bytes().to_vec())
            }
            (Proxied::Request { scheme, .. }, ":scheme") => Some(scheme.as_bytes().to_vec()),
            (Proxied::Response(header), ":status") => {
                Some(header.status.as_u16().to_string().into_bytes())
            }
            _ => None,
        }
    }

    fn len(&self) -> usize {
        match self {
            Proxied::Request { header, .. } => REQUEST_PSEUDO.len() + header.headers.len(),
            Proxied::Response(header) => 1 + header.headers.len(),
        }
    }

    fn get(&self, key: &str) -> Option<Vec<u8>> {
        if key.starts_with(':') {
            self.pseudo_value(key)
        } else {
            self.headers().get(key).map(|v| v.as_bytes().to_vec())
        }
    }

    /// Pseudo-headers, then the rest, as owned pairs.
    fn to_pairs(&self) -> Pairs {
        let headers = self.headers();
        let mut out: Pairs = Vec::with_capacity(self.len());
        out.extend(self.pseudo().into_iter().map(|(k, v)| (k.to_string(), v)));
        out.extend(
            headers
                .iter()
                .map(|(k, v)| (k.as_str().to_string(), v.as_bytes().to_vec())),
        );
        out
    }
}

/// An empty header to leave in the proxy's place while its own is with
/// the plugins (building it allocates nothing).
fn placeholder_request() -> RequestHeader {
    RequestHeader::from(http::Request::new(()).into_parts().0)
}

fn placeholder_response() -> ResponseHeader {
    ResponseHeader::from(http::Response::new(()).into_parts().0)
}

impl HeaderSlot {
    /// A copy of a request's headers: pseudo-headers, then the rest.
    pub fn request(req: &RequestHeader, scheme: &'static str) -> Self {
        HeaderSlot::Lazy(Box::new(Proxied::Request {
            header: req.clone(),
            scheme,
        }))
    }

    /// A request's header, moved out of it (an empty one is left) until
    /// [`HeaderSlot::restore_request`] gives it back.
    pub fn take_request(req: &mut RequestHeader, scheme: &'static str) -> Self {
        HeaderSlot::Lazy(Box::new(Proxied::Request {
            header: std::mem::replace(req, placeholder_request()),
            scheme,
        }))
    }

    /// A copy of a response's headers, `:status` first.
    pub fn response(resp: &ResponseHeader) -> Self {
        HeaderSlot::Lazy(Box::new(Proxied::Response(resp.clone())))
    }

    /// A response's header, moved out of it until
    /// [`HeaderSlot::restore_response`].
    pub fn take_response(resp: &mut ResponseHeader) -> Self {
        HeaderSlot::Lazy(Box::new(Proxied::Response(std::mem::replace(
            resp,
            placeholder_response(),
        ))))
    }

    /// Gives a request back what [`HeaderSlot::take_request`] moved out
    /// of it, and returns the plugins' edits, if any, for the caller to
    /// apply.
    pub fn restore_request(self, req: &mut RequestHeader) -> Option<Pairs> {
        let (original, edits) = match self {
            HeaderSlot::Lazy(o) => (o, None),
            HeaderSlot::Edited { pairs, original } => (original, Some(pairs)),
            // Not the proxy's header: it was lost with an instance that
            // failed while holding it paused, and the request fails.
            HeaderSlot::Pairs(p) => return Some(p),
        };
        if let Proxied::Request { header, .. } = *original {
            *req = header;
        }
        edits
    }

    /// Gives a response back what [`HeaderSlot::take_response`] moved
    /// out of it, and returns the plugins' edits, if any.
    pub fn restore_response(self, resp: &mut ResponseHeader) -> Option<Pairs> {
        let (original, edits) = match self {
            HeaderSlot::Lazy(o) => (o, None),
            HeaderSlot::Edited { pairs, original } => (original, Some(pairs)),
            HeaderSlot::Pairs(p) => return Some(p),
        };
        if let Proxied::Response(header) = *original {
            *resp = header;
        }
        edits
    }

    /// Number of pairs (what the headers callbacks are told).
    pub fn len(&self) -> usize {
        match self {
            HeaderSlot::Pairs(p) | HeaderSlot::Edited { pairs: p, .. } => p.len(),
            HeaderSlot::Lazy(o) => o.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The first value of `key` (lower case), without converting.
    pub fn get(&self, key: &str) -> Option<Vec<u8>> {
        match self {
            HeaderSlot::Pairs(p) | HeaderSlot::Edited { pairs: p, .. } => {
                p.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone())
            }
            HeaderSlot::Lazy(o) => o.get(key),
        }
    }

    /// The map in the proxy-wasm encoding, without converting.
    pub fn serialize(&self) -> Vec<u8> {
        match self {
            HeaderSlot::Pairs(p) | HeaderSlot::Edited { pairs: p, .. } => {
                serialize(p.iter().map(|(k, v)| (k.as_bytes(), v.as_slice())))
            }
            HeaderSlot::Lazy(o) => {
                let pseudo = o.pseudo();
                let pairs: Vec<(&[u8], &[u8])> = pseudo
                    .iter()
                    .map(|(k, v)| (k.as_bytes(), v.as_slice()))
                    .chain(
                        o.headers()
                            .iter()
                            .map(|(k, v)| (k.as_str().as_bytes(), v.as_bytes())),
                    )
                    .collect();
                serialize(pairs.into_iter())
            }
        }
    }

    /// Converts (once) and gives the pairs to edit.
    pub fn pairs_mut(&mut self) -> &mut Pairs {
        if let HeaderSlot::Lazy(o) = self {
            let pairs = o.to_pairs();
            let HeaderSlot::Lazy(original) = std::mem::take(self) else {
                unreachable!("matched above")
            };
            *self = HeaderSlot::Edited { pairs, original };
        }
        match self {
            HeaderSlot::Pairs(p) | HeaderSlot::Edited { pairs: p, .. } => p,
            HeaderSlot::Lazy(_) => unreachable!("converted above"),
        }
    }

    /// The pairs, if converted (an edited map always is).
    pub fn as_pairs(&self) -> Option<&Pairs> {
        match self {
            HeaderSlot::Pairs(p) | HeaderSlot::Edited { pairs: p, .. } => Some(p),
            HeaderSlot::Lazy(_) => None,
        }
    }

    pub fn into_pairs(self) -> Pairs {
        match self {
            HeaderSlot::Pairs(p) | HeaderSlot::Edited { pairs: p, .. } => p,
            HeaderSlot::Lazy(o) => o.to_pairs(),
        }
    }
}

/// Header pairs in the proxy-wasm encoding (spec, "Serialization"): a
/// count, the key and value sizes, then each key and value NUL-ended.
pub fn serialize<'a>(pairs: impl Iterator<Item = (&'a [u8], &'a [u8])> + Clone) -> Vec<u8> {
    let (mut n, mut bytes) = (0usize, 0usize);
    for (k, v) in pairs.clone() {
        n += 1;
        bytes += k.len() + v.len() + 2;
    }
    let mut out = Vec::with_capacity(4 + n * 8 + bytes);
    out.extend_from_slice(&(n as u32).to_le_bytes());
    for (k, v) in pairs.clone() {
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    }
    for (k, v) in pairs {
        out.extend_from_slice(k);
        out.push(0);
        out.extend_from_slice(v);
        out.push(0);
    }
    out
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
        let lazy = HeaderSlot::request(&req, "https");
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
