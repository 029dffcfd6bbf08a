//! Between etcd's messages and ha's KV vocabulary. Requests are checked
//! here; anything ha cannot express is refused with `InvalidArgument`
//! rather than silently changed.

use ha_core::{
    Compare, CompareOp, CompareTarget, DeleteRequest, DeleteResponse, KeyRange, KeyValue, LeaseId,
    PutRequest, PutResponse, RangeRequest, RangeResponse, ResponseHeader, SortOrder, SortTarget,
    TxnOp, TxnOpResponse, TxnRequest, TxnResponse, prefix_end,
};
use tonic::Status;

use crate::pb::etcdserverpb as pb;
use crate::pb::mvccpb;

/// etcd's `(key, range_end)` pair as a [`KeyRange`]: an empty end is the
/// key alone, `"\0"` every key from `key` on, otherwise `[key, end)`.
pub(crate) fn key_range(key: Vec<u8>, range_end: Vec<u8>) -> KeyRange {
    if range_end.is_empty() {
        KeyRange::Key(key)
    } else if range_end == [0] {
        KeyRange::From(key)
    } else if prefix_end(&key).as_deref() == Some(range_end.as_slice()) {
        KeyRange::Prefix(key)
    } else {
        KeyRange::Range {
            start: key,
            end: range_end,
        }
    }
}

pub(crate) fn header(h: &ResponseHeader) -> pb::ResponseHeader {
    pb::ResponseHeader {
        cluster_id: h.cluster_id.short(),
        member_id: h.member_id.0,
        revision: h.revision,
        raft_term: h.raft_term,
    }
}

pub(crate) fn kv(kv: KeyValue) -> mvccpb::KeyValue {
    mvccpb::KeyValue {
        key: kv.key,
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
        version: kv.version,
        value: kv.value,
        lease: kv.lease.0,
    }
}

/// etcd's revision filters, which ha's range does not have: applied here,
/// after reading every matching key.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct RevisionFilter {
    min_mod: i64,
    max_mod: i64,
    min_create: i64,
    max_create: i64,
}

impl RevisionFilter {
    pub(crate) fn is_active(&self) -> bool {
        self.min_mod != 0 || self.max_mod != 0 || self.min_create != 0 || self.max_create != 0
    }

    pub(crate) fn keeps(&self, kv: &KeyValue) -> bool {
        (self.min_mod == 0 || kv.mod_revision >= self.min_mod)
            && (self.max_mod == 0 || kv.mod_revision <= self.max_mod)
            && (self.min_create == 0 || kv.create_revision >= self.min_create)
            && (self.max_create == 0 || kv.create_revision <= self.max_create)
    }
}

/// A range request, the limit the caller asked for, and the revision
/// filters to apply after reading (when active, the read itself has no
/// limit and does not count only; the caller truncates).
pub(crate) struct Range {
    pub(crate) request: RangeRequest,
    pub(crate) limit: u64,
    pub(crate) count_only: bool,
    pub(crate) filter: RevisionFilter,
    pub(crate) serializable: bool,
}

pub(crate) fn range_request(r: pb::RangeRequest) -> Result<Range, Status> {
    if r.limit < 0 {
        return Err(Status::invalid_argument("etcdserver: negative limit"));
    }
    let sort_order = match pb::range_request::SortOrder::try_from(r.sort_order) {
        Ok(pb::range_request::SortOrder::None) => SortOrder::None,
        Ok(pb::range_request::SortOrder::Ascend) => SortOrder::Ascend,
        Ok(pb::range_request::SortOrder::Descend) => SortOrder::Descend,
        Err(_) => return Err(Status::invalid_argument("etcdserver: invalid sort option")),
    };
    let sort_target = match pb::range_request::SortTarget::try_from(r.sort_target) {
        Ok(pb::range_request::SortTarget::Key) => SortTarget::Key,
        Ok(pb::range_request::SortTarget::Version) => SortTarget::Version,
        Ok(pb::range_request::SortTarget::Create) => SortTarget::CreateRevision,
        Ok(pb::range_request::SortTarget::Mod) => SortTarget::ModRevision,
        Ok(pb::range_request::SortTarget::Value) => SortTarget::Value,
        Err(_) => return Err(Status::invalid_argument("etcdserver: invalid sort option")),
    };
    let filter = RevisionFilter {
        min_mod: r.min_mod_revision,
        max_mod: r.max_mod_revision,
        min_create: r.min_create_revision,
        max_create: r.max_create_revision,
    };
    let limit = r.limit as u64;
    let mut request = RangeRequest::new(key_range(r.key, r.range_end));
    request.revision = r.revision;
    request.keys_only = r.keys_only;
    request.sort_order = sort_order;
    request.sort_target = sort_target;
    if filter.is_active() {
        // Filter every match, then count and truncate as etcd does.
        request.limit = 0;
        request.count_only = false;
    } else {
        request.limit = limit;
        request.count_only = r.count_only;
    }
    Ok(Range {
        request,
        limit,
        count_only: r.count_only,
        filter,
        serializable: r.serializable,
    })
}

