//! The parts a scenario runs against: a fresh database, an anvil with the dev contracts, `payrail
//! serve` processes on fixed loopback ports (so a restarted one answers where the killed one did),
//! a payer, a miner, and the checks that read the outcome back from the database.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use alloy::eips::Encodable2718;
use alloy::network::EthereumWallet;
use alloy::primitives::{Address, U256};
use alloy::providers::{Provider, ProviderBuilder};
use alloy::rpc::types::TransactionRequest;
use alloy::signers::local::PrivateKeySigner;
use anyhow::{bail, Context, Result};
use payrail::chain::evm::contracts::TestToken;
use payrail_devnet::anvil::{deploy_dev_contracts, Anvil, DevContracts, DEV_PAYER_KEY};
use serde_json::{json, Value};
use sqlx::PgPool;
use tokio::process::Child;

use crate::common;

pub const POLYGON: &str = "eip155:137";
pub const POL: &str = "eip155:137/slip44:966";
/// The watcher's job lock for Polygon (`chain::evm::watcher`).
pub const WATCH_LOCK: &str = "payrail.watch.eip155:137";
/// How long one API call may take before it counts as failed (the daemon may be down).
const API_TIMEOUT_MS: u64 = 3_000;

/// A database of its own for one scenario, migrated; dropped by [`Db::drop_database`].
pub struct Db {
    pub name: String,
    pub url: String,
    pub pool: PgPool,
    admin: PgPool,
}

impl Db {
    /// On the server of `DATABASE_URL`.
    pub async fn create(scenario: &str) -> Result<Self> {
        Self::create_on(&std::env::var("DATABASE_URL").context("DATABASE_URL")?, scenario).await
    }

    /// On the server `admin_url` connects to (a [`Cluster`] of the scenario's own, say).
    pub async fn create_on(admin_url: &str, scenario: &str) -> Result<Self> {
        // payrail's own pool: a URL naming several hosts follows their primary, as the daemon does.
        let admin = payrail::db::connect(admin_url, 4).await.with_context(|| format!("connecting to {admin_url}"))?;
        let name = format!("payrail_chaos_{}_{}", scenario.replace('-', "_"), std::process::id());
        sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&admin).await?;
        sqlx::query(&format!("CREATE DATABASE {name}")).execute(&admin).await?;
        let (base, _) = admin_url.rsplit_once('/').context("DATABASE_URL names a database")?;
        let url = format!("{base}/{name}");
        let pool = payrail::db::connect(&url, 10).await?;
        payrail::db::migrate(&pool).await?;
        Ok(Self { name, url, pool, admin })
    }

    pub async fn drop_database(self) -> Result<()> {
        self.pool.close().await;
        sqlx::query(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name)).execute(&self.admin).await?;
        Ok(())
    }
}

/// A PostgreSQL server of the scenario's own on a loopback port (initdb into a temporary directory),
/// so that it can be stopped, crashed and restarted without touching the machine's server. Run as
/// the `postgres` user when the harness runs as root (the server refuses root).
pub struct Cluster {
    pub port: u16,
    dir: PathBuf,
    bin: PathBuf,
    /// The small volume (a tmpfs) its data directory lives on, when it has one.
    volume: Option<PathBuf>,
}

impl Cluster {
    /// Creates and starts one; `settings` are extra `-c name=value` server settings.
    pub async fn start(settings: &[&str]) -> Result<Self> {
        Self::start_on(settings, None).await
    }

    /// As [`Self::start`], with the data directory on a volume of its own of `size_mb` (a tmpfs;
    /// mounting needs root) and the WAL beside it on the machine's disk: filling the volume fills
    /// the disk the tables are on, as a full data volume does, without stopping the WAL.
    pub async fn start_on_volume(settings: &[&str], size_mb: u32) -> Result<Self> {
        Self::start_on(settings, Some(size_mb)).await
    }

    async fn start_on(settings: &[&str], volume_mb: Option<u32>) -> Result<Self> {
        let bin = postgres_bin_dir()?;
        let dir = std::env::temp_dir().join(format!("payrail-chaos-pg-{}-{}", std::process::id(), free_port()?));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let volume = match volume_mb {
            Some(size_mb) => {
                if !running_as_root() {
                    bail!("a volume of its own for the database needs root (mount -t tmpfs)");
                }
                let volume = dir.join("volume");
                std::fs::create_dir_all(&volume)?;
                let out = std::process::Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={size_mb}m"), "tmpfs"]).arg(&volume).output()?;
                if !out.status.success() {
                    bail!("mount -t tmpfs {}: {}", volume.display(), String::from_utf8_lossy(&out.stderr));
                }
                Some(volume)
            }
            None => None,
        };
        let cluster = Self { port: free_port()?, dir, bin, volume };
        give_to_server_user(&cluster.dir)?;
        let data = cluster.data_dir();
        let wal = cluster.dir.join("wal");
        let mut initdb = vec!["-D", path_str(&data)?, "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync"];
        if cluster.volume.is_some() {
            initdb.extend(["--waldir", path_str(&wal)?]);
        }
        cluster.run(cluster.bin.join("initdb"), &initdb).await?;
        let mut options = format!(
            "-k {} -p {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200 -c log_min_messages=warning",
            path_str(&cluster.dir)?,
            cluster.port
        );
        for setting in settings {
            options.push_str(&format!(" -c {setting}"));
        }
        std::fs::write(cluster.dir.join("options"), &options)?;
        cluster.up().await?;
        Ok(cluster)
    }

    fn data_dir(&self) -> PathBuf {
        self.volume.as_ref().unwrap_or(&self.dir).join("data")
    }

    /// Fills its volume to the last byte with a ballast file; how many MB it took.
    pub fn fill_volume(&self) -> Result<u64> {
        use std::io::Write;
        let volume = self.volume.as_ref().context("the cluster has no volume of its own")?;
        let mut ballast = std::fs::File::create(volume.join("ballast"))?;
        let chunk = vec![0u8; 1 << 20];
        let mut written = 0u64;
        loop {
            match ballast.write(&chunk) {
                Ok(0) => break,
                Ok(n) => written += n as u64,
                Err(e) if e.raw_os_error() == Some(28) => break,
                Err(e) => return Err(e.into()),
            }
        }
        // The last partial pages too.
        while ballast.write(&[0u8; 512]).is_ok_and(|n| n > 0) {}
        Ok(written >> 20)
    }

