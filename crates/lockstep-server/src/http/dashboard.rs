//! The web dashboard, served from the binary.
//!
//! `dashboard/` is a React + TypeScript app built by Vite into `dashboard/dist`; `build.rs`
//! makes sure that folder exists (building it with npm when missing or stale, or writing a
//! placeholder page when Node is not installed). `rust-embed` compiles the folder into release
//! binaries; debug builds read it from disk at run time, so `npm run build` plus a browser
//! refresh shows changes without recompiling.
//!
//! Routes (all `GET`/`HEAD`):
//! - `/` and `/index.html` — the page, `Cache-Control: no-cache` (always revalidated, so a new
//!   binary's bundle is picked up at once);
//! - `/assets/{*path}` — Vite's content-hashed JS/CSS, `Cache-Control: public, max-age=31536000,
//!   immutable`;
//! - `/favicon.svg` — `Cache-Control: public, max-age=86400`.
//!
//! Every file carries a strong `ETag` (its SHA-256, from rust-embed) and `If-None-Match` gets a
//! `304`. Unknown asset paths get a `404`. No fallback route is installed, so the server's own
//! routes and 404 handling are untouched.
//!
//! Mounting: `router()` is generic over the router state and holds none itself, so it merges
//! into the application router: `Router::new().route(..).merge(dashboard::router()).with_state(state)`.

use std::fmt::Write as _;

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use rust_embed::RustEmbed;

/// `dashboard/dist`. rust-embed resolves a relative folder against `CARGO_MANIFEST_DIR`, so this
/// needs no `interpolate-folder-path` feature.
#[derive(RustEmbed)]
#[folder = "../../dashboard/dist"]
struct Assets;

/// How long browsers may keep a file without asking again.
#[derive(Clone, Copy)]
enum Cache {
    /// The HTML entry point: always revalidate (cheap with the ETag).
    Revalidate,
    /// Content-hashed bundles: a new build has new names, so cache for good.
    Immutable,
    /// Small unhashed static files.
    Day,
}

impl Cache {
    fn header(self) -> HeaderValue {
        HeaderValue::from_static(match self {
            Cache::Revalidate => "no-cache",
            Cache::Immutable => "public, max-age=31536000, immutable",
            Cache::Day => "public, max-age=86400",
        })
    }
}

/// Routes serving the embedded dashboard; see the module docs for paths and caching.
pub fn router<S>() -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    Router::new()
        .route("/", get(index))
        .route("/index.html", get(index))
        .route("/favicon.svg", get(favicon))
        .route("/assets/{*path}", get(asset))
}

async fn index(headers: HeaderMap) -> Response {
    serve("index.html", &headers, Cache::Revalidate)
}

async fn favicon(headers: HeaderMap) -> Response {
    serve("favicon.svg", &headers, Cache::Day)
}

async fn asset(Path(path): Path<String>, headers: HeaderMap) -> Response {
    serve(&format!("assets/{path}"), &headers, Cache::Immutable)
}

fn serve(path: &str, headers: &HeaderMap, cache: Cache) -> Response {
    let Some(file) = Assets::get(path) else {
        return (
            StatusCode::NOT_FOUND,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            "There is no dashboard file at this path.\n",
        )
            .into_response();
    };
    let etag = etag(&file.metadata.sha256_hash());
    if if_none_match(headers, &etag) {
        return (
            StatusCode::NOT_MODIFIED,
            [
                (header::ETAG, etag),
                (header::CACHE_CONTROL, cache.header()),
            ],
        )
            .into_response();
    }
    let content_type = content_type(file.metadata.mimetype());
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, cache.header()),
            (header::ETAG, etag),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
        ],
        file.data,
    )
        .into_response()
}

/// A quoted strong ETag from the first 16 bytes of the file's SHA-256.
fn etag(sha256: &[u8; 32]) -> HeaderValue {
    let mut s = String::with_capacity(34);
    s.push('"');
    for b in &sha256[..16] {
        let _ = write!(s, "{b:02x}");
    }
    s.push('"');
    HeaderValue::from_str(&s).expect("hex in quotes is a valid header value")
}

/// True when `If-None-Match` lists this ETag (weak comparison, as RFC 9110 asks for GET) or `*`.
fn if_none_match(headers: &HeaderMap, etag: &HeaderValue) -> bool {
    let Some(value) = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let ours = etag.to_str().unwrap_or_default();
    value
        .split(',')
        .map(str::trim)
        .any(|tag| tag == "*" || tag.trim_start_matches("W/") == ours)
}

