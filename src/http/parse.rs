//! HTTP/1.x request parsing and framing on top of httparse.
//!
//! Pure: bytes in, [`Parsed`] out. A partial request is a state
//! ([`Parsed::Partial`]), not an error. All framing rules live here
//! (Content-Length vs Transfer-Encoding, duplicates, limits) and every
//! [`ParseError`] maps to one status in [`ParseError::status`]. After any
//! parse error the connection must be closed: the stream position is lost.
//!
//! Knows no header or URL of the API: besides the framing fields, a
//! [`Request`] only finds header fields by name ([`Request::header`],
//! [`Request::header_list`]). A request is one allocation (its bytes copied
//! out of the connection's buffer); its parts are slices of it.

use super::framing::{FramingError, framing};
use std::borrow::Cow;
use std::fmt;
use std::mem::MaybeUninit;
use std::ops::Range;

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

/// One complete request. Its bytes (request line, header fields and body)
/// are copied once out of the connection's buffer into one allocation; the
/// path, query, body and header fields are slices of it. The http layer
/// interprets only what framing needs (`Content-Length`,
/// `Transfer-Encoding`, `Connection`); every other field is found by name
/// with [`Request::header`] and means what the layer above decides.
#[derive(Clone, Debug)]
pub struct Request {
    pub method: Method,
    /// Whether the connection stays open after the response.
    pub keep_alive: bool,
    raw: Vec<u8>,
    path: Range<usize>,
    query: Range<usize>,
    /// The header field lines, between the request line and the empty line.
    fields: Range<usize>,
    body_start: usize,
}

impl Request {
    /// Path without the query, still percent-encoded.
    #[must_use]
    pub fn path(&self) -> &[u8] {
        &self.raw[self.path.clone()]
    }

    /// The raw query string after `?` (empty when absent).
    #[must_use]
    pub fn query(&self) -> &[u8] {
        &self.raw[self.query.clone()]
    }

    #[must_use]
    pub fn body(&self) -> &[u8] {
        &self.raw[self.body_start..]
    }

    /// The value of the first field line named `name` (ASCII
    /// case-insensitive), without surrounding whitespace.
    #[must_use]
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers(name).next()
    }

    /// The values of every field line named `name`, in order.
    pub fn headers<'a, 'n>(
        &'a self,
        name: &'n str,
    ) -> impl Iterator<Item = &'a [u8]> + use<'a, 'n> {
        field_lines(&self.raw[self.fields.clone()])
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| v)
    }

    /// A list-based field (RFC 9110 §5.3): its field lines as one
    /// comma-separated value; borrowed when there is one line.
    #[must_use]
    pub fn header_list(&self, name: &str) -> Option<Cow<'_, [u8]>> {
        let mut lines = self.headers(name);
        let first = lines.next()?;
        let Some(second) = lines.next() else {
            return Some(Cow::Borrowed(first));
        };
        let mut joined = first.to_vec();
        for line in std::iter::once(second).chain(lines) {
            joined.extend_from_slice(b", ");
            joined.extend_from_slice(line);
        }
        Some(Cow::Owned(joined))
    }
}

