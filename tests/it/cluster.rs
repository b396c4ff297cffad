//! Throwaway PostgreSQL clusters for tests that need a server of their own (a tiny
//! max_connections, a streaming replica): finding the binaries, a free port, and
//! running them as the `postgres` OS user, as `scripts/pg-local.sh` does.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// The newest `/usr/lib/postgresql/*/bin` with `initdb` and `pg_ctl`, as
/// `scripts/pg-local.sh` picks it.
pub fn newest_bindir() -> Option<PathBuf> {
    let version = |p: &Path| -> Vec<u32> {
        p.file_name()
            .and_then(|n| n.to_str())
            .map(|n| n.split('.').map(|s| s.parse().unwrap_or(0)).collect())
            .unwrap_or_default()
    };
    std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("bin/initdb").is_file() && p.join("bin/pg_ctl").is_file())
        .max_by_key(|p| version(p))
        .map(|p| p.join("bin"))
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("binding a free local port")
        .port()
}

/// `program`, run as the `postgres` OS user when we are root (PostgreSQL refuses
/// to run as root; pg-local.sh runs its cluster as `postgres` then).
pub fn as_postgres(program: &Path) -> Command {
    if is_root() {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "postgres", "--"]).arg(program);
        cmd
    } else {
        Command::new(program)
    }
}

/// Stops the cluster in `dir` if it runs, with the binaries of its own major
/// version. Immediate: the data is thrown away, and sessions still open are cut.
pub fn stop_cluster(dir: &Path) {
    if !dir.join("postmaster.pid").exists() {
        return;
    }
    let pg_ctl = std::fs::read_to_string(dir.join("PG_VERSION"))
        .ok()
        .map(|v| PathBuf::from(format!("/usr/lib/postgresql/{}/bin/pg_ctl", v.trim())))
        .filter(|p| p.is_file())
        .or_else(|| newest_bindir().map(|b| b.join("pg_ctl")));
    let Some(pg_ctl) = pg_ctl else { return };
    let _ = as_postgres(&pg_ctl)
        .arg("-D")
        .arg(dir)
        .args(["-m", "immediate", "-w", "-t", "20", "stop"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}
