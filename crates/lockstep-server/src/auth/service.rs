//! Who is calling: a request's credential (bearer token, session cookie or
//! client certificate) resolved to a [`Principal`], with the store's answers
//! cached for a few seconds so a revocation reaches every instance quickly
//! without a database round trip per request.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, header};
use serde::Serialize;

use super::db::{AuthDb, TokenInfo, TokenRecord, WebSession};
use super::token::{NewToken, Presented, hash_secret, random_hex, secrets_equal};
use crate::settings::Secret;
use crate::store::StoreError;

/// How long a token or session lookup is trusted before the store is asked again.
pub const CACHE_TTL: Duration = Duration::from_secs(3);
/// Entries kept per cache; beyond this the cache starts over (bounded memory
/// under a flood of made-up tokens).
const CACHE_MAX: usize = 10_000;
/// Name of the dashboard's session cookie.
pub const SESSION_COOKIE: &str = "lockstep_session";
/// Lifetime of a web session.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);

/// What a person or tool may do; each role includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// `/ws` and the read APIs.
    Viewer,
    /// Also logger control.
    Operator,
    /// Also tokens and vehicle metadata.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "viewer" => Ok(Role::Viewer),
            "operator" => Ok(Role::Operator),
            "admin" => Ok(Role::Admin),
            _ => Err(format!("{s:?} is not a role: viewer, operator or admin")),
        }
    }
}

/// What a token grants.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", content = "value", rename_all = "snake_case")]
pub enum Scope {
    /// A person or tool with a role.
    Role(Role),
    /// A device: writes this one VIN.
    Vin(String),
    /// A fleet (simulator, replayer): writes every VIN that starts with this.
    VinPrefix(String),
    /// A client certificate that names several VINs: writes each of them.
    /// Only certificates have it; tokens are per VIN or per prefix.
    Vins(Vec<String>),
}

impl Scope {
    /// The scope of a new token from exactly one of a VIN, a VIN prefix and a
    /// role (the CLI's and the admin API's input); the error says what is wrong.
    pub fn from_parts(
        vin: Option<&str>,
        vin_prefix: Option<&str>,
        role: Option<&str>,
    ) -> Result<Self, String> {
        match (vin, vin_prefix, role) {
            (Some(v), None, None) => lockstep_codec::Vin::parse(v)
                .map(|v| Scope::Vin(v.as_str().to_owned()))
                .map_err(|e| format!("vin {v:?}: {e}")),
            (None, Some(p), None) => {
                if !p.is_empty() && p.len() <= 17 && p.bytes().all(|b| b.is_ascii_alphanumeric()) {
                    Ok(Scope::VinPrefix(p.to_ascii_uppercase()))
                } else {
                    Err(format!("vin prefix {p:?}: give 1 to 17 VIN characters"))
                }
            }
            (None, None, Some(r)) => r.parse().map(Scope::Role),
            _ => Err("give exactly one of a VIN, a VIN prefix and a role".into()),
        }
    }

    /// The identity a device or fleet credential proves (session ownership).
    pub fn identity(&self) -> String {
        match self {
            Scope::Role(r) => format!("role:{}", r.as_str()),
            Scope::Vin(v) => format!("vin:{v}"),
            Scope::VinPrefix(p) => format!("fleet:{p}"),
            Scope::Vins(vs) => format!("vins:{}", vs.join(",")),
        }
    }
}

/// `required` or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Required,
    Off,
}

impl FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "required" => Ok(Mode::Required),
            "off" => Ok(Mode::Off),
            _ => Err(format!("{s:?} is neither required nor off")),
        }
    }
}

/// The caller, as far as its credential tells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// No credential.
    Anonymous,
    /// A device or fleet credential; `credential` names the identity it
    /// proves (`vin:<VIN>` for a device token or certificate, `fleet:<prefix>`
    /// for a fleet token) for session ownership: a rotated token, or the next
    /// run of the spawned logger, continues its sessions; another identity
    /// cannot.
    Device { credential: String, scope: Scope },
    /// A person or tool; `credential` is the token's public id (`None` for the
    /// bootstrap admin token).
    Person {
        credential: Option<String>,
        role: Role,
    },
}

