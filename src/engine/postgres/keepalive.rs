//! TCP keepalives on stride's end of its database connections (libpq's
//! `keepalives*`). sqlx opens its sockets itself and gives no access to them. On
//! Linux a process may take a duplicate of one of its own file descriptors with
//! pidfd_getfd(2) (safe code, no privilege: a process may always access itself),
//! and a socket option set on the duplicate is set on the shared socket. So right
//! after a connection opens, stride turns keepalives on for its TCP sockets
//! connected to that server which do not have them yet.
//!
//! Where this is not possible (another system, a seccomp profile that forbids
//! pidfd_getfd), the server's end still probes (its `tcp_keepalives_*`, set for
//! every session) and `run.stall_timeout` still watches stride's end.

use std::net::SocketAddr;

use crate::engine::postgres::libpq::Keepalives;

/// Turns keepalives on, with `settings`, for this process's TCP sockets connected
/// to one of `peers` that have none yet. Returns how many it changed.
#[cfg(target_os = "linux")]
pub fn enable(peers: &[SocketAddr], settings: &Keepalives) -> std::io::Result<usize> {
    use rustix::net::sockopt;
    use rustix::process::{getpid, pidfd_getfd, pidfd_open, PidfdFlags, PidfdGetfdFlags};

    let pidfd = pidfd_open(getpid(), PidfdFlags::empty())?;
    let mut changed = 0;
    for entry in std::fs::read_dir("/proc/self/fd")?.flatten() {
        let is_socket = std::fs::read_link(entry.path())
            .is_ok_and(|target| target.to_string_lossy().starts_with("socket:"));
        let Some(fd) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        if !is_socket {
            continue;
        }
        // The descriptor may have been closed since the directory was read.
        let Ok(socket) = pidfd_getfd(&pidfd, fd, PidfdGetfdFlags::empty()) else {
            continue;
        };
        let peer = rustix::net::getpeername(&socket)
            .ok()
            .flatten()
            .and_then(|p| SocketAddr::try_from(p).ok());
        if !peer.is_some_and(|p| peers.contains(&p)) || sockopt::socket_keepalive(&socket)? {
            continue;
        }
        sockopt::set_socket_keepalive(&socket, true)?;
        sockopt::set_tcp_keepidle(&socket, settings.idle)?;
        sockopt::set_tcp_keepintvl(&socket, settings.interval)?;
        sockopt::set_tcp_keepcnt(&socket, settings.count)?;
        changed += 1;
    }
    Ok(changed)
}

#[cfg(not(target_os = "linux"))]
pub fn enable(_peers: &[SocketAddr], _settings: &Keepalives) -> std::io::Result<usize> {
    Err(std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        "client-side keepalives need Linux's pidfd_getfd",
    ))
}
