//! Validation of policy documents; every failure is a typed [`Error`].

use std::collections::BTreeSet;
use std::str::FromStr;

use cedar_policy::{PolicySet, Schema, ValidationMode, Validator};

use super::{Document, FORMAT_VERSION, MAX_DOCUMENT_BYTES, MAX_TOOLS, Policy, Slices, Tool};
use crate::agent::AgentId;
use crate::scope::Scope;

/// Why a policy document was refused. Each variant names what to fix.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// Larger than [`MAX_DOCUMENT_BYTES`].
    #[error("policy document is larger than {MAX_DOCUMENT_BYTES} bytes")]
    TooLarge,
    /// Not YAML, or not the document's shape (including unknown fields).
    #[error("policy document does not parse: {0}")]
    Yaml(String),
    /// A field the document must not have.
    #[error("unknown field in policy document: {0}")]
    UnknownField(String),
    /// `version` is not [`FORMAT_VERSION`].
    #[error("policy format version {0} is not supported (expected {FORMAT_VERSION})")]
    Version(u32),
    /// Two tools share a name.
    #[error("duplicate tool name {0:?}")]
    DuplicateTool(String),
    /// A tool field is invalid.
    #[error("tool {tool:?}: {detail}")]
    Tool {
        /// The tool.
        tool: String,
        /// What is wrong.
        detail: String,
    },
    /// A tool's input schema is not a valid JSON Schema.
    #[error("tool {tool:?}: input_schema does not compile: {detail}")]
    Schema {
        /// The tool.
        tool: String,
        /// The compiler's message.
        detail: String,
    },
    /// A secret reference is malformed.
    #[error("secret {name:?}: {detail}")]
    SecretRef {
        /// The secret.
        name: String,
        /// What is wrong.
        detail: String,
    },
    /// A tool uses a secret that `secrets` does not declare.
    #[error("tool {tool:?} refers to undefined secret {secret:?}")]
    UndefinedSecret {
        /// The tool.
        tool: String,
        /// The missing secret.
        secret: String,
    },
    /// An override names an unknown tool or an invalid agent id.
    #[error("overrides: {0}")]
    Override(String),
    /// A limit is malformed (a rate or window that is not positive, an
    /// unknown key or failure mode, an unknown tool, a duplicate name).
    #[error("limit {name:?}: {detail}")]
    Limit {
        /// The limit.
        name: String,
        /// What is wrong.
        detail: String,
    },
    /// An MCP server's settings are invalid.
    #[error("mcp server {name:?}: {detail}")]
    McpServer {
        /// The server.
        name: String,
        /// What is wrong.
        detail: String,
    },
    /// The messaging section is malformed (a selector, a duration out of
    /// range).
    #[error("messaging: {0}")]
    Messaging(String),
    /// The approval rules do not parse or type-check, or an approval
    /// setting is out of range.
    #[error("approval: {0}")]
    Approval(String),
    /// The Cedar text does not parse.
    #[error("cedar policies do not parse: {0}")]
    CedarParse(String),
    /// `secret_rules` is not a usable gitleaks rule file (names the rule).
    #[error("secret_rules: {0}")]
    SecretRules(String),
    /// The external classifier's settings are invalid.
    #[error("classifier: {0}")]
    Classifier(String),
    /// The Cedar rules do not type-check against Warden's schema.
    #[error("cedar policies fail schema validation: {0}")]
    CedarValidation(String),
}

