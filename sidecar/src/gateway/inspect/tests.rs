//! Redaction of injected secrets, in every encoding the README lists.

use super::*;

/// The default filters (redact credentials and personal data), with the
/// built-in rules.
fn guards() -> Guards {
    Guards {
        secrets: warden_shared::policy::Guard::Redact,
        pii: warden_shared::policy::Guard::Redact,
        rules: Arc::new(warden_shared::guard::secrets::Rules::builtin().unwrap()),
        injection: warden_shared::policy::OnInjection::Mark,
        tool: "t".into(),
    }
}

/// The redaction, which must not run out of its bound on these answers.
fn redact_secrets(content: Vec<u8>, secrets: &[Secret]) -> (Vec<u8>, u32) {
    super::redact_secrets(content, secrets).unwrap()
}

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

/// Independent encoders, written here from the standards, as upstreams in
/// other languages would encode an echoed value.
mod encoders {
    use std::fmt::Write;

    /// JSON with every non-ASCII character as `\uXXXX` (Python's
    /// `json.dumps` default); `upper` for upper-case hex.
    pub(super) fn json_ascii(s: &str, upper: bool) -> String {
        let mut out = String::new();
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                c if c.is_ascii() && !c.is_ascii_control() => out.push(c),
                c => {
                    let mut b = [0u16; 2];
                    for u in c.encode_utf16(&mut b) {
                        if upper {
                            let _ = write!(out, "\\u{u:04X}");
                        } else {
                            let _ = write!(out, "\\u{u:04x}");
                        }
                    }
                }
            }
        }
        out
    }

    /// Percent-encoding of every byte outside `keep`, in `upper` or lower
    /// case hex; `plus` writes a space as `+` (HTML forms).
    pub(super) fn percent(s: &str, keep: &[u8], upper: bool, plus: bool) -> String {
        let mut out = String::new();
        for b in s.bytes() {
            if b.is_ascii_alphanumeric() || keep.contains(&b) {
                out.push(char::from(b));
            } else if plus && b == b' ' {
                out.push('+');
            } else if upper {
                let _ = write!(out, "%{b:02X}");
            } else {
                let _ = write!(out, "%{b:02x}");
            }
        }
        out
    }

    /// JavaScript's `encodeURIComponent`.
    pub(super) fn encode_uri_component(s: &str) -> String {
        percent(s, b"-_.!~*'()", true, false)
    }

    pub(super) fn hex(s: &str, upper: bool) -> String {
        s.bytes()
            .map(|b| {
                if upper {
                    format!("{b:02X}")
                } else {
                    format!("{b:02x}")
                }
            })
            .collect()
    }

    /// HTML escaping as Python's `html.escape` writes it, with every
    /// non-ASCII character as a decimal reference (`xmlcharrefreplace`).
    pub(super) fn html(s: &str) -> String {
        s.chars()
            .map(|c| match c {
                '&' => "&amp;".to_owned(),
                '<' => "&lt;".to_owned(),
                '>' => "&gt;".to_owned(),
                '"' => "&quot;".to_owned(),
                '\'' => "&#x27;".to_owned(),
                c if !c.is_ascii() => format!("&#{};", u32::from(c)),
                c => c.to_string(),
            })
            .collect()
    }
}

fn redacted_once(echoed: &str, secret: &str) {
    let (out, n) = redact_secrets(
        format!("{{\"echo\": \"{echoed}\"}} and {echoed}").into_bytes(),
        &[Secret::new(secret.into())],
    );
    let out = String::from_utf8(out).unwrap();
    assert_eq!(n, 2, "{echoed:?} in {out}");
    assert!(!out.contains(echoed), "{out}");
}

#[test]
fn the_encodings_outside_tests_found_are_removed() {
    let secret = "pässwörd/€!*'() 😀";
    for echoed in [
        encoders::json_ascii(secret, false),
        encoders::json_ascii(secret, true),
        encoders::percent(secret, b"-._~", false, false),
        encoders::encode_uri_component(secret),
        encoders::percent(secret, b"-._*", true, true),
        encoders::hex(secret, false),
        encoders::hex(secret, true),
        encoders::html(secret),
    ] {
        redacted_once(&echoed, secret);
    }
}

