//! GraphQL at `/graphql` (POST queries; WebSocket subscriptions over the
//! `graphql-transport-ws` or legacy `graphql-ws` protocol on the same path).
//! Queries go through the same [`QueryService`] as the REST API (same limits,
//! same messages); the `telemetry` subscription is fed by the hub that feeds
//! `/ws`, so both see the same committed readings.
//!
//! Signals are data, not schema: a reading carries `values: [{name, value}]`
//! in catalog order, so the schema does not change with the catalog.
//! Queries are bounded: depth at most [`MAX_DEPTH`], complexity at most
//! [`MAX_COMPLEXITY`]. A field counts 1, and a list counts its selection once
//! per row it may return (`limit`, or the number of buckets of the range), so
//! the complexity of a query is about the number of values it can produce:
//! one full page of raw readings (10,000 readings) fits, three do not. No
//! GraphiQL page (the stock one loads from a CDN).

use std::collections::{HashMap, HashSet};

use async_graphql::futures_util::Stream;
use async_graphql::{
    Context, EmptyMutation, ErrorExtensions, Json, Object, Schema, SimpleObject, Subscription,
};
use async_graphql_axum::{GraphQL, GraphQLSubscription};
use axum::Router;
use axum::routing::on_service;

use crate::http::error::ApiError;
use crate::model::{Signals, TelemetryRow};
use crate::services::query::{
    DEFAULT_LIMIT, DEFAULT_VEHICLES, HistoryParams, MAX_BUCKETS, MAX_LIMIT, MAX_VEHICLES,
    QueryError, parse_vin,
};
use crate::state::AppState;

pub const MAX_DEPTH: usize = 8;
pub const MAX_COMPLEXITY: usize = 100_000;

/// Rows a paged field may return: `limit` within `1..=max`, `default` without one.
fn rows(limit: Option<i32>, default: usize, max: usize) -> usize {
    limit.map_or(default, |l| usize::try_from(l).unwrap_or(1).clamp(1, max))
}

/// Buckets of `step` ms in `[from, to)` (beyond [`MAX_BUCKETS`] the query
/// service refuses the range anyway; the cap only keeps the sum finite).
fn bucket_rows(from: i64, to: i64, step: i64) -> usize {
    if step <= 0 || to <= from {
        return 1;
    }
    let n = (to.saturating_sub(from) / step).saturating_add(1);
    usize::try_from(n.clamp(1, 100 * MAX_BUCKETS)).unwrap_or(1)
}

pub type LockstepSchema = Schema<QueryRoot, EmptyMutation, SubscriptionRoot>;

fn gql(e: QueryError) -> async_graphql::Error {
    let code = match &e {
        QueryError::BadRequest(_) => "BAD_REQUEST",
        QueryError::Invalid(_) | QueryError::InvalidVin(_) => "INVALID",
        QueryError::UnknownVehicle(_) => "NOT_FOUND",
        QueryError::Store(s) if s.is_transient() => "UNAVAILABLE",
        QueryError::Store(_) => "INTERNAL",
    };
    let message = match &e {
        QueryError::Store(s) if !s.is_transient() => {
            tracing::error!(error = %s, "GraphQL: internal error.");
            "internal error".to_owned()
        }
        _ => e.to_string(),
    };
    async_graphql::Error::new(message).extend_with(|_, ext| ext.set("code", code))
}

fn svc<'a>(ctx: &Context<'a>) -> &'a AppState {
    ctx.data_unchecked::<AppState>()
}

#[derive(SimpleObject)]
pub struct SignalValue {
    pub name: String,
    pub value: Option<f64>,
}

#[derive(SimpleObject)]
pub struct GqlReading {
    /// Unix ms.
    pub timestamp: i64,
    /// One per catalog signal, in catalog order.
    pub values: Vec<SignalValue>,
    /// Signals sent on the wire.
    pub transmitted: Vec<String>,
}

impl GqlReading {
    fn new(r: &TelemetryRow, signals: &Signals) -> Self {
        let names = signals.names();
        Self {
            timestamp: r.ts_ms,
            values: names
                .iter()
                .enumerate()
                .map(|(i, n)| SignalValue {
                    name: n.to_string(),
                    value: r.values.get(i).copied().flatten(),
                })
                .collect(),
            transmitted: names
                .iter()
                .enumerate()
                .filter(|(i, _)| r.transmitted & (1 << i) != 0)
                .map(|(_, n)| n.to_string())
                .collect(),
        }
    }
}

