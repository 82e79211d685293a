//! The OpenAPI 3.1 document, generated from the handlers' `#[utoipa::path]`
//! attributes and the types' `ToSchema` derives, served at `/openapi.json`,
//! with Swagger UI (built into the binary, no CDN) at `/docs`.
//!
//! Shapes whose fields are the catalog's signals (a stored reading, a
//! bucket, a live `telemetry` message) cannot be derived from a Rust type:
//! [`document`] builds those components from the server's [`Signals`], so
//! the document lists exactly the fields the server sends.

use axum::Router;
use utoipa::OpenApi;
use utoipa::openapi::schema::{
    AdditionalProperties, ArrayBuilder, KnownFormat, ObjectBuilder, Schema, SchemaFormat,
    SchemaType, Type,
};
use utoipa::openapi::{RefOr, Server};
use utoipa_swagger_ui::SwaggerUi;

use crate::model::Signals;
use crate::state::AppState;

/// Every error answer: `{"status": "error", "error": "<what was wrong>"}`;
/// a 409 resync also carries `resync_required`, `kind` and `next_seq`.
#[derive(Debug, utoipa::ToSchema)]
#[allow(dead_code)]
pub struct ErrorBody {
    /// Always `error`.
    pub status: String,
    /// What was wrong (4xx) or `internal error` (5xx).
    pub error: String,
    /// 409 only.
    pub resync_required: Option<bool>,
    /// 409 only: `catalog_mismatch`, `unknown_session`, `gap`, `overlap` or `checksum_mismatch`.
    pub kind: Option<String>,
    /// 409 only: the sequence number the server expects next, if known.
    pub next_seq: Option<u64>,
}

/// Components [`document`] replaces with catalog-driven schemas.
macro_rules! catalogued {
    ($($name:ident => $doc:literal),* $(,)?) => {$(
        #[doc = $doc]
        #[derive(Debug)]
        pub struct $name;
        impl utoipa::PartialSchema for $name {
            fn schema() -> RefOr<Schema> {
                ObjectBuilder::new().into()
            }
        }
        impl utoipa::ToSchema for $name {}
    )*};
}

catalogued!(
    HistoryAnswer => "A `HistoryPage`, or a `BucketPage` when `step` is given.",
    Reading => "A stored reading (built from the catalog at start-up).",
    HistoryPage => "A page of stored readings.",
    Bucket => "Aggregates of one bucket.",
    BucketPage => "Buckets of a range.",
    LiveReading => "A live reading as WebSocket `telemetry`/`history` messages carry it.",
);

/// A protobuf message body (binary).
#[derive(Debug)]
pub struct ProtobufBody;

impl utoipa::PartialSchema for ProtobufBody {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .content_media_type("application/x-protobuf")
            .description(Some("Protobuf bytes (see crates/lockstep-proto)"))
            .into()
    }
}

impl utoipa::ToSchema for ProtobufBody {}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Lockstep",
        description = "Telemetry cloud: ingest (seed and lockstep wire forms), history, vehicles, statistics, live stream.\n\n\
Errors are JSON: `{\"status\": \"error\", \"error\": \"…\"}`. Paging: pass `next_cursor` back as `cursor`; \
`null` means the last page. History limits: a page holds at most 10,000 readings, `step` at most 10,000 buckets, \
a CSV export at most 1,000,000 readings."
    ),
    paths(
        crate::http::telemetry::post_telemetry,
        crate::http::telemetry::post_batch,
        crate::http::vehicles::list,
        crate::http::vehicles::get_one,
        crate::http::vehicles::patch,
        crate::http::vehicles::daily_stats,
        crate::http::vehicles::fleet_stats,
        crate::http::vehicles::vehicle_stats,
        crate::http::history::telemetry,
        crate::http::status::status,
        crate::http::logger::status,
        crate::http::logger::start,
        crate::http::logger::stop,
        crate::http::ws::upgrade,
        crate::http::metrics::metrics,
        graphql,
    ),
    components(schemas(
        ErrorBody,
        Reading,
        HistoryPage,
        HistoryAnswer,
        ProtobufBody,
        Bucket,
        BucketPage,
        LiveReading,
        crate::protocol::ServerMsg,
        crate::protocol::ClientMsg,
    )),
    tags(
        (name = "ingest", description = "Readings from vehicles and edge loggers"),
        (name = "history", description = "Stored readings read back"),
        (name = "vehicles", description = "Vehicles and statistics"),
        (name = "live", description = "The WebSocket stream"),
        (name = "operations", description = "Health and the logger child"),
    )
)]
struct ApiDoc;

/// Documents `/graphql` (served by async-graphql, see `http::graphql`).
#[utoipa::path(post, path = "/graphql", tag = "live",
    description = "GraphQL queries (vehicles, telemetry, buckets, stats); the `telemetry(vins)` subscription \
over WebSocket (`graphql-transport-ws` or `graphql-ws`) on the same path. Depth and complexity are limited.",
    request_body(content = Object, content_type = "application/json",
        description = "`{\"query\": \"…\", \"variables\": {…}}`"),
    responses(
        (status = 200, description = "`{\"data\": …, \"errors\": […]}` (errors too are 200, per GraphQL over HTTP)",
            content((Object = "application/json"), (Object = "application/graphql-response+json"))),
        (status = 400, description = "Not a GraphQL request (no or malformed JSON body)", body = ErrorBody),
    ))]
