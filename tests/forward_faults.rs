//! Faults at the edges of forwarding across hosts (README, "What a status
//! means for a write").
//!
//! Two corekv processes that disagree about one address: the forwarder's
//! sharding.toml places shard 2's primary at a relay (a small TCP proxy
//! in this file, std threads) that passes each request on to the owner's
//! real port. The relay can swallow the owner's answer, drop a request, or
//! hold one and deliver it late, as a network can. Checked here:
//! - a write whose bytes reached the owner and got no answer is 502
//!   ("may have been applied"), never 503, and is not sent twice; a read
//!   in the same situation is retried on a fresh connection;
//! - 503 means not applied: the owner could not be reached at all;
//! - a pooled connection the owner closed is not used for a write;
//! - a write answered 504 is not applied when its bytes arrive later: the
//!   forwarder resets the connection (RST, not FIN) and the owner refuses
//!   the late bytes because their deadline has passed.
//!
//! Depends on the harness in `common` (ports, spawning, the HTTP client).
//! Every wait has a deadline; `Procs` kills exactly the children it spawned.

mod common;

use common::{
    Resp, START_DEADLINE, free_ports, get, get_target, health_ok, keys_for_shard, set_target,
    spawn_corekv, wait_until,
};
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::Child;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Longest wait for anything the relay or a process should do.
const WAIT: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------
// The relay

/// What the relay does with the next request it reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Pass requests to the owner and answers back (the default).
    Pass,
    /// Pass the next request to the owner and read its answer, then stop
    /// listening and close the connection without answering.
    SwallowAnswer,
    /// Close the connection on the next request without passing it on.
    DropRequest,
    /// Keep the next request, report how the forwarder ends its
    /// connection, and deliver the request to the owner on `release`.
    Hold,
}

/// What the relay saw, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Event {
    /// A request was passed on; the owner's status.
    Passed(u16),
    /// The owner answered this status; the answer was not passed back.
    Swallowed(u16),
    Dropped,
    Held,
    /// How the forwarder ended a connection with a held request:
    /// "reset" (RST), "closed" (FIN), or something else.
    DownstreamEnded(String),
    /// The owner's answer to a held request delivered late.
    LateAnswer(u16, String),
}

#[derive(Default)]
struct State {
    mode: Option<Mode>,
    released: bool,
    events: Vec<Event>,
    /// The forwarder's side of every accepted connection, for `close_all`.
    downstream: Vec<TcpStream>,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
    /// Owned here, not by the accept thread, so that its descriptor stays
    /// valid (and is not reused by another socket of this test process)
    /// for as long as anything may `stop_listening`.
    listener: TcpListener,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn record(&self, e: Event) {
        self.lock().events.push(e);
        self.changed.notify_all();
    }

    /// Stops listening: connects to the relay's port are refused from now
    /// on (Linux: `shutdown` on a listening socket).
    fn stop_listening(&self) {
        // SAFETY: shutdown on the descriptor of `self.listener`, open for
        // as long as `self` lives.
        unsafe {
            libc::shutdown(self.listener.as_raw_fd(), libc::SHUT_RDWR);
        }
    }
}

/// A TCP proxy from `port` to the owner, controlled by the test.
struct Relay {
    port: u16,
    shared: Arc<Shared>,
}

impl Relay {
    /// Starts a relay on a free port (a port handed out as free can be
    /// taken by another process before the bind: then another one).
    fn start(owner: SocketAddr) -> Self {
        let mut last = None;
        for _ in 0..20 {
            let port = free_ports(1)[0];
            match TcpListener::bind(("127.0.0.1", port)) {
                Ok(listener) => return Self::serve(port, listener, owner),
                Err(e) => last = Some(e),
            }
        }
        panic!("no port for the relay: {last:?}");
    }

