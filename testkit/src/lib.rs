//! Real servers for fraudstream's tests: a Redis and a Tansu Kafka-protocol broker (also one
//! reached over TLS, `tls`), each started as a child process on a free loopback port and stopped
//! when dropped. Binaries come from `scripts/setup.sh test`; a missing one fails the test with the
//! command to run, never skips it.

#![allow(clippy::unwrap_used)] // test support: a failed setup step should fail the test loudly

pub mod kafka;
pub mod otlp;
pub mod process;
pub mod tls;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    fraudctl::stack::free_port().expect("no free loopback port")
}

/// Waits until the service on `port` answers `GET /health/ready` with 200 (the gateway and the
/// scorer both serve it); false when it did not within `timeout`.
pub fn wait_ready(port: u16, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if fraudctl::stack::is_ready(port) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A server binary from `scripts/setup.sh`; a missing one fails the test, never skips it.
fn binary(found: anyhow::Result<PathBuf>) -> PathBuf {
    found.unwrap_or_else(|e| panic!("{e:#} (the README's test command runs `scripts/setup.sh test`)"))
}

fn wait_for_port(port: u16, child: &mut Child, what: &str) {
    let running = || match child.try_wait()? {
        Some(status) => anyhow::bail!("{what} exited with {status}"),
        None => Ok(()),
    };
    fraudctl::stack::wait_for_port(port, what, running).unwrap_or_else(|e| panic!("{e:#}"));
}

fn stop_child(child: &mut Option<Child>) {
    if let Some(mut c) = child.take() {
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// A private Redis on a free port, no persistence.
pub struct RedisServer {
    port: u16,
    child: Option<Child>,
    /// Serving TLS only, with `server.pem`, `server.key` and `ca.pem` from this directory.
    tls: Option<PathBuf>,
}

impl RedisServer {
    pub fn start() -> Self {
        let mut s = Self { port: free_port(), child: None, tls: None };
        s.restart();
        s
    }

    /// A Redis serving TLS only, with the certificate `server.pem` (key `server.key`, signed by
    /// `ca.pem`) found in `certificates`; clients need not present one.
    pub fn start_tls(certificates: &Path) -> Self {
        let mut s = Self { port: free_port(), child: None, tls: Some(certificates.to_path_buf()) };
        s.restart();
        s
    }

    /// `redis://127.0.0.1:PORT/`, or `rediss://localhost:PORT/` (the name its certificate is for)
    /// when it serves TLS.
    pub fn url(&self) -> String {
        match self.tls {
            Some(_) => format!("rediss://localhost:{}/", self.port),
            None => format!("redis://127.0.0.1:{}/", self.port),
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills the server (as a crash would); its data is gone.
    pub fn stop(&mut self) {
        stop_child(&mut self.child);
    }

    /// Freezes the server (SIGSTOP): connections are still accepted by the kernel but nothing is
    /// answered, as with a Redis stuck on a slow command or a stalled host.
    pub fn pause(&self) {
        process::send_signal(self.pid(), "STOP");
    }

    /// Lets a paused server go on (SIGCONT), data intact.
    pub fn resume(&self) {
        process::send_signal(self.pid(), "CONT");
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().expect("redis-server is running").id()
    }

    /// Starts the server again on the same port (empty).
    pub fn restart(&mut self) {
        self.stop();
        let mut args = fraudctl::stack::redis_args(self.port);
        if let Some(dir) = &self.tls {
            // The later --port wins: no plain port, the TLS one instead.
            let file = |name: &str| dir.join(name).display().to_string();
            args.extend(["--port".into(), "0".into(), "--tls-port".into(), self.port.to_string()]);
            args.extend(["--tls-cert-file".into(), file("server.pem"), "--tls-key-file".into(), file("server.key")]);
            args.extend(["--tls-ca-cert-file".into(), file("ca.pem"), "--tls-auth-clients".into(), "no".into()]);
        }
        let mut child = Command::new(binary(fraudctl::stack::redis_server()))
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("cannot start redis-server");
        wait_for_port(self.port, &mut child, "redis-server");
        self.child = Some(child);
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A private Tansu broker (in-memory storage) on a free port.
pub struct Broker {
    port: u16,
    child: Option<Child>,
}

impl Broker {
    pub fn start() -> Self {
        let port = free_port();
        Self { port, child: Some(spawn_tansu(fraudctl::stack::tansu_args(port), port)) }
    }

    /// `host:port` for `bootstrap.servers`.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Kills the broker; every topic and record is gone with it.
    pub fn stop(&mut self) {
        stop_child(&mut self.child);
    }

    /// Freezes the broker (SIGSTOP): requests are accepted by the kernel and answered only after
    /// `resume`, as with a stalled broker host.
    pub fn pause(&self) {
        process::send_signal(self.pid(), "STOP");
    }

    /// Lets a paused broker go on (SIGCONT), its records intact.
    pub fn resume(&self) {
        process::send_signal(self.pid(), "CONT");
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().expect("tansu is running").id()
    }
}

/// The Tansu broker with `args`, listening on `port` when this returns.
fn spawn_tansu(args: Vec<String>, port: u16) -> Child {
    let mut child = Command::new(binary(fraudctl::stack::tansu()))
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("cannot start the tansu broker");
    wait_for_port(port, &mut child, "tansu");
    child
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What every pipeline test starts from: a broker with the standard topics (`partitions` each)
/// and a Redis holding the features of `users` synthetic users (`load_features`).
pub fn servers(partitions: i32, users: u64, seed: u64) -> (Broker, RedisServer) {
    let broker = Broker::start();
    let redis = RedisServer::start();
    kafka::create_standard_topics(&broker.bootstrap(), partitions);
    load_features(&redis, users, seed);
    (broker, redis)
}

/// Writes the features of `users` synthetic users drawn from `seed` to `redis` under the standard
/// key prefix, as `fraudctl features load --users N` does.
pub fn load_features(redis: &RedisServer, users: u64, seed: u64) {
    let mut store = fraudctl::features::store(&redis.url(), "features:user:").unwrap();
    fraudctl::features::load_synthetic(&mut store, users, seed).unwrap();
}

/// A name unique to this process and call, for topics, groups and key prefixes.
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    format!("{prefix}-{}-{}-{nanos}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

/// The `/metrics` text of the service listening on `port` (the gateway, scorer and drift job all
/// serve it).
pub fn scrape(port: u16) -> String {
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n").unwrap();
    let mut answer = String::new();
    c.read_to_string(&mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or_else(|| panic!("not an HTTP answer: {answer}"));
    assert!(head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_string()
}

/// Sends `bytes` on a fresh connection to `addr` (`host:port`) and reads until the server closes
/// it or `timeout` passes: what came back, and how long after sending. For what an HTTP client
/// would not send (a head or body that stops, nothing at all).
pub fn raw_exchange(addr: &str, bytes: &[u8], timeout: Duration) -> (String, Duration) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(timeout)).unwrap();
    let started = std::time::Instant::now();
    stream.write_all(bytes).unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    (String::from_utf8_lossy(&answer).into_owned(), started.elapsed())
}

/// The value of the sample written `name_and_labels` (e.g. `errors_total{kind="decode"}`) in a
/// `/metrics` text; 0 when it is absent.
pub fn sample(text: &str, name_and_labels: &str) -> f64 {
    fraudctl::stack::metric(text, name_and_labels).unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpStream;

    #[test]
    fn redis_starts_answers_and_restarts() {
        let mut redis = RedisServer::start();
        let ping = |port| {
            let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
            s.write_all(b"PING\r\n").unwrap();
            let mut buf = [0u8; 7];
            s.read_exact(&mut buf).unwrap();
            buf
        };
        assert_eq!(&ping(redis.port()), b"+PONG\r\n");
        redis.stop();
        assert!(TcpStream::connect(("127.0.0.1", redis.port())).is_err());
        redis.restart();
        assert_eq!(&ping(redis.port()), b"+PONG\r\n");
    }

    #[test]
    fn broker_starts_and_stops() {
        let mut broker = Broker::start();
        assert!(TcpStream::connect(broker.bootstrap()).is_ok());
        broker.stop();
        assert!(TcpStream::connect(broker.bootstrap()).is_err());
    }
}
