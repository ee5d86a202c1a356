//! Command-line options of the `corekv` binary.
//!
//! Pure: arguments in, [`Command`] out. No I/O.

use crate::node::Options;
use std::path::PathBuf;
use std::time::Duration;

fn number(text: &str, option: &str) -> Result<usize, String> {
    text.parse::<usize>()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("{option} needs a whole number above 0, not {text:?}"))
}

pub const USAGE: &str = "\
usage: corekv [options]

Runs the corekv nodes of sharding.toml that live on this host.

options:
  --config FILE        cluster layout (default: ./sharding.toml)
  --data-dir DIR       where the redb files live (default: ./data)
  --serve ADDR[,ADDR]  run only the nodes with these configured addresses;
                       every other node is reached over HTTP (default: all)
  --log-retention N    replication log entries kept for lagging replicas
                       (default: 1000000)
  --commit-batch N     most writes per group commit (default: 4096;
                       1 = one fsync per write, a benchmark baseline)
  --commit-queue N     most writes waiting for a node's committer; more
                       are answered 503 with Retry-After (default: 8192)
  --token TOKEN        shared secret required (as `Authorization: Bearer
                       TOKEN`) for writes and internal endpoints; also read
                       from the COREKV_TOKEN environment variable
  --log-level LEVEL    error, warn, info (default) or debug
  --max-connections N  open connections per node (default: 10000)
  --max-body BYTES     request body limit, 413 above (default: 8388608)
  --max-header-bytes B request line + headers limit, 431 above (default: 16384)
  --max-headers N      header count limit, 431 above (default: 64)
  --max-key BYTES      key size limit, 413 above (default: 8192)
  --idle-timeout SECS  close idle keep-alive connections (default: 60)
  --request-timeout S  time to send a whole request, 408 after (default: 10)
  --forward-timeout-ms N
                       how long a request forwarded to another host may
                       take, connect included: 504 after; also the deadline
                       a forwarded write carries (default: 5000)
  --clock-skew-ms N    the largest difference assumed between two hosts'
                       clocks: an owner applies a forwarded write only if
                       its clock plus N is not past the write's deadline
                       (default: 500; must be below --forward-timeout-ms)
  --spin-us N          executors spin N microseconds before sleeping
                       (default: 0, park at once)
  --preempt-us N       glommio preempt timer: executors poll for I/O at
                       least every N microseconds while tasks keep running
                       (default: 1000000; see README, Scheduling)
  --no-yield           arm an io_uring poll as soon as a connection has no
                       request waiting, instead of first letting the
                       executor poll once (benchmark comparison)
  --cache-mb N         redb page cache per node file (default: 64)
  --no-fsync           acknowledge writes before they are on disk
                       (testing only: loses acknowledged writes on a crash)
  -h, --help           print this help
  -V, --version        print the version
";

/// What the command line asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Command {
    Run(Box<Options>),
    Help,
    Version,
}

