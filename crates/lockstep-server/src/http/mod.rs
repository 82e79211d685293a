//! The HTTP layer: the router (every route, listed in [`router`]), thin
//! handlers per resource, shared extractors and the one [`error::ApiError`].
//! Handlers call services and actor handles; nothing below imports this
//! module.
//!
//! Routes are grouped by who may call them, each group one list of
//! (method, path, handler) under one access policy ([`crate::auth::policy`]),
//! so a route added to a group inherits the group's policy, and
//! [`policy_table`] lists every route with its policy (the role × route test
//! enumerates it). A route registered outside the groups has no policy and
//! is refused with 500 by [`unlisted`].
//! - [`device_ingest`]: vehicles and edge loggers sending readings (device credentials);
//! - [`reads`]: clients reading stored data and the live stream (viewer and up);
//! - [`operator`]: logger control (operator and up);
//! - [`admin`]: tokens and vehicles' descriptive fields (admin);
//! - [`public`]: health/status, `/metrics`, the dashboard and its login.
//!
//! Two routers are built from the state and merged beside the groups, under
//! the same guards: [`graphql`] (reads) and [`openapi`] (`/openapi.json`,
//! `/docs`; public); [`policy_table`] lists their paths too.

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::extract::{ConnectInfo, DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::{Next, from_fn_with_state, map_response_with_state};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, patch, post};
use tower::ServiceBuilder;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::trace::TraceLayer;

use crate::auth::PeerIdentity;
use crate::auth::policy::{CredentialRefused, Guard, Policy, enforce};
use crate::services::limits::RetryAfter;
use crate::state::AppState;

pub mod dashboard;
pub mod error;
pub mod extract;
pub mod graphql;
pub mod history;
pub mod logger;
pub mod metrics;
pub mod openapi;
pub mod peer;
pub mod status;
pub mod telemetry;
pub mod tokens;
pub mod vehicles;
pub mod ws;

/// One route of a group.
pub struct Route {
    pub method: Method,
    pub path: &'static str,
    pub handler: MethodRouter<AppState>,
}

fn route(method: Method, path: &'static str, handler: MethodRouter<AppState>) -> Route {
    Route {
        method,
        path,
        handler,
    }
}

/// The embedded dashboard's routes (its own router, merged into the public group).
const DASHBOARD: &[&str] = &["/", "/index.html", "/favicon.svg", "/assets/{*path}"];

/// Every group with its policy: the single source of the router and of [`policy_table`].
pub fn groups() -> Vec<(Policy, Vec<Route>)> {
    vec![
        (Policy::Ingest, device_ingest()),
        (Policy::Read, reads()),
        (Policy::Operate, operator()),
        (Policy::Admin, admin()),
        (Policy::Public, public()),
    ]
}

/// Every route with its policy, as the router serves them.
pub fn policy_table() -> Vec<(Method, &'static str, Policy)> {
    let mut t: Vec<_> = groups()
        .into_iter()
        .flat_map(|(policy, routes)| routes.into_iter().map(move |r| (r.method, r.path, policy)))
        .collect();
    t.extend(DASHBOARD.iter().map(|p| (Method::GET, *p, Policy::Public)));
    // The routers built from the state (see [`router`]).
    t.extend([
        (Method::GET, "/graphql", Policy::Read),
        (Method::POST, "/graphql", Policy::Read),
    ]);
    t.extend(
        openapi::PATHS
            .iter()
            .map(|p| (Method::GET, *p, Policy::Public)),
    );
    t
}

