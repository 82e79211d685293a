//! The chaos test: two recorded Twizy trips replayed by the real
//! `lockstep-edge`, one in each wire form (each edge given both ingesting
//! server instances with `--server` twice, for failover), while a driver
//! SIGKILLs and restarts the instances, crash-restarts a private PostgreSQL
//! cluster the test creates itself, black-holes the database connections and
//! resets them through a proxy, and stops a private `redis-server` that joins
//! the instances' live streams. A third instance, never faulted, serves a
//! WebSocket observer. At the end every reading is stored exactly once within
//! tolerance, the observer got no reading twice and none that is not stored,
//! what it missed during the faults it was told of (`gap`/`lagged` or a
//! closed socket) or came from an instance killed between commit and publish,
//! and after the faults it gets every reading of a further trip; no server
//! process exceeded [`RSS_BOUND_MIB`].
//!
//! The schedule of faults comes from a random *chaos seed* printed at the
//! start and in every failure message; `LOCKSTEP_CHAOS_SEED=<n>` reproduces
//! the schedule, `LOCKSTEP_CHAOS_SECS=<s>` (default 45) lengthens the run (the
//! replays are paced to last that long).

use std::collections::HashSet;
use std::time::Duration;

use tokio::time::Instant;

use crate::harness::*;
use crate::observer::{observe, stream_keys};
use lockstep_testkit::{PrivatePostgres, PrivateRedis};

/// The trip replayed in the protobuf batch form (1049 rows).
const BATCH_TRIP: &str = SHORT_TRIP;
/// The trip replayed in the seed form (1703 rows; another vehicle).
const SEED_TRIP: &str = "T3_06_07_2021.csv";
/// Replayed after the faults, to show the live stream recovered (2517 rows; a third vehicle).
const CALM_TRIP: &str = "T3_05_25_2021_04.csv";

/// The most a server process may hold resident at any sample (debug build;
/// it idles at tens of MiB): a leak or unbounded buffering under retries
/// would cross it.
const RSS_BOUND_MIB: u64 = 256;

/// splitmix64: a tiny deterministic generator, so a chaos seed replays the
/// same schedule on any machine.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}

#[derive(Debug, Clone, Copy)]
enum Fault {
    /// SIGKILL server instance `i`, start it again after `down_ms`.
    KillServer { i: usize, down_ms: u64 },
    /// PostgreSQL stopped with `-m immediate` (a crash), started again after `down_ms`.
    RestartPostgres { down_ms: u64 },
    /// Every database connection silently stops forwarding for `ms`.
    BlackHole { ms: u64 },
    /// Every database connection is closed on both sides.
    Reset,
    /// The Redis joining the instances' live streams SIGKILLed, started again after `down_ms`.
    StopRedis { down_ms: u64 },
}

/// The schedule a chaos seed stands for: (pause before, fault), enough for `secs`.
fn schedule(seed: u64, secs: u64, instances: usize) -> Vec<(u64, Fault)> {
    let mut rng = Rng(seed);
    let mut plan = Vec::new();
    let mut t = 0;
    while t < secs * 1000 {
        let pause = rng.range(1_000, 4_000);
        let fault = match rng.range(0, 10) {
            0..=3 => Fault::KillServer {
                i: rng.range(0, instances as u64 - 1) as usize,
                down_ms: rng.range(0, 2_000),
            },
            4 | 5 => Fault::RestartPostgres {
                down_ms: rng.range(200, 3_000),
            },
            6 | 7 => Fault::BlackHole {
                ms: rng.range(500, 4_000),
            },
            8 => Fault::Reset,
            _ => Fault::StopRedis {
                down_ms: rng.range(200, 3_000),
            },
        };
        t += pause
            + match fault {
                Fault::KillServer { down_ms, .. }
                | Fault::RestartPostgres { down_ms }
                | Fault::StopRedis { down_ms } => down_ms,
                Fault::BlackHole { ms } => ms,
                Fault::Reset => 0,
            };
        plan.push((pause, fault));
    }
    plan
}

/// VmRSS of a process in KiB (`None` once it is gone).
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// Prints how to reproduce the run when the test fails, whatever fails.
struct Reproduce(String);

impl Drop for Reproduce {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("chaos run FAILED; reproduce with {}", self.0);
        }
    }
}

