//! What the process needs from the operating system: listening sockets,
//! address resolution, the `io_uring` and `RLIMIT_MEMLOCK` checks, CPU
//! affinity and placement, signal masks, and the kick that wakes a parked
//! executor thread. No glommio, no async. System calls go through
//! `socket2`, `rlimit` and `nix` (all already used by glommio); the only
//! `unsafe` left is installing the kick's signal handler.

use super::NodeError;
use crate::topology::{NodeInfo, Role};
use nix::sched::{CpuSet, sched_getaffinity};
use nix::sys::pthread::pthread_kill;
use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
use nix::unistd::Pid;
use rlimit::{INFINITY, Resource, getrlimit, setrlimit};
use socket2::{Domain, Socket, Type};
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::{Duration, Instant};

/// Minimum `RLIMIT_MEMLOCK` glommio needs per executor.
const MEMLOCK_PER_EXECUTOR: u64 = 512 * 1024;

/// A listening socket on `addr` with a backlog of 1024.
///
/// An address in use is retried for up to 2 s: a predecessor killed with
/// SIGKILL releases its listening socket only once the kernel has torn down
/// its `io_uring` (asynchronously, after the process is gone).
pub(super) fn listen(addr: &SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let socket = Socket::new(Domain::for_address(*addr), Type::STREAM, None)?;
        socket.set_reuse_address(true)?;
        match socket.bind(&(*addr).into()) {
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(e),
            Ok(()) => {
                socket.listen(1024)?;
                return Ok(socket.into());
            }
        }
    }
}

pub(super) fn resolve(addr: &str) -> Result<SocketAddr, NodeError> {
    let err = |error: String| NodeError::Address {
        addr: addr.to_string(),
        error,
    };
    addr.to_socket_addrs()
        .map_err(|e| err(e.to_string()))?
        // Prefer IPv4 for names like localhost that resolve to both.
        .min_by_key(SocketAddr::is_ipv6)
        .ok_or_else(|| err("no addresses".into()))
}

/// Checks `io_uring` availability and raises `RLIMIT_MEMLOCK` if needed.
pub(super) fn preflight(executors: usize) -> Result<(), NodeError> {
    if let Ok(v) = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
        && v.trim() == "2"
    {
        return Err(NodeError::IoUring(
            "disabled by the kernel (sysctl kernel.io_uring_disabled=2)".into(),
        ));
    }
    let want = MEMLOCK_PER_EXECUTOR * executors.max(1) as u64;
    let Ok((mut soft, hard)) = getrlimit(Resource::MEMLOCK) else {
        return Ok(());
    };
    if soft != INFINITY && soft < want {
        let raised = if hard == INFINITY {
            want
        } else {
            want.min(hard)
        };
        if setrlimit(Resource::MEMLOCK, raised, hard).is_ok() {
            soft = raised;
        }
    }
    if soft != INFINITY && soft < MEMLOCK_PER_EXECUTOR {
        return Err(NodeError::MemLock {
            have: soft,
            need: MEMLOCK_PER_EXECUTOR,
        });
    }
    Ok(())
}

/// The CPU of each local node: primaries first, round-robin, then
/// replicas continuing the rotation, so that primaries (which take every
/// write) spread over all CPUs before any CPU gets a second one.
pub(super) fn cpu_placement(locals: &[NodeInfo], cpus: &[usize]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..locals.len()).collect();
    order.sort_by_key(|&i| (locals[i].role != Role::Primary, i));
    let mut out = vec![0; locals.len()];
    for (slot, &i) in order.iter().enumerate() {
        out[i] = cpus[slot % cpus.len()];
    }
    out
}

/// CPUs this process may run on (its affinity mask), in order.
pub(super) fn allowed_cpus() -> Vec<usize> {
    let mut cpus: Vec<usize> = match sched_getaffinity(Pid::from_raw(0)) {
        Ok(set) => (0..CpuSet::count())
            .filter(|&cpu| set.is_set(cpu).unwrap_or(false))
            .collect(),
        Err(_) => Vec::new(),
    };
    if cpus.is_empty() {
        cpus.push(0);
    }
    cpus
}

/// Blocks SIGINT, SIGTERM and SIGHUP (the terminal closed) in this thread
/// (and every thread it spawns later) so that [`wait_signal`] receives them;
/// each one drains and stops the process.
pub(super) fn block_signals() -> Result<SigSet, NodeError> {
    let mut set = SigSet::empty();
    for sig in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        set.add(sig);
    }
    set.thread_block()
        .map_err(|e| NodeError::Signal(e.into()))?;
    Ok(set)
}

/// Waits for one of the signals [`block_signals`] blocked; its number.
pub(super) fn wait_signal(set: &SigSet) -> Result<i32, NodeError> {
    set.wait()
        .map(|sig| sig as i32)
        .map_err(|e| NodeError::Signal(e.into()))
}

/// The signal that wakes an executor thread (see [`kick`]). SIGURG is
/// ignored by default and sent by nothing else here (no socket has an
/// owner process), as the Go runtime uses it for preemption.
const KICK: Signal = Signal::SIGURG;

extern "C" fn on_kick(_: libc::c_int) {}

/// Installs the no-op handler that makes [`kick`] interrupt a blocking
/// system call (no `SA_RESTART`). Before any executor thread exists.
pub(super) fn install_kick() -> Result<(), NodeError> {
    let action = SigAction::new(
        SigHandler::Handler(on_kick),
        SaFlags::empty(),
        SigSet::empty(),
    );
    // SAFETY: the handler does nothing, which is async-signal-safe.
    unsafe { sigaction(KICK, &action) }
        .map(|_| ())
        .map_err(|e| NodeError::Signal(e.into()))
}

/// Interrupts whatever `thread` is blocked in. An executor parked in
/// `io_uring_enter` returns from it (glommio treats `EINTR` as a spurious
/// wake-up) and runs its task queue again; see `sched` for why a glommio
/// executor can park with runnable tasks on its first turn.
pub(super) fn kick(thread: libc::pthread_t) {
    let _ = pthread_kill(thread, KICK);
}