impl Error {
    /// A stable machine-readable kind, e.g. for a gRPC `ErrorInfo` reason.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::TooLarge => "POLICY_TOO_LARGE",
            Self::Yaml(_) => "POLICY_YAML",
            Self::UnknownField(_) => "POLICY_UNKNOWN_FIELD",
            Self::Version(_) => "POLICY_VERSION",
            Self::DuplicateTool(_) => "POLICY_DUPLICATE_TOOL",
            Self::Tool { .. } => "POLICY_TOOL",
            Self::Schema { .. } => "POLICY_SCHEMA",
            Self::SecretRef { .. } => "POLICY_SECRET_REF",
            Self::UndefinedSecret { .. } => "POLICY_UNDEFINED_SECRET",
            Self::Override(_) => "POLICY_OVERRIDE",
            Self::Limit { .. } => "POLICY_LIMIT",
            Self::McpServer { .. } => "POLICY_MCP_SERVER",
            Self::Messaging(_) => "POLICY_MESSAGING",
            Self::Approval(_) => "POLICY_APPROVAL",
            Self::CedarParse(_) => "POLICY_CEDAR_PARSE",
            Self::CedarValidation(_) => "POLICY_CEDAR_VALIDATION",
            Self::SecretRules(_) => "POLICY_SECRET_RULES",
            Self::Classifier(_) => "POLICY_CLASSIFIER",
        }
    }
}

/// Whether `n` is a valid tool (or secret, or limit) name:
/// `[a-z0-9][a-z0-9_.-]{0,63}`.
pub fn valid_tool_name(n: &str) -> bool {
    let b = n.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"_.-".contains(c))
}

fn check_secret_ref(name: &str, r: &str) -> Result<(), Error> {
    let bad = |d: &str| Error::SecretRef {
        name: name.to_owned(),
        detail: d.to_owned(),
    };
    if !valid_tool_name(name) {
        return Err(bad("name must be 1-64 of [a-z0-9_.-]"));
    }
    if let Some(var) = r.strip_prefix("env:") {
        let ok = !var.is_empty() && var.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_');
        return if ok {
            Ok(())
        } else {
            Err(bad("env: needs a variable name of [A-Za-z0-9_]"))
        };
    }
    if let Some(path) = r.strip_prefix("file:") {
        return if path.starts_with('/') && !path.split('/').any(|s| s == "..") {
            Ok(())
        } else {
            Err(bad("file: needs an absolute path without '..'"))
        };
    }
    Err(bad("use env:NAME or file:/absolute/path"))
}

fn check_tool(t: &Tool, doc: &Document) -> Result<(), Error> {
    let bad = |d: String| Error::Tool {
        tool: t.name.clone(),
        detail: d,
    };
    if !valid_tool_name(&t.name) {
        return Err(bad(
            "name must be 1-64 of [a-z0-9_.-], starting with a letter or digit".into(),
        ));
    }
    if t.description.trim().is_empty() || t.description.len() > 4096 {
        return Err(bad("description must be 1-4096 bytes".into()));
    }
    if t.scopes.is_empty() {
        return Err(bad("needs at least one required scope".into()));
    }
    if matches!(
        t.filters.injection.description,
        super::OnInjection::Redact | super::OnInjection::Mark
    ) {
        return Err(bad(
            "filters.injection.description must be block, flag or off (the agent reads the policy's description, never the server's)".into(),
        ));
    }
    Scope::parse_all(&t.scopes).map_err(|e| bad(e.to_string()))?;
    if t.input_schema.get("type").and_then(|v| v.as_str()) != Some("object") {
        return Err(Error::Schema {
            tool: t.name.clone(),
            detail: "the top level must be {\"type\": \"object\", …}".into(),
        });
    }
    super::InputSchema::compile(&t.input_schema).map_err(|detail| Error::Schema {
        tool: t.name.clone(),
        detail,
    })?;
    if super::cedar::too_complex(&t.input_schema) {
        return Err(Error::Schema {
            tool: t.name.clone(),
            detail: "reading one object's properties through its combinators and $refs takes more than 1024 subschemas; simplify it".into(),
        });
    }
    if let Some(name) = super::cedar::unnameable_properties(&t.input_schema).first() {
        return Err(Error::Schema {
            tool: t.name.clone(),
            detail: format!(
                "property {name:?} cannot be named in policy rules (use letters, digits and _-.:/ @)"
            ),
        });
    }
    for s in &t.secrets {
        if !doc.secrets.contains_key(s) {
            return Err(Error::UndefinedSecret {
                tool: t.name.clone(),
                secret: s.clone(),
            });
        }
    }
    if let Some(u) = &t.upstream {
        check_upstream(t, u, doc).map_err(bad)?;
    }
    if let Some(a) = &t.approval {
        a.check().map_err(|e| bad(format!("approval.{e}")))?;
    }
    let l = &t.limits;
    if [l.calls_per_minute, l.max_argument_bytes, l.timeout_ms].contains(&Some(0)) {
        return Err(bad("limits must be positive".into()));
    }
    if l.max_argument_bytes.is_some_and(|b| b > MAX_ARGUMENT_BYTES) {
        return Err(bad(format!(
            "limits.max_argument_bytes must be at most {MAX_ARGUMENT_BYTES}"
        )));
    }
    if l.timeout_ms.is_some_and(|t| t > MAX_TIMEOUT_MS) {
        return Err(bad(format!(
            "limits.timeout_ms must be at most {MAX_TIMEOUT_MS}"
        )));
    }
    Ok(())
}

