//! HTTP/1.x request parsing and framing on top of httparse.
//!
//! Pure: bytes in, [`Parsed`] out. A partial request is a state
//! ([`Parsed::Partial`]), not an error. All framing rules live here
//! (Content-Length vs Transfer-Encoding, duplicates, limits) and every
//! [`ParseError`] maps to one status in [`ParseError::status`]. After any
//! parse error the connection must be closed: the stream position is lost.

use super::framing::{FramingError, framing};
use std::fmt;

/// Size limits applied while parsing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Request line plus headers, in bytes.
    pub max_head: usize,
    /// Number of header fields.
    pub max_headers: usize,
    /// Body (Content-Length) in bytes.
    pub max_body: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_head: 16 * 1024,
            max_headers: 64,
            max_body: 8 * 1024 * 1024,
        }
    }
}

/// The request methods the API distinguishes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Post,
    Put,
    Delete,
    Other,
}

/// One complete request, owning its parts.
#[derive(Clone, Debug)]
pub struct Request {
    pub method: Method,
    /// Path without the query, still percent-encoded.
    pub path: Vec<u8>,
    /// The raw query string after `?` (empty when absent).
    pub query: Vec<u8>,
    pub body: Vec<u8>,
    /// Whether the connection stays open after the response.
    pub keep_alive: bool,
    /// `Content-Type: application/x-www-form-urlencoded`.
    pub form_body: bool,
    /// Carries `X-Corekv-Forwarded`: another node already routed it.
    pub forwarded: bool,
    /// `Authorization` header value.
    pub authorization: Option<Vec<u8>>,
    /// `If-Match` field value (several field lines joined with `, `).
    pub if_match: Option<Vec<u8>>,
    /// `If-None-Match` field value (several field lines joined with `, `).
    pub if_none_match: Option<Vec<u8>>,
}

/// Result of parsing the start of a buffer.
#[derive(Debug)]
pub enum Parsed {
    /// A whole request and the number of buffer bytes it used.
    Complete(Request, usize),
    /// More bytes are needed.
    Partial,
}

/// Why a request was refused. The connection is closed after answering.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParseError {
    Malformed(&'static str),
    HeadTooLarge,
    TooManyHeaders,
    BodyTooLarge,
    BadFraming(&'static str),
    UnsupportedTransferEncoding,
    UnsupportedVersion,
}

impl ParseError {
    /// The status code that answers this error.
    #[must_use]
    pub fn status(self) -> u16 {
        match self {
            Self::Malformed(_) | Self::BadFraming(_) => 400,
            Self::HeadTooLarge | Self::TooManyHeaders => 431,
            Self::BodyTooLarge => 413,
            Self::UnsupportedTransferEncoding => 501,
            Self::UnsupportedVersion => 505,
        }
    }

    /// The one-line answer: for a limit, the limit in force and the option
    /// that raises it.
    #[must_use]
    pub fn message(self, limits: &Limits) -> String {
        match self {
            Self::HeadTooLarge => format!(
                "request line and headers are larger than the limit of {} bytes (--max-header-bytes)",
                limits.max_head
            ),
            Self::TooManyHeaders => format!(
                "more header fields than the limit of {} (--max-headers)",
                limits.max_headers
            ),
            Self::BodyTooLarge => format!(
                "request body is larger than the limit of {} bytes (--max-body)",
                limits.max_body
            ),
            other => other.to_string(),
        }
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Malformed(what) => write!(f, "malformed request: {what}"),
            Self::HeadTooLarge => write!(f, "request line and headers are too large"),
            Self::TooManyHeaders => write!(f, "too many header fields"),
            Self::BodyTooLarge => write!(f, "request body is too large"),
            Self::BadFraming(what) => write!(f, "bad message framing: {what}"),
            Self::UnsupportedTransferEncoding => {
                write!(f, "Transfer-Encoding is not supported; send Content-Length")
            }
            Self::UnsupportedVersion => write!(f, "only HTTP/1.0 and HTTP/1.1 are supported"),
        }
    }
}

