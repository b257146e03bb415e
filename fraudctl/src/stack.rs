//! `fraudctl run`: the whole pipeline on this machine. Starts what is not configured — an
//! in-memory Tansu broker unless KAFKA_BROKERS is set, a Redis unless REDIS_URL is set — then
//! creates the topics, loads features, starts the scorer and the gateway, and sends traffic.
//! Everything it started is stopped on Ctrl-C.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use schemas::DriftSeverity;

/// A child process of the local stack, stopped (SIGTERM, then SIGKILL) when dropped.
pub struct Process {
    pub name: String,
    child: Child,
}

impl Process {
    pub fn spawn(name: impl Into<String>, program: &Path, args: &[String], log_dir: &Path, env: &[(&str, String)]) -> Result<Self> {
        let name = name.into();
        let log = std::fs::File::create(log_dir.join(format!("{name}.log")))?;
        let err = log.try_clone()?;
        let mut cmd = Command::new(program);
        cmd.args(args).stdout(log).stderr(err).stdin(Stdio::null());
        // A process group of its own: Ctrl-C reaches only fraudctl, which then stops the
        // services before the broker and Redis they are still committing to.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().with_context(|| format!("starting {name} ({})", program.display()))?;
        Ok(Self { name, child })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// CPU time the process has used so far (see [`cpu_seconds`]).
    pub fn cpu_seconds(&self) -> Result<f64> {
        cpu_seconds(&self.pid().to_string())
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

/// CPU time (user + system, all threads) process `pid` (or `"self"`) has used so far, at the
/// kernel's clock-tick resolution (10 ms), from `/proc/<pid>/stat`.
pub fn cpu_seconds(pid: &str) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the parenthesised command name, from the state field (3): utime (14) is at
    // index 11, stime (15) at index 12.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).context("unexpected /proc stat format")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> Result<f64> { Ok(fields.get(i).context("short /proc stat")?.parse::<f64>()?) };
    Ok((ticks(11)? + ticks(12)?) / 100.0)
}

/// Resident memory of process `pid` (or `"self"`) in bytes, from `/proc/<pid>/statm`.
pub fn resident_bytes(pid: &str) -> Result<f64> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm"))?;
    let pages: f64 = statm.split_whitespace().nth(1).context("short /proc statm")?.parse()?;
    Ok(pages * 4096.0)
}

/// Whether the service on local `port` answers `GET /health/ready` with 200 (the gateway and the
/// scorer both serve it); false while it is starting, not ready or not listening.
pub fn is_ready(port: u16) -> bool {
    use std::io::{Read, Write};
    std::net::TcpStream::connect(("127.0.0.1", port))
        .and_then(|mut c| {
            c.set_read_timeout(Some(Duration::from_secs(2)))?;
            c.write_all(b"GET /health/ready HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
            let mut head = [0u8; 12];
            c.read_exact(&mut head)?;
            Ok(head.ends_with(b"200"))
        })
        .unwrap_or(false)
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

/// Where `scripts/setup.sh` puts the broker unless told otherwise.
pub fn default_tansu_path() -> PathBuf {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/root/.cache"));
    cache.join("fraudstream/bin/tansu")
}

/// The Tansu broker binary fetched by `scripts/setup.sh`: `FRAUDSTREAM_TANSU`, else its default place.
pub fn tansu() -> Result<PathBuf> {
    std::env::var_os("FRAUDSTREAM_TANSU")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .into_iter()
        .chain([default_tansu_path()])
        .find(|p| p.is_file())
        .context("the Tansu broker is not installed: run scripts/setup.sh, or set KAFKA_BROKERS to use another broker")
}

/// `redis-server`: `FRAUDSTREAM_REDIS_SERVER`, else the one on `PATH`.
pub fn redis_server() -> Result<PathBuf> {
    std::env::var_os("FRAUDSTREAM_REDIS_SERVER")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .into_iter()
        .chain(std::env::var_os("PATH").into_iter().flat_map(|p| std::env::split_paths(&p).map(|d| d.join("redis-server")).collect::<Vec<_>>()))
        .find(|p| p.is_file())
        .context("redis-server is not installed: run scripts/setup.sh, or set REDIS_URL to use another Redis")
}

/// Arguments for an in-memory Tansu broker on loopback `port`.
pub fn tansu_args(port: u16) -> Vec<String> {
    tansu_args_advertising(port, port)
}

/// Arguments for an in-memory Tansu broker on loopback `port` that tells clients to connect to
/// loopback `advertised` instead (a proxy in front of it).
pub fn tansu_args_advertising(port: u16, advertised: u16) -> Vec<String> {
    let (listener, advertised) = (format!("tcp://127.0.0.1:{port}"), format!("tcp://127.0.0.1:{advertised}"));
    ["broker", "--listener-url", &listener, "--advertised-listener-url", &advertised, "--storage-engine", "memory://tansu/"].map(String::from).to_vec()
}

/// Arguments for a Redis on loopback `port` that keeps nothing on disk.
pub fn redis_args(port: u16) -> Vec<String> {
    ["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"].map(String::from).to_vec()
}

/// An in-memory Tansu broker on `port`, listening when this returns.
pub fn start_tansu(port: u16, log_dir: &Path) -> Result<Process> {
    let mut p = Process::spawn("tansu", &tansu()?, &tansu_args(port), log_dir, &[])?;
    wait_for_port(port, "the Tansu broker", || p.check_running())?;
    Ok(p)
}

/// A Redis on `port`, listening when this returns.
pub fn start_redis(port: u16, log_dir: &Path) -> Result<Process> {
    let mut p = Process::spawn("redis", &redis_server()?, &redis_args(port), log_dir, &[])?;
    wait_for_port(port, "redis-server", || p.check_running())?;
    Ok(p)
}

/// Share of a core above which `fraudctl run` tells that its embedded broker is getting slow:
/// the broker's cost per fetch grows with what it holds (BENCHMARKS.md), and from about a core on,
/// answers slow down and turn `202 pending`.
pub const BUSY_BROKER: f64 = 0.9;

/// What the notes about the embedded broker advise.
const BROKER_REMEDY: &str = "restart fraudctl run for a fresh broker, lower --rate, or set KAFKA_BROKERS to use a real Kafka";

/// The line `fraudctl run` prints once its embedded broker has used `share` of a core over the
/// last interval, or `None` while it is below [`BUSY_BROKER`].
pub fn busy_broker_notice(share: f64) -> Option<String> {
    (share > BUSY_BROKER).then(|| {
        format!(
            "note     the embedded broker used {:.0} % of a core lately: it slows down as it fills (its fetches read through what it holds), so answers will get slower and then pending; {BROKER_REMEDY}",
            share * 100.0
        )
    })
}

/// Samples process `pid`'s CPU every `every` until `stop` is set or the process is gone, and
/// hands the first line `judge` makes of a share of a core (`fraudctl run`:
/// [`busy_broker_notice`]) to `notify`.
pub fn watch_cpu(
    pid: u32,
    every: Duration,
    stop: Arc<AtomicBool>,
    judge: impl Fn(f64) -> Option<String> + Send + 'static,
    notify: impl FnOnce(String) + Send + 'static,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let pid = pid.to_string();
        let (mut cpu, mut at) = (cpu_seconds(&pid).unwrap_or(0.0), Instant::now());
        while !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(100).min(every));
            if at.elapsed() < every {
                continue;
            }
            let Ok(now_cpu) = cpu_seconds(&pid) else { return };
            let share = (now_cpu - cpu) / at.elapsed().as_secs_f64();
            if let Some(line) = judge(share) {
                notify(line);
                return;
            }
            (cpu, at) = (now_cpu, Instant::now());
        }
    })
}

