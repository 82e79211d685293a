//! One logger for the cluster (with `REDIS_URL`): whichever instance a
//! start or stop reaches, they control the same logger child, which runs on
//! the instance holding the lease. Three Redis keys under the prefix:
//!
//! - `logger:want` — the options of the logger the cluster should run
//!   (absent = stopped). A start sets it (`NX`: a second start is 409), a
//!   stop deletes it.
//! - `logger:lease` — the id of the instance running the child, with an
//!   expiry of `LOCKSTEP_LOGGER_LEASE_MS`, renewed by its holder every quarter
//!   of that. If the holder dies, the lease expires and the next instance to
//!   see `want` without a lease takes it and starts the child with the same
//!   options. A holder that shuts down cleanly releases the lease at once
//!   (keeping `want`), so another instance takes over without waiting.
//! - `logger:status` — the holder's [`LoggerStatus`], written on every change
//!   and tick; `GET /logger/status` on every instance answers it (cached
//!   here, refreshed each tick).
//!
//! A stop reaching a non-holder deletes `want`; the holder sees it on its
//! next tick and stops its child, and the stop waits (with a deadline) until
//! the status says stopped. A child that exits by itself (a finished replay)
//! clears `want`: it is not restarted elsewhere. With Redis unreachable,
//! start and stop answer 503 and the running child goes on.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::FutureExt as _;
use futures_util::future::BoxFuture;
use redis::AsyncCommands as _;
use redis::aio::MultiplexedConnection;
use tokio_util::sync::CancellationToken;

use crate::actors::logger::{
    ClusterControl, LoggerError, LoggerHandle, LoggerStatus, StartRequest, Started, Stopped,
};

/// Renews the lease only if this instance still holds it.
const RENEW: &str = r#"if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) else return 0 end"#;
/// Releases the lease only if this instance holds it.
const RELEASE: &str = r#"if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end"#;
/// A Redis call slower than this counts as a failure.
const CALL_TIMEOUT: Duration = Duration::from_secs(3);

/// The cluster's logger control (attach to the [`LoggerHandle`]).
pub struct ClusterLogger {
    client: redis::Client,
    conn: tokio::sync::Mutex<Option<MultiplexedConnection>>,
    instance: String,
    lease_key: String,
    want_key: String,
    status_key: String,
    lease: Duration,
    /// How long a stop on a non-holder waits for the holder to stop.
    grace: Duration,
    cached: Mutex<Option<LoggerStatus>>,
    /// Serialises this instance's starts, stops and ticks (a tick must not
    /// see a start half done and take it for a finished run).
    op: tokio::sync::Mutex<()>,
}

fn unavailable(e: impl std::fmt::Display) -> LoggerError {
    LoggerError::Unavailable(format!(
        "the cluster's logger lease (Redis) is unreachable: {e}"
    ))
}

type R<T> = Result<T, redis::RedisError>;

impl ClusterLogger {
    pub fn new(
        client: redis::Client,
        instance: &str,
        prefix: &str,
        lease: Duration,
        grace: Duration,
    ) -> Self {
        Self {
            client,
            conn: tokio::sync::Mutex::new(None),
            instance: instance.to_owned(),
            lease_key: format!("{prefix}:logger:lease"),
            want_key: format!("{prefix}:logger:want"),
            status_key: format!("{prefix}:logger:status"),
            lease: lease.max(Duration::from_millis(200)),
            grace,
            cached: Mutex::new(None),
            op: tokio::sync::Mutex::new(()),
        }
    }

    /// A connection (kept; replaced after an error).
    async fn conn(&self) -> R<MultiplexedConnection> {
        let mut c = self.conn.lock().await;
        if let Some(c) = &*c {
            return Ok(c.clone());
        }
        let fresh =
            tokio::time::timeout(CALL_TIMEOUT, self.client.get_multiplexed_async_connection())
                .await
                .map_err(|_| {
                    redis::RedisError::from((redis::ErrorKind::Io, "connect timed out"))
                })??;
        *c = Some(fresh.clone());
        Ok(fresh)
    }

    /// Runs `f` on a connection with a deadline; an error drops the connection.
    async fn call<T, F>(&self, f: impl FnOnce(MultiplexedConnection) -> F) -> R<T>
    where
        F: std::future::Future<Output = R<T>>,
    {
        let conn = self.conn().await?;
        let r = match tokio::time::timeout(CALL_TIMEOUT, f(conn)).await {
            Ok(r) => r,
            Err(_) => Err(redis::RedisError::from((
                redis::ErrorKind::Io,
                "Redis call timed out",
            ))),
        };
        if r.is_err() {
            *self.conn.lock().await = None;
        }
        r
    }

