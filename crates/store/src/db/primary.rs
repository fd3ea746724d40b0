//! Several database hosts, one primary: the daemon writes to whichever host is the primary now.
//!
//! `database.url` may name several hosts the way libpq does —
//! `postgres://user@db1:5432,db2:5432/payrail?target_session_attrs=read-write` — for a cluster
//! whose primary moves on failover (Patroni and the like). The pool connects to the host that
//! answers as a primary (`pg_is_in_recovery()` false); every new connection checks that it still
//! is (a demoted primary's connections are refused, never written through); and a follower task
//! looks again every [`FOLLOW_EVERY_MS`] and, when the primary has moved, points the pool's new
//! connections at the new one. Connections to the old primary die with it (and are tested before
//! each use), so after a failover every write goes to the new primary within a few seconds.
//!
//! Exactly-once across a failover needs synchronous replication: a commit acknowledged by the old
//! primary must already be on the standby that is promoted (see docs/database.md).

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool};

use super::{DbError, POOL_ACQUIRE_TIMEOUT_MS};

/// How often the follower checks which host is the primary.
pub const FOLLOW_EVERY_MS: u64 = 1_000;
/// How long connecting to one host may take while looking for the primary.
const PROBE_TIMEOUT_MS: u64 = 2_000;

/// The hosts of a URL, each as a one-host URL (`None`: the URL names one host, or is not in the
/// multi-host form). `target_session_attrs` is dropped: the primary is what payrail always wants.
pub fn split_hosts(url: &str) -> Option<Vec<String>> {
    let (scheme, after) = url.split_once("://")?;
    let end = after.find(['/', '?', '#']).unwrap_or(after.len());
    let (authority, rest) = after.split_at(end);
    let (userinfo, hosts) = match authority.rsplit_once('@') {
        Some((userinfo, hosts)) => (format!("{userinfo}@"), hosts),
        None => (String::new(), authority),
    };
    if !hosts.contains(',') {
        return None;
    }
    let rest = without_param(rest, "target_session_attrs");
    Some(hosts.split(',').filter(|h| !h.is_empty()).map(|host| format!("{scheme}://{userinfo}{host}{rest}")).collect())
}

fn without_param(rest: &str, name: &str) -> String {
    let Some((path, query)) = rest.split_once('?') else { return rest.to_owned() };
    let kept: Vec<&str> = query.split('&').filter(|p| p.split('=').next() != Some(name)).collect();
    if kept.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{}", kept.join("&"))
    }
}

/// The first of `hosts` that answers as a primary.
pub async fn find_primary(hosts: &[PgConnectOptions]) -> Option<PgConnectOptions> {
    for options in hosts {
        let probe = async {
            let mut conn = PgConnection::connect_with(options).await.ok()?;
            let standby: bool = sqlx::query_scalar("SELECT pg_is_in_recovery()").fetch_one(&mut conn).await.ok()?;
            let _ = conn.close().await;
            Some(!standby)
        };
        if let Ok(Some(true)) = tokio::time::timeout(Duration::from_millis(PROBE_TIMEOUT_MS), probe).await {
            return Some(options.clone());
        }
    }
    None
}

/// A pool on the primary among `urls`, kept on it by a follower task (see the module docs).
pub async fn connect(urls: &[String], pool_max: u32) -> Result<PgPool, DbError> {
    let hosts: Vec<PgConnectOptions> = urls.iter().map(|u| u.parse()).collect::<Result<_, _>>().map_err(DbError::Url)?;
    let primary = find_primary(&hosts).await.ok_or_else(|| {
        DbError::Connect(sqlx::Error::Configuration(format!("none of the {} database hosts answers as a primary", hosts.len()).into()))
    })?;
    let pool = PgPoolOptions::new()
        .max_connections(pool_max)
        .acquire_timeout(Duration::from_millis(POOL_ACQUIRE_TIMEOUT_MS))
        .after_connect(|conn, _| {
            Box::pin(async move {
                let standby: bool = sqlx::query_scalar("SELECT pg_is_in_recovery()").fetch_one(&mut *conn).await?;
                if standby {
                    return Err(sqlx::Error::Configuration("this database host is a standby now, not the primary".into()));
                }
                Ok(())
            })
        })
        .connect_with(primary)
        .await
        .map_err(DbError::Connect)?;
    tokio::spawn(follow(pool.clone(), hosts));
    Ok(pool)
}

/// Points the pool's new connections at the primary whenever it moves, until the pool closes.
/// The check asks through one of the pool's own connections (tested before use, so a dead primary's
/// is replaced, and a replacement lands only on a primary): no connection is opened for it while
/// the primary stays where it is.
async fn follow(pool: PgPool, hosts: Vec<PgConnectOptions>) {
    while !pool.is_closed() {
        tokio::time::sleep(Duration::from_millis(FOLLOW_EVERY_MS)).await;
        let still = async {
            let mut conn = pool.acquire().await.ok()?;
            let standby: bool = sqlx::query_scalar("SELECT pg_is_in_recovery()").fetch_one(&mut *conn).await.ok()?;
            Some(!standby)
        };
        if let Ok(Some(true)) = tokio::time::timeout(Duration::from_millis(PROBE_TIMEOUT_MS), still).await {
            continue;
        }
        if let Some(primary) = find_primary(&hosts).await {
            let current = pool.connect_options();
            if primary.get_host() != current.get_host() || primary.get_port() != current.get_port() {
                tracing::warn!(target: "db", host = %primary.get_host(), port = primary.get_port(), "the database primary moved: new connections go to it");
            }
            pool.set_connect_options(primary);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_multi_host_url_is_split_into_one_url_per_host() {
        let hosts = split_hosts("postgres://u:p@db1:5432,db2:6432/payrail?target_session_attrs=read-write&sslmode=prefer").expect("hosts");
        assert_eq!(hosts, ["postgres://u:p@db1:5432/payrail?sslmode=prefer", "postgres://u:p@db2:6432/payrail?sslmode=prefer"]);
        assert_eq!(
            split_hosts("postgresql://db1,db2/x?target_session_attrs=read-write").expect("hosts"),
            ["postgresql://db1/x", "postgresql://db2/x"]
        );
        assert_eq!(split_hosts("postgres://u@db1:5432/payrail"), None);
    }
}
