//! Credentials in text: built-in rules for the common formats, and rule
//! files in the gitleaks TOML format (`[[rules]]` with `id`, `regex`,
//! `secretGroup`, `entropy`, `keywords`, per-rule `allowlist` or
//! `[[rules.allowlists]]`, and a global `[allowlist]`), so teams load the
//! files they already maintain.
//!
//! A rule runs only when the text holds one of its keywords (any case);
//! its match, or the `secretGroup` of it, is the secret, which must reach
//! the rule's Shannon entropy (bits per byte) and escape every allowlist.

use std::collections::HashSet;

use regex::bytes::{Regex, RegexBuilder};
use serde::Deserialize;

use super::{Finding, Kind};

/// Largest compiled size of one rule's pattern.
const REGEX_SIZE_LIMIT: usize = 1 << 20;
/// Most rules in a rule set.
pub const MAX_RULES: usize = 1000;
/// Largest rule file, bytes.
pub const MAX_RULE_FILE_BYTES: usize = 1 << 20;

/// Why a rule file was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// Not TOML, or not the gitleaks shape.
    #[error("the rule file does not parse: {0}")]
    Parse(String),
    /// A rule is unusable; names the rule (its id, or its position).
    #[error("rule {rule}: {detail}")]
    Rule {
        /// The rule's id, or `#N` when it has none.
        rule: String,
        /// What is wrong.
        detail: String,
    },
    /// Over [`MAX_RULES`] rules or [`MAX_RULE_FILE_BYTES`].
    #[error("the rule file is too large: {0}")]
    TooLarge(String),
}

/// The gitleaks file, as far as Warden reads it.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct File {
    #[serde(default)]
    rules: Vec<RawRule>,
    #[serde(default)]
    allowlist: Option<RawAllowlist>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawRule {
    id: Option<String>,
    regex: Option<String>,
    #[serde(default)]
    secret_group: Option<usize>,
    #[serde(default)]
    entropy: Option<f64>,
    #[serde(default)]
    keywords: Vec<String>,
    #[serde(default)]
    allowlist: Option<RawAllowlist>,
    #[serde(default)]
    allowlists: Vec<RawAllowlist>,
    /// A rule on file paths only has nothing to find in a tool's output.
    #[serde(default)]
    path: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct RawAllowlist {
    #[serde(default)]
    regexes: Vec<String>,
    #[serde(default)]
    stopwords: Vec<String>,
    #[serde(default)]
    regex_target: Option<String>,
}

/// Where an allowlist regex looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Secret,
    Match,
}

#[derive(Debug)]
struct Allowlist {
    regexes: Vec<Regex>,
    stopwords: Vec<String>,
    target: Target,
}

impl Allowlist {
    fn compile(raw: &RawAllowlist, rule: &str) -> Result<Self, Error> {
        let target = match raw.regex_target.as_deref() {
            None | Some("secret") => Target::Secret,
            Some("match" | "line") => Target::Match,
            Some(other) => {
                return Err(Error::Rule {
                    rule: rule.to_owned(),
                    detail: format!("allowlist regexTarget {other:?} is not secret, match or line"),
                });
            }
        };
        let regexes = raw
            .regexes
            .iter()
            .map(|r| compile(r, rule, "allowlist regex"))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            regexes,
            stopwords: raw
                .stopwords
                .iter()
                .map(|s| s.to_ascii_lowercase())
                .collect(),
            target,
        })
    }

    fn allows(&self, secret: &[u8], whole: &[u8]) -> bool {
        let lower = secret.to_ascii_lowercase();
        if self
            .stopwords
            .iter()
            .any(|w| memchr::memmem::find(&lower, w.as_bytes()).is_some())
        {
            return true;
        }
        let text = match self.target {
            Target::Secret => secret,
            Target::Match => whole,
        };
        self.regexes.iter().any(|r| r.is_match(text))
    }
}

fn compile(pattern: &str, rule: &str, what: &str) -> Result<Regex, Error> {
    RegexBuilder::new(pattern)
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|e| Error::Rule {
            rule: rule.to_owned(),
            detail: format!("{what} does not compile: {e}"),
        })
}

