//! Matching decisions to waiting requests. Every gateway reads all partitions of `decisions`
//! itself (no shared group, `read_committed`), hands each decision to the requests waiting for
//! its transaction id, and keeps a bounded window of recent decisions for lookups and for
//! spotting duplicates: the first decision per transaction id wins. It also remembers which
//! transactions it is publishing or has published without a decision yet, so that a retry of one
//! (a client that timed out, or got 202 pending) waits for the same decision instead of
//! publishing the transaction again. A transaction id that comes back with another payment is
//! refused, never answered with the first payment's decision.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use tokio::sync::{oneshot, watch};

use schemas::{Decision, Payment};

/// A decision read from Kafka, as the gateway answers it, with the trace it was made in (its
/// record's `traceparent`): the trace of the request that published the transaction, or the
/// scorer's own for a transaction that came with none. The decision's feature vector, which no
/// answer carries and which is about half of a decision's memory, is not kept (`features` is
/// empty): the board holds up to `RECENT_DECISIONS` of these.
#[derive(Debug)]
pub struct Decided {
    pub decision: Decision,
    pub trace_id: Option<String>,
}

impl Decided {
    /// The fields in which `payment` differs from the payment decided here.
    pub fn differences(&self, payment: &Payment) -> Vec<&'static str> {
        Payment::decided(&self.decision).differences(payment)
    }
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
    recent: schemas::RecentMap<String, Arc<Decided>>,
    /// Transactions without a decision yet that a request here publishes or has published.
    published: HashMap<String, Published>,
    published_order: VecDeque<(String, u64)>,
    claims: u64,
}

/// A claim on publishing a transaction.
struct Published {
    /// Told an evicted claim from a newer one for the same id.
    number: u64,
    state: watch::Sender<Publishing>,
    /// The trace of the request publishing it.
    trace_id: String,
    payment: Payment,
}

/// Where this gateway is with publishing a transaction that has no decision yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Publishing {
    /// A request is publishing it now.
    InFlight,
    /// Kafka acknowledged it.
    Accepted,
    /// The publish failed, or its request went away: nothing is known to be in Kafka.
    Failed,
}

/// What a request for a transaction does about publishing it.
pub enum Claim {
    /// Decided already (perhaps since the request first looked): answer with it.
    Decided(Arc<Decided>),
    /// Nobody here has published it: publish it, and report how that went (`PublishClaim`).
    Publish(PublishClaim),
    /// This gateway published it already: wait for the decision only.
    Accepted,
    /// Another request here is publishing it now: wait until that settles, then claim again.
    InFlight(watch::Receiver<Publishing>),
    /// The transaction id stands for another payment here (decided, accepted or being
    /// published): these fields differ. Refuse the request.
    Conflict(Vec<&'static str>),
}

/// The right, and the duty, to publish a transaction and say how it went. Dropped without a
/// report (its request went away), it counts as failed, so nobody waits on it for ever.
pub struct PublishClaim {
    board: Arc<DecisionBoard>,
    transaction_id: String,
    number: u64,
    reported: bool,
}

impl PublishClaim {
    /// Kafka acknowledged the transaction (`true`) or did not (`false`).
    pub fn report(mut self, acknowledged: bool) {
        self.reported = true;
        self.board.settle(&self.transaction_id, self.number, acknowledged);
    }
}

impl Drop for PublishClaim {
    fn drop(&mut self) {
        if !self.reported {
            self.board.settle(&self.transaction_id, self.number, false);
        }
    }
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
            inner: Mutex::new(Board {
                waiters: HashMap::new(),
                waiting: 0,
                recent: schemas::RecentMap::new(max_recent),
                published: HashMap::new(),
                published_order: VecDeque::new(),
                claims: 0,
            }),
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

