//! Encrypted connections for tests: a private CA with a certificate it signed for this host, and
//! a Tansu broker that clients reach over TLS only. The `tansu` binary cannot serve TLS itself (its
//! `--cert` and `--key` are needed together but refused together), so `socat` ends TLS in front
//! of it — as a cloud load balancer does in front of a cluster — and the broker advertises the
//! TLS port, so every connection a client makes after the first goes through TLS too.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::{free_port, spawn_tansu, stop_child, wait_for_port};

/// `openssl args` in `dir`; a failure fails the test.
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl").args(args).current_dir(dir).output().expect("openssl not runnable; run scripts/setup.sh test");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A new directory (named after `name`, unique) holding a CA (`ca.pem`), a certificate it signed
/// for `localhost` and `127.0.0.1` (`server.pem`, key `server.key`) and one it signed for a
/// client (`client.pem`, key `client.key`).
pub fn certificates(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(crate::unique(name));
    std::fs::create_dir_all(&dir).unwrap();
    let dir = dir.as_path();
    openssl(dir, &["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=fraudstream test CA"]);
    openssl(dir, &["req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost"]);
    std::fs::write(dir.join("san.cnf"), "subjectAltName=DNS:localhost,IP:127.0.0.1\n").unwrap();
    openssl(dir, &["x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "san.cnf"]);
    openssl(dir, &["req", "-newkey", "rsa:2048", "-nodes", "-keyout", "client.key", "-out", "client.csr", "-subj", "/CN=fraudstream test client"]);
    openssl(dir, &["x509", "-req", "-in", "client.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-out", "client.pem", "-days", "2"]);
    dir.to_path_buf()
}

/// TLS in front of a plain TCP service on loopback: `socat` accepting TLS on a port of its own
/// with the certificate `server.pem` (key `server.key`) from a `certificates` directory, and
/// forwarding each connection to `target`.
pub struct TlsTerminator {
    port: u16,
    child: Option<Child>,
}

impl TlsTerminator {
    pub fn start(certificates: &Path, target: u16) -> Self {
        Self::start_on(free_port(), certificates, target, false)
    }

    /// The same, accepting TLS on `port`; with `client_certificates`, only from clients that
    /// present a certificate signed by `ca.pem` (mutual TLS).
    pub fn start_on(port: u16, certificates: &Path, target: u16, client_certificates: bool) -> Self {
        let file = |name: &str| -> PathBuf { certificates.join(name) };
        let verify = if client_certificates { format!("verify=1,cafile={}", file("ca.pem").display()) } else { "verify=0".to_string() };
        let listen = format!(
            "OPENSSL-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork,cert={},key={},{verify}",
            file("server.pem").display(),
            file("server.key").display()
        );
        let mut child = Command::new("socat")
            .args([listen, format!("TCP:127.0.0.1:{target}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("socat not runnable; run scripts/setup.sh test");
        wait_for_port(port, &mut child, "socat");
        Self { port, child: Some(child) }
    }

    /// The TLS port.
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for TlsTerminator {
    fn drop(&mut self) {
        stop_child(&mut self.child);
    }
}

/// A private Tansu broker (in-memory storage) that clients reach over TLS only, with the
/// certificate `server.pem` (key `server.key`) from a `certificates` directory.
pub struct TlsBroker {
    terminator: TlsTerminator,
    broker: Option<Child>,
}

/// What a `TlsBroker` asks of its clients besides TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientCheck {
    None,
    /// A certificate signed by the CA (mutual TLS), as some managed services ask.
    Certificate,
    /// SASL; of the mechanisms, this Tansu build has SCRAM only, and no user exists in its memory.
    Sasl,
}

impl TlsBroker {
    pub fn start(certificates: &Path, check: ClientCheck) -> Self {
        let (inner, port) = (free_port(), free_port());
        let mut args = fraudctl::stack::tansu_args_advertising(inner, port);
        if check == ClientCheck::Sasl {
            args.push("--authentication".into());
        }
        let broker = spawn_tansu(args, inner);
        let terminator = TlsTerminator::start_on(port, certificates, inner, check == ClientCheck::Certificate);
        Self { terminator, broker: Some(broker) }
    }

    /// `host:port` for `bootstrap.servers`: the TLS port.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.terminator.port())
    }
}

impl Drop for TlsBroker {
    fn drop(&mut self) {
        stop_child(&mut self.broker);
    }
}
