//! The four actions on an answer; JSON stays JSON; findings are noted
//! without values.

use std::sync::Arc;

use warden_shared::guard::secrets::Rules;
use warden_shared::policy::Guard;

use super::*;

fn guards(secrets: Guard, pii: Guard) -> Guards {
    Guards {
        secrets,
        pii,
        rules: Arc::new(Rules::builtin().unwrap()),
        injection: warden_shared::policy::OnInjection::Mark,
        tool: "t".into(),
    }
}

fn token() -> String {
    // Built at run time: no credential-shaped literal in the source.
    format!("ghp_{}", "aB3dE5fG7hJ9kL2mN4pQ6rS8tU0vW1xYz9Q8")
}

#[test]
fn json_answers_are_rewritten_inside_their_strings_and_stay_json() {
    let body = serde_json::json!({
        "customer": {"email": "jane@example.com", "note": "call \"+44 20 7946 0958\""},
        "items": [1, "key ".to_owned() + &token()],
        "a/b": "4111 1111 1111 1111",
    });
    let raw = serde_json::to_vec(&body).unwrap();
    let c = check(raw, &guards(Guard::Redact, Guard::Redact)).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&c.content).expect("still JSON");
    assert_eq!(v["customer"]["email"], "[REDACTED:email]");
    assert_eq!(v["customer"]["note"], "call \"[REDACTED:phone]\"");
    assert_eq!(v["items"][1], "key [REDACTED:github-token]");
    assert_eq!(v["a/b"], "[REDACTED:card]");
    assert_eq!(c.replaced, 4);
    let lines: Vec<String> = c.noted.iter().map(Noted::line).collect();
    assert!(
        lines.contains(&"pii.email@/customer/email[0..16]:redact".to_owned()),
        "{lines:?}"
    );
    assert!(
        lines.contains(&"secret:github-token@/items/1[4..44]:redact".to_owned()),
        "{lines:?}"
    );
    assert!(
        lines.contains(&"pii.card@/a~1b[0..19]:redact".to_owned()),
        "{lines:?}"
    );
    // Never a value.
    assert!(!lines.concat().contains("jane") && !lines.concat().contains("ghp_"));
}

#[test]
fn mask_keeps_the_last_four_and_off_leaves_it() {
    let text = b"card 4111 1111 1111 1111, mail a@b.io".to_vec();
    let c = check(text.clone(), &guards(Guard::Redact, Guard::Mask)).unwrap();
    assert_eq!(
        String::from_utf8(c.content).unwrap(),
        "card **** **** **** 1111, mail *@*.**"
    );
    let c = check(text.clone(), &guards(Guard::Redact, Guard::Off)).unwrap();
    assert_eq!(c.content, text);
    assert!(c.noted.is_empty());
}

#[test]
fn block_withholds_the_answer_naming_the_signal_not_the_value() {
    let text = format!("here: {}", token()).into_bytes();
    let d = check(text.clone(), &guards(Guard::Block, Guard::Redact)).unwrap_err();
    assert_eq!(d.reason, Reason::OutputBlocked);
    assert_eq!(d.stage, Some(Stage::InspectOutput));
    assert!(
        d.message.contains("secret:github-token") && !d.message.contains("ghp_"),
        "{}",
        d.message
    );
    // PII blocked, credentials off.
    let d = check(
        b"ssn 123-45-6789".to_vec(),
        &guards(Guard::Off, Guard::Block),
    )
    .unwrap_err();
    assert_eq!(d.reason, Reason::OutputBlocked);
    assert!(check(text, &guards(Guard::Off, Guard::Block)).is_ok());
}

#[test]
fn clean_and_binary_answers_pass_unchanged() {
    let clean = br#"{"ok": true, "n": 5, "text": "nothing personal here"}"#.to_vec();
    let c = check(clean.clone(), &guards(Guard::Redact, Guard::Redact)).unwrap();
    assert_eq!((c.content, c.replaced), (clean, 0));
    let binary = vec![0xff, 0xfe, b'a', b'@', b'b', b'.', b'i', b'o'];
    let c = check(binary.clone(), &guards(Guard::Redact, Guard::Redact)).unwrap();
    assert_eq!(c.content, binary);
}
