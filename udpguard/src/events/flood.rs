//! Keeps a flood of alike events (an application retrying a refused `connect()` in a tight
//! loop) from flooding the terminal or the journal.
//!
//! Events are alike when they share a key (the caller gives it: action and tuple). Each key
//! gets windows of fixed length, starting at its first event: the first `burst` events of a
//! window are shown, the rest counted, and when the window ends a summary says how many were
//! not shown ("N more like this in the last second"). While a flood goes on, each following
//! window shows one event and summarises the rest, so a flood costs two lines per window.
//! Pure logic: time is whatever the caller passes, in nanoseconds.
use std::{collections::HashMap, hash::Hash};

/// Events shown in the window that starts a flood.
pub const BURST: u32 = 5;
/// Events shown in each window while the flood goes on.
pub const CONTINUING_BURST: u32 = 1;
/// One second, in nanoseconds.
pub const WINDOW_NS: u64 = 1_000_000_000;

/// What a window that hid events ends with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Summary<S> {
    /// The last event not shown.
    pub last: S,
    /// How many were not shown.
    pub suppressed: u64,
    /// When the window ended.
    pub end_ns: u64,
}

/// The window a key is in.
struct Window<S> {
    start_ns: u64,
    /// Events this window may show.
    burst: u32,
    shown: u32,
    suppressed: u64,
    last_suppressed: Option<S>,
}

/// Decides which events to show and summarises the rest, per key.
pub struct FloodGate<K, S> {
    window_ns: u64,
    burst: u32,
    continuing_burst: u32,
    windows: HashMap<K, Window<S>>,
    /// Summaries of windows already closed, waiting for [`FloodGate::due`].
    pending: Vec<Summary<S>>,
}

impl<K: Hash + Eq + Clone, S> Default for FloodGate<K, S> {
    fn default() -> Self {
        FloodGate::new(WINDOW_NS, BURST, CONTINUING_BURST)
    }
}

impl<K: Hash + Eq + Clone, S> FloodGate<K, S> {
    pub fn new(window_ns: u64, burst: u32, continuing_burst: u32) -> Self {
        FloodGate {
            window_ns,
            burst,
            continuing_burst,
            windows: HashMap::new(),
            pending: Vec::new(),
        }
    }

    /// Whether to show an event with `key` that happened at `now_ns`. An event not shown is
    /// kept (the last one) for its window's summary.
    pub fn admit(&mut self, key: K, event: S, now_ns: u64) -> bool {
        self.close(&key, now_ns);
        let window = self.windows.entry(key).or_insert(Window {
            start_ns: now_ns,
            burst: self.burst,
            shown: 0,
            suppressed: 0,
            last_suppressed: None,
        });
        if window.shown < window.burst {
            window.shown += 1;
            true
        } else {
            window.suppressed += 1;
            window.last_suppressed = Some(event);
            false
        }
    }

    /// The summaries of every window that has ended by `now_ns`, oldest first; keys whose
    /// flood is over are forgotten.
    pub fn due(&mut self, now_ns: u64) -> Vec<Summary<S>> {
        let ended: Vec<K> = self
            .windows
            .iter()
            .filter(|(_, w)| now_ns >= w.start_ns.saturating_add(self.window_ns))
            .map(|(key, _)| key.clone())
            .collect();
        for key in ended {
            self.close(&key, now_ns);
        }
        let mut due = std::mem::take(&mut self.pending);
        due.sort_by_key(|s| s.end_ns);
        due
    }

    /// Every summary still open, as if all windows ended now (at exit).
    pub fn drain(&mut self, now_ns: u64) -> Vec<Summary<S>> {
        let mut due = self.due(now_ns);
        for (_, window) in self.windows.drain() {
            if let Some(last) = window.last_suppressed {
                due.push(Summary {
                    last,
                    suppressed: window.suppressed,
                    end_ns: now_ns,
                });
            }
        }
        due
    }

