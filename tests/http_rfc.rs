//! Integration tests of corekv's HTTP responses against the letter of RFC
//! 9110 / 9112, on raw bytes over TCP (no HTTP library on the client
//! side): `304 Not Modified` and `204 No Content` without Content-Length
//! and ending at their head (the next pipelined answer follows at once); a
//! `Date` header in IMF-fixdate on every response, the connection layer's
//! refusals (400, 408, 413, 431, 501, 505, 503) included; `If-Match`
//! entity-tag lists with the strong comparison and `If-None-Match` with the
//! weak one (412 for well-formed tags that do not match, 400 only for
//! malformed headers); `Cache-Control` and `X-Version` on data reads, also
//! through a non-owner node, a replica and another process.
//!
//! Every test owns its ports, temp dir and processes; every wait has a
//! deadline. Local helpers only: `tests/common` is shared.

#![allow(
    clippy::cast_possible_truncation, // calendar arithmetic on small values
    clippy::cast_possible_wrap, // calendar arithmetic on small values
)]

mod common;

use common::{Cluster, Conn, IO_TIMEOUT, enc, keys_for_shard, request_bytes, wait_until};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

// ---------------------------------------------------------------------------
// Raw HTTP

/// One response as it was on the wire.
#[derive(Debug)]
struct Raw {
    status_line: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Raw {
    fn status(&self) -> u16 {
        self.status_line
            .get(9..12)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    }

    /// Every value of header `name` (case-insensitive).
    fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The only value of header `name`; panics when it appears twice.
    fn header(&self, name: &str) -> Option<&str> {
        let all = self.all(name);
        assert!(all.len() <= 1, "{name} appears {} times: {self}", all.len());
        all.first().copied()
    }

    fn etag_version(&self) -> u64 {
        self.header("ETag")
            .and_then(|e| e.strip_prefix('"')?.strip_suffix('"')?.parse().ok())
            .unwrap_or_else(|| panic!("no ETag of the form \"<n>\": {self}"))
    }
}

impl std::fmt::Display for Raw {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.status_line)?;
        for (n, v) in &self.headers {
            write!(f, " | {n}: {v}")?;
        }
        write!(f, " | body {:?}", String::from_utf8_lossy(&self.body))
    }
}

/// Splits the first response off `bytes` by the rules of RFC 9112 §6.3:
/// no content for HEAD answers and 1xx, 204, 304; else exactly
/// Content-Length bytes. Returns it and the bytes after it.
fn split_response(bytes: &[u8], head_request: bool) -> (Raw, &[u8]) {
    let show = || String::from_utf8_lossy(bytes).into_owned();
    let end = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no complete head in {:?}", show()));
    let head = std::str::from_utf8(&bytes[..end]).expect("head is ASCII");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default().to_string();
    let headers: Vec<(String, String)> = lines
        .map(|l| {
            let (n, v) = l
                .split_once(':')
                .unwrap_or_else(|| panic!("bad header line {l:?}"));
            assert_eq!(n, n.trim(), "whitespace around a field name: {l:?}");
            (n.to_string(), v.trim().to_string())
        })
        .collect();
    let mut raw = Raw {
        status_line,
        headers,
        body: Vec::new(),
    };
    let status = raw.status();
    let rest = &bytes[end + 4..];
    if head_request || status < 200 || status == 204 || status == 304 {
        return (raw, rest);
    }
    let len: usize = raw
        .header("Content-Length")
        .unwrap_or_else(|| panic!("{status} without Content-Length: {raw}"))
        .parse()
        .expect("Content-Length is a number");
    assert!(rest.len() >= len, "truncated body: {:?}", show());
    raw.body = rest[..len].to_vec();
    (raw, &rest[len..])
}

/// The last request of every exchange: proves that the answer before it
/// ended where the framing says.
const SENTINEL: &[u8] = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";