    fn serve(port: u16, listener: TcpListener, owner: SocketAddr) -> Self {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
            listener,
        });
        let sh = shared.clone();
        std::thread::spawn(move || {
            for down in sh.listener.incoming() {
                let Ok(down) = down else {
                    return; // shut down by stop_listening
                };
                if let Ok(clone) = down.try_clone() {
                    sh.lock().downstream.push(clone);
                }
                let sh = sh.clone();
                std::thread::spawn(move || relay_connection(down, owner, &sh));
            }
        });
        Self { port, shared }
    }

    fn set_mode(&self, mode: Mode) {
        self.shared.lock().mode = Some(mode);
    }

    fn events(&self) -> Vec<Event> {
        self.shared.lock().events.clone()
    }

    /// Waits until an event matching `want` is recorded; returns it.
    fn wait_for(&self, what: &str, want: impl Fn(&Event) -> bool) -> Event {
        let end = Instant::now() + WAIT;
        let mut st = self.shared.lock();
        loop {
            if let Some(e) = st.events.iter().find(|e| want(e)) {
                return e.clone();
            }
            let left = end.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "relay: no {what} event: {:?}", st.events);
            st = self
                .shared
                .changed
                .wait_timeout(st, left)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
    }

    /// Lets held requests go to the owner.
    fn release(&self) {
        self.shared.lock().released = true;
        self.shared.changed.notify_all();
    }

    /// Closes (FIN) every connection the forwarder opened to the relay, as
    /// an owner closing idle keep-alive connections does; returns the
    /// forwarder's local ports of those connections.
    fn close_all(&self) -> Vec<u16> {
        let downstream = std::mem::take(&mut self.shared.lock().downstream);
        let mut ports = Vec::new();
        for d in downstream {
            if let Ok(peer) = d.peer_addr() {
                ports.push(peer.port());
            }
            let _ = d.shutdown(Shutdown::Both);
        }
        ports
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.shared.stop_listening();
        self.release();
        self.close_all();
    }
}

/// Takes the relay's mode for one request: one-shot modes fall back to
/// `Pass`.
fn take_mode(sh: &Shared) -> Mode {
    let mut st = sh.lock();
    let mode = st.mode.unwrap_or(Mode::Pass);
    st.mode = Some(Mode::Pass);
    mode
}

fn relay_connection(mut down: TcpStream, owner: SocketAddr, sh: &Shared) {
    let mut up: Option<TcpStream> = None;
    let mut buf = Vec::new();
    loop {
        let Ok(Some(request)) = read_message(&mut down, &mut buf) else {
            return;
        };
        match take_mode(sh) {
            Mode::Pass => {
                let Ok((status, answer)) = roundtrip(&mut up, owner, &request) else {
                    return;
                };
                sh.record(Event::Passed(status));
                if down.write_all(&answer).is_err() {
                    return;
                }
            }
            Mode::SwallowAnswer => {
                let Ok((status, _)) = roundtrip(&mut up, owner, &request) else {
                    return;
                };
                // The owner has answered: the write is committed. Nothing
                // listens any more, then the connection closes unanswered.
                sh.stop_listening();
                sh.record(Event::Swallowed(status));
                let _ = down.shutdown(Shutdown::Both);
                return;
            }
            Mode::DropRequest => {
                sh.record(Event::Dropped);
                let _ = down.shutdown(Shutdown::Both);
                return;
            }
            Mode::Hold => {
                sh.record(Event::Held);
                let _ = down.set_read_timeout(Some(WAIT));
                let ended = match down.read(&mut [0u8; 64]) {
                    Ok(0) => "closed".to_string(),
                    Ok(n) => format!("{n} more bytes"),
                    Err(e) if e.kind() == io::ErrorKind::ConnectionReset => "reset".to_string(),
                    Err(e) => format!("error {e}"),
                };
                sh.record(Event::DownstreamEnded(ended));
                let end = Instant::now() + WAIT * 3;
                let mut st = sh.lock();
                while !st.released && Instant::now() < end {
                    st = sh
                        .changed
                        .wait_timeout(st, Duration::from_millis(100))
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .0;
                }
                drop(st);
                // The late delivery, on a fresh connection to the owner.
                let mut late = None;
                if let Ok((status, answer)) = roundtrip(&mut late, owner, &request) {
                    let body = answer
                        .windows(4)
                        .position(|w| w == b"\r\n\r\n")
                        .map(|p| String::from_utf8_lossy(&answer[p + 4..]).into_owned())
                        .unwrap_or_default();
                    sh.record(Event::LateAnswer(status, body));
                }
                return;
            }
        }
    }
}

