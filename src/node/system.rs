//! What the process needs from the operating system: listening sockets,
//! address resolution, the io_uring and `RLIMIT_MEMLOCK` checks, CPU
//! affinity and placement, signal masks, and the kick that wakes a parked
//! executor thread. No glommio, no async.

use super::NodeError;
use crate::topology::{NodeInfo, Role};
use nix::sys::pthread::pthread_kill;
use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

/// Minimum `RLIMIT_MEMLOCK` glommio needs per executor.
const MEMLOCK_PER_EXECUTOR: u64 = 512 * 1024;

/// A listening socket on `addr` with a backlog of 1024.
///
/// An address in use is retried for up to 2 s: a predecessor killed with
/// SIGKILL releases its listening socket only once the kernel has torn down
/// its io_uring (asynchronously, after the process is gone).
pub(super) fn listen(addr: &SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let deadline = Instant::now() + Duration::from_secs(2);
    let l = loop {
        match std::net::TcpListener::bind(addr) {
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            other => break other?,
        }
    };
    // SAFETY: listen on our own listening fd only raises its backlog.
    if unsafe { libc::listen(l.as_raw_fd(), 1024) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(l)
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

/// Checks io_uring availability and raises `RLIMIT_MEMLOCK` if needed.
pub(super) fn preflight(executors: usize) -> Result<(), NodeError> {
    if let Ok(v) = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
        && v.trim() == "2"
    {
        return Err(NodeError::IoUring(
            "disabled by the kernel (sysctl kernel.io_uring_disabled=2)".into(),
        ));
    }
    let want = MEMLOCK_PER_EXECUTOR * executors.max(1) as u64;
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read/write the struct passed in.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) != 0 {
            return Ok(());
        }
        if lim.rlim_cur != libc::RLIM_INFINITY && lim.rlim_cur < want {
            let raised = libc::rlimit {
                rlim_cur: if lim.rlim_max == libc::RLIM_INFINITY {
                    want
                } else {
                    want.min(lim.rlim_max)
                },
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_MEMLOCK, &raised) == 0 {
                lim = raised;
            }
        }
    }
    if lim.rlim_cur != libc::RLIM_INFINITY && lim.rlim_cur < MEMLOCK_PER_EXECUTOR {
        return Err(NodeError::MemLock {
            have: lim.rlim_cur,
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
    // SAFETY: cpu_set_t is plain data; sched_getaffinity fills it.
    let mut cpus = Vec::new();
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) == 0 {
            for cpu in 0..libc::CPU_SETSIZE as usize {
                if libc::CPU_ISSET(cpu, &set) {
                    cpus.push(cpu);
                }
            }
        }
    }
    if cpus.is_empty() {
        cpus.push(0);
    }
    cpus
}

/// Blocks SIGINT, SIGTERM and SIGHUP (the terminal closed) in this thread
/// (and every thread it spawns later) so that [`wait_signal`] receives them;
/// each one drains and stops the process.
pub(super) fn block_signals() -> Result<libc::sigset_t, NodeError> {
    // SAFETY: sigset manipulation on a local, then pthread_sigmask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGHUP);
        if libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
            return Err(NodeError::Signal(std::io::Error::last_os_error()));
        }
        Ok(set)
    }
}

pub(super) fn wait_signal(set: &libc::sigset_t) -> Result<i32, NodeError> {
    let mut sig: libc::c_int = 0;
    // SAFETY: set was initialised by block_signals.
    let rc = unsafe { libc::sigwait(set, &mut sig) };
    if rc != 0 {
        return Err(NodeError::Signal(std::io::Error::from_raw_os_error(rc)));
    }
    Ok(sig)
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