/// Sends `request` and then [`SENTINEL`] on one connection, reads to EOF
/// and returns the answer to `request`, after checking that the only thing
/// after it is the sentinel's `200 ok`.
fn exchange(addr: SocketAddr, request: &[u8]) -> Raw {
    let mut s = TcpStream::connect_timeout(&addr, IO_TIMEOUT).expect("connect");
    s.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
    let mut bytes = request.to_vec();
    bytes.extend_from_slice(SENTINEL);
    s.write_all(&bytes).expect("write");
    let mut got = Vec::new();
    s.read_to_end(&mut got).expect("read to EOF");
    let head_request = request.starts_with(b"HEAD ");
    let (raw, rest) = split_response(&got, head_request);
    let (sentinel, after) = split_response(rest, false);
    assert_eq!(
        (sentinel.status_line.as_str(), sentinel.body.as_slice()),
        ("HTTP/1.1 200 OK", b"ok\n".as_slice()),
        "the answer after {raw} is not the sentinel's: {:?}",
        String::from_utf8_lossy(rest)
    );
    assert!(after.is_empty(), "bytes after the sentinel: {after:?}");
    check_date(&raw);
    raw
}

/// `exchange` of a request built from parts.
fn ask(addr: SocketAddr, method: &str, target: &str, headers: &[(&str, &str)], body: &[u8]) -> Raw {
    exchange(addr, &request_bytes(method, target, headers, body))
}

/// Sends `request`, reads to EOF (the server closes after a refusal) and
/// returns the one answer.
fn refused(addr: SocketAddr, request: &[u8]) -> Raw {
    let mut s = TcpStream::connect_timeout(&addr, IO_TIMEOUT).expect("connect");
    s.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
    s.write_all(request).expect("write");
    let mut got = Vec::new();
    // A reset after the answer (unread request bytes) still leaves it read.
    let mut chunk = [0u8; 4096];
    loop {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&chunk[..n]),
        }
    }
    let (raw, rest) = split_response(&got, false);
    assert!(rest.is_empty(), "bytes after a refusal: {rest:?}");
    raw
}

// ---------------------------------------------------------------------------
// Dates

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Parses an IMF-fixdate (RFC 9110 §5.6.7), strictly: `Sun, 06 Nov 1994
/// 08:49:37 GMT`, 29 bytes, the day name matching the date. Unix seconds.
fn imf_fixdate(s: &str) -> Option<i64> {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let b = s.as_bytes();
    if b.len() != 29
        || &b[3..5] != b", "
        || b[7] != b' '
        || b[11] != b' '
        || b[16] != b' '
        || b[19] != b':'
        || b[22] != b':'
        || &b[25..] != b" GMT"
    {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let t = s.get(r)?;
        t.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| t.parse().ok())?
    };
    let (day, year) = (num(5..7)?, num(12..16)?);
    let (h, mi, sec) = (num(17..19)?, num(20..22)?, num(23..25)?);
    let month = MONTHS.iter().position(|&m| m == &s[8..11])? as i64 + 1;
    if !(1..=31).contains(&day) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let days = days_from_civil(year, month, day);
    (DAYS[days.rem_euclid(7) as usize] == &s[..3])
        .then_some(days * 86_400 + h * 3600 + mi * 60 + sec)
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Exactly one `Date`, an IMF-fixdate within a few seconds of now.
fn check_date(r: &Raw) -> i64 {
    let dates = r.all("Date");
    assert_eq!(dates.len(), 1, "one Date header: {r}");
    let t = imf_fixdate(dates[0]).unwrap_or_else(|| panic!("Date is not an IMF-fixdate: {r}"));
    let now = unix_now();
    assert!(
        (now - 5..=now + 1).contains(&t),
        "Date {t} is not now ({now}): {r}"
    );
    t
}

#[test]
fn imf_fixdate_parser() {
    assert_eq!(
        imf_fixdate("Sun, 06 Nov 1994 08:49:37 GMT"),
        Some(784_111_777)
    );
    assert_eq!(imf_fixdate("Thu, 01 Jan 1970 00:00:00 GMT"), Some(0));
    assert_eq!(
        imf_fixdate("Tue, 29 Feb 2000 12:34:56 GMT"),
        Some(951_827_696)
    );
    for bad in [
        "Mon, 06 Nov 1994 08:49:37 GMT", // wrong day name
        "Sunday, 06-Nov-94 08:49:37 GMT",
        "Sun Nov  6 08:49:37 1994",
        "Sun, 6 Nov 1994 08:49:37 GMT",
        "Sun, 06 Nov 1994 08:49:37 UTC",
        "Sun, 06 nov 1994 08:49:37 GMT",
    ] {
        assert_eq!(imf_fixdate(bad), None, "{bad}");
    }
}