/// Largest `limits.max_argument_bytes` (the agent API's message cap).
pub const MAX_ARGUMENT_BYTES: u32 = 1024 * 1024;
/// Longest `limits.timeout_ms`: five minutes.
pub const MAX_TIMEOUT_MS: u32 = 300_000;

/// Builtin tools a `builtin` upstream may name.
pub const BUILTINS: [&str; 2] = ["echo", "clock"];
/// Largest `max_response_bytes` (a default gRPC client accepts 4 MiB).
pub const MAX_RESPONSE_BYTES: u32 = 4 * 1024 * 1024;
/// Headers the sidecar sets itself.
const RESERVED_HEADERS: [&str; 6] = [
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "upgrade",
    "te",
];

fn is_loopback(host: &str) -> bool {
    matches!(host, "localhost" | "127.0.0.1" | "[::1]")
}

/// Most MCP servers in a document.
pub const MAX_MCP_SERVERS: usize = 64;

/// Whether `n` is a valid MCP server name: `[a-z0-9][a-z0-9_-]{0,31}` (no
/// dot: it is the namespace of its tools).
pub fn valid_server_name(n: &str) -> bool {
    let b = n.as_bytes();
    !b.is_empty()
        && b.len() <= 32
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"_-".contains(c))
}

/// Whether `n` is a tool name an MCP server may use: 1-128 of
/// `[A-Za-z0-9_.-]`.
pub fn valid_mcp_tool_name(n: &str) -> bool {
    (1..=128).contains(&n.len())
        && n.bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"_.-".contains(&c))
}

fn is_pin(p: &str) -> bool {
    p.strip_prefix("sha256:").is_some_and(|h| {
        h.len() == 64
            && h.bytes()
                .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
    })
}