#[derive(SimpleObject)]
pub struct ReadingPage {
    pub vin: String,
    pub readings: Vec<GqlReading>,
    pub next_cursor: Option<String>,
}

#[derive(SimpleObject)]
pub struct SignalAggregate {
    pub name: String,
    pub min: f64,
    pub max: f64,
    pub mean: f64,
}

#[derive(SimpleObject)]
pub struct GqlBucket {
    /// Bucket start, Unix ms.
    pub timestamp: i64,
    pub count: u64,
    /// Signals with values in the bucket.
    pub signals: Vec<SignalAggregate>,
}

#[derive(SimpleObject)]
pub struct GqlVehicle {
    pub vin: String,
    pub model: Option<String>,
    pub year: Option<i32>,
    pub first_seen_ms: i64,
    pub last_seen_ms: i64,
    pub readings: u64,
}

/// A vehicle as `GET /api/vehicles/{vin}` shows it.
#[derive(SimpleObject)]
pub struct GqlVehicleDetail {
    pub vin: String,
    pub model: Option<String>,
    pub year: Option<i32>,
    pub first_seen_ms: i64,
    pub last_seen_ms: i64,
    pub readings: u64,
    /// Lockstep sessions stored for the vehicle.
    pub sessions: u64,
    /// Resync answers (409) given to the vehicle's batches.
    pub resyncs: u64,
    /// Timestamp of the newest stored keyframe reading.
    pub last_keyframe_ms: Option<i64>,
}

/// One UTC day of a vehicle's compression statistics.
#[derive(SimpleObject)]
pub struct GqlDay {
    /// `YYYY-MM-DD`.
    pub day: String,
    pub readings: u64,
    pub fields_total: u64,
    pub fields_transmitted: u64,
    pub fields_skipped: u64,
    pub compression_ratio: f64,
}

/// `GET /api/vehicles/{vin}/stats`.
#[derive(SimpleObject)]
pub struct GqlDailyStats {
    pub vin: String,
    pub days: Vec<GqlDay>,
}

#[derive(SimpleObject)]
pub struct VehiclePage {
    pub vehicles: Vec<GqlVehicle>,
    pub next_cursor: Option<String>,
}

#[derive(SimpleObject)]
pub struct GqlFleetStats {
    pub vehicles: u64,
    pub readings: u64,
    pub fields_total: u64,
    pub fields_transmitted: u64,
    pub fields_skipped: u64,
    pub compression_ratio: f64,
}

/// The range arguments as the REST query string would carry them, so both
/// front ends share one parser.
fn range_params(
    from: i64,
    to: i64,
    limit: Option<i32>,
    cursor: Option<String>,
    step: Option<i64>,
) -> HashMap<String, String> {
    let mut p = HashMap::from([
        ("from".into(), from.to_string()),
        ("to".into(), to.to_string()),
    ]);
    if let Some(l) = limit {
        p.insert("limit".into(), l.to_string());
    }
    if let Some(c) = cursor {
        p.insert("cursor".into(), c);
    }
    if let Some(s) = step {
        p.insert("step".into(), s.to_string());
    }
    p
}

pub struct QueryRoot;

#[Object]
impl QueryRoot {
    /// Vehicles ordered by VIN (`limit` 1..=1000, default 100).
    #[graphql(complexity = "rows(limit, DEFAULT_VEHICLES, MAX_VEHICLES) * child_complexity")]
    async fn vehicles(
        &self,
        ctx: &Context<'_>,
        limit: Option<i32>,
        cursor: Option<String>,
    ) -> async_graphql::Result<VehiclePage> {
        let list = svc(ctx)
            .query
            .vehicles(limit.map(i64::from), cursor.as_deref())
            .await
            .map_err(gql)?;
        Ok(VehiclePage {
            vehicles: list
                .vehicles
                .into_iter()
                .map(|v| GqlVehicle {
                    vin: v.vin,
                    model: v.model,
                    year: v.year,
                    first_seen_ms: v.first_seen_ms,
                    last_seen_ms: v.last_seen_ms,
                    readings: v.readings,
                })
                .collect(),
            next_cursor: list.next_cursor,
        })
    }

