//! Log rate limits: a problem that repeats (a flood of bad packets, a
//! failing write) is logged at most once per period, with a running total
//! in the message, while every occurrence is still counted. Time is passed
//! in, like everywhere in this crate.

use std::{collections::BTreeMap, time::Duration};

/// The period of the agent's log limits.
pub const LOG_EVERY: Duration = Duration::from_secs(1);

/// At most one event per period.
#[derive(Debug, Clone, Default)]
pub struct Every {
    /// When the last event was let through.
    last: Option<Duration>,
}

impl Every {
    pub const fn new() -> Self {
        Every { last: None }
    }

    /// Whether an event at `now` may go through (then the period restarts).
    pub fn allow(&mut self, now: Duration) -> bool {
        if self.last.is_none_or(|t| now.saturating_sub(t) >= LOG_EVERY) {
            self.last = Some(now);
            true
        } else {
            false
        }
    }
}

/// [`Every`] per key (e.g. per rejection reason).
#[derive(Debug, Clone)]
pub struct EveryBy<K> {
    /// The limit of each key seen.
    last: BTreeMap<K, Every>,
}

impl<K: Ord> Default for EveryBy<K> {
    fn default() -> Self {
        EveryBy {
            last: BTreeMap::new(),
        }
    }
}

impl<K: Ord> EveryBy<K> {
    /// Whether an event for `key` at `now` may go through.
    pub fn allow(&mut self, key: K, now: Duration) -> bool {
        self.last.entry(key).or_default().allow(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn once_per_period_per_key() {
        let ms = Duration::from_millis;
        let mut e = Every::new();
        assert!(e.allow(ms(0)));
        assert!(!e.allow(ms(999)));
        assert!(e.allow(ms(1000)));
        let mut by = EveryBy::default();
        assert!(by.allow("a", ms(0)));
        assert!(by.allow("b", ms(1)));
        assert!(!by.allow("a", ms(500)));
        assert!(by.allow("a", ms(1000)));
    }
}