    /// Gives the space back.
    pub fn free_volume(&self) -> Result<()> {
        let volume = self.volume.as_ref().context("the cluster has no volume of its own")?;
        std::fs::remove_file(volume.join("ballast"))?;
        Ok(())
    }

    /// The server's log, for what it said about the fault.
    pub fn server_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    /// The URL of its `postgres` database.
    pub fn admin_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Starts the stopped server and waits until it accepts connections (crash recovery included).
    pub async fn up(&self) -> Result<()> {
        let options = std::fs::read_to_string(self.dir.join("options"))?;
        let data = self.data_dir();
        let log = self.dir.join("server.log");
        self.run(self.bin.join("pg_ctl"), &["-D", path_str(&data)?, "-l", path_str(&log)?, "-w", "-t", "60", "-o", &options, "start"]).await
    }

    /// Stops the server: `immediate` is a crash (every backend killed, recovery from WAL at the next
    /// start), `fast` a clean shutdown that still ends every session.
    pub async fn down(&self, mode: &str) -> Result<()> {
        let data = self.data_dir();
        self.run(self.bin.join("pg_ctl"), &["-D", path_str(&data)?, "-m", mode, "-w", "-t", "60", "stop"]).await
    }

    async fn run(&self, program: PathBuf, args: &[&str]) -> Result<()> {
        let mut command = tokio::process::Command::from(as_server_user(&program.to_string_lossy(), &self.dir));
        let out = command.args(args).stdin(std::process::Stdio::null()).output().await.with_context(|| format!("running {}", program.display()))?;
        if !out.status.success() {
            bail!("{} {}: {}{}", program.display(), args.join(" "), String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let data = self.data_dir();
        let pg_ctl = self.bin.join("pg_ctl");
        let _ = as_server_user(&pg_ctl.to_string_lossy(), &self.dir).arg("-D").arg(&data).args(["-m", "immediate", "-w", "stop"]).output();
        if let Some(volume) = &self.volume {
            let _ = std::process::Command::new("umount").arg(volume).output();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// PgBouncer (Debian's `pgbouncer`, installed by `scripts/chaos` when missing) on a loopback port
/// in front of the PostgreSQL at `upstream_port`, in `pool_mode` (`session` or `transaction`).
/// Runs as the `postgres` user when the harness is root (it refuses root).
pub struct PgBouncer {
    pub port: u16,
    pool_mode: String,
    upstream_port: u16,
    dir: PathBuf,
    child: Option<std::process::Child>,
}

impl PgBouncer {
    pub async fn start(upstream_port: u16, pool_mode: &str) -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("payrail-chaos-pgbouncer-{}-{}", std::process::id(), free_port()?));
        std::fs::create_dir_all(&dir)?;
        let mut bouncer = Self { port: free_port()?, pool_mode: pool_mode.to_owned(), upstream_port, dir, child: None };
        bouncer.up().await?;
        Ok(bouncer)
    }

    /// The URL of `database` through the pooler.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// Starts it (again) and waits until it accepts connections.
    pub async fn up(&mut self) -> Result<()> {
        let ini = self.dir.join("pgbouncer.ini");
        std::fs::write(self.dir.join("userlist.txt"), "\"postgres\" \"\"\n")?;
        std::fs::write(
            &ini,
            format!(
                "[databases]\n* = host=127.0.0.1 port={upstream}\n\n[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\n\
                 unix_socket_dir =\nauth_type = trust\nauth_file = {dir}/userlist.txt\npool_mode = {mode}\n\
                 max_client_conn = 1000\ndefault_pool_size = 60\nignore_startup_parameters = extra_float_digits,options\n\
                 logfile = {dir}/pgbouncer.log\npidfile = {dir}/pgbouncer.pid\n",
                upstream = self.upstream_port,
                port = self.port,
                dir = path_str(&self.dir)?,
                mode = self.pool_mode,
            ),
        )?;
        give_to_server_user(&self.dir)?;
        let child = as_server_user(pgbouncer_program(), &self.dir)
            .arg(&ini)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .context("starting pgbouncer (Debian package pgbouncer; scripts/chaos installs it)")?;
        self.child = Some(child);
        let started = Instant::now();
        while tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await.is_err() {
            if started.elapsed() > Duration::from_secs(10) {
                bail!("pgbouncer did not listen on {} within 10 s", self.port);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    /// SIGKILL: every client and server connection through it breaks at once.
    pub fn kill9(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            // runuser passes SIGKILL on to nobody: kill the pooler by its pid file as well.
            if let Ok(pid) = std::fs::read_to_string(self.dir.join("pgbouncer.pid")) {
                let _ = std::process::Command::new("kill").args(["-9", pid.trim()]).status();
            }
            let _ = child.kill();
            let _ = child.wait();
            let _ = std::fs::remove_file(self.dir.join("pgbouncer.pid"));
        }
        Ok(())
    }
}

/// Debian installs it under /usr/sbin, which a non-root PATH may lack.
fn pgbouncer_program() -> &'static str {
    if std::path::Path::new("/usr/sbin/pgbouncer").exists() {
        "/usr/sbin/pgbouncer"
    } else {
        "pgbouncer"
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        let _ = self.kill9();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A PostgreSQL cluster run by Patroni (Debian's `patroni` and `etcd-server`, installed by
/// `scripts/chaos` when missing): one etcd, a primary and a synchronous standby on loopback ports,
/// failing over within about ten seconds (`ttl` 10). Torn down when dropped.
pub struct Patroni {
    dir: PathBuf,
    etcd: std::process::Child,
    nodes: Vec<PatroniNode>,
}

pub struct PatroniNode {
    pub name: String,
    pub pg_port: u16,
    pub api_port: u16,
    config: PathBuf,
    data: PathBuf,
    child: Option<std::process::Child>,
}

impl Patroni {
    pub async fn start() -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("payrail-chaos-patroni-{}-{}", std::process::id(), free_port()?));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let bin = postgres_bin_dir()?;
        let (client, peer) = (free_port()?, free_port()?);
        let mut nodes = Vec::new();
        for name in ["n1", "n2"] {
            let (pg_port, api_port) = (free_port()?, free_port()?);
            let data = dir.join(name);
            let config = dir.join(format!("{name}.yml"));
            std::fs::write(
                &config,
                format!(
                    r#"scope: payrail-chaos
name: {name}
restapi:
  listen: 127.0.0.1:{api_port}
  connect_address: 127.0.0.1:{api_port}
etcd3:
  hosts: 127.0.0.1:{client}
bootstrap:
  dcs:
    ttl: 10
    loop_wait: 1
    retry_timeout: 4
    maximum_lag_on_failover: 1048576
    synchronous_mode: true
    postgresql:
      use_pg_rewind: true
      parameters:
        wal_log_hints: "on"
        max_connections: 200
        fsync: "off"
  initdb:
    - encoding: UTF8
    - auth: trust
  pg_hba:
    - host all all 127.0.0.1/32 trust
    - host replication all 127.0.0.1/32 trust
postgresql:
  listen: 127.0.0.1:{pg_port}
  connect_address: 127.0.0.1:{pg_port}
  data_dir: {data}
  bin_dir: {bin}
  pgpass: {dir}/pgpass-{name}
  authentication:
    superuser:
      username: postgres
    replication:
      username: postgres
    rewind:
      username: postgres
  parameters:
    unix_socket_directories: {dir}
"#,
                    data = path_str(&data)?,
                    bin = path_str(&bin)?,
                    dir = path_str(&dir)?,
                ),
            )?;
            nodes.push(PatroniNode { name: name.to_owned(), pg_port, api_port, config, data, child: None });
        }
        give_to_server_user(&dir)?;
        let etcd = as_server_user("etcd", &dir)
            .args(["--name", "e1", "--data-dir"])
            .arg(dir.join("etcd"))
            .args(["--listen-client-urls", &format!("http://127.0.0.1:{client}"), "--advertise-client-urls", &format!("http://127.0.0.1:{client}")])
            .args(["--listen-peer-urls", &format!("http://127.0.0.1:{peer}"), "--initial-advertise-peer-urls", &format!("http://127.0.0.1:{peer}")])
            .args(["--initial-cluster", &format!("e1=http://127.0.0.1:{peer}")])
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.join("etcd.log"))?)
            .spawn()
            .context("starting etcd (Debian package etcd-server; scripts/chaos installs it)")?;
        let mut cluster = Self { dir, etcd, nodes };
        for i in 0..cluster.nodes.len() {
            cluster.start_node(i)?;
            // The first bootstraps the cluster before the second joins it.
            if i == 0 {
                cluster.wait_until(Duration::from_secs(90), |members| members.iter().any(|(_, role)| role == "leader")).await?;
            }
        }
        cluster.wait_until(Duration::from_secs(120), |members| members.iter().any(|(_, role)| role == "sync_standby")).await?;
        Ok(cluster)
    }

    /// The libpq multi-host URL of `database` over every node.
    pub fn url(&self, database: &str) -> String {
        let hosts: Vec<String> = self.nodes.iter().map(|n| format!("127.0.0.1:{}", n.pg_port)).collect();
        format!("postgres://postgres@{}/{database}?target_session_attrs=read-write", hosts.join(","))
    }

    pub fn start_node(&mut self, index: usize) -> Result<()> {
        let node = &mut self.nodes[index];
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join(format!("{}.log", node.name)))?;
        let child = as_server_user("patroni", &self.dir)
            .arg(&node.config)
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting patroni (Debian package patroni; scripts/chaos installs it)")?;
        node.child = Some(child);
        Ok(())
    }

    /// SIGKILL of a node's Patroni and its PostgreSQL: a machine gone at once.
    pub fn kill_node(&mut self, index: usize) -> Result<()> {
        let node = &mut self.nodes[index];
        let _ = std::process::Command::new("pkill").args(["-9", "-f"]).arg(format!("patroni {}", path_str(&node.config)?)).status();
        if let Ok(pid) = std::fs::read_to_string(node.data.join("postmaster.pid")) {
            if let Some(pid) = pid.lines().next() {
                let _ = std::process::Command::new("kill").args(["-9", pid.trim()]).status();
            }
        }
        if let Some(mut child) = node.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        Ok(())
    }

    /// Members and their roles, from any node's REST API that answers.
    pub async fn members(&self) -> Vec<(String, String)> {
        let client = reqwest::Client::builder().no_proxy().build().unwrap_or_default();
        for node in &self.nodes {
            let reply = client.get(format!("http://127.0.0.1:{}/cluster", node.api_port)).timeout(Duration::from_secs(2)).send().await;
            if let Ok(reply) = reply {
                if let Ok(body) = reply.json::<Value>().await {
                    return body["members"]
                        .as_array()
                        .map(|m| {
                            m.iter()
                                .filter(|m| m["state"] == "running" || m["state"] == "streaming")
                                .map(|m| (m["name"].as_str().unwrap_or_default().to_owned(), m["role"].as_str().unwrap_or_default().to_owned()))
                                .collect()
                        })
                        .unwrap_or_default();
                }
            }
        }
        Vec::new()
    }

    pub fn name(&self, index: usize) -> &str {
        &self.nodes[index].name
    }

    /// The index of the node that leads now.
    pub async fn leader(&self) -> Option<usize> {
        let members = self.members().await;
        let name = members.iter().find(|(_, role)| role == "leader")?.0.clone();
        self.nodes.iter().position(|n| n.name == name)
    }

    pub async fn wait_until(&self, limit: Duration, done: impl Fn(&[(String, String)]) -> bool) -> Result<Duration> {
        let started = Instant::now();
        loop {
            if done(&self.members().await) {
                return Ok(started.elapsed());
            }
            if started.elapsed() > limit {
                bail!("the Patroni cluster did not get there within {limit:?} (logs under {})", self.dir.display());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for Patroni {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            let _ = self.kill_node(i);
        }
        let _ = self.etcd.kill();
        let _ = self.etcd.wait();
        let _ = std::process::Command::new("pkill").args(["-9", "-f"]).arg(self.dir.as_os_str()).status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `program` run as the `postgres` user when the harness is root (PostgreSQL and its tools refuse root).
/// Run from `dir` (the server's own directory): the server's user may not be allowed into the
/// harness's working directory (a private temporary clone), and Patroni does not start there.
fn as_server_user(program: &str, dir: &std::path::Path) -> std::process::Command {
    let mut command = if running_as_root() {
        let mut c = std::process::Command::new("runuser");
        c.args(["-u", "postgres", "--", program]);
        c
    } else {
        std::process::Command::new(program)
    };
    command.current_dir(dir);
    command
}

fn give_to_server_user(dir: &std::path::Path) -> Result<()> {
    if running_as_root() {
        let status = std::process::Command::new("chown").args(["-R", "postgres"]).arg(dir).status()?;
        if !status.success() {
            bail!("chown postgres {}", dir.display());
        }
    }
    Ok(())
}

/// The newest PostgreSQL server's binaries Debian installed (`/usr/lib/postgresql/<version>/bin`).
fn postgres_bin_dir() -> Result<PathBuf> {
    std::fs::read_dir("/usr/lib/postgresql")
        .context("PostgreSQL's server binaries (/usr/lib/postgresql/*/bin)")?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|b| b.join("initdb").exists())
        .max()
        .context("no initdb under /usr/lib/postgresql")
}

fn running_as_root() -> bool {
    std::process::Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

fn path_str(path: &std::path::Path) -> Result<&str> {
    path.to_str().with_context(|| format!("{} is not UTF-8", path.display()))
}

/// A free loopback port (bound and released at once).
pub fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// One `payrail serve` replica: its port and PostgreSQL `application_name` stay the same across
/// restarts, so the API address and the lock holder's identity are stable.
pub struct Replica {
    pub name: String,
    pub port: u16,
    database_url: String,
    /// The Polygon endpoints it is configured with, in order.
    rpc: Vec<String>,
    /// Extra environment (a hot wallet key, say).
    env: Vec<(String, String)>,
    log: PathBuf,
    child: Option<Child>,
    pub starts: u32,
}

impl Replica {
    pub fn new(name: &str, db: &Db, anvil: &Anvil, log_dir: &std::path::Path) -> Result<Self> {
        Ok(Self {
            name: name.to_owned(),
            port: free_port()?,
            database_url: format!("{}?application_name={name}", db.url),
            rpc: vec![anvil.url()],
            env: Vec::new(),
            log: log_dir.join(format!("{name}.log")),
            child: None,
            starts: 0,
        })
    }

    /// Follows Polygon through `urls` (failing over in that order) instead of anvil alone.
    pub fn with_rpc(mut self, urls: Vec<String>) -> Self {
        self.rpc = urls;
        self
    }

    /// Connects through `url` (a pooler, say) instead of straight to the scenario's database.
    pub fn with_database(mut self, url: &str) -> Self {
        self.database_url = format!("{url}?application_name={}", self.name);
        self
    }

    /// Adds `params` (`name=value&…`) to its database URL: server settings through `options[…]`, say.
    pub fn with_url_params(mut self, params: &str) -> Self {
        self.database_url = format!("{}&{params}", self.database_url);
        self
    }

    /// The log file its runs append to.
    pub fn log_file(&self) -> &std::path::Path {
        &self.log
    }

    /// Waits for the process to end by itself, at most `limit`; its exit status.
    pub async fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let child = self.child.as_mut()?;
        tokio::time::timeout(limit, child.wait()).await.ok().and_then(Result::ok)
    }

    pub fn with_env(mut self, name: &str, value: &str) -> Self {
        self.env.push((name.to_owned(), value.to_owned()));
        self
    }

    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn start(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log)?;
        let child = common::payrail_on(&self.database_url, &["serve", "--allow-dev-settings"], "POLYGON", &self.rpc[0])
            .env("PAYRAIL_CHAINS__POLYGON__RPC", serde_json::to_string(&self.rpc)?)
            .env("PAYRAIL_SERVER__LISTEN", format!("127.0.0.1:{}", self.port))
            .env("PAYRAIL_SERVER__REQUEST_TIMEOUT_MS", REQUEST_TIMEOUT_MS.to_string())
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stderr(log)
            .spawn()
            .context("starting payrail serve")?;
        self.child = Some(child);
        self.starts += 1;
        Ok(())
    }

    /// SIGKILL, and wait until the process is gone.
    pub async fn kill9(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill().await.context("SIGKILL")?;
        }
        Ok(())
    }

    /// The running process's id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(tokio::process::Child::id)
    }

    /// Whether the process exited on its own (a crash the scenario did not cause).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }
}

/// An anvil with Polygon's chain id and the dev contracts, mining only on request and per
/// transaction.
pub async fn polygon_anvil() -> Result<(Anvil, DevContracts)> {
    let anvil = Anvil::start(137, 0, None).await.context("anvil")?;
    let contracts = deploy_dev_contracts(&anvil.url()).await.context("dev contracts")?;
    Ok((anvil, contracts))
}

pub async fn rpc(anvil_url: &str, method: &str, params: Value) -> Result<Value> {
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
    let reply: Value = reqwest::Client::new()
        .post(anvil_url)
        .timeout(Duration::from_millis(API_TIMEOUT_MS))
        .json(&body)
        .send()
        .await?
        .json()
        .await?;
    if let Some(error) = reply.get("error") {
        bail!("{method}: {error}");
    }
    Ok(reply["result"].clone())
}

pub async fn mine(anvil_url: &str, blocks: u64) -> Result<()> {
    rpc(anvil_url, "anvil_mine", json!([format!("{blocks:#x}")])).await.map(|_| ())
}

pub async fn tip(anvil_url: &str) -> Result<u64> {
    let hex = rpc(anvil_url, "eth_blockNumber", json!([])).await?;
    let hex = hex.as_str().context("block number")?;
    Ok(u64::from_str_radix(hex.trim_start_matches("0x"), 16)?)
}

pub async fn cursor(pool: &PgPool) -> Result<Option<u64>> {
    let height: Option<i64> =
        sqlx::query_scalar("SELECT height FROM chain_cursors WHERE chain = $1").bind(POLYGON).fetch_optional(pool).await?;
    Ok(height.and_then(|h| u64::try_from(h).ok()))
}

/// Mines `blocks_per_tick` every `tick` until `stop` flips, so confirmations keep accruing.
pub fn spawn_miner(anvil_url: String, tick: Duration, blocks_per_tick: u64, mut stop: tokio::sync::watch::Receiver<bool>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(tick) => { let _ = mine(&anvil_url, blocks_per_tick).await; }
                _ = stop.changed() => return,
            }
        }
    })
}

