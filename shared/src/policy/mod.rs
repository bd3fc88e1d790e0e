//! Policy documents: the tool catalog, Cedar rules and per-agent overrides,
//! written by admins as YAML, validated offline (`wardenctl policy validate`)
//! and again by the control plane before a version is stored.
//!
//! A document that passes [`Policy::parse`] is internally consistent: tool
//! names are unique, every input schema compiles, every secret a tool uses
//! is declared, every override names real tools, and the Cedar rules parse
//! and type-check against the schema derived from the catalog
//! ([`cedar::schema_for`]).

pub mod cedar;
pub mod classifier;
pub mod messaging;
pub mod schema;
pub mod slice;
mod validate;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use classifier::Classifier;
pub use schema::{InputSchema, closed};
pub use slice::Slices;
pub use validate::{
    BUILTINS, Error, MAX_ARGUMENT_BYTES, MAX_LIMITS, MAX_MCP_SERVERS, MAX_RESPONSE_BYTES,
    MAX_TIMEOUT_MS, valid_mcp_tool_name, valid_server_name, valid_tool_name,
};

/// Largest policy document accepted, bytes.
pub const MAX_DOCUMENT_BYTES: usize = 1024 * 1024;
/// Most tools in a catalog.
pub const MAX_TOOLS: usize = 1000;
/// The document format this build reads.
pub const FORMAT_VERSION: u32 = 1;

/// A policy document as written (YAML).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Document {
    /// Format version; must be [`FORMAT_VERSION`].
    pub version: u32,
    /// Named secret references: `env:NAME` or `file:/absolute/path`. Values
    /// are resolved by the sidecar at execution time, never stored here.
    #[serde(default)]
    pub secrets: BTreeMap<String, String>,
    /// The tool catalog.
    #[serde(default)]
    pub tools: Vec<Tool>,
    /// Cedar policies (context- and argument-aware rules).
    #[serde(default)]
    pub cedar: String,
    /// Cedar policies over the same schema whose `permit`s mean "this
    /// call needs a human approval" (`@approvals("N")` sets a quorum).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub approval_rules: String,
    /// Per-agent-type and per-agent adjustments.
    #[serde(default)]
    pub overrides: Overrides,
    /// Rate limits and cost quotas (shared by all sidecars of an agent when
    /// they use Redis).
    #[serde(default)]
    pub limits: Vec<LimitSpec>,
    /// Agent-to-agent messaging: who may message whom, key rotation, ages
    /// (absent: nobody may message anybody).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub messaging: Option<messaging::Messaging>,
    /// MCP servers whose tools the catalog offers (tools with an upstream
    /// of kind `mcp`), by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub mcp_servers: BTreeMap<String, McpServer>,
    /// Scopes a session gets only once people approve (step-up), with the
    /// approval each needs: a requested scope that covers one of these
    /// (`data:*` covers `data:delete`) waits for it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub privileged_scopes: BTreeMap<String, ApprovalSpec>,
    /// Credential rules in the gitleaks TOML format, added to the built-in
    /// ones (a rule with a built-in rule's id replaces it) for every tool's
    /// `filters.secrets`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub secret_rules: String,
    /// An external prompt-injection classifier asked beside the built-in
    /// detector, wherever a tool's `filters.injection` looks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classifier: Option<Classifier>,
}

/// An MCP server the sidecar connects to: over streamable HTTP (`url`) or
/// as a local process it starts and speaks to on stdio (`command`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct McpServer {
    /// Streamable HTTP: the endpoint, `http://` or `https://`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Streamable HTTP: request headers; values may use `${secret:NAME}`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// Streamable HTTP: TLS settings for an `https://` url.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<UpstreamTls>,
    /// stdio: the program to start (an absolute path).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// stdio: its arguments.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// stdio: its whole environment (nothing of the sidecar's is passed);
    /// values may use `${secret:NAME}`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// How often the server's tool list is read again (default `60s`,
    /// between `1s` and `1h`); a server that announces a change is read
    /// again at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh: Option<String>,
}

impl McpServer {
    /// The secret names its headers and environment use, and its TLS
    /// client credentials.
    pub fn secret_uses(&self) -> Vec<&str> {
        let mut out = secret_uses_in(self.headers.values().chain(self.env.values()));
        if let Some(t) = &self.tls {
            out.extend(t.client_cert.as_deref());
            out.extend(t.client_key.as_deref());
        }
        out
    }

