//! Errors as HTTP answers. The codes, statuses and fields are
//! [`ha_client::wire::WireError`]'s — one definition that the server and
//! the remote client share; this file only makes them axum responses.
//!
//! ```json
//! {"error":"not_leader","message":"...","not_applied":true,"leader_hint":2}
//! ```
//!
//! `not_applied` is `Error::is_not_applied()`: true when the request
//! certainly took no effect, so retrying cannot apply it twice.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use ha_client::wire::WireError;
use ha_core::Error;
use serde_json::Value;

pub use ha_client::wire::cancel_reason;

/// An error answer.
#[derive(Debug)]
pub struct ApiError(pub WireError);

impl ApiError {
    /// A request body that is not the JSON the route takes.
    pub fn bad_json(reason: impl Into<String>) -> Self {
        ApiError(WireError::bad_json(reason))
    }

    /// A request whose fields make no sense together, or a bad query.
    pub fn bad_request(reason: impl Into<String>) -> Self {
        ApiError(WireError::bad_request(reason))
    }

    /// A body over the size limit.
    pub fn body_too_large(max: usize) -> Self {
        ApiError(WireError::body_too_large(max))
    }

    /// The whole request ran past its deadline here (not in the library):
    /// a write may or may not have been applied.
    pub fn deadline_exceeded(after: std::time::Duration) -> Self {
        ApiError(WireError::deadline_exceeded(after))
    }

    /// A route that does not exist.
    pub fn not_found() -> Self {
        ApiError(WireError::not_found())
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        StatusCode::from_u16(self.0.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    /// The stable code.
    pub fn code(&self) -> &str {
        &self.0.code
    }

    /// The JSON body.
    pub fn body(&self) -> Value {
        self.0.body()
    }
}

impl From<WireError> for ApiError {
    fn from(e: WireError) -> Self {
        ApiError(e)
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        ApiError(WireError::from(e))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status(), Json(self.body())).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ha_core::{KvLimit, NodeId, UnknownCause};
    use serde_json::json;

    #[test]
    fn errors_keep_their_code_status_and_fields() {
        let e = ApiError::from(Error::NotLeader {
            leader_hint: Some(NodeId(2)),
        });
        assert_eq!(
            (e.status(), e.code()),
            (StatusCode::SERVICE_UNAVAILABLE, "not_leader")
        );
        assert_eq!(e.body()["leader_hint"], json!(2));
        assert_eq!(e.body()["not_applied"], json!(true));
        let e = ApiError::from(Error::Compacted {
            compact_revision: 7,
        });
        assert_eq!((e.status(), e.code()), (StatusCode::GONE, "compacted"));
        assert_eq!(e.body()["compact_revision"], json!(7));
        let e = ApiError::from(Error::OutcomeUnknown {
            cause: UnknownCause::DeadlineExceeded,
        });
        assert_eq!(
            e.body()["not_applied"],
            json!(false),
            "a maybe-applied write must say so"
        );
        let e = ApiError::from(Error::LimitExceeded {
            limit: KvLimit::ValueSize,
            size: 10,
            max: 5,
        });
        assert_eq!(
            (e.status(), e.body()["limit"].clone()),
            (StatusCode::PAYLOAD_TOO_LARGE, json!("value_size"))
        );
        assert_eq!(
            ApiError::from(Error::LeaseNotFound { lease: 3 }).status(),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            ApiError::from(Error::Timeout {
                after: std::time::Duration::from_secs(1)
            })
            .status(),
            StatusCode::GATEWAY_TIMEOUT
        );
    }
}
