//! Per-vehicle decoding state behind per-vehicle locks.
//!
//! The registry is a sharded map `VIN → Arc<tokio::sync::Mutex<VehicleState>>`:
//! the shard's std mutex is held only to look up or insert the handle; the
//! vehicle's async mutex is held by a request from decode through commit, so
//! one vehicle's requests apply in order while other vehicles proceed in
//! parallel. No lock is shared by all vehicles on the hot path.
//!
//! The registry is bounded: at most `max_vehicles` entries (split evenly
//! over the shards; a full shard evicts its least recently used entry), and
//! entries idle for `idle` are swept by [`Vehicles::evict_idle`]. Only an
//! entry nobody holds is evicted (its `Arc` is held by the map alone, which
//! is checked under the shard lock that every `get` takes), and its state is
//! exactly what the store holds (state is installed after its commit), so a
//! returning vehicle reloads it from the store and continues.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lockstep_codec::seed::SeedState;
use lockstep_codec::{Catalog, SessionState, Vin};

use crate::model::SEED_SESSION;
use crate::store::{Store, StoreError};

const SHARDS: usize = 32;
/// Sessions kept in memory per vehicle; older ones are reloaded from the store if they return.
const SESSIONS_PER_VEHICLE: usize = 4;

/// How long a vehicle another instance wrote to keeps being checked before
/// decoding. Behind a sticky load balancer no vehicle ever is, and the
/// commit's compare-and-set alone keeps values right; behind per-request
/// round robin nearly every request would otherwise fail its commit.
const CONTENDED_FOR: Duration = Duration::from_secs(60);

type Handle = Arc<tokio::sync::Mutex<VehicleState>>;

/// A registry entry: the state and when a request last took it.
struct Entry {
    state: Handle,
    used: Instant,
}

impl Entry {
    /// Held by a request (or about to be): not evictable.
    fn in_use(&self) -> bool {
        Arc::strong_count(&self.state) > 1
    }
}

/// The registry of vehicles in memory.
pub struct Vehicles {
    shards: Vec<Mutex<HashMap<Vin, Entry>>>,
    hasher: RandomState,
    per_shard: usize,
    idle: Duration,
}

impl Default for Vehicles {
    fn default() -> Self {
        Self::new(100_000, Duration::from_secs(900))
    }
}

impl Vehicles {
    /// At most `max_vehicles` in memory; `idle` = how long an unused one stays.
    pub fn new(max_vehicles: usize, idle: Duration) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: RandomState::new(),
            per_shard: max_vehicles.div_ceil(SHARDS).max(1),
            idle,
        }
    }

    fn shard(&self, vin: &Vin) -> std::sync::MutexGuard<'_, HashMap<Vin, Entry>> {
        self.shards[self.hasher.hash_one(vin) as usize % SHARDS]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// The vehicle's state handle, created (empty, loaded from the store on
    /// use) when the vehicle is not in memory.
    pub fn get(&self, vin: &Vin) -> Handle {
        let now = Instant::now();
        let mut map = self.shard(vin);
        if let Some(e) = map.get_mut(vin) {
            e.used = now;
            return e.state.clone();
        }
        if map.len() >= self.per_shard {
            let lru = map
                .iter()
                .filter(|(_, e)| !e.in_use())
                .min_by_key(|(_, e)| e.used)
                .map(|(v, _)| v.clone());
            // All in use: exceed the cap for now; requests in flight bound it.
            if let Some(v) = lru {
                map.remove(&v);
            }
        }
        let state = Arc::new(tokio::sync::Mutex::new(VehicleState::new(vin)));
        map.insert(
            vin.clone(),
            Entry {
                state: state.clone(),
                used: now,
            },
        );
        state
    }

    /// Drops the vehicles unused for the idle time; returns how many.
    pub fn evict_idle(&self) -> usize {
        let now = Instant::now();
        let mut evicted = 0;
        for shard in &self.shards {
            let mut map = shard.lock().unwrap_or_else(|p| p.into_inner());
            let before = map.len();
            map.retain(|_, e| e.in_use() || now.duration_since(e.used) < self.idle);
            evicted += before - map.len();
            if map.capacity() > 2 * map.len() + 16 {
                map.shrink_to_fit();
            }
        }
        evicted
    }

    /// Vehicles in memory.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).len())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What the server knows of one vehicle: states as of a stored version.