/// Sends `request` to the owner on `up` (connecting first if needed) and
/// reads the whole answer: its status and bytes.
fn roundtrip(
    up: &mut Option<TcpStream>,
    owner: SocketAddr,
    request: &[u8],
) -> io::Result<(u16, Vec<u8>)> {
    if up.is_none() {
        let s = TcpStream::connect_timeout(&owner, WAIT)?;
        s.set_read_timeout(Some(WAIT))?;
        s.set_nodelay(true)?;
        *up = Some(s);
    }
    let s = up.as_mut().ok_or(io::ErrorKind::NotConnected)?;
    s.write_all(request)?;
    let answer = read_message(s, &mut Vec::new())?.ok_or(io::ErrorKind::UnexpectedEof)?;
    let status = String::from_utf8_lossy(&answer)
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((status, answer))
}

/// Reads one HTTP message (head and a Content-Length body) from `s`;
/// `buf` keeps bytes read past it. `None` on a clean end of stream.
fn read_message(s: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<Option<Vec<u8>>> {
    let mut chunk = [0u8; 16 * 1024];
    loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..p]).to_ascii_lowercase();
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            if buf.len() >= p + 4 + len {
                return Ok(Some(buf.drain(..p + 4 + len).collect()));
            }
        }
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

// ---------------------------------------------------------------------------
// Processes

/// The corekv processes of one test; Drop kills and reaps exactly these.
struct Procs {
    dir: tempfile::TempDir,
    children: Vec<(String, Child, PathBuf, PathBuf)>,
}

impl Procs {
    fn spawn(&mut self, label: &str, args: &[String], port: SocketAddr) {
        let (child, out, err) = spawn_corekv(self.dir.path(), label, args).expect("spawn corekv");
        self.children.push((label.to_string(), child, out, err));
        let idx = self.children.len() - 1;
        let mut exited = false;
        let ok = wait_until(START_DEADLINE, || {
            if let Ok(Some(_)) = self.children[idx].1.try_wait() {
                exited = true;
                return true;
            }
            health_ok(port)
        });
        assert!(
            ok && !exited,
            "{label} did not come up on {port}:\n{}",
            self.logs()
        );
    }

    fn logs(&mut self) -> String {
        let read = |p: &PathBuf| std::fs::read_to_string(p).unwrap_or_default();
        self.children
            .iter_mut()
            .map(|(l, child, out, err)| {
                let state = match child.try_wait() {
                    Ok(Some(status)) => format!("exited: {status}"),
                    Ok(None) => "running".to_string(),
                    Err(e) => format!("unknown: {e}"),
                };
                format!(
                    "---- {l} ({state}) stdout ----\n{}---- {l} stderr ----\n{}",
                    read(out),
                    read(err)
                )
            })
            .collect::<Vec<_>>()
            .concat()
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("==== corekv logs ====\n{}", self.logs());
        }
        for (_, child, _, _) in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A forwarder process (shard 1) and an owner process (shard 2), with the
/// relay between them, and a key of shard 2.
struct Setup {
    // Dropped in this order: the relay first, then the processes.
    relay: Relay,
    _procs: Procs,
    forwarder: SocketAddr,
    owner: SocketAddr,
    key: Vec<u8>,
}

fn config(shard1: SocketAddr, shard2: SocketAddr) -> String {
    format!(
        "[[shards]]\nname = \"shard1\"\nidx = 0\naddress = \"{shard1}\"\n\n\
         [[shards]]\nname = \"shard2\"\nidx = 1\naddress = \"{shard2}\"\n"
    )
}

/// Starts the owner, the relay and the forwarder (with `forwarder_args`).
fn setup(forwarder_args: &[&str]) -> Setup {
    let ports = free_ports(2);
    let at = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
    let (forwarder, owner) = (at(ports[0]), at(ports[1]));
    let relay = Relay::start(owner);
    let relay_addr = at(relay.port);
    let mut procs = Procs {
        dir: tempfile::tempdir().expect("tempdir"),
        children: Vec::new(),
    };
    let dir = procs.dir.path().to_path_buf();
    let owner_cfg = dir.join("owner.toml");
    let fwd_cfg = dir.join("forwarder.toml");
    std::fs::write(&owner_cfg, config(forwarder, owner)).expect("write config");
    std::fs::write(&fwd_cfg, config(forwarder, relay_addr)).expect("write config");
    let args = |cfg: &PathBuf, data: &str, serve: SocketAddr, extra: &[&str]| {
        let mut v: Vec<String> = vec![
            "--config".into(),
            cfg.display().to_string(),
            "--data-dir".into(),
            dir.join(data).display().to_string(),
            "--serve".into(),
            serve.to_string(),
        ];
        v.extend(extra.iter().map(|s| (*s).to_string()));
        v
    };
    procs.spawn("owner", &args(&owner_cfg, "owner", owner, &[]), owner);
    procs.spawn(
        "forwarder",
        &args(&fwd_cfg, "forwarder", forwarder, forwarder_args),
        forwarder,
    );
    let key = keys_for_shard("fault-", 1, 2, 1)
        .pop()
        .expect("a key of shard 2")
        .into_bytes();
    Setup {
        relay,
        _procs: procs,
        forwarder,
        owner,
        key,
    }
}

impl Setup {
    fn set(&self, value: &str) -> Resp {
        get(self.forwarder, &set_target(&self.key, value.as_bytes()))
    }