/// The `--kafka-config` flags `fraudctl run` gives a service: `defaults` (fraudctl run's own
/// choices, only while the service's variable is unset), then fraudctl's overrides (what the
/// cluster needs), then the pairs of the service's own variable (`own`), so that the most
/// specific wins. A flag on the command line hides the variable from the service, hence its pairs
/// are passed on as flags too; with no flags at all the variable reaches the service by itself.
pub fn service_kafka_flags(own: Option<&str>, overrides: &[(String, String)], defaults: &[&str]) -> Vec<String> {
    if overrides.is_empty() && own.is_some() {
        return Vec::new();
    }
    let defaults = defaults.iter().filter(|_| own.is_none()).map(|d| d.to_string());
    let overrides = overrides.iter().map(|(k, v)| format!("{k}={v}"));
    let own = own.into_iter().flat_map(|v| v.split(',')).map(str::trim).filter(|p| !p.is_empty()).map(str::to_string);
    defaults.chain(overrides).chain(own).flat_map(|pair| ["--kafka-config".to_string(), pair]).collect()
}

/// The value of the sample written `name` (with its labels, if any: `errors_total{kind="decode"}`)
/// in a Prometheus text exposition.
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')).and_then(|v| v.trim().parse().ok()))
}

/// The line `fraudctl run` prints the first time `service` (whose log is `log`) reports
/// `partitions` stalled partitions.
pub fn stalled_notice(service: &str, partitions: f64, log: &Path) -> String {
    format!(
        "note     the {service} fetches nothing from {partitions} partition(s) where records wait (`partition stalled` in {}): this broker answers a fetch with no records when reading through the partition takes longer than the fetch's wait; {BROKER_REMEDY}",
        log.display()
    )
}