/// The answer to `range`, its revision filters applied.
pub(crate) fn range_response(range: &Range, mut resp: RangeResponse) -> pb::RangeResponse {
    if range.filter.is_active() {
        resp.kvs.retain(|kv| range.filter.keeps(kv));
        // etcd's count is of the keys in range before filtering.
        let more = range.limit > 0 && resp.kvs.len() as u64 > range.limit;
        if range.limit > 0 {
            resp.kvs.truncate(range.limit as usize);
        }
        if range.count_only {
            resp.kvs.clear();
        }
        resp.more = more;
    }
    pb::RangeResponse {
        header: Some(header(&resp.header)),
        kvs: resp.kvs.into_iter().map(kv).collect(),
        more: resp.more,
        count: resp.count as i64,
    }
}

pub(crate) fn put_request(r: pb::PutRequest) -> PutRequest {
    PutRequest {
        key: r.key,
        value: r.value,
        lease: LeaseId(r.lease),
        prev_kv: r.prev_kv,
        ignore_value: r.ignore_value,
        ignore_lease: r.ignore_lease,
    }
}

pub(crate) fn put_response(r: PutResponse) -> pb::PutResponse {
    pb::PutResponse {
        header: Some(header(&r.header)),
        prev_kv: r.prev_kv.map(kv),
    }
}

pub(crate) fn delete_request(r: pb::DeleteRangeRequest) -> DeleteRequest {
    DeleteRequest {
        range: key_range(r.key, r.range_end),
        prev_kv: r.prev_kv,
    }
}

pub(crate) fn delete_response(r: DeleteResponse) -> pb::DeleteRangeResponse {
    pb::DeleteRangeResponse {
        header: Some(header(&r.header)),
        deleted: r.deleted as i64,
        prev_kvs: r.prev_kvs.into_iter().map(kv).collect(),
    }
}

fn compare(c: pb::Compare) -> Result<Compare, Status> {
    use pb::compare::{CompareResult, CompareTarget as T, TargetUnion as U};
    let op = match CompareResult::try_from(c.result) {
        Ok(CompareResult::Equal) => CompareOp::Equal,
        Ok(CompareResult::NotEqual) => CompareOp::NotEqual,
        Ok(CompareResult::Less) => CompareOp::Less,
        Ok(CompareResult::Greater) => CompareOp::Greater,
        Err(_) => {
            return Err(Status::invalid_argument(
                "etcdserver: invalid compare result",
            ));
        }
    };
    let target = T::try_from(c.target)
        .map_err(|_| Status::invalid_argument("etcdserver: invalid compare target"))?;
    // etcd reads the value of the union whatever its variant; a missing
    // one is the zero value of the target.
    let target = match (target, c.target_union) {
        (T::Version, Some(U::Version(v))) => CompareTarget::Version(v),
        (T::Version, None) => CompareTarget::Version(0),
        (T::Create, Some(U::CreateRevision(v))) => CompareTarget::CreateRevision(v),
        (T::Create, None) => CompareTarget::CreateRevision(0),
        (T::Mod, Some(U::ModRevision(v))) => CompareTarget::ModRevision(v),
        (T::Mod, None) => CompareTarget::ModRevision(0),
        (T::Value, Some(U::Value(v))) => CompareTarget::Value(v),
        (T::Value, None) => CompareTarget::Value(Vec::new()),
        (T::Lease, Some(U::Lease(v))) => CompareTarget::Lease(LeaseId(v)),
        (T::Lease, None) => CompareTarget::Lease(LeaseId::NONE),
        _ => {
            return Err(Status::invalid_argument(
                "etcdserver: compare target and value do not match",
            ));
        }
    };
    Ok(Compare {
        range: key_range(c.key, c.range_end),
        op,
        target,
    })
}

