//! Tokens, web sessions and session owners in the configured store (SQLite or
//! PostgreSQL), so that several server instances sharing one database agree
//! on who is who and a revocation reaches all of them.
//!
//! The tables have their own numbered migrations (tracked in
//! `auth_schema_version`), independent of the telemetry schema: the token
//! CLI can create them before the server ever ran, and neither list has to
//! know the other's numbering.

use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use deadpool_postgres::Pool;
use rusqlite::{Connection, OptionalExtension, params};

use super::{Role, Scope};
use crate::store::StoreError;

const SQLITE_MIGRATIONS: &[&str] = &[r#"
CREATE TABLE auth_tokens (
    public_id    TEXT PRIMARY KEY,
    secret_hash  BLOB NOT NULL,          -- SHA-256 of the secret; the secret itself is never stored
    role         TEXT,                   -- viewer | operator | admin (people and tools)
    vin          TEXT,                   -- device token: the one VIN it may write
    vin_prefix   TEXT,                   -- fleet token: the VINs it may write
    label        TEXT NOT NULL DEFAULT '',
    created_at   INTEGER NOT NULL,       -- Unix ms
    expires_at   INTEGER,                -- Unix ms; NULL = does not expire
    revoked_at   INTEGER                 -- Unix ms; NULL = valid
);
CREATE TABLE web_sessions (
    id_hash     BLOB PRIMARY KEY,        -- SHA-256 of the cookie value
    token_id    TEXT,                    -- the token traded for it; NULL = the bootstrap admin token
    role        TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL
);
CREATE TABLE session_owners (
    vin         TEXT NOT NULL,
    session_id  INTEGER NOT NULL,
    credential  TEXT NOT NULL,           -- identity that opened the session: vin:<VIN> or fleet:<prefix>
    PRIMARY KEY (vin, session_id)
);
"#];

const PG_MIGRATIONS: &[&str] = &[r#"
CREATE TABLE auth_tokens (
    public_id    TEXT PRIMARY KEY,
    secret_hash  BYTEA NOT NULL,
    role         TEXT,
    vin          TEXT,
    vin_prefix   TEXT,
    label        TEXT NOT NULL DEFAULT '',
    created_at   BIGINT NOT NULL,
    expires_at   BIGINT,
    revoked_at   BIGINT
);
CREATE TABLE web_sessions (
    id_hash     BYTEA PRIMARY KEY,
    token_id    TEXT,
    role        TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL
);
CREATE TABLE session_owners (
    vin         TEXT NOT NULL,
    session_id  BIGINT NOT NULL,
    credential  TEXT NOT NULL,
    PRIMARY KEY (vin, session_id)
);
"#];

/// One stored token (without its hash).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TokenInfo {
    pub public_id: String,
    pub scope: Scope,
    pub label: String,
    pub created_at_ms: i64,
    pub expires_at_ms: Option<i64>,
    pub revoked_at_ms: Option<i64>,
}

/// A token as needed to verify a presented one.
#[derive(Debug, Clone)]
pub struct TokenRecord {
    pub info: TokenInfo,
    pub secret_hash: Vec<u8>,
}

/// A web session as loaded by its cookie.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebSession {
    pub token_id: Option<String>,
    pub role: Role,
    pub expires_at_ms: i64,
}

/// Where the auth tables live.
#[derive(Clone)]
pub enum AuthDb {
    Sqlite(Arc<Mutex<Connection>>),
    Postgres(Pool),
}

fn scope_columns(scope: &Scope) -> (Option<&str>, Option<&str>, Option<&str>) {
    match scope {
        Scope::Role(r) => (Some(r.as_str()), None, None),
        Scope::Vin(v) => (None, Some(v.as_str()), None),
        Scope::VinPrefix(p) => (None, None, Some(p.as_str())),
        // Never stored: no token is created with it (see `Scope::from_parts`).
        Scope::Vins(_) => (None, None, None),
    }
}

fn scope_from(role: Option<String>, vin: Option<String>, prefix: Option<String>) -> Option<Scope> {
    match (role, vin, prefix) {
        (Some(r), None, None) => r.parse().ok().map(Scope::Role),
        (None, Some(v), None) => Some(Scope::Vin(v)),
        (None, None, Some(p)) => Some(Scope::VinPrefix(p)),
        _ => None,
    }
}

const TOKEN_COLUMNS: &str =
    "public_id, secret_hash, role, vin, vin_prefix, label, created_at, expires_at, revoked_at";

