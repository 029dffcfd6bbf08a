//! Entry points for fuzzing what peers send (feature `fuzzing`, used by the
//! cargo-fuzz targets under `fuzz/`; not part of the API).
//!
//! Each function runs the same decoders, in the same order, as the member
//! does on bytes from the network, and then touches what raft-rs would
//! touch on an accepted message (its enum getters panic on values they do
//! not know). A panic here is a crash a peer could cause.

use std::io::Cursor;

use ha_core::{ClusterId, NodeId};

use crate::snapshot::{PairReader, decode_descriptor};
use crate::transport::tcp::wire::{
    self, ConnKind, HELLO_BODY_LEN, LEN_PREFIX, PREAMBLE_LEN, check_hello_body, check_len,
    check_preamble, decode_batch, decode_call_reply, decode_kind, decode_snapshot_header,
    hello_tail_len, split_call_request, split_tag,
};

/// The largest frame the fuzz targets let through (the default maximum is
/// larger, but big frames only slow the fuzzer down).
const MAX_FRAME: u32 = 1 << 20;

fn take<'a>(data: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    if data.len() < n {
        return None;
    }
    let (head, rest) = data.split_at(n);
    *data = rest;
    Some(head)
}

/// A whole inbound TCP connection's bytes as a peer could send them: the
/// hello (its cluster id and receiver are taken as the ones expected, so
/// the fuzzer gets past them), then frames of the announced kind.
pub fn inbound_connection(mut data: &[u8]) {
    let Some(pre) = take(&mut data, PREAMBLE_LEN) else {
        return;
    };
    let Ok(pre) = <&[u8; PREAMBLE_LEN]>::try_from(pre) else {
        return;
    };
    let Ok(version) = check_preamble(pre) else {
        return;
    };
    let Some(body) = take(&mut data, HELLO_BODY_LEN) else {
        return;
    };
    let Ok(body) = <&[u8; HELLO_BODY_LEN]>::try_from(body) else {
        return;
    };
    let Some(tail) = take(&mut data, hello_tail_len(version)) else {
        return;
    };
    let Ok(kind) = decode_kind(tail) else {
        return;
    };
    let mut cluster = [0u8; 32];
    cluster.copy_from_slice(&body[..32]);
    let mut to = [0u8; 8];
    to.copy_from_slice(&body[40..48]);
    let (cluster, local) = (ClusterId(cluster), NodeId(u64::from_be_bytes(to)));
    if check_hello_body(body, kind, &cluster, local).is_err() {
        return;
    }
    while let Some(prefix) = take(&mut data, LEN_PREFIX) {
        let Ok(prefix) = <[u8; LEN_PREFIX]>::try_from(prefix) else {
            return;
        };
        let Ok(len) = check_len(prefix, MAX_FRAME) else {
            return;
        };
        let Some(frame) = take(&mut data, len) else {
            return;
        };
        match kind {
            ConnKind::Messages => {
                let Ok(messages) = decode_batch(frame) else {
                    return;
                };
                for m in &messages {
                    touch(m);
                }
            }
            ConnKind::Snapshot => {
                let Ok((tag, rest)) = split_tag(frame) else {
                    return;
                };
                if tag == wire::tag::HEADER {
                    let Ok(m) = decode_snapshot_header(rest) else {
                        return;
                    };
                    touch(&m);
                    if let Some(s) = &m.snapshot {
                        snapshot_data(&s.data, data);
                    }
                }
            }
            ConnKind::Calls => {
                // A listener reads requests; a dialer reads replies.
                let _ = split_call_request(frame);
                let _ = decode_call_reply(local, frame);
            }
        }
    }
}

/// What raft-rs reads of an accepted message.
fn touch(m: &ha_core::eraftpb::Message) {
    let _ = m.get_msg_type();
    for e in &m.entries {
        let _ = e.get_entry_type();
    }
    if let Some(s) = &m.snapshot {
        let _ = s.get_metadata();
    }
}

/// A snapshot descriptor from a peer, and a staged file's bytes read back
/// against it (the receiver checks size and CRC; the installer decodes the
/// pairs).
fn snapshot_data(descriptor: &[u8], file: &[u8]) {
    let Ok(d) = decode_descriptor(descriptor) else {
        return;
    };
    let input = Box::new(Cursor::new(file.to_vec()));
    let Ok(reader) = PairReader::new(input, &d, "fuzz".to_string()) else {
        return;
    };
    for pair in reader.take(10_000) {
        if pair.is_err() {
            return;
        }
    }
}

/// Bytes of a KV command, query or reply, and of a forwarded lease call,
/// through every decoder of the KV (a command is applied to a real MVCC
/// machine over a memory store).
pub fn kv_bytes(data: &[u8]) {
    use ha_core::{ApplyContext, RequestId, StateMachine, WriteBatch};
    use ha_storage::MemStateStore;
    use ha_storage::kv::{HeaderStamp, MvccMachine, decode_error_bytes, decode_reply};

    let stamp = HeaderStamp {
        cluster_id: ClusterId([0; 32]),
        member_id: NodeId(1),
        raft_term: 1,
    };
    let _ = decode_reply(data, &stamp);
    let _ = decode_error_bytes(data);
    crate::kv::fuzz_lease_call(data);
    let store = std::sync::Arc::new(MemStateStore::new());
    let Ok(mut machine) = MvccMachine::open(store) else {
        return;
    };
    let ctx = ApplyContext {
        index: 1,
        term: 1,
        request: RequestId {
            member: NodeId(1),
            incarnation: 1,
            seq: 1,
        },
    };
    let mut batch = WriteBatch::new();
    let reply = machine.apply(&ctx, data, &mut batch);
    let _ = decode_reply(&reply, &stamp);
    machine.on_committed(1);
    let answer = machine.query(data);
    let _ = decode_reply(&answer, &stamp);
}
