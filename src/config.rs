//! `sharding.toml`: raw serde structures and their validation into a
//! [`ClusterConfig`].
//!
//! Pure: no I/O besides reading the one file in [`load`]. Invariants of a
//! validated config: at least one shard; `idx` values are exactly
//! `0..N-1` (shards are stored sorted by idx); names and addresses (primary
//! and replica) are unique; every address is `host:port` with a port in
//! 1..=65535.

use serde::Deserialize;
use std::fmt;
use std::path::{Path, PathBuf};
use toml::Spanned;

/// One shard as written in the file. The seed's format plus `replicas`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawShard {
    name: Spanned<String>,
    idx: Spanned<i64>,
    address: Spanned<String>,
    /// The seed's single replica.
    replica: Option<Spanned<String>>,
    /// Extension: several replicas for the shard.
    replicas: Option<Spanned<Vec<Spanned<String>>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    shards: Option<Spanned<Vec<Spanned<RawShard>>>>,
}

/// A validated shard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardConfig {
    pub name: String,
    pub idx: usize,
    pub address: String,
    pub replicas: Vec<String>,
}

/// A validated cluster description, shards sorted by `idx`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterConfig {
    pub shards: Vec<ShardConfig>,
}

/// A configuration problem, with the file and line it was found at.
#[derive(Debug)]
pub struct ConfigError {
    pub file: PathBuf,
    /// 1-based line, when the problem has a place in the file.
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{}: {}", self.file.display(), line, self.message),
            None => write!(f, "{}: {}", self.file.display(), self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

/// Reads and validates the config file at `path`.
///
/// # Errors
/// The file cannot be read, is not valid TOML of the expected shape, or
/// breaks one of the invariants in the module doc.
pub fn load(path: &Path) -> Result<ClusterConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: path.to_path_buf(),
        line: None,
        message: format!("cannot read config file: {e}"),
    })?;
    parse(path, &text)
}

/// Validates config `text` that came from `file` (used in messages only).
///
/// # Errors
/// As [`load`].
pub fn parse(file: &Path, text: &str) -> Result<ClusterConfig, ConfigError> {
    let err = |span: Option<std::ops::Range<usize>>, message: String| ConfigError {
        file: file.to_path_buf(),
        line: span.map(|s| line_of(text, s.start)),
        message,
    };
    let raw: RawFile = toml::from_str(text).map_err(|e| {
        let message = e.message().trim().to_string();
        err(e.span(), message)
    })?;
    let Some(shards) = raw.shards else {
        return Err(err(None, "no [[shards]] entries".into()));
    };
    let shards_span = shards.span();
    let shards = shards.into_inner();
    if shards.is_empty() {
        return Err(err(Some(shards_span), "no [[shards]] entries".into()));
    }
    let count = shards.len();
    let mut out: Vec<Option<ShardConfig>> = vec![None; count];
    let mut names: Vec<(String, usize)> = Vec::new();
    let mut addrs: Vec<(String, usize)> = Vec::new();
    let mut seen_addr = |a: &Spanned<String>| -> Result<String, ConfigError> {
        let value = a.get_ref().clone();
        check_address(&value).map_err(|m| err(Some(a.span()), m))?;
        let line = line_of(text, a.span().start);
        if let Some((_, first)) = addrs.iter().find(|(x, _)| *x == value) {
            return Err(err(
                Some(a.span()),
                format!("address {value:?} is already used on line {first}"),
            ));
        }
        addrs.push((value.clone(), line));
        Ok(value)
    };
    for shard in shards {
        let shard = shard.into_inner();
        let name = shard.name.get_ref().trim().to_string();
        if name.is_empty() || name.contains('/') {
            return Err(err(
                Some(shard.name.span()),
                "field `name` must be non-empty and contain no '/'".into(),
            ));
        }
        let name_line = line_of(text, shard.name.span().start);
        if let Some((_, first)) = names.iter().find(|(n, _)| *n == name) {
            return Err(err(
                Some(shard.name.span()),
                format!("shard name {name:?} is already used on line {first}"),
            ));
        }
        names.push((name.clone(), name_line));
        let idx = *shard.idx.get_ref();
        let idx = usize::try_from(idx)
            .ok()
            .filter(|i| *i < count)
            .ok_or_else(|| {
                err(
                    Some(shard.idx.span()),
                    format!(
                        "field `idx` is {idx}, but with {count} shards idx values must be exactly 0..{}",
                        count - 1
                    ),
                )
            })?;
        if out[idx].is_some() {
            return Err(err(
                Some(shard.idx.span()),
                format!("field `idx` = {idx} is used by two shards"),
            ));
        }
        let address = seen_addr(&shard.address)?;
        let mut replicas = Vec::new();
        if let Some(r) = &shard.replica {
            replicas.push(seen_addr(r)?);
        }
        if let Some(list) = &shard.replicas {
            for r in list.get_ref() {
                replicas.push(seen_addr(r)?);
            }
        }
        out[idx] = Some(ShardConfig {
            name,
            idx,
            address,
            replicas,
        });
    }
    // Every slot is filled: count entries, idx values unique and < count.
    let shards = out.into_iter().flatten().collect::<Vec<_>>();
    debug_assert_eq!(shards.len(), count);
    Ok(ClusterConfig { shards })
}

