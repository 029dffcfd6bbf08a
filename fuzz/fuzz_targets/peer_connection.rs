//! Bytes a peer sends on a TCP connection to a member: hello, then frames
//! of the announced kind (messages, snapshot stream, calls).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    ha_raft::fuzzing::inbound_connection(data);
});
