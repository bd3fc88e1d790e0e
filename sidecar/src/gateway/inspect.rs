//! Stages 3 and 8: inspection of what goes in and what comes out.
//!
//! Input: prompt-injection detection on argument strings is a later issue;
//! [`InputInspector`] is the seam it plugs into, and [`PassThrough`] is what
//! runs until then. It refuses nothing; `Authorize`'s `checks` still list
//! the stage as passed (the README names it a seam).
//!
//! Output: every secret value the sidecar injected into this call is
//! removed from what the upstream returned, as raw text and in its JSON-
//! escaped form, so that an upstream echoing a header back cannot hand the
//! agent a credential. (Pattern-based secret and PII redaction is a later
//! issue; it plugs in beside this.)

use super::Denial;
use super::catalog::ToolEntry;
use super::execute::secrets::Secret;

/// What replaces a redacted value.
pub const REDACTED: &str = "[REDACTED]";

/// Inspects a call's arguments before authorization.
pub trait InputInspector: Send + Sync + std::fmt::Debug {
    /// Refuses arguments that carry an attack.
    fn inspect(&self, tool: &ToolEntry, args: &serde_json::Value) -> Result<(), Denial>;
}

/// Refuses nothing (until injection detection lands).
#[derive(Debug, Default, Clone, Copy)]
pub struct PassThrough;

impl InputInspector for PassThrough {
    fn inspect(&self, _tool: &ToolEntry, _args: &serde_json::Value) -> Result<(), Denial> {
        Ok(())
    }
}

fn replace_all(haystack: &[u8], needle: &[u8], with: &[u8]) -> Option<(Vec<u8>, u32)> {
    if needle.is_empty() || haystack.len() < needle.len() {
        return None;
    }
    let mut out = Vec::with_capacity(haystack.len());
    let (mut i, mut n) = (0, 0u32);
    while i + needle.len() <= haystack.len() {
        if &haystack[i..i + needle.len()] == needle {
            out.extend_from_slice(with);
            i += needle.len();
            n += 1;
        } else {
            out.push(haystack[i]);
            i += 1;
        }
    }
    out.extend_from_slice(&haystack[i..]);
    (n > 0).then_some((out, n))
}

/// The forms a secret may take in an answer: as sent, JSON-escaped (also
/// with `\/` and with `<`, `>`, `&` as `\u00XX`, as Go and PHP encoders
/// write them), base64 (standard and URL-safe, with or without padding) and
/// percent-encoded. A partial echo is not caught.
fn forms(secret: &str) -> Vec<Vec<u8>> {
    use base64::Engine;
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    let json = serde_json::to_string(secret).unwrap_or_default();
    let json = json
        .strip_prefix('"')
        .and_then(|j| j.strip_suffix('"'))
        .unwrap_or_default()
        .to_owned();
    let go = json
        .replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026");
    // The same encoding the sidecar uses to inject secrets into URLs.
    let mut percent = String::new();
    crate::gateway::execute::http::encode(secret, &mut percent);
    let raw = secret.as_bytes();
    let mut out: Vec<Vec<u8>> = vec![
        raw.to_vec(),
        json.clone().into_bytes(),
        json.replace('/', "\\/").into_bytes(),
        go.replace('/', "\\/").into_bytes(),
        go.into_bytes(),
        percent.into_bytes(),
        STANDARD.encode(raw).into_bytes(),
        STANDARD_NO_PAD.encode(raw).into_bytes(),
        URL_SAFE.encode(raw).into_bytes(),
        URL_SAFE_NO_PAD.encode(raw).into_bytes(),
    ];
    // Longest first, so that a longer form is not left half-replaced.
    out.sort_by_key(|f| std::cmp::Reverse(f.len()));
    out.dedup();
    out.retain(|f| !f.is_empty());
    out
}

/// Removes every injected secret value, in each of its [`forms`], from
/// `content`; returns the content and how many values were removed.
pub fn redact_secrets(mut content: Vec<u8>, secrets: &[Secret]) -> (Vec<u8>, u32) {
    let mut total = 0;
    for s in secrets {
        for f in forms(s.expose()) {
            if let Some((out, n)) = replace_all(&content, &f, REDACTED.as_bytes()) {
                content = out;
                total += n;
            }
        }
    }
    (content, total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn injected_secrets_are_removed_raw_and_json_escaped() {
        let secrets = [Secret::new("s3cr\"et".into()), Secret::new("tok".into())];
        let body = br#"{"echo": "Bearer s3cr\"et", "raw": s3cr"et, "t": "tok tok"}"#.to_vec();
        let (out, n) = redact_secrets(body, &secrets);
        let out = String::from_utf8(out).unwrap();
        assert_eq!(n, 4, "{out}");
        assert!(!out.contains("s3cr") && !out.contains("tok"), "{out}");
        assert_eq!(
            redact_secrets(b"clean".to_vec(), &secrets),
            (b"clean".to_vec(), 0)
        );
        // Encoded forms.
        let key = [Secret::new("k/ey&<1>?".into())];
        let b64 = {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD.encode("k/ey&<1>?")
        };
        for echoed in [
            r#"{"a":"k\/ey\u0026\u003c1\u003e?"}"#.to_owned(),
            "k%2Fey%26%3C1%3E%3F".to_owned(),
            b64,
        ] {
            let (out, n) = redact_secrets(echoed.clone().into_bytes(), &key);
            assert_eq!(n, 1, "{echoed}");
            assert!(String::from_utf8(out).unwrap().contains(REDACTED));
        }
    }
}
