//! A watch over server-sent events (`POST /v1/watch`) as a
//! [`WatchStream`] with the in-process semantics: responses in order, and
//! one final error — [`Error::WatchCancelled`] with the revision to resume
//! from (also when the member dies and the connection just breaks), or
//! [`Error::Compacted`].

use std::time::Duration;

use futures::StreamExt;
use ha_core::{
    Error, KeyRange, KvOptions, RangeRequest, Result, WatchCancelReason, WatchControl, WatchId,
    WatchRequest, WatchResponse, WatchStream,
};
use serde_json::Value;
use tokio::time::Instant;

use crate::client::{ENC, Kind, RemoteKv};
use crate::sse::SseReader;
use crate::wire::{RangeBody, RangeJson, WatchBody, WatchCreatedJson, WatchJson, WireError};

/// Opens a watch on the member the client prefers, moving on to the next
/// while a member is unreachable or stopping, within the client's default
/// deadline.
pub(crate) async fn open(kv: &RemoteKv, mut request: WatchRequest) -> Result<WatchStream> {
    let total = kv.timeout();
    let deadline = Instant::now() + total;
    if request.start_revision == 0 {
        // "From the member's next revision" needs that revision here, so
        // that a broken connection can name where to resume: read it from
        // the member that will serve the watch (the one that answers).
        let probe = RangeRequest {
            count_only: true,
            ..RangeRequest::new(KeyRange::key(vec![0u8]))
        };
        let body = RangeBody::new(ENC, &probe, ha_core::Consistency::Serializable)
            .map_err(|e| e.into_error(None))?;
        let r: RangeJson = kv
            .call(
                "/v1/kv/range",
                Some(&body),
                Kind::Read,
                &KvOptions::serializable().with_timeout(total),
            )
            .await?;
        request.start_revision = r.header.revision + 1;
    }
    let body = serde_json::to_vec(&WatchBody::new(ENC, &request).map_err(|e| e.into_error(None))?)
        .map_err(|e| {
            WireError::bad_request(format!("cannot encode the watch: {e}")).into_error(None)
        })?;
    let n = kv.len();
    let mut i = kv.preferred();
    let mut tried = 0usize;
    let mut last: Option<Error> = None;
    loop {
        let now = Instant::now();
        if now >= deadline {
            return Err(last.unwrap_or(Error::Timeout { after: total }));
        }
        let remaining = deadline - now;
        match attempt(kv, i, &body, remaining, request.start_revision).await {
            Attempt::Open(stream) => return Ok(stream),
            Attempt::Fail(e) => {
                if matches!(e, Error::Timeout { .. }) {
                    kv.avoid(i);
                }
                return Err(e);
            }
            Attempt::Elsewhere(e) => {
                if e.is_some() {
                    last = e;
                }
            }
        }
        tried += 1;
        i = (i + 1) % n;
        if tried % n == 0 {
            let pause = RemoteKv::backoff(tried / n - 1);
            tokio::time::sleep_until((Instant::now() + pause).min(deadline)).await;
        }
    }
}

enum Attempt {
    Open(WatchStream),
    Elsewhere(Option<Error>),
    Fail(Error),
}

