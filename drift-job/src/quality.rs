//! Model quality from delayed labels: decisions and labels are joined by transaction id in
//! bounded state (labels may come before or long after their decision), and each model version
//! keeps a sliding window of its labelled decisions from which precision, recall, F1 and the
//! false-positive rate are computed at both thresholds.

use std::collections::{HashMap, VecDeque};

use schemas::Verdict;

pub use scorer::quality::{Confusion, Threshold};

/// What a decision contributes to quality once labelled.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub model_version: String,
    pub verdict: Verdict,
    pub amount_usd: f64,
    pub decided_at_ms: i64,
}

/// A joined pair.
#[derive(Debug, Clone, PartialEq)]
pub struct Joined {
    pub outcome: Outcome,
    pub is_fraud: bool,
    pub labelled_at_ms: i64,
}

/// Why an entry left the join state without a partner (`labels_unmatched_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unmatched {
    DecisionExpired,
    DecisionEvicted,
    LabelExpired,
    LabelEvicted,
}

impl Unmatched {
    pub const ALL: [Unmatched; 4] =
        [Unmatched::DecisionExpired, Unmatched::DecisionEvicted, Unmatched::LabelExpired, Unmatched::LabelEvicted];

    pub fn as_str(self) -> &'static str {
        match self {
            Unmatched::DecisionExpired => "decision_expired",
            Unmatched::DecisionEvicted => "decision_evicted",
            Unmatched::LabelExpired => "label_expired",
            Unmatched::LabelEvicted => "label_evicted",
        }
    }
}

/// Entries waiting for their partner, oldest first, bounded in count and age.
///
/// `order` lists arrivals oldest first; an entry taken by its partner, or replaced by a later
/// arrival for the same id, leaves a stale line there (told apart by its arrival number), which
/// is skipped when it reaches the front. Most entries are taken long before they would expire,
/// so `order` is compacted whenever stale lines outnumber live ones: its length stays within
/// about twice the live entries instead of growing with every arrival of the TTL.
struct Pending<T> {
    by_id: HashMap<String, Waiting<T>>,
    order: VecDeque<(String, u64, i64)>,
    arrivals: u64,
}

struct Waiting<T> {
    value: T,
    arrival: u64,
}

impl<T> Pending<T> {
    fn new() -> Self {
        Self { by_id: HashMap::new(), order: VecDeque::new(), arrivals: 0 }
    }

    /// Adds (or replaces: a second arrival for the id restarts its wait) an entry.
    fn insert(&mut self, id: String, value: T, now_ms: i64) {
        self.arrivals += 1;
        let arrival = self.arrivals;
        self.order.push_back((id.clone(), arrival, now_ms));
        self.by_id.insert(id, Waiting { value, arrival });
        if self.order.len() > 2 * self.by_id.len() + 64 {
            let by_id = &self.by_id;
            self.order.retain(|(id, arrival, _)| by_id.get(id).is_some_and(|w| w.arrival == *arrival));
        }
    }

    fn take(&mut self, id: &str) -> Option<T> {
        self.by_id.remove(id).map(|w| w.value)
    }

    fn is_live(&self, id: &str, arrival: u64) -> bool {
        self.by_id.get(id).is_some_and(|w| w.arrival == arrival)
    }

    /// Removes the oldest live entry; returns whether one was removed.
    fn evict_oldest(&mut self) -> bool {
        while let Some((id, arrival, _)) = self.order.pop_front() {
            if self.is_live(&id, arrival) {
                self.by_id.remove(&id);
                return true;
            }
        }
        false
    }

    /// Removes entries that arrived before `cutoff_ms`; returns how many.
    fn expire(&mut self, cutoff_ms: i64) -> u64 {
        let mut n = 0;
        while let Some((id, arrival, at)) = self.order.front() {
            if *at >= cutoff_ms {
                break;
            }
            if self.is_live(id, *arrival) {
                self.by_id.remove(id);
                n += 1;
            }
            self.order.pop_front();
        }
        n
    }

    fn len(&self) -> usize {
        self.by_id.len()
    }
}

/// The bounded join of decisions and labels.
pub struct LabelJoin {
    decisions: Pending<Outcome>,
    labels: Pending<(bool, i64)>,
    max_entries: usize,
    ttl_ms: i64,
}

