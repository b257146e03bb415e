//! The scorer's committer: a thread that waits for a batch's outputs to be acknowledged and
//! commits its input offsets — in the batch's Kafka transaction (exactly-once) or after its outputs
//! (at-least-once) — while the loop scores the next batch. Also the producer context that counts
//! delivery reports for it, and the gate a rebalance waits on while a commit is in flight.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, mpsc};
use std::time::{Duration, Instant, SystemTime};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::{DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientContext, TopicPartitionList};

use crate::pipeline::{PipelineContext, StepError, TXN_TIMEOUT};

/// Counts delivered (acknowledged or failed) output records, so the committer can wait for a
/// batch's outputs without polling, and failures, so at-least-once mode knows whether they all
/// landed. Every record librdkafka accepted gets exactly one report, a purged one included.
pub struct DeliveryContext {
    pub(crate) failures: AtomicU64,
    delivered: AtomicU64,
    /// The count the committer waits for; reports below it need not wake anyone.
    target: AtomicU64,
    lock: Mutex<()>,
    reached: Condvar,
    /// A failed batch fails all its records at once (an aborted transaction purges them all): one
    /// line a second, with how many were left out, instead of one per record.
    warnings: telemetry::logs::Throttle,
    logs: telemetry::kafka::KafkaLogs,
}

impl Default for DeliveryContext {
    fn default() -> Self {
        Self {
            failures: AtomicU64::default(),
            delivered: AtomicU64::default(),
            target: AtomicU64::default(),
            lock: Mutex::default(),
            reached: Condvar::default(),
            warnings: telemetry::logs::Throttle::per_second(),
            logs: telemetry::kafka::KafkaLogs::default(),
        }
    }
}

impl DeliveryContext {
    /// Waits until `target` records have been reported; false on timeout.
    pub(crate) fn wait_delivered(&self, target: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        self.target.store(target, Ordering::SeqCst);
        let mut guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        while self.delivered.load(Ordering::SeqCst) < target {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            guard = self.reached.wait_timeout(guard, left).unwrap_or_else(|p| p.into_inner()).0;
        }
        true
    }

    pub(crate) fn count_delivery(&self) {
        let delivered = self.delivered.fetch_add(1, Ordering::SeqCst) + 1;
        if delivered >= self.target.load(Ordering::SeqCst) {
            // Taking the lock orders this after the waiter's check: the wake-up cannot be missed.
            let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
            self.reached.notify_all();
        }
    }
}

impl ClientContext for DeliveryContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        self.logs.log(level, fac, log_message);
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        self.logs.error(&error, reason);
    }

    /// The producer's statistics (when `statistics.interval.ms` comes with the overrides both
    /// clients get) are not used; rdkafka would log each report whole.
    fn stats_raw(&self, _statistics: &[u8]) {}
}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((e, _)) = result {
            self.failures.fetch_add(1, Ordering::Relaxed);
            if let Some(suppressed) = self.warnings.allow() {
                tracing::warn!(error = %e, suppressed, "output record not delivered");
            }
        }
        self.count_delivery();
    }
}

/// Whether a batch's commit is under way on the committer thread. A rebalance waits for it before
/// giving partitions away, so their next owner starts from offsets this scorer has settled.
#[derive(Default)]
pub struct CommitGate {
    busy: Mutex<bool>,
    idle: Condvar,
}

impl CommitGate {
    pub(crate) fn set(&self, busy: bool) {
        *self.busy.lock().unwrap_or_else(|p| p.into_inner()) = busy;
        if !busy {
            self.idle.notify_all();
        }
    }

    pub(crate) fn wait_idle(&self, timeout: Duration) {
        let guard = self.busy.lock().unwrap_or_else(|p| p.into_inner());
        let (_guard, result) = self.idle.wait_timeout_while(guard, timeout, |busy| *busy).unwrap_or_else(|p| p.into_inner());
        if result.timed_out() {
            tracing::warn!("rebalance went ahead while a batch was still committing");
        }
    }
}

/// A batch's commit, as the committer thread runs it.
pub(crate) struct CommitJob {
    pub(crate) offsets: TopicPartitionList,
    /// Exactly-once: the group the offsets are committed for, in the batch's transaction. None:
    /// at-least-once, the offsets are committed by the consumer once the outputs all landed.
    pub(crate) group: Option<rdkafka::consumer::ConsumerGroupMetadata>,
    /// The producer's delivery count once this batch's outputs are all reported.
    pub(crate) delivered: u64,
}

/// Why a batch's commit failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CommitFailure {
    /// Outputs not acknowledged or the transaction not committed: roll back and redo the batch.
    #[error("{0}")]
    Outputs(KafkaError),
    /// At-least-once: outputs are out but the offsets were not committed.
    #[error("{0}")]
    Offsets(KafkaError),
    /// The committer thread is gone (it panicked): the scorer cannot go on.
    #[error("the committer thread has stopped")]
    Stopped,
}

/// When a batch committed: for its latency metric and its spans' end.
pub(crate) type Committed = (Instant, SystemTime);