/// Adds a field line of a list-based field: lines of the same field are one
/// comma-separated list (RFC 9110 §5.3).
fn append_list(field: &mut Option<Vec<u8>>, value: &[u8]) {
    match field {
        Some(v) => {
            v.extend_from_slice(b", ");
            v.extend_from_slice(value);
        }
        None => *field = Some(value.to_vec()),
    }
}

fn method_of(m: &str) -> Method {
    match m {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        "POST" => Method::Post,
        "PUT" => Method::Put,
        "DELETE" => Method::Delete,
        _ => Method::Other,
    }
}

/// Parses one request from the start of `buf`.
///
/// # Errors
/// See [`ParseError`]; the connection must be closed afterwards.
pub fn parse(buf: &[u8], limits: &Limits) -> Result<Parsed, ParseError> {
    let mut storage = [httparse::EMPTY_HEADER; 128];
    let slots = limits.max_headers.min(storage.len());
    let mut req = httparse::Request::new(&mut storage[..slots]);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            return if buf.len() > limits.max_head {
                Err(ParseError::HeadTooLarge)
            } else {
                Ok(Parsed::Partial)
            };
        }
        Err(httparse::Error::TooManyHeaders) => return Err(ParseError::TooManyHeaders),
        Err(httparse::Error::Version) => {
            // Only a request line that names another HTTP version is a 505.
            let line = buf.split(|&b| b == b'\n').next().unwrap_or(buf);
            let other_http = line.windows(6).any(|w| w == b" HTTP/");
            return Err(if other_http {
                ParseError::UnsupportedVersion
            } else {
                ParseError::Malformed("not an HTTP/1.x request line")
            });
        }
        Err(e) => return Err(ParseError::Malformed(parse_error_text(e))),
    };
    if head_len > limits.max_head {
        return Err(ParseError::HeadTooLarge);
    }
    let version = req.version.unwrap_or(1);
    let framed = framing(req.headers).map_err(|e| match e {
        FramingError::LengthOverflow => ParseError::BodyTooLarge,
        FramingError::Encoding => ParseError::UnsupportedTransferEncoding,
        other => ParseError::BadFraming(other.message()),
    })?;
    let keep_alive = !framed.close && (version >= 1 || framed.keep_alive);
    let mut form_body = false;
    let mut forwarded = false;
    let mut authorization = None;
    let mut if_match = None;
    let mut if_none_match = None;
    for h in req.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("content-type") {
            form_body = h.value.len() >= 33
                && h.value[..33].eq_ignore_ascii_case(b"application/x-www-form-urlencoded");
        } else if name.eq_ignore_ascii_case("x-corekv-forwarded") {
            forwarded = true;
        } else if name.eq_ignore_ascii_case("authorization") {
            authorization = Some(h.value.to_vec());
        } else if name.eq_ignore_ascii_case("if-match") {
            append_list(&mut if_match, h.value);
        } else if name.eq_ignore_ascii_case("if-none-match") {
            append_list(&mut if_none_match, h.value);
        }
    }
    let body_len = framed.content_length.unwrap_or(0);
    if body_len > limits.max_body {
        return Err(ParseError::BodyTooLarge);
    }
    let total = head_len + body_len;
    if buf.len() < total {
        return Ok(Parsed::Partial);
    }
    let target = req.path.unwrap_or("/").as_bytes();
    let (path, query) = match target.iter().position(|&b| b == b'?') {
        Some(p) => (&target[..p], &target[p + 1..]),
        None => (target, &[][..]),
    };
    Ok(Parsed::Complete(
        Request {
            method: method_of(req.method.unwrap_or("")),
            path: path.to_vec(),
            query: query.to_vec(),
            body: buf[head_len..total].to_vec(),
            keep_alive,
            form_body,
            forwarded,
            authorization,
            if_match,
            if_none_match,
        },
        total,
    ))
}