    /// How often its tool list is read again.
    pub fn refresh_every(&self) -> std::time::Duration {
        self.refresh
            .as_deref()
            .and_then(parse_duration)
            .unwrap_or(std::time::Duration::from_secs(60))
    }
}

/// The names used by `${secret:NAME}` in `values`.
fn secret_uses_in<'a>(values: impl Iterator<Item = &'a String>) -> Vec<&'a str> {
    let mut out = Vec::new();
    for v in values {
        let mut rest = v.as_str();
        while let Some(i) = rest.find("${secret:") {
            let after = &rest[i + 9..];
            let Some(j) = after.find('}') else { break };
            out.push(&after[..j]);
            rest = &after[j + 1..];
        }
    }
    out
}

impl Document {
    /// The compiled messaging settings (defaults, no rules, when absent).
    pub fn messaging(&self) -> Result<messaging::Settings, String> {
        self.messaging.as_ref().map_or_else(
            || Ok(messaging::Settings::default()),
            messaging::Messaging::compile,
        )
    }
}

/// One rate limit or cost quota.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitSpec {
    /// Unique name (`[a-z0-9][a-z0-9_.-]{0,63}`), named in refusals and
    /// metrics.
    pub name: String,
    /// What is counted together: `agent` (all its sessions and sidecars),
    /// `agent_tool` (per agent and tool), `session`, or `owner` (all agents
    /// of one owner).
    pub key: String,
    /// Only these tools count (default: every tool).
    #[serde(default)]
    pub tools: Vec<String>,
    /// A rate: `calls` per `per`, bursts of up to `burst` (default `calls`).
    #[serde(default)]
    pub rate: Option<RateSpec>,
    /// A quota: `budget` cost units per `per` window (UTC-aligned, e.g. a
    /// day); each call costs its tool's `cost`.
    #[serde(default)]
    pub quota: Option<QuotaSpec>,
    /// `fail_closed` (default: refuse while the shared store is unreachable)
    /// or `local_fallback` (admit within this sidecar's share:
    /// the limit divided by `expected_replicas`).
    #[serde(default)]
    pub on_failure: Option<String>,
    /// Replicas of an agent expected to share the limit (local_fallback).
    #[serde(default)]
    pub expected_replicas: Option<i64>,
    /// Evaluate and count, never refuse (to roll a new limit out safely).
    #[serde(default)]
    pub shadow: bool,
}

/// GCRA parameters: `calls` per `per`, bursts of up to `burst`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateSpec {
    /// Sustained calls per period (> 0).
    pub calls: i64,
    /// The period: `500ms`, `1s`, `1m`, `1h`, `1d`.
    pub per: String,
    /// Calls allowed at once (default `calls`).
    #[serde(default)]
    pub burst: Option<i64>,
}

/// A cost budget per window.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaSpec {
    /// Cost units per window (> 0).
    pub budget: i64,
    /// The window, at least a minute: `1h`, `1d`, ….
    pub per: String,
}

/// Parses `500ms`, `30s`, `1m`, `1h`, `1d` (a positive count and a unit).
pub fn parse_duration(s: &str) -> Option<std::time::Duration> {
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().ok().filter(|n| *n > 0)?;
    let ms = match unit {
        "ms" => 1,
        "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return None,
    };
    n.checked_mul(ms).map(std::time::Duration::from_millis)
}

/// Risk level of a tool.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Risk {
    /// Runs automatically.
    Low,
    /// Runs automatically; watched.
    Medium,
    /// Needs a human approval.
    High,
    /// Never runs automatically.
    Critical,
}

impl Risk {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Low => "low",
            Self::Medium => "medium",
            Self::High => "high",
            Self::Critical => "critical",
        }
    }
}

/// One tool of the catalog.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tool {
    /// Unique name, `[a-z0-9][a-z0-9_.-]{0,63}`.
    pub name: String,
    /// What the tool does (shown to the LLM).
    pub description: String,
    /// JSON Schema of the arguments (an object schema).
    pub input_schema: serde_json::Value,
    /// Scopes a session must hold to call the tool (all of them).
    pub scopes: Vec<String>,
    /// Risk level.
    pub risk: Risk,
    /// Where the call goes.
    #[serde(default)]
    pub upstream: Option<Upstream>,
    /// Names of secrets (from `secrets`) the sidecar injects.
    #[serde(default)]
    pub secrets: Vec<String>,
    /// Limits.
    #[serde(default)]
    pub limits: Limits,
    /// Input/output filter settings.
    #[serde(default)]
    pub filters: Filters,
    /// How the call's arguments are kept in its audit event: `redacted`
    /// (the default: values the schema marks `writeOnly` or `x-sensitive`
    /// and strings holding one of the tool's secrets removed), `hash` (a
    /// keyed hash only) or `full` (as sent, the tool's secrets still
    /// removed).
    #[serde(default, skip_serializing_if = "is_redacted")]
    pub audit_arguments: crate::audit::ArgumentsMode,
    /// What one call costs against quotas (default 1).
    #[serde(default = "one")]
    pub cost: u32,
    /// Human approval of this tool's calls: how many people, within how
    /// long. A `high` tool needs one by default; a `critical` tool runs
    /// only with `approvals` of at least 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<ApprovalSpec>,
    /// Only for a session acting for a user whom a trusted identity
    /// provider proved (a delegated session); a user the agent merely
    /// stated is refused with `USER_NOT_VERIFIED`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub verified_user: bool,
}

