//! Callers waiting for answers, keyed by proposal seq or read token.

use std::collections::HashMap;

use bytes::Bytes;
use ha_core::{Error, Result};
use parking_lot::Mutex;
use tokio::sync::oneshot;

type Reply = oneshot::Sender<Result<Bytes>>;

#[derive(Default)]
pub(crate) struct Waiters {
    proposals: Mutex<HashMap<u64, Reply>>,
    reads: Mutex<HashMap<u64, (Bytes, Reply)>>,
    membership: Mutex<HashMap<u64, oneshot::Sender<Result<()>>>>,
}

impl Waiters {
    pub(crate) fn add_proposal(&self, seq: u64, reply: Reply) {
        self.proposals.lock().insert(seq, reply);
    }

    pub(crate) fn remove_proposal(&self, seq: u64) {
        self.proposals.lock().remove(&seq);
    }

    pub(crate) fn complete_proposals(&self, done: impl IntoIterator<Item = (u64, Result<Bytes>)>) {
        let mut map = self.proposals.lock();
        for (seq, result) in done {
            if let Some(tx) = map.remove(&seq) {
                let _ = tx.send(result);
            }
        }
    }

    pub(crate) fn add_read(&self, token: u64, query: Bytes, reply: Reply) {
        self.reads.lock().insert(token, (query, reply));
    }

    pub(crate) fn remove_read(&self, token: u64) {
        self.reads.lock().remove(&token);
    }

    pub(crate) fn take_read(&self, token: u64) -> Option<(Bytes, Reply)> {
        self.reads.lock().remove(&token)
    }

    pub(crate) fn fail_read(&self, token: u64, error: Error) {
        if let Some((_, tx)) = self.take_read(token) {
            let _ = tx.send(Err(error));
        }
    }

    pub(crate) fn add_membership(&self, token: u64, reply: oneshot::Sender<Result<()>>) {
        self.membership.lock().insert(token, reply);
    }

    pub(crate) fn remove_membership(&self, token: u64) {
        self.membership.lock().remove(&token);
    }

    pub(crate) fn complete_membership(&self, done: impl IntoIterator<Item = (u64, Result<()>)>) {
        let mut map = self.membership.lock();
        for (token, result) in done {
            if let Some(tx) = map.remove(&token) {
                let _ = tx.send(result);
            }
        }
    }

    /// Fails everything still waiting (the member stopped).
    pub(crate) fn fail_everything(&self, error: &Error) {
        for (_, tx) in self.proposals.lock().drain() {
            let _ = tx.send(Err(error.clone()));
        }
        for (_, (_, tx)) in self.reads.lock().drain() {
            let _ = tx.send(Err(error.clone()));
        }
        for (_, tx) in self.membership.lock().drain() {
            let _ = tx.send(Err(error.clone()));
        }
    }
}
