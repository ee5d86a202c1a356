//! Structured logging through the `log` facade: one `logfmt` line per
//! event on stderr (`ts=... level=info node=shard1/primary msg="..."`),
//! filtered by a process-wide level set once at start-up (`--log-level`).
//!
//! [`install`] registers [`Logfmt`] as the `log` crate's logger, so the
//! records of libraries (glommio logs its own warnings through `log`) are
//! printed too, with their module as `node`. corekv's own events use the
//! [`crate::log_at`] macro, a thin wrapper over `log::log!` whose target is
//! the node's name. Depends on `log` and std only.

use std::fmt::Write as _;
use std::io::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

/// Severity (the `log` crate's), most severe first.
pub use ::log::Level;

/// Parses `error`, `warn` (or `warning`), `info`, `debug` or `trace`.
#[must_use]
pub fn parse_level(s: &str) -> Option<Level> {
    match s.to_ascii_lowercase().as_str() {
        "warning" => Some(Level::Warn),
        other => other.parse().ok(),
    }
}

/// The logger: writes each record as one logfmt line on stderr.
pub struct Logfmt;

static LOGGER: Logfmt = Logfmt;

/// Makes [`Logfmt`] the process's logger (once; later calls only change the
/// level) and prints events up to `level`.
pub fn install(level: Level) {
    let _ = ::log::set_logger(&LOGGER);
    ::log::set_max_level(level.to_level_filter());
}

impl ::log::Log for Logfmt {
    fn enabled(&self, metadata: &::log::Metadata<'_>) -> bool {
        metadata.level() <= ::log::max_level()
    }

    fn log(&self, record: &::log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let line = format_line(record.level(), record.target(), record.args());
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {
        let _ = std::io::stderr().flush();
    }
}

/// `ts=... level=... node=... msg="..."` with the message quoted.
fn format_line(level: Level, node: &str, msg: &std::fmt::Arguments<'_>) -> String {
    let mut line = String::with_capacity(128);
    let _ = write!(
        line,
        "ts={} level={} node={} msg=",
        timestamp(),
        level.as_str().to_ascii_lowercase(),
        node
    );
    let text = msg.to_string();
    line.push('"');
    for c in text.chars() {
        match c {
            '"' => line.push_str("\\\""),
            '\\' => line.push_str("\\\\"),
            '\n' => line.push_str("\\n"),
            c => line.push(c),
        }
    }
    line.push_str("\"\n");
    line
}

/// RFC 3339 UTC time with milliseconds.
fn timestamp() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs();
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        now.subsec_millis()
    )
}

/// `log_at!(Level::Info, node_name, "format {}", args)`: a `log` record
/// whose target is the node's name.
#[macro_export]
macro_rules! log_at {
    ($level:expr, $node:expr, $($arg:tt)+) => {
        ::log::log!(target: $node, $level, $($arg)+)
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_parse_and_order() {
        assert_eq!(parse_level("WARN"), Some(Level::Warn));
        assert_eq!(parse_level("warning"), Some(Level::Warn));
        assert_eq!(parse_level("nope"), None);
        assert!(Level::Error < Level::Debug);
    }

    #[test]
    fn timestamp_shape() {
        let t = timestamp();
        assert_eq!(t.len(), 24, "{t}");
        assert!(t.starts_with("20") && t.ends_with('Z'), "{t}");
    }

    #[test]
    fn line_is_logfmt_with_quoted_message() {
        let line = format_line(Level::Warn, "s1/primary", &format_args!("a \"b\"\nc"));
        let rest = line.split_once(' ').map(|(_, r)| r).unwrap_or_default();
        assert_eq!(rest, "level=warn node=s1/primary msg=\"a \\\"b\\\"\\nc\"\n");
    }
}
