//! Message framing from header fields (RFC 9112 §6.1-6.3, §9.3): the one
//! routine both directions use, the server for requests ([`super::parse`])
//! and the node-to-node client for responses ([`super::client`]).
//!
//! Pure: header fields in, a [`Framing`] or a [`FramingError`] out. corekv
//! frames every message with `Content-Length`: `Transfer-Encoding` is
//! refused (with `Content-Length` beside it, as a smuggling attempt), and
//! so is more than one `Content-Length` field. `Connection` is a list of
//! tokens, compared one by one, case-insensitively.

/// What the header fields say about the message's body and connection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Framing {
    /// The `Content-Length` field, if there was one.
    pub content_length: Option<usize>,
    /// `Connection: close` was among the tokens.
    pub close: bool,
    /// `Connection: keep-alive` was among the tokens.
    pub keep_alive: bool,
}

/// Why the fields do not frame a message corekv accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FramingError {
    /// More than one `Content-Length` field.
    DuplicateLength,
    /// A `Content-Length` that is not a non-negative decimal number.
    BadLength,
    /// A `Content-Length` too large to represent.
    LengthOverflow,
    /// `Transfer-Encoding` together with `Content-Length`.
    LengthAndEncoding,
    /// `Transfer-Encoding` (chunked bodies are not supported).
    Encoding,
}

impl FramingError {
    #[must_use]
    pub fn message(self) -> &'static str {
        match self {
            Self::DuplicateLength => "more than one Content-Length",
            Self::BadLength => "Content-Length is not a number",
            Self::LengthOverflow => "Content-Length is too large",
            Self::LengthAndEncoding => "both Content-Length and Transfer-Encoding",
            Self::Encoding => "Transfer-Encoding is not supported",
        }
    }
}

/// Whether the comma-separated list `value` holds `token`.
#[must_use]
pub fn has_token(value: &[u8], token: &str) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// The framing of a message with these header fields.
///
/// # Errors
/// See [`FramingError`].
pub fn framing(headers: &[httparse::Header<'_>]) -> Result<Framing, FramingError> {
    let mut out = Framing::default();
    let mut encoding = false;
    for h in headers {
        if h.name.eq_ignore_ascii_case("content-length") {
            if out.content_length.is_some() {
                return Err(FramingError::DuplicateLength);
            }
            let text = std::str::from_utf8(h.value)
                .ok()
                .map(str::trim_ascii)
                .filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()))
                .ok_or(FramingError::BadLength)?;
            out.content_length = Some(text.parse().map_err(|_| FramingError::LengthOverflow)?);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            encoding = true;
        } else if h.name.eq_ignore_ascii_case("connection") {
            out.close |= has_token(h.value, "close");
            out.keep_alive |= has_token(h.value, "keep-alive");
        }
    }
    match (encoding, out.content_length) {
        (true, Some(_)) => Err(FramingError::LengthAndEncoding),
        (true, None) => Err(FramingError::Encoding),
        (false, _) => Ok(out),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h<'a>(name: &'a str, value: &'a str) -> httparse::Header<'a> {
        httparse::Header {
            name,
            value: value.as_bytes(),
        }
    }

    #[test]
    fn framing_table() {
        let ok = |fields: &[httparse::Header<'_>]| framing(fields).expect("frames");
        assert_eq!(ok(&[]), Framing::default());
        assert_eq!(ok(&[h("Content-Length", "12")]).content_length, Some(12));
        assert_eq!(ok(&[h("content-length", " 7 ")]).content_length, Some(7));
        let c = ok(&[h("Connection", "Upgrade, Close")]);
        assert!(c.close && !c.keep_alive);
        let c = ok(&[h("Connection", "keep-alive"), h("Connection", "foo")]);
        assert!(c.keep_alive && !c.close);
        assert!(!ok(&[h("Connection", "closed")]).close);
        let err = |fields: &[httparse::Header<'_>]| framing(fields).expect_err("refused");
        assert_eq!(
            err(&[h("Content-Length", "1"), h("Content-Length", "1")]),
            FramingError::DuplicateLength
        );
        assert_eq!(err(&[h("Content-Length", "-1")]), FramingError::BadLength);
        assert_eq!(err(&[h("Content-Length", "")]), FramingError::BadLength);
        assert_eq!(
            err(&[h("Content-Length", "99999999999999999999999")]),
            FramingError::LengthOverflow
        );
        assert_eq!(
            err(&[h("Transfer-Encoding", "chunked"), h("Content-Length", "1")]),
            FramingError::LengthAndEncoding
        );
        assert_eq!(
            err(&[h("Transfer-Encoding", "chunked")]),
            FramingError::Encoding
        );
    }
}