/// Entries are authoritative once loaded (`None` = the store has nothing
/// for that session) unless another server instance commits to the same
/// sessions; then `check` asks the store whether the version moved (one
/// primary-key read that carries the state only if it did). Callers check
/// only while the vehicle is [`contended`](Self::contended): otherwise they
/// decode against the cache and the commit's compare-and-set catches a
/// stale one.
pub struct VehicleState {
    pub vin: Arc<str>,
    seed: Option<Versioned<SeedState>>,
    sessions: HashMap<u64, Versioned<Option<SessionState>>>,
    /// Sessions in order of last use, for eviction.
    recent: Vec<u64>,
    /// When another writer was last seen advancing this vehicle's state.
    contended_at: Option<Instant>,
}

/// A state and the stored version it is (0: nothing stored).
struct Versioned<T> {
    version: u64,
    state: T,
}

impl VehicleState {
    fn new(vin: &Vin) -> Self {
        Self {
            vin: vin.as_str().into(),
            seed: None,
            sessions: HashMap::new(),
            recent: Vec::new(),
            contended_at: None,
        }
    }

    /// Whether another writer advanced this vehicle's state lately: then its
    /// requests ask the store before decoding rather than fail at commit.
    pub fn contended(&self) -> bool {
        self.contended_at
            .is_some_and(|at| at.elapsed() < CONTENDED_FOR)
    }

    /// Records that another writer advanced this vehicle's state.
    pub fn mark_contended(&mut self) {
        self.contended_at = Some(Instant::now());
    }

    /// The session's state and its stored version, from memory or the store.
    /// `check`: ask the store whether the version moved since it was cached.
    pub async fn session(
        &mut self,
        store: &dyn Store,
        catalog: &Catalog,
        session_id: u64,
        check: bool,
    ) -> Result<(Option<&SessionState>, u64), StoreError> {
        let known = self.sessions.get(&session_id).map(|v| v.version);
        if known.is_none() || check {
            let stored = store
                .session_if_changed(self.vin.clone(), session_id, known)
                .await?;
            if known != Some(stored.version) {
                let state = stored.state.and_then(|b| {
                    let s = SessionState::from_bytes(catalog, &b);
                    if s.is_none() {
                        tracing::warn!(vin = %self.vin, session_id = format_args!("{session_id:016x}"), "Stored session state is unreadable; the edge will be asked to resync.");
                    }
                    s
                });
                if known.is_some() {
                    self.mark_contended();
                    tracing::debug!(vin = %self.vin, session_id = format_args!("{session_id:016x}"), version = stored.version, "Another server instance advanced the session; its state was reloaded.");
                }
                self.sessions.insert(
                    session_id,
                    Versioned {
                        version: stored.version,
                        state,
                    },
                );
            }
        }
        self.touch(session_id);
        let v = &self.sessions[&session_id];
        Ok((v.state.as_ref(), v.version))
    }

    /// Installs a session's state after its rows were committed as `version`.
    pub fn install(&mut self, session_id: u64, state: SessionState, version: u64) {
        self.touch(session_id);
        self.sessions.insert(
            session_id,
            Versioned {
                version,
                state: Some(state),
            },
        );
    }

    /// Forgets a cached state another writer advanced (`SEED_SESSION`: the
    /// seed predictor); the next use reloads it.
    pub fn forget(&mut self, session_id: u64) {
        self.mark_contended();
        if session_id == SEED_SESSION {
            self.seed = None;
        } else {
            self.sessions.remove(&session_id);
            self.recent.retain(|s| *s != session_id);
        }
    }

    fn touch(&mut self, session_id: u64) {
        if self.recent.last() == Some(&session_id) {
            return;
        }
        self.recent.retain(|s| *s != session_id);
        self.recent.push(session_id);
        while self.recent.len() > SESSIONS_PER_VEHICLE {
            let old = self.recent.remove(0);
            self.sessions.remove(&old);
        }
    }

    /// The seed-form state and its stored version, from memory or the store
    /// (`check`: as for [`Self::session`]).
    pub async fn seed(
        &mut self,
        store: &dyn Store,
        check: bool,
    ) -> Result<(&SeedState, u64), StoreError> {
        let known = self.seed.as_ref().map(|v| v.version);
        if known.is_none() || check {
            let stored = store
                .session_if_changed(self.vin.clone(), SEED_SESSION, known)
                .await?;
            if known != Some(stored.version) {
                if known.is_some() {
                    self.mark_contended();
                }
                self.seed = Some(Versioned {
                    version: stored.version,
                    state: stored
                        .state
                        .and_then(|b| SeedState::from_bytes(&b))
                        .unwrap_or_default(),
                });
            }
        }
        let v = self.seed.as_ref().expect("loaded above");
        Ok((&v.state, v.version))
    }

    /// Installs the seed state after its row was committed as `version`.
    pub fn install_seed(&mut self, s: SeedState, version: u64) {
        self.seed = Some(Versioned { version, state: s });
    }
}
