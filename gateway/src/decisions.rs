//! Matching decisions to waiting requests. Every gateway reads all partitions of `decisions`
//! itself (no shared group, `read_committed`), hands each decision to the requests waiting for
//! its transaction id, and keeps a bounded window of recent decisions for lookups and for
//! spotting duplicates: the first decision per transaction id wins.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use schemas::Decision;

/// A decision read from Kafka, with the trace it was made in (its record's `traceparent`): the
/// trace of the request that published the transaction, or the scorer's own for a transaction
/// that came with none.
#[derive(Debug)]
pub struct Decided {
    pub decision: Decision,
    pub trace_id: Option<String>,
}

/// Requests waiting for decisions, and recent decisions, both bounded.
pub struct DecisionBoard {
    inner: Mutex<Board>,
    max_waiters: usize,
    max_recent: usize,
}

struct Board {
    waiters: HashMap<String, Vec<oneshot::Sender<Arc<Decided>>>>,
    waiting: usize,
    recent: HashMap<String, Arc<Decided>>,
    order: VecDeque<String>,
}

/// What happened to a decision read from Kafka.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivered {
    /// First decision for its transaction; `n` requests were waiting for it.
    First { waiting: usize },
    /// A later copy of a decision already seen; ignored.
    Duplicate,
}

#[derive(Debug, PartialEq, Eq)]
pub enum WaitError {
    /// Too many requests already waiting.
    Full,
}

impl DecisionBoard {
    pub fn new(max_waiters: usize, max_recent: usize) -> Self {
        Self {
            inner: Mutex::new(Board { waiters: HashMap::new(), waiting: 0, recent: HashMap::new(), order: VecDeque::new() }),
            max_waiters,
            max_recent: max_recent.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Board> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers interest in `transaction_id`'s decision. Call before publishing the transaction,
    /// so that a fast decision cannot slip past.
    pub fn wait_for(&self, transaction_id: &str) -> Result<oneshot::Receiver<Arc<Decided>>, WaitError> {
        let mut b = self.lock();
        if b.waiting >= self.max_waiters {
            return Err(WaitError::Full);
        }
        let (tx, rx) = oneshot::channel();
        b.waiters.entry(transaction_id.to_string()).or_default().push(tx);
        b.waiting += 1;
        Ok(rx)
    }

    /// Withdraws every waiter for `transaction_id` whose request gave up.
    pub fn forget(&self, transaction_id: &str) {
        let mut b = self.lock();
        if let Some(list) = b.waiters.get_mut(transaction_id) {
            let before = list.len();
            list.retain(|s| !s.is_closed());
            let removed = before - list.len();
            if list.is_empty() {
                b.waiters.remove(transaction_id);
            }
            b.waiting -= removed;
        }
    }

    pub fn recent(&self, transaction_id: &str) -> Option<Arc<Decided>> {
        self.lock().recent.get(transaction_id).cloned()
    }

    pub fn waiting(&self) -> usize {
        self.lock().waiting
    }

    /// Records a decision read from Kafka (and the trace it was made in) and wakes its waiters.
    pub fn deliver(&self, decision: Decision, trace_id: Option<String>) -> Delivered {
        let mut b = self.lock();
        if b.recent.contains_key(&decision.transaction_id) {
            return Delivered::Duplicate;
        }
        let id = decision.transaction_id.clone();
        let decision = Arc::new(Decided { decision, trace_id });
        let mut waiting = 0;
        if let Some(list) = b.waiters.remove(&id) {
            b.waiting -= list.len();
            for s in list {
                if s.send(decision.clone()).is_ok() {
                    waiting += 1;
                }
            }
        }
        b.recent.insert(id.clone(), decision);
        b.order.push_back(id);
        while b.order.len() > self.max_recent {
            if let Some(old) = b.order.pop_front() {
                b.recent.remove(&old);
            }
        }
        Delivered::First { waiting }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use schemas::{PaymentMethod, RiskLevel, Verdict};

    fn decision(id: &str, p: f64) -> Decision {
        Decision {
            transaction_id: id.into(),
            user_id: "u".into(),
            decision: Verdict::Approve,
            fraud_probability: p,
            risk_level: RiskLevel::Low,
            model_version: "1".into(),
            features: vec![],
            top_features: vec![],
            degraded: false,
            user_features_found: true,
            amount: 1.0,
            currency: "USD".into(),
            payment_method: PaymentMethod::Card,
            transaction_timestamp: 0,
            decided_at: 0,
            processing_latency_ms: 0.0,
        }
    }

    #[tokio::test]
    async fn waiters_get_the_first_decision_and_duplicates_are_ignored() {
        let board = DecisionBoard::new(10, 10);
        let a = board.wait_for("t1").unwrap();
        let b = board.wait_for("t1").unwrap();
        assert_eq!(board.waiting(), 2);
        assert_eq!(board.deliver(decision("t1", 0.1), Some("trace-1".into())), Delivered::First { waiting: 2 });
        assert_eq!(board.deliver(decision("t1", 0.9), None), Delivered::Duplicate);
        assert_eq!(a.await.unwrap().decision.fraud_probability, 0.1);
        assert_eq!(b.await.unwrap().decision.fraud_probability, 0.1);
        let first = board.recent("t1").unwrap();
        assert_eq!((first.decision.fraud_probability, first.trace_id.as_deref()), (0.1, Some("trace-1")));
        assert_eq!(board.waiting(), 0);
    }

    #[test]
    fn waiters_and_recent_decisions_are_bounded() {
        let board = DecisionBoard::new(2, 3);
        let _a = board.wait_for("a").unwrap();
        let b = board.wait_for("b").unwrap();
        assert_eq!(board.wait_for("c").unwrap_err(), WaitError::Full);
        drop(b);
        board.forget("b");
        assert!(board.wait_for("c").is_ok());
        for i in 0..5 {
            board.deliver(decision(&format!("r{i}"), 0.0), None);
        }
        assert!(board.recent("r0").is_none() && board.recent("r1").is_none());
        assert!(board.recent("r4").is_some());
    }
}
