//! Command-line options of the `corekv` binary.
//!
//! Pure: arguments in, [`Command`] out; the only input besides the
//! arguments is the `COREKV_TOKEN` environment variable. The options, their
//! help texts and their defaults are declared once, in `Args`; the
//! defaults are read from [`Options::default`], so `--help` shows the values
//! the program really uses.

use crate::node::Options;
use crate::reshard::ReshardOptions;
use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches, Parser};
use log::Level;
use std::ffi::OsString;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// The environment variable `--token` falls back to.
pub const TOKEN_ENV: &str = "COREKV_TOKEN";

/// Most header fields a request may be allowed (`--max-headers` is capped
/// here).
const MAX_HEADERS_CAP: usize = 128;

/// The command line as clap sees it; converted into [`Options`].
#[derive(Parser, Debug)]
#[command(
    name = "corekv",
    version,
    about = "Runs the corekv nodes of sharding.toml that live on this host.",
    after_help = "Online resharding (N → 2N shards while serving): corekv reshard --config NEW.toml (see corekv reshard --help).",
    args_override_self = true,
    term_width = 80
)]
struct Args {
    /// Cluster layout.
    #[arg(long, value_name = "FILE", allow_hyphen_values = true,
          default_value_os_t = Options::default().config)]
    config: PathBuf,

    /// Where the redb files live.
    #[arg(long, value_name = "DIR", allow_hyphen_values = true,
          default_value_os_t = Options::default().data_dir)]
    data_dir: PathBuf,

    /// Run only the nodes with these configured addresses (comma-separated);
    /// every other node is reached over HTTP [default: all].
    #[arg(long, value_name = "ADDR[,ADDR]", allow_hyphen_values = true,
          value_parser = addresses)]
    serve: Option<Addresses>,

    /// Replication log entries kept for lagging replicas.
    #[arg(long, value_name = "N", allow_hyphen_values = true, value_parser = whole,
          default_value_t = Options::default().log_retention)]
    log_retention: u64,

    /// Replication log kept for lagging replicas, in MiB, at least: the log
    /// is kept to the larger of this and the node's data size; a replica
    /// further behind is re-seeded from a snapshot.
    #[arg(long, value_name = "N", allow_hyphen_values = true, value_parser = whole,
          default_value_t = Options::default().log_retention_bytes >> 20)]
    log_retention_mb: u64,

    /// Most writes per group commit (1 = one fsync per write, a benchmark
    /// baseline).
    #[arg(long, value_name = "N", allow_hyphen_values = true,
          value_parser = positive::<usize>,
          default_value_t = Options::default().commit_batch)]
    commit_batch: usize,

    /// Most writes waiting for a node's committer; more are answered 503
    /// with Retry-After.
    #[arg(long, value_name = "N", allow_hyphen_values = true,
          value_parser = positive::<usize>,
          default_value_t = Options::default().commit_queue)]
    commit_queue: usize,

    /// Shared secret required (as `Authorization: Bearer TOKEN`) for writes
    /// and internal endpoints [default: none].
    #[arg(long, value_name = "TOKEN", allow_hyphen_values = true, env = TOKEN_ENV,
          hide_env_values = true)]
    token: Option<String>,

    /// One of error, warn, info (also: warning) or debug.
    #[arg(long, value_name = "LEVEL", allow_hyphen_values = true, value_parser = level,
          default_value_t = LevelArg(Options::default().log_level))]
    log_level: LevelArg,

    /// Open connections per node; more get 503.
    #[arg(long, value_name = "N", allow_hyphen_values = true,
          value_parser = positive::<usize>,
          default_value_t = Options::default().conn.max_connections)]
    max_connections: usize,

    /// Request body limit, 413 above.
    #[arg(long, value_name = "BYTES", allow_hyphen_values = true,
          value_parser = positive::<usize>,
          default_value_t = Options::default().conn.limits.max_body)]
    max_body: usize,

    /// Request line + headers limit, 431 above.
    #[arg(long, value_name = "BYTES", allow_hyphen_values = true,
          value_parser = positive::<usize>,
          default_value_t = Options::default().conn.limits.max_head)]
    max_header_bytes: usize,

    /// Header count limit, 431 above (values over 128 count as 128).
    #[arg(long, value_name = "N", allow_hyphen_values = true,
          value_parser = positive::<usize>,
          default_value_t = Options::default().conn.limits.max_headers)]
    max_headers: usize,

    /// Key size limit, 413 above.
    #[arg(long, value_name = "BYTES", allow_hyphen_values = true,
          value_parser = positive::<usize>,
          default_value_t = Options::default().max_key)]
    max_key: usize,

    /// Close idle keep-alive connections after this many seconds.
    #[arg(long, value_name = "SECS", allow_hyphen_values = true,
          value_parser = positive::<u64>,
          default_value_t = Options::default().conn.idle_timeout.as_secs())]
    idle_timeout: u64,

    /// Seconds to send a whole request, 408 after.
    #[arg(long, value_name = "SECS", allow_hyphen_values = true,
          value_parser = positive::<u64>,
          default_value_t = Options::default().conn.request_timeout.as_secs())]
    request_timeout: u64,

    /// How long a request forwarded to another host may take, connect
    /// included: 504 after; also the deadline a forwarded write carries.
    #[arg(long, value_name = "N", allow_hyphen_values = true,
          value_parser = positive::<u64>,
          default_value_t = millis(Options::default().forward_timeout))]
    forward_timeout_ms: u64,

    /// The largest difference assumed between two hosts' clocks: an owner
    /// applies a forwarded write only if its clock plus N is not past the
    /// write's deadline (must be below --forward-timeout-ms).
    #[arg(long, value_name = "N", allow_hyphen_values = true, value_parser = whole,
          default_value_t = millis(Options::default().clock_skew))]
    clock_skew_ms: u64,

    /// Executors spin N microseconds before sleeping (0: park at once).
    #[arg(long, value_name = "N", allow_hyphen_values = true, value_parser = whole,
          default_value_t = micros(Options::default().spin_before_park))]
    spin_us: u64,

    /// The glommio preempt timer: executors poll for I/O at least every N
    /// microseconds while tasks keep running (see README, Scheduling).
    #[arg(long, value_name = "N", allow_hyphen_values = true,
          value_parser = positive::<u64>,
          default_value_t = micros(Options::default().preempt_timer))]
    preempt_us: u64,

    /// The redb page cache per node file, in MiB.
    #[arg(long, value_name = "N", allow_hyphen_values = true,
          value_parser = positive::<usize>,
          default_value_t = Options::default().cache_bytes >> 20)]
    cache_mb: usize,

    /// A write-ahead journal of N MiB per node file: a primary's group
    /// commit flushes one append to it instead of redb's pages (0: off;
    /// see README, The write-ahead journal).
    #[arg(long, value_name = "N", allow_hyphen_values = true, value_parser = journal_mb,
          default_value_t = Options::default().journal_bytes >> 20)]
    journal_mb: u64,

    /// Acknowledge writes before they are on disk (testing only: loses
    /// acknowledged writes on a crash).
    #[arg(long)]
    no_fsync: bool,

    /// etcd client URLs (comma-separated, tried in order): etcd decides
    /// who is primary and a replica takes over a dead primary (README,
    /// Failover with etcd) [default: none, the configured primaries for
    /// ever].
    #[arg(long, value_name = "URL[,URL]", allow_hyphen_values = true,
          value_parser = addresses)]
    etcd: Option<Addresses>,

    /// Prefix of corekv's keys in etcd.
    #[arg(long, value_name = "PREFIX", allow_hyphen_values = true,
          default_value_t = Options::default().etcd_prefix)]
    etcd_prefix: String,

    /// The etcd lease TTL: a dead primary is replaced after about this
    /// long; a primary stops writing max(TTL/4, 250 ms) before its lease
    /// could expire.
    #[arg(long, value_name = "N", allow_hyphen_values = true,
          value_parser = positive::<u64>,
          default_value_t = millis(Options::default().lease_ttl))]
    lease_ttl_ms: u64,

    /// Answer a write 200 only once N replicas have applied it (504,
    /// outcome unknown, when they cannot within --forward-timeout-ms); 0:
    /// asynchronous replication. At most the smallest number of replicas
    /// of a shard.
    #[arg(long, value_name = "N", allow_hyphen_values = true, value_parser = whole,
          default_value_t = Options::default().sync_replicas as u64)]
    sync_replicas: u64,

    /// This process runs nodes of the shards a reshard is adding (the
    /// second half of --config, which is the new layout; needs --serve):
    /// they follow their old shards until `corekv reshard` cuts over.
    #[arg(long)]
    joining: bool,
}