impl LabelJoin {
    pub fn new(max_entries: usize, ttl_ms: i64) -> Self {
        Self { decisions: Pending::new(), labels: Pending::new(), max_entries: max_entries.max(1), ttl_ms }
    }

    /// A decision arrived; returns the join if its label was waiting, and any entry evicted to
    /// make room.
    pub fn decision(&mut self, transaction_id: &str, outcome: Outcome, now_ms: i64) -> (Option<Joined>, Option<Unmatched>) {
        if let Some((is_fraud, labelled_at_ms)) = self.labels.take(transaction_id) {
            return (Some(Joined { outcome, is_fraud, labelled_at_ms }), None);
        }
        let evicted = (self.decisions.len() >= self.max_entries && self.decisions.evict_oldest()).then_some(Unmatched::DecisionEvicted);
        self.decisions.insert(transaction_id.to_string(), outcome, now_ms);
        (None, evicted)
    }

    /// A label arrived; returns the join if its decision was waiting.
    pub fn label(&mut self, transaction_id: &str, is_fraud: bool, labelled_at_ms: i64, now_ms: i64) -> (Option<Joined>, Option<Unmatched>) {
        if let Some(outcome) = self.decisions.take(transaction_id) {
            return (Some(Joined { outcome, is_fraud, labelled_at_ms }), None);
        }
        let evicted = (self.labels.len() >= self.max_entries && self.labels.evict_oldest()).then_some(Unmatched::LabelEvicted);
        self.labels.insert(transaction_id.to_string(), (is_fraud, labelled_at_ms), now_ms);
        (None, evicted)
    }

    /// Drops entries older than the TTL; returns (decisions expired, labels expired).
    pub fn expire(&mut self, now_ms: i64) -> (u64, u64) {
        let cutoff = now_ms - self.ttl_ms;
        (self.decisions.expire(cutoff), self.labels.expire(cutoff))
    }

    pub fn pending(&self) -> (usize, usize) {
        (self.decisions.len(), self.labels.len())
    }
}

/// The last `capacity` labelled decisions of one model version, with their confusion counts at
/// each threshold kept as entries come and go (the job reads them after every label).
pub struct QualityWindow {
    entries: VecDeque<(Verdict, bool)>,
    capacity: usize,
    /// In `Threshold::ALL`'s order: review, block.
    counts: [Confusion; 2],
}

impl QualityWindow {
    pub fn new(capacity: usize) -> Self {
        Self { entries: VecDeque::with_capacity(capacity.min(1 << 16)), capacity: capacity.max(1), counts: [Confusion::default(); 2] }
    }