    /// The key's value read on the owner itself.
    fn owner_value(&self) -> String {
        let r = get(self.owner, &get_target(&self.key));
        assert_eq!(r.status, 200, "read on the owner: {r}");
        r.text()
    }
}

/// True when none of the forwarder's connections from `ports` to the relay
/// is still ESTABLISHED (`/proc/net/tcp`): each has seen the relay's FIN.
fn none_established(ports: &[u16], relay: u16) -> bool {
    let Ok(table) = std::fs::read_to_string("/proc/net/tcp") else {
        return true;
    };
    !table.lines().skip(1).any(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        let port = |field: Option<&&str>| {
            field
                .and_then(|a| a.rsplit(':').next())
                .and_then(|p| u16::from_str_radix(p, 16).ok())
        };
        let (local, remote) = (port(f.get(1)), port(f.get(2)));
        f.get(3) == Some(&"01")
            && remote == Some(relay)
            && local.is_some_and(|p| ports.contains(&p))
    })
}

// ---------------------------------------------------------------------------
// Tests

/// Item 1: the owner commits a write and its answer is lost (the relay
/// swallows it and then stops listening, as an owner that dies right
/// after its commit). The write went out on a pooled connection; the
/// forwarder must not retry it, and must answer 502 (may have been
/// applied), not 503 (which it answered before, from the refused retry).
#[test]
fn lost_answer_to_an_applied_write_is_502_not_503() {
    let s = setup(&[]);
    let r = s.set("v1");
    assert_eq!(r.status, 200, "first write through the relay: {r}");
    assert_eq!(s.relay.events(), vec![Event::Passed(200)]);

    // The second write goes out on the pooled connection; the owner
    // commits it, the answer never comes back.
    s.relay.set_mode(Mode::SwallowAnswer);
    let r = s.set("v2");
    s.relay
        .wait_for("swallowed", |e| *e == Event::Swallowed(200));
    assert_eq!(s.owner_value(), "v2", "the owner applied the write");
    assert_eq!(
        r.status, 502,
        "a write whose bytes reached the owner has an unknown outcome: {r}"
    );
    assert!(
        r.text().contains("may have been applied"),
        "the body says the write may have been applied: {r}"
    );

    // Now nothing listens: the request cannot reach the owner, so 503
    // says it was not applied, and it was not.
    let r = s.set("v3");
    assert_eq!(r.status, 503, "owner unreachable: {r}");
    assert!(r.text().contains("not applied"), "{r}");
    assert_eq!(s.owner_value(), "v2", "the refused write was not applied");
    let r = get(s.forwarder, &get_target(&s.key));
    assert_eq!(r.status, 503, "a read of an unreachable owner: {r}");
}