fn parse_error_text(e: httparse::Error) -> &'static str {
    match e {
        httparse::Error::HeaderName => "invalid header name",
        httparse::Error::HeaderValue => "invalid header value",
        httparse::Error::NewLine => "invalid line ending",
        httparse::Error::Status => "invalid status",
        httparse::Error::Token => "invalid token in request line",
        httparse::Error::TooManyHeaders => "too many headers",
        httparse::Error::Version => "invalid HTTP version",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(raw: &[u8]) -> Result<Parsed, ParseError> {
        parse(raw, &Limits::default())
    }

    fn complete(raw: &[u8]) -> (Request, usize) {
        match one(raw) {
            Ok(Parsed::Complete(r, n)) => (r, n),
            other => panic!("expected a complete request from {raw:?}, got {other:?}"),
        }
    }

    #[test]
    fn simple_get_with_query() {
        let raw = b"GET /get?key=a%20b HTTP/1.1\r\nHost: x\r\n\r\n";
        let (r, n) = complete(raw);
        assert_eq!(n, raw.len());
        assert_eq!(r.method, Method::Get);
        assert_eq!(r.path, b"/get");
        assert_eq!(r.query, b"key=a%20b");
        assert!(r.keep_alive);
        assert!(!r.forwarded);
    }

    #[test]
    fn keep_alive_rules() {
        assert!(!complete(b"GET / HTTP/1.0\r\n\r\n").0.keep_alive);
        assert!(
            complete(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
                .0
                .keep_alive
        );
        assert!(
            !complete(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
                .0
                .keep_alive
        );
    }

    #[test]
    fn body_by_content_length_and_pipelining() {
        let raw = b"POST /set HTTP/1.1\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 11\r\n\r\nkey=a&valueGET / HTTP/1.1\r\n\r\n";
        let (r, n) = complete(raw);
        assert_eq!(r.body, b"key=a&value");
        assert!(r.form_body);
        let (second, m) = complete(&raw[n..]);
        assert_eq!(second.path, b"/");
        assert_eq!(n + m, raw.len());
    }

    #[test]
    fn every_split_point_is_partial_then_complete() {
        let raw = b"POST /set?key=k HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello";
        for cut in 0..raw.len() {
            assert!(
                matches!(one(&raw[..cut]), Ok(Parsed::Partial)),
                "cut at {cut}"
            );
        }
        assert_eq!(complete(raw).0.body, b"hello");
    }

    #[test]
    fn framing_errors_table() {
        let cases: &[(&[u8], u16)] = &[
            (
                b"GET / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
                400,
            ),
            (
                b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 1\r\n\r\n",
                400,
            ),
            (
                b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                400,
            ),
            (b"GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400),
            (
                b"GET / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n",
                413,
            ),
            (b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 501),
            (b"GET / HTTP/1.1\r\nContent-Length: 9000000\r\n\r\n", 413),
            (b"GET / HTTP/2.0\r\n\r\n", 505),
            (b"G\x01T / HTTP/1.1\r\n\r\n", 400),
            (b"this is not http\r\n\r\n", 400),
            (b"GET / FOO/1.1\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nBad Header: x\r\n\r\n", 400),
        ];
        for (raw, status) in cases {
            let got = one(raw).map(|_| ()).map_err(ParseError::status);
            assert_eq!(got, Err(*status), "{}", String::from_utf8_lossy(raw));
        }
    }

    #[test]
    fn head_limits() {
        let limits = Limits {
            max_head: 64,
            max_headers: 2,
            max_body: 10,
        };
        let long = format!("GET /{} HTTP/1.1\r\n", "a".repeat(100));
        assert_eq!(
            parse(long.as_bytes(), &limits).map(|_| ()),
            Err(ParseError::HeadTooLarge)
        );
        let many = b"GET / HTTP/1.1\r\na: 1\r\nb: 2\r\nc: 3\r\n\r\n";
        assert_eq!(
            parse(many, &limits).map(|_| ()),
            Err(ParseError::TooManyHeaders)
        );
    }
}
