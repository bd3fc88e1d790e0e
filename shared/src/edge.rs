//! What every Warden gRPC server adds at its edge: refusals that tonic
//! writes itself, before any handler runs, get a code and a reason like
//! every other refusal.
//!
//! Tonic answers a request whose length prefix exceeds the method's
//! decoding limit with `OUT_OF_RANGE`, and a request without a message, or
//! whose framing is truncated or bad, with `INTERNAL`, none carrying an
//! `ErrorInfo`; [`ReasonedRefusalsLayer`] rewrites them to
//! `RESOURCE_EXHAUSTED` / `REQUEST_TOO_LARGE` and `INVALID_ARGUMENT` /
//! `REQUEST_MALFORMED`; a compressed-flag without `grpc-encoding`, and an
//! unsupported encoding, keep the codes the gRPC specification requires,
//! `INTERNAL` and `UNIMPLEMENTED`, with the reasons `COMPRESSION_UNNAMED`
//! and `COMPRESSION_UNSUPPORTED`. (Undecodable messages are
//! refused by the [codec](crate::codec) itself.) Only the statuses tonic
//! writes are touched: they are recognised by code and by tonic's message,
//! and no handler of ours answers with those codes.

use tonic::{Code, Status};

use crate::refusal::{Reason, status};

/// Tonic's message for a request over the decoding limit.
const TOO_LARGE: &str = "Error, decoded message length too large";
/// Tonic's message for a unary request without a message.
const MISSING: &str = "Missing request message.";
/// Tonic's message for a body that ends inside a message.
const TRUNCATED: &str = "Unexpected EOF decoding stream.";
/// Tonic's message for a compression flag other than 0 or 1.
const BAD_FLAG: &str = "protocol error: received message with invalid compression flag";
/// Tonic's message for a compressed message without `grpc-encoding`.
const FLAG_WITHOUT_ENCODING: &str = "protocol error: received message with compressed-flag";
/// Tonic's message for a `grpc-encoding` it does not support.
const COMPRESSED: &str = "Content is compressed with";

/// The reasoned status for one tonic wrote without a reason, if it is one
/// of those.
fn reasoned(s: &Status) -> Option<Status> {
    match s.code() {
        Code::OutOfRange if s.message().starts_with(TOO_LARGE) => Some(status(
            Reason::RequestTooLarge,
            format!(
                "request refused: {}; send a smaller request",
                s.message().trim_start_matches("Error, ")
            ),
        )),
        Code::Internal if s.message() == MISSING => Some(status(
            Reason::RequestMalformed,
            "the request carries no message",
        )),
        Code::Internal if s.message() == TRUNCATED || s.message().starts_with(BAD_FLAG) => {
            Some(status(
                Reason::RequestMalformed,
                "the request's gRPC framing is malformed (a truncated message or an invalid flag)",
            ))
        }
        // The gRPC specification requires INTERNAL and UNIMPLEMENTED here:
        // the code stays, the reason is added.
        Code::Internal if s.message().starts_with(FLAG_WITHOUT_ENCODING) => Some(status(
            Reason::CompressionUnnamed,
            "the message is flagged compressed but the request names no grpc-encoding",
        )),
        Code::Unimplemented if s.message().starts_with(COMPRESSED) => Some(status(
            Reason::CompressionUnsupported,
            "compressed requests are not accepted; send them uncompressed",
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
        for (malformed, code, reason) in [
            (
                Status::internal(MISSING),
                Code::InvalidArgument,
                "REQUEST_MALFORMED",
            ),
            (
                Status::internal(TRUNCATED),
                Code::InvalidArgument,
                "REQUEST_MALFORMED",
            ),
            (
                Status::internal(format!(
                    "{BAD_FLAG}: 7 (valid flags are 0 and 1), while sending request"
                )),
                Code::InvalidArgument,
                "REQUEST_MALFORMED",
            ),
            (
                Status::internal(format!(
                    "{FLAG_WITHOUT_ENCODING} but no grpc-encoding was specified"
                )),
                Code::Internal,
                "COMPRESSION_UNNAMED",
            ),
            (
                Status::unimplemented(format!("{COMPRESSED} `gzip` which isn't supported")),
                Code::Unimplemented,
                "COMPRESSION_UNSUPPORTED",
            ),
        ] {
            let s = reasoned(&malformed).expect("rewritten");
            assert_eq!(s.code(), code, "{malformed:?}");
            assert_eq!(crate::refusal::reason_of(&s).as_deref(), Some(reason));
        }
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