fn request_op(op: pb::RequestOp) -> Result<TxnOp, Status> {
    use pb::request_op::Request;
    match op.request {
        Some(Request::RequestRange(r)) => {
            let range = range_request(r)?;
            if range.filter.is_active() {
                return Err(Status::invalid_argument(
                    "ha: min/max mod/create revision filters are not supported inside a txn",
                ));
            }
            Ok(TxnOp::Range(range.request))
        }
        Some(Request::RequestPut(r)) => Ok(TxnOp::Put(put_request(r))),
        Some(Request::RequestDeleteRange(r)) => Ok(TxnOp::Delete(delete_request(r))),
        Some(Request::RequestTxn(t)) => Ok(TxnOp::Txn(txn_request(t)?)),
        None => Err(Status::invalid_argument("etcdserver: empty request op")),
    }
}

pub(crate) fn txn_request(t: pb::TxnRequest) -> Result<TxnRequest, Status> {
    Ok(TxnRequest {
        compare: t
            .compare
            .into_iter()
            .map(compare)
            .collect::<Result<_, _>>()?,
        success: t
            .success
            .into_iter()
            .map(request_op)
            .collect::<Result<_, _>>()?,
        failure: t
            .failure
            .into_iter()
            .map(request_op)
            .collect::<Result<_, _>>()?,
    })
}

/// True when the transaction only reads and every read asks to be
/// serializable (etcd then serves it without a quorum round).
pub(crate) fn txn_is_serializable(t: &pb::TxnRequest) -> bool {
    use pb::request_op::Request;
    fn op_ok(op: &pb::RequestOp) -> bool {
        match &op.request {
            Some(Request::RequestRange(r)) => r.serializable,
            Some(Request::RequestTxn(t)) => txn_is_serializable(t),
            _ => false,
        }
    }
    t.success.iter().chain(&t.failure).all(op_ok)
}

pub(crate) fn txn_response(t: TxnResponse) -> pb::TxnResponse {
    use pb::response_op::Response;
    pb::TxnResponse {
        header: Some(header(&t.header)),
        succeeded: t.succeeded,
        responses: t
            .responses
            .into_iter()
            .map(|r| pb::ResponseOp {
                response: Some(match r {
                    TxnOpResponse::Range(r) => Response::ResponseRange(pb::RangeResponse {
                        header: Some(header(&r.header)),
                        kvs: r.kvs.into_iter().map(kv).collect(),
                        more: r.more,
                        count: r.count as i64,
                    }),
                    TxnOpResponse::Put(r) => Response::ResponsePut(put_response(r)),
                    TxnOpResponse::Delete(r) => Response::ResponseDeleteRange(delete_response(r)),
                    TxnOpResponse::Txn(r) => Response::ResponseTxn(txn_response(r)),
                }),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etcd_ranges_become_ha_ranges() {
        assert_eq!(key_range(b"a".to_vec(), vec![]), KeyRange::key("a"));
        assert_eq!(
            key_range(b"a".to_vec(), vec![0]),
            KeyRange::From(b"a".to_vec())
        );
        assert_eq!(
            key_range(b"a/".to_vec(), b"a0".to_vec()),
            KeyRange::prefix("a/")
        );
        assert_eq!(
            key_range(b"a".to_vec(), b"c".to_vec()),
            KeyRange::range("a", "c")
        );
    }

    #[test]
    fn revision_filters_keep_only_what_they_name() {
        let f = RevisionFilter {
            min_mod: 3,
            max_create: 4,
            ..RevisionFilter::default()
        };
        let kv = |c, m| KeyValue {
            create_revision: c,
            mod_revision: m,
            ..KeyValue::default()
        };
        assert!(f.keeps(&kv(4, 3)));
        assert!(!f.keeps(&kv(4, 2)));
        assert!(!f.keeps(&kv(5, 9)));
    }
}
