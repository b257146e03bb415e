//! fraudstream's own binaries as child processes, the way they run in production.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The workspace binary `name`, built by the same `cargo test` run.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> → target/<profile>/<name>
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let path = dir.join(name);
    assert!(path.is_file(), "{} not built; run the tests with `cargo test --workspace`", path.display());
    path
}

/// Sends `signal` (e.g. `TERM`, `STOP`) to process `pid`; a failure fails the test.
pub(crate) fn send_signal(pid: u32, signal: &str) {
    let status = Command::new("kill").arg(format!("-{signal}")).arg(pid.to_string()).status().expect("kill");
    assert!(status.success(), "kill -{signal} {pid} failed");
}

/// A running service; killed when dropped. Its stdout (JSON logs) goes to a file kept for
/// inspection.
pub struct Service {
    pub name: String,
    child: Option<Child>,
    pub log: PathBuf,
}

impl Service {
    pub fn start(name: &str, args: &[String], env: &[(&str, String)]) -> Self {
        let log = std::env::temp_dir().join(format!("{}.log", crate::unique(name)));
        let file = std::fs::File::create(&log).expect("log file");
        let mut cmd = Command::new(bin(name));
        cmd.args(args).stdout(file).stderr(Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        if std::env::var_os("RUST_LOG").is_none() && !env.iter().any(|(k, _)| *k == "RUST_LOG") {
            cmd.env("RUST_LOG", "info");
        }
        let child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Self { name: name.into(), child: Some(child), log }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).expect("running")
    }

    pub fn signal(&self, signal: &str) {
        send_signal(self.pid(), signal);
    }

    /// Waits for exit; returns the exit code (None when killed by a signal).
    pub fn wait(&mut self, timeout: Duration) -> Option<i32> {
        let child = self.child.as_mut().expect("running");
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                self.child = None;
                return status.code();
            }
            if Instant::now() > deadline {
                panic!("{} did not exit within {timeout:?}; log: {}", self.name, self.log.display());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the service's log contains `needle`.
    pub fn wait_for_log(&mut self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.logs().contains(needle) {
                return;
            }
            if !self.is_running() {
                panic!("{} exited before logging {needle:?}:\n{}", self.name, self.logs());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("{} did not log {needle:?} within {timeout:?}:\n{}", self.name, self.logs());
    }

    /// The fields of the first log line containing `needle` (the logs are JSON lines), once it
    /// is logged: waits as [`Service::wait_for_log`] does.
    pub fn log_fields(&mut self, needle: &str, timeout: Duration) -> serde_json::Map<String, serde_json::Value> {
        self.wait_for_log(needle, timeout);
        let logs = self.logs();
        let line = logs.lines().find(|l| l.contains(needle)).expect("the line was just logged");
        serde_json::from_str(line).unwrap_or_else(|e| panic!("{} logged a line that is not a JSON object ({e}): {line}", self.name))
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
