//! Stage 7: the upstream call. Secrets are resolved now, injected by the
//! sidecar, and handed to output inspection so that they are removed from
//! whatever comes back; the agent never holds them. Each upstream has a
//! timeout, a response size cap and a circuit breaker.

pub mod builtin;
pub mod http;
pub mod mcp;
pub mod secrets;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use warden_shared::policy::{CircuitBreaker, Policy};
use warden_shared::refusal::Reason;

use super::catalog::ToolEntry;
use super::{Refusal, Stage};
use secrets::Secret;

/// Upstream timeout unless the tool sets `limits.timeout_ms`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Response cap unless the upstream sets `max_response_bytes`.
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 1024 * 1024;

/// What an upstream returned.
#[derive(Debug)]
pub struct Output {
    /// The body.
    pub content: Vec<u8>,
    /// Its media type.
    pub content_type: String,
    /// The HTTP status (0 for builtins).
    pub status: u16,
    /// The secrets injected into the call (for output inspection).
    pub secrets: Vec<Secret>,
}

fn refuse(reason: Reason, message: impl Into<String>) -> Refusal {
    Refusal::at(Stage::Execute, reason, message)
}

/// Upstream calls in flight at once, across tools (each may buffer up to
/// its response cap).
pub const MAX_IN_FLIGHT: usize = 256;

/// Runs upstream calls.
#[derive(Debug)]
pub struct Executor {
    clients: http::Clients,
    /// Circuit breakers by tool.
    pub breakers: crate::infra::breaker::Breakers,
    in_flight: tokio::sync::Semaphore,
    /// The MCP servers in use.
    pub mcp: mcp::Upstreams,
}

impl Default for Executor {
    fn default() -> Self {
        Self {
            clients: http::Clients::default(),
            breakers: crate::infra::breaker::Breakers::default(),
            in_flight: tokio::sync::Semaphore::new(MAX_IN_FLIGHT),
            mcp: mcp::Upstreams::default(),
        }
    }
}

/// A call the breaker admitted: if it ends without an outcome (the agent
/// went away, or no upstream slot came in time), it is abandoned, so that a
/// half-open probe never leaves the breaker waiting forever, and an agent's
/// own cancellations never open a circuit.
struct Admitted<'a> {
    breakers: &'a crate::infra::breaker::Breakers,
    tool: &'a str,
    done: bool,
}

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.breakers.abandon(self.tool, Instant::now());
        }
    }
}

impl Executor {
    /// The HTTP clients (also the classifier's).
    pub fn clients(&self) -> &http::Clients {
        &self.clients
    }

    /// Calls `tool`'s upstream, as `policy` (the one in force) defines it.
    pub async fn run(
        &self,
        tool: &ToolEntry,
        policy: &Policy,
        args: &serde_json::Value,
        call_id: &str,
        trace_id: &str,
    ) -> Result<Output, Refusal> {
        let name = &tool.spec.name;
        let Some(u) = &tool.spec.upstream else {
            return Err(refuse(
                Reason::UpstreamNotConfigured,
                format!("{name} has no upstream in the policy"),
            ));
        };
        if u.kind == "builtin" {
            return builtin::run(&u.address, args, time::OffsetDateTime::now_utc()).ok_or_else(
                || {
                    refuse(
                        Reason::UpstreamNotConfigured,
                        format!("{name}: unknown builtin"),
                    )
                },
            );
        }
        // Resolved now, not at policy load: a rotated secret is used at once.
        let mut resolved = HashMap::new();
        for s in &tool.spec.secrets {
            let reference = policy
                .document
                .secrets
                .get(s)
                .map(String::as_str)
                .unwrap_or_default();
            match secrets::resolve(reference) {
                Ok(v) => {
                    resolved.insert(s.clone(), v);
                }
                Err(e) => {
                    tracing::error!(tool = %name, secret = %s, error = %e, "secret unavailable");
                    return Err(refuse(
                        Reason::SecretUnavailable,
                        format!("a secret {name} needs is unavailable; see the sidecar log"),
                    ));
                }
            }
        }
        let cfg = u.circuit_breaker.clone().unwrap_or_default();
        if let Err(wait) = self.breakers.admit(name, Instant::now()) {
            let mut d = refuse(
                Reason::UpstreamCircuitOpen,
                format!("the upstream of {name} is failing; its circuit is open"),
            )
            .rule("circuit_breaker");
            d.retry_after_ms = Some(u64::try_from(wait.as_millis()).unwrap_or(u64::MAX));
            return Err(d);
        }
        let mut admitted = Admitted {
            breakers: &self.breakers,
            tool: name,
            done: false,
        };
        let timeout = tool
            .spec
            .limits
            .timeout_ms
            .map_or(DEFAULT_TIMEOUT, |ms| Duration::from_millis(u64::from(ms)));
        // Waiting for a slot counts against the call's timeout too.
        let started = tokio::time::Instant::now();
        let Ok(Ok(_slot)) = tokio::time::timeout(timeout, self.in_flight.acquire()).await else {
            // (Dropping `admitted` abandons the call.)
            return Err(refuse(
                Reason::UpstreamUnavailable,
                format!("too many upstream calls in flight; {name} could not start in time"),
            ));
        };
        let timeout = timeout.saturating_sub(started.elapsed());
        let max_bytes = u
            .max_response_bytes
            .map_or(DEFAULT_MAX_RESPONSE_BYTES, |b| b as usize);
        let result = if u.kind == "mcp" {
            self.mcp
                .call(policy, name, u, args, timeout, max_bytes)
                .await
                .map(|(content, given)| {
                    // The server's own secrets are removed from answers too.
                    for (i, g) in given.into_iter().enumerate() {
                        resolved.insert(format!("\0mcp{i}"), g);
                    }
                    Output {
                        content,
                        content_type: mcp::RESULT_TYPE.to_owned(),
                        status: 200,
                        secrets: Vec::new(),
                    }
                })
        } else {
            http::call(
                &self.clients,
                http::Call {
                    upstream: u,
                    args,
                    secrets: &resolved,
                    call_id,
                    trace_id,
                    timeout,
                    max_bytes,
                },
            )
            .await
            .map_err(mcp::Failure::Transport)
        };
        admitted.done = true;
        self.outcome(name, result, &cfg, resolved)
    }

