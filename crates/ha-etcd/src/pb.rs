//! The etcd v3 messages and service traits, generated at build time from
//! `proto/` (see build.rs).
#![allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]

/// `mvccpb`: keys, values and events.
pub mod mvccpb {
    tonic::include_proto!("mvccpb");
}

/// `etcdserverpb`: the KV, Watch, Lease, Cluster and Maintenance services.
pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
}

/// `v3lockpb`: the lock service.
pub mod v3lockpb {
    tonic::include_proto!("v3lockpb");
}

/// `v3electionpb`: the election service.
pub mod v3electionpb {
    tonic::include_proto!("v3electionpb");
}
