//! HTTP/1.1 response type and its encoding.
//!
//! Pure: a [`Response`] in, bytes appended to an output buffer. Every
//! response carries Content-Length, so keep-alive framing is always exact.

use std::io::Write as _;

/// A response ready to encode. `Send`, so it can cross executors.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    /// Extra headers (name, value); values must not contain CR or LF.
    pub headers: Vec<(&'static str, String)>,
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

    #[must_use]
    pub fn with_header(mut self, name: &'static str, value: String) -> Self {
        self.headers.push((name, value));
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

/// Appends `resp` to `out`. `head_only` omits the body (HEAD requests) but
/// keeps its Content-Length; `keep_alive` false adds `Connection: close`.
pub fn encode(resp: &Response, head_only: bool, keep_alive: bool, out: &mut Vec<u8>) {
    // Writing into a Vec cannot fail.
    let _ = write!(
        out,
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n",
        resp.status,
        reason(resp.status),
        resp.content_type,
        resp.body.len()
    );
    for (name, value) in &resp.headers {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if !keep_alive {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if !head_only {
        out.extend_from_slice(&resp.body);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_status_headers_body() {
        let r = Response::text(404, "no such key").with_header("X-Shard", "2".into());
        let mut out = Vec::new();
        encode(&r, false, true, &mut out);
        assert_eq!(
            String::from_utf8(out).expect("utf8"),
            "HTTP/1.1 404 Not Found\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 12\r\nX-Shard: 2\r\n\r\nno such key\n"
        );
        let mut head = Vec::new();
        encode(&r, true, false, &mut head);
        let head = String::from_utf8(head).expect("utf8");
        assert!(head.ends_with("Connection: close\r\n\r\n"), "{head}");
        assert!(head.contains("Content-Length: 12"));
    }
}