    fn lease_ms(&self) -> u64 {
        self.lease.as_millis() as u64
    }

    async fn take_lease(&self) -> R<bool> {
        let (key, me, ms) = (
            self.lease_key.clone(),
            self.instance.clone(),
            self.lease_ms(),
        );
        self.call(|mut c| async move {
            let ok: Option<String> = redis::cmd("SET")
                .arg(&key)
                .arg(&me)
                .arg("NX")
                .arg("PX")
                .arg(ms)
                .query_async(&mut c)
                .await?;
            Ok(ok.is_some())
        })
        .await
    }

    async fn renew_lease(&self) -> R<bool> {
        let (key, me, ms) = (
            self.lease_key.clone(),
            self.instance.clone(),
            self.lease_ms(),
        );
        self.call(|mut c| async move {
            let n: i64 = redis::Script::new(RENEW)
                .key(&key)
                .arg(&me)
                .arg(ms)
                .invoke_async(&mut c)
                .await?;
            Ok(n == 1)
        })
        .await
    }

    async fn release_lease(&self) -> R<()> {
        let (key, me) = (self.lease_key.clone(), self.instance.clone());
        self.call(|mut c| async move {
            let _: i64 = redis::Script::new(RELEASE)
                .key(&key)
                .arg(&me)
                .invoke_async(&mut c)
                .await?;
            Ok(())
        })
        .await
    }

    async fn get(&self, key: &str) -> R<Option<String>> {
        let key = key.to_owned();
        self.call(|mut c| async move { c.get(&key).await }).await
    }

    async fn del(&self, key: &str) -> R<i64> {
        let key = key.to_owned();
        self.call(|mut c| async move { c.del(&key).await }).await
    }

    /// Writes the holder's status for every instance.
    async fn publish_status(&self, s: &LoggerStatus) {
        *self.cached.lock().unwrap_or_else(|p| p.into_inner()) = Some(s.clone());
        let (key, text) = (
            self.status_key.clone(),
            serde_json::to_string(s).unwrap_or_default(),
        );
        if let Err(e) = self
            .call(|mut c| async move { c.set::<_, _, ()>(&key, &text).await })
            .await
        {
            tracing::warn!(error = %e, "The logger status could not be shared through Redis.");
        }
    }

    /// Reads the shared status into the cache.
    async fn refresh(&self) -> Option<LoggerStatus> {
        let s = self
            .get(&self.status_key)
            .await
            .ok()
            .flatten()
            .and_then(|t| serde_json::from_str::<LoggerStatus>(&t).ok())
            .unwrap_or_default();
        *self.cached.lock().unwrap_or_else(|p| p.into_inner()) = Some(s.clone());
        Some(s)
    }

