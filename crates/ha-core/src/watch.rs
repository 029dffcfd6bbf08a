//! Watch vocabulary: the change events the KV reports to watchers.

use crate::kv::KeyValue;

/// What happened to a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// The key was created or updated.
    Put,
    /// The key was deleted (explicitly, or with its lease).
    Delete,
}

/// One change of one key, at the revision in `kv.mod_revision`.
///
/// For a delete, `kv` holds only the key and the revision of the delete
/// (`mod_revision`), as in etcd.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchEvent {
    /// Put or delete.
    pub kind: EventKind,
    /// The key after the change.
    pub kv: KeyValue,
    /// The key before the change, when the watcher asked for it and the
    /// key existed.
    pub prev_kv: Option<KeyValue>,
}