fn check_mcp_servers(doc: &Document) -> Result<(), Error> {
    if doc.mcp_servers.len() > MAX_MCP_SERVERS {
        return Err(Error::McpServer {
            name: String::new(),
            detail: format!("more than {MAX_MCP_SERVERS} servers"),
        });
    }
    for (name, m) in &doc.mcp_servers {
        let bad = |d: String| Error::McpServer {
            name: name.clone(),
            detail: d,
        };
        if !valid_server_name(name) {
            return Err(bad(
                "name must be 1-32 of [a-z0-9_-], starting with a letter or digit".into(),
            ));
        }
        for s in m.secret_uses() {
            if !doc.secrets.contains_key(s) {
                return Err(bad(format!("uses undefined secret {s:?}")));
            }
        }
        if m.refresh.as_deref().is_some_and(|r| {
            super::parse_duration(r).is_none_or(|d| {
                d < std::time::Duration::from_secs(1) || d > std::time::Duration::from_secs(3600)
            })
        }) {
            return Err(bad("refresh must be a duration from 1s to 1h".into()));
        }
        match (&m.url, &m.command) {
            (Some(url), None) => {
                if !m.args.is_empty() || !m.env.is_empty() {
                    return Err(bad("args and env are for a command (stdio)".into()));
                }
                let named = |e: Error| match e {
                    Error::McpServer { detail, .. } => bad(detail),
                    other => other,
                };
                check_url(url, !m.secret_uses().is_empty()).map_err(named)?;
                check_headers(&m.headers).map_err(named)?;
                check_tls(m.tls.as_ref(), url.starts_with("https://")).map_err(named)?;
            }
            (None, Some(cmd)) => {
                if !m.headers.is_empty() || m.tls.is_some() {
                    return Err(bad("headers and tls are for a url (streamable HTTP)".into()));
                }
                if !cmd.starts_with('/') || cmd.split('/').any(|s| s == "..") {
                    return Err(bad("command must be an absolute path without '..'".into()));
                }
                if m.args.len() > 64 || m.env.len() > 64 {
                    return Err(bad("at most 64 args and 64 env entries".into()));
                }
                let nul = |s: &String| s.contains('\0');
                if nul(cmd) || m.args.iter().any(nul) || m.env.values().any(nul) {
                    return Err(bad(
                        "command, args and env values must not contain NUL".into()
                    ));
                }
                let bad_var = |k: &String| {
                    k.is_empty() || !k.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_')
                };
                if m.env.keys().any(bad_var) {
                    return Err(bad("env names must be [A-Za-z0-9_]".into()));
                }
            }
            _ => {
                return Err(bad(
                    "needs exactly one of url (streamable HTTP) or command (stdio)".into(),
                ));
            }
        }
    }
    Ok(())
}

fn check_classifier(doc: &Document) -> Result<(), Error> {
    let Some(c) = &doc.classifier else {
        return Ok(());
    };
    let bad = Error::Classifier;
    let named = |e: Error| match e {
        Error::McpServer { detail, .. } => bad(detail),
        other => other,
    };
    for s in c.secret_uses() {
        if !doc.secrets.contains_key(s) {
            return Err(bad(format!("uses undefined secret {s:?}")));
        }
    }
    let tls = check_url(&c.url, !c.secret_uses().is_empty()).map_err(named)?;
    check_headers(&c.headers).map_err(named)?;
    check_tls(c.tls.as_ref(), tls).map_err(named)?;
    c.problem().map_or(Ok(()), |p| Err(bad(p)))
}

fn check_mcp_upstream(t: &Tool, u: &super::Upstream, doc: &Document) -> Result<(), String> {
    if !doc.mcp_servers.contains_key(&u.address) {
        return Err(format!(
            "mcp upstream names server {:?}, which mcp_servers does not define",
            u.address
        ));
    }
    let in_namespace = t
        .name
        .strip_prefix(u.address.as_str())
        .and_then(|r| r.strip_prefix('.'))
        .is_some_and(|r| !r.is_empty());
    if !in_namespace {
        return Err(format!(
            "a tool of mcp server {0:?} must be named {0}.<tool>",
            u.address
        ));
    }
    let remote = u.remote_tool(&t.name);
    if !valid_mcp_tool_name(remote) {
        return Err(format!(
            "the server's tool name {remote:?} must be 1-128 of [A-Za-z0-9_.-]"
        ));
    }
    if u.pin.as_deref().is_some_and(|p| !is_pin(p)) {
        return Err("pin must be sha256:<64 lower-case hex digits>".into());
    }
    let http_only =
        u.method.is_some() || !u.headers.is_empty() || !u.body_fields.is_empty() || u.tls.is_some();
    if http_only {
        return Err(
            "an mcp upstream takes no method, headers, body_fields or tls (set them on the server)"
                .into(),
        );
    }
    check_response_and_breaker(u)
}

