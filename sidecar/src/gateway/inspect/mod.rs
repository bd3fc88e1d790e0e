//! Stages 3 and 8: inspection of what goes in and what comes out.
//!
//! Input: prompt injection in argument strings ([`injection`], and the
//! policy's external [`classifier`]); credentials in them when the tool's
//! `filters.argument_secrets` looks ([`detect::arguments`]).
//!
//! Output: every secret value the sidecar injected into this call is
//! removed from what the upstream returned, as raw text and in each
//! encoding [`scrub`] knows, so that an upstream echoing a header back
//! cannot hand the agent a credential; then credentials and personal data
//! ([`detect`]) and prompt injection ([`injection`], and the classifier,
//! which sees the answer only after credentials and personal data are
//! redacted) are handled as the tool's filters say.

pub mod classifier;
pub mod detect;
pub mod injection;
mod scrub;
mod secrets;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use warden_shared::refusal::Reason;

use super::Refusal;
use super::execute::secrets::Secret;

/// What replaces a redacted value.
pub const REDACTED: &str = "[REDACTED]";

pub use scrub::Exhausted;

/// Answers larger than this are searched on a blocking thread, off the
/// runtime's workers.
const INLINE_BYTES: usize = 64 * 1024;

/// An answer after stage 8.
#[derive(Debug)]
pub struct Inspected {
    /// The body, secrets removed.
    pub content: Vec<u8>,
    /// The media type, secrets removed.
    pub content_type: String,
    /// Values removed from both (injected secrets and detector findings).
    pub redactions: u32,
    /// What the detectors found and did, for the audit event (never a
    /// value).
    pub findings: Vec<detect::Noted>,
}

/// What stage 8 looks for in one tool's answers besides the injected
/// secrets: the tool's `filters` and the policy's credential rules.
#[derive(Debug, Clone)]
pub struct Guards {
    /// The action on credentials.
    pub secrets: warden_shared::policy::Guard,
    /// The action on personal data.
    pub pii: warden_shared::policy::Guard,
    /// The policy's credential rules.
    pub rules: Arc<warden_shared::guard::secrets::Rules>,
    /// The action on prompt injection in the answer.
    pub injection: warden_shared::policy::OnInjection,
    /// The tool's name (for messages).
    pub tool: String,
}

pub use detect::Noted;

/// Stage 8 on an upstream's answer: every injected secret removed from the
/// body and the content type, then the detectors run over the body as the
/// tool's filters say (the classifier, when `ask` is given, between the
/// credential and personal-data pass and the injection pass).
pub async fn output(
    content: Vec<u8>,
    content_type: String,
    secrets: Vec<Secret>,
    guards: Guards,
    ask: Option<classifier::Ask<'_>>,
    call_id: &str,
) -> Result<Inspected, Refusal> {
    let big = content.len() > INLINE_BYTES;
    let refused = |reason, e: String| Refusal::at(super::Stage::InspectOutput, reason, e);
    let guards = Arc::new(guards);
    let g = Arc::clone(&guards);
    let first = move || {
        let (content, n) = redact_secrets(content, &secrets)
            .map_err(|e| refused(Reason::OutputUninspectable, e.to_string()))?;
        let (content_type, m) = redact_secrets(content_type.into_bytes(), &secrets)
            .map_err(|e| refused(Reason::OutputUninspectable, e.to_string()))?;
        let checked = detect::check(content, &g)?;
        Ok::<_, Refusal>((checked, content_type, n.saturating_add(m)))
    };
    let (checked, content_type, scrubbed) = blocking(big, first).await?;
    let (outside, failed) = injection::classify_output(
        ask,
        &guards.tool,
        guards.injection,
        &checked.content,
        call_id,
    )
    .await?;
    let then = move || {
        let (content, injected) = injection::output(
            &guards.tool,
            guards.injection,
            checked.content,
            outside.as_deref(),
        )?;
        let mut findings = checked.noted;
        findings.extend(failed);
        findings.extend(injected);
        Ok::<_, Refusal>(Inspected {
            content,
            content_type: String::from_utf8_lossy(&content_type).into_owned(),
            redactions: scrubbed.saturating_add(checked.replaced),
            findings,
        })
    };
    blocking(big, then).await
}

/// Runs `f` here, or on a blocking thread when the answer is `big`.
async fn blocking<T: Send + 'static>(
    big: bool,
    f: impl FnOnce() -> Result<T, Refusal> + Send + 'static,
) -> Result<T, Refusal> {
    if big {
        tokio::task::spawn_blocking(f).await.map_err(|_| {
            Refusal::at(
                super::Stage::InspectOutput,
                Reason::OutputUninspectable,
                "output inspection failed",
            )
        })?
    } else {
        f()
    }
}

/// Removes every injected secret value, in each encoding [`scrub`] knows,
/// from `content`; returns the content and how many values were removed,
/// or [`Exhausted`] when the answer could not be searched within the work
/// bound (it must then be refused, not passed on). One pass over the answer
/// finds every candidate for every secret ([`secrets`]).
pub fn redact_secrets(content: Vec<u8>, secrets: &[Secret]) -> Result<(Vec<u8>, u32), Exhausted> {
    match secrets::scrubber(secrets) {
        Some(s) => s.redact(content, REDACTED.as_bytes()),
        None => Ok((content, 0)),
    }
}

/// [`redact_secrets`] as issue 11 built it: every pattern of every secret
/// tried at each byte a match can start with. The reference the one-pass
/// search is tested and benchmarked against; the sidecar does not use it.
#[doc(hidden)]
pub fn redact_secrets_reference(
    content: Vec<u8>,
    secrets: &[Secret],
) -> Result<(Vec<u8>, u32), Exhausted> {
    let built: Vec<Arc<Vec<scrub::Pattern>>> = secrets
        .iter()
        .filter(|s| !s.expose().is_empty())
        .map(patterns_of)
        .collect();
    let patterns: Vec<&scrub::Pattern> = built.iter().flat_map(|p| p.iter()).collect();
    if patterns.is_empty() {
        return Ok((content, 0));
    }
    scrub::redact(content, &scrub::Reference(&patterns), REDACTED.as_bytes())
}

/// Most secret values whose patterns are kept.
const PATTERN_CACHE_MAX: usize = 256;

type PatternCache = HashMap<[u8; 32], Arc<Vec<scrub::Pattern>>>;

/// The patterns of a secret value, built once per value (for the
/// reference search): kept by the value's SHA-256, and the cache starts
/// over when full.
fn patterns_of(secret: &Secret) -> Arc<Vec<scrub::Pattern>> {
    static CACHE: OnceLock<Mutex<PatternCache>> = OnceLock::new();
    let cache = CACHE.get_or_init(Mutex::default);
    let mut key = [0u8; 32];
    key.copy_from_slice(
        ring::digest::digest(&ring::digest::SHA256, secret.expose().as_bytes()).as_ref(),
    );
    if let Some(p) = cache.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
        return Arc::clone(p);
    }
    let built = Arc::new(scrub::patterns(secret.expose()));
    let mut c = cache.lock().unwrap_or_else(|p| p.into_inner());
    if c.len() >= PATTERN_CACHE_MAX {
        c.clear();
    }
    c.insert(key, Arc::clone(&built));
    built
}

#[cfg(test)]
mod tests;
