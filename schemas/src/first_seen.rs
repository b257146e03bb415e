//! Keeping the first decision per transaction. A scorer killed mid-batch may have that batch
//! decided again by its successor (the test broker commits, rather than aborts, a killed
//! producer's open transaction), so readers of `decisions` can meet a transaction twice: each
//! keeps the first decision and counts the rest.

use std::collections::{HashSet, VecDeque};

/// The transaction ids of the last `capacity` distinct decisions read, oldest forgotten first.
/// Repeats come within seconds of the original (a replayed batch), so a window of recent ids is
/// enough and keeps memory flat.
#[derive(Debug)]
pub struct FirstSeen {
    ids: HashSet<String>,
    order: VecDeque<String>,
    capacity: usize,
}

impl FirstSeen {
    /// The window readers use unless configured otherwise (at 2,000 decisions/s, 100 s).
    pub const DEFAULT_CAPACITY: usize = 200_000;

    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Self { ids: HashSet::with_capacity(capacity.min(1 << 16)), order: VecDeque::new(), capacity }
    }

    /// True the first time `transaction_id` is offered (within the window); false for a repeat.
    pub fn first(&mut self, transaction_id: &str) -> bool {
        if self.ids.contains(transaction_id) {
            return false;
        }
        if self.order.len() == self.capacity
            && let Some(oldest) = self.order.pop_front()
        {
            self.ids.remove(&oldest);
        }
        self.ids.insert(transaction_id.to_string());
        self.order.push_back(transaction_id.to_string());
        true
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_are_spotted_within_the_window_and_memory_stays_bounded() {
        let mut seen = FirstSeen::new(3);
        assert!(seen.first("a"));
        assert!(!seen.first("a"), "a repeat");
        assert!(seen.first("b") && seen.first("c"));
        assert!(!seen.first("a"), "still in the window");
        assert!(seen.first("d"), "pushes a out");
        assert_eq!(seen.len(), 3);
        assert!(seen.first("a"), "forgotten once out of the window");
        assert!(!seen.first("d"));
    }
}
