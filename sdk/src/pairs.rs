//! The proxy-wasm encoding of a list of pairs (header maps, and what
//! `upstream::hosts` returns): a count, each key and value length, then
//! each key and value followed by a NUL, all lengths little-endian u32.

/// Decodes pairs; `None` when the bytes are not in that encoding.
pub fn decode(bytes: &[u8]) -> Option<Vec<(String, String)>> {
    let word = |at: usize| -> Option<usize> {
        let b = bytes.get(at..at + 4)?;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    let n = word(0)?;
    let mut at = 4usize.checked_add(n.checked_mul(8)?)?;
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let (kl, vl) = (word(4 + 8 * i)?, word(8 + 8 * i)?);
        let k = bytes.get(at..at + kl)?;
        at += kl + 1;
        let v = bytes.get(at..at + vl)?;
        at += vl + 1;
        out.push((
            String::from_utf8_lossy(k).into_owned(),
            String::from_utf8_lossy(v).into_owned(),
        ));
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_the_spec_encoding() {
        let mut b = Vec::new();
        b.extend_from_slice(&2u32.to_le_bytes());
        for n in [1u32, 2, 2, 1] {
            b.extend_from_slice(&n.to_le_bytes());
        }
        b.extend_from_slice(b"a\0bb\0cc\0d\0");
        assert_eq!(
            decode(&b).unwrap(),
            vec![("a".into(), "bb".into()), ("cc".into(), "d".into())]
        );
        assert!(decode(&b[..10]).is_none());
    }
}