fn check_upstream(t: &Tool, u: &super::Upstream, doc: &Document) -> Result<(), String> {
    if u.kind != "mcp" && (u.tool.is_some() || u.pin.is_some()) {
        return Err("tool and pin are for an mcp upstream".into());
    }
    match u.kind.as_str() {
        "mcp" => return check_mcp_upstream(t, u, doc),
        "builtin" => {
            if !BUILTINS.contains(&u.address.as_str()) {
                return Err(format!(
                    "unknown builtin {:?} (one of {})",
                    u.address,
                    BUILTINS.join(", ")
                ));
            }
            let http_only = u.method.is_some()
                || !u.headers.is_empty()
                || !u.body_fields.is_empty()
                || u.tls.is_some()
                || u.max_response_bytes.is_some()
                || u.circuit_breaker.is_some();
            if http_only {
                return Err("a builtin upstream takes no http settings".into());
            }
            return Ok(());
        }
        "http" => {}
        other => {
            return Err(format!(
                "unknown upstream kind {other:?} (http, mcp or builtin)"
            ));
        }
    }
    let uses = u.secret_uses();
    for s in &uses {
        if !t.secrets.iter().any(|d| d == s) {
            return Err(format!(
                "upstream uses secret {s:?}, which is not in the tool's secrets"
            ));
        }
    }
    check_url(&u.address, !uses.is_empty()).map_err(|e| match e {
        Error::McpServer { detail, .. } => detail,
        other => other.to_string(),
    })?;
    let props = t.input_schema.get("properties").and_then(|p| p.as_object());
    let required: Vec<&str> = t
        .input_schema
        .get("required")
        .and_then(|r| r.as_array())
        .map(|r| r.iter().filter_map(|v| v.as_str()).collect())
        .unwrap_or_default();
    for name in u.placeholders() {
        let ty = props
            .and_then(|p| p.get(name))
            .and_then(|s| s.get("type"))
            .and_then(|t| t.as_str());
        if !matches!(ty, Some("string" | "integer" | "number" | "boolean"))
            || !required.contains(&name)
        {
            return Err(format!(
                "address placeholder {{{name}}} must name a required string, number or boolean argument"
            ));
        }
    }
    let method = u.method.as_deref().unwrap_or("POST");
    if !["GET", "POST", "PUT", "PATCH", "DELETE"].contains(&method) {
        return Err(format!(
            "unknown method {method:?} (GET, POST, PUT, PATCH or DELETE)"
        ));
    }
    check_headers(&u.headers).map_err(|e| match e {
        Error::McpServer { detail, .. } => detail,
        other => other.to_string(),
    })?;
    if !u.body_fields.is_empty() && matches!(method, "GET" | "DELETE") {
        return Err(format!(
            "body_fields need a method with a body, not {method}"
        ));
    }
    for name in u.body_fields.keys() {
        if name.is_empty() || props.is_some_and(|p| p.contains_key(name)) {
            return Err(format!(
                "body field {name:?} must be a non-empty name that is not an argument"
            ));
        }
    }
    check_tls(u.tls.as_ref(), u.address.starts_with("https://")).map_err(|e| match e {
        Error::McpServer { detail, .. } => detail,
        other => other.to_string(),
    })?;
    check_response_and_breaker(u)
}

/// Errors of the checks shared by http upstreams and MCP servers, which
/// each caller words for its place.
fn shared_error(detail: impl Into<String>) -> Error {
    Error::McpServer {
        name: String::new(),
        detail: detail.into(),
    }
}

/// An `http://` or `https://` address with a literal host; clear text only
/// to a loopback host when secrets travel. Returns whether it is TLS.
fn check_url(address: &str, with_secrets: bool) -> Result<bool, Error> {
    let (tls, rest) = if let Some(r) = address.strip_prefix("https://") {
        (true, r)
    } else if let Some(r) = address.strip_prefix("http://") {
        (false, r)
    } else {
        return Err(shared_error("an http:// or https:// address is needed"));
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    // `[v6]:port`, `[v6]`, `host:port` or `host`.
    let (host, port) = match authority.strip_prefix('[') {
        Some(v6) => match v6.split_once(']') {
            Some((h, p)) => (&authority[..h.len() + 2], p.strip_prefix(':')),
            None => return Err(shared_error(format!("invalid host in {address:?}"))),
        },
        None => match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        },
    };
    if port.is_some_and(|p| p.parse::<u16>().is_err()) {
        return Err(shared_error(format!("invalid port in {address:?}")));
    }
    if host.is_empty() || authority.contains(['{', '}', '@']) {
        return Err(shared_error(
            "the address needs a literal host (no placeholders, no userinfo)",
        ));
    }
    if address.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(shared_error("the address must not contain whitespace"));
    }
    if !tls && with_secrets && !is_loopback(host) {
        return Err(shared_error(
            "secrets would travel in clear text: use https:// (or a loopback http:// address)",
        ));
    }
    Ok(tls)
}

