//! What every Warden gRPC server adds at its edge: refusals that tonic
//! writes itself, before any handler runs, get a code and a reason like
//! every other refusal.
//!
//! Tonic answers a request whose length prefix exceeds the method's
//! decoding limit with `OUT_OF_RANGE`, and a request without a message with
//! `INTERNAL`, neither carrying an `ErrorInfo`; [`ReasonedRefusalsLayer`]
//! rewrites them to `RESOURCE_EXHAUSTED` / `REQUEST_TOO_LARGE` and
//! `INVALID_ARGUMENT` / `REQUEST_MALFORMED`. (Undecodable messages are
//! refused by the [codec](crate::codec) itself.) Only the statuses tonic
//! writes are touched: they are recognised by code and by tonic's message,
//! and no handler of ours answers with those codes.

use tonic::{Code, Status};

use crate::refusal::{Reason, status};

/// Tonic's message for a request over the decoding limit.
const TOO_LARGE: &str = "Error, decoded message length too large";
/// Tonic's message for a unary request without a message.
const MISSING: &str = "Missing request message.";

/// The reasoned status for one tonic wrote without a reason, if it is one
/// of those.
fn reasoned(s: &Status) -> Option<Status> {
    match s.code() {
        Code::OutOfRange if s.message().starts_with(TOO_LARGE) => Some(status(
            Code::ResourceExhausted,
            Reason::RequestTooLarge,
            format!(
                "request refused: {}; send a smaller request",
                s.message().trim_start_matches("Error, ")
            ),
        )),
        Code::Internal if s.message() == MISSING => Some(status(
            Code::InvalidArgument,
            Reason::RequestMalformed,
            "the request carries no message",
        )),
        _ => None,
    }
}

/// Rewrites a trailers-only error response that tonic wrote itself.
pub fn rewrite<B: Default>(resp: http::Response<B>) -> http::Response<B> {
    let Some(s) = Status::from_header_map(resp.headers()) else {
        return resp;
    };
    match reasoned(&s) {
        Some(better) => {
            let mut out = better.into_http::<B>();
            // Keep what the server set beside the status (content type).
            for (k, v) in resp.headers() {
                if !k.as_str().starts_with("grpc-") {
                    out.headers_mut().insert(k.clone(), v.clone());
                }
            }
            out
        }
        None => resp,
    }
}

/// The layer: `Server::builder().layer(ReasonedRefusalsLayer::default())`.
pub type ReasonedRefusalsLayer<B> =
    tower::util::MapResponseLayer<fn(http::Response<B>) -> http::Response<B>>;

/// Builds the layer for response bodies of type `B` (tonic's `Body`).
pub fn reasoned_refusals<B: Default>() -> ReasonedRefusalsLayer<B> {
    tower::util::MapResponseLayer::new(rewrite::<B> as fn(_) -> _)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_tonics_own_refusals_are_rewritten() {
        let big =
            Status::out_of_range(format!("{TOO_LARGE}: found 9 bytes, the limit is: 4 bytes"));
        let s = reasoned(&big).expect("rewritten");
        assert_eq!(s.code(), Code::ResourceExhausted);
        assert_eq!(
            crate::refusal::reason_of(&s).as_deref(),
            Some("REQUEST_TOO_LARGE")
        );
        assert!(s.message().contains("found 9 bytes"), "{}", s.message());
        let none = Status::internal(MISSING);
        assert_eq!(
            reasoned(&none).map(|s| s.code()),
            Some(Code::InvalidArgument)
        );
        for untouched in [
            Status::out_of_range("a handler's own range error"),
            Status::internal("something else"),
            Status::ok(""),
        ] {
            assert!(reasoned(&untouched).is_none(), "{untouched:?}");
        }
        let resp = big.into_http::<String>();
        let out = rewrite(resp);
        let s = Status::from_header_map(out.headers()).unwrap();
        assert_eq!(s.code(), Code::ResourceExhausted);
        assert!(crate::refusal::reason_of(&s).is_some());
    }
}