    /// Waits until the shared status satisfies `pred` (or the deadline).
    async fn wait_status(
        &self,
        deadline: Duration,
        pred: impl Fn(&LoggerStatus) -> bool,
    ) -> Option<LoggerStatus> {
        let until = tokio::time::Instant::now() + deadline;
        loop {
            if let Some(s) = self.refresh().await
                && pred(&s)
            {
                return Some(s);
            }
            if tokio::time::Instant::now() >= until {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn start_impl(
        &self,
        local: &LoggerHandle,
        req: StartRequest,
    ) -> Result<Started, LoggerError> {
        let op = self.op.lock().await;
        let (key, want) = (
            self.want_key.clone(),
            serde_json::to_string(&req).unwrap_or_default(),
        );
        let set: Option<String> = self
            .call(|mut c| async move {
                redis::cmd("SET")
                    .arg(&key)
                    .arg(&want)
                    .arg("NX")
                    .query_async(&mut c)
                    .await
            })
            .await
            .map_err(unavailable)?;
        if set.is_none() {
            let pid = self.refresh().await.and_then(|s| s.pid).unwrap_or(0);
            return Ok(Started::AlreadyRunning { pid });
        }
        if self.take_lease().await.map_err(unavailable)? {
            let r = local.start_local(req).await;
            match &r {
                Ok(_) => self.publish_status(&local.local_status()).await,
                Err(_) => {
                    let _ = self.del(&self.want_key).await;
                    let _ = self.release_lease().await;
                }
            }
            return r;
        }
        // Another instance holds the lease (its child is still stopping): it
        // or its successor starts the child on its next tick.
        drop(op);
        match self
            .wait_status(self.lease + self.grace, |s| s.running)
            .await
        {
            Some(s) => Ok(Started::Started {
                pid: s.pid.unwrap_or(0),
            }),
            None => Err(LoggerError::Unavailable(
                "the instance holding the logger lease did not start the logger in time".into(),
            )),
        }
    }

    async fn stop_impl(&self, local: &LoggerHandle) -> Stopped {
        let op = self.op.lock().await;
        let deleted = match self.del(&self.want_key).await {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "The logger stop could not reach Redis; stopping the local child only.");
                return local.stop_local().await;
            }
        };
        if local.local_status().running {
            let r = local.stop_local().await;
            self.publish_status(&local.local_status()).await;
            let _ = self.release_lease().await;
            return r;
        }
        drop(op);
        if deleted == 0 {
            return Stopped::NotRunning;
        }
        // The holder stops its child on its next tick.
        let deadline = self.grace + self.tick() * 2 + Duration::from_secs(2);
        match self.wait_status(deadline, |s| !s.running).await {
            Some(s) => Stopped::Stopped {
                exit_code: s.last_exit_code,
            },
            None => Stopped::NotRunning,
        }
    }

    fn tick(&self) -> Duration {
        (self.lease / 4).clamp(Duration::from_millis(50), Duration::from_secs(1))
    }

    /// Holds, renews, takes over and gives up the lease until `stop` (at
    /// shutdown, before the supervisor stops the child): then releases it,
    /// keeping `want`, so another instance takes over at once.
    pub async fn run(self: Arc<Self>, local: LoggerHandle, stop: CancellationToken) {
        let mut tick = tokio::time::interval(self.tick());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                () = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            if let Err(e) = self.step(&local).await {
                tracing::debug!(error = %e, "The logger lease could not be checked.");
            }
        }
        if local.local_status().running {
            let _ = self.release_lease().await;
        }
    }

    async fn step(&self, local: &LoggerHandle) -> R<()> {
        let _op = self.op.lock().await;
        let holder = self.get(&self.lease_key).await?;
        let mine = holder.as_deref() == Some(self.instance.as_str());
        let want = self.get(&self.want_key).await?;
        if local.local_status().running {
            let held = if mine {
                self.renew_lease().await?
            } else if holder.is_none() {
                // Back after a Redis outage: the lease lapsed, nobody took it.
                self.take_lease().await?
            } else {
                false
            };
            if !held || want.is_none() {
                if !held {
                    tracing::warn!(
                        "Another instance holds the logger lease; stopping this one's logger."
                    );
                }
                local.stop_local().await;
                if held {
                    self.publish_status(&local.local_status()).await;
                    self.release_lease().await?;
                }
                return Ok(());
            }
            self.publish_status(&local.local_status()).await;
            return Ok(());
        }
        if mine {
            // The child exited by itself: the run is over for the cluster.
            self.publish_status(&local.local_status()).await;
            self.del(&self.want_key).await?;
            self.release_lease().await?;
            return Ok(());
        }
        if let Some(want) = want
            && holder.is_none()
            && self.take_lease().await?
        {
            let req: StartRequest = serde_json::from_str(&want).unwrap_or_default();
            tracing::info!("This instance took over the logger lease; starting the logger.");
            match local.start_local(req).await {
                Ok(_) => self.publish_status(&local.local_status()).await,
                Err(LoggerError::BadRequest(e)) => {
                    tracing::warn!(error = %e, "The cluster's logger options are invalid; the logger is stopped.");
                    self.del(&self.want_key).await?;
                    self.release_lease().await?;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "The logger could not start here; another instance may take over.");
                    self.release_lease().await?;
                }
            }
            return Ok(());
        }
        self.refresh().await;
        Ok(())
    }
}

impl ClusterControl for ClusterLogger {
    fn start<'a>(
        &'a self,
        local: &'a LoggerHandle,
        req: StartRequest,
    ) -> BoxFuture<'a, Result<Started, LoggerError>> {
        self.start_impl(local, req).boxed()
    }

    fn stop<'a>(&'a self, local: &'a LoggerHandle) -> BoxFuture<'a, Stopped> {
        self.stop_impl(local).boxed()
    }

    fn status(&self, local: &LoggerHandle) -> LoggerStatus {
        let local_status = local.local_status();
        if local_status.running {
            return local_status;
        }
        self.cached
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .unwrap_or(local_status)
    }
}