/// The approval a tool's calls need.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalSpec {
    /// Distinct people who must approve (1 to 5; default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approvals: Option<u32>,
    /// How long a call waits for them (`30s` … `1h`; default `5m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<String>,
    /// Who approves: `people` (the approval queue, admins; the default) or
    /// `user` (the agent's end user confirms each call, through the MCP
    /// client that made it). A tool's setting only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<ApprovedBy>,
}

/// Who approves a tool's calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ApprovedBy {
    /// Admins, through the approval queue.
    People,
    /// The agent's end user, asked by the client the call came through.
    User,
}

/// The default approval deadline.
pub const DEFAULT_APPROVAL_DEADLINE: std::time::Duration = std::time::Duration::from_secs(300);
/// The longest approval deadline.
pub const MAX_APPROVAL_DEADLINE: std::time::Duration = std::time::Duration::from_secs(3600);
/// The largest quorum.
pub const MAX_APPROVALS: u32 = 5;

impl ApprovalSpec {
    /// Distinct people (default 1).
    pub fn quorum(&self) -> u32 {
        self.approvals.unwrap_or(1)
    }

    /// How long people have to decide (default 5 minutes).
    pub fn deadline(&self) -> std::time::Duration {
        self.deadline
            .as_deref()
            .and_then(parse_duration)
            .unwrap_or(DEFAULT_APPROVAL_DEADLINE)
    }

    /// Whether the settings are within bounds; what is wrong if not.
    pub fn check(&self) -> Result<(), String> {
        if self
            .approvals
            .is_some_and(|n| !(1..=MAX_APPROVALS).contains(&n))
        {
            return Err(format!("approvals must be 1 to {MAX_APPROVALS}"));
        }
        if self.by == Some(ApprovedBy::User) && self.approvals.is_some_and(|n| n > 1) {
            return Err("by: user is one person: approvals must be 1".into());
        }
        if self.deadline.as_deref().is_some_and(|d| {
            parse_duration(d)
                .is_none_or(|d| d < std::time::Duration::from_secs(30) || d > MAX_APPROVAL_DEADLINE)
        }) {
            return Err("deadline must be a duration from 30s to 1h".into());
        }
        Ok(())
    }
}

impl Tool {
    /// The quorum this tool's own settings ask for (default 1).
    pub fn approvals(&self) -> u32 {
        self.approval
            .as_ref()
            .and_then(|a| a.approvals)
            .unwrap_or(1)
    }

    /// How long a call of this tool waits for approval.
    pub fn approval_deadline(&self) -> std::time::Duration {
        self.approval
            .as_ref()
            .and_then(|a| a.deadline.as_deref())
            .and_then(parse_duration)
            .unwrap_or(DEFAULT_APPROVAL_DEADLINE)
    }

    /// Whether the agent's end user confirms this tool's calls (rather than
    /// admins through the queue).
    pub fn confirmed_by_user(&self) -> bool {
        self.approval
            .as_ref()
            .is_some_and(|a| a.by == Some(ApprovedBy::User))
    }

    /// Whether a `critical` tool may run at all: only with a quorum of at
    /// least 2 given explicitly.
    pub fn critical_with_quorum(&self) -> bool {
        self.approval
            .as_ref()
            .and_then(|a| a.approvals)
            .is_some_and(|n| n >= 2)
    }
}

fn one() -> u32 {
    1
}