async fn attempt(
    kv: &RemoteKv,
    i: usize,
    body: &[u8],
    remaining: Duration,
    start_revision: i64,
) -> Attempt {
    let timeout = Error::Timeout {
        after: kv.timeout(),
    };
    let url = format!(
        "{}/v1/watch?timeout_ms={}",
        kv.base(i),
        remaining.as_millis().max(1)
    );
    // No request timeout: it would cut the stream. Only opening it (up to
    // the `created` event) is bounded.
    let send = kv
        .inner
        .http
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body.to_vec())
        .send();
    let response = match tokio::time::timeout(remaining, send).await {
        Err(_) => return Attempt::Fail(timeout),
        // Opening a watch changes nothing: any failure may go elsewhere.
        Ok(Err(_)) => return Attempt::Elsewhere(None),
        Ok(Ok(r)) => r,
    };
    let status = response.status();
    if !status.is_success() {
        let bytes = match tokio::time::timeout(remaining, response.bytes()).await {
            Err(_) => return Attempt::Fail(timeout),
            Ok(Err(_)) => return Attempt::Elsewhere(None),
            Ok(Ok(b)) => b,
        };
        let e = WireError::from_body(status.as_u16(), &bytes).into_error(kv.member_of(i));
        return match e {
            Error::Shutdown
            | Error::NotLeader { .. }
            | Error::ProposalDropped { .. }
            | Error::Removed { .. }
            | Error::Fatal { .. }
            | Error::CallFailed { .. } => Attempt::Elsewhere(Some(e)),
            e => Attempt::Fail(e),
        };
    }
    let mut reader = SseReader::new(
        response
            .bytes_stream()
            .map(|chunk| chunk.map(|b| b.to_vec()).map_err(|_| ())),
    );
    let created = match tokio::time::timeout(remaining, reader.next()).await {
        Err(_) => return Attempt::Fail(timeout),
        Ok(Some(ev)) if ev.name == "created" => serde_json::from_str::<WatchCreatedJson>(&ev.data),
        Ok(_) => return Attempt::Elsewhere(None),
    };
    let Ok(created) = created else {
        return Attempt::Elsewhere(None);
    };
    kv.answered(i, created.member_id);
    let state = State {
        reader,
        delivered: start_revision - 1,
        done: false,
    };
    let responses = futures::stream::unfold(state, |mut st| async move {
        if st.done {
            return None;
        }
        let item = st.next().await;
        Some((item, st))
    });
    Attempt::Open(WatchStream::new(
        WatchId(created.watch_id),
        Box::pin(responses),
        Box::new(Connection),
    ))
}

struct State {
    reader: SseReader,
    /// Every matching event at or below this revision was delivered.
    delivered: i64,
    done: bool,
}

impl State {
    fn cancelled(&mut self) -> Error {
        self.done = true;
        Error::WatchCancelled {
            resume_revision: self.delivered + 1,
            reason: WatchCancelReason::MemberStopped,
        }
    }

    async fn next(&mut self) -> Result<WatchResponse> {
        loop {
            let Some(ev) = self.reader.next().await else {
                // The connection broke (the member died or stopped): every
                // event up to the last bookmark arrived.
                return Err(self.cancelled());
            };
            match ev.name.as_str() {
                "watch" => {
                    let response = serde_json::from_str::<WatchJson>(&ev.data)
                        .ok()
                        .and_then(|j| j.to_response(ENC).ok());
                    let Some(response) = response else {
                        return Err(self.cancelled());
                    };
                    self.delivered = self.delivered.max(response.header.revision);
                    return Ok(response);
                }
                "cancelled" => {
                    let wire = WireError::from_body(503, ev.data.as_bytes());
                    let resume = wire
                        .details
                        .get("resume_revision")
                        .and_then(Value::as_i64)
                        .unwrap_or(self.delivered + 1);
                    let code = wire.code.clone();
                    let e = wire.into_error(None);
                    self.done = true;
                    return Err(match (code.as_str(), e) {
                        ("compacted", e) => e,
                        (_, Error::WatchCancelled { reason, .. }) => Error::WatchCancelled {
                            resume_revision: resume,
                            reason,
                        },
                        // Any other end (the member could not encode an
                        // event, ...) still says where to resume.
                        _ => Error::WatchCancelled {
                            resume_revision: resume,
                            reason: WatchCancelReason::MemberStopped,
                        },
                    });
                }
                _ => {}
            }
        }
    }
}

/// The watch's connection: dropping the stream drops the response body,
/// which closes the connection, and the member cancels the watch.
struct Connection;

impl WatchControl for Connection {
    /// The HTTP API has no route to ask for a progress notification; a
    /// remote watch gets them with `progress_notify` only.
    fn request_progress(&self) {}

    fn cancel(&self) {}
}