#[allow(dead_code)]
fn graphql() {}

fn int64() -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::Integer)
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
}

fn nullable(t: Type) -> ObjectBuilder {
    ObjectBuilder::new().schema_type(SchemaType::from_iter([t, Type::Null]))
}

fn names_array(signals: &Signals) -> ArrayBuilder {
    let names: Vec<serde_json::Value> = signals
        .names()
        .iter()
        .map(|n| serde_json::Value::from(&**n))
        .collect();
    ArrayBuilder::new().items(
        ObjectBuilder::new()
            .schema_type(Type::String)
            .enum_values(Some(names)),
    )
}

fn reference(name: &str) -> RefOr<Schema> {
    RefOr::Ref(utoipa::openapi::Ref::from_schema_name(name))
}

/// The document for this server's catalog.
pub fn document(signals: &Signals) -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    doc.servers = Some(vec![Server::new("/")]);

    let mut reading = ObjectBuilder::new()
        .description(Some(
            "A stored reading: one field per catalog signal (null: no value).",
        ))
        .property("timestamp", int64().description(Some("Unix ms")))
        .required("timestamp");
    let mut live = ObjectBuilder::new()
        .property("timestamp", int64())
        .required("timestamp")
        .property(
            "vehicle_vin",
            ObjectBuilder::new().schema_type(Type::String),
        )
        .required("vehicle_vin");
    let aggregate = ObjectBuilder::new()
        .property("min", ObjectBuilder::new().schema_type(Type::Number))
        .property("max", ObjectBuilder::new().schema_type(Type::Number))
        .property("mean", ObjectBuilder::new().schema_type(Type::Number))
        .required("min")
        .required("max")
        .required("mean");
    let mut bucket = ObjectBuilder::new()
        .property(
            "timestamp",
            int64().description(Some("Bucket start, Unix ms (a multiple of step)")),
        )
        .required("timestamp")
        .property("count", int64().minimum(Some(0)))
        .required("count");
    for name in signals.names() {
        reading = reading
            .property(&**name, nullable(Type::Number))
            .required(&**name);
        live = live
            .property(&**name, nullable(Type::Number))
            .required(&**name);
        bucket = bucket
            .property(
                &**name,
                utoipa::openapi::schema::OneOfBuilder::new()
                    .item(reference("Aggregate"))
                    .item(ObjectBuilder::new().schema_type(Type::Null)),
            )
            .required(&**name);
    }
    let reading = reading
        .property(
            "transmitted",
            names_array(signals).description(Some(
                "Signals sent on the wire (the others were reconstructed)",
            )),
        )
        .required("transmitted")
        .additional_properties(Some(AdditionalProperties::FreeForm(false)));
    let live = live
        .property("transmitted", names_array(signals))
        .required("transmitted")
        .property("predicted_fields", names_array(signals))
        .required("predicted_fields")
        .property(
            "session_id",
            ObjectBuilder::new()
                .schema_type(Type::String)
                .description(Some("16 hex digits")),
        )
        .required("session_id")
        .property("seq", int64().minimum(Some(0)))
        .required("seq");
    let bucket = bucket.additional_properties(Some(AdditionalProperties::FreeForm(false)));
    let next_cursor =
        nullable(Type::String).description(Some("Pass back as `cursor`; null on the last page"));
    let page = ObjectBuilder::new()
        .property("vin", ObjectBuilder::new().schema_type(Type::String))
        .required("vin")
        .property("readings", ArrayBuilder::new().items(reference("Reading")))
        .required("readings")
        .property("next_cursor", next_cursor)
        .required("next_cursor");
    let buckets = ObjectBuilder::new()
        .property("vin", ObjectBuilder::new().schema_type(Type::String))
        .required("vin")
        .property("step", int64().minimum(Some(1)))
        .required("step")
        .property("buckets", ArrayBuilder::new().items(reference("Bucket")))
        .required("buckets");
    if let Some(c) = doc.components.as_mut() {
        c.schemas.insert("Aggregate".into(), aggregate.into());
        c.schemas.insert("Reading".into(), reading.into());
        c.schemas.insert("LiveReading".into(), live.into());
        c.schemas.insert("Bucket".into(), bucket.into());
        c.schemas.insert("HistoryPage".into(), page.into());
        c.schemas.insert("BucketPage".into(), buckets.into());
        c.schemas.insert(
            "HistoryAnswer".into(),
            utoipa::openapi::schema::OneOfBuilder::new()
                .item(reference("HistoryPage"))
                .item(reference("BucketPage"))
                .into(),
        );
    }
    doc
}

/// `GET /openapi.json` and the Swagger UI at `/docs`.
/// The paths the documentation router serves (all public).
pub const PATHS: [&str; 4] = ["/openapi.json", "/docs", "/docs/", "/docs/{*rest}"];

pub fn router(signals: &Signals) -> Router<AppState> {
    Router::from(SwaggerUi::new("/docs").url("/openapi.json", document(signals)))
}
