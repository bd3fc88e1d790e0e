//! Built-in rules fire on each format and leave look-alikes alone; gitleaks
//! files load, fire, and are refused with the rule's name when malformed.

use super::*;

fn found(rules: &Rules, text: &str) -> Vec<(String, String)> {
    rules
        .scan(text)
        .into_iter()
        .map(|f| (f.kind.label().to_owned(), text[f.start..f.end].to_owned()))
        .collect()
}

/// A value of `n` characters from a fixed alphabet, spread enough to pass
/// entropy floors (built at run time: no credential-shaped literal in the
/// source).
fn random(n: usize, alphabet: &str) -> String {
    let a: Vec<char> = alphabet.chars().collect();
    (0..n).map(|i| a[(i * 7 + i / 3) % a.len()]).collect()
}

const ALNUM: &str = "aB3dE5fG7hJ9kL2mN4pQ6rS8tU0vW1xY";

#[test]
fn the_builtin_rules_load_and_find_each_format() {
    let rules = Rules::builtin().unwrap();
    assert!(rules.len() >= 18);
    let upper = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let cases = [
        ("aws-access-key-id", format!("AKIA{}", random(16, upper))),
        ("github-token", format!("ghp_{}", random(36, ALNUM))),
        ("gitlab-token", format!("glpat-{}", random(20, ALNUM))),
        ("slack-token", format!("xoxb-1234-{}", random(24, ALNUM))),
        ("stripe-key", format!("sk_live_{}", random(24, ALNUM))),
        ("google-api-key", format!("AIza{}", random(35, ALNUM))),
        ("npm-token", format!("npm_{}", random(36, ALNUM))),
        (
            "jwt",
            format!(
                "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.{}",
                random(43, ALNUM)
            ),
        ),
    ];
    for (id, value) in &cases {
        let text = format!("config: value {value} end");
        assert_eq!(
            found(&rules, &text),
            vec![((*id).to_owned(), value.clone())],
            "{id}"
        );
    }
    let pem = format!(
        "-----BEGIN RSA PRIVATE KEY-----\n{}\n-----END RSA PRIVATE KEY-----",
        random(64, ALNUM)
    );
    assert_eq!(
        found(&rules, &format!("key:\n{pem}\n"))[0],
        ("private-key".to_owned(), pem)
    );
    let pw = random(16, ALNUM);
    let url = format!("postgres://app:{pw}@db.internal:5432/app");
    assert_eq!(
        found(&rules, &url),
        vec![("connection-string-password".to_owned(), pw)]
    );
    let secret = random(32, ALNUM);
    assert_eq!(
        found(&rules, &format!("{{\"client_secret\": \"{secret}\"}}")),
        vec![("generic-secret-assignment".to_owned(), secret)]
    );
}

#[test]
fn look_alikes_are_left_alone() {
    let rules = Rules::builtin().unwrap();
    for text in [
        "the token is valid; password: changeme; api_key = ${API_KEY}",
        "postgres://user:password@localhost/db and https://user:<secret>@example.com",
        "secret = aaaaaaaaaaaaaaaaaaaa (low entropy)",
        "AKIAIOSFODNN7EXAMPL is too short, ghp_short too",
        "sha256: e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "a sentence about a private key and a jwt, with no key in it",
    ] {
        assert_eq!(found(&rules, text), vec![], "{text}");
    }
}

#[test]
fn a_gitleaks_file_loads_and_fires() {
    let file = r#"
title = "team rules"

[[rules]]
id = "acme-token"
description = "ACME internal token"
regex = '''acme_([a-z0-9]{24})'''
secretGroup = 1
entropy = 3.0
keywords = ["acme_"]
tags = ["internal"]

[[rules.allowlists]]
stopwords = ["test"]

[[rules]]
id = "path-only"
path = '''\.pem$'''

[allowlist]
regexes = ['''^acme_0+$''']
"#;
    let rules = Rules::from_gitleaks_toml(file).unwrap();
    assert_eq!(rules.len(), 1);
    let value = random(24, "abcdefghijklmnopqrstuvwxyz0123456789");
    assert_eq!(
        found(&rules, &format!("x acme_{value} y")),
        vec![("acme-token".to_owned(), value)]
    );
    // Keyword absent, stopword inside, entropy too low.
    assert!(found(&rules, "ACME token elsewhere").is_empty());
    assert!(found(&rules, "acme_abcdtestefghijklmnopqrst").is_empty());
    assert!(found(&rules, "acme_aaaaaaaaaaaaaaaaaaaaaaaa").is_empty());
    // Extending the built-in set keeps both.
    let all = Rules::builtin().unwrap().extend(rules);
    assert!(all.len() > 18);
}