#[test]
fn base64_inside_escaped_json_is_found_by_decoding_the_string() {
    use base64::Engine;
    // A value whose base64 holds '/', echoed by an encoder that escapes
    // slashes (PHP's json_encode).
    let secret = "\u{ff}\u{ff}\u{ff}?key";
    let b64 = base64::engine::general_purpose::STANDARD.encode(secret);
    assert!(b64.contains('/'));
    let body = format!(
        r#"{{"b": "x {} y", "other": "a\/b"}}"#,
        b64.replace('/', "\\/")
    );
    let (out, n) = redact_secrets(body.into_bytes(), &[Secret::new(secret.into())]);
    let out = String::from_utf8(out).unwrap();
    assert_eq!(n, 1, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["b"], "x [REDACTED] y");
    assert!(
        out.ends_with(r#""other": "a\/b"}"#),
        "other strings untouched: {out}"
    );
}

#[test]
fn clean_answers_are_returned_byte_for_byte() {
    let body = br#"{"a": "caf\u00e9 \/ %41 &amp; 414243", "n": 1e400}"#.to_vec();
    let secrets = [Secret::new("zebra".into())];
    assert_eq!(redact_secrets(body.clone(), &secrets), (body, 0));
}

proptest::proptest! {
    #[test]
    fn any_secret_is_removed_in_every_listed_encoding(
        secret in "[a-zA-Z0-9 !\"#$%&'()*+,./:;<=>?@\\\\^_`{|}~éü中😀\n-]{1,24}",
        prefix in "[a-z ]{0,8}",
    ) {
        use base64::Engine;
        use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
        let json = serde_json::to_string(&secret).unwrap();
        for echoed in [
            secret.clone(),
            json[1..json.len() - 1].to_owned(),
            encoders::json_ascii(&secret, false),
            encoders::json_ascii(&secret, true),
            encoders::percent(&secret, b"-._~", false, false),
            encoders::encode_uri_component(&secret),
            encoders::percent(&secret, b"", true, true),
            encoders::hex(&secret, false),
            encoders::hex(&secret, true),
            encoders::html(&secret),
            STANDARD.encode(&secret),
            URL_SAFE_NO_PAD.encode(&secret),
        ] {
            let body = format!("{prefix}{echoed}{prefix}");
            let (out, n) = redact_secrets(body.into_bytes(), &[Secret::new(secret.clone())]);
            let out = String::from_utf8(out).unwrap();
            proptest::prop_assert!(n >= 1, "{:?} as {:?}: {}", secret, echoed, out);
            // The marker itself may hold the secret ("A" is in "[REDACTED]").
            proptest::prop_assert!(!out.replace(REDACTED, "").contains(&echoed));
        }
    }
}

#[test]
fn escapes_are_decoded_whatever_surrounds_them() {
    use base64::Engine;
    let secret = "\u{ff}\u{ff}\u{ff}?key";
    let b64 = base64::engine::general_purpose::STANDARD
        .encode(secret)
        .replace('/', "\\/");
    // A raw tab (invalid inside a JSON string), a lone surrogate, an
    // unpaired quote before it, or no JSON at all.
    for body in [
        format!("{{\"a\": \"x\t{b64}\"}}"),
        format!("{{\"a\": \"\\ud800 {b64}\"}}"),
        format!("\" unpaired {{\"a\": \"{b64}\"}}"),
        format!("plain text {b64} and \\q"),
    ] {
        let (out, n) = redact_secrets(body.clone().into_bytes(), &[Secret::new(secret.into())]);
        let out = String::from_utf8(out).unwrap();
        assert_eq!(n, 1, "{body} -> {out}");
        assert!(out.contains(REDACTED) && !out.contains(&b64[..12]), "{out}");
    }
}

#[test]
fn html_references_with_leading_zeros_are_decoded() {
    let secret = "it's<ok>";
    let body = "it&#039;s&#x003C;ok&#0062;";
    let (out, n) = redact_secrets(body.as_bytes().to_vec(), &[Secret::new(secret.into())]);
    assert_eq!((String::from_utf8(out).unwrap().as_str(), n), (REDACTED, 1));
}

#[test]
fn base64_inside_a_larger_blob_is_found_at_every_alignment() {
    use base64::Engine;
    let secret = "sk-live-0123456789abcdef";
    for engine in [
        base64::engine::general_purpose::STANDARD,
        base64::engine::general_purpose::URL_SAFE_NO_PAD,
    ] {
        for prefix in ["", "a", "ab", "abc"] {
            for suffix in ["", "\n", "xy"] {
                let blob = engine.encode(format!("{prefix}{secret}{suffix}"));
                let (out, n) =
                    redact_secrets(blob.clone().into_bytes(), &[Secret::new(secret.into())]);
                let out = String::from_utf8(out).unwrap();
                assert_eq!(n, 1, "{prefix:?} {suffix:?}: {blob} -> {out}");
                // What is left around the marker is at most the characters
                // that mix in the neighbouring bytes.
                assert!(out.len() <= REDACTED.len() + 4 * (prefix.len() + suffix.len()) / 3 + 6);
            }
        }
    }
}

#[test]
fn the_marker_is_never_searched_again() {
    let (out, n) = redact_secrets(b"E and E".to_vec(), &[Secret::new("E".into())]);
    assert_eq!(
        (String::from_utf8(out).unwrap(), n),
        (format!("{REDACTED} and {REDACTED}"), 2)
    );
}

#[test]
fn an_answer_built_to_exhaust_the_matcher_is_refused_quickly() {
    let secret = format!("{}b", "a".repeat(4096));
    let body = "a".repeat(1 << 17).into_bytes();
    let t = std::time::Instant::now();
    let r = super::redact_secrets(body, &[Secret::new(secret)]);
    assert_eq!(r, Err(Exhausted));
    assert!(
        t.elapsed() < std::time::Duration::from_secs(20),
        "{:?}",
        t.elapsed()
    );
    // An ordinary answer of the same size is searched in full.
    let secret = "sk-live-0123456789abcdef".to_owned();
    let body = "customer record, nothing secret; "
        .repeat(4_000)
        .into_bytes();
    assert_eq!(
        super::redact_secrets(body.clone(), &[Secret::new(secret)]),
        Ok((body, 0))
    );
}

#[tokio::test]
async fn an_answer_that_exhausts_the_bound_is_withheld_at_inspect_output() {
    let secret = Secret::new(format!("{}b", "a".repeat(4096)));
    // Large enough to be searched off the runtime, too.
    let body = "a".repeat(1 << 17).into_bytes();
    let d = output(body, "text/plain".into(), vec![secret], guards(), None, "c")
        .await
        .expect_err("withheld");
    assert_eq!(
        (d.stage, d.code(), d.reason),
        (
            Some(super::super::Stage::InspectOutput),
            tonic::Code::FailedPrecondition,
            warden_shared::refusal::Reason::OutputUninspectable
        )
    );
    // An ordinary answer goes through, its secret removed from the body
    // and the content type.
    let s = Secret::new("sk-live-0123456789".into());
    let seen = output(
        b"key sk-live-0123456789".to_vec(),
        "text/plain; k=sk-live-0123456789".into(),
        vec![s],
        guards(),
        None,
        "c",
    )
    .await
    .unwrap();
    assert_eq!(seen.redactions, 2);
    assert_eq!(seen.content, format!("key {REDACTED}").into_bytes());
    assert_eq!(seen.content_type, format!("text/plain; k={REDACTED}"));
}

/// A piece of a generated answer: text, or a secret in some encoding, whole
/// or cut short, with each character spelled its own way.
fn piece(secrets: &[String], kind: u8, which: usize, cut: usize, text: &str) -> String {
    use base64::Engine;
    use std::fmt::Write;
    let s = &secrets[which % secrets.len()];
    let whole = match kind {
        0 => return text.to_owned(),
        1 => s.clone(),
        2 => encoders::json_ascii(s, which.is_multiple_of(2)),
        3 => encoders::percent(s, b"-._~", which.is_multiple_of(2), which.is_multiple_of(3)),
        4 => encoders::hex(s, which.is_multiple_of(2)),
        5 => encoders::html(s),
        6 => base64::engine::general_purpose::STANDARD.encode(s),
        7 => base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{text}{s}")),
        // Every other character escaped, in mixed styles.
        _ => s.chars().enumerate().fold(String::new(), |mut o, (i, c)| {
            match (i + which) % 4 {
                0 => o.push(c),
                1 => {
                    let _ = write!(o, "\\u{:04X}", u32::from(c) & 0xffff);
                }
                2 => {
                    let _ = write!(o, "&#{};", u32::from(c));
                }
                _ => {
                    let _ = write!(o, "%{:02x}", u32::from(c) & 0xff);
                }
            }
            o
        }),
    };
    let keep = whole.len().saturating_sub(cut % 3);
    let mut end = keep;
    while !whole.is_char_boundary(end) {
        end -= 1;
    }
    whole[..end].to_owned()
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

    /// The one-pass search finds what the reference finds, on answers mixing
    /// text, escapes and every encoding of several secrets, whole or cut.
    #[test]
    fn one_pass_redaction_is_the_reference_redaction(
        secrets in proptest::collection::vec("[a-zA-Z0-9 \"&%\\\\/+=<>é中-]{1,12}", 1..5),
        pieces in proptest::collection::vec(
            (0u8..9, 0usize..8, 0usize..4, "[a-zA-Z0-9 \"&#;%\\\\u+/=<>é-]{0,10}"),
            0..12,
        ),
    ) {
        let body: String = pieces
            .iter()
            .map(|(k, w, c, t)| piece(&secrets, *k, *w, *c, t))
            .collect();
        let s: Vec<Secret> = secrets.iter().map(|v| Secret::new(v.clone())).collect();
        let reference = super::redact_secrets_reference(body.clone().into_bytes(), &s);
        let one_pass = super::redact_secrets(body.clone().into_bytes(), &s);
        // The reference spends steps where no match can start; the one
        // pass may finish where it ran out, never the other way round.
        if let Ok(r) = reference {
            proptest::prop_assert_eq!(one_pass, Ok(r), "{:?} in {:?}", secrets, body);
        }
    }
}

#[test]
fn the_same_secrets_in_another_order_share_nothing_wrong() {
    // Sets are keyed by their values in order; both orders redact alike.
    let a = [Secret::new("alpha-1".into()), Secret::new("beta-2".into())];
    let b = [Secret::new("beta-2".into()), Secret::new("alpha-1".into())];
    let body = b"x alpha-1 y beta-2 z".to_vec();
    assert_eq!(redact_secrets(body.clone(), &a), redact_secrets(body, &b));
    // A secret set with only empty values finds nothing.
    assert_eq!(
        redact_secrets(b"abc".to_vec(), &[Secret::new(String::new())]),
        (b"abc".to_vec(), 0)
    );
}

#[test]
fn patterns_and_matchers_never_print_the_secret() {
    let value = "s3cret-Value-4711";
    let shown = format!(
        "{:?} {:?}",
        scrub::patterns(value),
        secrets::Scrubber::new([value]).unwrap()
    );
    assert!(
        !shown.contains("s3cret") && !shown.contains("4711"),
        "{shown}"
    );
    let shortcuts: Vec<_> = scrub::patterns(value)
        .iter()
        .map(scrub::Pattern::shortcut)
        .collect();
    assert!(!format!("{shortcuts:?}").contains("s3cret"));
}
