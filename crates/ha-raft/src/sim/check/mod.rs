//! The checkers: raft invariants watched during a run, and the
//! linearizability check of a client history (also usable on its own, on a
//! history file from real processes).

mod kv;
mod lease;
mod linear;
mod raft;
mod watch;

pub use linear::check_history;
pub(crate) use linear::{check_history_with, describe};
pub(crate) use raft::RaftChecks;

/// A property that did not hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// The property, e.g. `linearizability` or `election safety`.
    pub property: &'static str,
    /// Virtual time at which it was seen, when the check ran during a run.
    pub at_ns: Option<u64>,
    /// What exactly went wrong.
    pub detail: String,
    /// History operations (by id) that show it, if any.
    pub ops: Vec<u64>,
}

impl Violation {
    pub(crate) fn new(property: &'static str, detail: impl Into<String>) -> Self {
        Violation {
            property,
            at_ns: None,
            detail: detail.into(),
            ops: Vec::new(),
        }
    }

    pub(crate) fn at(mut self, t: u64) -> Self {
        self.at_ns = Some(t);
        self
    }

    pub(crate) fn with_ops(mut self, ops: impl IntoIterator<Item = u64>) -> Self {
        self.ops.extend(ops);
        self
    }
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.at_ns {
            Some(t) => write!(
                f,
                "{} violated at {}: {}",
                self.property,
                crate::sim::fmt_ns(t),
                self.detail
            ),
            None => write!(f, "{} violated: {}", self.property, self.detail),
        }
    }
}