/// The `--serve` list (a newtype so clap takes it as one value).
#[derive(Clone, Debug)]
struct Addresses(Vec<String>);

/// A log level shown in lower case, as it is written on the command line.
#[derive(Clone, Copy, Debug)]
struct LevelArg(Level);

impl fmt::Display for LevelArg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.as_str().to_ascii_lowercase())
    }
}

fn positive<T: std::str::FromStr + Default + PartialEq>(text: &str) -> Result<T, String> {
    text.parse::<T>()
        .ok()
        .filter(|n| *n != T::default())
        .ok_or_else(|| "needs a whole number above 0".to_string())
}

fn whole(text: &str) -> Result<u64, String> {
    text.parse().map_err(|_| "needs a whole number".to_string())
}

/// Largest `--journal-mb` (the journal is preallocated at start).
const MAX_JOURNAL_MB: u64 = 16 * 1024;

fn journal_mb(text: &str) -> Result<u64, String> {
    whole(text)
        .ok()
        .filter(|&n| n <= MAX_JOURNAL_MB)
        .ok_or_else(|| format!("needs a whole number from 0 to {MAX_JOURNAL_MB}"))
}

fn addresses(text: &str) -> Result<Addresses, String> {
    let list: Vec<String> = text
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect();
    if list.is_empty() {
        return Err("needs at least one address".into());
    }
    Ok(Addresses(list))
}