/// The thread that waits for a batch's outputs to be acknowledged and commits its offsets (with
/// the transaction, exactly-once; after it, at-least-once), so the loop can score the next batch
/// meanwhile. One job at a time: the loop settles each before submitting the next.
pub(crate) struct Committer {
    jobs: Option<mpsc::SyncSender<CommitJob>>,
    results: mpsc::Receiver<Result<Committed, CommitFailure>>,
    gate: Arc<CommitGate>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Committer {
    pub(crate) fn start(
        producer: Arc<ThreadedProducer<DeliveryContext>>,
        consumer: Arc<BaseConsumer<PipelineContext>>,
        gate: Arc<CommitGate>,
    ) -> std::io::Result<Self> {
        let (jobs, inbox) = mpsc::sync_channel::<CommitJob>(1);
        let (outbox, results) = mpsc::sync_channel(1);
        let thread_gate = Arc::clone(&gate);
        let thread = std::thread::Builder::new().name("scorer-commit".into()).spawn(move || {
            // Delivery failures counted up to the end of the previous batch: every report of a
            // batch is in once its commit has waited for them, and the next batch is produced only
            // after that commit settles, so the failures since then are this batch's own.
            let mut failures_seen = 0;
            for job in inbox {
                let result = commit_batch(&producer, &consumer, job, &mut failures_seen);
                if outbox.send(result).is_err() {
                    break;
                }
                thread_gate.set(false);
            }
        })?;
        Ok(Self { jobs: Some(jobs), results, gate, thread: Some(thread) })
    }

    pub(crate) fn submit(&self, job: CommitJob) -> Result<(), StepError> {
        self.gate.set(true);
        let sent = self.jobs.as_ref().is_some_and(|jobs| jobs.send(job).is_ok());
        if !sent {
            self.gate.set(false);
            return Err(StepError::Fatal("the committer thread has stopped".into()));
        }
        Ok(())
    }

    pub(crate) fn result(&self) -> Result<Committed, CommitFailure> {
        self.results
            .recv()
            .unwrap_or(Err(CommitFailure::Stopped))
    }
}

impl Drop for Committer {
    fn drop(&mut self) {
        self.jobs.take();
        if let Some(thread) = self.thread.take() {
            thread.join().ok();
        }
    }
}

fn commit_batch(
    producer: &ThreadedProducer<DeliveryContext>,
    consumer: &BaseConsumer<PipelineContext>,
    job: CommitJob,
    failures_seen: &mut u64,
) -> Result<Committed, CommitFailure> {
    let context = producer.context();
    if !context.wait_delivered(job.delivered, TXN_TIMEOUT) {
        return Err(CommitFailure::Outputs(KafkaError::Flush(RDKafkaErrorCode::MessageTimedOut)));
    }
    let failures = context.failures.load(Ordering::SeqCst);
    let failed = failures - std::mem::replace(failures_seen, failures);
    match job.group {
        Some(group) => {
            producer.send_offsets_to_transaction(&job.offsets, &group, TXN_TIMEOUT).map_err(CommitFailure::Outputs)?;
            loop {
                match producer.commit_transaction(TXN_TIMEOUT) {
                    Ok(()) => break,
                    Err(KafkaError::Transaction(ref t)) if t.is_retriable() => tracing::warn!(error = %t, "retrying commit"),
                    Err(e) => return Err(CommitFailure::Outputs(e)),
                }
            }
        }
        None => {
            if failed > 0 {
                return Err(CommitFailure::Outputs(KafkaError::Flush(RDKafkaErrorCode::MessageTimedOut)));
            }
            consumer.commit(&job.offsets, CommitMode::Sync).map_err(CommitFailure::Offsets)?;
        }
    }
    Ok((Instant::now(), SystemTime::now()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_committer_wakes_when_the_batch_is_delivered_and_not_before() {
        let context = std::sync::Arc::new(DeliveryContext::default());
        assert!(!context.wait_delivered(3, Duration::from_millis(20)), "nothing delivered yet");
        let reporter = {
            let context = std::sync::Arc::clone(&context);
            std::thread::spawn(move || {
                for _ in 0..3 {
                    std::thread::sleep(Duration::from_millis(5));
                    context.count_delivery();
                }
            })
        };
        assert!(context.wait_delivered(3, Duration::from_secs(5)));
        assert_eq!(context.delivered.load(Ordering::SeqCst), 3);
        reporter.join().expect("reporter thread");
        assert!(!context.wait_delivered(4, Duration::from_millis(20)), "the fourth record was never reported");
    }

    #[test]
    fn a_rebalance_waits_for_the_commit_in_flight() {
        let gate = std::sync::Arc::new(CommitGate::default());
        gate.set(true);
        let started = Instant::now();
        let committer = {
            let gate = std::sync::Arc::clone(&gate);
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(50));
                gate.set(false);
            })
        };
        gate.wait_idle(Duration::from_secs(5));
        assert!(started.elapsed() >= Duration::from_millis(50), "returned before the commit settled");
        committer.join().expect("committer thread");
        let idle = Instant::now();
        gate.wait_idle(Duration::from_secs(5));
        assert!(idle.elapsed() < Duration::from_secs(1), "an idle gate does not wait");
    }
}