impl Principal {
    /// The role for people and tools, `None` for devices and anonymous callers.
    pub fn role(&self) -> Option<Role> {
        match self {
            Principal::Person { role, .. } => Some(*role),
            _ => None,
        }
    }

    /// Whether this device credential may write `vin`; `None` = not a device.
    pub fn may_write(&self, vin: &str) -> Option<bool> {
        match self {
            Principal::Device { scope, .. } => Some(match scope {
                Scope::Vin(v) => v == vin,
                Scope::VinPrefix(p) => vin.starts_with(p.as_str()),
                Scope::Vins(vs) => vs.iter().any(|v| v == vin),
                Scope::Role(_) => false,
            }),
            _ => None,
        }
    }

    /// A stable name of the credential (never its secret) that per-credential
    /// limits count under: `token:<public id>` for a person's token or a web
    /// session opened with it, `admin-token` for the bootstrap admin, the
    /// identity of a device credential; `None` for anonymous callers.
    pub fn limit_key(&self) -> Option<String> {
        match self {
            Principal::Anonymous => None,
            Principal::Person {
                credential: Some(id),
                ..
            } => Some(format!("token:{id}")),
            Principal::Person {
                credential: None, ..
            } => Some("admin-token".to_owned()),
            Principal::Device { credential, .. } => Some(credential.clone()),
        }
    }

    /// The credential name used for session ownership (devices only).
    pub fn device_credential(&self) -> Option<&str> {
        match self {
            Principal::Device { credential, .. } => Some(credential),
            _ => None,
        }
    }
}

/// The identity a TLS client certificate proved: the VINs among its names
/// (subject CN, DNS SANs; see [`crate::http::peer::PeerCert`]). The router
/// derives it from the certificate of the connection
/// ([`PeerIdentity::from_names`]) when `LOCKSTEP_TLS_CLIENT_CA` is set; the
/// device check accepts it like a device token for those VINs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerIdentity {
    pub vins: Vec<String>,
}

impl PeerIdentity {
    /// The VINs among a verified certificate's names (a DNS name is
    /// case-insensitive, a VIN upper case); `None` if it names none.
    pub fn from_names(names: &[String]) -> Option<Self> {
        let mut vins: Vec<String> = Vec::new();
        for n in names {
            if let Ok(v) = lockstep_codec::Vin::parse(&n.to_ascii_uppercase()) {
                let v = v.as_str().to_owned();
                if !vins.contains(&v) {
                    vins.push(v);
                }
            }
        }
        (!vins.is_empty()).then_some(Self { vins })
    }

    /// The device scope the certificate grants.
    pub fn scope(&self) -> Option<Scope> {
        match self.vins.as_slice() {
            [] => None,
            [one] => Some(Scope::Vin(one.clone())),
            many => Some(Scope::Vins(many.to_vec())),
        }
    }
}

/// Why a credential was refused (401).
#[derive(Debug, Clone, thiserror::Error)]
pub enum AuthError {
    #[error("the token is not valid (unknown, revoked, expired or malformed)")]
    BadToken,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Settings of the auth service.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    pub device: Mode,
    pub read: Mode,
    /// `LOCKSTEP_ADMIN_TOKEN`: a bootstrap admin that needs no store entry.
    pub admin_token: Option<Secret>,
    /// Loopback peers may control the logger while read auth is off (the quick start).
    pub trust_loopback: bool,
    /// Cookies get `Secure` (the server speaks TLS).
    pub secure_cookies: bool,
}

type Cache<K, V> = Mutex<HashMap<K, (Instant, V)>>;

/// The auth service: one per server, shared by every request.
pub struct Auth {
    pub db: AuthDb,
    pub config: AuthConfig,
    tokens: Cache<String, Option<TokenRecord>>,
    sessions: Cache<[u8; 32], Option<WebSession>>,
}