    /// Decides who publishes `transaction_id`: the first request for it, unless it is decided,
    /// this gateway has already published it (no decision yet) or is publishing it now — or the
    /// id stands for another `payment` there. Claims are remembered for as many transactions as
    /// recent decisions; the oldest go first. `trace_id`: the claiming request's trace, which
    /// answers about the transaction carry until its decision (which continues that trace) is in.
    pub fn claim(self: &Arc<Self>, transaction_id: &str, trace_id: &str, payment: &Payment) -> Claim {
        let mut b = self.lock();
        if let Some(d) = b.recent.get(transaction_id) {
            let differ = d.differences(payment);
            return if differ.is_empty() { Claim::Decided(Arc::clone(d)) } else { Claim::Conflict(differ) };
        }
        if let Some(p) = b.published.get(transaction_id) {
            let state = *p.state.borrow();
            if state != Publishing::Failed {
                let differ = p.payment.differences(payment);
                if !differ.is_empty() {
                    return Claim::Conflict(differ);
                }
            }
            match state {
                Publishing::InFlight => return Claim::InFlight(p.state.subscribe()),
                Publishing::Accepted => return Claim::Accepted,
                Publishing::Failed => {}
            }
        }
        b.claims += 1;
        let number = b.claims;
        let claim = Published { number, state: watch::channel(Publishing::InFlight).0, trace_id: trace_id.to_string(), payment: payment.clone() };
        b.published.insert(transaction_id.to_string(), claim);
        b.published_order.push_back((transaction_id.to_string(), number));
        while b.published_order.len() > self.max_recent {
            if let Some((old, n)) = b.published_order.pop_front()
                && b.published.get(&old).is_some_and(|p| p.number == n)
            {
                b.published.remove(&old);
            }
        }
        Claim::Publish(PublishClaim { board: Arc::clone(self), transaction_id: transaction_id.to_string(), number, reported: false })
    }

    fn settle(&self, transaction_id: &str, number: u64, acknowledged: bool) {
        let mut b = self.lock();
        if b.published.get(transaction_id).is_none_or(|p| p.number != number) {
            return; // decided meanwhile, or evicted
        }
        if acknowledged {
            if let Some(p) = b.published.get(transaction_id) {
                p.state.send_replace(Publishing::Accepted);
            }
        } else if let Some(p) = b.published.remove(transaction_id) {
            p.state.send_replace(Publishing::Failed);
        }
    }

    /// For a transaction this gateway published (Kafka acknowledged it) and has no decision for
    /// yet: the trace it was published in.
    pub fn accepted(&self, transaction_id: &str) -> Option<String> {
        let b = self.lock();
        let p = b.published.get(transaction_id)?;
        (*p.state.borrow() == Publishing::Accepted).then(|| p.trace_id.clone())
    }

    pub fn recent(&self, transaction_id: &str) -> Option<Arc<Decided>> {
        self.lock().recent.get(transaction_id).cloned()
    }

    /// How many recent decisions are kept.
    pub fn recent_count(&self) -> usize {
        self.lock().recent.len()
    }

    pub fn waiting(&self) -> usize {
        self.lock().waiting
    }