/// Upstream of a tool.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    /// `http`, `mcp` or `builtin`.
    pub kind: String,
    /// http: a URL template whose `{name}` placeholders are filled, percent-
    /// encoded, from required scalar arguments; mcp: the server's name in
    /// `mcp_servers`; builtin: `echo` or `clock`.
    pub address: String,
    /// mcp: the tool's name on the server (default: the catalog name
    /// without its `<server>.` namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool: Option<String>,
    /// mcp: `sha256:<hex>` of the server's description and input schema
    /// of the tool ([`mcp_pin`]); a server that offers anything else has
    /// the tool withdrawn. Without a pin, the first one seen is kept for
    /// the sidecar's life.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pin: Option<String>,
    /// http: `GET`, `POST` (default), `PUT`, `PATCH` or `DELETE`. GET and
    /// DELETE send the other arguments as query parameters; the others send
    /// them as a JSON object body.
    #[serde(default)]
    pub method: Option<String>,
    /// http: request headers; values may use `${secret:NAME}`, resolved at
    /// execution time (NAME must be in the tool's `secrets`).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// http: fields added to the JSON body; values may use `${secret:NAME}`.
    #[serde(default)]
    pub body_fields: BTreeMap<String, String>,
    /// http: TLS settings for `https://` addresses.
    #[serde(default)]
    pub tls: Option<UpstreamTls>,
    /// http: largest response body accepted, bytes (default 1 MiB).
    #[serde(default)]
    pub max_response_bytes: Option<u32>,
    /// http: the circuit breaker around this upstream.
    #[serde(default)]
    pub circuit_breaker: Option<CircuitBreaker>,
}

/// TLS towards an upstream (rustls). Without `ca_file`, the system's trust
/// store is used.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTls {
    /// PEM file of the CA certificates to trust (absolute path).
    #[serde(default)]
    pub ca_file: Option<String>,
    /// Secret holding the client certificate chain (PEM), for mutual TLS.
    #[serde(default)]
    pub client_cert: Option<String>,
    /// Secret holding the client private key (PEM).
    #[serde(default)]
    pub client_key: Option<String>,
}

/// Circuit breaker settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CircuitBreaker {
    /// Consecutive failures that open the circuit (default 5).
    #[serde(default = "default_failures")]
    pub failures: u32,
    /// How long it stays open before one probe is let through, ms (default 30,000).
    #[serde(default = "default_cooldown")]
    pub cooldown_ms: u32,
}

fn default_failures() -> u32 {
    5
}

fn default_cooldown() -> u32 {
    30_000
}

impl Default for CircuitBreaker {
    fn default() -> Self {
        Self {
            failures: default_failures(),
            cooldown_ms: default_cooldown(),
        }
    }
}

impl Upstream {
    /// mcp: the tool's name on its server.
    pub fn remote_tool<'a>(&'a self, catalog_name: &'a str) -> &'a str {
        self.tool.as_deref().unwrap_or_else(|| {
            catalog_name
                .strip_prefix(self.address.as_str())
                .and_then(|r| r.strip_prefix('.'))
                .unwrap_or(catalog_name)
        })
    }

    /// The `{name}` placeholders of the address template, in order.
    pub fn placeholders(&self) -> Vec<&str> {
        let mut out = Vec::new();
        let mut rest = self.address.as_str();
        while let Some(i) = rest.find('{') {
            let Some(j) = rest[i..].find('}') else { break };
            out.push(&rest[i + 1..i + j]);
            rest = &rest[i + j + 1..];
        }
        out
    }

    /// The secret names used by `${secret:NAME}` in headers and body fields,
    /// and by the TLS client credentials.
    pub fn secret_uses(&self) -> Vec<&str> {
        let mut out = secret_uses_in(self.headers.values().chain(self.body_fields.values()));
        if let Some(t) = &self.tls {
            out.extend(t.client_cert.as_deref());
            out.extend(t.client_key.as_deref());
        }
        out
    }
}

/// Per-tool limits.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Calls per minute per agent.
    #[serde(default)]
    pub calls_per_minute: Option<u32>,
    /// Largest argument document, bytes.
    #[serde(default)]
    pub max_argument_bytes: Option<u32>,
    /// Upstream timeout, milliseconds.
    #[serde(default)]
    pub timeout_ms: Option<u32>,
}