// ---------------------------------------------------------------------------
// Tests

fn kv_path(key: &str) -> String {
    format!("/v1/kv/{}", enc(key.as_bytes()))
}

/// PUTs `value` at `key` through `via`; returns the new version.
fn put(via: SocketAddr, key: &str, value: &[u8]) -> u64 {
    let r = ask(via, "PUT", &kv_path(key), &[], value);
    assert_eq!(r.status(), 200, "PUT {key}: {r}");
    r.etag_version()
}

/// The headers every data read carries.
fn check_read_headers(r: &Raw, version: u64, ctx: &str) {
    assert_eq!(r.etag_version(), version, "{ctx}: {r}");
    assert_eq!(
        r.header("X-Version"),
        Some(version.to_string().as_str()),
        "{ctx}: {r}"
    );
    assert_eq!(r.header("Cache-Control"), Some("no-cache"), "{ctx}: {r}");
}

/// A 304 to a conditional GET or HEAD: the exact status line, no content
/// and no framing or content headers, the validators of the 200.
fn check_not_modified(r: &Raw, version: u64, ctx: &str) {
    assert_eq!(r.status_line, "HTTP/1.1 304 Not Modified", "{ctx}: {r}");
    assert_eq!(r.header("Content-Length"), None, "{ctx}: {r}");
    assert_eq!(r.header("Content-Type"), None, "{ctx}: {r}");
    assert_eq!(r.header("Transfer-Encoding"), None, "{ctx}: {r}");
    check_read_headers(r, version, ctx);
}

#[test]
fn not_modified_and_no_content_end_at_their_head() {
    let c = Cluster::start(2);
    // Through the owner, a non-owner (in-process forwarding) and a replica.
    let key = keys_for_shard("nm", 0, 2, 1).remove(0);
    let v = put(c.shards[0].primary, &key, b"value");
    let path = kv_path(&key);
    let tag = format!("\"{v}\"");
    for via in [
        c.shards[0].primary,
        c.shards[1].primary,
        c.shards[1].replica,
    ] {
        let ctx = format!("via {via}");
        for method in ["GET", "HEAD"] {
            let r = ask(via, method, &path, &[("If-None-Match", &tag)], b"");
            check_not_modified(&r, v, &format!("{ctx}: {method}"));
        }
    }
    // The replica of the key's shard, once it has the write.
    let replica = c.shards[0].replica;
    assert!(
        wait_until(Duration::from_secs(10), || {
            ask(replica, "GET", &path, &[], b"").status() == 200
        }),
        "replica never got the write"
    );
    let r = ask(replica, "GET", &path, &[("If-None-Match", &tag)], b"");
    check_not_modified(&r, v, "replica");

    // DELETE: 204 No Content without Content-Length, also when forwarded,
    // and also for a key that does not exist.
    for (via, what) in [
        (c.shards[1].primary, "forwarded"),
        (c.shards[0].primary, "owner, key already gone"),
    ] {
        let r = ask(via, "DELETE", &path, &[], b"");
        assert_eq!(r.status_line, "HTTP/1.1 204 No Content", "{what}: {r}");
        assert_eq!(r.header("Content-Length"), None, "{what}: {r}");
        assert_eq!(r.header("Content-Type"), None, "{what}: {r}");
        assert!(r.header("X-Seq").is_some(), "{what}: {r}");
    }
    // Every other answer keeps exact Content-Length framing: 404, 200, 412.
    let r = ask(c.shards[0].primary, "GET", &path, &[], b"");
    assert_eq!(
        (r.status(), r.header("Content-Length")),
        (404, Some("14")),
        "{r}"
    );
    let r = ask(c.shards[0].primary, "HEAD", "/health", &[], b"");
    assert_eq!(
        (r.status(), r.header("Content-Length")),
        (200, Some("3")),
        "{r}"
    );
}