/// `host:port` with a non-empty host and a port in 1..=65535.
fn check_address(addr: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("address {addr:?} is not host:port ({why})"));
    let Some((host, port)) = addr.rsplit_once(':') else {
        return bad("missing ':port'");
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || host.contains(char::is_whitespace) || host.contains('/') {
        return bad("bad host");
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => bad("port must be 1..65535"),
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .split(|&b| b == b'\n')
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> Result<ClusterConfig, ConfigError> {
        parse(Path::new("sharding.toml"), text)
    }

    const SEED: &str = r#"
[[shards]]
name = "shard1"
idx = 0
address = "localhost:8080"
replica = "localhost:8083"

[[shards]]
name = "shard2"
idx = 1
address = "localhost:8081"
replica = "localhost:8084"
"#;

    #[test]
    fn seed_format_loads() {
        let cfg = p(SEED).expect("seed config");
        assert_eq!(cfg.shards.len(), 2);
        assert_eq!(cfg.shards[1].address, "localhost:8081");
        assert_eq!(cfg.shards[0].replicas, vec!["localhost:8083".to_string()]);
    }

    #[test]
    fn repo_sharding_toml_loads() {
        let cfg = load(Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/sharding.toml"
        )))
        .expect("repo sharding.toml");
        assert_eq!(cfg.shards.len(), 3);
    }

    #[test]
    fn shards_sorted_by_idx_and_replica_optional() {
        let cfg = p("[[shards]]\nname='b'\nidx=1\naddress='h:2'\n[[shards]]\nname='a'\nidx=0\naddress='h:1'\nreplicas=['h:3','h:4']\n")
            .expect("valid");
        assert_eq!(cfg.shards[0].name, "a");
        assert_eq!(cfg.shards[0].replicas.len(), 2);
        assert!(cfg.shards[1].replicas.is_empty());
    }

    fn expect_err(text: &str, line: Option<usize>, needle: &str) {
        let e = p(text).expect_err("must be rejected");
        assert_eq!(e.line, line, "{e}");
        assert!(
            e.to_string().contains(needle),
            "{e} should mention {needle}"
        );
        assert!(e.to_string().starts_with("sharding.toml"), "{e}");
    }

    #[test]
    fn rejects_duplicate_idx() {
        expect_err(
            "[[shards]]\nname='a'\nidx=0\naddress='h:1'\n[[shards]]\nname='b'\nidx=0\naddress='h:2'\n",
            Some(7),
            "idx",
        );
    }

    #[test]
    fn rejects_gap_in_idx() {
        expect_err(
            "[[shards]]\nname='a'\nidx=0\naddress='h:1'\n[[shards]]\nname='b'\nidx=2\naddress='h:2'\n",
            Some(7),
            "0..1",
        );
    }

    #[test]
    fn rejects_duplicate_name_and_address() {
        expect_err(
            "[[shards]]\nname='a'\nidx=0\naddress='h:1'\n[[shards]]\nname='a'\nidx=1\naddress='h:2'\n",
            Some(6),
            "already used on line 2",
        );
        expect_err(
            "[[shards]]\nname='a'\nidx=0\naddress='h:1'\nreplica='h:1'\n",
            Some(5),
            "already used",
        );
    }

    #[test]
    fn rejects_bad_address_and_types() {
        expect_err(
            "[[shards]]\nname='a'\nidx=0\naddress='nope'\n",
            Some(4),
            "host:port",
        );
        expect_err(
            "[[shards]]\nname='a'\nidx=0\naddress='h:0'\n",
            Some(4),
            "port",
        );
        expect_err(
            "[[shards]]\nname='a'\nidx='zero'\naddress='h:1'\n",
            Some(3),
            "",
        );
        expect_err(
            "[[shards]]\nname='a'\nidx=0\naddress='h:1'\ncolour=1\n",
            Some(5),
            "colour",
        );
        expect_err("[[shards]]\nname='a'\naddress='h:1'\n", Some(1), "idx");
        expect_err("", None, "no [[shards]]");
    }
}
