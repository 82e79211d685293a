//! Server processes a test owns outright, for tests that stop and restart
//! them: a PostgreSQL cluster (initdb + pg_ctl) and a `redis-server`, each on a
//! free loopback port in a temporary directory, stopped and removed when
//! dropped — even while unwinding. The machine's shared services are never
//! touched.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::free_port;

/// Where Debian puts PostgreSQL 15's server binaries (they are not on `PATH`).
pub const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

static DIRS: AtomicU64 = AtomicU64::new(0);

/// A fresh directory under the system's temporary directory.
fn temp_dir(prefix: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let dir = std::env::temp_dir().join(format!(
        "{prefix}-{}-{}-{nanos:08x}",
        std::process::id(),
        DIRS.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

fn is_root() -> bool {
    // The owner of /proc/self is the effective user.
    std::fs::metadata("/proc/self").is_ok_and(|m| {
        use std::os::unix::fs::MetadataExt;
        m.uid() == 0
    })
}

/// A PostgreSQL cluster of its own (trust auth on 127.0.0.1 at a free port).
/// PostgreSQL refuses to run as root: as root the cluster belongs to the
/// `postgres` system user and its commands run through `runuser`.
pub struct PrivatePostgres {
    pub port: u16,
    dir: PathBuf,
}

impl PrivatePostgres {
    /// initdb, then start it and wait until it accepts connections.
    pub fn start() -> Self {
        let dir = temp_dir("lockstep-pg");
        let pg = PrivatePostgres {
            port: free_port(),
            dir,
        };
        if is_root() {
            let st = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&pg.dir)
                .status()
                .expect("chown");
            assert!(st.success(), "chown of {} to postgres", pg.dir.display());
        }
        pg.run(
            "initdb",
            &[
                "-D",
                pg.data().to_str().unwrap(),
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
            ],
        );
        pg.pg_ctl_start();
        pg
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn log(&self) -> PathBuf {
        self.dir.join("postgres.log")
    }

    /// The server's log so far (for failure messages).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.log()).unwrap_or_default()
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// A URL to its `postgres` database (optionally through another host:port, e.g. a proxy).
    pub fn url_via(&self, addr: &str) -> String {
        format!("postgres://postgres@{addr}/postgres")
    }

    pub fn url(&self) -> String {
        self.url_via(&self.addr())
    }

    /// One of PostgreSQL's programs, to be run as the cluster's owner.
    fn command(&self, program: &str) -> Command {
        let bin = Path::new(PG_BIN).join(program);
        let mut cmd = if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&bin);
            c
        } else {
            Command::new(&bin)
        };
        cmd.current_dir(&self.dir);
        cmd
    }

    /// Runs one of PostgreSQL's programs as the cluster's owner; panics with its output on failure.
    fn run(&self, program: &str, args: &[&str]) {
        let out = self
            .command(program)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("{PG_BIN}/{program} must be installed: {e}"));
        assert!(
            out.status.success(),
            "{program} {args:?} failed ({}):\n{}\n{}\nlog:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log_text()
        );
    }

    fn pg_ctl_start(&self) {
        let opts = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {} -c max_connections=60",
            self.port,
            self.dir.display()
        );
        let (data, log) = (self.data(), self.log());
        self.run(
            "pg_ctl",
            &[
                "start",
                "-w",
                "-t",
                "60",
                "-D",
                data.to_str().unwrap(),
                "-l",
                log.to_str().unwrap(),
                "-o",
                &opts,
            ],
        );
    }

    /// Stops it the hard way (`-m immediate`: every backend killed, crash
    /// recovery at the next start), as a crash of the database would.
    pub fn stop_immediate(&self) {
        let data = self.data();
        self.run(
            "pg_ctl",
            &[
                "stop",
                "-w",
                "-m",
                "immediate",
                "-D",
                data.to_str().unwrap(),
            ],
        );
    }

    /// Starts it again after [`PrivatePostgres::stop_immediate`], on the same port.
    pub fn start_again(&self) {
        self.pg_ctl_start();
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let data = self.data();
        // Not running (a test stopped it) is fine: the directory goes either way.
        let _ = self
            .command("pg_ctl")
            .args(["stop", "-w", "-m", "immediate", "-D"])
            .arg(&data)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if std::thread::panicking() {
            eprintln!("---- private PostgreSQL log ----\n{}", self.log_text());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A `redis-server` of its own: no persistence, 127.0.0.1 at a free port.
pub struct PrivateRedis {
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl PrivateRedis {
    pub fn start() -> Self {
        let mut r = PrivateRedis {
            port: free_port(),
            dir: temp_dir("lockstep-redis"),
            child: None,
        };
        r.start_again();
        r
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// (Re)starts it on the same port and waits until it accepts connections.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "redis-server already runs");
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--save", "", "--appendonly", "no", "--bind", "127.0.0.1"])
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed");
        self.child = Some(child);
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "redis-server did not listen on {} within 20 s",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL (everything it held is gone: it has no persistence).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    /// `PING` → `+PONG`, or the connection error.
    fn ping(port: u16) -> std::io::Result<String> {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.write_all(b"PING\r\n")?;
        let mut buf = [0u8; 7];
        s.read_exact(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf).into_owned())
    }

    #[test]
    fn private_redis_answers_goes_away_and_comes_back() {
        let mut r = PrivateRedis::start();
        assert_eq!(ping(r.port).unwrap(), "+PONG\r\n");
        r.kill();
        assert!(ping(r.port).is_err(), "a killed redis-server refuses");
        r.start_again();
        assert_eq!(ping(r.port).unwrap(), "+PONG\r\n");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn private_postgres_survives_a_crash_restart_with_its_data() {
        let pg = tokio::task::block_in_place(PrivatePostgres::start);
        crate::pg_query(
            &pg.url(),
            "CREATE TABLE t (x int); INSERT INTO t VALUES (7)",
        )
        .await;
        tokio::task::block_in_place(|| pg.stop_immediate());
        assert!(
            tokio_postgres::connect(&pg.url(), tokio_postgres::NoTls)
                .await
                .is_err(),
            "a stopped cluster refuses"
        );
        tokio::task::block_in_place(|| pg.start_again());
        let rows = crate::pg_query(&pg.url(), "SELECT x FROM t").await;
        assert_eq!(rows, vec![vec![Some("7".to_owned())]]);
        let dir = pg.dir.clone();
        drop(pg);
        assert!(!dir.exists(), "the cluster's directory is removed");
    }
}