#[test]
fn if_match_takes_lists_of_entity_tags_with_the_strong_comparison() {
    let c = Cluster::start(1);
    let via = c.shards[0].primary;
    let key = "im";
    let path = kv_path(key);
    let v = put(via, key, b"one");
    let other = v + 1000;
    let q = |n: u64| format!("\"{n}\"");

    // A list whose second tag is the current version: the write happens.
    let list = format!("{}, {}", q(other), q(v));
    let r = ask(via, "PUT", &path, &[("If-Match", &list)], b"two");
    assert_eq!(r.status(), 200, "If-Match {list}: {r}");
    let v = r.etag_version();
    // Also without spaces, with empty elements, over two field lines.
    let list = format!(",{},,{}", q(other), q(v));
    let r = ask(via, "PUT", &path, &[("If-Match", &list)], b"three");
    assert_eq!(r.status(), 200, "If-Match {list}: {r}");
    let v = r.etag_version();
    let (a, b) = (q(other), q(v));
    let r = ask(
        via,
        "PUT",
        &path,
        &[("If-Match", &a), ("If-Match", &b)],
        b"four",
    );
    assert_eq!(r.status(), 200, "If-Match on two lines: {r}");
    let v = r.etag_version();

    // Well-formed tags that do not match: 412 with the current ETag, and
    // nothing is written.
    let weak = format!("W/{}", q(v));
    for bad in [
        q(other),
        format!("{}, {}", q(other), q(other + 1)),
        weak.clone(),
        format!("{weak}, {}", q(other)),
        "\"abc\"".to_string(),
        format!("\"0{v}\""),
        "\"\"".to_string(),
    ] {
        for method in ["PUT", "DELETE", "GET", "HEAD"] {
            let r = ask(via, method, &path, &[("If-Match", &bad)], b"x");
            assert_eq!(
                r.status_line, "HTTP/1.1 412 Precondition Failed",
                "{method} If-Match: {bad}: {r}"
            );
            assert_eq!(r.etag_version(), v, "{method} If-Match: {bad}: {r}");
        }
    }
    // Malformed headers: 400.
    for bad in [
        v.to_string(),
        format!("w/{}", q(v)),
        format!("W/ {}", q(v)),
        format!("{} {}", q(v), q(other)),
        format!("*, {}", q(v)),
        format!("\"{v}"),
        format!("{};", q(v)),
    ] {
        for method in ["PUT", "GET"] {
            let r = ask(via, method, &path, &[("If-Match", &bad)], b"x");
            assert_eq!(r.status(), 400, "{method} If-Match: {bad}: {r}");
            assert!(String::from_utf8_lossy(&r.body).contains("If-Match"), "{r}");
        }
    }
    // A matching list on a read: 200 with the value.
    let list = format!("{weak}, {}", q(v));
    let r = ask(via, "GET", &path, &[("If-Match", &list)], b"");
    assert_eq!(
        (r.status(), r.body.as_slice()),
        (200, b"four".as_slice()),
        "{r}"
    );
    check_read_headers(&r, v, "GET If-Match");
    // DELETE with a matching list: 204; then If-Match fails on the missing key.
    let r = ask(via, "DELETE", &path, &[("If-Match", &list)], b"");
    assert_eq!(r.status(), 204, "{r}");
    let r = ask(via, "PUT", &path, &[("If-Match", &list)], b"x");
    assert_eq!(r.status(), 412, "If-Match on a missing key: {r}");
    // A read of a missing key ignores its preconditions (RFC 9110 §13.2.1).
    let r = ask(via, "GET", &path, &[("If-Match", &list)], b"");
    assert_eq!(r.status(), 404, "{r}");
}

