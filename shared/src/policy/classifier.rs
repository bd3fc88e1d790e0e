//! The policy's external prompt-injection classifier: a model a team runs
//! behind HTTP, asked about the text of arguments and answers beside the
//! built-in detector.
//!
//! The request is the Hugging Face text-classification shape that Text
//! Embeddings Inference (`/predict`) and Inference Endpoints serve:
//! `POST {"inputs": ["text", …]}`, answered with one list of
//! `{"label", "score"}` per input. The score of an input is the highest
//! score among the labels the policy names (`labels`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::UpstreamTls;

/// Longest wait for the classifier's answer, ms.
pub const MAX_TIMEOUT_MS: u32 = 10_000;
/// Most chunks sent in one request.
pub const MAX_CHUNKS: u32 = 256;

/// An external classifier (`classifier` in the policy document).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Classifier {
    /// Where requests are posted: `https://…`, or `http://` (clear text is
    /// refused when `headers` carry secrets, except to a loopback host).
    pub url: String,
    /// Request headers; values may use `${secret:NAME}` (NAME declared in
    /// `secrets`), resolved at each request.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// TLS settings for an `https://` url.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<UpstreamTls>,
    /// Longest wait for an answer, ms (default 300, at most 10,000).
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u32,
    /// What a call does when the classifier cannot answer (an error, a
    /// timeout, an answer of the wrong shape, text beyond `max_chunks`):
    /// `block` (default: refused with `CLASSIFIER_UNAVAILABLE`) or
    /// `allow` (goes on; the failure is in the audit event).
    #[serde(default)]
    pub on_failure: OnFailure,
    /// The score from which text counts as an injection (default 0.5).
    #[serde(default = "default_threshold")]
    pub threshold: f32,
    /// The labels whose score counts (default `INJECTION`, `JAILBREAK`),
    /// compared without case.
    #[serde(default = "default_labels")]
    pub labels: Vec<String>,
    /// Longest chunk of text in one input, characters (default 2,000;
    /// longer strings are split with an overlap, short ones joined).
    #[serde(default = "default_chunk_chars")]
    pub chunk_chars: u32,
    /// Most chunks in one request (default 32); more text than that is a
    /// failure (`on_failure`).
    #[serde(default = "default_max_chunks")]
    pub max_chunks: u32,
}

/// What a call does when the classifier cannot answer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnFailure {
    /// Refuse the call (fail closed).
    #[default]
    Block,
    /// Go on without the classifier's opinion (fail open).
    Allow,
}

impl OnFailure {
    /// As a word.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Block => "block",
            Self::Allow => "allow",
        }
    }
}

fn default_timeout_ms() -> u32 {
    300
}

fn default_threshold() -> f32 {
    0.5
}

fn default_labels() -> Vec<String> {
    vec!["INJECTION".into(), "JAILBREAK".into()]
}

fn default_chunk_chars() -> u32 {
    2000
}

fn default_max_chunks() -> u32 {
    32
}

impl Classifier {
    /// The names its headers and TLS settings use from `secrets`.
    pub fn secret_uses(&self) -> Vec<&str> {
        let mut out = super::secret_uses_in(self.headers.values());
        if let Some(t) = &self.tls {
            out.extend(t.client_cert.as_deref());
            out.extend(t.client_key.as_deref());
        }
        out
    }

    /// Whether `label` is one whose score counts.
    pub fn counts(&self, label: &str) -> bool {
        self.labels.iter().any(|l| l.eq_ignore_ascii_case(label))
    }

    /// What is wrong with these settings, if anything (the url, headers
    /// and TLS settings are checked as an upstream's are).
    pub(super) fn problem(&self) -> Option<String> {
        if self.url.contains(['{', '}']) {
            return Some("url must not hold placeholders".into());
        }
        if !(10..=MAX_TIMEOUT_MS).contains(&self.timeout_ms) {
            return Some(format!("timeout_ms must be 10..={MAX_TIMEOUT_MS}"));
        }
        if !(self.threshold > 0.0 && self.threshold <= 1.0) {
            return Some("threshold must be above 0 and at most 1".into());
        }
        if self.labels.is_empty()
            || self.labels.len() > 16
            || self
                .labels
                .iter()
                .any(|l| l.is_empty() || l.len() > 64 || l.chars().any(char::is_control))
        {
            return Some("labels must be 1 to 16 names of 1 to 64 characters".into());
        }
        if !(64..=65_536).contains(&self.chunk_chars) {
            return Some("chunk_chars must be 64..=65536".into());
        }
        if !(1..=MAX_CHUNKS).contains(&self.max_chunks) {
            return Some(format!("max_chunks must be 1..={MAX_CHUNKS}"));
        }
        None
    }
}
