//! Downstream sinks end to end: readings ingested over HTTP reach NATS
//! JetStream and an MQTT broker, and a broker restart in the middle of the
//! stream loses none of them. The basic path uses the machine's brokers
//! (127.0.0.1:4222 and :1883) with a unique stream, subject and topic per
//! test; the restart test starts its own `nats-server` and `mosquitto` on
//! free ports in a temp dir.

use std::collections::{BTreeMap, BTreeSet};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream;
use lockstep_server::model::Signals;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::Value;
use tokio::sync::oneshot;

use crate::both_stores;
use crate::helpers::*;

both_stores!(
    every_reading_reaches_nats_and_mqtt,
    a_broker_restart_loses_no_reading
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_share_a_sink_and_take_it_over() {
    one_server_drives_each_sink_and_another_takes_over().await
}

const T0: i64 = 1_764_000_000_000;
const WAIT: Duration = Duration::from_secs(60);

/// A stream, subject and topic of this test only.
struct Names {
    stream: String,
    subject: String,
    topic: String,
}

impl Names {
    fn new() -> Self {
        let tag = format!("{}_{:08x}", std::process::id(), rand::random::<u32>());
        Self {
            stream: format!("LOCKSTEP_TEST_{tag}"),
            subject: format!("lockstep_test_{tag}.telemetry"),
            topic: format!("lockstep_test_{tag}/telemetry"),
        }
    }

    fn flags(&self, nats: &str, mqtt: &str) -> Vec<String> {
        [
            "--nats-url",
            nats,
            "--nats-stream",
            &self.stream,
            "--nats-subject",
            &self.subject,
            "--mqtt-url",
            mqtt,
            "--mqtt-topic",
            &self.topic,
            "--sink-batch",
            "25",
        ]
        .map(str::to_owned)
        .to_vec()
    }
}

async fn spawn_with_sinks(backend: Backend, flags: &[String]) -> TestApp {
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    spawn_app_with(Arc::new(TestDb::new(backend).await), &flags).await
}

/// Posts readings `range` of two vehicles' drives; every request must be acknowledged.
async fn ingest(
    app: &TestApp,
    encoders: &mut [lockstep_codec::Encoder],
    range: std::ops::Range<usize>,
) {
    for enc in encoders.iter_mut() {
        let resp = app.post_batch(&batch(enc, range.clone(), T0)).await;
        assert!(
            resp.status().is_success(),
            "ingest answered {}",
            resp.status()
        );
    }
}

/// Every stored reading as (VIN, seq), read from the database itself.
async fn stored(app: &TestApp) -> BTreeSet<(String, u64)> {
    app.db
        .query("SELECT v.vin, t.seq FROM telemetry_data t JOIN vehicles v ON v.id = t.vehicle_id")
        .await
        .into_iter()
        .map(|r| {
            (
                r[0].clone().unwrap(),
                r[1].as_deref().unwrap().parse().unwrap(),
            )
        })
        .collect()
}

/// Waits until both sinks have forwarded everything stored: lag 0, cursor
/// at the newest row, driven by this server.
async fn caught_up(app: &TestApp) {
    let newest = app
        .db
        .count("SELECT COALESCE(max(id), 0) FROM telemetry_data")
        .await;
    eventually(WAIT, "both sinks to catch up", || async {
        drives_and_caught_up(app, newest).await.then_some(())
    })
    .await;
}

/// This server drives both sinks, and they forwarded up to row `newest`.
async fn drives_and_caught_up(app: &TestApp, newest: i64) -> bool {
    let s = app.status().await;
    ["nats", "mqtt"].iter().all(|k| {
        s["sinks"][k]["lag_readings"] == 0
            && s["sinks"][k]["position"] == newest
            && s["sinks"][k]["active"] == true
    })
}

/// The (VIN, seq) of a reading JSON.
fn key(v: &Value) -> (String, u64) {
    (
        v["vehicle_vin"].as_str().expect("vehicle_vin").to_owned(),
        v["seq"].as_u64().expect("seq"),
    )
}

/// Every message of the JetStream stream, with its `Nats-Msg-Id` and subject.
async fn stream_messages(url: &str, stream: &str) -> Vec<(Value, String, String)> {
    let js = jetstream::new(async_nats::connect(url).await.expect("NATS"));
    let s = js.get_stream(stream).await.expect("the stream exists");
    let last = s.get_info().await.expect("stream info").state.last_sequence;
    let mut out = Vec::new();
    for seq in 1..=last {
        let m = s.get_raw_message(seq).await.expect("stored message");
        let id = m
            .headers
            .get("Nats-Msg-Id")
            .map(|h| h.as_str().to_owned())
            .unwrap_or_default();
        out.push((
            serde_json::from_slice(&m.payload).expect("JSON payload"),
            id,
            m.subject.to_string(),
        ));
    }
    out
}

async fn delete_stream(url: &str, stream: &str) {
    if let Ok(c) = async_nats::connect(url).await {
        let _ = jetstream::new(c).delete_stream(stream).await;
    }
}

/// An MQTT subscriber to `<topic>/#` at QoS 1 that keeps every message.
/// `persistent`: a fixed session the broker keeps (and queues for) across
/// disconnections and, with persistence on, its own restarts.
struct MqttSub {
    got: Arc<Mutex<Vec<Value>>>,
    task: tokio::task::JoinHandle<()>,
}

impl MqttSub {
    async fn start(port: u16, topic: &str, persistent: bool) -> Self {
        let id = format!("sub{:08x}", rand::random::<u32>());
        let mut o = MqttOptions::new(id, "127.0.0.1", port);
        o.set_clean_session(!persistent);
        o.set_keep_alive(Duration::from_secs(5));
        let (client, mut el) = AsyncClient::new(o, 64);
        let got = Arc::new(Mutex::new(Vec::new()));
        let (subscribed, ready) = oneshot::channel();
        let filter = format!("{topic}/#");
        let task = tokio::spawn({
            let got = got.clone();
            async move {
                let mut subscribed = Some(subscribed);
                loop {
                    match el.poll().await {
                        Ok(Event::Incoming(Packet::ConnAck(_))) => {
                            // Idempotent: a kept session already has it.
                            let _ = client.try_subscribe(filter.clone(), QoS::AtLeastOnce);
                        }
                        Ok(Event::Incoming(Packet::SubAck(_))) => {
                            if let Some(s) = subscribed.take() {
                                let _ = s.send(());
                            }
                        }
                        Ok(Event::Incoming(Packet::Publish(p))) => {
                            let v: Value = serde_json::from_slice(&p.payload).expect("JSON");
                            assert!(p.topic.ends_with(v["vehicle_vin"].as_str().unwrap()));
                            got.lock().unwrap().push(v);
                        }
                        Ok(_) => {}
                        // The broker is down: the next poll reconnects.
                        Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                    }
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(10), ready)
            .await
            .expect("MQTT subscription in time")
            .unwrap();
        Self { got, task }
    }

    /// Waits until every reading of `stored` arrived (at least once).
    async fn wait_for_all(&self, stored: &BTreeSet<(String, u64)>) {
        eventually(WAIT, "every reading at the MQTT subscriber", || async {
            let keys: BTreeSet<_> = self.keys().into_iter().collect();
            (&keys == stored).then_some(())
        })
        .await;
    }

    fn keys(&self) -> Vec<(String, u64)> {
        self.got.lock().unwrap().iter().map(key).collect()
    }
}

impl Drop for MqttSub {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Duplicates per (VIN, seq) beyond the first, for the report.
fn duplicates(keys: &[(String, u64)]) -> usize {
    let mut n: BTreeMap<&(String, u64), usize> = BTreeMap::new();
    for k in keys {
        *n.entry(k).or_default() += 1;
    }
    n.values().map(|c| c - 1).sum()
}

async fn every_reading_reaches_nats_and_mqtt(backend: Backend) {
    let names = Names::new();
    let nats = "nats://127.0.0.1:4222";
    let sub = MqttSub::start(1883, &names.topic, false).await;
    let app = spawn_with_sinks(backend, &names.flags(nats, "mqtt://127.0.0.1:1883")).await;
    let mut encoders = [encoder(&vin(1), 11), encoder(&vin(2), 12)];
    ingest(&app, &mut encoders, 0..30).await;
    ingest(&app, &mut encoders, 30..70).await;
    caught_up(&app).await;
    let stored = stored(&app).await;
    assert_eq!(stored.len(), 140);

    let in_stream = stream_messages(nats, &names.stream).await;
    delete_stream(nats, &names.stream).await;
    let got: Vec<_> = in_stream.iter().map(|(v, ..)| key(v)).collect();
    assert_eq!(
        got.iter().cloned().collect::<BTreeSet<_>>(),
        stored,
        "NATS: every stored reading"
    );
    assert_eq!(
        got.len(),
        stored.len(),
        "NATS: no duplicate without a failure"
    );
    let signals = Signals::from_catalog(&catalog());
    for (v, id, subject) in &in_stream {
        let (vin, seq) = key(v);
        assert_eq!(subject, &format!("{}.{vin}", names.subject));
        let session = v["session_id"].as_str().unwrap();
        assert_eq!(id, &format!("{vin}/{session}/{seq}"), "Nats-Msg-Id");
        for name in signals.names() {
            assert!(v.get(&**name).is_some(), "signal {name} in {v}");
        }
        assert!(v["transmitted"].is_array());
    }
    // The values are the stored ones.
    let first = &app
        .db
        .query(&format!(
            "SELECT t.speed, t.transmitted_mask FROM telemetry_data t JOIN vehicles v ON v.id = t.vehicle_id
             WHERE v.vin = '{}' AND t.seq = 5",
            vin(1)
        ))
        .await[0];
    let (v, ..) = in_stream
        .iter()
        .find(|(v, ..)| key(v) == (vin(1), 5))
        .unwrap();
    let speed: f64 = first[0].as_deref().unwrap().parse().unwrap();
    assert!((v["speed"].as_f64().unwrap() - speed).abs() < 1e-9);
    let mask: u64 = first[1].as_deref().unwrap().parse::<i64>().unwrap() as u64;
    let transmitted = v["transmitted"].as_array().unwrap();
    assert_eq!(transmitted.len(), mask.count_ones() as usize);

    eventually(WAIT, "every reading at the MQTT subscriber", || async {
        (sub.keys().len() >= stored.len()).then_some(())
    })
    .await;
    let keys = sub.keys();
    assert_eq!(
        keys.iter().cloned().collect::<BTreeSet<_>>(),
        stored,
        "MQTT: every stored reading"
    );
    assert_eq!(
        keys.len(),
        stored.len(),
        "MQTT: no duplicate without a failure"
    );

    // The cursors are durable.
    let newest = app.db.count("SELECT max(id) FROM telemetry_data").await;
    assert_eq!(
        app.db.count("SELECT count(*) FROM sink_cursors WHERE position = (SELECT max(id) FROM telemetry_data)").await,
        2,
        "both cursors at {newest}"
    );
    app.stop().await;
}

/// A broker process of this test, on a free port, its data in a temp dir.
struct Private {
    name: &'static str,
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Private {
    fn nats() -> Self {
        Self::new("nats-server")
    }

    fn mosquitto() -> Self {
        Self::new("mosquitto")
    }

    fn new(name: &'static str) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut p = Self {
            name,
            port,
            dir: tempfile::tempdir().unwrap(),
            child: None,
        };
        p.start();
        p
    }

    fn start(&mut self) {
        let dir = self.dir.path();
        let mut cmd = match self.name {
            "nats-server" => {
                let mut c = Command::new("nats-server");
                c.args([
                    "-js",
                    "-a",
                    "127.0.0.1",
                    "-p",
                    &self.port.to_string(),
                    "-sd",
                ])
                .arg(dir);
                c
            }
            _ => {
                let conf = dir.join("mosquitto.conf");
                std::fs::write(
                    &conf,
                    format!(
                        "listener {} 127.0.0.1\nallow_anonymous true\npersistence true\n\
                         persistence_location {}/\nmax_queued_messages 0\n",
                        self.port,
                        dir.display()
                    ),
                )
                .unwrap();
                let mut c = Command::new("mosquitto");
                c.arg("-c").arg(conf);
                c
            }
        };
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{} must be installed: {e}", self.name));
        self.child = Some(child);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "{} did not listen",
                self.name
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM (both save their state), then wait for the exit.
    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            if let Some(pid) = rustix::process::Pid::from_raw(c.id() as i32) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            }
            let _ = c.wait();
        }
    }

    fn url(&self, scheme: &str) -> String {
        format!("{scheme}://127.0.0.1:{}", self.port)
    }
}

impl Drop for Private {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

async fn a_broker_restart_loses_no_reading(backend: Backend) {
    let names = Names::new();
    let mut nats = Private::nats();
    let mut mosquitto = Private::mosquitto();
    let sub = MqttSub::start(mosquitto.port, &names.topic, true).await;
    let app = spawn_with_sinks(
        backend,
        &names.flags(&nats.url("nats"), &mosquitto.url("mqtt")),
    )
    .await;
    let mut encoders = [encoder(&vin(1), 21), encoder(&vin(2), 22)];

    ingest(&app, &mut encoders, 0..40).await;
    caught_up(&app).await;

    // Both brokers go away; ingest goes on, and the lag shows it.
    nats.stop();
    mosquitto.stop();
    ingest(&app, &mut encoders, 40..70).await;
    ingest(&app, &mut encoders, 70..100).await;
    eventually(WAIT, "the lag of both sinks in /status", || async {
        let s = app.status().await;
        let waiting = ["nats", "mqtt"]
            .iter()
            .all(|k| s["sinks"][k]["lag_readings"] == 120 && s["sinks"][k]["connected"] == false);
        waiting.then_some(())
    })
    .await;

    // Back: everything held in the store goes out, and what comes next too.
    nats.start();
    mosquitto.start();
    ingest(&app, &mut encoders, 100..130).await;
    caught_up(&app).await;
    let stored = stored(&app).await;
    assert_eq!(stored.len(), 260);

    let got: Vec<_> = stream_messages(&nats.url("nats"), &names.stream)
        .await
        .iter()
        .map(|(v, ..)| key(v))
        .collect();
    assert_eq!(
        got.iter().cloned().collect::<BTreeSet<_>>(),
        stored,
        "NATS: none missing"
    );
    // Republished readings carry the same Nats-Msg-Id: JetStream keeps one.
    assert_eq!(
        duplicates(&got),
        0,
        "NATS: JetStream dropped the republished readings"
    );

    sub.wait_for_all(&stored).await;
    let keys = sub.keys();
    println!(
        "MQTT: {} messages for {} readings ({} duplicates, allowed: at least once)",
        keys.len(),
        stored.len(),
        duplicates(&keys)
    );
    app.stop().await;
}

/// Two servers on one PostgreSQL database, ingesting at the same time (their
/// commits interleave): one drives both sinks, the other stands by; when the
/// driver stops, the other takes over once the lease expires, from the
/// stored cursor, and nothing is missing.
async fn one_server_drives_each_sink_and_another_takes_over() {
    let names = Names::new();
    let nats = "nats://127.0.0.1:4222";
    let sub = MqttSub::start(1883, &names.topic, false).await;
    let mut flags = names.flags(nats, "mqtt://127.0.0.1:1883");
    flags.extend(["--sink-lease-ms".to_owned(), "1500".to_owned()]);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let db = Arc::new(TestDb::new(Backend::Postgres).await);
    let a = spawn_app_with(db.clone(), &flags).await;
    let b = spawn_app_with(db.clone(), &flags).await;
    let (mut ea, mut eb) = ([encoder(&vin(1), 31)], [encoder(&vin(2), 32)]);
    for k in 0..4 {
        let r = k * 20..(k + 1) * 20;
        tokio::join!(ingest(&a, &mut ea, r.clone()), ingest(&b, &mut eb, r));
    }
    let newest = db.count("SELECT max(id) FROM telemetry_data").await;
    let (driver, standby) = eventually(WAIT, "one server to drive the sinks", || async {
        match (
            drives_and_caught_up(&a, newest).await,
            drives_and_caught_up(&b, newest).await,
        ) {
            (true, false) => Some((0, 1)),
            (false, true) => Some((1, 0)),
            _ => None,
        }
    })
    .await;
    let mut apps = [Some(a), Some(b)];
    let standby_app = apps[standby].take().unwrap();
    let s = standby_app.status().await;
    assert_eq!(s["sinks"]["nats"]["active"], false, "{s}");
    assert_eq!(s["sinks"]["mqtt"]["active"], false, "{s}");

    apps[driver].take().unwrap().stop().await;
    let mut rest = if standby == 0 { ea } else { eb };
    ingest(&standby_app, &mut rest, 80..100).await;
    caught_up(&standby_app).await;

    let stored = stored(&standby_app).await;
    assert_eq!(stored.len(), 180);
    let in_stream = stream_messages(nats, &names.stream).await;
    delete_stream(nats, &names.stream).await;
    let got: BTreeSet<_> = in_stream.iter().map(|(v, ..)| key(v)).collect();
    assert_eq!(got, stored, "NATS: none missing across the takeover");
    sub.wait_for_all(&stored).await;
    standby_app.stop().await;
}

/// The NATS sink's families on the server's own `/metrics`: with the broker
/// unreachable (a proxy in front of the machine's NATS, closed) the lag is
/// every stored reading and failures count up; once it is reachable, the lag
/// falls to 0 and exactly the stored readings count as forwarded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sink_lag_and_forwarding_show_in_metrics() {
    use crate::metrics::{metrics, sample};
    let proxy = lockstep_testkit::Proxy::start("127.0.0.1:4222".into()).await;
    proxy.close();
    let names = Names::new();
    let nats = format!("nats://{}", proxy.addr);
    let flags = [
        "--nats-url",
        &nats,
        "--nats-stream",
        &names.stream,
        "--nats-subject",
        &names.subject,
        "--sink-batch",
        "100",
    ]
    .map(str::to_owned);
    let app = spawn_with_sinks(Backend::Sqlite, &flags).await;
    let nats_sink = [("sink", "nats")];
    let text = metrics(&app).await;
    assert_eq!(
        sample(&text, "lockstep_sink_forwarded_readings_total", &nats_sink),
        0.0
    );
    assert!(
        text.contains("lockstep_sink_lag_readings{sink=\"nats\"}"),
        "the families exist from the start: {text}"
    );

    let mut encoders = [encoder(&vin(91), 1), encoder(&vin(92), 2)];
    ingest(&app, &mut encoders, 0..20).await;
    let text = eventually(WAIT, "the lag of 40 readings and a failure", || async {
        let text = metrics(&app).await;
        (sample(&text, "lockstep_sink_lag_readings", &nats_sink) == 40.0
            && sample(&text, "lockstep_sink_publish_failures_total", &nats_sink) >= 1.0)
            .then_some(text)
    })
    .await;
    assert_eq!(sample(&text, "lockstep_sink_connected", &nats_sink), 0.0);
    assert_eq!(
        sample(&text, "lockstep_sink_forwarded_readings_total", &nats_sink),
        0.0
    );
    assert_eq!(app.status().await["sinks"]["nats"]["lag_readings"], 40);

    proxy.reopen();
    let text = eventually(WAIT, "the sink to catch up", || async {
        let text = metrics(&app).await;
        (sample(&text, "lockstep_sink_lag_readings", &nats_sink) == 0.0
            && sample(&text, "lockstep_sink_forwarded_readings_total", &nats_sink) == 40.0)
            .then_some(text)
    })
    .await;
    eventually(WAIT, "the connection gauge", || async {
        (sample(&metrics(&app).await, "lockstep_sink_connected", &nats_sink) == 1.0).then_some(())
    })
    .await;
    let failures = sample(&text, "lockstep_sink_publish_failures_total", &nats_sink);
    // More readings move the counter by exactly what was stored.
    ingest(&app, &mut encoders, 20..25).await;
    eventually(WAIT, "10 more forwarded", || async {
        let text = metrics(&app).await;
        (sample(&text, "lockstep_sink_forwarded_readings_total", &nats_sink) == 50.0
            && sample(&text, "lockstep_sink_lag_readings", &nats_sink) == 0.0)
            .then_some(())
    })
    .await;
    let text = metrics(&app).await;
    assert_eq!(
        sample(&text, "lockstep_sink_publish_failures_total", &nats_sink),
        failures,
        "no failure while the broker is up"
    );
    let got = stream_messages("nats://127.0.0.1:4222", &names.stream).await;
    let ids: BTreeSet<&str> = got.iter().map(|(_, id, _)| id.as_str()).collect();
    assert_eq!(ids.len(), 50, "every stored reading is in the stream");
    app.stop().await;
    delete_stream("nats://127.0.0.1:4222", &names.stream).await;
}