fn cached<K: std::hash::Hash + Eq + Clone, V: Clone>(cache: &Cache<K, V>, k: &K) -> Option<V> {
    let map = cache.lock().unwrap_or_else(|p| p.into_inner());
    map.get(k)
        .filter(|(at, _)| at.elapsed() < CACHE_TTL)
        .map(|(_, v)| v.clone())
}

fn remember<K: std::hash::Hash + Eq, V>(cache: &Cache<K, V>, k: K, v: V) {
    let mut map = cache.lock().unwrap_or_else(|p| p.into_inner());
    if map.len() >= CACHE_MAX {
        map.clear();
    }
    map.insert(k, (Instant::now(), v));
}

/// The bearer token of `Authorization`, if any.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, rest) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| rest.trim())
        .filter(|t| !t.is_empty())
}

/// The value of a cookie, if the request carries it.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

pub fn now_ms() -> i64 {
    crate::model::now_ms()
}

impl Auth {
    pub fn new(db: AuthDb, config: AuthConfig) -> Self {
        Self {
            db,
            config,
            tokens: Mutex::default(),
            sessions: Mutex::default(),
        }
    }

    /// Resolves the request's credential: `Authorization: Bearer`, then the
    /// session cookie, then a client certificate. A bearer token that is
    /// presented but not valid is refused even where no credential is
    /// needed; a stale cookie only means "not logged in".
    pub async fn authenticate(
        &self,
        headers: &HeaderMap,
        peer: Option<&PeerIdentity>,
    ) -> Result<Principal, AuthError> {
        if let Some(given) = bearer(headers) {
            return self.by_token(given).await;
        }
        if let Some(value) = cookie(headers, SESSION_COOKIE)
            && let Some(s) = self.session(value).await?
        {
            return Ok(Principal::Person {
                credential: s.token_id,
                role: s.role,
            });
        }
        if let Some(scope) = peer.and_then(PeerIdentity::scope) {
            return Ok(Principal::Device {
                credential: scope.identity(),
                scope,
            });
        }
        Ok(Principal::Anonymous)
    }

    /// Resolves a presented token (bootstrap admin or `lst_…`).
    pub async fn by_token(&self, given: &str) -> Result<Principal, AuthError> {
        if let Some(admin) = &self.config.admin_token
            && secrets_equal(given, admin.expose())
        {
            return Ok(Principal::Person {
                credential: None,
                role: Role::Admin,
            });
        }
        let presented = Presented::parse(given).ok_or(AuthError::BadToken)?;
        let id = presented.public_id.to_owned();
        let rec = match cached(&self.tokens, &id) {
            Some(r) => r,
            None => {
                let r = self.db.token(&id).await?;
                remember(&self.tokens, id, r.clone());
                r
            }
        };
        let rec = rec.ok_or(AuthError::BadToken)?;
        let now = now_ms();
        let valid = presented.matches(&rec.secret_hash)
            && rec.info.revoked_at_ms.is_none()
            && rec.info.expires_at_ms.is_none_or(|e| now < e);
        if !valid {
            return Err(AuthError::BadToken);
        }
        Ok(match rec.info.scope {
            Scope::Role(role) => Principal::Person {
                credential: Some(rec.info.public_id),
                role,
            },
            scope => Principal::Device {
                credential: scope.identity(),
                scope,
            },
        })
    }

    async fn session(&self, value: &str) -> Result<Option<WebSession>, StoreError> {
        let key = hash_secret(value);
        let s = match cached(&self.sessions, &key) {
            Some(s) => s,
            None => {
                let s = self.db.session(key).await?;
                remember(&self.sessions, key, s.clone());
                s
            }
        };
        Ok(s.filter(|s| now_ms() < s.expires_at_ms))
    }