#[test]
fn if_none_match_uses_the_weak_comparison() {
    let c = Cluster::start(1);
    let via = c.shards[0].primary;
    let key = "inm";
    let path = kv_path(key);
    let v = put(via, key, b"value");
    let other = v + 1000;

    // Reads: a weak tag for the current version matches: 304.
    for tags in [
        format!("W/\"{v}\""),
        format!("\"{v}\""),
        format!("\"x\", W/\"{other}\", W/\"{v}\""),
        "*".to_string(),
    ] {
        for method in ["GET", "HEAD"] {
            let r = ask(via, method, &path, &[("If-None-Match", &tags)], b"");
            check_not_modified(&r, v, &format!("{method} If-None-Match: {tags}"));
        }
    }
    // Tags for other versions: 200 with the value.
    for tags in [format!("W/\"{other}\""), format!("\"{other}\", \"x\"")] {
        let r = ask(via, "GET", &path, &[("If-None-Match", &tags)], b"");
        assert_eq!(
            (r.status(), r.body.as_slice()),
            (200, b"value".as_slice()),
            "{tags}: {r}"
        );
        check_read_headers(&r, v, &tags);
    }
    // If-Match is evaluated first, then If-None-Match (RFC 9110 §13.2.2).
    let (m, n) = (format!("\"{v}\""), format!("W/\"{v}\""));
    let r = ask(
        via,
        "GET",
        &path,
        &[("If-Match", &m), ("If-None-Match", &n)],
        b"",
    );
    check_not_modified(&r, v, "If-Match and If-None-Match");
    let bad_m = format!("\"{other}\"");
    let r = ask(
        via,
        "GET",
        &path,
        &[("If-Match", &bad_m), ("If-None-Match", &n)],
        b"",
    );
    assert_eq!(r.status(), 412, "{r}");

    // Writes: a matching If-None-Match is 412 (weak comparison), another
    // tag lets the write through.
    let r = ask(via, "PUT", &path, &[("If-None-Match", &n)], b"x");
    assert_eq!(r.status(), 412, "PUT If-None-Match {n}: {r}");
    assert_eq!(r.etag_version(), v, "{r}");
    let r = ask(via, "DELETE", &path, &[("If-None-Match", &n)], b"");
    assert_eq!(r.status(), 412, "DELETE If-None-Match {n}: {r}");
    let tags = format!("W/\"{other}\"");
    let r = ask(via, "PUT", &path, &[("If-None-Match", &tags)], b"new");
    assert_eq!(r.status(), 200, "PUT If-None-Match {tags}: {r}");
    // Malformed: 400.
    for bad in ["7", "W/7", "\"1\" \"2\"", "\"1\", *"] {
        let r = ask(via, "GET", &path, &[("If-None-Match", bad)], b"");
        assert_eq!(r.status(), 400, "If-None-Match: {bad}: {r}");
    }
}

#[test]
fn data_reads_carry_cache_control_and_x_version() {
    // Two processes, so reads also go over the inter-node HTTP client.
    let c = Cluster::start_groups(2, &[vec![0], vec![1]]);
    let key = keys_for_shard("cc", 1, 2, 1).remove(0);
    let v = put(c.shards[1].primary, &key, b"cached");
    let path = kv_path(&key);
    for (via, what) in [
        (c.shards[1].primary, "owner"),
        (c.shards[0].primary, "other process"),
        (c.shards[0].replica, "other process's replica"),
    ] {
        let ctx = format!("{what} {via}");
        for method in ["GET", "HEAD"] {
            let r = ask(via, method, &path, &[], b"");
            assert_eq!(r.status(), 200, "{ctx}: {method}: {r}");
            check_read_headers(&r, v, &format!("{ctx}: {method}"));
            assert_eq!(
                r.header("Content-Length"),
                Some("6"),
                "{ctx}: {method}: {r}"
            );
        }
        // 304 and 204 pass through another process intact.
        let tag = format!("W/\"{v}\"");
        let r = ask(via, "GET", &path, &[("If-None-Match", &tag)], b"");
        check_not_modified(&r, v, &ctx);
        // The seed API: the same value, its version and Cache-Control.
        let r = ask(
            via,
            "GET",
            &format!("/get?key={}", enc(key.as_bytes())),
            &[],
            b"",
        );
        assert_eq!(
            (r.status(), r.body.as_slice()),
            (200, b"cached".as_slice()),
            "{ctx}: /get: {r}"
        );
        assert_eq!(
            r.header("X-Version"),
            Some(v.to_string().as_str()),
            "{ctx}: /get: {r}"
        );
        assert_eq!(
            r.header("Cache-Control"),
            Some("no-cache"),
            "{ctx}: /get: {r}"
        );
        // A missing key: 404, not to be reused without asking either.
        let r = ask(via, "GET", "/v1/kv/no-such-key-here", &[], b"");
        assert_eq!(r.status(), 404, "{ctx}: {r}");
        assert_eq!(
            r.header("Cache-Control"),
            Some("no-cache"),
            "{ctx}: 404: {r}"
        );
    }
    let r = ask(c.shards[0].primary, "DELETE", &path, &[], b"");
    assert_eq!(
        (r.status(), r.header("Content-Length")),
        (204, None),
        "DELETE across processes: {r}"
    );

    // A listing is a data read without a validator: no-cache.
    let r = ask(c.shards[0].primary, "GET", "/v1/kv?prefix=cc", &[], b"");
    assert_eq!(r.status(), 200, "{r}");
    assert_eq!(r.header("Cache-Control"), Some("no-cache"), "listing: {r}");
    // Answers to writes (also to a GET /set, here forwarded to the other
    // process) and the operational endpoints: never stored.
    let set = format!("/set?key={}&value=v", enc(key.as_bytes()));
    let del = format!("/delete?key={}", enc(key.as_bytes()));
    for (method, target) in [
        ("GET", set.as_str()),
        ("GET", del.as_str()),
        ("PUT", path.as_str()),
        ("GET", "/health"),
        ("GET", "/ready"),
        ("GET", "/status"),
        ("GET", "/metrics"),
    ] {
        let r = ask(c.shards[0].primary, method, target, &[], b"v");
        assert!(
            r.status() == 200 || target == "/ready",
            "{method} {target}: {r}"
        );
        assert_eq!(
            r.header("Cache-Control"),
            Some("no-store"),
            "{method} {target}: {r}"
        );
    }
}

