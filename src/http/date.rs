//! The `Date` header value (RFC 9110 §6.6.1): the current time as an
//! IMF-fixdate, e.g. `Sun, 06 Nov 1994 08:49:37 GMT`.
//!
//! Formatting is cached per thread (each executor is one thread) with the
//! second it was made for, so it happens at most once per second per
//! executor; every other response copies the cached 29 bytes.

use std::cell::RefCell;
use std::time::{SystemTime, UNIX_EPOCH};

/// Length of an IMF-fixdate.
pub const LEN: usize = 29;

thread_local! {
    /// (unix second, its IMF-fixdate); `u64::MAX` before the first use.
    static CACHE: RefCell<(u64, [u8; LEN])> = const { RefCell::new((u64::MAX, [b' '; LEN])) };
}

/// The current time as an IMF-fixdate, formatted at most once per second
/// on this thread.
#[must_use]
pub fn now() -> [u8; LEN] {
    let now = SystemTime::now();
    let second = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    CACHE.with(|c| {
        let mut c = c.borrow_mut();
        if c.0 != second {
            *c = (second, format(now));
        }
        c.1
    })
}

/// `t` as an IMF-fixdate (sub-second parts are dropped).
#[must_use]
pub fn format(t: SystemTime) -> [u8; LEN] {
    let mut out = [b' '; LEN];
    let s = httpdate::fmt_http_date(t);
    // httpdate always writes exactly 29 ASCII bytes for years 1970..9999.
    if s.len() == LEN {
        out.copy_from_slice(s.as_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn imf_fixdate() {
        let at = |secs| UNIX_EPOCH + Duration::from_secs(secs);
        // The example of RFC 9110 §5.6.7.
        assert_eq!(&format(at(784_111_777)), b"Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(&format(at(0)), b"Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(
            &format(at(951_827_696) + Duration::from_millis(999)),
            b"Tue, 29 Feb 2000 12:34:56 GMT"
        );
        let a = now();
        assert!(a.ends_with(b" GMT") && a[3] == b',', "{a:?}");
        let parsed = httpdate::parse_http_date(std::str::from_utf8(&a).unwrap_or_default());
        assert!(parsed.is_ok(), "{a:?}");
    }
}