/// The whole HTTP surface. `cors`: allowed origins, `None` = any.
pub fn router(state: AppState, cors: Option<Vec<String>>) -> Router {
    let origins = match cors {
        None => AllowOrigin::any(),
        Some(list) => AllowOrigin::list(list.iter().filter_map(|o| HeaderValue::from_str(o).ok())),
    };
    let cors = CorsLayer::new()
        .allow_origin(origins)
        .allow_methods([Method::GET, Method::POST, Method::PATCH])
        .allow_headers([header::CONTENT_TYPE, header::AUTHORIZATION]);
    let body_limit = state.settings.body_limit;
    let listed: Arc<HashSet<String>> = Arc::new(
        policy_table()
            .into_iter()
            .map(|(_, p, _)| p.to_owned())
            .collect(),
    );
    let mut app = Router::new();
    for (policy, routes) in groups() {
        let mut group = Router::new();
        for r in routes {
            group = group.route(r.path, r.handler);
        }
        if policy == Policy::Public {
            group = group.merge(dashboard::router());
        }
        let guard = Guard {
            auth: state.auth.clone(),
            origins: state.origins.clone(),
            policy,
        };
        let mut group = group.route_layer(from_fn_with_state(guard, enforce));
        if matches!(policy, Policy::Read | Policy::Operate | Policy::Public) {
            // Routes without a device identity: a budget per client address
            // (outermost, so refused credentials count too).
            group = group.route_layer(from_fn_with_state(state.clone(), per_ip_limit));
        }
        app = app.merge(group);
    }
    // Routers built from the state, under the guards of their groups.
    let guarded = |r: Router<AppState>, policy: Policy| {
        r.route_layer(from_fn_with_state(
            Guard {
                auth: state.auth.clone(),
                origins: state.origins.clone(),
                policy,
            },
            enforce,
        ))
        .route_layer(from_fn_with_state(state.clone(), per_ip_limit))
    };
    app = app
        .merge(guarded(graphql::router(&state), Policy::Read))
        .merge(guarded(openapi::router(&state.signals), Policy::Public));
    let routed = app
        .route_layer(from_fn_with_state(
            Checks {
                app: state.clone(),
                listed,
            },
            per_request,
        ))
        .fallback(status::not_found)
        .with_state(state.clone());
    // The layers for every request wrap the routed router once, as one
    // service: `Router::layer` would wrap each route in a boxed service of
    // its own per layer, and axum clones and drops a route's whole chain of
    // boxes for every request (BENCHMARKS.md, "the HTTP stack").
    let outer = ServiceBuilder::new()
        // One span per request (debug level: enable with RUST_LOG=tower_http=debug).
        .layer(TraceLayer::new_for_http())
        .layer(cors)
        .layer(map_response_with_state(state, set_retry_after))
        // Ingest reads its body itself (413 as JSON); this bounds every other extractor.
        .layer(DefaultBodyLimit::max(body_limit))
        // The names of a client certificate become a device identity here,
        // before any guard authenticates.
        .layer(axum::middleware::map_request(peer_identity))
        .service(routed);
    Router::new().fallback_service(outer)
}

/// The state of [`per_request`].
#[derive(Clone)]
struct Checks {
    app: AppState,
    /// Every path of [`policy_table`].
    listed: Arc<HashSet<String>>,
}

/// What every routed request passes through, outermost first: the request
/// counter ([`metrics::count_requests`]), the failed-authentication budget
/// ([`auth_failure_budget`]) and the refusal of paths without a policy
/// ([`unlisted`]). One middleware rather than three, because each layer
/// costs a boxed clone and a boxed future per request.
async fn per_request(
    State(checks): State<Checks>,
    matched: Option<MatchedPath>,
    req: Request,
    next: Next,
) -> Response {
    let route = matched.as_ref().map(MatchedPath::as_str);
    let resp = auth_failure_budget(&checks.app, route, req, |req| async {
        match route {
            Some(p) if checks.listed.contains(p) => next.run(req).await,
            _ => unlisted(&req, route),
        }
    })
    .await;
    metrics::count_requests(&checks.app, route, &resp);
    resp
}

/// Refuses a path that is not in [`policy_table`] (registered outside the
/// groups): no route is served without a policy. (A listed path called with
/// another method passes: the method router answers 405.)
fn unlisted(req: &Request, path: Option<&str>) -> Response {
    tracing::error!(method = %req.method(), ?path, "A route without an access policy was called; add it to a group in http::groups.");
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        axum::Json(serde_json::json!({"status": "error", "error": "internal error"})),
    )
        .into_response()
}

/// Readings from vehicles and edge loggers.
pub fn device_ingest() -> Vec<Route> {
    vec![
        route(
            Method::POST,
            "/api/telemetry",
            post(telemetry::post_telemetry),
        ),
        route(Method::POST, "/api/v1/batch", post(telemetry::post_batch)),
    ]
}

