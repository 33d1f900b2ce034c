//! A readable trace of a run: one line per event a core handled (with its
//! effects) and per fault, stamped with simulated time.

use std::fmt::Write as _;

use crate::scenario::T;

/// The lines of a run.
#[derive(Debug, Default)]
pub struct Trace {
    lines: Vec<(T, String)>,
}

impl Trace {
    pub fn push(&mut self, t: T, line: String) {
        self.lines.push((t, line));
    }

    /// The last `n` lines (all with `None`), formatted.
    pub fn render(&self, n: Option<usize>) -> String {
        let skip = n.map_or(0, |n| self.lines.len().saturating_sub(n));
        let mut out = String::new();
        for (t, line) in &self.lines[skip..] {
            let _ = writeln!(out, "{:>12.6}s  {line}", t.as_secs_f64());
        }
        out
    }
}
