//! An ephemeral PostgreSQL cluster for `payrail dev`: created with the system's `initdb` in a
//! temporary directory, listening on loopback only, removed when dropped.
//!
//! PostgreSQL refuses to run as root, so when payrail runs as root the server runs as the
//! `postgres` system user (through `runuser`) with a data directory owned by that user.

use std::path::{Path, PathBuf};
use std::process::Command;

use thiserror::Error;

/// Where Debian and most distributions put the server binaries.
const PG_LIB_DIR: &str = "/usr/lib/postgresql";

#[derive(Debug, Error)]
pub enum PostgresError {
    #[error("PostgreSQL server binaries (initdb, pg_ctl) not found; install them (e.g. apt-get install postgresql)")]
    BinariesMissing,
    #[error("cannot create a directory for the cluster: {0}")]
    TempDir(#[source] std::io::Error),
    #[error("{step} failed: {detail}")]
    Command { step: &'static str, detail: String },
    #[error("no free port on 127.0.0.1: {0}")]
    Port(#[source] std::io::Error),
}

/// A running throw-away cluster. Dropping it stops the server and deletes its files.
#[derive(Debug)]
pub struct EphemeralPostgres {
    bin_dir: PathBuf,
    dir: PathBuf,
    port: u16,
    as_postgres_user: bool,
    stopped: bool,
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().map(|o| o.stdout.starts_with(b"0\n")).unwrap_or(false)
}

/// Finds `initdb`: on PATH, else in the newest `/usr/lib/postgresql/<version>/bin`.
fn find_bin_dir() -> Option<PathBuf> {
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if dir.join("initdb").exists() {
            return Some(dir);
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir(PG_LIB_DIR)
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let version = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

fn free_port() -> Result<u16, PostgresError> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(PostgresError::Port)?;
    Ok(listener.local_addr().map_err(PostgresError::Port)?.port())
}

impl EphemeralPostgres {
    /// Creates and starts a cluster; trust authentication for user `postgres` on 127.0.0.1.
    pub fn start() -> Result<Self, PostgresError> {
        let bin_dir = find_bin_dir().ok_or(PostgresError::BinariesMissing)?;
        let as_postgres_user = is_root();
        let dir = std::env::temp_dir().join(format!("payrail-pg-{}-{}", std::process::id(), crate::ids::new_id("tmp")));
        std::fs::create_dir_all(&dir).map_err(PostgresError::TempDir)?;
        let port = free_port()?;
        let cluster = Self { bin_dir, dir, port, as_postgres_user, stopped: false };
        if as_postgres_user {
            cluster.run("chown", Command::new("chown").arg("postgres:postgres").arg(&cluster.dir))?;
        }
        let data = cluster.data_dir();
        let initdb = cluster.bin_dir.join("initdb");
        cluster.run_pg(
            "initdb",
            &initdb,
            &["-D", &data.to_string_lossy(), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync"],
        )?;
        let options = format!(
            "-k {} -p {} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off",
            cluster.dir.display(),
            port
        );
        let pg_ctl = cluster.bin_dir.join("pg_ctl");
        let log = cluster.dir.join("postgres.log");
        cluster.run_pg(
            "pg_ctl start",
            &pg_ctl,
            &["-D", &data.to_string_lossy(), "-l", &log.to_string_lossy(), "-w", "-o", &options, "start"],
        )?;
        Ok(cluster)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The URL of database `name` in this cluster.
    pub fn url(&self, name: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn run(&self, step: &'static str, command: &mut Command) -> Result<(), PostgresError> {
        let out = command.output().map_err(|e| PostgresError::Command { step, detail: e.to_string() })?;
        if out.status.success() {
            Ok(())
        } else {
            Err(PostgresError::Command {
                step,
                detail: format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
            })
        }
    }

    fn run_pg(&self, step: &'static str, program: &Path, args: &[&str]) -> Result<(), PostgresError> {
        if self.as_postgres_user {
            self.run(step, Command::new("runuser").args(["-u", "postgres", "--"]).arg(program).args(args))
        } else {
            self.run(step, Command::new(program).args(args))
        }
    }

    /// Stops the server (fast shutdown) and removes its files.
    pub fn stop(&mut self) -> Result<(), PostgresError> {
        if self.stopped {
            return Ok(());
        }
        self.stopped = true;
        let pg_ctl = self.bin_dir.join("pg_ctl");
        let data = self.data_dir();
        let result = self.run_pg("pg_ctl stop", &pg_ctl, &["-D", &data.to_string_lossy(), "-m", "fast", "-w", "stop"]);
        // The files are throw-away; a failure to delete them is not worth failing shutdown for.
        let _ = std::fs::remove_dir_all(&self.dir);
        result
    }
}

impl Drop for EphemeralPostgres {
    fn drop(&mut self) {
        if let Err(error) = self.stop() {
            tracing::warn!(target: "devnet", %error, "ephemeral PostgreSQL did not stop cleanly");
        }
    }
}