    /// Records a decision read from Kafka (and the trace it was made in) and wakes its waiters.
    pub fn deliver(&self, decision: Decision, trace_id: Option<String>) -> Delivered {
        let mut b = self.lock();
        if b.recent.get(&decision.transaction_id).is_some() {
            return Delivered::Duplicate;
        }
        let id = decision.transaction_id.clone();
        let decision = Arc::new(Decided { decision: Decision { features: Vec::new(), ..decision }, trace_id });
        let mut waiting = 0;
        if let Some(list) = b.waiters.remove(&id) {
            b.waiting -= list.len();
            for s in list {
                if s.send(decision.clone()).is_ok() {
                    waiting += 1;
                }
            }
        }
        // Decided: a retry is answered from `recent` now.
        b.published.remove(&id);
        b.recent.insert_first(id, decision);
        Delivered::First { waiting }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use schemas::{FeatureValue, PaymentMethod, RiskLevel, Verdict};

    fn decision(id: &str, p: f64) -> Decision {
        Decision {
            transaction_id: id.into(),
            user_id: "u".into(),
            decision: Verdict::Approve,
            fraud_probability: p,
            risk_level: RiskLevel::Low,
            model_version: "1".into(),
            features: vec![FeatureValue { name: "amount_log".into(), value: 4.2 }],
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
        assert!(first.decision.features.is_empty(), "the feature vector is not kept");
        assert_eq!((first.decision.fraud_probability, first.trace_id.as_deref()), (0.1, Some("trace-1")));
        assert_eq!(board.waiting(), 0);
    }

    /// The payment `decision()` decides.
    fn paid() -> Payment {
        Payment { user_id: "u".into(), amount: 1.0, currency: "USD".into(), payment_method: PaymentMethod::Card }
    }

    fn publish(c: Claim) -> PublishClaim {
        match c {
            Claim::Publish(p) => p,
            Claim::Decided(_) => panic!("expected Publish, got Decided"),
            Claim::Accepted => panic!("expected Publish, got Accepted"),
            Claim::InFlight(_) => panic!("expected Publish, got InFlight"),
            Claim::Conflict(f) => panic!("expected Publish, got Conflict({f:?})"),
        }
    }

    #[tokio::test]
    async fn a_transaction_id_reused_for_another_payment_is_a_conflict_until_its_publish_fails() {
        let board = Arc::new(DecisionBoard::new(10, 10));
        let other = Payment { amount: 900.0, payment_method: PaymentMethod::Crypto, ..paid() };
        let first = publish(board.claim("t", "trace", &paid()));
        let Claim::Conflict(differ) = board.claim("t", "trace", &other) else { panic!("while publishing") };
        assert_eq!(differ, ["amount", "payment_method"]);
        first.report(true);
        assert!(matches!(board.claim("t", "trace", &other), Claim::Conflict(_)), "accepted");
        assert!(matches!(board.claim("t", "trace", &paid()), Claim::Accepted), "the same payment waits");
        board.deliver(decision("t", 0.5), None);
        let Claim::Conflict(differ) = board.claim("t", "trace", &Payment { user_id: "v".into(), ..paid() }) else { panic!("decided") };
        assert_eq!(differ, ["user_id"]);
        assert!(matches!(board.claim("t", "trace", &paid()), Claim::Decided(_)));

        // Nothing reached Kafka under a failed publish: the id is free for whatever comes next.
        publish(board.claim("f", "trace", &paid())).report(false);
        publish(board.claim("f", "trace", &other)).report(true);
        assert!(matches!(board.claim("f", "trace", &paid()), Claim::Conflict(_)));
    }

    #[tokio::test]
    async fn a_transaction_is_published_once_until_it_is_decided() {
        let board = Arc::new(DecisionBoard::new(10, 10));
        let first = publish(board.claim("t", "trace-t", &paid()));
        let Claim::InFlight(mut watcher) = board.claim("t", "trace-t", &paid()) else { panic!("a second request waits for the first") };
        first.report(true);
        assert_eq!(*watcher.wait_for(|s| *s != Publishing::InFlight).await.unwrap(), Publishing::Accepted);
        assert!(matches!(board.claim("t", "trace-t", &paid()), Claim::Accepted), "a retry after the ack publishes nothing");
        assert_eq!(board.accepted("t").as_deref(), Some("trace-t"), "the first request's trace");
        board.deliver(decision("t", 0.5), None);
        assert!(board.recent("t").is_some());
        assert_eq!(board.accepted("t"), None, "decided");
        let Claim::Decided(d) = board.claim("t", "trace-t", &paid()) else { panic!("a retry after the decision gets it") };
        assert_eq!(d.decision.fraud_probability, 0.5);
    }

    #[tokio::test]
    async fn a_failed_or_abandoned_publish_lets_the_next_request_publish() {
        let board = Arc::new(DecisionBoard::new(10, 10));
        let first = publish(board.claim("t", "trace-t", &paid()));
        let Claim::InFlight(mut watcher) = board.claim("t", "trace-t", &paid()) else { panic!() };
        first.report(false);
        assert_eq!(*watcher.wait_for(|s| *s != Publishing::InFlight).await.unwrap(), Publishing::Failed);
        let second = publish(board.claim("t", "trace-t", &paid()));
        let Claim::InFlight(mut watcher) = board.claim("t", "trace-t", &paid()) else { panic!() };
        drop(second); // its request went away mid-publish
        assert_eq!(*watcher.wait_for(|s| *s != Publishing::InFlight).await.unwrap(), Publishing::Failed);
        publish(board.claim("t", "trace-t", &paid())).report(true);
    }

    #[test]
    fn claims_are_bounded_and_an_evicted_one_is_published_again() {
        let board = Arc::new(DecisionBoard::new(10, 2));
        for id in ["a", "b", "c"] {
            publish(board.claim(id, "trace", &paid())).report(true);
        }
        assert!(matches!(board.claim("c", "trace-c", &paid()), Claim::Accepted));
        let again = publish(board.claim("a", "trace-a", &paid())); // evicted: published again (readers keep the first decision)
        // A late report for an evicted claim does not touch the newer one.
        board.settle("a", 1, false);
        assert!(matches!(board.claim("a", "trace-a", &paid()), Claim::InFlight(_)));
        again.report(true);
        assert!(matches!(board.claim("a", "trace-a", &paid()), Claim::Accepted));
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
