//! Per-vehicle decoding state behind per-vehicle locks.
//!
//! The registry is a sharded map `VIN → Arc<tokio::sync::Mutex<VehicleState>>`:
//! the shard's std mutex is held only to look up or insert the handle; the
//! vehicle's async mutex is held by a request from decode through commit, so
//! one vehicle's requests apply in order while other vehicles proceed in
//! parallel. No lock is shared by all vehicles on the hot path.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex};

use lockstep_codec::seed::SeedState;
use lockstep_codec::{Catalog, SessionState, Vin};

use crate::model::SEED_SESSION;
use crate::store::{Store, StoreError};

const SHARDS: usize = 32;
/// Sessions kept in memory per vehicle; older ones are reloaded from the store if they return.
const SESSIONS_PER_VEHICLE: usize = 4;

/// The registry of vehicles seen since start.
pub struct Vehicles {
    shards: Vec<Mutex<HashMap<Vin, Arc<tokio::sync::Mutex<VehicleState>>>>>,
    hasher: RandomState,
}

impl Default for Vehicles {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: RandomState::new(),
        }
    }
}

impl Vehicles {
    /// The vehicle's state handle, created on first contact.
    pub fn get(&self, vin: &Vin) -> Arc<tokio::sync::Mutex<VehicleState>> {
        let shard = &self.shards[self.hasher.hash_one(vin) as usize % SHARDS];
        let mut map = shard.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(vin.clone())
            .or_insert_with(|| Arc::new(tokio::sync::Mutex::new(VehicleState::new(vin))))
            .clone()
    }
}

/// What the server knows of one vehicle. Entries are authoritative once
/// loaded: `None` = the store has nothing for that session.
pub struct VehicleState {
    pub vin: Arc<str>,
    seed: Option<SeedState>,
    sessions: HashMap<u64, Option<SessionState>>,
    /// Sessions in order of last use, for eviction.
    recent: Vec<u64>,
}

impl VehicleState {
    fn new(vin: &Vin) -> Self {
        Self {
            vin: vin.as_str().into(),
            seed: None,
            sessions: HashMap::new(),
            recent: Vec::new(),
        }
    }

    /// The session's state, from memory or the store.
    pub async fn session(
        &mut self,
        store: &dyn Store,
        catalog: &Catalog,
        session_id: u64,
    ) -> Result<Option<&SessionState>, StoreError> {
        if !self.sessions.contains_key(&session_id) {
            let bytes = store.load_session(self.vin.clone(), session_id).await?;
            let state = bytes.and_then(|b| {
                let s = SessionState::from_bytes(catalog, &b);
                if s.is_none() {
                    tracing::warn!(vin = %self.vin, session_id = format_args!("{session_id:016x}"), "Stored session state is unreadable; the edge will be asked to resync.");
                }
                s
            });
            self.touch(session_id);
            self.sessions.insert(session_id, state);
        }
        Ok(self.sessions.get(&session_id).and_then(Option::as_ref))
    }

    /// Installs a session's state after its rows were committed.
    pub fn install(&mut self, session_id: u64, state: SessionState) {
        self.touch(session_id);
        self.sessions.insert(session_id, Some(state));
    }

    fn touch(&mut self, session_id: u64) {
        self.recent.retain(|s| *s != session_id);
        self.recent.push(session_id);
        while self.recent.len() > SESSIONS_PER_VEHICLE {
            let old = self.recent.remove(0);
            self.sessions.remove(&old);
        }
    }

    /// The seed-form state, from memory or the store.
    pub async fn seed(&mut self, store: &dyn Store) -> Result<&SeedState, StoreError> {
        if self.seed.is_none() {
            let bytes = store.load_session(self.vin.clone(), SEED_SESSION).await?;
            self.seed = Some(
                bytes
                    .and_then(|b| SeedState::from_bytes(&b))
                    .unwrap_or_default(),
            );
        }
        Ok(self.seed.get_or_insert_with(SeedState::default))
    }

    /// Installs the seed state after its row was committed.
    pub fn install_seed(&mut self, s: SeedState) {
        self.seed = Some(s);
    }
}