/// Per-tool filter settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Filters {
    /// Check argument strings for prompt injection.
    #[serde(default = "yes")]
    pub injection_check: bool,
    /// Redact secrets and PII from the output (`false` turns `secrets` and
    /// `pii` off).
    #[serde(default = "yes")]
    pub redact_output: bool,
    /// Credentials found in the output (built-in and `secret_rules`).
    #[serde(default, skip_serializing_if = "Guard::is_redact")]
    pub secrets: Guard,
    /// Personal data found in the output (e-mail addresses, phone numbers,
    /// payment cards, IBANs, US SSNs, IP addresses).
    #[serde(default, skip_serializing_if = "Guard::is_redact")]
    pub pii: Guard,
    /// What is done with text that reads as a prompt injection, in the
    /// arguments and in the output (`injection_check: false` turns both
    /// off).
    #[serde(default, skip_serializing_if = "Injection::is_default")]
    pub injection: Injection,
    /// Credentials in the argument strings (the same rules as `secrets`;
    /// default `off`; `block` refuses the call with `ARGUMENT_SECRET`,
    /// `redact` and `mask` change the arguments, which are validated
    /// again).
    #[serde(default = "Guard::off", skip_serializing_if = "Guard::is_off")]
    pub argument_secrets: Guard,
}

/// Prompt-injection actions of a tool, per direction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Injection {
    /// On argument strings (default `block`; `mark` acts as `flag`).
    #[serde(default = "OnInjection::block")]
    pub arguments: OnInjection,
    /// On the upstream's answer (default `mark`).
    #[serde(default = "OnInjection::mark")]
    pub output: OnInjection,
    /// On an MCP server's description and input schema of the tool
    /// (default `block`: the tool is withdrawn; `flag`: kept, alerted;
    /// `off`).
    #[serde(default = "OnInjection::block")]
    pub description: OnInjection,
}

impl Default for Injection {
    fn default() -> Self {
        Self {
            arguments: OnInjection::Block,
            output: OnInjection::Mark,
            description: OnInjection::Block,
        }
    }
}

impl Injection {
    fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

/// What is done with text that reads as a prompt injection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnInjection {
    /// Refuse the call, or withhold the answer (`PROMPT_INJECTION`).
    Block,
    /// Remove the spans that carry it.
    Redact,
    /// Wrap the text in delimiters that tell the model it is data
    /// ("spotlighting").
    Mark,
    /// Let it through; record the finding.
    Flag,
    /// Do not look.
    Off,
}

impl OnInjection {
    fn block() -> Self {
        Self::Block
    }

    fn mark() -> Self {
        Self::Mark
    }

    /// As a word (`block`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Block => "block",
            Self::Redact => "redact",
            Self::Mark => "mark",
            Self::Flag => "flag",
            Self::Off => "off",
        }
    }
}

/// What stage 8 does with a finding in a tool's output.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Guard {
    /// Replace it with `[REDACTED:<kind>]` (the default).
    #[default]
    Redact,
    /// Keep its last four letters or digits, the rest `*`.
    Mask,
    /// Withhold the whole answer (`OUTPUT_BLOCKED`).
    Block,
    /// Leave it.
    Off,
}

impl Guard {
    fn is_redact(&self) -> bool {
        *self == Self::Redact
    }

    fn is_off(&self) -> bool {
        *self == Self::Off
    }

    fn off() -> Self {
        Self::Off
    }

    /// As a word (`redact`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Redact => "redact",
            Self::Mask => "mask",
            Self::Block => "block",
            Self::Off => "off",
        }
    }
}

fn yes() -> bool {
    true
}

fn is_redacted(m: &crate::audit::ArgumentsMode) -> bool {
    *m == crate::audit::ArgumentsMode::Redacted
}

impl Default for Filters {
    fn default() -> Self {
        Self {
            injection_check: true,
            redact_output: true,
            secrets: Guard::Redact,
            pii: Guard::Redact,
            injection: Injection::default(),
            argument_secrets: Guard::Off,
        }
    }
}

/// Adjustments by agent type and by agent id (the agent's own entry wins).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Overrides {
    /// Keyed by agent type.
    #[serde(default)]
    pub agent_types: BTreeMap<String, Override>,
    /// Keyed by agent id.
    #[serde(default)]
    pub agents: BTreeMap<String, Override>,
}

/// One adjustment.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Override {
    /// If set, only these tools.
    #[serde(default)]
    pub allow_tools: Option<Vec<String>>,
    /// Never these tools.
    #[serde(default)]
    pub deny_tools: Vec<String>,
    /// Raised (or lowered) risk levels per tool.
    #[serde(default)]
    pub risk: BTreeMap<String, Risk>,
}

