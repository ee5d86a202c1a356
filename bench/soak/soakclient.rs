//! soakclient: the load generator and checker of `bench/soak.sh`.
//!
//! A Cargo example of corekv (`cargo build --release --example soakclient`,
//! which `bench/soak.sh` runs): the standard library plus corekv's own key
//! placement (`topology::shard_for`) and form encoding
//! (`http::form::encode_into`). One OS thread per connection, blocking
//! HTTP/1.1 keep-alive, and EVERY response is checked against what the
//! client itself has written.
//!
//! Connections are spread round-robin over all ports: primaries first, then
//! replicas (3 shards: 6 ports). A connection on a primary port is a
//! *writer*: it owns the keys `k` with `k % writers == w` (a single writer
//! per key, so the value a key must hold is always known), writes them with
//! increasing versions (`v1`, `v2`, ...) and also reads any key. A
//! connection on a replica port only reads. Keys of every shard are used
//! everywhere, so requests are served locally, forwarded in-process by a
//! primary or by a replica, or read from a replica.
//!
//! The mix is kept at `--set-pct` SETs over all requests: a writer issues a
//! SET whenever SETs are below that share of all requests sent so far, and
//! reads the key back right after (only every other time while SETs are
//! below their share). If SETs are very slow the share can stay below.
//!
//! What a response must be (anything else is a mismatch or an error):
//! - SET: 200, body `OK` (trailing newline allowed), an `X-Seq` larger than
//!   the key's previous one, `X-Shard` the key's shard.
//! - GET of a key never written (`soak-never-*`): 404.
//! - GET of a written key: 200 and the body byte-for-byte equal to the value
//!   the client wrote for some version `v` (the value encodes `v`), with
//!   * own key (this connection is its writer): `v` == last acknowledged;
//!   * a primary (local or forwarded), or a replica with `min_seq` = the
//!     `X-Seq` of the last acknowledged write: `last acked at send <= v <=
//!     last acked at answer + 1` (+1: the writer may have a SET in flight);
//!   * a replica without `min_seq` (may be stale): `1 <= v <= acked + 1`
//!     and never older than what this connection saw before on that
//!     replica (replicas apply in order).
//!
//!   `X-Version` must be the `X-Seq` of the write that stored `v` (when
//!   known), `X-Shard` the key's shard (FNV-1 64 % shards), `X-Served-By` a
//!   replica exactly when a replica port was asked for a key of its shard.
//! - errors: connect/read/write failures, timeouts, closed connections and
//!   any status other than the expected 200/404 (403, 5xx, 504 "`min_seq` not
//!   reached", ...).
//!
//! Phases: preload (every written key gets v1), replicas catch up (`min_seq`),
//! LOAD for `--seconds`, then a final check: every key read from its primary
//! and its replica (`min_seq`) must hold exactly the last acknowledged value.
//!
//! Output (stdout): `START`, one `INTERVAL k=v ...` line per `--interval`
//! (requests, latency, errors, server RSS / CPU / data dir / replica lag),
//! `CLASS ...` lines (per request kind), `EXAMPLE ...` lines (first
//! problems, verbatim) and a final `SUMMARY k=v ...` line. Exit status 0
//! only when there was no error and no mismatch.

#![allow(
    clippy::cast_possible_truncation, // random numbers cut to indices, elapsed times to u64 (centuries fit), on purpose
    clippy::cast_sign_loss, // percentiles and rounded timings are non-negative f64
    clippy::too_many_lines, // a scenario reads top to bottom
)]

use corekv::http::form::encode_into;
use corekv::topology::{fnv1_64, shard_for};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

// ------------------------------------------------------------------ config

struct Cfg {
    primaries: Vec<String>,
    replicas: Vec<String>,
    conns: usize,
    seconds: u64,
    keys: usize,
    never: usize,
    set_pct: u64,
    interval: u64,
    warmup: u64,
    timeout_s: u64,
    pid: u32,
    data_dir: String,
    disk_dev: String,
    examples: usize,
}

fn parse_args() -> Cfg {
    let mut c = Cfg {
        primaries: vec![],
        replicas: vec![],
        conns: 256,
        seconds: 300,
        keys: 30000,
        never: 3000,
        set_pct: 10,
        interval: 10,
        warmup: 60,
        timeout_s: 15,
        pid: 0,
        data_dir: String::new(),
        disk_dev: String::new(),
        examples: 40,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let v = args.get(i + 1).cloned().unwrap_or_default();
        let list = |s: &str| {
            s.split(',')
                .filter(|x| !x.is_empty())
                .map(String::from)
                .collect()
        };
        match args[i].as_str() {
            "--primaries" => c.primaries = list(&v),
            "--replicas" => c.replicas = list(&v),
            "--conns" => c.conns = v.parse().expect("--conns"),
            "--seconds" => c.seconds = v.parse().expect("--seconds"),
            "--keys" => c.keys = v.parse().expect("--keys"),
            "--never" => c.never = v.parse().expect("--never"),
            "--set-pct" => c.set_pct = v.parse().expect("--set-pct"),
            "--interval" => c.interval = v.parse().expect("--interval"),
            "--warmup" => c.warmup = v.parse().expect("--warmup"),
            "--timeout" => c.timeout_s = v.parse().expect("--timeout"),
            "--pid" => c.pid = v.parse().expect("--pid"),
            "--data-dir" => c.data_dir = v,
            "--disk-dev" => c.disk_dev = v,
            "--examples" => c.examples = v.parse().expect("--examples"),
            other => {
                eprintln!("soakclient: unknown argument {other}");
                std::process::exit(2);
            }
        }
        i += 2;
    }
    if c.primaries.is_empty() || c.replicas.len() != c.primaries.len() {
        eprintln!("soakclient: need --primaries A,B,C and as many --replicas (shard order)");
        std::process::exit(2);
    }
    c
}

// ------------------------------------------------------------ keys, values