/// Stored data and the live stream (`/ws` checks logger commands per message).
pub fn reads() -> Vec<Route> {
    vec![
        route(Method::GET, "/api/vehicles", get(vehicles::list)),
        route(Method::GET, "/api/vehicles/{vin}", get(vehicles::get_one)),
        route(
            Method::GET,
            "/api/vehicles/{vin}/telemetry",
            get(history::telemetry),
        ),
        route(
            Method::GET,
            "/api/vehicles/{vin}/stats",
            get(vehicles::daily_stats),
        ),
        route(Method::GET, "/api/stats", get(vehicles::fleet_stats)),
        route(
            Method::GET,
            "/api/stats/vehicles",
            get(vehicles::vehicle_stats),
        ),
        route(Method::GET, "/logger/status", get(logger::status)),
        route(Method::GET, "/ws", get(ws::upgrade)),
    ]
}

/// Starting and stopping the logger child.
pub fn operator() -> Vec<Route> {
    vec![
        route(Method::POST, "/logger/start", post(logger::start)),
        route(Method::POST, "/logger/stop", post(logger::stop)),
    ]
}

/// Tokens and vehicles' descriptive fields.
pub fn admin() -> Vec<Route> {
    vec![
        route(Method::GET, "/api/tokens", get(tokens::list)),
        route(Method::POST, "/api/tokens", post(tokens::create)),
        route(
            Method::POST,
            "/api/tokens/{id}/revoke",
            post(tokens::revoke),
        ),
        route(Method::PATCH, "/api/vehicles/{vin}", patch(vehicles::patch)),
    ]
}

/// Health/status, the dashboard's login (the dashboard's files are merged in [`router`]).
pub fn public() -> Vec<Route> {
    use crate::auth::web;
    vec![
        route(Method::GET, "/status", get(status::status)),
        route(Method::GET, "/metrics", get(metrics::metrics)),
        route(Method::GET, "/api/session", get(web::session)),
        route(Method::POST, "/api/login", post(web::login)),
        route(Method::POST, "/api/logout", post(web::logout)),
    ]
}

/// 429 + `Retry-After` when the client address is over `LOCKSTEP_IP_REQUESTS_PER_S`.
async fn per_ip_limit(
    State(app): State<AppState>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    req: Request,
    next: Next,
) -> Response {
    match app.limits.check_ip(peer.ip()) {
        Ok(()) => next.run(req).await,
        Err(RetryAfter(s)) => error::ApiError::TooManyRequests {
            message: format!("too many requests from this address; retry after {s} s"),
            retry_after_s: s,
        }
        .into_response(),
    }
}

/// With mutual TLS, the VINs a verified client certificate names
/// ([`peer::PeerCert`]) as the request's [`PeerIdentity`]: a device
/// credential for those VINs.
async fn peer_identity(mut req: Request) -> Request {
    let identity = req
        .extensions()
        .get::<peer::PeerCert>()
        .and_then(|c| PeerIdentity::from_names(&c.names));
    if let Some(id) = identity {
        req.extensions_mut().insert(id);
    }
    req
}

/// The budget of failed authentications per client address
/// (`LOCKSTEP_AUTH_FAILURES_PER_MIN`): a response marked
/// [`CredentialRefused`] counts one failure; the one over the budget is
/// answered 429, and so is every later request of that address that presents
/// a credential (a bearer token, a login) until the budget has refilled,
/// before the credential is checked. Other addresses are not affected.
async fn auth_failure_budget<F, Fut>(
    app: &AppState,
    route: Option<&str>,
    req: Request,
    run: F,
) -> Response
where
    F: FnOnce(Request) -> Fut,
    Fut: Future<Output = Response>,
{
    let Some(ip) = req
        .extensions()
        .get::<ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip().to_canonical())
    else {
        return run(req).await;
    };
    let refused = |s: u32| {
        error::ApiError::TooManyRequests {
            message: format!(
                "too many failed authentications from this address; retry after {s} s"
            ),
            retry_after_s: s,
        }
        .into_response()
    };
    let presents = req.headers().contains_key(header::AUTHORIZATION) || route == Some("/api/login");
    if presents && let Err(RetryAfter(s)) = app.limits.auth_blocked(ip) {
        return refused(s);
    }
    let resp = run(req).await;
    if resp.extensions().get::<CredentialRefused>().is_some()
        && let Err(RetryAfter(s)) = app.limits.auth_failed(ip)
    {
        tracing::warn!(%ip, "Too many failed authentications from one address: refused for {s} s.");
        return refused(s);
    }
    resp
}

/// Fills `Retry-After` on 503s of an unavailable store from the settings.
async fn set_retry_after(State(app): State<AppState>, mut resp: Response) -> Response {
    error::apply_retry_after(&mut resp, app.settings.retry_after_s);
    resp
}