/// Reads `kafka_consumer_stalled_partitions` from each service's /metrics (`(name, port, log)`)
/// every `every` until `stop` is set, and pushes [`stalled_notice`] to `notify` the first time a
/// service has any.
pub async fn watch_stalls(services: Vec<(String, u16, PathBuf)>, every: Duration, stop: Arc<AtomicBool>, notify: impl Fn(String)) {
    let http = reqwest::Client::new();
    let mut told = vec![false; services.len()];
    while !stop.load(Ordering::Relaxed) {
        tokio::time::sleep(every).await;
        for ((name, port, log), told) in services.iter().zip(told.iter_mut()) {
            if *told {
                continue;
            }
            let Ok(answer) = http.get(format!("http://127.0.0.1:{port}/metrics")).send().await else { continue };
            let Ok(text) = answer.text().await else { continue };
            if let Some(n) = metric(&text, "kafka_consumer_stalled_partitions").filter(|n| *n > 0.0) {
                notify(stalled_notice(name, n, log));
                *told = true;
            }
        }
    }
}

/// The last complete drift window of one model version, as the drift job's /metrics tell it.
#[derive(Debug, Clone, PartialEq)]
pub struct DriftWindow {
    pub model_version: String,
    /// `drift_window_end_timestamp_seconds`.
    pub end_s: f64,
    /// `feature_psi` per feature, largest first.
    pub psi: Vec<(String, f64)>,
}

impl DriftWindow {
    /// The features that drifted (moderately or significantly), with their PSI and grade.
    pub fn drifted(&self) -> impl Iterator<Item = (&str, f64, DriftSeverity)> {
        self.psi.iter().map(|(f, psi)| (f.as_str(), *psi, DriftSeverity::of(*psi))).filter(|(_, _, grade)| *grade != DriftSeverity::None)
    }
}

/// The samples of `name` in a Prometheus text exposition, with their labels.
fn samples<'a>(text: &'a str, name: &str) -> Vec<(Vec<(&'a str, &'a str)>, f64)> {
    text.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?.strip_prefix('{')?;
            let (labels, value) = rest.rsplit_once("} ")?;
            let labels = labels.split(',').filter_map(|kv| kv.split_once('=')).map(|(k, v)| (k, v.trim_matches('"'))).collect();
            Some((labels, value.trim().parse().ok()?))
        })
        .collect()
}

/// The drift windows in a drift job's /metrics: one per model version that has completed one.
pub fn drift_windows(text: &str) -> Vec<DriftWindow> {
    let label = |labels: &[(&str, &str)], name: &str| labels.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string());
    let psi = samples(text, "feature_psi");
    let mut windows: Vec<DriftWindow> = samples(text, "drift_window_end_timestamp_seconds")
        .into_iter()
        .filter(|(_, end)| *end > 0.0)
        .filter_map(|(labels, end_s)| {
            let model_version = label(&labels, "model_version")?;
            let mut psi: Vec<(String, f64)> =
                psi.iter().filter(|(l, _)| label(l, "model_version").as_ref() == Some(&model_version)).filter_map(|(l, v)| Some((label(l, "feature")?, *v))).collect();
            psi.sort_by(|a, b| b.1.total_cmp(&a.1));
            Some(DriftWindow { model_version, end_s, psi })
        })
        .collect();
    windows.sort_by(|a, b| a.model_version.cmp(&b.model_version));
    windows
}