    /// Trades a person's token for a web session; returns the cookie value.
    /// `None`: the token is not a person's (devices cannot log in).
    pub async fn login(&self, given: &str) -> Result<Option<(String, Role)>, AuthError> {
        let Principal::Person { credential, role } = self.by_token(given).await? else {
            return Ok(None);
        };
        let value = random_hex(32);
        let now = now_ms();
        let s = WebSession {
            token_id: credential,
            role,
            expires_at_ms: now + SESSION_TTL.as_millis() as i64,
        };
        self.db.insert_session(hash_secret(&value), &s, now).await?;
        Ok(Some((value, role)))
    }

    /// Ends the web session of this cookie value.
    pub async fn logout(&self, value: &str) -> Result<(), StoreError> {
        let key = hash_secret(value);
        self.db.delete_session(key).await?;
        remember(&self.sessions, key, None);
        Ok(())
    }

    /// `Set-Cookie` for a session (or, with `None`, one that clears it).
    pub fn set_cookie(&self, value: Option<&str>) -> String {
        let secure = if self.config.secure_cookies {
            "; Secure"
        } else {
            ""
        };
        match value {
            Some(v) => format!(
                "{SESSION_COOKIE}={v}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}{secure}",
                SESSION_TTL.as_secs()
            ),
            None => {
                format!("{SESSION_COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0{secure}")
            }
        }
    }

    /// Creates a token; returns its record and the string to hand out once.
    pub async fn create_token(
        &self,
        scope: Scope,
        label: &str,
        expires_in: Option<Duration>,
    ) -> Result<(TokenInfo, String), StoreError> {
        create_token(&self.db, scope, label, expires_in).await
    }

    /// Revokes a token; it stops working on every instance within [`CACHE_TTL`].
    pub async fn revoke(&self, public_id: &str) -> Result<bool, StoreError> {
        let done = self.db.revoke(public_id, now_ms()).await?;
        self.tokens
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(public_id);
        Ok(done)
    }

    /// Whether `credential` may write the session: it opened it, or it is the
    /// first to write it. Sessions written without a credential have no owner.
    pub async fn may_continue(
        &self,
        vin: &str,
        session_id: u64,
        credential: &str,
    ) -> Result<bool, StoreError> {
        let owner = self.db.claim_session(vin, session_id, credential).await?;
        Ok(owner == credential)
    }
}

/// Creates a token in `db` (shared by the service and the CLI).
pub async fn create_token(
    db: &AuthDb,
    scope: Scope,
    label: &str,
    expires_in: Option<Duration>,
) -> Result<(TokenInfo, String), StoreError> {
    let t = NewToken::generate();
    let now = now_ms();
    let info = TokenInfo {
        public_id: t.public_id.clone(),
        scope,
        label: label.to_owned(),
        created_at_ms: now,
        expires_at_ms: expires_in.map(|d| now + d.as_millis() as i64),
        revoked_at_ms: None,
    };
    db.insert_token(&TokenRecord {
        info: info.clone(),
        secret_hash: t.secret_hash.to_vec(),
    })
    .await?;
    Ok((info, t.token))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn credentials_are_read_from_headers() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h), None);
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("bearer  abc "),
        );
        assert_eq!(bearer(&h), Some("abc"));
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; lockstep_session=xyz"),
        );
        assert_eq!(cookie(&h, SESSION_COOKIE), Some("xyz"));
        assert_eq!(cookie(&h, "b"), None);
    }

    #[test]
    fn device_scopes() {
        let d = |scope| Principal::Device {
            credential: "x".into(),
            scope,
        };
        assert_eq!(d(Scope::Vin("A".into())).may_write("A"), Some(true));
        assert_eq!(d(Scope::Vin("A".into())).may_write("B"), Some(false));
        assert_eq!(
            d(Scope::VinPrefix("SIM".into())).may_write("SIM01"),
            Some(true)
        );
        assert_eq!(
            d(Scope::VinPrefix("SIM".into())).may_write("XSIM1"),
            Some(false)
        );
        assert_eq!(Principal::Anonymous.may_write("A"), None);
        assert!(Role::Admin > Role::Operator && Role::Operator > Role::Viewer);
    }
}
