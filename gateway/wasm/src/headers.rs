//! A header map as a plugin sees it, converted to proxy-wasm pairs only
//! when a plugin edits it.
//!
//! A request passes every plugin's headers callback even when the plugin
//! never looks at a header (a no-op filter, or one that reads one value).
//! So the proxy's own header is lent for the phase (neither copied nor
//! moved: a pingora header is a few hundred bytes, and moving it in and
//! out of every phase was a tenth of a no-op plugin's cost); only an edit
//! converts it to owned pairs, and the proxy then applies the difference.

use std::marker::PhantomData;
use std::ptr::NonNull;

use http::HeaderMap;
use pingora::http::{RequestHeader, ResponseHeader};

pub type Pairs = Vec<(String, Vec<u8>)>;

/// The proxy's header while plugins run.
#[derive(Debug, Clone)]
pub enum Proxied {
    /// `:authority` is the URI's authority, or else the `Host` header,
    /// as the proxy routes by.
    Request {
        header: Held<RequestHeader>,
        scheme: &'static str,
    },
    Response(Held<ResponseHeader>),
}

/// A header owned (a copy), or the proxy's own, lent by a [`Lent`].
pub enum Held<T> {
    Owned(T),
    Lent(LentPtr<T>),
}

/// The address of a header a [`Lent`] holds borrowed.
///
/// Invariant: a `LentPtr` exists only inside the [`HeaderSlot`] of its
/// `Lent` (and, for the length of one plugin call, in that instance's
/// state, from where `http_filter` takes it back after the call, also when
/// the call unwinds). A slot that must outlive its phase (a paused
/// stream's, parked in its instance) is made owned first
/// ([`HeaderSlot::into_owned`]). So it is only read while the `Lent`, and
/// with it the exclusive borrow of the header, is alive, on its thread.
pub struct LentPtr<T>(NonNull<T>);

// SAFETY: see the invariant: the pointer is only dereferenced on the
// thread that lent it, while the borrow it stands for is held; the types
// are only moved between threads together with the store that holds them,
// which never happens while a loan is in it.
unsafe impl<T: Send> Send for LentPtr<T> {}
// SAFETY: as above; shared access only reads.
unsafe impl<T: Sync> Sync for LentPtr<T> {}

impl<T> Held<T> {
    fn get(&self) -> &T {
        match self {
            Held::Owned(t) => t,
            // SAFETY: `LentPtr`'s invariant: the `Lent` that made it holds
            // the header borrowed exclusively for as long as this exists.
            Held::Lent(p) => unsafe { p.0.as_ref() },
        }
    }

    fn is_lent(&self) -> bool {
        matches!(self, Held::Lent(_))
    }
}

/// A copy is always owned: a loan is never duplicated.
impl<T: Clone> Clone for Held<T> {
    fn clone(&self) -> Self {
        Held::Owned(self.get().clone())
    }
}

impl<T: std::fmt::Debug> std::fmt::Debug for Held<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.get().fmt(f)
    }
}