/// The line `fraudctl run` prints for a drift window: the features that drifted, graded as the
/// drift job's reports grade them; `None` when none did and none did in the window before
/// (`drifted_before`), so that the live output stays quiet while nothing changes. `brokers` goes
/// into the command that shows the bins.
pub fn drift_notice(window: &DriftWindow, drifted_before: bool, brokers: &str) -> Option<String> {
    let drifted: Vec<String> = window.drifted().map(|(feature, psi, grade)| format!("{feature} PSI {psi:.2} ({})", grade.as_str())).collect();
    let end = scorer::replay::show_time((window.end_s * 1000.0) as i64);
    match (drifted.is_empty(), drifted_before) {
        (true, false) => None,
        (true, true) => Some(format!("drift    model {} window ending {end}: no feature drifted any more", window.model_version)),
        (false, _) => Some(format!(
            "drift    model {} window ending {end}: {}; where each moved: fraudctl drift show --brokers {brokers}",
            window.model_version,
            drifted.join(", ")
        )),
    }
}

/// Reads the drift job's /metrics on `port` every `every` until `stop` is set, and pushes
/// [`drift_notice`] to `notify` for each new window that has one.
pub async fn watch_drift(port: u16, brokers: String, every: Duration, stop: Arc<AtomicBool>, notify: impl Fn(String)) {
    let http = reqwest::Client::new();
    // Per model version: the last window seen, and whether it drifted.
    let mut seen: Vec<(String, f64, bool)> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        tokio::time::sleep(every).await;
        let Ok(answer) = http.get(format!("http://127.0.0.1:{port}/metrics")).send().await else { continue };
        let Ok(text) = answer.text().await else { continue };
        for window in drift_windows(&text) {
            let drifted = window.drifted().next().is_some();
            let before = seen.iter_mut().find(|(v, _, _)| *v == window.model_version);
            let drifted_before = match before {
                Some((_, end, _)) if *end == window.end_s => continue,
                Some((_, end, was)) => {
                    let was_drifted = *was;
                    (*end, *was) = (window.end_s, drifted);
                    was_drifted
                }
                None => {
                    seen.push((window.model_version.clone(), window.end_s, drifted));
                    false
                }
            };
            if let Some(line) = drift_notice(&window, drifted_before, &brokers) {
                notify(line);
            }
        }
    }
}

