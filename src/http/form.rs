//! `application/x-www-form-urlencoded` decoding (query strings and form
//! bodies) and the matching encoder (for clients: the soak test's).
//!
//! Pure. `+` decodes to a space; `%XX` to the byte; a `%` not followed by
//! two hex digits is an error (the caller answers 400).

/// A malformed percent escape at the given byte offset of the input.
#[derive(Debug, PartialEq, Eq)]
pub struct BadEscape(pub usize);

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Percent-decodes one form component, `+` meaning space.
///
/// # Errors
/// A `%` without two hex digits after it.
pub fn decode(input: &[u8]) -> Result<Vec<u8>, BadEscape> {
    decode_with(input, true)
}

/// Percent-decodes a URL path segment (`+` stays `+`).
///
/// # Errors
/// A `%` without two hex digits after it.
pub fn decode_path(input: &[u8]) -> Result<Vec<u8>, BadEscape> {
    decode_with(input, false)
}

fn decode_with(input: &[u8], plus_is_space: bool) -> Result<Vec<u8>, BadEscape> {
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        match input[i] {
            b'+' if plus_is_space => out.push(b' '),
            b'%' => {
                let hi = input.get(i + 1).copied().and_then(hex);
                let lo = input.get(i + 2).copied().and_then(hex);
                match (hi, lo) {
                    (Some(h), Some(l)) => out.push(h << 4 | l),
                    _ => return Err(BadEscape(i)),
                }
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    Ok(out)
}

/// Decoded `(name, value)` pairs in input order.
pub type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

/// Splits `a=1&b=2` into decoded pairs, in order. Empty segments are
/// skipped; a segment without `=` has an empty value.
///
/// # Errors
/// A malformed escape in any name or value.
pub fn parse_pairs(input: &[u8]) -> Result<Pairs, BadEscape> {
    let mut out = Vec::new();
    let mut offset = 0;
    for seg in input.split(|&b| b == b'&') {
        if !seg.is_empty() {
            let (name, value) = match seg.iter().position(|&b| b == b'=') {
                Some(p) => (&seg[..p], &seg[p + 1..]),
                None => (seg, &[][..]),
            };
            let name = decode(name).map_err(|BadEscape(i)| BadEscape(offset + i))?;
            let value =
                decode(value).map_err(|BadEscape(i)| BadEscape(offset + name.len() + 1 + i))?;
            out.push((name, value));
        }
        offset += seg.len() + 1;
    }
    Ok(out)
}

/// Percent-encodes bytes so that [`decode`] returns them unchanged.
pub fn encode_into(input: &[u8], out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in input {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b);
        } else {
            out.extend_from_slice(&[b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_table() {
        let cases: &[(&[u8], &[u8])] = &[
            (b"abc", b"abc"),
            (b"a+b", b"a b"),
            (b"a%20b", b"a b"),
            (b"%2B%26%3d", b"+&="),
            (b"%00%ff", b"\x00\xff"),
            (b"", b""),
        ];
        for (input, want) in cases {
            assert_eq!(decode(input).as_deref(), Ok(*want), "{input:?}");
        }
        assert_eq!(decode(b"a%2"), Err(BadEscape(1)));
        assert_eq!(decode_path(b"a+b%2F").as_deref(), Ok(&b"a+b/"[..]));
        assert_eq!(decode(b"%zz"), Err(BadEscape(0)));
    }

    #[test]
    fn pairs_in_order() {
        let got = parse_pairs(b"key=k%201&&value=v+2&flag").expect("pairs");
        assert_eq!(
            got,
            vec![
                (b"key".to_vec(), b"k 1".to_vec()),
                (b"value".to_vec(), b"v 2".to_vec()),
                (b"flag".to_vec(), Vec::new()),
            ]
        );
        assert_eq!(parse_pairs(b"a=1&b=%g"), Err(BadEscape(6)));
    }

    #[test]
    fn encode_roundtrips_every_byte() {
        let all: Vec<u8> = (0..=255).collect();
        let mut enc = Vec::new();
        encode_into(&all, &mut enc);
        assert!(
            enc.iter()
                .all(|b| b.is_ascii_graphic() && *b != b'&' && *b != b'+')
        );
        assert_eq!(decode(&enc).expect("decode"), all);
    }
}