#[test]
fn every_response_has_a_date_including_refusals() {
    let c = Cluster::start_with_args(
        1,
        &[None],
        &[
            "--request-timeout",
            "1",
            "--max-connections",
            "2",
            "--max-body",
            "1024",
            "--max-header-bytes",
            "2048",
        ],
    );
    let (primary, replica) = (c.shards[0].primary, c.shards[0].replica);
    // Answers of the API (`exchange` checks Date on each).
    for target in [
        "/health",
        "/ready",
        "/status",
        "/metrics",
        "/get?key=nope",
        "/get",
        "/nope",
        "/v1/kv?prefix=a",
    ] {
        let r = ask(replica, "GET", target, &[], b"");
        assert!(r.status() >= 200, "{target}: {r}");
    }
    let r = ask(primary, "PUT", "/v1/kv/d", &[], b"v");
    assert_eq!(r.status(), 200, "{r}");
    let r = ask(primary, "POST", "/v1/kv/d", &[], b"v");
    assert_eq!(r.status(), 405, "{r}");
    // The connection layer's own refusals, each then closed.
    let huge_head = format!(
        "GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: {}\r\n\r\n",
        "a".repeat(3000)
    );
    for (request, status) in [
        (b"BLAH\r\n\r\n".to_vec(), 400),
        (b"GET /health HTTP/2.0\r\n\r\n".to_vec(), 505),
        (
            b"POST /set HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec(),
            501,
        ),
        (
            b"PUT /v1/kv/big HTTP/1.1\r\nContent-Length: 5000\r\n\r\n".to_vec(),
            413,
        ),
        (huge_head.into_bytes(), 431),
        // A started request that stalls: 408 after --request-timeout.
        (b"GET /health HTTP/1.1\r\nHost: 1".to_vec(), 408),
    ] {
        let r = refused(replica, &request);
        assert_eq!(
            r.status(),
            status,
            "{:?}: {r}",
            String::from_utf8_lossy(&request)
        );
        check_date(&r);
        assert_eq!(r.header("Connection"), Some("close"), "{r}");
    }
    // Over the connection cap: 503 with a Date.
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut conn = Conn::connect(primary).expect("connect");
        assert_eq!(conn.get("/health").expect("served").status, 200);
        held.push(conn);
    }
    let r = refused(primary, b"");
    assert_eq!(r.status(), 503, "{r}");
    check_date(&r);
    drop(held);

    // The cached Date moves on: two answers a second apart differ.
    let first = check_date(&ask(replica, "GET", "/health", &[], b""));
    std::thread::sleep(Duration::from_millis(1100));
    let second = check_date(&ask(replica, "GET", "/health", &[], b""));
    assert!(
        second > first,
        "Date did not advance: {first} then {second}"
    );
}
