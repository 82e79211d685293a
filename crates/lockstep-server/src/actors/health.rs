//! The store's health: one actor owns it, flips it and says so (server log
//! and a `log` WebSocket message), exactly once per change.
//!
//! Observations come from the write path only: the writer reports each
//! commit's outcome and ingest reports failed state loads, through
//! [`HealthHandle::report`]. Between observations the actor pings the store
//! (every second while unhealthy, every 5 s otherwise). Read endpoints never
//! report: a failing `GET /api/vehicles` answers 503 but does not mark ingest
//! as down.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::actors::hub::{Hub, Level};
use crate::store::{Store, StoreError};

/// Pause between pings while healthy.
const PING_HEALTHY: Duration = Duration::from_secs(5);
/// Pause between pings while unhealthy: notice the return quickly.
const PING_UNHEALTHY: Duration = Duration::from_secs(1);
/// A ping slower than this counts as a failure.
const PING_TIMEOUT: Duration = Duration::from_secs(3);

/// What a caller saw of the store.
#[derive(Debug, Clone)]
pub enum Observation {
    /// A commit went through.
    Committed,
    /// A write-path call failed.
    Failed(StoreError),
}

impl Observation {
    fn healthy(&self) -> bool {
        matches!(self, Observation::Committed)
    }
}

type Report = (Observation, oneshot::Sender<()>);

/// Cheap handle: reads the health, reports observations.
#[derive(Clone)]
pub struct HealthHandle {
    unhealthy: Arc<AtomicBool>,
    tx: mpsc::Sender<Report>,
}

impl HealthHandle {
    /// The store's health as last decided by the actor.
    pub fn healthy(&self) -> bool {
        !self.unhealthy.load(Ordering::Relaxed)
    }

    /// Reports what a write-path call saw. Returns at once when it confirms
    /// the current health; otherwise waits until the actor has recorded the
    /// change, so a 503 is never answered while `/status` still says healthy.
    pub async fn report(&self, obs: Observation) {
        if obs.healthy() == self.healthy() {
            return;
        }
        let (tx, rx) = oneshot::channel();
        if self.tx.send((obs, tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

/// The health actor.
pub struct Health {
    unhealthy: Arc<AtomicBool>,
    rx: mpsc::Receiver<Report>,
    store: Arc<dyn Store>,
    hub: Arc<Hub>,
}

impl Health {
    pub fn new(store: Arc<dyn Store>, hub: Arc<Hub>) -> (Self, HealthHandle) {
        let unhealthy = Arc::new(AtomicBool::new(false));
        // Reports are only sent on a change, so a short queue is plenty; a
        // full one makes the reporter wait, which is the ordering we want.
        let (tx, rx) = mpsc::channel(16);
        (
            Self {
                unhealthy: unhealthy.clone(),
                rx,
                store,
                hub,
            },
            HealthHandle { unhealthy, tx },
        )
    }

    fn healthy(&self) -> bool {
        !self.unhealthy.load(Ordering::Relaxed)
    }

    /// Runs until `stop`. A report interrupts a ping in progress (reports are
    /// rare: only changes are sent), so a reporter never waits for a slow ping.
    pub async fn run(mut self, stop: CancellationToken) {
        loop {
            let pause = if self.healthy() {
                PING_HEALTHY
            } else {
                PING_UNHEALTHY
            };
            let store = self.store.clone();
            let ping = async move {
                tokio::time::sleep(pause).await;
                match tokio::time::timeout(PING_TIMEOUT, store.ping()).await {
                    Ok(Ok(())) => None,
                    Ok(Err(e)) => Some(Observation::Failed(e)),
                    Err(_) => Some(Observation::Failed(StoreError::Unavailable(
                        "the store did not answer a ping within 3 s".into(),
                    ))),
                }
            };
            tokio::select! {
                () = stop.cancelled() => return,
                r = self.rx.recv() => match r {
                    Some((obs, done)) => {
                        self.observe(&obs);
                        let _ = done.send(());
                    }
                    None => return,
                },
                failure = ping => self.observe_ping(failure),
            }
        }
    }

    /// A ping success only proves the store answers; it restores health but
    /// is not a committed write.
    fn observe_ping(&self, failure: Option<Observation>) {
        match failure {
            None => self.change(true, "The store is reachable again.", None),
            Some(Observation::Failed(e)) => {
                tracing::debug!(error = %e, "Store ping failed.");
                self.change(false, "The store is unreachable.", Some(&e));
            }
            Some(Observation::Committed) => {}
        }
    }

    fn observe(&self, obs: &Observation) {
        match obs {
            Observation::Committed => self.change(true, "The store accepts writes again.", None),
            Observation::Failed(e) => self.change(
                false,
                "The store is unavailable: ingest answers 503 until it returns.",
                Some(e),
            ),
        }
    }

    /// Flips the health if it differs and says so once.
    fn change(&self, healthy: bool, message: &str, cause: Option<&StoreError>) {
        if self.unhealthy.swap(!healthy, Ordering::Relaxed) != healthy {
            return; // no change
        }
        match cause {
            Some(e) => tracing::error!(error = %e, "{message}"),
            None => tracing::warn!("{message}"),
        }
        let level = if healthy { Level::Info } else { Level::Error };
        self.hub.log(level, "server", message);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Signals;
    use crate::settings::StoreConfig;

    #[tokio::test]
    async fn flips_once_per_change_and_says_so_once() {
        let dir = tempfile::tempdir().unwrap();
        let signals = Signals::from_catalog(&lockstep_codec::Catalog::default_v1());
        let store = crate::store::open(&StoreConfig::Sqlite(dir.path().join("h.db")), 1, &signals)
            .await
            .unwrap();
        let hub = Arc::new(Hub::new(16));
        let mut sub = hub.subscribe();
        let (actor, health) = Health::new(store, hub.clone());
        let stop = CancellationToken::new();
        tokio::spawn(actor.run(stop.clone()));

        let down = || Observation::Failed(StoreError::unavailable("injected"));
        health.report(down()).await;
        assert!(!health.healthy(), "unhealthy as soon as the report returns");
        health.report(down()).await;
        health.report(Observation::Committed).await;
        assert!(health.healthy());
        health.report(Observation::Committed).await;

        let mut lines = Vec::new();
        while let Ok(true) = tokio::time::timeout(
            std::time::Duration::from_millis(50),
            sub.recv(&mut lines, 16),
        )
        .await
        {}
        let texts: Vec<&str> = lines.iter().map(|l| l.as_str()).collect();
        assert_eq!(texts.len(), 2, "{texts:?}");
        assert!(texts[0].contains("ingest answers 503") && texts[0].contains(r#""level":"error""#));
        assert!(texts[1].contains("accepts writes again"));
        stop.cancel();
    }
}