/// Item 1, the retry rule: a request that got no answer on a pooled
/// connection is retried on a fresh one only when it is a read. A write
/// whose bytes were sent is answered 502 and sent only once (the relay
/// dropped it, so it was not applied; the forwarder cannot know that). A
/// pooled connection the owner closed is not used for a write at all.
#[test]
fn reads_are_retried_writes_whose_bytes_were_sent_are_not() {
    let s = setup(&[]);
    assert_eq!(s.set("v1").status, 200);

    s.relay.set_mode(Mode::DropRequest);
    let r = get(s.forwarder, &get_target(&s.key));
    assert_eq!(
        (r.status, r.text()),
        (200, "v1".into()),
        "read retried: {r}"
    );
    assert_eq!(
        s.relay.events(),
        vec![Event::Passed(200), Event::Dropped, Event::Passed(200)],
        "the read was dropped once, then passed on a fresh connection"
    );

    s.relay.set_mode(Mode::DropRequest);
    let r = s.set("v2");
    assert_eq!(r.status, 502, "write sent, no answer: outcome unknown: {r}");
    assert!(r.text().contains("may have been applied"), "{r}");
    assert_eq!(
        s.relay.events().last(),
        Some(&Event::Dropped),
        "the write was not sent a second time: {:?}",
        s.relay.events()
    );
    assert_eq!(s.owner_value(), "v1", "the dropped write was not applied");

    // The owner closes the forwarder's idle pooled connection (as after
    // its --idle-timeout). The next write must not be written into it
    // (that would be a 502): the forwarder sees the close and connects anew.
    assert_eq!(s.set("v3").status, 200);
    let ports = s.relay.close_all();
    assert!(!ports.is_empty());
    assert!(
        wait_until(WAIT, || none_established(&ports, s.relay.port)),
        "the forwarder's connections did not see the relay's FIN"
    );
    let r = s.set("v4");
    assert_eq!(
        r.status, 200,
        "write after the owner closed the pooled connection: {r}"
    );
    assert_eq!(s.owner_value(), "v4");
}

/// Item 2: the forwarder gives up on a write (504) whose bytes are still
/// in the network (the relay holds them). It must reset the connection
/// (RST, so a kernel would not retransmit them), and when the bytes are
/// delivered late, after the client has written the key again, the owner
/// must refuse them: the old value must not overwrite the new one.
#[test]
fn write_answered_504_is_not_applied_when_its_bytes_arrive_late() {
    let timeout = Duration::from_secs(3);
    let s = setup(&["--forward-timeout-ms", "3000"]);

    s.relay.set_mode(Mode::Hold);
    let started = Instant::now();
    let r = s.set("old");
    let waited = started.elapsed();
    assert_eq!(r.status, 504, "the forwarder gave up: {r}");
    assert!(
        r.text().contains("may have been applied"),
        "a 504 for a write says the outcome is unknown: {r}"
    );
    assert!(
        waited >= timeout.saturating_sub(Duration::from_millis(100)) && waited < timeout + WAIT,
        "504 after the forward timeout ({timeout:?}), not {waited:?}"
    );
    let ended = s
        .relay
        .wait_for("downstream end", |e| matches!(e, Event::DownstreamEnded(_)));
    assert_eq!(
        ended,
        Event::DownstreamEnded("reset".into()),
        "the forwarder resets (SO_LINGER 0) a connection it gives up on"
    );

    // The client writes again and succeeds.
    let r = s.set("new");
    assert_eq!(r.status, 200, "the newer write: {r}");
    assert_eq!(s.owner_value(), "new");

    // Now the old bytes arrive: the owner must not apply them.
    s.relay.release();
    let late = s
        .relay
        .wait_for("late answer", |e| matches!(e, Event::LateAnswer(..)));
    let Event::LateAnswer(status, body) = late else {
        panic!("not a late answer: {late:?}");
    };
    assert_eq!(status, 503, "late write refused: {body}");
    assert!(
        body.contains("deadline passed") && body.contains("not applied"),
        "{body}"
    );
    assert_eq!(s.owner_value(), "new", "the late write was not applied");
    let r = get(s.forwarder, &get_target(&s.key));
    assert_eq!((r.status, r.text()), (200, "new".into()), "{r}");
}
