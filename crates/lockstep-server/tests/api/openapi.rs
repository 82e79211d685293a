//! `/openapi.json` describes every endpoint, the error body, the WebSocket
//! messages and the catalog's signals; `/docs` is served from the binary.

use serde_json::Value;

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_lists_every_endpoint_and_the_catalog() {
    let app = spawn_app(Backend::Sqlite).await;
    let doc = app.ok_json("/openapi.json").await;
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        doc["openapi"]
    );
    let paths = doc["paths"].as_object().unwrap();
    for (path, method) in [
        ("/api/telemetry", "post"),
        ("/api/v1/batch", "post"),
        ("/api/vehicles", "get"),
        ("/api/vehicles/{vin}", "get"),
        ("/api/vehicles/{vin}", "patch"),
        ("/api/vehicles/{vin}/telemetry", "get"),
        ("/api/vehicles/{vin}/stats", "get"),
        ("/api/stats", "get"),
        ("/status", "get"),
        ("/logger/status", "get"),
        ("/logger/start", "post"),
        ("/logger/stop", "post"),
        ("/ws", "get"),
    ] {
        assert!(
            paths.get(path).and_then(|p| p.get(method)).is_some(),
            "{method} {path}"
        );
    }
    let ingest = &paths["/api/telemetry"]["post"]["requestBody"]["content"];
    assert!(ingest.get("application/x-protobuf").is_some());
    assert!(ingest.get("application/x-lockstep-batch").is_some());
    let schemas = &doc["components"]["schemas"];
    for name in [
        "ErrorBody",
        "ServerMsg",
        "ClientMsg",
        "HistoryPage",
        "BucketPage",
        "VehicleJson",
    ] {
        assert!(schemas.get(name).is_some(), "component {name}");
    }
    for s in catalog().signals() {
        let reading = &schemas["Reading"]["properties"];
        assert!(reading.get(&s.name).is_some(), "Reading.{}", s.name);
        assert!(schemas["Bucket"]["properties"].get(&s.name).is_some());
        assert!(schemas["LiveReading"]["properties"].get(&s.name).is_some());
    }
    // The document validates what the server sends: a 404 matches ErrorBody's fields.
    let e: Value = app
        .get("/api/vehicles/5YJ3E1EA000000099")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(e["status"], "error");
    let fields = schemas["ErrorBody"]["properties"].as_object().unwrap();
    assert!(
        e.as_object()
            .unwrap()
            .keys()
            .all(|k| fields.contains_key(k))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_docs_page_is_served_from_the_binary() {
    let app = spawn_app(Backend::Sqlite).await;
    let resp = app.get("/docs/").await;
    assert_eq!(resp.status(), 200);
    let html = resp.text().await.unwrap();
    assert!(html.contains("swagger-ui"), "{html}");
    assert!(
        !html.contains("https://"),
        "no external script or style: {html}"
    );
    let init = app
        .get("/docs/swagger-initializer.js")
        .await
        .text()
        .await
        .unwrap();
    assert!(init.contains("/openapi.json"), "{init}");
    let bundle = app.get("/docs/swagger-ui-bundle.js").await;
    assert_eq!(bundle.status(), 200);
    assert!(bundle.bytes().await.unwrap().len() > 100_000);
}