    fn outcome(
        &self,
        name: &str,
        result: Result<Output, mcp::Failure>,
        cfg: &CircuitBreaker,
        resolved: HashMap<String, Secret>,
    ) -> Result<Output, Refusal> {
        // A 5xx, a timeout or a transport failure counts against the
        // upstream; a 4xx is the caller's error, and an answer too large is
        // a healthy upstream's oddity.
        let healthy = match &result {
            Ok(o) => o.status < 500,
            Err(mcp::Failure::Transport(
                http::Failure::TooLarge(_) | http::Failure::Build(_) | http::Failure::Encoded(_),
            ))
            | Err(
                mcp::Failure::Rejected(_)
                | mcp::Failure::Withdrawn(_)
                | mcp::Failure::NotAllowed(_),
            ) => true,
            Err(_) => false,
        };
        self.breakers.record(name, healthy, cfg, Instant::now());
        match result {
            Ok(mut o) => {
                o.secrets = resolved.into_values().collect();
                Ok(o)
            }
            Err(e) => {
                tracing::warn!(tool = %name, error = %e, "upstream call failed");
                let e = match e {
                    mcp::Failure::Transport(t) => t,
                    mcp::Failure::NotAllowed(why) => {
                        return Err(refuse(Reason::UpstreamNotConfigured, why).rule("mcp_commands"));
                    }
                    mcp::Failure::Withdrawn(why) => {
                        return Err(refuse(Reason::ToolWithdrawn, why).rule("pin"));
                    }
                    mcp::Failure::Rejected(code) => {
                        return Err(refuse(
                            Reason::UpstreamRequestInvalid,
                            format!(
                                "the MCP server of {name} refused the call (JSON-RPC error {code})"
                            ),
                        ));
                    }
                    mcp::Failure::Protocol(_) | mcp::Failure::SessionExpired => {
                        return Err(refuse(
                            Reason::UpstreamUnavailable,
                            format!(
                                "the MCP server of {name} broke the protocol; see the sidecar log"
                            ),
                        ));
                    }
                };
                Err(match e {
                    http::Failure::Timeout(t) => refuse(
                        Reason::UpstreamTimeout,
                        format!(
                            "the upstream of {name} did not answer within {} ms",
                            t.as_millis()
                        ),
                    )
                    .rule("timeout_ms"),
                    http::Failure::TooLarge(n) => refuse(
                        Reason::UpstreamResponseTooLarge,
                        format!("the upstream of {name} answered with more than {n} bytes"),
                    )
                    .rule("max_response_bytes"),
                    http::Failure::Build(_) => refuse(
                        Reason::UpstreamRequestInvalid,
                        format!(
                            "the request to the upstream of {name} could not be built; see the sidecar log"
                        ),
                    ),
                    http::Failure::Encoded(_) => refuse(
                        Reason::UpstreamUnavailable,
                        format!(
                            "the upstream of {name} answered compressed; only uncompressed answers are inspected and accepted"
                        ),
                    ),
                    http::Failure::Unavailable(_) => refuse(
                        Reason::UpstreamUnavailable,
                        format!("the upstream of {name} is unavailable"),
                    ),
                })
            }
        }
    }
}
