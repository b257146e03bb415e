//! `fraudctl run`: the whole pipeline on this machine. Starts what is not configured — an
//! in-memory Tansu broker unless KAFKA_BROKERS is set, a Redis unless REDIS_URL is set — then
//! creates the topics, loads features, starts the scorer and the gateway, and sends traffic.
//! Everything it started is stopped on Ctrl-C.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// A child process of the local stack, stopped (SIGTERM, then SIGKILL) when dropped.
pub struct Process {
    pub name: &'static str,
    child: Child,
}

impl Process {
    pub fn spawn(name: &'static str, program: &Path, args: &[String], log_dir: &Path, env: &[(&str, String)]) -> Result<Self> {
        let log = std::fs::File::create(log_dir.join(format!("{name}.log")))?;
        let err = log.try_clone()?;
        let mut cmd = Command::new(program);
        cmd.args(args).stdout(log).stderr(err).stdin(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().with_context(|| format!("starting {name} ({})", program.display()))?;
        Ok(Self { name, child })
    }

    pub fn check_running(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("{} exited with {status}", self.name);
        }
        Ok(())
    }

    fn stop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if !matches!(self.child.try_wait(), Ok(None)) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `preferred` if nothing listens there, else any free port.
pub fn port(preferred: u16) -> Result<u16> {
    if preferred != 0 && TcpListener::bind(("127.0.0.1", preferred)).is_ok() {
        return Ok(preferred);
    }
    free_port()
}

/// A port nothing listens on right now.
pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A fraudstream binary installed next to this one.
pub fn sibling(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let path = exe.parent().context("executable has no folder")?.join(name);
    if !path.is_file() {
        bail!("{} not found; build the workspace first (scripts/run.sh does)", path.display());
    }
    Ok(path)
}

/// The Tansu broker binary fetched by `scripts/setup.sh`.
pub fn tansu() -> Result<PathBuf> {
    let candidates: Vec<PathBuf> = std::env::var_os("FRAUDSTREAM_TANSU")
        .map(PathBuf::from)
        .into_iter()
        .chain(std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/fraudstream/bin/tansu")))
        .collect();
    candidates
        .into_iter()
        .find(|p| p.is_file())
        .context("the Tansu broker is not installed: run scripts/setup.sh run, or set KAFKA_BROKERS to use another broker")
}

pub fn redis_server() -> Result<PathBuf> {
    std::env::var_os("FRAUDSTREAM_REDIS_SERVER")
        .map(PathBuf::from)
        .into_iter()
        .chain(std::env::var_os("PATH").into_iter().flat_map(|p| std::env::split_paths(&p).map(|d| d.join("redis-server")).collect::<Vec<_>>()))
        .find(|p| p.is_file())
        .context("redis-server is not installed: run scripts/setup.sh run, or set REDIS_URL to use another Redis")
}

/// Waits until something accepts connections on `port`.
pub fn wait_for_port(port: u16, what: &str, child: &mut Process) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        child.check_running()?;
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("{what} did not listen on port {port} within 15 s")
}