    /// Raw readings of one vehicle, `from <= timestamp < to`, one page
    /// (`limit` 1..=10,000, default 1,000).
    #[graphql(complexity = "rows(limit, DEFAULT_LIMIT, MAX_LIMIT) * child_complexity")]
    async fn telemetry(
        &self,
        ctx: &Context<'_>,
        vin: String,
        from: i64,
        to: i64,
        limit: Option<i32>,
        cursor: Option<String>,
    ) -> async_graphql::Result<ReadingPage> {
        let app = svc(ctx);
        let vin = parse_vin(&vin).map_err(gql)?;
        let p = HistoryParams::parse(&range_params(from, to, limit, cursor, None)).map_err(gql)?;
        let page = app.query.history(vin, &p).await.map_err(gql)?;
        Ok(ReadingPage {
            vin: page.vin.to_string(),
            readings: page
                .rows
                .iter()
                .map(|r| GqlReading::new(r, &page.signals))
                .collect(),
            next_cursor: page.next_cursor,
        })
    }

    /// Per-bucket aggregates (epoch-aligned buckets of `step` ms), computed in the database.
    #[graphql(complexity = "bucket_rows(from, to, step) * child_complexity")]
    async fn buckets(
        &self,
        ctx: &Context<'_>,
        vin: String,
        from: i64,
        to: i64,
        step: i64,
    ) -> async_graphql::Result<Vec<GqlBucket>> {
        let app = svc(ctx);
        let vin = parse_vin(&vin).map_err(gql)?;
        let p =
            HistoryParams::parse(&range_params(from, to, None, None, Some(step))).map_err(gql)?;
        let page = app.query.buckets(vin, &p, step).await.map_err(gql)?;
        let names = page.signals.names();
        Ok(page
            .buckets
            .iter()
            .map(|b| GqlBucket {
                timestamp: b.start,
                count: b.count,
                signals: b
                    .signals
                    .iter()
                    .zip(names)
                    .filter_map(|(a, n)| {
                        a.map(|a| SignalAggregate {
                            name: n.to_string(),
                            min: a.min,
                            max: a.max,
                            mean: a.mean,
                        })
                    })
                    .collect(),
            })
            .collect())
    }

    /// One vehicle: descriptive fields, first/last seen, sessions and
    /// predictor health (as `GET /api/vehicles/{vin}`).
    async fn vehicle(
        &self,
        ctx: &Context<'_>,
        vin: String,
    ) -> async_graphql::Result<GqlVehicleDetail> {
        let v = svc(ctx)
            .query
            .vehicle(parse_vin(&vin).map_err(gql)?)
            .await
            .map_err(gql)?;
        Ok(GqlVehicleDetail {
            vin: v.vin,
            model: v.model,
            year: v.year,
            first_seen_ms: v.first_seen_ms,
            last_seen_ms: v.last_seen_ms,
            readings: v.readings,
            sessions: v.sessions,
            resyncs: v.resyncs,
            last_keyframe_ms: v.last_keyframe_ms,
        })
    }

    /// A vehicle's daily compression statistics (UTC day of receipt), `from`
    /// and `to` as `YYYY-MM-DD`, inclusive, both optional (as
    /// `GET /api/vehicles/{vin}/stats`).
    async fn daily_stats(
        &self,
        ctx: &Context<'_>,
        vin: String,
        from: Option<String>,
        to: Option<String>,
    ) -> async_graphql::Result<GqlDailyStats> {
        let mut p = HashMap::new();
        if let Some(f) = from {
            p.insert("from".to_owned(), f);
        }
        if let Some(t) = to {
            p.insert("to".to_owned(), t);
        }
        let s = svc(ctx)
            .query
            .daily_stats(parse_vin(&vin).map_err(gql)?, &p)
            .await
            .map_err(gql)?;
        Ok(GqlDailyStats {
            vin: s.vin,
            days: s
                .days
                .into_iter()
                .map(|d| GqlDay {
                    day: d.day,
                    readings: d.readings,
                    fields_total: d.fields_total,
                    fields_transmitted: d.fields_transmitted,
                    fields_skipped: d.fields_skipped,
                    compression_ratio: d.compression_ratio,
                })
                .collect(),
        })
    }

