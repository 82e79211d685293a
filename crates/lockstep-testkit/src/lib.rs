//! Test support shared by the server's black-box suite and the end-to-end
//! suite: a PostgreSQL database that exists for one test (created with a
//! unique name on the machine's server, dropped when dropped — even while
//! unwinding), and one-off SQL queries whose results come back as text.

pub mod stall;

pub use stall::StallProxy;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

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

/// A PostgreSQL database that exists for one test.
#[derive(Debug)]
pub struct PgDatabase {
    name: String,
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

impl PgDatabase {
    /// Creates `<prefix>_<pid>_<n>_<random>`.
    pub async fn create(prefix: &str) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let name = format!(
            "{prefix}_{}_{}_{nanos:08x}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        pg_connect(PG_ADMIN)
            .await
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("CREATE DATABASE");
        Self { name }
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
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let name = std::mem::take(&mut self.name);
        // Drop runs inside a runtime (and while unwinding): a thread with its own.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                if let Ok((c, conn)) =
                    tokio_postgres::connect(PG_ADMIN, tokio_postgres::NoTls).await
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
