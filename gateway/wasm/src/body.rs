//! A body buffer as a plugin sees it: the proxy's own bytes, shared (not
//! copied) until a plugin changes them or data has to be held across
//! callbacks.
//!
//! Most plugins never read a body, yet every chunk passes their body
//! callback; copying each chunk in and out would cost an allocation and
//! two copies per chunk per plugin.

use bytes::Bytes;

#[derive(Debug, Clone)]
pub enum BodySlot {
    Shared(Bytes),
    Owned(Vec<u8>),
}

impl Default for BodySlot {
    fn default() -> Self {
        BodySlot::Owned(Vec::new())
    }
}

impl From<Vec<u8>> for BodySlot {
    fn from(v: Vec<u8>) -> Self {
        BodySlot::Owned(v)
    }
}

impl BodySlot {
    pub fn as_slice(&self) -> &[u8] {
        match self {
            BodySlot::Shared(b) => b,
            BodySlot::Owned(v) => v,
        }
    }

    pub fn len(&self) -> usize {
        self.as_slice().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes to change, copied out of the proxy's the first time.
    pub fn to_mut(&mut self) -> &mut Vec<u8> {
        if let BodySlot::Shared(b) = self {
            *self = BodySlot::Owned(b.to_vec());
        }
        match self {
            BodySlot::Owned(v) => v,
            BodySlot::Shared(_) => unreachable!("converted above"),
        }
    }

    pub fn into_vec(self) -> Vec<u8> {
        match self {
            BodySlot::Shared(b) => b.to_vec(),
            BodySlot::Owned(v) => v,
        }
    }

    pub fn into_bytes(self) -> Bytes {
        match self {
            BodySlot::Shared(b) => b,
            BodySlot::Owned(v) => Bytes::from(v),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_until_changed() {
        let proxy = Bytes::from_static(b"hello");
        let mut slot = BodySlot::Shared(proxy.clone());
        assert_eq!(slot.as_slice(), b"hello");
        // Reading leaves the proxy's bytes where they are.
        assert!(matches!(&slot, BodySlot::Shared(b) if b.as_ptr() == proxy.as_ptr()));
        slot.to_mut().extend_from_slice(b" world");
        assert_eq!(slot.len(), 11);
        assert_eq!(proxy, Bytes::from_static(b"hello"));
        assert_eq!(slot.into_bytes(), Bytes::from_static(b"hello world"));
        assert!(BodySlot::default().is_empty());
    }
}