    /// Fleet totals.
    async fn stats(&self, ctx: &Context<'_>) -> async_graphql::Result<GqlFleetStats> {
        let s = svc(ctx).query.fleet_stats().await.map_err(gql)?;
        Ok(GqlFleetStats {
            vehicles: s.vehicles,
            readings: s.readings,
            fields_total: s.fields_total,
            fields_transmitted: s.fields_transmitted,
            fields_skipped: s.fields_skipped,
            compression_ratio: s.compression_ratio,
        })
    }
}

pub struct SubscriptionRoot;

#[Subscription]
impl SubscriptionRoot {
    /// Committed readings of these VINs (none or empty: every vehicle), as
    /// `/ws` sends them in `telemetry` messages' `data`.
    async fn telemetry(
        &self,
        ctx: &Context<'_>,
        vins: Option<Vec<String>>,
    ) -> async_graphql::Result<impl Stream<Item = Json<serde_json::Value>>> {
        let app = svc(ctx);
        let vins: HashSet<String> = vins
            .unwrap_or_default()
            .iter()
            .map(|v| parse_vin(v).map(|v| v.to_string()))
            .collect::<Result<_, _>>()
            .map_err(gql)?;
        let mut sub = app.hub.subscribe();
        let mut skipped = Vec::new();
        sub.set_filter(vins, &mut skipped);
        // Counted as a client: ingest serialises events only while someone listens.
        let client = app.hub.owned_client();
        Ok(async_graphql::futures_util::stream::unfold(
            (sub, Vec::new(), client),
            |(mut sub, mut queue, client): (_, Vec<serde_json::Value>, _)| async move {
                loop {
                    if let Some(v) = queue.pop() {
                        return Some((Json(v), (sub, queue, client)));
                    }
                    let mut texts = Vec::new();
                    if !sub.recv(&mut texts, 64).await {
                        return None;
                    }
                    // Newest last in `texts`; `queue` pops from the end.
                    for t in texts.iter().rev() {
                        let Ok(mut m) = serde_json::from_str::<serde_json::Value>(t) else {
                            continue;
                        };
                        if m["type"] == "telemetry" {
                            queue.push(m["data"].take());
                        }
                    }
                }
            },
        ))
    }
}

/// The schema, with its bounds and the app state for resolvers.
pub fn schema(app: &AppState) -> LockstepSchema {
    Schema::build(QueryRoot, EmptyMutation, SubscriptionRoot)
        .data(app.clone())
        .limit_depth(MAX_DEPTH)
        .limit_complexity(MAX_COMPLEXITY)
        .finish()
}

/// `/graphql`: POST (and GET) queries, WebSocket subscriptions.
pub fn router(app: &AppState) -> Router<AppState> {
    let schema = schema(app);
    Router::new().route(
        "/graphql",
        on_service(
            axum::routing::MethodFilter::GET.or(axum::routing::MethodFilter::POST),
            GraphQLWsOrQuery {
                query: GraphQL::new(schema.clone()),
                ws: GraphQLSubscription::new(schema),
            },
        ),
    )
}

/// Routes a WebSocket upgrade to the subscription service, anything else to queries.
#[derive(Clone)]
struct GraphQLWsOrQuery {
    query: GraphQL<LockstepSchema>,
    ws: GraphQLSubscription<LockstepSchema>,
}

impl tower::Service<axum::extract::Request> for GraphQLWsOrQuery {
    type Response = axum::response::Response;
    type Error = std::convert::Infallible;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: axum::extract::Request) -> Self::Future {
        use tower::ServiceExt as _;
        let upgrade = req
            .headers()
            .get(axum::http::header::UPGRADE)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
        if upgrade {
            Box::pin(self.ws.clone().oneshot(req))
        } else {
            let answer = self.query.clone().oneshot(req);
            Box::pin(async move {
                let resp = answer.await?;
                // async-graphql answers a body that is no GraphQL request with
                // a bare-text 400; give it the API's JSON error body instead.
                if resp.status() == axum::http::StatusCode::BAD_REQUEST
                    && !resp
                        .headers()
                        .contains_key(axum::http::header::CONTENT_TYPE)
                {
                    let text = axum::body::to_bytes(resp.into_body(), 16 * 1024)
                        .await
                        .unwrap_or_default();
                    let e = ApiError::BadRequest(format!(
                        "not a GraphQL request: {}",
                        String::from_utf8_lossy(&text)
                    ));
                    return Ok(axum::response::IntoResponse::into_response(e));
                }
                Ok(resp)
            })
        }
    }
}