fn level(text: &str) -> Result<LevelArg, String> {
    crate::log::parse_level(text)
        .map(LevelArg)
        .ok_or_else(|| "must be error, warn, info or debug".to_string())
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// What the command line asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Command {
    Run(Box<Options>),
    /// `corekv reshard ...`: drive a running cluster to twice its shards.
    Reshard(ReshardOptions),
    /// `--help` of the server, or of `reshard` (the text to print).
    Help(String),
    Version,
}

/// `corekv reshard`: the options of the command that drives an online
/// reshard (see `reshard`).
#[derive(Parser, Debug)]
#[command(
    name = "corekv reshard",
    about = "Doubles the shards of a running cluster while it serves: NEW.toml lists the current shards unchanged, then as many new ones. Exits 0 once every key lives only on its new owner; re-run after a failure or crash to finish.",
    args_override_self = true,
    term_width = 80
)]
struct ReshardArgs {
    /// The new layout.
    #[arg(long, value_name = "NEW.toml")]
    config: PathBuf,

    /// The cluster's shared token [env: `COREKV_TOKEN`].
    #[arg(long, value_name = "T")]
    token: Option<String>,

    /// Roll back a reshard in which no shard has split yet.
    #[arg(long)]
    abort: bool,

    /// Pause between steps, in milliseconds (for tests and demonstrations).
    #[arg(long, value_name = "MS", default_value_t = 0, value_parser = whole)]
    pause_ms: u64,

    /// Longest wait for the new shards to copy their old shards, in
    /// seconds.
    #[arg(long, value_name = "S", default_value_t = 600, value_parser = whole)]
    copy_timeout: u64,
}

