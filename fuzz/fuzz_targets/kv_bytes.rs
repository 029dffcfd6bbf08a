//! Bytes decoded as a KV command (applied to a real MVCC machine), query,
//! reply, error, or forwarded lease call.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    ha_raft::fuzzing::kv_bytes(data);
});