    /// Ends `key`'s window if it is over by `now_ns`: a window that hid events queues its
    /// summary and is followed at once by a continuing window; a quiet one is forgotten.
    fn close(&mut self, key: &K, now_ns: u64) {
        let Some(window) = self.windows.get_mut(key) else {
            return;
        };
        // A window ends `window_ns` after it starts; several may have passed since.
        while now_ns >= window.start_ns.saturating_add(self.window_ns) {
            let end_ns = window.start_ns + self.window_ns;
            match window.last_suppressed.take() {
                Some(last) => {
                    self.pending.push(Summary {
                        last,
                        suppressed: window.suppressed,
                        end_ns,
                    });
                    *window = Window {
                        start_ns: end_ns,
                        burst: self.continuing_burst,
                        shown: 0,
                        suppressed: 0,
                        last_suppressed: None,
                    };
                }
                None => {
                    self.windows.remove(key);
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    /// A gate of one-second windows, bursts of 3 then 1.
    fn gate() -> FloodGate<&'static str, u64> {
        FloodGate::new(1000 * MS, 3, 1)
    }

    #[test]
    fn a_few_events_are_all_shown_and_nothing_is_summarised() {
        let mut g = gate();
        assert!(g.admit("a", 1, 0));
        assert!(g.admit("a", 2, 10 * MS));
        assert!(g.admit("b", 3, 20 * MS));
        assert!(g.due(5000 * MS).is_empty());
    }

    #[test]
    fn a_burst_is_shown_then_the_rest_is_summarised_when_the_second_ends() {
        let mut g = gate();
        let shown: Vec<bool> = (0..10).map(|i| g.admit("a", i, i * MS)).collect();
        assert_eq!(shown.iter().filter(|&&s| s).count(), 3);
        assert!(shown[..3].iter().all(|&s| s));
        assert!(g.due(999 * MS).is_empty(), "the second is not over yet");
        assert_eq!(
            g.due(1000 * MS),
            [Summary {
                last: 9,
                suppressed: 7,
                end_ns: 1000 * MS
            }]
        );
        assert!(g.due(1001 * MS).is_empty(), "said once");
    }

    #[test]
    fn a_continuing_flood_shows_one_event_per_second_and_summarises_the_rest() {
        let mut g = gate();
        for i in 0..10 {
            g.admit("a", i, i * MS);
        }
        g.due(1000 * MS);
        let shown: Vec<bool> = (0..10).map(|i| g.admit("a", i, (1000 + i) * MS)).collect();
        assert_eq!(shown.iter().filter(|&&s| s).count(), 1);
        assert_eq!(g.due(2000 * MS)[0].suppressed, 9);
        // The flood stopped: a quiet second ends it; the next event starts a fresh burst.
        assert!(g.due(3000 * MS).is_empty());
        let shown: Vec<bool> = (0..4).map(|i| g.admit("a", i, (5000 + i) * MS)).collect();
        assert_eq!(shown, [true, true, true, false]);
    }

    #[test]
    fn keys_are_limited_apart() {
        let mut g = gate();
        for i in 0..5 {
            g.admit("a", i, i * MS);
        }
        assert!(
            g.admit("b", 0, 6 * MS),
            "another tuple is not part of a's flood"
        );
        let due = g.due(1000 * MS);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].suppressed, 2);
    }

    #[test]
    fn an_event_after_the_window_closes_it_even_without_a_tick() {
        let mut g = gate();
        for i in 0..5 {
            g.admit("a", i, i * MS);
        }
        // No `due` call in between: admitting at 1.5 s still closes the first window.
        assert!(g.admit("a", 99, 1500 * MS));
        assert_eq!(g.due(1500 * MS)[0].suppressed, 2);
    }

    #[test]
    fn drain_summarises_open_windows() {
        let mut g = gate();
        for i in 0..5 {
            g.admit("a", i, i * MS);
        }
        let left = g.drain(10 * MS);
        assert_eq!(left.len(), 1);
        assert_eq!((left[0].last, left[0].suppressed), (4, 2));
        assert!(g.drain(20 * MS).is_empty());
    }
}
