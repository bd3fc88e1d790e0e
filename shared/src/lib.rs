//! Warden's shared ground: the wire contract (generated code is included here
//! and nowhere else), SPIFFE identities, the scope grammar, the session token
//! format and the typed refusals every service returns.

pub mod a2a;
pub mod agent;
pub mod audit;
pub mod codec;
pub mod edge;
pub mod guard;
pub mod jcs;
pub mod merkle;
pub mod oidc;
pub mod policy;
pub mod refusal;
pub mod scope;
pub mod spiffe;
pub mod svid;
pub mod token;

pub mod proto {
    //! Generated protobuf and gRPC code for package `warden.v1`.
    #![allow(
        missing_docs,
        unreachable_pub,
        clippy::all,
        clippy::pedantic,
        missing_debug_implementations
    )]
    pub mod v1 {
        tonic::include_proto!("warden.v1");

        impl StreamResponse {
            /// Whether the push carries no part (only its version).
            pub fn carries_nothing(&self) -> bool {
                self.standing.is_none()
                    && self.revoked_sessions.is_none()
                    && self.keys.is_none()
                    && self.policy.is_none()
                    && self.blocked_agents.is_none()
                    && self.pair_keys.is_none()
                    && self.approvals.is_none()
            }
        }
    }
}

/// Metadata header every agent-facing request must carry (compare SPIFFE's
/// `workload.spiffe.io`): a browser or a tricked HTTP fetch cannot set it on
/// a gRPC call, so the sidecar's local API is unreachable from them.
pub const AGENT_HEADER: &str = "warden-agent";
/// The only accepted value of [`AGENT_HEADER`].
pub const AGENT_HEADER_VALUE: &str = "true";