fn parse_reshard(args: Vec<OsString>) -> Result<Command, String> {
    let argv = std::iter::once(OsString::from("corekv reshard")).chain(args);
    let parsed = match ReshardArgs::command()
        .color(clap::ColorChoice::Never)
        .try_get_matches_from(argv)
    {
        Ok(m) => ReshardArgs::from_arg_matches(&m).map_err(|e| usage_error(&describe(&e)))?,
        Err(e) if e.kind() == ErrorKind::DisplayHelp => {
            return Ok(Command::Help(
                ReshardArgs::command().render_help().to_string(),
            ));
        }
        Err(e) => return Err(usage_error(&describe(&e))),
    };
    let token = parsed
        .token
        .or_else(|| std::env::var(TOKEN_ENV).ok())
        .filter(|t| !t.is_empty());
    Ok(Command::Reshard(ReshardOptions {
        config: parsed.config,
        token,
        abort: parsed.abort,
        pause: Duration::from_millis(parsed.pause_ms),
        copy_timeout: Duration::from_secs(parsed.copy_timeout),
    }))
}

/// The full `--help` text: every option with its meaning and default.
#[must_use]
pub fn help() -> String {
    Args::command().render_help().to_string()
}

/// One line for a usage error: the problem, then "see --help".
fn usage_error(problem: &str) -> String {
    format!("{problem}; see --help")
}

/// clap's first line (without its `error: ` prefix) plus its suggestion,
/// if it has one; clap's own rendering adds the usage and more lines.
fn describe(e: &clap::Error) -> String {
    let rendered = e.render().to_string();
    let first = rendered.lines().next().unwrap_or_default();
    let mut problem = first.strip_prefix("error: ").unwrap_or(first).to_string();
    if let Some(ContextValue::String(s)) = e.get(ContextKind::SuggestedArg) {
        problem = format!("{problem} (did you mean {s}?)");
    }
    problem
}