/// One detection rule.
#[derive(Debug)]
pub struct Rule {
    id: String,
    regex: Regex,
    secret_group: Option<usize>,
    entropy: Option<f64>,
    /// Lower case; empty: always runs.
    keywords: Vec<String>,
    allowlists: Vec<Allowlist>,
}

/// A set of rules with the global allowlist.
#[derive(Debug)]
pub struct Rules {
    rules: Vec<Rule>,
    global: Option<Allowlist>,
    /// Every rule's keywords, found in one search.
    keywords: Option<Keywords>,
}

/// The rules' keywords as one leftmost search over every keyword (a
/// literal set the regex engine runs with its vectorised prefilter), and
/// each keyword with its rule.
#[derive(Debug)]
struct Keywords {
    any: regex_automata::meta::Regex,
    each: Vec<(Vec<u8>, usize)>,
}

impl Keywords {
    fn of(rules: &[Rule]) -> Option<Self> {
        let each: Vec<(Vec<u8>, usize)> = rules
            .iter()
            .enumerate()
            .flat_map(|(i, r)| r.keywords.iter().map(move |k| (k.as_bytes().to_vec(), i)))
            .filter(|(k, _)| !k.is_empty())
            .collect();
        let escaped: Vec<String> = each
            .iter()
            .map(|(k, _)| regex::escape(&String::from_utf8_lossy(k)))
            .collect();
        let any = regex_automata::meta::Regex::builder()
            .syntax(
                regex_automata::util::syntax::Config::new()
                    .unicode(false)
                    .utf8(false),
            )
            .build_many(&escaped)
            .ok()?;
        Some(Self { any, each })
    }

    /// Marks in `on` every rule a keyword of which `lower` holds: each
    /// place where some keyword starts is found by a leftmost search
    /// resumed one byte after the last, and every keyword is compared
    /// there, so keywords inside or overlapping others are not missed.
    fn mark(&self, lower: &[u8], on: &mut [bool]) {
        let mut from = 0;
        while from <= lower.len() {
            let Some(m) = self
                .any
                .search(&regex_automata::Input::new(lower).range(from..))
            else {
                break;
            };
            let s = m.start();
            for (k, r) in &self.each {
                if !on[*r] && lower[s..].starts_with(k) {
                    on[*r] = true;
                }
            }
            from = s + 1;
        }
    }
}

/// Shannon entropy of `b`, bits per byte.
pub fn entropy(b: &[u8]) -> f64 {
    if b.is_empty() {
        return 0.0;
    }
    let mut counts = [0u32; 256];
    for &x in b {
        counts[usize::from(x)] += 1;
    }
    let n = b.len() as f64;
    counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = f64::from(c) / n;
            -p * p.log2()
        })
        .sum()
}

