//! What the sink logs about dead letters: the first few of each stage and
//! kind in full, then one line per interval with the counts by stage and
//! kind and a sample reason each. A poison input can dead-letter every
//! message; the log must stay readable (every dead letter is in the
//! dead-letter topic, with its reason, whatever is logged).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Dead letters of one stage and kind logged in full before summarising.
const IN_FULL: u64 = 5;
/// How often the rest are summarised.
const EVERY: Duration = Duration::from_secs(10);

/// Per (stage, kind): how many were logged in full, and those counted
/// since the last summary with the first reason among them.
pub(super) struct DeadLetterLog {
    seen: BTreeMap<(String, &'static str), (u64, u64, String)>,
    summarised: Instant,
}

impl DeadLetterLog {
    pub(super) fn new() -> Self {
        DeadLetterLog { seen: BTreeMap::new(), summarised: Instant::now() }
    }

    /// One dead letter: logged in full if it is among the first of its
    /// stage and kind, else counted for the next summary.
    pub(super) fn record(&mut self, stage: &str, kind: &'static str, reason: &str, partition: u32, offset: u64) {
        // Keys are bounded: stages times the kinds of failure.
        let (full, pending, sample) = self.seen.entry((stage.to_owned(), kind)).or_insert_with(|| (0, 0, String::new()));
        if *full < IN_FULL {
            *full += 1;
            let last = if *full == IN_FULL { " (the next ones of this stage and kind are summarised every 10 s)" } else { "" };
            tracing::warn!(%stage, kind, %reason, partition, offset, "message dead-lettered{last}");
        } else {
            if *pending == 0 {
                *sample = reason.to_owned();
            }
            *pending += 1;
        }
    }

    /// Log the summary if the interval has passed (or `now` is set: the run ends).
    pub(super) fn tick(&mut self, now: bool) {
        if !now && self.summarised.elapsed() < EVERY {
            return;
        }
        self.summarised = Instant::now();
        let parts: Vec<String> = self
            .seen
            .iter_mut()
            .filter(|(_, (_, pending, _))| *pending > 0)
            .map(|((stage, kind), (_, pending, sample))| {
                let part = format!("{stage}/{kind} {pending} (e.g. {sample})");
                *pending = 0;
                part
            })
            .collect();
        if !parts.is_empty() {
            tracing::warn!("more messages dead-lettered, by stage/kind: {}", parts.join("; "));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_of_each_stage_and_kind_are_shown_the_rest_counted() {
        let mut log = DeadLetterLog::new();
        for i in 0..8 {
            log.record("parse", "guest", &format!("bad {i}"), 0, i);
        }
        log.record("enrich", "output", "too big", 0, 9);
        let (full, pending, sample) = &log.seen[&("parse".to_owned(), "guest")];
        assert_eq!((*full, *pending, sample.as_str()), (IN_FULL, 3, "bad 5"));
        assert_eq!(log.seen[&("enrich".to_owned(), "output")].0, 1);
        log.tick(true);
        assert_eq!(log.seen[&("parse".to_owned(), "guest")].1, 0, "summarised");
    }
}