/// The MIME type rust-embed guessed from the extension, with a charset for text.
fn content_type(mime: &str) -> HeaderValue {
    let value = match mime {
        "text/html"
        | "text/css"
        | "text/javascript"
        | "application/javascript"
        | "image/svg+xml" => {
            format!("{mime}; charset=utf-8")
        }
        other => other.to_owned(),
    };
    HeaderValue::from_str(&value)
        .unwrap_or_else(|_| HeaderValue::from_static("application/octet-stream"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_if_none_match(tag: &HeaderValue) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::IF_NONE_MATCH, tag.clone());
        h
    }

    #[tokio::test]
    async fn index_is_html_revalidated_and_answers_304_to_its_etag() {
        let res = index(HeaderMap::new()).await;
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(
            res.headers()[header::CONTENT_TYPE],
            "text/html; charset=utf-8"
        );
        assert_eq!(res.headers()[header::CACHE_CONTROL], "no-cache");
        let tag = res.headers()[header::ETAG].clone();

        let again = index(with_if_none_match(&tag)).await;
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(again.headers()[header::ETAG], tag);
        let other = index(with_if_none_match(&HeaderValue::from_static("\"other\""))).await;
        assert_eq!(other.status(), StatusCode::OK);
    }

    #[tokio::test]
    async fn hashed_assets_are_cached_for_good_with_their_mime_type() {
        // The placeholder page (built without Node) has no assets; the real bundle has JS and CSS.
        for path in Assets::iter().filter(|p| p.starts_with("assets/")) {
            let name = path.trim_start_matches("assets/").to_owned();
            let res = asset(Path(name), HeaderMap::new()).await;
            assert_eq!(res.status(), StatusCode::OK, "{path}");
            let h = res.headers();
            assert_eq!(
                h[header::CACHE_CONTROL],
                "public, max-age=31536000, immutable"
            );
            let ct = h[header::CONTENT_TYPE].to_str().unwrap().to_owned();
            if path.ends_with(".js") {
                assert!(ct.contains("javascript"), "{path}: {ct}");
            } else if path.ends_with(".css") {
                assert!(ct.starts_with("text/css"), "{path}: {ct}");
            }
        }
    }

    #[tokio::test]
    async fn unknown_assets_are_404() {
        let res = asset(Path("nope.js".into()), HeaderMap::new()).await;
        assert_eq!(res.status(), StatusCode::NOT_FOUND);
        let res = asset(Path("../../Cargo.toml".into()), HeaderMap::new()).await;
        assert_eq!(res.status(), StatusCode::NOT_FOUND);
    }

    /// Through a real listener: the routes exist, and paths it does not own stay unrouted.
    #[tokio::test]
    async fn router_serves_the_page_and_leaves_other_paths_alone() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app: Router = router::<()>();
        let server = tokio::spawn(async move { axum::serve(listener, app).await });
        let client = reqwest::Client::new();
        let get = |path: &str| client.get(format!("http://{addr}{path}")).send();

        let page = get("/").await.unwrap();
        assert_eq!(page.status(), 200);
        assert!(page.text().await.unwrap().contains("<html"));
        assert_eq!(get("/index.html").await.unwrap().status(), 200);
        assert_eq!(
            get("/favicon.svg").await.unwrap().status().is_success(),
            Assets::get("favicon.svg").is_some()
        );
        assert_eq!(get("/assets/missing.js").await.unwrap().status(), 404);
        assert_eq!(get("/status").await.unwrap().status(), 404);
        server.abort();
    }

    #[test]
    fn if_none_match_accepts_lists_weak_tags_and_star() {
        let tag = HeaderValue::from_static("\"abc\"");
        let mut h = HeaderMap::new();
        h.insert(
            header::IF_NONE_MATCH,
            HeaderValue::from_static("\"x\", W/\"abc\""),
        );
        assert!(if_none_match(&h, &tag));
        h.insert(header::IF_NONE_MATCH, HeaderValue::from_static("*"));
        assert!(if_none_match(&h, &tag));
        h.insert(header::IF_NONE_MATCH, HeaderValue::from_static("\"x\""));
        assert!(!if_none_match(&h, &tag));
    }

    #[test]
    fn text_types_get_a_charset() {
        assert_eq!(content_type("text/html"), "text/html; charset=utf-8");
        assert_eq!(content_type("image/png"), "image/png");
    }
}