#[derive(Debug, Clone)]
pub enum HeaderSlot {
    /// Built as pairs (an HTTP call's answer, trailers, a whole map a
    /// plugin set on an empty slot).
    Pairs(Pairs),
    /// The proxy's header, unedited. Boxed: a slot moves into and out of
    /// an instance on every call.
    Lazy(Box<Proxied>),
    /// The proxy's header after a plugin edited it: what plugins see
    /// now, and the header it came from (to diff against).
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
            Proxied::Request { header, .. } => &header.get().headers,
            Proxied::Response(header) => &header.get().headers,
        }
    }

    fn is_lent(&self) -> bool {
        match self {
            Proxied::Request { header, .. } => header.is_lent(),
            Proxied::Response(header) => header.is_lent(),
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
            (Proxied::Request { header, .. }, ":authority") => match header.get().uri.authority() {
                Some(a) => Some(a.as_str().as_bytes().to_vec()),
                None => header
                    .get()
                    .headers
                    .get(http::header::HOST)
                    .map(|h| h.as_bytes().to_vec()),
            },
            (Proxied::Request { header, .. }, ":path") => Some(
                header
                    .get()
                    .uri
                    .path_and_query()
                    .map_or(b"/".to_vec(), |p| p.as_str().as_bytes().to_vec()),
            ),
            (Proxied::Request { header, .. }, ":method") => {
                Some(header.get().method.as_str().as_bytes().to_vec())
            }
            (Proxied::Request { scheme, .. }, ":scheme") => Some(scheme.as_bytes().to_vec()),
            (Proxied::Response(header), ":status") => {
                Some(header.get().status.as_u16().to_string().into_bytes())
            }
            _ => None,
        }
    }

    fn len(&self) -> usize {
        match self {
            Proxied::Request { header, .. } => REQUEST_PSEUDO.len() + header.get().headers.len(),
            Proxied::Response(header) => 1 + header.get().headers.len(),
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

/// The proxy's request or response header, lent to the plugins for one
/// phase: [`Lent::slot`] is what the phase's callbacks see, and
/// [`Lent::finish`] ends the loan with the plugins' edits, for the caller
/// to apply. The header stays borrowed (exclusively) until then.
pub struct Lent<'a> {
    slot: HeaderSlot,
    _header: PhantomData<&'a mut ()>,
}

impl<'a> Lent<'a> {
    pub fn request(req: &'a mut RequestHeader, scheme: &'static str) -> Self {
        Lent {
            slot: HeaderSlot::Lazy(Box::new(Proxied::Request {
                header: Held::Lent(LentPtr(NonNull::from(req))),
                scheme,
            })),
            _header: PhantomData,
        }
    }

    pub fn response(resp: &'a mut ResponseHeader) -> Self {
        Lent {
            slot: HeaderSlot::Lazy(Box::new(Proxied::Response(Held::Lent(LentPtr(
                NonNull::from(resp),
            ))))),
            _header: PhantomData,
        }
    }

    pub fn slot(&mut self) -> &mut HeaderSlot {
        &mut self.slot
    }

    /// Ends the loan: the plugins' edits, if any. None also when the map
    /// was lost with an instance that failed while holding it paused (the
    /// proxy's header is untouched; the failure decides the request).
    pub fn finish(self) -> Option<Pairs> {
        match self.slot {
            HeaderSlot::Edited { pairs, .. } => Some(pairs),
            HeaderSlot::Lazy(_) | HeaderSlot::Pairs(_) => None,
        }
    }
}

impl HeaderSlot {
    /// A copy of a request's headers: pseudo-headers, then the rest.
    pub fn request(req: &RequestHeader, scheme: &'static str) -> Self {
        HeaderSlot::Lazy(Box::new(Proxied::Request {
            header: Held::Owned(req.clone()),
            scheme,
        }))
    }

    /// A copy of a response's headers, `:status` first.
    pub fn response(resp: &ResponseHeader) -> Self {
        HeaderSlot::Lazy(Box::new(Proxied::Response(Held::Owned(resp.clone()))))
    }

    /// Whether it holds a lent header (see [`LentPtr`]).
    pub fn is_lent(&self) -> bool {
        match self {
            HeaderSlot::Pairs(_) => false,
            HeaderSlot::Lazy(o) | HeaderSlot::Edited { original: o, .. } => o.is_lent(),
        }
    }

    /// The same map holding no loan: what is kept past a phase (a paused
    /// stream's map, parked in its instance) must not point at the
    /// proxy's header.
    pub fn into_owned(self) -> HeaderSlot {
        match self {
            HeaderSlot::Lazy(o) if o.is_lent() => HeaderSlot::Lazy(Box::new((*o).clone())),
            HeaderSlot::Edited { pairs, original } if original.is_lent() => HeaderSlot::Edited {
                pairs,
                original: Box::new((*original).clone()),
            },
            owned => owned,
        }
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

    #[test]
    fn a_lent_header_reads_as_a_copy_and_edits_come_back_as_pairs() {
        let mut req = pingora::http::RequestHeader::build("GET", b"/p", None).unwrap();
        req.insert_header("Host", "x.test").unwrap();
        let copy = HeaderSlot::request(&req, "http");
        {
            let mut lent = Lent::request(&mut req, "http");
            assert!(lent.slot().is_lent());
            assert_eq!(lent.slot().serialize(), copy.serialize());
            assert_eq!(lent.slot().get(":authority").unwrap(), b"x.test");
            // Unedited: nothing to apply.
            assert_eq!(lent.finish(), None);
        }
        let mut lent = Lent::request(&mut req, "http");
        // What outlives the phase (a parked map) holds no loan, and reads
        // the same; so does a clone.
        let owned = lent.slot().clone().into_owned();
        assert!(!owned.is_lent() && !lent.slot().clone().is_lent());
        assert_eq!(owned.serialize(), copy.serialize());
        lent.slot()
            .pairs_mut()
            .push(("x-new".into(), b"v".to_vec()));
        assert!(
            lent.slot().is_lent(),
            "the edited map still diffs against the lent header"
        );
        assert!(!lent.slot().clone().into_owned().is_lent());
        let edits = lent.finish().unwrap();
        assert!(edits.iter().any(|(k, v)| k == "x-new" && v == b"v"));
        // The proxy's header is untouched until it applies the edits.
        assert!(req.headers.get("x-new").is_none());
        assert_eq!(req.headers.get("host").unwrap(), "x.test");
        let mut resp = pingora::http::ResponseHeader::build(204, None).unwrap();
        let mut lent = Lent::response(&mut resp);
        assert_eq!(lent.slot().get(":status").unwrap(), b"204");
        assert_eq!(lent.finish(), None);
    }
}