/// The `(name, value)` of each field line of a header block httparse has
/// accepted (so: `name:value`, a token name without whitespace before the
/// colon, optional whitespace around the value, lines ending in CRLF or a
/// bare LF, no folding).
fn field_lines(block: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    block.split(|&b| b == b'\n').filter_map(|line| {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let colon = line.iter().position(|&b| b == b':')?;
        let value = &line[colon + 1..];
        let start = value.iter().position(|&b| b != b' ' && b != b'\t');
        let value = match start {
            Some(s) => {
                let end = value
                    .iter()
                    .rposition(|&b| b != b' ' && b != b'\t')
                    .map_or(s, |e| e + 1);
                &value[s..end]
            }
            None => &[][..],
        };
        Some((&line[..colon], value))
    })
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
    // Header slots left uninitialized: httparse writes the ones it fills
    // (an initialized array would be a 4 KiB memset per request).
    let mut storage = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; 128];
    let slots = limits.max_headers.min(storage.len());
    let mut req = httparse::Request::new(&mut []);
    let head_len = match req.parse_with_uninit_headers(buf, &mut storage[..slots]) {
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
    let body_len = framed.content_length.unwrap_or(0);
    if body_len > limits.max_body {
        return Err(ParseError::BodyTooLarge);
    }
    let total = head_len + body_len;
    if buf.len() < total {
        return Ok(Parsed::Partial);
    }
    let Some(target) = req.path else {
        return Err(ParseError::Malformed("no request target"));
    };
    // Offsets into `buf` of the parts httparse found (slices of it).
    let offset = |part: &[u8]| part.as_ptr().addr() - buf.as_ptr().addr();
    let target_start = offset(target.as_bytes());
    let target_end = target_start + target.len();
    let path = match target.bytes().position(|b| b == b'?') {
        Some(q) => target_start..target_start + q,
        None => target_start..target_end,
    };
    let query = (path.end + 1).min(target_end)..target_end;
    let fields_start = buf[target_end..head_len]
        .iter()
        .position(|&b| b == b'\n')
        .map_or(head_len, |nl| target_end + nl + 1);
    Ok(Parsed::Complete(
        Request {
            method: method_of(req.method.unwrap_or("")),
            keep_alive,
            raw: buf[..total].to_vec(),
            path,
            query,
            fields: fields_start..head_len,
            body_start: head_len,
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

    /// A request with `n` header fields (the first is `Host`).
    fn with_fields(n: usize) -> Vec<u8> {
        let mut raw = b"GET /get?key=a HTTP/1.1\r\nHost: x\r\n".to_vec();
        for i in 1..n {
            raw.extend_from_slice(format!("X-F{i}: {i}\r\n").as_bytes());
        }
        raw.extend_from_slice(b"\r\n");
        raw
    }

    #[test]
    fn header_fields_up_to_the_limit_and_one_more() {
        let limits = Limits::default();
        let raw = with_fields(limits.max_headers);
        let (r, n) = complete(&raw);
        assert_eq!(n, raw.len());
        assert_eq!(r.path(), b"/get");
        // (--max-headers, fields sent, parses); 1000 is past the 128 slots
        // parse has at all.
        for (max_headers, fields, fits) in [
            (limits.max_headers, limits.max_headers + 1, false),
            (3, 3, true),
            (3, 4, false),
            (1000, 129, false),
        ] {
            let got = parse(
                &with_fields(fields),
                &Limits {
                    max_headers,
                    ..Limits::default()
                },
            );
            if fits {
                assert!(
                    matches!(got, Ok(Parsed::Complete(..))),
                    "{max_headers}/{fields}: {got:?}"
                );
            } else {
                assert!(
                    matches!(got, Err(ParseError::TooManyHeaders)),
                    "{max_headers}/{fields}: {got:?}"
                );
            }
        }
    }

    #[test]
    fn simple_get_with_query() {
        let raw = b"GET /get?key=a%20b HTTP/1.1\r\nHost: x\r\n\r\n";
        let (r, n) = complete(raw);
        assert_eq!(n, raw.len());
        assert_eq!(r.method, Method::Get);
        assert_eq!(r.path(), b"/get");
        assert_eq!(r.query(), b"key=a%20b");
        assert!(r.keep_alive);
        assert_eq!(r.header("host"), Some(&b"x"[..]));
        assert_eq!(r.header("x-absent"), None);
    }

    #[test]
    fn header_fields_by_name() {
        let raw = b"\r\nPUT /v1/kv/a?x=1&y HTTP/1.1\nIf-Match: \t\"1\" \r\nA:\r\nif-match:W/\"2\"\r\nB:  two words \r\nContent-Length: 2\r\n\r\nhi";
        let (r, n) = complete(raw);
        assert_eq!(n, raw.len());
        assert_eq!(
            (r.path(), r.query(), r.body()),
            (&b"/v1/kv/a"[..], &b"x=1&y"[..], &b"hi"[..])
        );
        assert_eq!(r.header("IF-MATCH"), Some(&b"\"1\""[..]));
        assert_eq!(r.header("a"), Some(&b""[..]));
        assert_eq!(r.header("b"), Some(&b"two words"[..]));
        assert_eq!(r.header("content-length"), Some(&b"2"[..]));
        assert_eq!(r.headers("if-match").count(), 2);
        assert_eq!(
            r.header_list("if-match").as_deref(),
            Some(&b"\"1\", W/\"2\""[..])
        );
        assert_eq!(r.header_list("b").as_deref(), Some(&b"two words"[..]));
        assert_eq!(r.header_list("nope"), None);
        let (r, _) = complete(b"GET /x? HTTP/1.1\r\n\r\n");
        assert_eq!(
            (r.path(), r.query(), r.header("x")),
            (&b"/x"[..], &b""[..], None)
        );
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
        assert_eq!(r.body(), b"key=a&value");
        assert_eq!(
            r.header("CONTENT-TYPE"),
            Some(&b"application/x-www-form-urlencoded"[..])
        );
        let (second, m) = complete(&raw[n..]);
        assert_eq!(second.path(), b"/");
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
        assert_eq!(complete(raw).0.body(), b"hello");
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