/// An invoice as the payer needs it.
#[derive(Debug, Clone)]
pub struct Invoice {
    pub id: String,
    pub asset: String,
    pub address: Address,
    pub amount: U256,
}

/// The replicas' request timeout: short, so that a key a killed process left claimed is taken over
/// soon (after the timeout and the daemon's 5 s margin).
const REQUEST_TIMEOUT_MS: u64 = 5_000;
/// How long a key answered "still running" is retried before the client gives up on it: longer
/// than the daemon keeps an unanswered claim.
const STUCK_KEY_PATIENCE: Duration = Duration::from_secs(15);

/// An invoice created over the API; how many Idempotency-Keys the client had to abandon on the
/// way (still answered 409 "still running" after [`STUCK_KEY_PATIENCE`]) and how many it waited
/// for (claimed by a killed process, then taken over).
pub struct Created {
    pub invoice: Invoice,
    pub stuck_keys: u32,
    pub waited_keys: u32,
}

/// Creates an invoice over the API of any of `bases`, retrying (with one idempotency key) while
/// the daemons are down, for at most `patience`. A key left claimed by a killed process is retried
/// until the daemon lets it be taken over, or given up after [`STUCK_KEY_PATIENCE`] for a fresh one.
pub async fn create_invoice(bases: &[String], api_key: &str, key: &str, amount_usd: &str, asset: &str, patience: Duration) -> Result<Created> {
    let client = reqwest::Client::new();
    let started = Instant::now();
    let mut attempt = 0usize;
    let mut stuck_keys = 0u32;
    let mut key = key.to_owned();
    let mut stuck_since: Option<Instant> = None;
    let mut waited = false;
    loop {
        let base = &bases[attempt % bases.len()];
        attempt += 1;
        let reply = client
            .post(format!("{base}/v1/invoices"))
            .bearer_auth(api_key)
            .header("Idempotency-Key", &key)
            .timeout(Duration::from_millis(API_TIMEOUT_MS))
            .json(&json!({"amount": amount_usd, "currency": "USD", "accepted": [asset], "expires_in": 3600}))
            .send()
            .await;
        match reply {
            Ok(r) if r.status().is_success() => {
                let view: Value = r.json().await?;
                let option = view["payment_options"]
                    .as_array()
                    .and_then(|o| o.iter().find(|o| o["asset"] == asset))
                    .context("payment option")?;
                let invoice = Invoice {
                    id: view["id"].as_str().context("id")?.to_owned(),
                    asset: asset.to_owned(),
                    address: option["address"].as_str().context("address")?.parse()?,
                    amount: option["amount_minor"].as_str().context("amount")?.parse()?,
                };
                return Ok(Created { invoice, stuck_keys, waited_keys: u32::from(waited) });
            }
            Ok(r) if r.status().as_u16() == 409 => {
                let body = r.text().await.unwrap_or_default();
                if !body.contains("still running") {
                    bail!("invoice refused: 409 {body}");
                }
                waited = true;
                let since = *stuck_since.get_or_insert_with(Instant::now);
                if since.elapsed() > STUCK_KEY_PATIENCE {
                    eprintln!("chaos: Idempotency-Key {key} still claimed {STUCK_KEY_PATIENCE:?} after a kill; using a new key");
                    stuck_keys += 1;
                    key = format!("{key}-retry");
                    stuck_since = None;
                }
            }
            Ok(r) if r.status().is_client_error() && r.status().as_u16() != 408 && r.status().as_u16() != 429 => {
                bail!("invoice refused: {} {}", r.status(), r.text().await.unwrap_or_default());
            }
            _ => {}
        }
        if started.elapsed() > patience {
            bail!("no replica answered POST /v1/invoices within {patience:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The funded dev payer on one anvil.
pub struct Payer {
    url: alloy::transports::http::reqwest::Url,
    usdc: Address,
}

impl Payer {
    pub fn new(anvil: &Anvil, usdc: Address) -> Result<Self> {
        Ok(Self { url: anvil.url().parse()?, usdc })
    }

    /// Pays `invoice` in full; returns the transaction hash once mined.
    /// Pays `invoice` as a wallet would, in a way a loaded machine cannot turn into a lost or a
    /// second payment: the transaction is signed once, and its same bytes are sent again while the
    /// node does not know its hash (a resend cannot pay twice); then its receipt is asked for by
    /// hash. A failure says what the node last answered.
    pub async fn pay(&self, invoice: &Invoice) -> Result<String> {
        let signer: PrivateKeySigner = DEV_PAYER_KEY.parse()?;
        let from = signer.address();
        // A provider per try: its nonce cache must not remember a nonce that was never sent.
        let connect = || ProviderBuilder::new().wallet(EthereumWallet::from(signer.clone())).connect_http(self.url.clone());
        let provider = connect();
        let request = if invoice.asset == POL {
            TransactionRequest::default().to(invoice.address).value(invoice.amount)
        } else {
            TestToken::new(self.usdc, &provider).transfer(invoice.address, invoice.amount).into_transaction_request()
        }
        .from(from);
        let deadline = Instant::now() + PAY_PATIENCE;
        // Filling reads the nonce and fees and signs; nothing is sent yet, so it can be retried.
        let signed = loop {
            match connect().fill(request.clone()).await {
                Ok(filled) => break filled.try_into_envelope().map_err(|e| anyhow::anyhow!("unsigned transaction: {e}"))?,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("chaos: signing the payment to {} failed, again: {e}", invoice.id);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => return Err(e).with_context(|| format!("signing the payment to {}", invoice.id)),
            }
        };
        let hash = *signed.tx_hash();
        let raw = signed.encoded_2718();
        let mut last = "nothing yet".to_owned();
        loop {
            match provider.get_transaction_receipt(hash).await {
                Ok(Some(receipt)) if receipt.status() => return Ok(format!("{hash:#x}")),
                Ok(Some(_)) => bail!("payment to {} reverted", invoice.id),
                Ok(None) => match provider.get_transaction_by_hash(hash).await {
                    Ok(Some(_)) => last = "known, not yet in a block".to_owned(),
                    Ok(None) => {
                        if let Err(e) = provider.send_raw_transaction(&raw).await {
                            last = format!("sending: {e}");
                        }
                    }
                    Err(e) => last = format!("looking it up: {e}"),
                },
                Err(e) => last = format!("its receipt: {e}"),
            }
            if Instant::now() >= deadline {
                bail!("payment {hash:#x} to {} not in a block after {} s (last: {last})", invoice.id, PAY_PATIENCE.as_secs());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// How long a payment may take from signing to its receipt.
const PAY_PATIENCE: Duration = Duration::from_secs(60);

impl Payer {
    /// Sends `amount` USDC units to `to` (funding a contract, say).
    pub async fn send_usdc(&self, to: Address, amount: U256) -> Result<()> {
        let signer: PrivateKeySigner = DEV_PAYER_KEY.parse()?;
        let provider = ProviderBuilder::new().wallet(EthereumWallet::from(signer)).connect_http(self.url.clone());
        let receipt = TestToken::new(self.usdc, &provider).transfer(to, amount).send().await?.get_receipt().await?;
        if !receipt.status() {
            bail!("USDC transfer to {to} reverted");
        }
        Ok(())
    }

    /// USDC units `owner` holds.
    pub async fn usdc_of(&self, owner: Address) -> Result<U256> {
        let provider = ProviderBuilder::new().connect_http(self.url.clone());
        Ok(TestToken::new(self.usdc, &provider).balanceOf(owner).call().await?)
    }
}

/// Alternates USDC and native POL, with varying fiat amounts under the lowest confirmation tier.
pub fn asset_and_amount(i: usize) -> (&'static str, String) {
    let asset = if i % 2 == 0 { common::USDC_POLYGON } else { POL };
    (asset, format!("{}.{:02}", 1 + i % 9, (i * 37) % 100))
}

/// Waits until every invoice is `paid` (or `deadline` passes); returns how many are not.
pub async fn wait_paid(pool: &PgPool, anvil_url: &str, invoices: &[Invoice], deadline: Duration) -> Result<usize> {
    let ids: Vec<String> = invoices.iter().map(|i| i.id.clone()).collect();
    let started = Instant::now();
    loop {
        let paid: i64 = sqlx::query_scalar("SELECT count(*) FROM invoices WHERE id = ANY($1) AND status = 'paid'")
            .bind(&ids)
            .fetch_one(pool)
            .await?;
        let unpaid = ids.len() - usize::try_from(paid)?;
        if unpaid == 0 || started.elapsed() > deadline {
            return Ok(unpaid);
        }
        mine(anvil_url, 4).await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Transfers credited more than once: per sent transaction, more than one payment row or more than
/// one `payment` ledger entry; and, per asset, confirmed payments summing to more than was sent.
pub async fn doubled(pool: &PgPool, sent: &[(Invoice, String)]) -> Result<usize> {
    let mut doubled = 0;
    for (_, hash) in sent {
        let pattern = format!("%{}%", hash.to_lowercase());
        let payments: i64 = sqlx::query_scalar("SELECT count(*) FROM payments WHERE lower(tx_ref) LIKE $1 AND status = 'confirmed'")
            .bind(&pattern)
            .fetch_one(pool)
            .await?;
        let entries: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM journal_entries e WHERE e.kind = 'payment' AND lower(e.idempotency_key) LIKE $1 \
             AND NOT EXISTS (SELECT 1 FROM journal_entries r WHERE r.reverses_entry_id = e.id)",
        )
        .bind(&pattern)
        .fetch_one(pool)
        .await?;
        if payments > 1 || entries > 1 {
            doubled += 1;
        }
    }
    // Payments the watcher found by other means (balance checks) count too: the confirmed total
    // per asset may not exceed what was sent.
    let mut sent_per_asset: BTreeMap<String, U256> = BTreeMap::new();
    for (invoice, _) in sent {
        let total = sent_per_asset.entry(invoice.asset.to_lowercase()).or_default();
        *total = total.checked_add(invoice.amount).context("sum overflows")?;
    }
    let confirmed: Vec<(String, String)> = sqlx::query_as(
        "SELECT lower(asset), sum(amount_minor)::text FROM payments WHERE status = 'confirmed' GROUP BY lower(asset)",
    )
    .fetch_all(pool)
    .await?;
    for (asset, total) in confirmed {
        let total: U256 = total.parse()?;
        let expected = sent_per_asset.get(&asset).copied().unwrap_or_default();
        if total > expected {
            eprintln!("chaos: {asset}: confirmed {total} > sent {expected}");
            doubled += 1;
        }
    }
    Ok(doubled)
}

/// `payrail reconcile --chain polygon` over the whole chain; true when it reports everything matched.
pub async fn reconcile_clean(db: &Db, anvil: &Anvil, log_dir: &std::path::Path) -> Result<bool> {
    reconcile(common::payrail_on(&db.url, &["reconcile", "--chain", "polygon"], "POLYGON", &anvil.url()), log_dir, "reconcile").await
}

/// Runs a `payrail reconcile` command (at most 2 minutes), keeping its report and log as
/// `{name}.json` and `{name}.err` in `log_dir`; true when it reports everything matched.
pub async fn reconcile(mut command: tokio::process::Command, log_dir: &std::path::Path, name: &str) -> Result<bool> {
    let out = command.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).output();
    let out = tokio::time::timeout(Duration::from_secs(120), out).await.context("reconcile took over 120 s")??;
    std::fs::write(log_dir.join(format!("{name}.json")), &out.stdout)?;
    std::fs::write(log_dir.join(format!("{name}.err")), &out.stderr)?;
    Ok(out.status.success())
}

/// A fresh directory for a scenario's logs, under the target directory or the system's temp.
pub fn log_dir(scenario: &str) -> Result<PathBuf> {
    let root = std::env::var_os("CHAOS_LOG_DIR").map_or_else(|| std::env::temp_dir().join("payrail-chaos"), PathBuf::from);
    let dir = root.join(scenario);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Seeded pseudo-random numbers (xorshift): the same run faults at the same moments.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
    pub fn millis_between(&mut self, low_ms: u64, high_ms: u64) -> Duration {
        Duration::from_millis(low_ms + self.below(high_ms.saturating_sub(low_ms) + 1))
    }
}

/// A webhook receiver on loopback that counts deliveries by the `Payrail-Event-Id` header and keeps
/// the order of their first arrival. While [`Receiver::set_down`] is on it answers 503 to everything
/// (an endpoint that is down) and counts those refusals instead.
pub struct Receiver {
    pub url: String,
    deliveries: Arc<std::sync::Mutex<Deliveries>>,
    down: Arc<std::sync::atomic::AtomicBool>,
    server: tokio::task::JoinHandle<()>,
}

#[derive(Default, Clone)]
pub struct Deliveries {
    /// Accepted deliveries per event id.
    pub count: BTreeMap<String, u32>,
    /// Event ids in the order they were first accepted.
    pub order: Vec<String>,
    /// Attempts answered 503 while down.
    pub refused: u32,
}

impl Receiver {
    pub async fn start() -> Result<Self> {
        let deliveries: Arc<std::sync::Mutex<Deliveries>> = Arc::default();
        let down = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (seen, is_down) = (deliveries.clone(), down.clone());
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: axum::http::HeaderMap| {
                let (seen, is_down) = (seen.clone(), is_down.clone());
                async move {
                    let id = headers
                        .get(payrail::webhook::dispatch::EVENT_ID_HEADER)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("(none)")
                        .to_owned();
                    let Ok(mut seen) = seen.lock() else { return axum::http::StatusCode::INTERNAL_SERVER_ERROR };
                    if is_down.load(std::sync::atomic::Ordering::SeqCst) {
                        seen.refused += 1;
                        return axum::http::StatusCode::SERVICE_UNAVAILABLE;
                    }
                    let n = seen.count.entry(id.clone()).or_default();
                    *n += 1;
                    if *n == 1 {
                        seen.order.push(id);
                    }
                    axum::http::StatusCode::OK
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}/hook", listener.local_addr()?);
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { url, deliveries, down, server })
    }

    /// Deliveries so far, by event id.
    pub fn deliveries(&self) -> BTreeMap<String, u32> {
        self.log().count
    }

    pub fn log(&self) -> Deliveries {
        self.deliveries.lock().map(|d| d.clone()).unwrap_or_default()
    }

    pub fn set_down(&self, down: bool) {
        self.down.store(down, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// Registers `url` for every event type of the merchant behind `api_key`.
pub async fn register_endpoint(base: &str, api_key: &str, url: &str) -> Result<()> {
    let reply = reqwest::Client::new()
        .post(format!("{base}/v1/webhook_endpoints"))
        .bearer_auth(api_key)
        .timeout(Duration::from_millis(API_TIMEOUT_MS))
        .json(&json!({"url": url, "events": ["*"]}))
        .send()
        .await?;
    if !reply.status().is_success() {
        bail!("webhook endpoint refused: {} {}", reply.status(), reply.text().await.unwrap_or_default());
    }
    Ok(())
}

/// Events the receiver should have had: every outbox event except those whose delivery the
/// dispatcher superseded by a newer event about the same object (by design).
/// Waits, at most `limit`, until `receiver` has every event the outbox says is owed to it; how many
/// it still lacks then.
pub async fn wait_delivered(pool: &PgPool, receiver: &Receiver, limit: Duration) -> Result<usize> {
    let started = Instant::now();
    loop {
        let delivered = receiver.deliveries();
        let missing = expected_events(pool).await?.into_iter().filter(|id| !delivered.contains_key(id)).count();
        if missing == 0 || started.elapsed() > limit {
            return Ok(missing);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

pub async fn expected_events(pool: &PgPool) -> Result<Vec<String>> {
    Ok(sqlx::query_scalar(
        "SELECT o.event_id FROM outbox o WHERE NOT EXISTS \
         (SELECT 1 FROM webhook_deliveries d WHERE d.outbox_id = o.id AND d.status = 'superseded') ORDER BY o.id",
    )
    .fetch_all(pool)
    .await?)
}

/// Events accepted out of outbox order (the endpoint's deliveries are sent oldest first).
pub async fn out_of_order(pool: &PgPool, order: &[String]) -> Result<usize> {
    let ids: Vec<(String, i64)> = sqlx::query_as("SELECT event_id, id FROM outbox WHERE event_id = ANY($1)").bind(order).fetch_all(pool).await?;
    let position: BTreeMap<String, i64> = ids.into_iter().collect();
    let sequence: Vec<i64> = order.iter().filter_map(|id| position.get(id).copied()).collect();
    Ok(sequence.windows(2).filter(|w| w[1] < w[0]).count())
}

/// Invoices among `ids` without an `invoice.paid` event in the outbox.
pub async fn invoices_without_paid_event(pool: &PgPool, ids: &[String]) -> Result<usize> {
    let n: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM unnest($1::text[]) AS i(id) WHERE NOT EXISTS \
         (SELECT 1 FROM outbox o WHERE o.object_id = i.id AND o.event_type = 'invoice.paid')",
    )
    .bind(ids)
    .fetch_one(pool)
    .await?;
    Ok(usize::try_from(n)?)
}

/// Waits until no confirmed payment is left unswept and no sweep is in flight (or `deadline`
/// passes); returns how many payments are still unswept then.
pub async fn wait_swept(pool: &PgPool, anvil_url: &str, deadline: Duration) -> Result<usize> {
    let started = Instant::now();
    loop {
        let (unswept, open): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM payments WHERE status = 'confirmed' AND sweep_id IS NULL), \
                    (SELECT count(*) FROM sweeps WHERE status IN ('pending', 'sent'))",
        )
        .fetch_one(pool)
        .await?;
        if (unswept == 0 && open == 0) || started.elapsed() > deadline {
            return Ok(usize::try_from(unswept + open)?);
        }
        mine(anvil_url, 2).await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// What the sweeps table says once the sweeps are done.
pub struct SweepCounts {
    pub confirmed: i64,
    pub failed: i64,
    /// Deposit addresses swept more than once (each got one payment).
    pub doubled: usize,
    /// Confirmed sweeps whose gas was never booked.
    pub unbooked: usize,
}

pub async fn sweep_counts(pool: &PgPool) -> Result<SweepCounts> {
    let (confirmed, failed, addresses_twice, unbooked): (i64, i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM sweeps WHERE status = 'confirmed'), \
                (SELECT count(*) FROM sweeps WHERE status = 'failed'), \
                (SELECT count(*) FROM (SELECT address FROM sweeps WHERE status = 'confirmed' \
                    GROUP BY chain, address HAVING count(*) > 1) a), \
                (SELECT count(*) FROM sweeps s WHERE status = 'confirmed' AND gas_fee > 0 AND NOT EXISTS \
                    (SELECT 1 FROM journal_entries e WHERE e.idempotency_key = 'sweep-gas:' || s.id))",
    )
    .fetch_one(pool)
    .await?;
    Ok(SweepCounts { confirmed, failed, doubled: usize::try_from(addresses_twice)?, unbooked: usize::try_from(unbooked)? })
}

/// Payouts not done: batches still open, plus creators (of `creators`) still owed a balance of
/// `asset` at or above the 1 USD threshold (1,000,000 USDC units).
pub async fn payouts_unsettled(pool: &PgPool, creators: &[String], asset: &str) -> Result<usize> {
    let codes: Vec<String> = creators.iter().map(|id| format!("liabilities:creator:{id}")).collect();
    let (open, owed): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM payout_batches WHERE status IN ('created', 'sent')), \
                (SELECT count(*) FROM (SELECT a.id FROM accounts a JOIN balances b ON b.account_id = a.id \
                    WHERE a.code = ANY($1) AND lower(b.asset) = lower($2) GROUP BY a.id HAVING sum(b.balance) >= 1000000) o)",
    )
    .bind(&codes)
    .bind(asset)
    .fetch_one(pool)
    .await?;
    Ok(usize::try_from(open + owed)?)
}

/// What the confirmed payouts sent `creator`, in minor units.
pub async fn confirmed_payouts(pool: &PgPool, creator: &str) -> Result<U256> {
    let total: String = sqlx::query_scalar(
        "SELECT coalesce(sum(i.amount_minor), 0)::text FROM payout_items i JOIN payout_batches b ON b.id = i.batch_id \
         WHERE i.creator_id = $1 AND b.status = 'confirmed'",
    )
    .bind(creator)
    .fetch_one(pool)
    .await?;
    Ok(total.parse()?)
}

/// What a steady reader of one invoice saw: answers by kind, and the slowest.
#[derive(Debug, Default, Clone)]
pub struct Probed {
    pub ok: u32,
    /// 503 with `Retry-After`: the answer a client can act on.
    pub unavailable: u32,
    /// Anything else 5xx, a 503 without `Retry-After`, or no answer within the client's patience.
    pub bad: u32,
    pub slowest: Duration,
}

/// Reads `GET /v1/invoices/{id}` from `concurrency` clients until `stop` flips. A request gets
/// `patience` (the daemon's request timeout plus a margin) before it counts as hung.
pub fn spawn_prober(base: String, api_key: String, invoice: String, concurrency: usize, patience: Duration, stop: tokio::sync::watch::Receiver<bool>) -> tokio::task::JoinHandle<Probed> {
    tokio::spawn(async move {
        let client = reqwest::Client::new();
        let tasks: Vec<_> = (0..concurrency)
            .map(|_| {
                let (client, base, api_key, invoice, stop) = (client.clone(), base.clone(), api_key.clone(), invoice.clone(), stop.clone());
                tokio::spawn(async move {
                    let mut seen = Probed::default();
                    while !*stop.borrow() {
                        let started = Instant::now();
                        let reply = client.get(format!("{base}/v1/invoices/{invoice}")).bearer_auth(&api_key).timeout(patience).send().await;
                        seen.slowest = seen.slowest.max(started.elapsed());
                        match reply {
                            Ok(r) if r.status().is_success() => seen.ok += 1,
                            Ok(r) if r.status().as_u16() == 503 && r.headers().contains_key("retry-after") => seen.unavailable += 1,
                            Ok(r) if r.status().is_server_error() => {
                                eprintln!("chaos: GET invoice answered {} {}", r.status(), r.text().await.unwrap_or_default());
                                seen.bad += 1;
                            }
                            Ok(_) => seen.ok += 1,
                            Err(e) if e.is_timeout() => {
                                eprintln!("chaos: GET invoice had no answer within {patience:?}");
                                seen.bad += 1;
                            }
                            // Refused connections: the daemon is restarting (not this scenario's fault).
                            Err(_) => {}
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    seen
                })
            })
            .collect();
        let mut all = Probed::default();
        for task in tasks {
            if let Ok(seen) = task.await {
                all.ok += seen.ok;
                all.unavailable += seen.unavailable;
                all.bad += seen.bad;
                all.slowest = all.slowest.max(seen.slowest);
            }
        }
        all
    })
}