impl Document {
    /// The tools an agent may call, with their effective risk: the catalog,
    /// narrowed by the identity's allow list (if any) and deny list, then by
    /// the overrides for its type and then for its id (allow lists narrow,
    /// deny lists remove, risk entries replace).
    pub fn tools_for(
        &self,
        agent_id: &str,
        agent_type: &str,
        allowed: &[String],
        denied: &[String],
    ) -> BTreeMap<String, Risk> {
        let mut out: BTreeMap<String, Risk> = self
            .tools
            .iter()
            .filter(|t| allowed.is_empty() || allowed.contains(&t.name))
            .filter(|t| !denied.contains(&t.name))
            .map(|t| (t.name.clone(), t.risk))
            .collect();
        for o in [
            self.overrides.agent_types.get(agent_type),
            self.overrides.agents.get(agent_id),
        ]
        .into_iter()
        .flatten()
        {
            if let Some(allow) = &o.allow_tools {
                out.retain(|name, _| allow.contains(name));
            }
            out.retain(|name, _| !o.deny_tools.contains(name));
            for (name, risk) in &o.risk {
                if let Some(r) = out.get_mut(name) {
                    *r = *risk;
                }
            }
        }
        out
    }
}

/// The pin of an MCP tool as a server describes it: `sha256:` and the
/// lower-case hex SHA-256 of the canonical JSON (keys sorted, no
/// whitespace) of `{"description": …, "inputSchema": …}` (a missing
/// description is the empty string).
pub fn mcp_pin(description: &str, input_schema: &serde_json::Value) -> String {
    let mut text = String::from("{\"description\":");
    canonical_json(
        &serde_json::Value::String(description.to_owned()),
        &mut text,
    );
    text.push_str(",\"inputSchema\":");
    canonical_json(input_schema, &mut text);
    text.push('}');
    let d = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
    let mut out = String::from("sha256:");
    for b in d.as_ref() {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// `v` as JSON with object keys sorted (by their UTF-8 bytes) at every
/// level and no whitespace.
pub fn canonical_json(v: &serde_json::Value, out: &mut String) {
    use serde_json::Value;
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort_unstable();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                canonical_json(&m[k], out);
            }
            out.push('}');
        }
        Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical_json(x, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// The digest that binds a step-up approval to what it grants (hex
/// SHA-256): the agent, the user the session is for, and the privileged
/// scopes (sorted), each length-prefixed as in [`approval_binding`], after
/// the label `warden.step-up.v1`.
pub fn step_up_binding(agent: &str, user: &str, scopes: &[String]) -> String {
    let mut sorted: Vec<&str> = scopes.iter().map(String::as_str).collect();
    sorted.sort_unstable();
    sorted.dedup();
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(b"warden.step-up.v1");
    let joined = sorted.join(" ");
    for part in [agent.as_bytes(), user.as_bytes(), joined.as_bytes()] {
        ctx.update(&u32::try_from(part.len()).unwrap_or(u32::MAX).to_be_bytes());
        ctx.update(part);
    }
    ctx.finish()
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The digest that binds an approval to one call (hex SHA-256): the tool,
/// its arguments in their canonical form (RFC 8785) and the session, each
/// preceded by its length (4 bytes, big-endian), after the label
/// `warden.approval.v1`. The same call in another session, or with one
/// argument changed, has another digest; formatting does not matter.
pub fn approval_binding(
    tool: &str,
    args: &serde_json::Value,
    session: &str,
) -> Result<String, crate::jcs::Error> {
    let canonical = crate::jcs::canonicalize(args)?;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(b"warden.approval.v1");
    for part in [tool.as_bytes(), canonical.as_bytes(), session.as_bytes()] {
        ctx.update(&u32::try_from(part.len()).unwrap_or(u32::MAX).to_be_bytes());
        ctx.update(part);
    }
    Ok(ctx
        .finish()
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// A validated policy: the document plus what was compiled from it.
#[derive(Debug)]
pub struct Policy {
    /// The document.
    pub document: Document,
    /// The Cedar rules, whole and per tool.
    pub cedar: Slices,
    /// The approval rules (a permit: approval needed), whole and per tool.
    pub approval_rules: Slices,
    /// The Cedar schema derived from the catalog.
    pub cedar_schema: ::cedar_policy::Schema,
    /// The credential rules: built-in, and the document's `secret_rules`.
    pub secret_rules: std::sync::Arc<crate::guard::secrets::Rules>,
    /// SHA-256 of the canonical JSON form, hex: equal for equal documents
    /// whatever their YAML formatting.
    pub digest: String,
}

impl Policy {
    /// Parses and validates a YAML document.
    pub fn parse(yaml: &str) -> Result<Self, Error> {
        validate::parse(yaml)
    }
}

#[cfg(test)]
mod tests;