fn check_headers(headers: &std::collections::BTreeMap<String, String>) -> Result<(), Error> {
    for (name, value) in headers {
        let token = !name.is_empty()
            && name
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c));
        if !token || RESERVED_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
            return Err(shared_error(format!(
                "header {name:?} is not a settable header name"
            )));
        }
        if value.chars().any(|c| c == '\r' || c == '\n' || c == '\0') {
            return Err(shared_error(format!(
                "header {name:?} has a line break in its value"
            )));
        }
    }
    Ok(())
}

fn check_tls(t: Option<&super::UpstreamTls>, https: bool) -> Result<(), Error> {
    if let Some(x) = t {
        if !https {
            return Err(shared_error("tls settings need an https:// address"));
        }
        if x.ca_file.as_deref().is_some_and(|f| !f.starts_with('/')) {
            return Err(shared_error("tls.ca_file must be an absolute path"));
        }
        if x.client_cert.is_some() != x.client_key.is_some() {
            return Err(shared_error(
                "tls.client_cert and tls.client_key go together",
            ));
        }
    }
    Ok(())
}

fn check_response_and_breaker(u: &super::Upstream) -> Result<(), String> {
    if u.max_response_bytes
        .is_some_and(|m| m == 0 || m > MAX_RESPONSE_BYTES)
    {
        return Err(format!(
            "max_response_bytes must be 1..={MAX_RESPONSE_BYTES}"
        ));
    }
    if let Some(b) = &u.circuit_breaker
        && (!(1..=1000).contains(&b.failures) || !(100..=3_600_000).contains(&b.cooldown_ms))
    {
        return Err("circuit_breaker needs failures 1..=1000 and cooldown_ms 100..=3600000".into());
    }
    Ok(())
}

fn check_overrides(doc: &Document, names: &BTreeSet<&str>) -> Result<(), Error> {
    for id in doc.overrides.agents.keys() {
        AgentId::new(id).map_err(|e| Error::Override(e.to_string()))?;
    }
    let all = doc
        .overrides
        .agent_types
        .iter()
        .chain(&doc.overrides.agents);
    for (who, o) in all {
        let tools = o
            .allow_tools
            .iter()
            .flatten()
            .chain(&o.deny_tools)
            .chain(o.risk.keys());
        for t in tools {
            if !names.contains(t.as_str()) {
                return Err(Error::Override(format!("{who}: unknown tool {t:?}")));
            }
        }
    }
    Ok(())
}

/// Most limits in a document.
pub const MAX_LIMITS: usize = 64;
/// Largest quota budget or rate count.
const MAX_COUNT: i64 = 1_000_000_000;