fn sqlite_token(r: &rusqlite::Row<'_>) -> rusqlite::Result<Option<TokenRecord>> {
    let Some(scope) = scope_from(r.get(2)?, r.get(3)?, r.get(4)?) else {
        return Ok(None);
    };
    Ok(Some(TokenRecord {
        secret_hash: r.get(1)?,
        info: TokenInfo {
            public_id: r.get(0)?,
            scope,
            label: r.get(5)?,
            created_at_ms: r.get(6)?,
            expires_at_ms: r.get(7)?,
            revoked_at_ms: r.get(8)?,
        },
    }))
}

fn pg_token(r: &tokio_postgres::Row) -> Option<TokenRecord> {
    Some(TokenRecord {
        secret_hash: r.get(1),
        info: TokenInfo {
            public_id: r.get(0),
            scope: scope_from(r.get(2), r.get(3), r.get(4))?,
            label: r.get(5),
            created_at_ms: r.get(6),
            expires_at_ms: r.get(7),
            revoked_at_ms: r.get(8),
        },
    })
}

fn sqlite_migrate(conn: &mut Connection) -> rusqlite::Result<()> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    tx.execute_batch("CREATE TABLE IF NOT EXISTS auth_schema_version (version INTEGER NOT NULL)")?;
    let applied: i64 = tx.query_row(
        "SELECT COALESCE(MAX(version), 0) FROM auth_schema_version",
        [],
        |r| r.get(0),
    )?;
    for (i, sql) in SQLITE_MIGRATIONS.iter().enumerate().skip(applied as usize) {
        tx.execute_batch(sql)?;
        tx.execute(
            "INSERT INTO auth_schema_version (version) VALUES (?1)",
            [i as i64 + 1],
        )?;
    }
    tx.commit()
}

fn err(e: impl std::fmt::Display) -> StoreError {
    StoreError::unavailable(e)
}

impl AuthDb {
    /// Opens the auth tables of the configured store (creating them if needed).
    pub async fn open(config: &crate::StoreConfig) -> anyhow::Result<Self> {
        match config {
            crate::StoreConfig::Sqlite(path) => Self::open_sqlite(path).await,
            crate::StoreConfig::Postgres(url) => {
                Self::postgres(crate::store::postgres::build_pool(url, 2)?).await
            }
        }
    }

