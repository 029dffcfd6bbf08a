//! raft-rs logs through slog; ha logs through `tracing`. Bridge one into the other.

pub(crate) fn raft_logger(node: u64) -> slog::Logger {
    slog::Logger::root(tracing_slog::TracingSlogDrain, slog::o!("raft_id" => node))
}
