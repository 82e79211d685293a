//! The signal catalog is the one source of the value columns and JSON field
//! names: a server built with a catalog of one extra signal adds the column
//! to an existing database, stores the values there and streams them under
//! the signal's name, with no other change.

use std::sync::Arc;
use std::time::Duration;

use lockstep_codec::catalog::{Model, Signal};
use lockstep_codec::{Catalog, Encoder, EncoderConfig, Vin};
use lockstep_server::App;

use crate::both_stores;
use crate::helpers::*;

fn with_cabin_temp() -> Catalog {
    let mut signals = Catalog::default_v1().signals().to_vec();
    signals.push(Signal {
        name: "cabin_temp".into(),
        unit: "degC".into(),
        quantum_exp: -1,
        tolerance_q: 5,
        model: Model::Hold,
        max_silence_ms: 60_000,
    });
    Catalog::new(signals).unwrap()
}

async fn an_extra_signal_is_stored_and_streamed(backend: Backend) {
    // A database made by a server with the default catalog, as after an upgrade.
    let db = spawn_app(backend).await.stop().await;

    init_tracing();
    let data_dir = Arc::new(tempfile::tempdir().unwrap());
    let s = settings(
        &db.url(),
        &["--data-dir", data_dir.path().to_str().unwrap()],
    );
    let catalog = with_cabin_temp();
    let app = start(
        App::build_with_catalog(s, catalog.clone()).await.unwrap(),
        db,
        data_dir,
    )
    .await;
    let mut ws = app.ws().await;
    ws.until(Duration::from_secs(5), "history", |_| true).await;

    let v = vin(900);
    let mut enc = Encoder::new(
        Arc::new(catalog),
        Vin::parse(&v).unwrap(),
        11,
        EncoderConfig::default(),
    );
    for k in 0..5 {
        let mut r = drive(k, 1_764_000_000_000);
        r.values.push(Some(21.5));
        enc.push(&r);
    }
    assert_eq!(
        app.post_batch(&enc.take_batch().unwrap()).await.status(),
        200
    );

    assert_eq!(
        app.db
            .count("SELECT COUNT(*) FROM telemetry_data WHERE cabin_temp BETWEEN 21.4 AND 21.6")
            .await,
        5
    );
    let live = ws
        .until(Duration::from_secs(5), "telemetry", |m| {
            m["data"]["vehicle_vin"] == v.as_str()
        })
        .await;
    assert_eq!(live["data"]["cabin_temp"].as_f64(), Some(21.5));
    // And from the store, in a new client's history.
    let mut ws2 = app.ws().await;
    let history = ws2.until(Duration::from_secs(5), "history", |_| true).await;
    let last = history["data"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["cabin_temp"].as_f64(), Some(21.5));
    assert!(last["speed"].as_f64().is_some());
}

both_stores!(an_extra_signal_is_stored_and_streamed);