fn mix(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

/// Written keys: mostly `soak-N`; every 7th has a space, a slash, UTF-8
/// and form metacharacters, so percent-decoding is exercised too.
fn key_name(k: usize) -> Vec<u8> {
    if k % 7 == 3 {
        format!("soak {k}/\u{fc}&=+%").into_bytes()
    } else {
        format!("soak-{k}").into_bytes()
    }
}

fn never_name(k: usize) -> Vec<u8> {
    if k % 5 == 1 {
        format!("soak-never {k}+&").into_bytes()
    } else {
        format!("soak-never-{k}").into_bytes()
    }
}

const FILL: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 &=+%/?#-_.~";

/// The value of key number `k` at version `v`: `v<v>|<key>|<filler>`, the
/// filler (8..64 bytes) derived from (k, v). Deterministic: any reader can
/// tell which version a body claims to be and whether it is exactly that.
fn value_of(key: &[u8], k: usize, v: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(96);
    out.extend_from_slice(format!("v{v}|").as_bytes());
    out.extend_from_slice(key);
    out.push(b'|');
    let mut x = mix(((k as u64) << 32) ^ v ^ 0x5eed);
    let len = 8 + (x % 57) as usize;
    for _ in 0..len {
        x = mix(x);
        out.push(FILL[(x % FILL.len() as u64) as usize]);
    }
    out
}

/// The version a body claims (`v<digits>|...`).
fn claimed_version(body: &[u8]) -> Option<u64> {
    let rest = body.strip_prefix(b"v")?;
    let end = rest.iter().position(|&b| b == b'|')?;
    std::str::from_utf8(&rest[..end]).ok()?.parse().ok()
}

fn show(b: &[u8]) -> String {
    let s = String::from_utf8_lossy(&b[..b.len().min(120)]).into_owned();
    format!("{s:?}{}", if b.len() > 120 { "..." } else { "" })
}

// --------------------------------------------------------------- histogram

const NB: usize = 768;

fn bucket(us: u64) -> usize {
    if us < 64 {
        return us as usize;
    }
    let b = 63 - us.leading_zeros() as usize; // >= 6
    (64 + (b - 6) * 32 + ((us >> (b - 5)) & 31) as usize).min(NB - 1)
}

fn bucket_mid(i: usize) -> f64 {
    if i < 64 {
        return i as f64;
    }
    let b = 6 + (i - 64) / 32;
    let m = ((i - 64) % 32) as u64;
    let lo = (32 + m) << (b - 5);
    let hi = (33 + m) << (b - 5);
    (lo + hi) as f64 / 2.0
}

#[derive(Clone)]
struct Hist {
    c: Vec<u64>,
    n: u64,
    max: u64,
    sum: u64,
}

impl Hist {
    fn new() -> Self {
        Self {
            c: vec![0; NB],
            n: 0,
            max: 0,
            sum: 0,
        }
    }
    fn add(&mut self, us: u64) {
        self.c[bucket(us)] += 1;
        self.n += 1;
        self.sum += us;
        self.max = self.max.max(us);
    }
    fn merge(&mut self, o: &Hist) {
        for (a, b) in self.c.iter_mut().zip(&o.c) {
            *a += b;
        }
        self.n += o.n;
        self.sum += o.sum;
        self.max = self.max.max(o.max);
    }
    fn pct(&self, p: f64) -> f64 {
        if self.n == 0 {
            return 0.0;
        }
        let target = ((p / 100.0) * self.n as f64).ceil().max(1.0) as u64;
        let mut acc = 0;
        for (i, &c) in self.c.iter().enumerate() {
            acc += c;
            if acc >= target {
                return bucket_mid(i).min(self.max as f64);
            }
        }
        self.max as f64
    }
}

// ------------------------------------------------------------------- stats

const CLASSES: [&str; 8] = [
    "GET on a primary, own shard",
    "GET forwarded by a primary",
    "GET on a replica (stale allowed)",
    "GET on a replica with min_seq",
    "GET forwarded by a replica",
    "SET on the owner primary",
    "SET forwarded by a primary",
    "GET of a never-written key (404)",
];
const C_GET_LOCAL: usize = 0;
const C_GET_FWD: usize = 1;
const C_GET_REPLICA: usize = 2;
const C_GET_REPLICA_MIN: usize = 3;
const C_GET_REPLICA_FWD: usize = 4;
const C_SET_LOCAL: usize = 5;
const C_SET_FWD: usize = 6;
const C_NEVER: usize = 7;

struct Stats {
    class: Vec<Hist>,
    interval: Hist,
    i_gets: u64,
    i_sets: u64,
    i_errors: u64,
    i_mismatches: u64,
    /// SETs answered in this interval and the slowest, by the key's shard.
    i_set_n: Vec<u64>,
    i_set_max: Vec<u64>,
    errors: u64,
    mismatches: u64,
    max_stale: u64,
    stale_reads: u64,
}

impl Stats {
    fn new() -> Self {
        Self {
            class: vec![Hist::new(); CLASSES.len()],
            interval: Hist::new(),
            i_gets: 0,
            i_sets: 0,
            i_errors: 0,
            i_mismatches: 0,
            i_set_n: vec![0; 8],
            i_set_max: vec![0; 8],
            errors: 0,
            mismatches: 0,
            max_stale: 0,
            stale_reads: 0,
        }
    }
}

struct Shared {
    cfg: Cfg,
    nshards: usize,
    names: Vec<Vec<u8>>,
    never: Vec<Vec<u8>>,
    shard_of: Vec<usize>,
    never_shard: Vec<usize>,
    /// Written keys by shard, and the hot subset (first 1% of keys).
    by_shard: Vec<Vec<usize>>,
    hot_by_shard: Vec<Vec<usize>>,
    hot: Vec<usize>,
    /// Last acknowledged write per key: version << 40 | X-Seq.
    state: Vec<AtomicU64>,
    /// A SET of this key got no answer (it may or may not have landed).
    unsure: Vec<AtomicBool>,
    /// The acked version was retried after an unanswered SET: it may also
    /// be stored under the lost write's seq, which lies between `floor`
    /// (the seq acked before the lost write) and the acked seq.
    twice: Vec<AtomicBool>,
    floor: Vec<AtomicU64>,
    total: AtomicU64,
    sets: AtomicU64,
    stop: AtomicBool,
    /// Per connection, the request in flight (see `inflight_word`), 0 if none.
    inflight: Vec<AtomicU64>,
    t_begin: Instant,
    stats: Vec<Mutex<Stats>>,
    kinds: Mutex<BTreeMap<String, u64>>,
    examples: Mutex<Vec<String>>,
    phase: Mutex<&'static str>,
}

/// What a connection has in flight: start (ms since the client began) << 16
/// | `is_set` << 12 | key shard << 4 | port index, plus 1 << 63 so it is not 0.
fn inflight_word(sh: &Shared, is_set: bool, key_shard: usize, port: usize) -> u64 {
    let ms = sh.t_begin.elapsed().as_millis() as u64;
    (1 << 63)
        | (ms << 16)
        | (u64::from(is_set) << 12)
        | ((key_shard as u64 & 0xff) << 4)
        | (port as u64 & 15)
}

const SEQ_BITS: u32 = 40;
const SEQ_MASK: u64 = (1 << SEQ_BITS) - 1;

fn unpack(x: u64) -> (u64, u64) {
    (x >> SEQ_BITS, x & SEQ_MASK)
}

impl Shared {
    fn problem(&self, tid: usize, is_error: bool, kind: &str, detail: impl std::fmt::Display) {
        {
            let mut st = self.stats[tid].lock().unwrap();
            if is_error {
                st.errors += 1;
                st.i_errors += 1;
            } else {
                st.mismatches += 1;
                st.i_mismatches += 1;
            }
        }
        let phase = *self.phase.lock().unwrap();
        let label = format!(
            "{} {phase}: {kind}",
            if is_error { "error" } else { "mismatch" }
        );
        let n = {
            let mut kinds = self.kinds.lock().unwrap();
            let n = kinds.entry(label.clone()).or_insert(0);
            *n += 1;
            *n
        };
        // The first few of each kind, and at most cfg.examples in all.
        let mut ex = self.examples.lock().unwrap();
        if n <= 5 && ex.len() < self.cfg.examples {
            ex.push(format!("{label}: {detail}"));
        }
    }
}

// -------------------------------------------------------------------- http

struct Resp {
    status: u16,
    body: Vec<u8>,
    x_seq: Option<u64>,
    x_version: Option<u64>,
    x_shard: Option<u64>,
    served_by: String,
}

struct Conn {
    addr: String,
    timeout: Duration,
    r: Option<BufReader<TcpStream>>,
    line: Vec<u8>,
}

impl Conn {
    fn new(addr: &str, timeout: Duration) -> Self {
        Self {
            addr: addr.to_string(),
            timeout,
            r: None,
            line: Vec::with_capacity(256),
        }
    }

    fn connect(&mut self) -> Result<(), String> {
        let sa = self
            .addr
            .to_socket_addrs()
            .map_err(|e| format!("resolve: {e}"))?
            .next()
            .ok_or("resolve: no address")?;
        let s = TcpStream::connect_timeout(&sa, Duration::from_secs(5))
            .map_err(|e| format!("connect: {e}"))?;
        s.set_nodelay(true).ok();
        s.set_read_timeout(Some(self.timeout)).ok();
        s.set_write_timeout(Some(self.timeout)).ok();
        self.r = Some(BufReader::with_capacity(16 * 1024, s));
        Ok(())
    }

    /// Sends one request and reads its answer; on any failure the
    /// connection is dropped (the next call reconnects).
    fn call(&mut self, req: &[u8]) -> Result<Resp, String> {
        let res = self.call_inner(req);
        if res.is_err() {
            self.r = None;
        }
        res
    }

    fn call_inner(&mut self, req: &[u8]) -> Result<Resp, String> {
        if self.r.is_none() {
            self.connect()?;
        }
        let r = self.r.as_mut().unwrap();
        r.get_mut()
            .write_all(req)
            .map_err(|e| format!("write: {e}"))?;
        let mut first = true;
        let mut resp = Resp {
            status: 0,
            body: Vec::new(),
            x_seq: None,
            x_version: None,
            x_shard: None,
            served_by: String::new(),
        };
        let mut len: Option<usize> = None;
        let mut close = false;
        loop {
            self.line.clear();
            let n = r.read_until(b'\n', &mut self.line).map_err(|e| {
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) {
                    "timeout: no answer".to_string()
                } else {
                    format!("read: {e}")
                }
            })?;
            if n == 0 {
                return Err(if first {
                    "server closed the connection before answering".into()
                } else {
                    "eof in headers".into()
                });
            }
            let line = self
                .line
                .strip_suffix(b"\r\n")
                .or_else(|| self.line.strip_suffix(b"\n"))
                .unwrap_or(&self.line);
            if first {
                first = false;
                let s = String::from_utf8_lossy(line);
                let mut it = s.split(' ');
                let proto = it.next().unwrap_or("");
                if !proto.starts_with("HTTP/1.") {
                    return Err(format!("bad status line {}", show(line)));
                }
                resp.status = it
                    .next()
                    .and_then(|c| c.parse().ok())
                    .ok_or_else(|| format!("bad status line {}", show(line)))?;
                continue;
            }
            if line.is_empty() {
                break;
            }
            let Some(colon) = line.iter().position(|&b| b == b':') else {
                return Err(format!("bad header line {}", show(line)));
            };
            let name = String::from_utf8_lossy(&line[..colon]).to_ascii_lowercase();
            let value = String::from_utf8_lossy(&line[colon + 1..])
                .trim()
                .to_string();
            match name.as_str() {
                "content-length" => {
                    len = Some(
                        value
                            .parse()
                            .map_err(|_| format!("bad content-length {value:?}"))?,
                    );
                }
                "x-seq" => resp.x_seq = value.parse().ok(),
                "x-version" => resp.x_version = value.parse().ok(),
                "x-shard" => resp.x_shard = value.parse().ok(),
                "x-served-by" => resp.served_by = value,
                "connection" => close = value.eq_ignore_ascii_case("close"),
                "transfer-encoding" => {
                    return Err(format!("unexpected transfer-encoding {value:?}"));
                }
                _ => {}
            }
        }
        let len = len.ok_or("answer without content-length")?;
        resp.body.resize(len, 0);
        r.read_exact(&mut resp.body)
            .map_err(|e| format!("read body: {e}"))?;
        if close {
            self.r = None;
        }
        Ok(resp)
    }
}