fn check_limits(doc: &Document, names: &BTreeSet<&str>) -> Result<(), Error> {
    let mut seen = BTreeSet::new();
    if doc.limits.len() > MAX_LIMITS {
        return Err(Error::Limit {
            name: String::new(),
            detail: format!("more than {MAX_LIMITS} limits"),
        });
    }
    for l in &doc.limits {
        let bad = |d: String| Error::Limit {
            name: l.name.clone(),
            detail: d,
        };
        if !valid_tool_name(&l.name) {
            return Err(bad("name must be 1-64 of [a-z0-9_.-]".into()));
        }
        if !seen.insert(l.name.as_str()) {
            return Err(bad("duplicate limit name".into()));
        }
        if l.name.ends_with(".calls_per_minute") {
            return Err(bad(
                "names ending in .calls_per_minute are the tools' own limits".into(),
            ));
        }
        if !["agent", "agent_tool", "session", "owner"].contains(&l.key.as_str()) {
            return Err(bad(format!(
                "unknown key {:?} (agent, agent_tool, session or owner)",
                l.key
            )));
        }
        if let Some(t) = l.tools.iter().find(|t| !names.contains(t.as_str())) {
            return Err(bad(format!("unknown tool {t:?}")));
        }
        match (&l.rate, &l.quota) {
            (Some(r), None) => {
                if !(1..=MAX_COUNT).contains(&r.calls) {
                    return Err(bad(format!(
                        "rate.calls must be 1..={MAX_COUNT}, not {}",
                        r.calls
                    )));
                }
                if r.burst.is_some_and(|b| !(1..=MAX_COUNT).contains(&b)) {
                    return Err(bad(format!("rate.burst must be 1..={MAX_COUNT}")));
                }
                if super::parse_duration(&r.per).is_none() {
                    return Err(bad(format!(
                        "rate.per {:?} is not a positive duration (500ms, 1s, 1m, 1h, 1d)",
                        r.per
                    )));
                }
            }
            (None, Some(q)) => {
                if !(1..=MAX_COUNT).contains(&q.budget) {
                    return Err(bad(format!(
                        "quota.budget must be 1..={MAX_COUNT}, not {}",
                        q.budget
                    )));
                }
                match super::parse_duration(&q.per) {
                    Some(d) if d >= std::time::Duration::from_secs(60) => {}
                    _ => {
                        return Err(bad(format!(
                            "quota.per {:?} must be a window of at least 1m (1h, 1d, …)",
                            q.per
                        )));
                    }
                }
            }
            _ => return Err(bad("needs exactly one of rate and quota".into())),
        }
        match l.on_failure.as_deref() {
            None | Some("fail_closed") => {}
            Some("local_fallback") => {
                let Some(n) = l.expected_replicas.filter(|n| (1..=10_000).contains(n)) else {
                    return Err(bad(
                        "local_fallback needs expected_replicas (1..=10000)".into()
                    ));
                };
                // Each replica's share must be at least one call.
                let smallest = match (&l.rate, &l.quota) {
                    (Some(r), _) => r.burst.unwrap_or(r.calls).min(r.calls),
                    (_, Some(q)) => q.budget,
                    _ => n,
                };
                if smallest < n {
                    return Err(bad(format!(
                        "a local share needs a burst (and calls) or budget of at least expected_replicas ({n})"
                    )));
                }
            }
            Some(other) => {
                return Err(bad(format!(
                    "unknown on_failure {other:?} (fail_closed or local_fallback)"
                )));
            }
        }
    }
    Ok(())
}

fn yaml_error(e: &serde_norway::Error) -> Error {
    let msg = e.to_string();
    if msg.contains("unknown field") {
        Error::UnknownField(msg)
    } else {
        Error::Yaml(msg)
    }
}