/// Waits until something accepts connections on `port`; `running` fails when the process that
/// should listen there has exited.
pub fn wait_for_port(port: u16, what: &str, mut running: impl FnMut() -> Result<()>) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        running()?;
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("{what} did not listen on port {port} within 15 s")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process_cpu_and_memory() {
        let rss = resident_bytes("self").unwrap();
        assert!(rss > 1024.0 * 1024.0 && rss < 64.0 * 1024.0 * 1024.0 * 1024.0, "{rss}");
        // Spinning shows up as CPU time (the deadline only guards against a counter that never moves).
        let before = cpu_seconds("self").unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let mut x = 0u64;
        while cpu_seconds("self").unwrap() - before < 0.05 {
            assert!(std::time::Instant::now() < deadline, "no CPU time counted after 20 s of spinning");
            for _ in 0..1_000_000 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
            }
        }
        assert!(resident_bytes("no-such-process").is_err());
    }

    #[test]
    fn services_get_run_defaults_then_fraudctl_overrides_then_their_own_settings() {
        let flags = |own, overrides: &[(&str, &str)], defaults| {
            let overrides: Vec<(String, String)> = overrides.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
            service_kafka_flags(own, &overrides, defaults).chunks(2).map(|c| c[1].clone()).collect::<Vec<_>>()
        };
        let wait = &["fetch.wait.max.ms=50"][..];
        assert_eq!(flags(None, &[], wait), ["fetch.wait.max.ms=50"]);
        assert_eq!(flags(Some("linger.ms=2"), &[], wait), Vec::<String>::new(), "the variable reaches the service by itself");
        assert_eq!(flags(None, &[("security.protocol", "ssl")], wait), ["fetch.wait.max.ms=50", "security.protocol=ssl"]);
        assert_eq!(
            flags(Some("fetch.wait.max.ms=0, linger.ms=2"), &[("security.protocol", "ssl")], wait),
            ["security.protocol=ssl", "fetch.wait.max.ms=0", "linger.ms=2"],
            "the service's own variable replaces run's default and comes last"
        );
        assert!(service_kafka_flags(None, &[], &[]).is_empty());
        assert_eq!(service_kafka_flags(None, &[], wait)[0], "--kafka-config");
    }

    #[test]
    fn reads_a_metric_value() {
        let text = "# HELP x\nscorer_records_total 1500\nprocess_cpu_seconds_total 2.5\nscorer_records_total_other 9\n";
        assert_eq!(metric(text, "scorer_records_total"), Some(1500.0));
        assert_eq!(metric(text, "process_cpu_seconds_total"), Some(2.5));
        assert_eq!(metric(text, "missing"), None);
        let labelled = "errors_total{kind=\"decode\"} 3\nerrors_total{kind=\"decode_more\"} 4\n";
        assert_eq!(metric(labelled, r#"errors_total{kind="decode"}"#), Some(3.0));
        assert_eq!(metric(labelled, "errors_total"), None, "a labelled sample is named with its labels");
    }

    #[test]
    fn drift_windows_are_read_from_the_drift_jobs_metrics_and_told_when_they_drift() {
        let text = "# HELP feature_psi x\n\
            feature_psi{feature=\"amount_log\",model_version=\"1.0.0\"} 0.4213\n\
            feature_psi{feature=\"is_night\",model_version=\"1.0.0\"} 0.01\n\
            feature_psi{feature=\"amount_ratio_log\",model_version=\"1.0.0\"} 0.18\n\
            feature_psi{feature=\"amount_log\",model_version=\"2.0.0\"} 0.02\n\
            feature_psi_samples{feature=\"amount_log\",model_version=\"1.0.0\"} 1200\n\
            drift_window_end_timestamp_seconds{model_version=\"1.0.0\"} 1764151260\n\
            drift_window_end_timestamp_seconds{model_version=\"2.0.0\"} 1764151260\n\
            drift_window_end_timestamp_seconds{model_version=\"3.0.0\"} 0\n";
        let windows = drift_windows(text);
        let psi = |w: &DriftWindow| w.psi.iter().map(|(f, v)| format!("{f} {v}")).collect::<Vec<_>>();
        assert_eq!(windows.iter().map(|w| (w.model_version.as_str(), w.end_s)).collect::<Vec<_>>(), [("1.0.0", 1_764_151_260.0), ("2.0.0", 1_764_151_260.0)], "a version with no window yet is left out");
        assert_eq!(psi(&windows[0]), ["amount_log 0.4213", "amount_ratio_log 0.18", "is_night 0.01"]);
        assert_eq!(
            drift_notice(&windows[0], false, "127.0.0.1:9092").unwrap(),
            "drift    model 1.0.0 window ending 2025-11-26T10:01:00Z: amount_log PSI 0.42 (significant), amount_ratio_log PSI 0.18 (moderate); where each moved: fraudctl drift show --brokers 127.0.0.1:9092"
        );
        assert_eq!(drift_notice(&windows[1], false, "b"), None, "nothing drifted, nothing to tell");
        assert_eq!(drift_notice(&windows[1], true, "b").unwrap(), "drift    model 2.0.0 window ending 2025-11-26T10:01:00Z: no feature drifted any more");
    }

    #[test]
    fn the_busy_broker_notice_starts_above_its_threshold() {
        assert_eq!(busy_broker_notice(0.0), None);
        assert_eq!(busy_broker_notice(BUSY_BROKER), None);
        let line = busy_broker_notice(1.23).unwrap();
        assert!(line.contains("123 % of a core") && line.contains("restart fraudctl run"), "{line}");
    }

    /// A process spinning on a core is reported; one that sleeps is not. (The bar is low: the
    /// tests share two cores with the other tests' brokers and services.)
    #[test]
    fn the_cpu_watch_tells_a_busy_process_from_an_idle_one() {
        let watch = |script: &str, wait: Duration| {
            let mut child = Command::new("sh").args(["-c", script]).spawn().unwrap();
            let stop = Arc::new(AtomicBool::new(false));
            let (tx, rx) = std::sync::mpsc::channel();
            let judge = |share: f64| (share > 0.2).then(|| format!("busy: {share:.2}"));
            let watcher = watch_cpu(child.id(), Duration::from_secs(1), stop.clone(), judge, move |line| tx.send(line).unwrap());
            let line = rx.recv_timeout(wait).ok();
            stop.store(true, Ordering::Relaxed);
            watcher.join().unwrap();
            child.kill().unwrap();
            child.wait().unwrap();
            line
        };
        assert!(watch("while :; do :; done", Duration::from_secs(10)).is_some_and(|l| l.starts_with("busy: ")));
        assert_eq!(watch("exec sleep 30", Duration::from_secs(3)), None);
    }
}