/// Parses the arguments after the program name.
///
/// # Errors
/// An unknown option, a missing or invalid option value.
pub fn parse<I: IntoIterator<Item = String>>(args: I) -> Result<Command, String> {
    let mut opts = Options {
        token: std::env::var("COREKV_TOKEN").ok().filter(|t| !t.is_empty()),
        ..Options::default()
    };
    let mut it = args.into_iter();
    while let Some(arg) = it.next() {
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let mut value = |what: &str| {
            inline
                .clone()
                .or_else(|| it.next())
                .ok_or_else(|| format!("option {name} needs {what}"))
        };
        match name.as_str() {
            "-h" | "--help" => return Ok(Command::Help),
            "-V" | "--version" => return Ok(Command::Version),
            "--config" => opts.config = PathBuf::from(value("a file")?),
            "--data-dir" => opts.data_dir = PathBuf::from(value("a directory")?),
            "--serve" => {
                let list: Vec<String> = value("addresses")?
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect();
                if list.is_empty() {
                    return Err("--serve needs at least one address".into());
                }
                opts.serve = Some(list);
            }
            "--log-retention" => {
                opts.log_retention = value("a number")?
                    .parse()
                    .map_err(|_| "--log-retention needs a whole number".to_string())?;
            }
            "--commit-batch" => {
                opts.commit_batch = value("a number")?
                    .parse()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| "--commit-batch needs a number >= 1".to_string())?;
            }
            "--commit-queue" => opts.commit_queue = number(&value("a number")?, &name)?,
            "--token" => {
                let t = value("a token")?;
                if t.is_empty() || t.contains(['\r', '\n']) {
                    return Err("--token must be non-empty and on one line".into());
                }
                opts.token = Some(t);
            }
            "--log-level" => {
                opts.log_level = crate::log::parse_level(&value("a level")?)
                    .ok_or("--log-level must be error, warn, info or debug")?;
            }
            "--max-connections" => opts.conn.max_connections = number(&value("a number")?, &name)?,
            "--max-body" => opts.conn.limits.max_body = number(&value("a number")?, &name)?,
            "--max-header-bytes" => opts.conn.limits.max_head = number(&value("a number")?, &name)?,
            "--max-headers" => {
                opts.conn.limits.max_headers = number(&value("a number")?, &name)?.min(128);
            }
            "--max-key" => opts.max_key = number(&value("a number")?, &name)?,
            "--idle-timeout" => {
                opts.conn.idle_timeout =
                    Duration::from_secs(number(&value("seconds")?, &name)? as u64);
            }
            "--request-timeout" => {
                opts.conn.request_timeout =
                    Duration::from_secs(number(&value("seconds")?, &name)? as u64);
            }
            "--forward-timeout-ms" => {
                opts.forward_timeout =
                    Duration::from_millis(number(&value("milliseconds")?, &name)? as u64);
            }
            "--clock-skew-ms" => {
                opts.clock_skew = Duration::from_millis(
                    value("milliseconds")?
                        .parse()
                        .map_err(|_| "--clock-skew-ms needs a whole number".to_string())?,
                );
            }
            "--spin-us" => {
                opts.spin_before_park = Duration::from_micros(
                    value("microseconds")?
                        .parse()
                        .map_err(|_| "--spin-us needs a whole number".to_string())?,
                );
            }
            "--preempt-us" => {
                opts.preempt_timer =
                    Duration::from_micros(number(&value("microseconds")?, &name)? as u64);
            }
            "--no-yield" => opts.conn.yield_before_read = false,
            "--cache-mb" => {
                opts.cache_bytes = number(&value("megabytes")?, &name)?.saturating_mul(1 << 20);
            }
            "--no-fsync" => opts.durable = false,
            other => return Err(format!("unknown option {other:?}")),
        }
    }
    if opts.clock_skew >= opts.forward_timeout {
        return Err(format!(
            "--clock-skew-ms ({} ms) must be below --forward-timeout-ms ({} ms): every forwarded write would miss its deadline",
            opts.clock_skew.as_millis(),
            opts.forward_timeout.as_millis()
        ));
    }
    Ok(Command::Run(Box::new(opts)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| (*s).to_string()).collect()
    }

    #[test]
    fn defaults_and_options() {
        assert_eq!(parse(args(&[])), Ok(Command::Run(Box::default())));
        let Ok(Command::Run(o)) = parse(args(&[
            "--config",
            "c.toml",
            "--data-dir=d",
            "--serve",
            "h:1, h:2",
            "--no-fsync",
        ])) else {
            panic!("should parse");
        };
        assert_eq!(o.config, PathBuf::from("c.toml"));
        assert_eq!(o.data_dir, PathBuf::from("d"));
        assert_eq!(o.serve, Some(vec!["h:1".to_string(), "h:2".to_string()]));
        assert!(!o.durable);
        assert!(parse(args(&["--bogus"])).is_err());
        let Ok(Command::Run(o)) =
            parse(args(&["--forward-timeout-ms", "1500", "--clock-skew-ms=0"]))
        else {
            panic!("should parse");
        };
        assert_eq!(o.forward_timeout, Duration::from_millis(1500));
        assert_eq!(o.clock_skew, Duration::ZERO);
        assert!(parse(args(&["--forward-timeout-ms", "400"])).is_err());
        assert!(parse(args(&["--forward-timeout-ms", "0"])).is_err());
        let Ok(Command::Run(o)) = parse(args(&["--commit-queue", "3"])) else {
            panic!("should parse");
        };
        assert_eq!(o.commit_queue, 3);
        assert!(parse(args(&["--commit-queue", "0"])).is_err());
        assert!(parse(args(&["--config"])).is_err());
        assert_eq!(parse(args(&["-h"])), Ok(Command::Help));
    }
}