pub(super) fn parse(yaml: &str) -> Result<Policy, Error> {
    if yaml.len() > MAX_DOCUMENT_BYTES {
        return Err(Error::TooLarge);
    }
    let document: Document = serde_norway::from_str(yaml).map_err(|e| yaml_error(&e))?;
    if document.version != FORMAT_VERSION {
        return Err(Error::Version(document.version));
    }
    if document.tools.len() > MAX_TOOLS {
        return Err(Error::Tool {
            tool: String::new(),
            detail: format!("more than {MAX_TOOLS} tools"),
        });
    }
    for (name, r) in &document.secrets {
        check_secret_ref(name, r)?;
    }
    check_mcp_servers(&document)?;
    check_classifier(&document)?;
    let mut names = BTreeSet::new();
    for t in &document.tools {
        if !names.insert(t.name.as_str()) {
            return Err(Error::DuplicateTool(t.name.clone()));
        }
        check_tool(t, &document)?;
    }
    check_overrides(&document, &names)?;
    if document.privileged_scopes.len() > 256 {
        return Err(Error::Approval("at most 256 privileged_scopes".into()));
    }
    for (scope, a) in &document.privileged_scopes {
        crate::scope::Scope::parse(scope).map_err(|e| {
            Error::Approval(format!("privileged_scopes: {scope:?} is not a scope: {e}"))
        })?;
        if a.by.is_some() {
            return Err(Error::Approval(format!(
                "privileged_scopes.{scope}: `by` is a tool's setting"
            )));
        }
        a.check()
            .map_err(|e| Error::Approval(format!("privileged_scopes.{scope}: {e}")))?;
    }
    check_limits(&document, &names)?;
    document.messaging().map_err(Error::Messaging)?;

    let cedar =
        PolicySet::from_str(&document.cedar).map_err(|e| Error::CedarParse(e.to_string()))?;
    let schema_text = super::cedar::schema_for(&document.tools);
    let (cedar_schema, _warnings) = Schema::from_cedarschema_str(&schema_text).map_err(|e| {
        Error::CedarValidation(format!("schema derived from the catalog is invalid: {e}"))
    })?;
    let result = Validator::new(cedar_schema.clone()).validate(&cedar, ValidationMode::Strict);
    if !result.validation_passed() {
        let errs: Vec<String> = result
            .validation_errors()
            .map(ToString::to_string)
            .collect();
        return Err(Error::CedarValidation(errs.join("; ")));
    }
    let approval_rules = PolicySet::from_str(&document.approval_rules)
        .map_err(|e| Error::Approval(format!("approval_rules do not parse: {e}")))?;
    let result =
        Validator::new(cedar_schema.clone()).validate(&approval_rules, ValidationMode::Strict);
    if !result.validation_passed() {
        let errs: Vec<String> = result
            .validation_errors()
            .map(ToString::to_string)
            .collect();
        return Err(Error::Approval(format!(
            "approval_rules fail schema validation: {}",
            errs.join("; ")
        )));
    }
    for p in approval_rules.policies() {
        if p.effect() != cedar_policy::Effect::Permit {
            return Err(Error::Approval(format!(
                "approval rule {} is a forbid: approval rules are permits (a match means approval is needed)",
                p.annotation("id").unwrap_or(p.id().as_ref())
            )));
        }
        if let Some(n) = p.annotation("approvals")
            && n.parse::<u32>()
                .ok()
                .is_none_or(|n| !(1..=super::MAX_APPROVALS).contains(&n))
        {
            return Err(Error::Approval(format!(
                "approval rule {}: @approvals must be 1 to {}",
                p.annotation("id").unwrap_or(p.id().as_ref()),
                super::MAX_APPROVALS
            )));
        }
    }
    let canonical = serde_json::to_vec(&document).map_err(|e| Error::Yaml(e.to_string()))?;
    let digest = ring::digest::digest(&ring::digest::SHA256, &canonical)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let builtin = crate::guard::secrets::Rules::builtin()
        .map_err(|e| Error::SecretRules(format!("the built-in rules: {e}")))?;
    let secret_rules = if document.secret_rules.is_empty() {
        builtin
    } else {
        builtin.extend(
            crate::guard::secrets::Rules::from_gitleaks_toml(&document.secret_rules)
                .map_err(|e| Error::SecretRules(e.to_string()))?,
        )
    };
    let names = || document.tools.iter().map(|t| t.name.as_str());
    let cedar = Slices::new(cedar, names()).map_err(|e| Error::CedarValidation(e.to_string()))?;
    let approval_rules =
        Slices::new(approval_rules, names()).map_err(|e| Error::Approval(e.to_string()))?;
    Ok(Policy {
        document,
        cedar,
        approval_rules,
        cedar_schema,
        secret_rules: std::sync::Arc::new(secret_rules),
        digest,
    })
}