#[test]
fn malformed_rule_files_are_refused_naming_the_rule() {
    let bad = |text: &str| Rules::from_gitleaks_toml(text).unwrap_err();
    assert!(matches!(bad("[[rules]\nid="), Error::Parse(_)));
    assert!(matches!(
        bad("[[rules]]\nid = \"broken\"\nregex = '''([a-z'''\n"),
        Error::Rule { rule, .. } if rule == "broken"
    ));
    let e = bad("[[rules]]\nid = \"broken\"\nregex = '''([a-z'''\n").to_string();
    assert!(e.starts_with("rule broken: regex does not compile"), "{e}");
    let e = bad("[[rules]]\nregex = 'x'\n").to_string();
    assert_eq!(e, "rule #1: has no id");
    let e = bad("[[rules]]\nid = \"g\"\nregex = 'a(b)'\nsecretGroup = 2\n").to_string();
    assert!(e.starts_with("rule g: secretGroup 2"), "{e}");
    let e =
        bad("[[rules]]\nid = \"d\"\nregex = 'a'\n[[rules]]\nid = \"d\"\nregex = 'b'\n").to_string();
    assert_eq!(e, "rule d: the id is used twice");
    let e = bad("[[rules]]\nid = \"a\"\nregex = 'a'\n[[rules.allowlists]]\nregexes = ['(']\n")
        .to_string();
    assert!(
        e.starts_with("rule a: allowlist regex does not compile"),
        "{e}"
    );
    let e = bad("[[rules]]\nid = \"n\"\n").to_string();
    assert_eq!(e, "rule n: has no regex");
}

#[test]
fn entropy_is_in_bits_per_byte() {
    assert_eq!(entropy(b""), 0.0);
    assert_eq!(entropy(b"aaaa"), 0.0);
    assert!((entropy(b"abcd") - 2.0).abs() < 1e-9);
}

mod keywords_found_in_one_search {
    use proptest::prelude::*;

    use super::super::Rules;

    /// Keywords that overlap, nest and share prefixes, in any case.
    const RULES: &str = r#"
[[rules]]
id = "a"
regex = '''sk_live_[0-9]{4}'''
keywords = ["sk_live_"]
[[rules]]
id = "b"
regex = '''sk_[0-9]{4}'''
keywords = ["sk_"]
[[rules]]
id = "c"
regex = '''key=[0-9]{4}'''
keywords = ["KEY", "ey="]
[[rules]]
id = "d"
regex = '''live[0-9]{4}'''
keywords = ["live"]
"#;

    const PIECES: &[&str] = &[
        "sk_", "SK_", "live_", "LiVe", "k", "e", "y", "=", "key=", "1234", "_", " ", "s",
    ];

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1024))]
        #[test]
        fn every_rule_whose_keyword_is_there_runs(v in proptest::collection::vec(proptest::sample::select(PIECES), 0..24)) {
            let t = v.concat();
            let rules = Rules::from_gitleaks_toml(RULES).unwrap();
            let lower = t.to_ascii_lowercase();
            let mut fast = vec![false; 4];
            rules.keywords.as_ref().unwrap().mark(lower.as_bytes(), &mut fast);
            let slow: Vec<bool> = rules
                .rules
                .iter()
                .map(|r| r.keywords.iter().any(|k| lower.contains(k.as_str())))
                .collect();
            prop_assert_eq!(fast, slow, "{:?}", t);
        }
    }
}