    pub fn push(&mut self, verdict: Verdict, is_fraud: bool) {
        if self.entries.len() == self.capacity
            && let Some((old, was_fraud)) = self.entries.pop_front()
        {
            for (t, c) in Threshold::ALL.into_iter().zip(&mut self.counts) {
                c.remove(t.positive(old), was_fraud);
            }
        }
        self.entries.push_back((verdict, is_fraud));
        for (t, c) in Threshold::ALL.into_iter().zip(&mut self.counts) {
            c.add(t.positive(verdict), is_fraud);
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn confusion(&self, threshold: Threshold) -> Confusion {
        match threshold {
            Threshold::Review => self.counts[0],
            Threshold::Block => self.counts[1],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(v: Verdict) -> Outcome {
        Outcome { model_version: "1".into(), verdict: v, amount_usd: 10.0, decided_at_ms: 0 }
    }

    #[test]
    fn joins_in_either_order() {
        let mut j = LabelJoin::new(10, 1000);
        assert_eq!(j.decision("a", outcome(Verdict::Block), 0), (None, None));
        let (joined, _) = j.label("a", true, 50, 60);
        assert_eq!(joined.unwrap().outcome.verdict, Verdict::Block);
        assert_eq!(j.label("b", false, 70, 70), (None, None));
        let (joined, _) = j.decision("b", outcome(Verdict::Approve), 80);
        assert!(!joined.unwrap().is_fraud);
        assert_eq!(j.pending(), (0, 0));
    }

    #[test]
    fn state_is_bounded_by_count_and_age() {
        let mut j = LabelJoin::new(2, 1000);
        j.decision("a", outcome(Verdict::Approve), 0);
        j.decision("b", outcome(Verdict::Approve), 10);
        let (_, evicted) = j.decision("c", outcome(Verdict::Approve), 20);
        assert_eq!(evicted, Some(Unmatched::DecisionEvicted));
        assert_eq!(j.label("a", true, 0, 30).0, None, "a was evicted");
        assert_eq!(j.expire(1015), (1, 0), "b is older than the TTL");
        assert_eq!(j.pending(), (1, 1));
        assert_eq!(j.expire(5000), (1, 1));
        assert_eq!(j.pending(), (0, 0));
    }

    #[test]
    fn a_joined_entry_is_not_expired_later() {
        let mut j = LabelJoin::new(10, 100);
        j.decision("a", outcome(Verdict::Approve), 0);
        assert!(j.label("a", false, 1, 1).0.is_some());
        j.decision("a", outcome(Verdict::Review), 50);
        assert_eq!(j.expire(120), (0, 0), "the joined entry from 0 is gone; the new one from 50 is young");
        assert_eq!(j.expire(151), (1, 0));
    }

    #[test]
    fn joined_entries_do_not_pile_up_until_they_would_expire() {
        // A week's TTL and room for a million: every decision joined by its label at once, as
        // most are. What waits is nothing; what is kept to order arrivals must stay small too.
        let mut j = LabelJoin::new(1_000_000, 7 * 86_400_000);
        for i in 0..100_000 {
            let id = format!("t{i}");
            j.decision(&id, outcome(Verdict::Approve), i);
            assert!(j.label(&id, false, i, i).0.is_some());
        }
        assert_eq!(j.pending(), (0, 0));
        assert!(j.decisions.order.len() < 100, "{} arrival lines kept for no live entry", j.decisions.order.len());
        // Entries that do wait are still expired in arrival order after the compactions.
        for i in 0..1_000 {
            j.decision(&format!("w{i}"), outcome(Verdict::Approve), 200_000 + i);
        }
        assert_eq!(j.expire(200_000 + 500 + 7 * 86_400_000), (500, 0));
        assert_eq!(j.pending(), (500, 0));
    }

    #[test]
    fn a_second_arrival_for_an_id_restarts_its_wait() {
        let mut j = LabelJoin::new(10, 100);
        j.label("a", true, 0, 0);
        j.label("a", false, 40, 40);
        assert_eq!(j.expire(120), (0, 0), "the label that waits arrived at 40");
        assert_eq!(j.expire(141), (0, 1));
        assert_eq!(j.pending(), (0, 0));
        j.label("b", true, 0, 0);
        j.label("b", true, 10, 10);
        j.label("c", true, 20, 20);
        assert!(j.labels.evict_oldest());
        assert_eq!(j.pending(), (0, 1), "b's one live entry is the oldest: evicted, c stays");
        assert!(j.decision("c", outcome(Verdict::Block), 30).0.is_some());
    }

    #[test]
    fn running_counts_equal_a_recount_of_the_window() {
        let verdicts = [Verdict::Approve, Verdict::Review, Verdict::Block];
        let mut w = QualityWindow::new(50);
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        for _ in 0..5_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            w.push(verdicts[(x % 3) as usize], x.is_multiple_of(7));
            for t in Threshold::ALL {
                let mut recount = Confusion::default();
                for (v, f) in &w.entries {
                    recount.add(t.positive(*v), *f);
                }
                assert_eq!(w.confusion(t), recount);
            }
        }
        assert_eq!(w.len(), 50);
    }

    #[test]
    fn thresholds_and_rates() {
        let mut w = QualityWindow::new(3);
        w.push(Verdict::Approve, true); // evicted by the fourth push
        w.push(Verdict::Block, true);
        w.push(Verdict::Review, false);
        w.push(Verdict::Approve, false);
        let review = w.confusion(Threshold::Review);
        assert_eq!(review, Confusion { tp: 1, fp: 1, fn_: 0, tn: 1 });
        let block = w.confusion(Threshold::Block);
        assert_eq!(block, Confusion { tp: 1, fp: 0, fn_: 0, tn: 2 });
        assert_eq!(review.precision(), 0.5);
        assert_eq!(review.f1(), 2.0 / 3.0);
        assert_eq!(block.false_positive_rate(), 0.0);
        assert_eq!(Confusion::default().precision(), 0.0, "no positives: 0, as sklearn with zero_division=0");
    }
}
