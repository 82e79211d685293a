//! Test support shared by the server's black-box suite, the end-to-end suite
//! and the benchmark harness: a PostgreSQL database that exists for one test
//! (created with a unique name on the machine's server, dropped when dropped
//! — even while unwinding), one-off SQL queries whose results come back as
//! text, condition waits with deadlines, free ports, a TCP proxy that stages
//! outages (closed, reset, black-holed), private PostgreSQL and Redis servers
//! a test may stop and restart, and a `lockstep-server` process waited on until it answers.
//!
//! No dependency on `lockstep-server`: the server's own tests use this crate.

use std::future::Future;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

mod private;
mod process;
mod proxy;

pub use private::{PG_BIN, PrivatePostgres, PrivateRedis};
pub use process::wait_for_status;
pub use proxy::Proxy;

/// Waits until `f` returns `Some`, polling every 25 ms; panics naming `what`
/// after `timeout`. For conditions a test waits on, instead of a sleep.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A loopback TCP port that was free a moment ago (bound, read back, released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// The machine's PostgreSQL (trust auth).
pub const PG_ADDR: &str = "127.0.0.1:5432";
/// A database every test may connect to, to create and drop its own.
pub const PG_ADMIN: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// Rows of a query, every value as text, NULL as `None`.
pub type Rows = Vec<Vec<Option<String>>>;

/// Connects, panicking with a message that says what the tests need.
pub async fn pg_connect(url: &str) -> tokio_postgres::Client {
    let (c, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| {
            panic!("PostgreSQL must run at {PG_ADDR} (user postgres, trust auth): {e}")
        });
    tokio::spawn(conn);
    c
}

/// One SQL query through PostgreSQL's text protocol.
pub async fn pg_query(url: &str, sql: &str) -> Rows {
    pg_connect(url)
        .await
        .simple_query(sql)
        .await
        .expect("query")
        .into_iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => {
                Some((0..r.len()).map(|i| r.get(i).map(str::to_owned)).collect())
            }
            _ => None,
        })
        .collect()
}

/// One SQL query on a SQLite file (waits up to 5 s for the server's writer).
pub fn sqlite_query(path: &Path, sql: &str) -> Rows {
    let conn = rusqlite::Connection::open(path).expect("open sqlite");
    conn.busy_timeout(Duration::from_secs(5))
        .expect("busy timeout");
    let mut st = conn.prepare(sql).expect("prepare");
    let n = st.column_count();
    st.query_map([], |r| {
        (0..n)
            .map(|i| {
                use rusqlite::types::ValueRef as V;
                Ok(match r.get_ref(i)? {
                    V::Null => None,
                    V::Integer(v) => Some(v.to_string()),
                    V::Real(v) => Some(v.to_string()),
                    V::Text(t) => Some(String::from_utf8_lossy(t).into_owned()),
                    V::Blob(b) => Some(format!("{} bytes", b.len())),
                })
            })
            .collect()
    })
    .expect("query")
    .collect::<Result<_, _>>()
    .expect("rows")
}

/// A PostgreSQL database that exists for one test (or one benchmark run).
#[derive(Debug)]
pub struct PgDatabase {
    name: String,
    /// `postgres://…` of a database to create and drop it from.
    admin_url: String,
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

impl PgDatabase {
    /// Creates `<prefix>_<pid>_<n>_<random>` on the machine's PostgreSQL.
    pub async fn create(prefix: &str) -> Self {
        Self::create_at(PG_ADMIN, prefix).await.unwrap_or_else(|e| {
            panic!("PostgreSQL must run at {PG_ADDR} (user postgres, trust auth): {e}")
        })
    }

    /// Creates `<prefix>_<pid>_<n>_<random>` through `admin_url` (a
    /// `postgres://` URL of an existing database).
    pub async fn create_at(admin_url: &str, prefix: &str) -> Result<Self, tokio_postgres::Error> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let name = format!(
            "{prefix}_{}_{}_{nanos:08x}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let (c, conn) = tokio_postgres::connect(admin_url, tokio_postgres::NoTls).await?;
        tokio::spawn(conn);
        c.batch_execute(&format!("CREATE DATABASE {name}")).await?;
        Ok(Self {
            name,
            admin_url: admin_url.to_owned(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The URL at the machine's PostgreSQL.
    pub fn url(&self) -> String {
        self.url_via(PG_ADDR)
    }

    /// The URL through another `host:port` (e.g. a proxy in front of PostgreSQL).
    pub fn url_via(&self, addr: &str) -> String {
        format!("postgres://postgres@{addr}/{}", self.name)
    }

    /// The URL at the server of `admin_url` (its user, host and options).
    pub fn url_at_admin(&self) -> String {
        with_database(&self.admin_url, &self.name)
    }

    /// Keeps the database (not dropped); returns its name.
    pub fn keep(mut self) -> String {
        std::mem::take(&mut self.name)
    }
}

/// `url` (`postgres://user@host:port/db?options`) with the database `db`.
pub fn with_database(url: &str, db: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let path = base.find("://").map_or(0, |i| i + 3);
    let host_end = base[path..].find('/').map_or(base.len(), |i| path + i);
    let mut out = format!("{}/{db}", &base[..host_end]);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let name = std::mem::take(&mut self.name);
        if name.is_empty() {
            return;
        }
        let admin = std::mem::take(&mut self.admin_url);
        // Drop runs inside a runtime (and while unwinding): a thread with its own.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                if let Ok((c, conn)) = tokio_postgres::connect(&admin, tokio_postgres::NoTls).await
                {
                    tokio::spawn(conn);
                    let _ = c
                        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .await;
                }
            });
        })
        .join();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_the_database_name() {
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5432/postgres", "x"),
            "postgres://postgres@127.0.0.1:5432/x"
        );
        assert_eq!(
            with_database("postgres://u@h/p?sslmode=disable", "x"),
            "postgres://u@h/x?sslmode=disable"
        );
        assert_eq!(with_database("postgres://u@h", "x"), "postgres://u@h/x");
    }
}