/// What the run did, for the closing line.
#[derive(Default, Debug)]
struct Tally {
    server_kills: u32,
    postgres_restarts: u32,
    black_holes: u32,
    resets: u32,
    redis_stops: u32,
    max_rss_kib: u64,
    samples: u32,
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| {
        v.trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name} must be an unsigned integer, not {v:?}"))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_every_reading_once_through_kills_and_store_faults() {
    let seed = env_u64("LOCKSTEP_CHAOS_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
    });
    let secs = env_u64("LOCKSTEP_CHAOS_SECS").unwrap_or(45).max(10);
    let repro = format!("LOCKSTEP_CHAOS_SEED={seed} LOCKSTEP_CHAOS_SECS={secs}");
    println!("chaos seed {seed}, {secs} s of faults ({repro} reproduces the schedule)");
    let _repro = Reproduce(repro.clone());

    let pg = tokio::task::block_in_place(PrivatePostgres::start);
    let db = Db::Private { addr: pg.addr() };
    let proxy = Proxy::start(pg.addr()).await;
    let mut redis = tokio::task::block_in_place(PrivateRedis::start);
    let redis_url = redis.url();
    let args = ["--retry-after-s", "1", "--redis-url", &redis_url];
    let mut servers = vec![
        Server::start(&db.url_via(&proxy.addr), &args).await,
        Server::start(&db.url_via(&proxy.addr), &args).await,
    ];
    // Takes no ingest and is never faulted: its WebSocket client sees the
    // other instances' readings only through Redis.
    let observer = Server::start(&db.url_via(&proxy.addr), &args).await;
    let (observed, observer_task) = observe(observer.port);
    let plan = schedule(seed, secs, servers.len());
    println!("schedule: {plan:?}");

    let (batch_vin, batch_trip) = expected_trip(BATCH_TRIP);
    let (seed_vin, seed_trip) = expected_trip(SEED_TRIP);
    // Paced so that each replay lasts about as long as the faults do.
    let speed = |rows: usize| format!("{:.2}", rows as f64 / secs as f64);
    let (s0, s1) = (servers[0].base(), servers[1].base());
    let batch_speed = speed(batch_trip.readings.len());
    let mut batch_edge = Edge::replay(
        &s0,
        BATCH_TRIP,
        &[
            "--server",
            &s1,
            "--speed",
            &batch_speed,
            "--batch-readings",
            "20",
            "--batch-delay-ms",
            "200",
        ],
    );
    let seed_speed = speed(seed_trip.readings.len());
    // Both instances for the seed form too: every commit is a compare-and-set
    // of the vehicle's predictor state, so an instance whose cached predictor
    // is stale decodes again instead of storing wrong values.
    let mut seed_edge = Edge::replay(
        &s1,
        SEED_TRIP,
        &["--server", &s0, "--seed-wire", "--speed", &seed_speed],
    );

    let mut tally = Tally::default();
    // Sleeps in slices, sampling every server's resident memory.
    async fn pause(ms: u64, servers: &[Server], tally: &mut Tally) {
        let end = Instant::now() + Duration::from_millis(ms);
        loop {
            for s in servers {
                if let Some(kib) = s.pid().and_then(rss_kib) {
                    tally.max_rss_kib = tally.max_rss_kib.max(kib);
                    tally.samples += 1;
                }
            }
            let now = Instant::now();
            if now >= end {
                return;
            }
            tokio::time::sleep((end - now).min(Duration::from_millis(100))).await;
        }
    }

    let started = Instant::now();
    for &(before, fault) in &plan {
        pause(before, &servers, &mut tally).await;
        if batch_edge.exited() && seed_edge.exited() {
            break;
        }
        println!("{:>6.1} s: {fault:?}", started.elapsed().as_secs_f64());
        match fault {
            Fault::KillServer { i, down_ms } => {
                servers[i].kill();
                tally.server_kills += 1;
                pause(down_ms, &servers, &mut tally).await;
                servers[i].spawn().await;
            }
            Fault::RestartPostgres { down_ms } => {
                tokio::task::block_in_place(|| pg.stop_immediate());
                tally.postgres_restarts += 1;
                pause(down_ms, &servers, &mut tally).await;
                tokio::task::block_in_place(|| pg.start_again());
            }
            Fault::BlackHole { ms } => {
                proxy.black_hole();
                tally.black_holes += 1;
                pause(ms, &servers, &mut tally).await;
                proxy.restore();
            }
            Fault::Reset => {
                proxy.reset();
                tally.resets += 1;
            }
            Fault::StopRedis { down_ms } => {
                redis.kill();
                tally.redis_stops += 1;
                pause(down_ms, &servers, &mut tally).await;
                tokio::task::block_in_place(|| redis.start_again());
            }
        }
    }
    let chaos_s = started.elapsed().as_secs_f64();

    // Everything is up again: both edges must get every reading acknowledged.
    let mut summaries = Vec::new();
    for edge in [&mut batch_edge, &mut seed_edge] {
        let finish = edge.finish(Duration::from_secs(secs + 120));
        let summary = tokio::select! {
            s = finish => s,
            () = async { loop { pause(1_000, &servers, &mut tally).await; } } => unreachable!(),
        };
        println!("{}", summary.text);
        summaries.push(summary);
    }
    pause(0, &servers, &mut tally).await;

    for (summary, trip) in summaries.iter().zip([&batch_trip, &seed_trip]) {
        assert_eq!(
            (summary.acknowledged, summary.spool_left),
            (trip.readings.len() as u64, 0),
            "every reading acknowledged, nothing left in the spool ({repro})"
        );
    }
    let batch_rows = db.rows_of(&batch_vin).await;
    assert_exactly_once_within_tolerance(&batch_trip.readings, &batch_rows);
    let seed_rows = db.rows_of(&seed_vin).await;
    let check = check_seed_rows(&seed_trip.readings, &seed_rows);
    assert!(
        check.out_of_tolerance.is_empty() && check.invented.is_empty(),
        "seed form: {} values out of the seed tolerance (first {:?}), {} invented (first {:?}) ({repro})",
        check.out_of_tolerance.len(),
        check.out_of_tolerance.first(),
        check.invented.len(),
        check.invented.first()
    );
    let total = db.readings().await;
    assert_eq!(
        total,
        (batch_rows.len() + seed_rows.len()) as i64,
        "nothing but the two vehicles ({repro})"
    );

    // The observer during the faults: nothing twice, nothing that is not
    // stored, and what it missed it was told of, unless an instance died
    // between its commit and its publish (that instance's readings of that
    // moment never reach Redis; see docs/deploy.md).
    let mut stored = stream_keys(&batch_vin, &batch_rows);
    stored.extend(stream_keys(&seed_vin, &seed_rows));
    let (received, notices, closes) = {
        let o = observed.lock().unwrap();
        (o.readings.clone(), o.notices, o.closes)
    };
    let distinct: HashSet<_> = received.iter().cloned().collect();
    assert_eq!(
        distinct.len(),
        received.len(),
        "the observer got no reading twice ({repro})"
    );
    let phantom: Vec<_> = distinct.difference(&stored).take(3).collect();
    assert!(
        phantom.is_empty(),
        "the observer got readings that are not stored, e.g. {phantom:?} ({repro})"
    );
    let missed = stored.len() - distinct.len();
    assert!(
        missed == 0 || notices + closes > 0 || tally.server_kills > 0,
        "the observer missed {missed} readings and was not told ({repro})"
    );

    // After the faults the live stream works again: once every instance says
    // its bridge is up (the subscribers reconnect with backoff), a further
    // trip reaches the observer whole, exactly once.
    let deadline = Instant::now() + Duration::from_secs(30);
    for s in [&servers[0], &observer] {
        while s
            .status()
            .await
            .is_none_or(|v| v["cluster"]["redis_connected"] != true)
        {
            assert!(
                Instant::now() < deadline,
                "the Redis bridge came back within 30 s ({repro})"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let (calm_vin, calm_trip) = expected_trip(CALM_TRIP);
    let before = received.len();
    let mut calm_edge = Edge::replay(
        &s0,
        CALM_TRIP,
        &["--as-fast-as-possible", "--batch-readings", "50"],
    );
    let calm = calm_edge.finish(Duration::from_secs(120)).await;
    assert_eq!(
        calm.acknowledged,
        calm_trip.readings.len() as u64,
        "{}",
        calm.text
    );
    let calm_rows = db.rows_of(&calm_vin).await;
    assert_exactly_once_within_tolerance(&calm_trip.readings, &calm_rows);
    let calm_keys = stream_keys(&calm_vin, &calm_rows);
    let deadline = Instant::now() + Duration::from_secs(30);
    let calm_seen = loop {
        let got: Vec<_> = observed.lock().unwrap().readings[before..]
            .iter()
            .filter(|k| k.0 == calm_vin)
            .cloned()
            .collect();
        if got.len() >= calm_keys.len() || Instant::now() > deadline {
            break got;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    observer_task.abort();
    let calm_distinct: HashSet<_> = calm_seen.iter().cloned().collect();
    assert_eq!(
        (calm_seen.len(), calm_distinct == calm_keys),
        (calm_keys.len(), true),
        "after the faults the observer gets every reading of the calm trip once ({repro})"
    );
    println!(
        "observer (third instance, through Redis): {} of {} readings during the faults, told {notices} times by gap/lagged,          {closes} socket closes; after the faults {} of {} readings",
        distinct.len(),
        stored.len(),
        calm_distinct.len(),
        calm_keys.len()
    );
    assert!(tally.samples > 0, "the memory was sampled ({repro})");
    let max_mib = tally.max_rss_kib.div_ceil(1024);
    println!(
        "chaos seed {seed}: {total} readings exactly once ({} batch form, {} seed form) in {chaos_s:.1} s of faults; \
         {} server SIGKILLs + restarts, {} PostgreSQL crash restarts, {} black holes, {} connection resets, {} Redis stops; \
         edge retries {} + {}, resyncs {} + {}, duplicates {} + {}; max server RSS {max_mib} MiB over {} samples (bound {RSS_BOUND_MIB} MiB)",
        batch_rows.len(),
        seed_rows.len(),
        tally.server_kills,
        tally.postgres_restarts,
        tally.black_holes,
        tally.resets,
        tally.redis_stops,
        summaries[0].retries,
        summaries[1].retries,
        summaries[0].resyncs,
        summaries[1].resyncs,
        summaries[0].duplicates,
        summaries[1].duplicates,
        tally.samples,
    );
    assert!(
        max_mib <= RSS_BOUND_MIB,
        "a server process held {max_mib} MiB, above the bound of {RSS_BOUND_MIB} MiB ({repro})"
    );
}
