//! Several `lockstep-server` instances on one PostgreSQL database and the
//! machine's Redis (a prefix of their own): three behind a real nginx
//! (Debian's `/usr/sbin/nginx`, started by the test with its own
//! configuration on a free port, round robin per request), replaying a
//! recorded Twizy trip in both wire forms with a WebSocket client on every
//! instance; one instance SIGKILLed mid-replay; and the edge's own failover
//! (`--server` repeated) when the server it uses dies.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::harness::*;
use crate::observer::{Observed, observe, stream_keys, wait_greeted};

/// The machine's Redis; each cluster of a test gets a prefix of its own.
const REDIS_URL: &str = "redis://127.0.0.1:6379";

/// Debian's nginx (`apt-get install nginx`; `.ci/run` and `scripts/test.sh` install it).
const NGINX: &str = "/usr/sbin/nginx";

/// nginx in the foreground with a configuration of its own in a temp dir,
/// proxying round robin to `upstreams`; killed (by its PID) when dropped.
struct Nginx {
    port: u16,
    dir: tempfile::TempDir,
    child: Child,
}

impl Nginx {
    async fn start(upstreams: &[u16]) -> Self {
        assert!(
            Path::new(NGINX).exists(),
            "{NGINX} is missing: apt-get install -y nginx (scripts/test.sh does)"
        );
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let d = dir.path().display();
        let servers: String = upstreams
            .iter()
            .map(|p| format!("    server 127.0.0.1:{p} max_fails=1 fail_timeout=2s;\n"))
            .collect();
        // Run as root (the tests do in CI): workers stay root so they can use the temp dir.
        let user = if rustix::process::geteuid().is_root() {
            "user root root;"
        } else {
            ""
        };
        let conf = format!(
            "{user}
daemon off;
master_process on;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 512; }}
http {{
  access_log off;
  client_body_temp_path {d}/body;
  proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fastcgi;
  uwsgi_temp_path {d}/uwsgi;
  scgi_temp_path {d}/scgi;
  upstream lockstep {{
{servers}  }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://lockstep;
      proxy_http_version 1.1;
      proxy_set_header Connection \"\";
      proxy_connect_timeout 1s;
      # Ingest is idempotent (duplicates are acknowledged), so POSTs may go to the next instance.
      proxy_next_upstream error timeout http_502 http_503 non_idempotent;
    }}
  }}
}}
"
        );
        let conf_path = dir.path().join("nginx.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let log = std::fs::File::create(dir.path().join("stderr")).unwrap();
        let child = Command::new(NGINX)
            .args(["-p", &d.to_string(), "-c", conf_path.to_str().unwrap()])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn nginx");
        let mut n = Nginx { port, dir, child };
        let url = format!("{}/status", n.base());
        let http = reqwest::Client::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(st) = n.child.try_wait().unwrap() {
                panic!("nginx exited ({st}): {}", n.log());
            }
            let up = http.get(&url).send().await;
            if up.is_ok_and(|r| r.status().is_success()) {
                return n;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "nginx did not answer within 10 s: {}",
                n.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn log(&self) -> String {
        let read = |f: &str| std::fs::read_to_string(self.dir.path().join(f)).unwrap_or_default();
        format!("{}{}", read("stderr"), read("error.log"))
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // The master by its PID (SIGKILL of the master alone would leave its worker).
        signal(&self.child, rustix::process::Signal::QUIT);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while self.child.try_wait().ok().flatten().is_none() {
            if std::time::Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Sum of a counter family's samples on one server's `/metrics`.
async fn counter(server: &Server, name: &str) -> f64 {
    let Ok(r) = server
        .http
        .get(format!("{}/metrics", server.base()))
        .send()
        .await
    else {
        return 0.0;
    };
    r.text()
        .await
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Three instances on `db`, joined by Redis under a prefix unique to the test.
async fn three_servers(db: &Db) -> Vec<Server> {
    let prefix = format!(
        "lockstep-e2e-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let args = ["--redis-url", REDIS_URL, "--redis-prefix", &prefix];
    let mut servers = Vec::new();
    for _ in 0..3 {
        servers.push(Server::start(&db.url(), &args).await);
    }
    servers
}

/// One instance's WebSocket client: what it heard, and its task.
type Observer = (
    std::sync::Arc<std::sync::Mutex<Observed>>,
    tokio::task::JoinHandle<()>,
);

/// A WebSocket client on every instance, each greeted before the replay starts.
async fn observe_all(servers: &[Server]) -> Vec<Observer> {
    let observers: Vec<_> = servers.iter().map(|s| observe(s.port)).collect();
    let seen: Vec<_> = observers.iter().map(|(o, _)| o.clone()).collect();
    wait_greeted(&seen).await;
    observers
}

/// Every observer heard every stored reading of `vin` exactly once, and
/// nothing else, without a gap notice or a closed socket.
async fn assert_everyone_heard(db: &Db, vin: &str, observers: Vec<Observer>) {
    let stored = stream_keys(vin, &db.rows_of(vin).await);
    for (i, (o, task)) in observers.into_iter().enumerate() {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let heard = loop {
            let (heard, notices, closes) = {
                let o = o.lock().unwrap();
                (o.readings.clone(), o.notices, o.closes)
            };
            if heard.len() >= stored.len() {
                break heard;
            }
            // On a timeout, say what the client heard and what it was told.
            if tokio::time::Instant::now() >= deadline {
                let heard: std::collections::HashSet<_> = heard.into_iter().collect();
                let missing: Vec<_> = stored.difference(&heard).take(5).collect();
                panic!(
                    "instance {i}'s client heard {} of {} stored readings in 20 s after the \
                     replay ({notices} gap/lagged notices, {closes} closes); missing e.g. {missing:?}",
                    heard.len(),
                    stored.len()
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        };
        // A moment for anything extra (a duplicate) to arrive too.
        tokio::time::sleep(Duration::from_millis(300)).await;
        task.abort();
        let o = o.lock().unwrap();
        let unique: std::collections::HashSet<_> = o.readings.iter().cloned().collect();
        assert_eq!(
            o.readings.len(),
            unique.len(),
            "instance {i}'s client heard a reading twice"
        );
        assert_eq!(
            unique, stored,
            "instance {i}'s client heard exactly what is stored"
        );
        assert_eq!(
            (o.notices, o.closes),
            (0, 0),
            "instance {i}: no gap notices or closes"
        );
        println!(
            "instance {i}'s WebSocket client: {} of {} stored readings",
            heard.len(),
            stored.len()
        );
    }
}

/// The resync answers the store counted for `vin`.
async fn stored_resyncs(db: &Db, vin: &str) -> i64 {
    db.count(&format!(
        "SELECT COALESCE(SUM(resyncs), 0) FROM vehicles WHERE vin = '{vin}'"
    ))
    .await
}

/// Lockstep form through nginx to three instances: every reading exactly
/// once within tolerance, at most one resync, every instance took requests,
/// and a WebSocket client on each instance heard every reading once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_behind_nginx_store_a_lockstep_trip_once() {
    let db = Db::postgres().await;
    let (vin, trip) = expected_trip(SHORT_TRIP);
    let servers = three_servers(&db).await;
    let ports: Vec<u16> = servers.iter().map(|s| s.port).collect();
    let nginx = Nginx::start(&ports).await;
    let observers = observe_all(&servers).await;
    let mut edge = Edge::replay(
        &nginx.base(),
        SHORT_TRIP,
        &["--as-fast-as-possible", "--batch-readings", "20"],
    );
    let summary = edge.finish(Duration::from_secs(120)).await;
    println!("{}", summary.text);
    assert_eq!(summary.acknowledged, trip.readings.len() as u64);
    assert_trip_stored(&db, &vin, &trip).await;
    assert!(summary.resyncs <= 1, "resyncs: {}", summary.resyncs);
    assert!(stored_resyncs(&db, &vin).await <= 1);
    let mut per_instance = Vec::new();
    for s in &servers {
        per_instance.push(
            counter(
                s,
                "lockstep_readings_total{form=\"batch\",outcome=\"stored\"}",
            )
            .await,
        );
    }
    println!("readings stored per instance: {per_instance:?}");
    assert!(
        per_instance.iter().all(|n| *n > 0.0),
        "round robin: {per_instance:?}"
    );
    assert_everyone_heard(&db, &vin, observers).await;
}

/// Seed form through nginx to three instances: every reading exactly once,
/// every recorded value within the seed tolerance (each instance would
/// otherwise predict from its own stale predictor).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_behind_nginx_store_a_seed_trip_once() {
    let db = Db::postgres().await;
    let (vin, trip) = expected_trip(SHORT_TRIP);
    let servers = three_servers(&db).await;
    let ports: Vec<u16> = servers.iter().map(|s| s.port).collect();
    let nginx = Nginx::start(&ports).await;
    let observers = observe_all(&servers).await;
    let mut edge = Edge::replay(
        &nginx.base(),
        SHORT_TRIP,
        &["--as-fast-as-possible", "--seed-wire"],
    );
    let summary = edge.finish(Duration::from_secs(180)).await;
    println!("{}", summary.text);
    assert_eq!(summary.acknowledged, trip.readings.len() as u64);
    let check = check_seed_rows(&trip.readings, &db.rows_of(&vin).await);
    assert!(
        check.out_of_tolerance.is_empty(),
        "{} values out of the seed tolerance, e.g. {:?}",
        check.out_of_tolerance.len(),
        &check.out_of_tolerance[..check.out_of_tolerance.len().min(5)]
    );
    assert!(check.invented.is_empty(), "{:?}", check.invented.first());
    assert_eq!(summary.resyncs, 0);
    let mut retries = 0.0;
    for s in &servers {
        retries += counter(s, "lockstep_session_retries_total").await;
    }
    println!(
        "{} seed readings through 3 instances; {retries} requests decoded again after another instance advanced the predictor",
        trip.readings.len()
    );
    assert_everyone_heard(&db, &vin, observers).await;
}

/// One of three instances SIGKILLed mid-replay: nginx moves on, nothing the
/// edge was told is stored is lost, nothing is stored twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_one_instance_behind_nginx_loses_nothing() {
    let db = Db::postgres().await;
    let (vin, trip) = expected_trip(SHORT_TRIP);
    let mut servers = three_servers(&db).await;
    let ports: Vec<u16> = servers.iter().map(|s| s.port).collect();
    let nginx = Nginx::start(&ports).await;
    let mut edge = Edge::replay(&nginx.base(), SHORT_TRIP, &PACE_100);
    wait_for_readings(&db, trip.readings.len() as i64 / 3).await;
    servers[1].kill();
    let summary = edge.finish(Duration::from_secs(120)).await;
    println!("{}", summary.text);
    assert_eq!(summary.acknowledged, trip.readings.len() as u64);
    assert_trip_stored(&db, &vin, &trip).await;
    assert!(summary.resyncs <= 1, "resyncs: {}", summary.resyncs);
}

/// The edge's own failover: `--server A --server B` on one database; A is
/// SIGKILLed mid-replay, the edge moves to B and the trip lands exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_edge_fails_over_to_the_next_server_and_loses_nothing() {
    let db = Db::postgres().await;
    let (vin, trip) = expected_trip(SHORT_TRIP);
    let mut a = Server::start(&db.url(), &[]).await;
    let b = Server::start(&db.url(), &[]).await;
    let base_b = b.base();
    let mut args = vec!["--server", base_b.as_str()];
    args.extend(PACE_100);
    let base_a = a.base();
    let mut edge = Edge::replay(&base_a, SHORT_TRIP, &args);
    wait_for_readings(&db, trip.readings.len() as i64 / 3).await;
    a.kill();
    let summary = edge.finish(Duration::from_secs(120)).await;
    println!("{}", summary.text);
    assert_eq!(summary.acknowledged, trip.readings.len() as u64);
    assert_trip_stored(&db, &vin, &trip).await;
    let on_b = counter(
        &b,
        "lockstep_readings_total{form=\"batch\",outcome=\"stored\"}",
    )
    .await;
    assert!(on_b > 0.0, "the edge moved to the second server");
    assert!(summary.resyncs <= 1, "resyncs: {}", summary.resyncs);
}