    /// Opens its own connection to the SQLite file and applies the auth migrations.
    pub async fn open_sqlite(path: &Path) -> anyhow::Result<Self> {
        let path = path.to_owned();
        tokio::task::spawn_blocking(move || -> anyhow::Result<Self> {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).with_context(|| {
                    format!("cannot create the data directory {}", dir.display())
                })?;
            }
            let mut conn = Connection::open(&path)
                .with_context(|| format!("cannot open SQLite database {}", path.display()))?;
            conn.busy_timeout(std::time::Duration::from_secs(5))?;
            conn.pragma_update(None, "journal_mode", "WAL")?;
            sqlite_migrate(&mut conn).context("cannot apply the auth migrations")?;
            Ok(Self::Sqlite(Arc::new(Mutex::new(conn))))
        })
        .await?
    }

    /// Uses the store's PostgreSQL pool and applies the auth migrations.
    pub async fn postgres(pool: Pool) -> anyhow::Result<Self> {
        let mut client = pool.get().await.context("cannot reach PostgreSQL")?;
        let tx = client.transaction().await?;
        // Serialise concurrent starts on the same database.
        tx.execute("SELECT pg_advisory_xact_lock(7311208)", &[])
            .await?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS auth_schema_version (version INTEGER PRIMARY KEY)",
        )
        .await?;
        let applied: i32 = tx
            .query_one(
                "SELECT COALESCE(MAX(version), 0) FROM auth_schema_version",
                &[],
            )
            .await?
            .get(0);
        for (i, sql) in PG_MIGRATIONS.iter().enumerate().skip(applied as usize) {
            tx.batch_execute(sql)
                .await
                .with_context(|| format!("auth migration {}", i + 1))?;
            tx.execute(
                "INSERT INTO auth_schema_version (version) VALUES ($1)",
                &[&(i as i32 + 1)],
            )
            .await?;
        }
        tx.commit().await?;
        drop(client);
        Ok(Self::Postgres(pool))
    }

    async fn sqlite<T: Send + 'static>(
        conn: &Arc<Mutex<Connection>>,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        let conn = conn.clone();
        tokio::task::spawn_blocking(move || {
            let conn = conn
                .lock()
                .map_err(|_| err("the SQLite auth connection is poisoned"))?;
            f(&conn).map_err(err)
        })
        .await
        .map_err(err)?
    }

    pub async fn insert_token(&self, rec: &TokenRecord) -> Result<(), StoreError> {
        let rec = rec.clone();
        let sql = format!(
            "INSERT INTO auth_tokens ({TOKEN_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
        );
        match self {
            Self::Sqlite(c) => {
                Self::sqlite(c, move |conn| {
                    let i = &rec.info;
                    let (role, vin, prefix) = scope_columns(&i.scope);
                    conn.execute(
                        &sql.replace('$', "?"),
                        params![
                            i.public_id,
                            rec.secret_hash,
                            role,
                            vin,
                            prefix,
                            i.label,
                            i.created_at_ms,
                            i.expires_at_ms,
                            i.revoked_at_ms
                        ],
                    )
                    .map(drop)
                })
                .await
            }
            Self::Postgres(p) => {
                let c = p.get().await.map_err(err)?;
                let i = &rec.info;
                let (role, vin, prefix) = scope_columns(&i.scope);
                c.execute(
                    &sql,
                    &[
                        &i.public_id,
                        &rec.secret_hash,
                        &role,
                        &vin,
                        &prefix,
                        &i.label,
                        &i.created_at_ms,
                        &i.expires_at_ms,
                        &i.revoked_at_ms,
                    ],
                )
                .await
                .map(drop)
                .map_err(err)
            }
        }
    }

    /// The token with this public id, revoked or not.
    pub async fn token(&self, public_id: &str) -> Result<Option<TokenRecord>, StoreError> {
        let sql = format!("SELECT {TOKEN_COLUMNS} FROM auth_tokens WHERE public_id = $1");
        match self {
            Self::Sqlite(c) => {
                let id = public_id.to_owned();
                Self::sqlite(c, move |conn| {
                    conn.query_row(&sql.replace('$', "?"), [id], sqlite_token)
                        .optional()
                        .map(Option::flatten)
                })
                .await
            }
            Self::Postgres(p) => {
                let c = p.get().await.map_err(err)?;
                let row = c.query_opt(&sql, &[&public_id]).await.map_err(err)?;
                Ok(row.as_ref().and_then(pg_token))
            }
        }
    }

    /// Every token, oldest first.
    pub async fn tokens(&self) -> Result<Vec<TokenInfo>, StoreError> {
        let sql = format!("SELECT {TOKEN_COLUMNS} FROM auth_tokens ORDER BY created_at, public_id");
        match self {
            Self::Sqlite(c) => {
                Self::sqlite(c, move |conn| {
                    let mut st = conn.prepare(&sql)?;
                    let rows = st.query_map([], sqlite_token)?;
                    let mut out = Vec::new();
                    for r in rows {
                        out.extend(r?.map(|t| t.info));
                    }
                    Ok(out)
                })
                .await
            }
            Self::Postgres(p) => {
                let c = p.get().await.map_err(err)?;
                let rows = c.query(&sql, &[]).await.map_err(err)?;
                Ok(rows.iter().filter_map(pg_token).map(|t| t.info).collect())
            }
        }
    }

    /// Marks the token revoked and ends its web sessions; `false` = no such token.
    pub async fn revoke(&self, public_id: &str, now_ms: i64) -> Result<bool, StoreError> {
        const REVOKE: &str =
            "UPDATE auth_tokens SET revoked_at = COALESCE(revoked_at, $1) WHERE public_id = $2";
        const END_SESSIONS: &str = "DELETE FROM web_sessions WHERE token_id = $1";
        match self {
            Self::Sqlite(c) => {
                let id = public_id.to_owned();
                Self::sqlite(c, move |conn| {
                    let n = conn.execute(&REVOKE.replace('$', "?"), params![now_ms, id])?;
                    conn.execute(&END_SESSIONS.replace('$', "?"), [&id])?;
                    Ok(n > 0)
                })
                .await
            }
            Self::Postgres(p) => {
                let c = p.get().await.map_err(err)?;
                let n = c
                    .execute(REVOKE, &[&now_ms, &public_id])
                    .await
                    .map_err(err)?;
                c.execute(END_SESSIONS, &[&public_id]).await.map_err(err)?;
                Ok(n > 0)
            }
        }
    }

    pub async fn insert_session(
        &self,
        id_hash: [u8; 32],
        s: &WebSession,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        const SQL: &str = "INSERT INTO web_sessions (id_hash, token_id, role, created_at, expires_at) VALUES ($1, $2, $3, $4, $5)";
        let s = s.clone();
        match self {
            Self::Sqlite(c) => {
                Self::sqlite(c, move |conn| {
                    // Expired sessions go as new ones come, so the table stays small.
                    conn.execute("DELETE FROM web_sessions WHERE expires_at < ?1", [now_ms])?;
                    conn.execute(
                        &SQL.replace('$', "?"),
                        params![
                            id_hash.to_vec(),
                            s.token_id,
                            s.role.as_str(),
                            now_ms,
                            s.expires_at_ms
                        ],
                    )
                    .map(drop)
                })
                .await
            }
            Self::Postgres(p) => {
                let c = p.get().await.map_err(err)?;
                c.execute("DELETE FROM web_sessions WHERE expires_at < $1", &[&now_ms])
                    .await
                    .map_err(err)?;
                c.execute(
                    SQL,
                    &[
                        &id_hash.to_vec(),
                        &s.token_id,
                        &s.role.as_str(),
                        &now_ms,
                        &s.expires_at_ms,
                    ],
                )
                .await
                .map(drop)
                .map_err(err)
            }
        }
    }

    /// The session with this cookie hash, if it exists (expiry is the caller's check).
    pub async fn session(&self, id_hash: [u8; 32]) -> Result<Option<WebSession>, StoreError> {
        const SQL: &str = "SELECT token_id, role, expires_at FROM web_sessions WHERE id_hash = $1";
        let make = |token_id: Option<String>, role: String, expires_at_ms: i64| {
            role.parse().ok().map(|role| WebSession {
                token_id,
                role,
                expires_at_ms,
            })
        };
        match self {
            Self::Sqlite(c) => {
                let got = Self::sqlite(c, move |conn| {
                    conn.query_row(&SQL.replace('$', "?"), [id_hash.to_vec()], |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                    })
                    .optional()
                })
                .await?;
                Ok(got.and_then(|(t, r, e)| make(t, r, e)))
            }
            Self::Postgres(p) => {
                let c = p.get().await.map_err(err)?;
                let row = c.query_opt(SQL, &[&id_hash.to_vec()]).await.map_err(err)?;
                Ok(row.and_then(|r| make(r.get(0), r.get(1), r.get(2))))
            }
        }
    }

    pub async fn delete_session(&self, id_hash: [u8; 32]) -> Result<(), StoreError> {
        const SQL: &str = "DELETE FROM web_sessions WHERE id_hash = $1";
        match self {
            Self::Sqlite(c) => {
                Self::sqlite(c, move |conn| {
                    conn.execute(&SQL.replace('$', "?"), [id_hash.to_vec()])
                        .map(drop)
                })
                .await
            }
            Self::Postgres(p) => {
                let c = p.get().await.map_err(err)?;
                c.execute(SQL, &[&id_hash.to_vec()])
                    .await
                    .map(drop)
                    .map_err(err)
            }
        }
    }

    /// The identity that owns the session, if any.
    pub async fn session_owner(
        &self,
        vin: &str,
        session_id: u64,
    ) -> Result<Option<String>, StoreError> {
        const SELECT: &str =
            "SELECT credential FROM session_owners WHERE vin = $1 AND session_id = $2";
        let sid = session_id as i64;
        match self {
            Self::Sqlite(c) => {
                let vin = vin.to_owned();
                Self::sqlite(c, move |conn| {
                    conn.query_row(&SELECT.replace('$', "?"), params![vin, sid], |r| r.get(0))
                        .optional()
                })
                .await
            }
            Self::Postgres(p) => {
                let c = p.get().await.map_err(err)?;
                let row = c.query_opt(SELECT, &[&vin, &sid]).await.map_err(err)?;
                Ok(row.map(|r| r.get(0)))
            }
        }
    }

    /// Records `credential` as the owner of the session unless it has one;
    /// returns the owner (the given one, or the one recorded before).
    pub async fn claim_session(
        &self,
        vin: &str,
        session_id: u64,
        credential: &str,
    ) -> Result<String, StoreError> {
        const INSERT: &str = "INSERT INTO session_owners (vin, session_id, credential) VALUES ($1, $2, $3) ON CONFLICT (vin, session_id) DO NOTHING";
        const SELECT: &str =
            "SELECT credential FROM session_owners WHERE vin = $1 AND session_id = $2";
        let sid = session_id as i64;
        match self {
            Self::Sqlite(c) => {
                let (vin, cred) = (vin.to_owned(), credential.to_owned());
                Self::sqlite(c, move |conn| {
                    conn.execute(&INSERT.replace('$', "?"), params![vin, sid, cred])?;
                    conn.query_row(&SELECT.replace('$', "?"), params![vin, sid], |r| r.get(0))
                })
                .await
            }
            Self::Postgres(p) => {
                let c = p.get().await.map_err(err)?;
                c.execute(INSERT, &[&vin, &sid, &credential])
                    .await
                    .map_err(err)?;
                let row = c.query_one(SELECT, &[&vin, &sid]).await.map_err(err)?;
                Ok(row.get(0))
            }
        }
    }
}
