//! Access policies, one per route group: the router applies [`enforce`] to
//! each group, so every route added to a group inherits its policy. The
//! middleware resolves the caller once ([`Principal`], inserted into the
//! request's extensions for the handlers), checks `Origin`/`Host` on every
//! state-changing request and WebSocket upgrade, and answers 401/403.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Json;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::json;

use super::origin::OriginPolicy;
use super::service::{Auth, AuthError, Mode, PeerIdentity, Principal, Role};

/// What a route group requires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    /// Anyone: the dashboard's files, `/status`, `/api/session`, login and
    /// logout (cross-site checks still apply to their POSTs).
    Public,
    /// Devices writing telemetry: a device credential whose VIN scope the
    /// handler checks against the payload (`LOCKSTEP_DEVICE_AUTH`).
    Ingest,
    /// Viewers and up (`LOCKSTEP_READ_AUTH`): `/ws` and read APIs.
    Read,
    /// Operators and up: logger control.
    Operate,
    /// Admins: tokens, vehicle metadata.
    Admin,
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// 401: no (valid) credential where one is needed.
    Unauthenticated(String),
    /// 403: a credential that does not allow this, or a cross-site request.
    Forbidden(String),
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let (status, msg) = match self {
            Refusal::Unauthenticated(m) => (StatusCode::UNAUTHORIZED, m),
            Refusal::Forbidden(m) => (StatusCode::FORBIDDEN, m),
        };
        let mut resp = (status, Json(json!({"status": "error", "error": msg}))).into_response();
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        resp
    }
}

/// Marks a response to a request whose credential (a bearer token, or the
/// token of a login) was presented and is not valid, whatever the answer
/// (401, or the anonymous answer of a public route): the router counts these
/// against the address's budget of failed authentications
/// (`LOCKSTEP_AUTH_FAILURES_PER_MIN`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CredentialRefused;

/// The auth state a policy group needs.
#[derive(Clone)]
pub struct Guard {
    pub auth: Arc<Auth>,
    pub origins: Arc<OriginPolicy>,
    pub policy: Policy,
}

/// Whether `principal` may use a route with `policy`. `loopback`: the TCP
/// peer is on this machine (grants logger control only with read auth off,
/// the quick start, and only while `LOCKSTEP_TRUST_LOOPBACK` is on).
pub fn decide(
    auth: &Auth,
    policy: Policy,
    principal: &Principal,
    loopback: bool,
) -> Result<(), Refusal> {
    let c = &auth.config;
    let need = |role: Role| -> Result<(), Refusal> {
        match principal {
            Principal::Person { role: r, .. } if *r >= role => Ok(()),
            Principal::Anonymous => Err(Refusal::Unauthenticated(format!(
                "this needs the {} role: send Authorization: Bearer <token> or log in",
                role.as_str()
            ))),
            _ => Err(Refusal::Forbidden(format!(
                "this needs the {} role",
                role.as_str()
            ))),
        }
    };
    match policy {
        Policy::Public => Ok(()),
        Policy::Ingest => match (c.device, principal) {
            (_, Principal::Device { .. }) | (Mode::Off, Principal::Anonymous) => Ok(()),
            (Mode::Required, Principal::Anonymous) => Err(Refusal::Unauthenticated(
                "telemetry needs a device token: send Authorization: Bearer <token> (lockstep-edge --token)".into(),
            )),
            (_, Principal::Person { .. }) => Err(Refusal::Forbidden(
                "telemetry is written with a device token, not a personal one".into(),
            )),
        },
        Policy::Read => match c.read {
            Mode::Off => Ok(()),
            Mode::Required => need(Role::Viewer),
        },
        Policy::Operate => {
            let quick_start = c.read == Mode::Off && c.trust_loopback && loopback;
            if quick_start {
                return Ok(());
            }
            match (c.read, principal) {
                // As before read auth existed: a remote caller without a token is refused, not asked.
                (Mode::Off, Principal::Anonymous) => Err(Refusal::Forbidden(
                    "logger control is allowed from loopback or with an operator token or LOCKSTEP_ADMIN_TOKEN (Authorization: Bearer <token>)".into(),
                )),
                _ => need(Role::Operator),
            }
        }
        Policy::Admin => need(Role::Admin),
    }
}

/// Whether the request changes state or opens a WebSocket (cross-site checks apply).
fn state_changing(req: &Request) -> bool {
    !matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS)
        || req
            .headers()
            .get(header::UPGRADE)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"))
}

/// Whether the TCP peer is on this machine.
pub fn is_loopback(req: &Request) -> bool {
    req.extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .is_some_and(|c| c.0.ip().to_canonical().is_loopback())
}

/// The middleware of a policy group.
pub async fn enforce(State(g): State<Guard>, mut req: Request, next: Next) -> Response {
    if state_changing(&req)
        && let Err(e) = g.origins.check(req.headers())
    {
        tracing::warn!(error = %e, path = %req.uri().path(), "Cross-site request refused.");
        return Refusal::Forbidden(e.to_string()).into_response();
    }
    let principal = match g
        .auth
        .authenticate(req.headers(), req.extensions().get::<PeerIdentity>())
        .await
    {
        Ok(p) => p,
        // The public group answers without a credential; a bad one is ignored there
        // (the dashboard's `/api/session` must tell a stale login from an error),
        // but it still counts as a failed authentication.
        Err(AuthError::BadToken) if g.policy == Policy::Public => {
            req.extensions_mut().insert(Principal::Anonymous);
            let mut resp = next.run(req).await;
            resp.extensions_mut().insert(CredentialRefused);
            return resp;
        }
        Err(AuthError::BadToken) => {
            let mut resp =
                Refusal::Unauthenticated(AuthError::BadToken.to_string()).into_response();
            resp.extensions_mut().insert(CredentialRefused);
            return resp;
        }
        Err(AuthError::Store(e)) => {
            tracing::warn!(error = %e, "Credentials could not be checked: the store is unavailable.");
            let mut resp = (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({"status": "error", "error": "credentials cannot be checked now: the store is unavailable; retry later"})),
            )
                .into_response();
            resp.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from(2));
            return resp;
        }
    };
    if let Err(r) = decide(&g.auth, g.policy, &principal, is_loopback(&req)) {
        return r.into_response();
    }
    req.extensions_mut().insert(principal);
    next.run(req).await
}