impl Rules {
    /// Parses a rule file in the gitleaks TOML format.
    pub fn from_gitleaks_toml(text: &str) -> Result<Self, Error> {
        if text.len() > MAX_RULE_FILE_BYTES {
            return Err(Error::TooLarge(format!(
                "{} bytes, at most {MAX_RULE_FILE_BYTES}",
                text.len()
            )));
        }
        let file: File = toml::from_str(text).map_err(|e| Error::Parse(e.to_string()))?;
        if file.rules.len() > MAX_RULES {
            return Err(Error::TooLarge(format!(
                "{} rules, at most {MAX_RULES}",
                file.rules.len()
            )));
        }
        let mut seen = HashSet::new();
        let mut rules = Vec::with_capacity(file.rules.len());
        for (n, raw) in file.rules.iter().enumerate() {
            let name = raw.id.clone().unwrap_or_else(|| format!("#{}", n + 1));
            let fail = |detail: String| Error::Rule {
                rule: name.clone(),
                detail,
            };
            let Some(id) = raw.id.clone().filter(|i| !i.trim().is_empty()) else {
                return Err(fail("has no id".into()));
            };
            if !seen.insert(id.clone()) {
                return Err(fail("the id is used twice".into()));
            }
            let Some(pattern) = raw.regex.as_deref() else {
                if raw.path.is_some() {
                    // A path-only rule: nothing to find in text.
                    continue;
                }
                return Err(fail("has no regex".into()));
            };
            let regex = compile(pattern, &id, "regex")?;
            if let Some(g) = raw.secret_group
                && g >= regex.captures_len()
            {
                return Err(fail(format!(
                    "secretGroup {g} is beyond the regex's {} groups",
                    regex.captures_len() - 1
                )));
            }
            if let Some(e) = raw.entropy
                && !(0.0..=8.0).contains(&e)
            {
                return Err(fail(format!("entropy {e} is not between 0 and 8")));
            }
            let allowlists = raw
                .allowlist
                .iter()
                .chain(&raw.allowlists)
                .map(|a| Allowlist::compile(a, &id))
                .collect::<Result<_, _>>()?;
            rules.push(Rule {
                id,
                regex,
                secret_group: raw.secret_group.filter(|g| *g > 0),
                entropy: raw.entropy,
                keywords: raw
                    .keywords
                    .iter()
                    .map(|k| k.to_ascii_lowercase())
                    .collect(),
                allowlists,
            });
        }
        let global = file
            .allowlist
            .as_ref()
            .map(|a| Allowlist::compile(a, "[allowlist]"))
            .transpose()?;
        let keywords = Keywords::of(&rules);
        Ok(Self {
            rules,
            global,
            keywords,
        })
    }

    /// The built-in rules (README: *Secret detection*); an error is a
    /// defect of this build (the file is tested).
    pub fn builtin() -> Result<Self, Error> {
        Self::from_gitleaks_toml(BUILTIN)
    }

    /// These rules and `other`'s (ids of `other` replace the same ids here).
    pub fn extend(mut self, other: Self) -> Self {
        let ids: HashSet<&str> = other.rules.iter().map(|r| r.id.as_str()).collect();
        self.rules.retain(|r| !ids.contains(r.id.as_str()));
        self.rules.extend(other.rules);
        if self.global.is_none() {
            self.global = other.global;
        }
        self.keywords = Keywords::of(&self.rules);
        self
    }

    /// How many rules.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Every credential in `text`, in order, not overlapping.
    pub fn scan(&self, text: &str) -> Vec<Finding> {
        let h = text.as_bytes();
        let lower = h.to_ascii_lowercase();
        // Which rules run: those without keywords, and those whose
        // keywords the text holds (any case).
        let mut on: Vec<bool> = self.rules.iter().map(|r| r.keywords.is_empty()).collect();
        match &self.keywords {
            Some(k) => k.mark(&lower, &mut on),
            None => {
                for (r, o) in self.rules.iter().zip(on.iter_mut()) {
                    *o = *o
                        || r.keywords
                            .iter()
                            .any(|k| memchr::memmem::find(&lower, k.as_bytes()).is_some());
                }
            }
        }
        let mut found = Vec::new();
        for (rule, _) in self.rules.iter().zip(&on).filter(|(_, o)| **o) {
            for caps in rule.regex.captures_iter(h) {
                let Some(whole) = caps.get(0) else { continue };
                let secret = match rule.secret_group {
                    Some(g) => match caps.get(g) {
                        Some(m) => m,
                        None => continue,
                    },
                    None => whole,
                };
                if secret.is_empty() {
                    continue;
                }
                if rule
                    .entropy
                    .is_some_and(|min| entropy(secret.as_bytes()) < min)
                {
                    continue;
                }
                let allowed = rule
                    .allowlists
                    .iter()
                    .chain(&self.global)
                    .any(|a| a.allows(secret.as_bytes(), whole.as_bytes()));
                if !allowed {
                    found.push(Finding::new(
                        Kind::Secret(rule.id.clone()),
                        secret.start(),
                        secret.end(),
                    ));
                }
            }
        }
        super::settle(found)
    }
}

/// The built-in rules, in the gitleaks format (written for Warden from the
/// credential formats the providers document).
pub const BUILTIN: &str = include_str!("builtin-secrets.toml");

#[cfg(test)]
mod tests;