fn get_request(host: &str, key: &[u8], min_seq: u64, post: bool) -> Vec<u8> {
    let mut params = b"key=".to_vec();
    encode_into(key, &mut params);
    if min_seq > 0 {
        params.extend_from_slice(format!("&min_seq={min_seq}&wait_ms=2000").as_bytes());
    }
    build(host, "/get", &params, post)
}

fn set_request(host: &str, key: &[u8], value: &[u8], post: bool) -> Vec<u8> {
    let mut params = b"key=".to_vec();
    encode_into(key, &mut params);
    params.extend_from_slice(b"&value=");
    encode_into(value, &mut params);
    build(host, "/set", &params, post)
}

fn build(host: &str, path: &str, params: &[u8], post: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(160 + params.len());
    if post {
        out.extend_from_slice(format!("POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n", params.len()).as_bytes());
        out.extend_from_slice(params);
    } else {
        out.extend_from_slice(format!("GET {path}?").as_bytes());
        out.extend_from_slice(params);
        out.extend_from_slice(format!(" HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes());
    }
    out
}

// ----------------------------------------------------------------- workers

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pct(&mut self, p: u64) -> bool {
        self.next() % 100 < p
    }
}

struct Worker {
    sh: Arc<Shared>,
    tid: usize,
    /// Shard whose primary or replica this connection talks to.
    shard: usize,
    /// Index of its port: primaries 0..shards, then replicas.
    port: usize,
    replica: bool,
    writer: Option<usize>,
    own: Vec<usize>,
    own_hot: Vec<usize>,
    conn: Conn,
    rng: Rng,
    /// Replica connections: newest version seen per key (monotonic reads).
    seen: Vec<u32>,
    /// Writers: the key just written, read back by the next request.
    read_back: Option<usize>,
}

enum Check {
    Ok,
    Mismatch(&'static str, String),
}

impl Worker {
    fn host(&self) -> String {
        self.conn.addr.clone()
    }

    /// One SET of key `k` with the next version; records the ack.
    fn set(&mut self, k: usize, measure: bool) {
        let sh = self.sh.clone();
        let (v0, seq0) = unpack(sh.state[k].load(Ordering::Acquire));
        let v = v0 + 1;
        let value = value_of(&sh.names[k], k, v);
        let post = self.rng.pct(25);
        let req = set_request(&self.host(), &sh.names[k], &value, post);
        sh.inflight[self.tid].store(
            inflight_word(&sh, true, sh.shard_of[k], self.port),
            Ordering::Relaxed,
        );
        let t0 = Instant::now();
        let res = self.conn.call(&req);
        let us = t0.elapsed().as_micros() as u64;
        sh.inflight[self.tid].store(0, Ordering::Relaxed);
        let class = if sh.shard_of[k] == self.shard {
            C_SET_LOCAL
        } else {
            C_SET_FWD
        };
        if measure {
            let mut st = sh.stats[self.tid].lock().unwrap();
            st.class[class].add(us);
            st.interval.add(us);
            st.i_sets += 1;
            let ks = sh.shard_of[k].min(7);
            st.i_set_n[ks] += 1;
            st.i_set_max[ks] = st.i_set_max[ks].max(us);
        }
        let what = || {
            format!(
                "SET {} v{v} via {}{}",
                show(&sh.names[k]),
                self.conn.addr,
                if post { " (POST)" } else { "" }
            )
        };
        match res {
            Err(e) => {
                if !sh.unsure[k].swap(true, Ordering::AcqRel) {
                    sh.floor[k].store(seq0, Ordering::Release);
                }
                sh.problem(
                    self.tid,
                    true,
                    if e.starts_with("timeout") {
                        "SET timeout"
                    } else {
                        "SET connection error"
                    },
                    format!("{}: {e}", what()),
                );
            }
            Ok(r) if r.status != 200 => {
                // Not acknowledged; whether it landed is unknown for 5xx.
                if !sh.unsure[k].swap(true, Ordering::AcqRel) {
                    sh.floor[k].store(seq0, Ordering::Release);
                }
                sh.problem(
                    self.tid,
                    true,
                    &format!("SET status {}", r.status),
                    format!("{}: {} {}", what(), r.status, show(&r.body)),
                );
            }
            Ok(r) => {
                let Some(seq) = r.x_seq else {
                    sh.problem(self.tid, false, "SET 200 without X-Seq", what());
                    return;
                };
                if r.body.trim_ascii_end() != b"OK" {
                    sh.problem(
                        self.tid,
                        false,
                        "SET 200 body is not OK",
                        format!("{}: {}", what(), show(&r.body)),
                    );
                }
                if seq <= seq0 || seq > SEQ_MASK {
                    sh.problem(
                        self.tid,
                        false,
                        "SET X-Seq not above the key's previous write",
                        format!("{}: X-Seq {seq}, previous {seq0}", what()),
                    );
                }
                if r.x_shard != Some(sh.shard_of[k] as u64) {
                    sh.problem(
                        self.tid,
                        false,
                        "wrong X-Shard",
                        format!(
                            "{}: X-Shard {:?}, want {}",
                            what(),
                            r.x_shard,
                            sh.shard_of[k]
                        ),
                    );
                }
                let was_unsure = sh.unsure[k].load(Ordering::Acquire);
                sh.twice[k].store(was_unsure, Ordering::Release);
                sh.state[k].store((v << SEQ_BITS) | (seq & SEQ_MASK), Ordering::Release);
                sh.unsure[k].store(false, Ordering::Release);
            }
        }
    }

    /// One GET of written key `k` (or never-written key `n` when `never`).
    fn get(&mut self, k: usize, never: bool, use_min_seq: bool) {
        let sh = self.sh.clone();
        let name = if never { &sh.never[k] } else { &sh.names[k] };
        let kshard = if never {
            sh.never_shard[k]
        } else {
            sh.shard_of[k]
        };
        let local = kshard == self.shard;
        let at_replica = self.replica && local;
        let (v0, seq0) = if never {
            (0, 0)
        } else {
            unpack(sh.state[k].load(Ordering::Acquire))
        };
        let min_seq = if at_replica && use_min_seq { seq0 } else { 0 };
        let post = self.rng.pct(10);
        let req = get_request(&self.host(), name, min_seq, post);
        sh.inflight[self.tid].store(
            inflight_word(&sh, false, kshard, self.port),
            Ordering::Relaxed,
        );
        let t0 = Instant::now();
        let res = self.conn.call(&req);
        let us = t0.elapsed().as_micros() as u64;
        sh.inflight[self.tid].store(0, Ordering::Relaxed);
        let class = if never {
            C_NEVER
        } else if at_replica {
            if min_seq > 0 {
                C_GET_REPLICA_MIN
            } else {
                C_GET_REPLICA
            }
        } else if local {
            C_GET_LOCAL
        } else if self.replica {
            C_GET_REPLICA_FWD
        } else {
            C_GET_FWD
        };
        {
            let mut st = sh.stats[self.tid].lock().unwrap();
            st.class[class].add(us);
            st.interval.add(us);
            st.i_gets += 1;
        }
        let addr = self.conn.addr.clone();
        let what = || {
            format!(
                "GET {} via {addr}{}{} (acked v{v0} seq {seq0} when sent)",
                show(name),
                if min_seq > 0 {
                    format!(" min_seq={min_seq}")
                } else {
                    String::new()
                },
                if post { " (POST)" } else { "" }
            )
        };
        let r = match res {
            Err(e) => {
                sh.problem(
                    self.tid,
                    true,
                    if e.starts_with("timeout") {
                        "GET timeout"
                    } else {
                        "GET connection error"
                    },
                    format!("{}: {e}", what()),
                );
                return;
            }
            Ok(r) => r,
        };
        if r.status != 200 && r.status != 404 {
            sh.problem(
                self.tid,
                true,
                &format!("GET status {}", r.status),
                format!("{}: {} {}", what(), r.status, show(&r.body)),
            );
            return;
        }
        let (v1, seq1) = if never {
            (0, 0)
        } else {
            unpack(sh.state[k].load(Ordering::Acquire))
        };
        let check = self.check_get(k, never, at_replica, min_seq, v0, seq0, v1, seq1, &r);
        if r.x_shard != Some(kshard as u64) {
            sh.problem(
                self.tid,
                false,
                "wrong X-Shard",
                format!("{}: X-Shard {:?}, want {kshard}", what(), r.x_shard),
            );
        }
        let want_role = if at_replica { "/replica" } else { "/primary" };
        if !r.served_by.ends_with(want_role) {
            sh.problem(
                self.tid,
                false,
                "wrong X-Served-By",
                format!(
                    "{}: X-Served-By {:?}, want *{want_role}",
                    what(),
                    r.served_by
                ),
            );
        }
        if let Check::Mismatch(kind, detail) = check {
            sh.problem(
                self.tid,
                false,
                kind,
                format!(
                    "{}: {detail}; got {} {} X-Version {:?}, acked v{v1} seq {seq1} when answered",
                    what(),
                    r.status,
                    show(&r.body),
                    r.x_version
                ),
            );
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn check_get(
        &mut self,
        k: usize,
        never: bool,
        at_replica: bool,
        min_seq: u64,
        v0: u64,
        seq0: u64,
        v1: u64,
        seq1: u64,
        r: &Resp,
    ) -> Check {
        let sh = self.sh.clone();
        if never {
            return if r.status == 404 {
                Check::Ok
            } else {
                Check::Mismatch("200 for a key never written", String::new())
            };
        }
        if r.status == 404 {
            return Check::Mismatch("404 for a written key", String::new());
        }
        let Some(v) = claimed_version(&r.body) else {
            return Check::Mismatch("body is not a value this client wrote", String::new());
        };
        if r.body != value_of(&sh.names[k], k, v) {
            return Check::Mismatch(
                "body differs from the value written for its version",
                format!("want {}", show(&value_of(&sh.names[k], k, v))),
            );
        }
        let own = self.writer.is_some() && self.own.binary_search(&k).is_ok();
        let hi = if own && !sh.unsure[k].load(Ordering::Acquire) {
            v1
        } else {
            v1 + 1
        };
        if at_replica {
            // A replica applies in order: never older than what this
            // connection read there before.
            let seen = u64::from(self.seen[k]);
            if v < seen {
                return Check::Mismatch(
                    "replica went back in time",
                    format!("this connection saw v{seen} there before"),
                );
            }
            self.seen[k] = v as u32;
        }
        let lo = if at_replica && min_seq == 0 {
            // Stale reads are allowed on a replica without min_seq.
            if v < v0 {
                let mut st = sh.stats[self.tid].lock().unwrap();
                st.stale_reads += 1;
                st.max_stale = st.max_stale.max(v0 - v);
            }
            1
        } else {
            v0
        };
        if v < lo {
            let why = if own {
                "read-your-writes violated (own key older than acked)"
            } else if min_seq > 0 {
                "replica answered min_seq with an older value"
            } else {
                "stale read on a primary"
            };
            return Check::Mismatch(why, format!("want v{lo}..v{hi}"));
        }
        if v > hi {
            return Check::Mismatch(
                "value newer than any write sent",
                format!("want v{lo}..v{hi}"),
            );
        }
        let Some(x) = r.x_version else {
            return Check::Mismatch("200 without X-Version", String::new());
        };
        let want = if v == v1 {
            Some(seq1)
        } else if v == v0 {
            Some(seq0)
        } else {
            None
        };
        // After an unanswered SET the same version may have been stored
        // twice (the lost write, then its retry): either seq is right.
        let twice = sh.twice[k].load(Ordering::Acquire) || sh.unsure[k].load(Ordering::Acquire);
        let floor = sh.floor[k].load(Ordering::Acquire);
        match want {
            Some(w) if w != x && !(twice && x > floor && x <= w) => Check::Mismatch(
                "X-Version is not the X-Seq of that write",
                format!("X-Version {x}, want {w}"),
            ),
            None if v > v1 && x <= seq1 => Check::Mismatch(
                "X-Version of an unacknowledged write not above the acked seq",
                format!("X-Version {x}"),
            ),
            _ => Check::Ok,
        }
    }

    fn run_load(&mut self, deadline: Instant) {
        let sh = self.sh.clone();
        let nkeys = sh.names.len();
        // 20% of the picks go to the hot keys (the first 1%), so that reads
        // often meet a write of the same key in flight.
        let pick = |rng: &mut Rng, pool: Option<&[usize]>, hot: &[usize]| -> usize {
            if !hot.is_empty() && rng.pct(20) {
                hot[rng.below(hot.len())]
            } else {
                match pool {
                    Some(p) => p[rng.below(p.len())],
                    None => rng.below(nkeys),
                }
            }
        };
        while Instant::now() < deadline && !sh.stop.load(Ordering::Relaxed) {
            let total = sh.total.fetch_add(1, Ordering::Relaxed) + 1;
            let behind = sh.sets.load(Ordering::Relaxed) * 100 < sh.cfg.set_pct * total;
            if let Some(k) = self.read_back.take() {
                // Read-your-writes: the key this connection just wrote
                // (every time while SETs keep their share, else every
                // other time, so slow SETs do not push the share down).
                if !behind || self.rng.pct(50) {
                    self.get(k, false, false);
                    continue;
                }
            }
            if self.writer.is_some() && !self.own.is_empty() && behind {
                sh.sets.fetch_add(1, Ordering::Relaxed);
                let k = pick(&mut self.rng, Some(&self.own), &self.own_hot);
                self.set(k, true);
                self.read_back = Some(k);
                continue;
            }
            if sh.cfg.never > 0 && self.rng.pct(5) {
                let n = self.rng.below(sh.never.len());
                self.get(n, true, false);
                continue;
            }
            let k = if self.writer.is_some() {
                if !self.own.is_empty() && self.rng.pct(25) {
                    self.own[self.rng.below(self.own.len())]
                } else {
                    pick(&mut self.rng, None, &sh.hot)
                }
            } else if self.rng.pct(80) {
                // A replica connection reads mostly its own shard's keys.
                pick(
                    &mut self.rng,
                    Some(&sh.by_shard[self.shard]),
                    &sh.hot_by_shard[self.shard],
                )
            } else {
                pick(&mut self.rng, None, &sh.hot)
            };
            let min = self.rng.pct(50);
            self.get(k, false, min);
        }
    }
}

// -------------------------------------------------------------- monitoring

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn cpu_ticks(pid: u32) -> u64 {
    let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    let Some(i) = s.rfind(") ") else { return 0 };
    let f: Vec<&str> = s[i + 2..].split_whitespace().collect();
    f.get(11).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0)
}

fn dir_bytes(path: &str) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    if let Ok(rd) = std::fs::read_dir(path) {
        for e in rd.flatten() {
            if let Ok(m) = e.metadata() {
                if m.is_dir() {
                    total += dir_bytes(&e.path().to_string_lossy());
                } else {
                    total += m.blocks() * 512;
                }
            }
        }
    }
    total
}

/// (I/O busy ms, flushes completed) of a block device from /proc/diskstats.
fn disk_stats(dev: &str) -> (u64, u64) {
    if dev.is_empty() {
        return (0, 0);
    }
    let Ok(s) = std::fs::read_to_string("/proc/diskstats") else {
        return (0, 0);
    };
    for l in s.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.get(2) == Some(&dev) {
            let n = |i: usize| f.get(i).and_then(|x| x.parse().ok()).unwrap_or(0);
            return (n(12), n(18));
        }
    }
    (0, 0)
}

/// Per node of /status: "name:commits:seq" (seq = committed or applied).
fn status_nodes(addr: &str) -> String {
    let mut c = Conn::new(addr, Duration::from_secs(3));
    let req = format!("GET /status HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    let Ok(r) = c.call(req.as_bytes()) else {
        return "?".into();
    };
    let body = String::from_utf8_lossy(&r.body);
    let num = |obj: &str, field: &str| -> String {
        obj.find(field).map_or_else(
            || "?".into(),
            |i| {
                let rest = &obj[i + field.len()..];
                rest[..rest
                    .find(|c: char| !c.is_ascii_digit())
                    .unwrap_or(rest.len())]
                    .to_string()
            },
        )
    };
    body.split("{\"name\":\"")
        .skip(1)
        .map(|obj| {
            let name = obj.split('"').next().unwrap_or("?");
            let seq = if obj.contains("\"committed_seq\":") {
                num(obj, "\"committed_seq\":")
            } else {
                num(obj, "\"applied_seq\":")
            };
            format!("{name}:{}:{seq}", num(obj, "\"commits\":"))
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Largest replica lag (entries) and total open connections from /status.
fn server_status(addr: &str) -> (i64, i64) {
    let mut c = Conn::new(addr, Duration::from_secs(3));
    // Keep-alive, then dropped here: the client closes first, so no
    // TIME_WAIT is left on the server's port (see bench/README.md).
    let req = format!("GET /status HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    let Ok(r) = c.call(req.as_bytes()) else {
        return (-1, -1);
    };
    let body = String::from_utf8_lossy(&r.body);
    let grab = |field: &str| -> Vec<i64> {
        body.match_indices(field)
            .filter_map(|(i, _)| {
                let rest = &body[i + field.len()..];
                let end = rest
                    .find(|c: char| !c.is_ascii_digit())
                    .unwrap_or(rest.len());
                rest[..end].parse().ok()
            })
            .collect()
    };
    let lag = grab("\"lag\":").into_iter().max().unwrap_or(-1);
    let conns: i64 = grab("\"open_connections\":").into_iter().sum();
    (lag, conns)
}

/// (server RSS KiB, data dir bytes on disk, server CPU ticks).
fn sample_line(sh: &Shared, _clk: f64) -> (u64, u64, u64) {
    (
        rss_kib(sh.cfg.pid),
        dir_bytes(&sh.cfg.data_dir),
        cpu_ticks(sh.cfg.pid),
    )
}

// -------------------------------------------------------------------- main

/// `soakclient place --shards N`: for every key read from stdin (one per
/// line), prints `shard<TAB>fnv1_64 in hex`, with corekv's own placement;
/// bench/keys.py uses it instead of a copy of the hash.
fn place(args: &[String]) {
    let shards: usize = match args {
        [flag, n] if flag == "--shards" => n.parse().unwrap_or(0),
        _ => 0,
    };
    if shards == 0 {
        eprintln!("usage: soakclient place --shards N < keys");
        std::process::exit(2);
    }
    let stdin = std::io::stdin();
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for line in stdin.lock().split(b'\n') {
        let Ok(key) = line else { std::process::exit(1) };
        let _ = writeln!(out, "{}\t{:#018x}", shard_for(&key, shards), fnv1_64(&key));
    }
}

fn main() {
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some("place") {
        place(&argv[2..]);
        return;
    }
    let cfg = parse_args();
    let nshards = cfg.primaries.len();
    let timeout = Duration::from_secs(cfg.timeout_s);
    let names: Vec<Vec<u8>> = (0..cfg.keys).map(key_name).collect();
    let never: Vec<Vec<u8>> = (0..cfg.never).map(never_name).collect();
    let shard_of: Vec<usize> = names.iter().map(|k| shard_for(k, nshards)).collect();
    let never_shard: Vec<usize> = never.iter().map(|k| shard_for(k, nshards)).collect();
    let nhot = (cfg.keys / 100).max(1);
    let mut by_shard = vec![Vec::new(); nshards];
    let mut hot_by_shard = vec![Vec::new(); nshards];
    for (k, &s) in shard_of.iter().enumerate() {
        by_shard[s].push(k);
        if k < nhot {
            hot_by_shard[s].push(k);
        }
    }
    // Connection i talks to port i % (2 * shards): primaries, then replicas.
    let nports = 2 * nshards;
    let writers: Vec<usize> = (0..cfg.conns).filter(|i| i % nports < nshards).collect();
    let nwriters = writers.len();
    if cfg.conns < nports {
        eprintln!("soakclient: need at least {nports} connections (one per port)");
        std::process::exit(2);
    }
    let conns = cfg.conns;
    let sh = Arc::new(Shared {
        nshards,
        state: (0..cfg.keys).map(|_| AtomicU64::new(0)).collect(),
        unsure: (0..cfg.keys).map(|_| AtomicBool::new(false)).collect(),
        twice: (0..cfg.keys).map(|_| AtomicBool::new(false)).collect(),
        floor: (0..cfg.keys).map(|_| AtomicU64::new(0)).collect(),
        names,
        never,
        shard_of,
        never_shard,
        by_shard,
        hot_by_shard,
        hot: (0..nhot).collect(),
        total: AtomicU64::new(0),
        sets: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        inflight: (0..conns).map(|_| AtomicU64::new(0)).collect(),
        t_begin: Instant::now(),
        stats: (0..conns).map(|_| Mutex::new(Stats::new())).collect(),
        kinds: Mutex::new(BTreeMap::new()),
        examples: Mutex::new(Vec::new()),
        phase: Mutex::new("preload"),
        cfg,
    });
    let clk = 100.0_f64; // CLK_TCK on Linux
    let boot = sample_line(&sh, clk);
    println!("BOOT rss_kib={} disk_bytes={}", boot.0, boot.1);

    let barrier = Arc::new(Barrier::new(conns + 1));
    let start_at: Arc<Mutex<Option<Instant>>> = Arc::new(Mutex::new(None));
    let t_begin = Instant::now();
    let mut handles = Vec::new();
    for tid in 0..conns {
        let sh = sh.clone();
        let barrier = barrier.clone();
        let start_at = start_at.clone();
        let port = tid % nports;
        let replica = port >= nshards;
        let shard = port % nshards;
        let addr = if replica {
            sh.cfg.replicas[shard].clone()
        } else {
            sh.cfg.primaries[shard].clone()
        };
        let writer = writers.iter().position(|&w| w == tid);
        let own: Vec<usize> = match writer {
            Some(w) => (0..sh.cfg.keys).filter(|k| k % nwriters == w).collect(),
            None => vec![],
        };
        let own_hot = own.iter().copied().filter(|&k| k < nhot).collect();
        let seen = if replica {
            vec![0u32; sh.cfg.keys]
        } else {
            vec![]
        };
        let h = std::thread::Builder::new()
            .name(format!("conn{tid}"))
            .stack_size(256 * 1024)
            .spawn(move || {
                let mut w = Worker {
                    sh: sh.clone(),
                    tid,
                    shard,
                    port,
                    replica,
                    writer,
                    own,
                    own_hot,
                    conn: Conn::new(&addr, timeout),
                    rng: Rng(mix(tid as u64 + 1) | 1),
                    seen,
                    read_back: None,
                };
                // Phase 1: preload every written key with v1.
                for i in 0..w.own.len() {
                    let k = w.own[i];
                    w.set(k, false);
                }
                barrier.wait();
                // Phase 2: replicas catch up with everything preloaded.
                if w.replica {
                    let max_seq = sh.by_shard[w.shard]
                        .iter()
                        .map(|&k| unpack(sh.state[k].load(Ordering::Acquire)).1)
                        .max()
                        .unwrap_or(0);
                    if let Some(&k) = sh.by_shard[w.shard].first() {
                        let host = w.host();
                        let mut params = b"key=".to_vec();
                        encode_into(&sh.names[k], &mut params);
                        params.extend_from_slice(
                            format!("&min_seq={max_seq}&wait_ms=10000").as_bytes(),
                        );
                        match w.conn.call(&build(&host, "/get", &params, false)) {
                            Ok(r) if r.status == 200 => {}
                            Ok(r) => sh.problem(
                                tid,
                                true,
                                "replica did not catch up after the preload",
                                format!("{host}: {} {}", r.status, show(&r.body)),
                            ),
                            Err(e) => sh.problem(
                                tid,
                                true,
                                "replica did not catch up after the preload",
                                format!("{host}: {e}"),
                            ),
                        }
                    }
                }
                barrier.wait();
                // Phase 3: the load.
                barrier.wait();
                let deadline =
                    start_at.lock().unwrap().unwrap() + Duration::from_secs(sh.cfg.seconds);
                w.run_load(deadline);
                w
            })
            .expect("spawn");
        handles.push(h);
    }
    barrier.wait();
    let preload_s = t_begin.elapsed().as_secs_f64();
    barrier.wait();
    *sh.phase.lock().unwrap() = "load";
    let start = Instant::now();
    *start_at.lock().unwrap() = Some(start);
    let s0 = sample_line(&sh, clk);
    let (lag0, open0) = server_status(&sh.cfg.primaries[0]);
    println!(
        "START preload_s={preload_s:.1} keys={} never={} conns={conns} writers={nwriters} rss_kib={} disk_bytes={} lag={lag0} open_conns={open0}",
        sh.cfg.keys, sh.cfg.never, s0.0, s0.1
    );
    barrier.wait();

    // Reporter: one INTERVAL line per interval until every worker is done.
    let mut t_prev = start;
    let mut cpu_prev = s0.2;
    let mut disk_prev = disk_stats(&sh.cfg.disk_dev);
    let mut warm: Option<(u64, u64, u64)> = None;
    let mut rss_max = s0.0;
    let iv = Duration::from_secs(sh.cfg.interval.max(1));
    let end = start + Duration::from_secs(sh.cfg.seconds);
    let mut next = start + iv;
    let mut last_stall_print = start.checked_sub(Duration::from_secs(10)).unwrap_or(start);
    let mut stall_reports = 0u64;
    let nports_ = 2 * nshards;
    let port_name = |p: usize| {
        if p < nshards {
            sh.cfg.primaries[p].clone()
        } else {
            sh.cfg.replicas[p - nshards].clone()
        }
    };
    loop {
        let now = Instant::now();
        // Stall watch: requests in flight for more than 2 s, at most one
        // report per second (with the nodes' commit counters and seqs).
        if now.duration_since(last_stall_print) >= Duration::from_secs(1) && stall_reports < 300 {
            let now_ms = sh.t_begin.elapsed().as_millis() as u64;
            let mut groups: BTreeMap<String, (u64, u64)> = BTreeMap::new();
            for w in &sh.inflight {
                let x = w.load(Ordering::Relaxed);
                if x == 0 {
                    continue;
                }
                let age = now_ms.saturating_sub((x >> 16) & 0x7fff_ffff_ffff);
                if age >= 2000 {
                    let port = (x & 15) as usize;
                    let g = format!(
                        "{}:shard{}@{}",
                        if x >> 12 & 1 == 1 { "SET" } else { "GET" },
                        (x >> 4) & 0xff,
                        if port < nports_ {
                            port_name(port)
                        } else {
                            "?".into()
                        }
                    );
                    let e = groups.entry(g).or_insert((0, 0));
                    e.0 += 1;
                    e.1 = e.1.max(age);
                }
            }
            if !groups.is_empty() {
                last_stall_print = now;
                stall_reports += 1;
                let by = groups
                    .iter()
                    .map(|(g, (n, a))| format!("{g}={n}/{a}ms"))
                    .collect::<Vec<_>>()
                    .join(",");
                println!(
                    "STALL t={:.1} inflight_over_2s={} by={by} nodes={}",
                    (now - start).as_secs_f64(),
                    groups.values().map(|v| v.0).sum::<u64>(),
                    status_nodes(&sh.cfg.primaries[0])
                );
            }
        }
        if now < next && now < end {
            std::thread::sleep((next.min(end) - now).min(Duration::from_millis(200)));
            continue;
        }
        let done = now >= end;
        if done {
            // Let the workers finish their last request.
            for h in &handles {
                while !h.is_finished()
                    && start.elapsed() < Duration::from_secs(sh.cfg.seconds + sh.cfg.timeout_s + 5)
                {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
        let now = Instant::now();
        let mut ih = Hist::new();
        let (mut g, mut s, mut e, mut m) = (0, 0, 0, 0);
        let mut set_n = vec![0u64; nshards.min(8)];
        let mut set_max = vec![0u64; nshards.min(8)];
        for st in &sh.stats {
            let mut st = st.lock().unwrap();
            for i in 0..set_n.len() {
                set_n[i] += st.i_set_n[i];
                set_max[i] = set_max[i].max(st.i_set_max[i]);
                st.i_set_n[i] = 0;
                st.i_set_max[i] = 0;
            }
            ih.merge(&st.interval);
            st.interval = Hist::new();
            g += st.i_gets;
            s += st.i_sets;
            e += st.i_errors;
            m += st.i_mismatches;
            st.i_gets = 0;
            st.i_sets = 0;
            st.i_errors = 0;
            st.i_mismatches = 0;
        }
        let dt = (now - t_prev).as_secs_f64();
        let (rss, disk, cpu) = sample_line(&sh, clk);
        let (lag, open) = server_status(&sh.cfg.primaries[0]);
        let dk = disk_stats(&sh.cfg.disk_dev);
        let disk_busy = (dk.0.saturating_sub(disk_prev.0)) as f64 / 10.0 / dt;
        let flushes = (dk.1.saturating_sub(disk_prev.1)) as f64 / dt;
        disk_prev = dk;
        rss_max = rss_max.max(rss);
        let t = (now - start).as_secs_f64();
        if warm.is_none() && t + 0.5 >= sh.cfg.warmup as f64 {
            warm = Some((rss, disk, (t.round()) as u64));
        }
        println!(
            "INTERVAL t={t:.0} requests={} rps={:.0} gets={g} sets={s} p50_us={:.0} p99_us={:.0} max_us={} errors={e} mismatches={m} rss_kib={rss} disk_bytes={disk} server_cpu_pct={:.0} max_lag={lag} open_conns={open} set_n={} set_max_us={} disk_busy_pct={disk_busy:.0} flushes_per_s={flushes:.0}",
            ih.n,
            ih.n as f64 / dt,
            ih.pct(50.0),
            ih.pct(99.0),
            ih.max,
            (cpu.saturating_sub(cpu_prev)) as f64 / clk / dt * 100.0,
            set_n
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(","),
            set_max
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(","),
        );
        t_prev = now;
        cpu_prev = cpu;
        next += iv;
        if done {
            break;
        }
    }
    sh.stop.store(true, Ordering::Relaxed);
    let load_s = start.elapsed().as_secs_f64();
    let mut workers: Vec<Worker> = handles
        .into_iter()
        .map(|h| h.join().expect("worker panicked"))
        .collect();
    let after_load = sample_line(&sh, clk);

    // Phase 4: final check of every key on its primary and its replica.
    *sh.phase.lock().unwrap() = "final check";
    let t_final = Instant::now();
    let final_checked = AtomicU64::new(0);
    let max_seq: Vec<u64> = (0..nshards)
        .map(|s| {
            sh.by_shard[s]
                .iter()
                .map(|&k| unpack(sh.state[k].load(Ordering::Acquire)).1)
                .max()
                .unwrap_or(0)
        })
        .collect();
    // Up to 4 connections per port (the workers' own, in tid order).
    let lanes = (conns / nports).clamp(1, 4);
    std::thread::scope(|scope| {
        for w in workers.iter_mut().take(nports * lanes) {
            let sh = &sh;
            let final_checked = &final_checked;
            let max_seq = &max_seq;
            scope.spawn(move || {
                let lane = w.tid / nports;
                let host = w.host();
                let keys: Vec<usize> = sh.by_shard[w.shard]
                    .iter()
                    .copied()
                    .filter(|k| k % lanes == lane)
                    .collect();
                for k in keys {
                    let (v, _) = unpack(sh.state[k].load(Ordering::Acquire));
                    let unsure = sh.unsure[k].load(Ordering::Acquire);
                    let min_seq = if w.replica { max_seq[w.shard] } else { 0 };
                    let mut params = b"key=".to_vec();
                    encode_into(&sh.names[k], &mut params);
                    if min_seq > 0 {
                        params.extend_from_slice(
                            format!("&min_seq={min_seq}&wait_ms=10000").as_bytes(),
                        );
                    }
                    final_checked.fetch_add(1, Ordering::Relaxed);
                    let what = format!(
                        "final GET {} via {host} (last acked v{v}{})",
                        show(&sh.names[k]),
                        if unsure {
                            ", a later SET unanswered"
                        } else {
                            ""
                        }
                    );
                    match w.conn.call(&build(&host, "/get", &params, false)) {
                        Err(e) => {
                            sh.problem(w.tid, true, "final GET failed", format!("{what}: {e}"));
                        }
                        Ok(r) if r.status != 200 => {
                            if r.status == 404 {
                                sh.problem(w.tid, false, "final: 404 for a written key", what);
                            } else {
                                sh.problem(
                                    w.tid,
                                    true,
                                    &format!("final GET status {}", r.status),
                                    format!("{what}: {}", show(&r.body)),
                                );
                            }
                        }
                        Ok(r) => {
                            let ok = r.body == value_of(&sh.names[k], k, v)
                                || (unsure && r.body == value_of(&sh.names[k], k, v + 1));
                            if !ok {
                                sh.problem(
                                    w.tid,
                                    false,
                                    "final: not the last acknowledged value",
                                    format!("{what}: got {}", show(&r.body)),
                                );
                            }
                        }
                    }
                }
                if !w.replica {
                    for n in (0..sh.never.len())
                        .filter(|&n| sh.never_shard[n] == w.shard && n % lanes == lane)
                    {
                        final_checked.fetch_add(1, Ordering::Relaxed);
                        let req = get_request(&host, &sh.never[n], 0, false);
                        match w.conn.call(&req) {
                            Ok(r) if r.status == 404 => {}
                            Ok(r) => sh.problem(
                                w.tid,
                                false,
                                "final: never-written key not 404",
                                format!("{host} {}: {}", show(&sh.never[n]), r.status),
                            ),
                            Err(e) => sh.problem(
                                w.tid,
                                true,
                                "final GET failed",
                                format!("{host} {}: {e}", show(&sh.never[n])),
                            ),
                        }
                    }
                }
            });
        }
    });
    let final_s = t_final.elapsed().as_secs_f64();
    let end_sample = sample_line(&sh, clk);

    // Totals.
    let mut cls = vec![Hist::new(); CLASSES.len()];
    let (mut errors, mut mismatches, mut stale, mut max_stale) = (0, 0, 0, 0);
    for st in &sh.stats {
        let st = st.lock().unwrap();
        for (a, b) in cls.iter_mut().zip(&st.class) {
            a.merge(b);
        }
        errors += st.errors;
        mismatches += st.mismatches;
        stale += st.stale_reads;
        max_stale = max_stale.max(st.max_stale);
    }
    let mut all = Hist::new();
    let mut gets = Hist::new();
    let mut sets = Hist::new();
    for (i, h) in cls.iter().enumerate() {
        all.merge(h);
        if i == C_SET_LOCAL || i == C_SET_FWD {
            sets.merge(h);
        } else {
            gets.merge(h);
        }
        println!(
            "CLASS name={:?} requests={} p50_us={:.0} p99_us={:.0} p999_us={:.0} max_us={}",
            CLASSES[i],
            h.n,
            h.pct(50.0),
            h.pct(99.0),
            h.pct(99.9),
            h.max
        );
    }
    for (kind, n) in sh.kinds.lock().unwrap().iter() {
        println!("KIND count={n} what={kind:?}");
    }
    for ex in sh.examples.lock().unwrap().iter() {
        println!("EXAMPLE {ex}");
    }
    let (wr, wd, wt) = warm.unwrap_or((after_load.0, after_load.1, sh.cfg.seconds));
    println!(
        "SUMMARY seconds={load_s:.1} requests={} gets={} sets={} rps={:.0} p50_us={:.0} p99_us={:.0} p999_us={:.0} max_us={} get_p99_us={:.0} set_p99_us={:.0} \
errors={errors} mismatches={mismatches} stale_replica_reads={stale} max_staleness_versions={max_stale} final_checked={} final_s={final_s:.1} \
rss_boot_kib={} rss_start_kib={} rss_warm_kib={wr} warm_t={wt} rss_end_kib={} rss_max_kib={rss_max} rss_after_check_kib={} \
disk_boot_bytes={} disk_start_bytes={} disk_warm_bytes={wd} disk_end_bytes={} preload_s={preload_s:.1} keys={} never={} conns={conns} writers={nwriters}",
        all.n,
        gets.n,
        sets.n,
        all.n as f64 / load_s.max(0.001),
        all.pct(50.0),
        all.pct(99.0),
        all.pct(99.9),
        all.max,
        gets.pct(99.0),
        sets.pct(99.0),
        final_checked.load(Ordering::Relaxed),
        boot.0,
        s0.0,
        after_load.0,
        end_sample.0,
        boot.1,
        s0.1,
        after_load.1,
        sh.cfg.keys,
        sh.cfg.never,
    );
    let _ = sh.nshards;
    std::process::exit(i32::from(!(errors == 0 && mismatches == 0)));
}
