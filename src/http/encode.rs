//! HTTP/1.1 response type and its encoding.
//!
//! Pure: a [`Response`] and the `Date` value in, bytes appended to an
//! output buffer. Every response carries `Date` (RFC 9110 §6.6.1) and
//! exact Content-Length framing, except 1xx, 204 and 304, which have no
//! content and therefore neither Content-Length (RFC 9110 §8.6) nor
//! Content-Type nor a body (RFC 9112 §6.3).

use std::borrow::Cow;

/// A header value: borrowed for ever, owned, or a number kept inline
/// (versions, seqs and shard numbers go out with every data response: no
/// allocation and no `core::fmt` for them).
#[derive(Clone, Debug)]
pub enum HeaderValue {
    Static(&'static str),
    Owned(String),
    /// Decimal digits, ASCII, `len` of them.
    Number {
        digits: [u8; 20],
        len: u8,
    },
}

impl HeaderValue {
    #[must_use]
    pub fn as_str(&self) -> &str {
        match self {
            Self::Static(s) => s,
            Self::Owned(s) => s,
            Self::Number { digits, len } => {
                std::str::from_utf8(&digits[..usize::from(*len)]).unwrap_or_default()
            }
        }
    }
}

/// Equal when the text is, however it is kept.
impl PartialEq for HeaderValue {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for HeaderValue {}

impl From<&'static str> for HeaderValue {
    fn from(s: &'static str) -> Self {
        Self::Static(s)
    }
}

impl From<String> for HeaderValue {
    fn from(s: String) -> Self {
        Self::Owned(s)
    }
}

impl From<Cow<'static, str>> for HeaderValue {
    fn from(s: Cow<'static, str>) -> Self {
        match s {
            Cow::Borrowed(b) => Self::Static(b),
            Cow::Owned(o) => Self::Owned(o),
        }
    }
}

impl From<u64> for HeaderValue {
    fn from(n: u64) -> Self {
        let mut buf = itoa::Buffer::new();
        let text = buf.format(n).as_bytes();
        // u64::MAX has 20 digits.
        let mut digits = [0u8; 20];
        digits[..text.len()].copy_from_slice(text);
        Self::Number {
            digits,
            len: u8::try_from(text.len()).unwrap_or(20),
        }
    }
}

impl From<usize> for HeaderValue {
    fn from(n: usize) -> Self {
        Self::from(u64::try_from(n).unwrap_or(u64::MAX))
    }
}

/// A response ready to encode. `Send`, so it can cross executors.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    /// Extra headers (name, value); values must not contain CR or LF.
    pub headers: Vec<(&'static str, HeaderValue)>,
    pub body: Vec<u8>,
    /// Close the connection after this response.
    pub close: bool,
}

pub const TEXT: &str = "text/plain; charset=utf-8";
pub const BYTES: &str = "application/octet-stream";
pub const JSON: &str = "application/json";

impl Response {
    /// A response with a body and no extra headers.
    #[must_use]
    pub fn new(status: u16, content_type: &'static str, body: Vec<u8>) -> Self {
        Self {
            status,
            content_type,
            headers: Vec::new(),
            body,
            close: false,
        }
    }

    /// A one-line plain-text message (a newline is appended).
    #[must_use]
    pub fn text(status: u16, message: &str) -> Self {
        let mut body = Vec::with_capacity(message.len() + 1);
        body.extend_from_slice(message.as_bytes());
        body.push(b'\n');
        Self::new(status, TEXT, body)
    }

    /// Adds a header; a `&'static str` value is not copied, a number is
    /// kept inline.
    #[must_use]
    pub fn with_header(mut self, name: &'static str, value: impl Into<HeaderValue>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    /// The first header named `name` (ASCII case-insensitive).
    #[must_use]
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// The reason phrase of the status codes corekv sends.
#[must_use]
pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        412 => "Precondition Failed",
        413 => "Content Too Large",
        414 => "URI Too Long",
        421 => "Misdirected Request",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

/// Whether responses with `status` never have content (RFC 9112 §6.3).
#[must_use]
pub fn bodiless(status: u16) -> bool {
    status < 200 || status == 204 || status == 304
}

/// Appends `resp` to `out`. `head_only` omits the body (HEAD requests) but
/// keeps its Content-Length; `keep_alive` false adds `Connection: close`;
/// `date` is the `Date` value (an IMF-fixdate, see [`super::date`]).
/// 1xx, 204 and 304 responses get neither Content-Type, Content-Length
/// nor a body.
pub fn encode(resp: &Response, head_only: bool, keep_alive: bool, date: &[u8], out: &mut Vec<u8>) {
    let mut num = itoa::Buffer::new();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(num.format(resp.status).as_bytes());
    out.push(b' ');
    out.extend_from_slice(reason(resp.status).as_bytes());
    out.extend_from_slice(b"\r\n");
    let bodiless = bodiless(resp.status);
    if !bodiless {
        out.extend_from_slice(b"Content-Type: ");
        out.extend_from_slice(resp.content_type.as_bytes());
        out.extend_from_slice(b"\r\nContent-Length: ");
        out.extend_from_slice(num.format(resp.body.len()).as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"Date: ");
    out.extend_from_slice(date);
    out.extend_from_slice(b"\r\n");
    for (name, value) in &resp.headers {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_str().as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if !keep_alive {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if !head_only && !bodiless {
        out.extend_from_slice(&resp.body);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DATE: &[u8] = b"Sun, 06 Nov 1994 08:49:37 GMT";

    fn encoded(r: &Response, head_only: bool, keep_alive: bool) -> String {
        let mut out = Vec::new();
        encode(r, head_only, keep_alive, DATE, &mut out);
        String::from_utf8(out).expect("utf8")
    }

    #[test]
    fn encodes_status_headers_body() {
        let r = Response::text(404, "no such key").with_header("X-Shard", "2");
        assert_eq!(
            encoded(&r, false, true),
            "HTTP/1.1 404 Not Found\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 12\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\nX-Shard: 2\r\n\r\nno such key\n"
        );
        let head = encoded(&r, true, false);
        assert!(head.ends_with("Connection: close\r\n\r\n"), "{head}");
        assert!(head.contains("Content-Length: 12"));
    }

    #[test]
    fn numbers_are_header_values_without_formatting_machinery() {
        for n in [0u64, 7, 10, 4_294_967_296, u64::MAX] {
            assert_eq!(HeaderValue::from(n).as_str(), n.to_string());
        }
        assert_eq!(HeaderValue::from(12usize).as_str(), "12");
        let r = Response::text(200, "OK").with_header("X-Seq", 42u64);
        assert_eq!(r.header("x-seq"), Some("42"));
        assert!(encoded(&r, false, true).contains("\r\nX-Seq: 42\r\n"));
        assert_eq!(HeaderValue::from(42u64), HeaderValue::from("42"));
        assert_eq!(
            HeaderValue::from(42u64),
            HeaderValue::from("42".to_string())
        );
    }

    #[test]
    fn bodiless_statuses_have_no_framing_headers() {
        for status in [204, 304] {
            // Even a (wrongly) filled body is not sent.
            let r = Response::new(status, TEXT, b"x".to_vec()).with_header("ETag", "\"1\"");
            let text = encoded(&r, false, true);
            assert_eq!(
                text,
                format!(
                    "HTTP/1.1 {status} {}\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\nETag: \"1\"\r\n\r\n",
                    reason(status)
                )
            );
        }
        assert_eq!(reason(304), "Not Modified");
        assert!(bodiless(100) && bodiless(204) && bodiless(304));
        assert!(!bodiless(200) && !bodiless(205) && !bodiless(404));
    }
}