/// Parses the arguments after the program name.
///
/// # Errors
/// An unknown option, a missing or invalid option value, or option values
/// that contradict each other: one line naming the problem, ending in
/// "see --help".
pub fn parse<I, T>(args: I) -> Result<Command, String>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    if args.first().is_some_and(|a| a == "reshard") {
        return parse_reshard(args[1..].to_vec());
    }
    let argv = std::iter::once(OsString::from("corekv")).chain(args);
    let matches = match Args::command()
        .color(clap::ColorChoice::Never)
        .try_get_matches_from(argv)
    {
        Ok(m) => m,
        Err(e) => {
            return match e.kind() {
                ErrorKind::DisplayHelp => Ok(Command::Help(help())),
                ErrorKind::DisplayVersion => Ok(Command::Version),
                _ => Err(usage_error(&describe(&e))),
            };
        }
    };
    let args = Args::from_arg_matches(&matches).map_err(|e| usage_error(&describe(&e)))?;
    // An empty COREKV_TOKEN means no token; on the command line a token
    // must be a usable header value.
    let token = match (args.token, matches.value_source("token")) {
        (Some(t), Some(ValueSource::EnvVariable)) => Some(t).filter(|t| !t.is_empty()),
        (Some(t), _) if t.is_empty() || t.contains(['\r', '\n']) => {
            return Err(usage_error("--token must be non-empty and on one line"));
        }
        (t, _) => t,
    };
    let mut conn = Options::default().conn;
    conn.max_connections = args.max_connections;
    conn.limits.max_body = args.max_body;
    conn.limits.max_head = args.max_header_bytes;
    conn.limits.max_headers = args.max_headers.min(MAX_HEADERS_CAP);
    conn.idle_timeout = Duration::from_secs(args.idle_timeout);
    conn.request_timeout = Duration::from_secs(args.request_timeout);
    let opts = Options {
        config: args.config,
        data_dir: args.data_dir,
        serve: args.serve.map(|a| a.0),
        durable: !args.no_fsync,
        log_retention: args.log_retention,
        log_retention_bytes: args.log_retention_mb.saturating_mul(1 << 20),
        commit_batch: args.commit_batch,
        commit_queue: args.commit_queue,
        token,
        conn,
        max_key: args.max_key,
        forward_timeout: Duration::from_millis(args.forward_timeout_ms),
        clock_skew: Duration::from_millis(args.clock_skew_ms),
        log_level: args.log_level.0,
        spin_before_park: Duration::from_micros(args.spin_us),
        cache_bytes: args.cache_mb.saturating_mul(1 << 20),
        journal_bytes: args.journal_mb.saturating_mul(1 << 20),
        preempt_timer: Duration::from_micros(args.preempt_us),
        etcd: args.etcd.map(|a| a.0),
        etcd_prefix: args.etcd_prefix,
        lease_ttl: Duration::from_millis(args.lease_ttl_ms),
        sync_replicas: usize::try_from(args.sync_replicas).unwrap_or(usize::MAX),
        joining: args.joining,
    };
    if opts.joining && opts.serve.is_none() {
        return Err(usage_error(
            "--joining needs --serve: it names the new shards' nodes this process runs",
        ));
    }
    if let Some(Err(e)) = opts.control().map(|c| c.validate()) {
        return Err(usage_error(&e.to_string()));
    }
    if opts.clock_skew >= opts.forward_timeout {
        return Err(usage_error(&format!(
            "--clock-skew-ms ({} ms) must be below --forward-timeout-ms ({} ms): every forwarded write would miss its deadline",
            opts.clock_skew.as_millis(),
            opts.forward_timeout.as_millis()
        )));
    }
    Ok(Command::Run(Box::new(opts)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| (*s).to_string()).collect()
    }

    fn run(a: &[&str]) -> Options {
        match parse(args(a)) {
            Ok(Command::Run(o)) => *o,
            other => panic!("{a:?} should parse, got {other:?}"),
        }
    }

    /// A usage error: one line, naming the problem, pointing to --help.
    fn usage(a: &[&str]) -> String {
        match parse(args(a)) {
            Err(e) => {
                assert!(!e.contains('\n'), "{a:?}: one line, got {e:?}");
                assert!(e.ends_with("; see --help"), "{a:?}: {e:?}");
                e
            }
            other => panic!("{a:?} should be refused, got {other:?}"),
        }
    }

    #[test]
    fn clap_declaration_is_consistent() {
        Args::command().debug_assert();
    }

    #[test]
    fn defaults_and_options() {
        assert_eq!(parse(args(&[])), Ok(Command::Run(Box::default())));
        let o = run(&[
            "--config",
            "c.toml",
            "--data-dir=d",
            "--serve",
            "h:1, h:2",
            "--no-fsync",
        ]);
        assert_eq!(o.config, PathBuf::from("c.toml"));
        assert_eq!(o.data_dir, PathBuf::from("d"));
        assert_eq!(o.serve, Some(vec!["h:1".to_string(), "h:2".to_string()]));
        assert!(!o.durable);
        assert!(parse(args(&["--bogus"])).is_err());
        let o = run(&["--forward-timeout-ms", "1500", "--clock-skew-ms=0"]);
        assert_eq!(o.forward_timeout, Duration::from_millis(1500));
        assert_eq!(o.clock_skew, Duration::ZERO);
        assert!(parse(args(&["--forward-timeout-ms", "400"])).is_err());
        assert!(parse(args(&["--forward-timeout-ms", "0"])).is_err());
        let o = run(&["--commit-queue", "3"]);
        assert_eq!(o.commit_queue, 3);
        assert!(parse(args(&["--commit-queue", "0"])).is_err());
        assert!(parse(args(&["--config"])).is_err());
        assert_eq!(parse(args(&["-h"])), Ok(Command::Help(help())));
    }

    #[test]
    fn every_option_sets_its_field() {
        let o = run(&[
            "--log-retention=0",
            "--commit-batch",
            "1",
            "--log-level",
            "DEBUG",
            "--max-connections",
            "7",
            "--max-body",
            "100",
            "--max-header-bytes",
            "200",
            "--max-headers",
            "1000",
            "--max-key",
            "16",
            "--idle-timeout",
            "3",
            "--request-timeout",
            "4",
            "--spin-us",
            "50",
            "--preempt-us",
            "2000",
            "--cache-mb",
            "2",
            "--journal-mb",
            "4",
            "--token",
            "-secret",
        ]);
        assert_eq!(o.log_retention, 0);
        assert_eq!(o.commit_batch, 1);
        assert_eq!(o.log_level, Level::Debug);
        assert_eq!(o.conn.max_connections, 7);
        assert_eq!(o.conn.limits.max_body, 100);
        assert_eq!(o.conn.limits.max_head, 200);
        assert_eq!(o.conn.limits.max_headers, 128, "capped");
        assert_eq!(o.max_key, 16);
        assert_eq!(o.conn.idle_timeout, Duration::from_secs(3));
        assert_eq!(o.conn.request_timeout, Duration::from_secs(4));
        assert_eq!(o.spin_before_park, Duration::from_micros(50));
        assert_eq!(o.preempt_timer, Duration::from_millis(2));
        assert_eq!(o.cache_bytes, 2 << 20);
        assert_eq!(o.journal_bytes, 4 << 20);
        assert_eq!(o.token.as_deref(), Some("-secret"));
        assert_eq!(run(&["--log-level", "warning"]).log_level, Level::Warn);
        // The last of a repeated option wins.
        assert_eq!(run(&["--max-key", "1", "--max-key", "2"]).max_key, 2);
    }

    #[test]
    fn etcd_options() {
        let o = run(&[]);
        assert_eq!(o.etcd, None);
        assert!(o.control().is_none(), "static roles by default");
        let o = run(&[
            "--etcd",
            "http://a:2379,http://b:2379",
            "--etcd-prefix",
            "/x",
            "--lease-ttl-ms",
            "3000",
        ]);
        let c = o.control().expect("control plane on");
        assert_eq!(c.endpoints, ["http://a:2379", "http://b:2379"]);
        assert_eq!(c.prefix, "/x");
        assert_eq!(c.lease_ttl, Duration::from_secs(3));
        assert_eq!(c.margin(), Duration::from_millis(750));
        assert_eq!(
            run(&["--etcd", "http://a:1", "--lease-ttl-ms", "1000"])
                .control()
                .map(|c| c.margin()),
            Some(Duration::from_millis(250))
        );
        for bad in [
            &["--etcd", "a:2379"][..],
            &["--etcd", "http://a:1", "--lease-ttl-ms", "999"],
            &["--etcd", "http://a:1", "--etcd-prefix", "x"],
            &["--etcd", "http://a:1", "--etcd-prefix", "/x/"],
        ] {
            usage(bad);
        }
    }

    #[test]
    fn usage_errors_are_one_line() {
        let e = usage(&["--bogus"]);
        assert!(e.contains("--bogus"), "{e}");
        let e = usage(&["--confg", "x"]);
        assert!(e.contains("--confg") && e.contains("--config"), "{e}");
        let e = usage(&["--config"]);
        assert!(e.contains("--config"), "{e}");
        for (option, bad) in [
            ("--commit-queue", "0"),
            ("--commit-batch", "0"),
            ("--max-connections", "-1"),
            ("--max-body", "x"),
            ("--max-header-bytes", "0"),
            ("--max-headers", "0"),
            ("--max-key", "1.5"),
            ("--idle-timeout", "0"),
            ("--request-timeout", ""),
            ("--forward-timeout-ms", "0"),
            ("--preempt-us", "0"),
            ("--cache-mb", "0"),
            ("--journal-mb", "16385"),
            ("--journal-mb", "-1"),
            ("--log-retention", "-1"),
            ("--clock-skew-ms", "x"),
            ("--spin-us", "1e3"),
            ("--log-level", "loud"),
            ("--serve", " , "),
            ("--token", ""),
            ("--token", "a\nb"),
        ] {
            let e = usage(&[option, bad]);
            assert!(e.contains(option), "{option} {bad:?}: {e}");
        }
        let e = usage(&["--forward-timeout-ms", "400"]);
        assert!(
            e.contains("--clock-skew-ms (500 ms)") && e.contains("--forward-timeout-ms (400 ms)"),
            "{e}"
        );
        usage(&["--clock-skew-ms", "5000"]);
        assert_eq!(parse(args(&["--help"])), Ok(Command::Help(help())));
        assert_eq!(parse(args(&["-V"])), Ok(Command::Version));
        assert_eq!(parse(args(&["--version"])), Ok(Command::Version));
    }

    #[test]
    fn help_lists_every_option_with_its_default() {
        // Wrapped at 80 columns: compare with single spaces.
        let text = help().split_whitespace().collect::<Vec<_>>().join(" ");
        let mut names: Vec<String> = Args::command()
            .get_arguments()
            .filter_map(|a| a.get_long().map(|l| format!("--{l}")))
            .collect();
        names.extend(["-h", "--help", "-V", "--version"].map(String::from));
        for name in [
            "--config",
            "--data-dir",
            "--serve",
            "--log-retention",
            "--commit-batch",
            "--commit-queue",
            "--token",
            "--log-level",
            "--max-connections",
            "--max-body",
            "--max-header-bytes",
            "--max-headers",
            "--max-key",
            "--idle-timeout",
            "--request-timeout",
            "--forward-timeout-ms",
            "--clock-skew-ms",
            "--spin-us",
            "--preempt-us",
            "--cache-mb",
            "--no-fsync",
        ] {
            assert!(names.iter().any(|n| n == name), "{name} is not declared");
        }
        for name in &names {
            assert!(
                text.contains(&format!("{name} ")) || text.contains(&format!("{name},")),
                "{name} missing from help:\n{text}"
            );
        }
        for default in [
            "[default: sharding.toml]",
            "[default: data]",
            "[default: all]",
            "[default: 1000000]",
            "[default: 4096]",
            "[default: 8192]",
            "[default: info]",
            "[default: 10000]",
            "[default: 8388608]",
            "[default: 16384]",
            "[default: 64]",
            "[default: 60]",
            "[default: 10]",
            "[default: 5000]",
            "[default: 500]",
            "[default: 0]",
            "[default: 1000000]",
            "[env: COREKV_TOKEN]",
        ] {
            assert!(
                text.contains(default),
                "{default} missing from help:\n{text}"
            );
        }
    }

    /// `COREKV_TOKEN` is read once per process, so this test runs itself
    /// again as a child process with the variable set (setting it here
    /// would race with the other tests).
    #[test]
    fn token_from_environment() {
        const MODE: &str = "COREKV_CLI_TEST_TOKEN_MODE";
        match std::env::var(MODE).as_deref() {
            Ok("set") => {
                assert_eq!(run(&[]).token.as_deref(), Some("from env"));
                assert_eq!(run(&["--token", "arg"]).token.as_deref(), Some("arg"));
                return;
            }
            Ok("empty") => {
                assert_eq!(run(&[]).token, None);
                return;
            }
            _ => {}
        }
        for (mode, value) in [("set", "from env"), ("empty", "")] {
            let out = std::process::Command::new(std::env::current_exe().expect("test binary"))
                .args([
                    "--exact",
                    "cli::tests::token_from_environment",
                    "--test-threads=1",
                ])
                .env(MODE, mode)
                .env(TOKEN_ENV, value)
                .output()
                .expect("run the test binary");
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success() && stdout.contains("1 passed"),
                "{mode}: {}\n{stdout}{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}
