//! Measuring the detectors on a labelled corpus: JSON lines of
//! `{"family": "injection.override" | "secret.github" | "pii.email" | …,
//! "label": true|false, "text": "…"}`, `label` saying whether the text
//! holds what its family names. `injection.*` rows are judged by the
//! injection verdict, `secret.*` by the built-in credential rules (any
//! finding), `pii.<kind>` by a finding of that kind.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::{Kind, injection, pii, secrets::Rules};

/// One labelled text.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sample {
    /// `injection.<signal>`, `injection.benign`, `secret.<kind>`,
    /// `pii.<kind>`.
    pub family: String,
    /// Whether the text holds what the family names.
    pub label: bool,
    /// The text.
    pub text: String,
}

/// Confusion counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Positives found.
    pub tp: u32,
    /// Negatives flagged.
    pub fp: u32,
    /// Negatives left alone.
    pub tn: u32,
    /// Positives missed.
    pub fn_: u32,
}

impl Counts {
    fn add(&mut self, label: bool, said: bool) {
        match (label, said) {
            (true, true) => self.tp += 1,
            (false, true) => self.fp += 1,
            (false, false) => self.tn += 1,
            (true, false) => self.fn_ += 1,
        }
    }

    fn ratio(a: u32, b: u32) -> Option<f64> {
        (a + b > 0).then(|| f64::from(a) / f64::from(a + b))
    }

    /// TP / (TP + FP).
    pub fn precision(&self) -> Option<f64> {
        Self::ratio(self.tp, self.fp)
    }

    /// TP / (TP + FN).
    pub fn recall(&self) -> Option<f64> {
        Self::ratio(self.tp, self.fn_)
    }

    /// FP / (FP + TN).
    pub fn false_positive_rate(&self) -> Option<f64> {
        Self::ratio(self.fp, self.tn)
    }
}

/// Counts per family and per group (`injection`, `secret`, `pii`).
#[derive(Debug, Default)]
pub struct Report {
    /// Per family.
    pub families: BTreeMap<String, Counts>,
    /// Per group.
    pub groups: BTreeMap<String, Counts>,
}

/// Why a corpus could not be read.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A line is not a sample.
    #[error("line {line}: {detail}")]
    Line {
        /// 1-based.
        line: usize,
        /// What is wrong.
        detail: String,
    },
    /// The built-in rules do not load.
    #[error("{0}")]
    Rules(#[from] super::secrets::Error),
}

/// Parses a corpus (JSON lines; blank lines skipped).
pub fn parse(text: &str) -> Result<Vec<Sample>, Error> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| Error::Line {
                line: i + 1,
                detail: e.to_string(),
            })
        })
        .collect()
}

fn pii_kind(name: &str) -> Option<Kind> {
    Some(match name {
        "email" => Kind::Email,
        "phone" => Kind::Phone,
        "card" => Kind::Card,
        "iban" => Kind::Iban,
        "ssn" => Kind::Ssn,
        "ip" => Kind::Ip,
        _ => return None,
    })
}

/// Runs the detectors over `samples`.
pub fn evaluate(samples: &[Sample]) -> Result<Report, Error> {
    let rules = Rules::builtin()?;
    let mut report = Report::default();
    for (i, s) in samples.iter().enumerate() {
        let (group, rest) = s.family.split_once('.').unwrap_or((s.family.as_str(), ""));
        let said = match group {
            "injection" => injection::scan(&s.text).injection(),
            "secret" => !rules.scan(&s.text).is_empty(),
            "pii" => {
                let kind = pii_kind(rest).ok_or_else(|| Error::Line {
                    line: i + 1,
                    detail: format!("unknown family {:?}", s.family),
                })?;
                pii::scan(&s.text).iter().any(|f| f.kind == kind)
            }
            _ => {
                return Err(Error::Line {
                    line: i + 1,
                    detail: format!("unknown family {:?}", s.family),
                });
            }
        };
        report
            .families
            .entry(s.family.clone())
            .or_default()
            .add(s.label, said);
        report
            .groups
            .entry(group.to_owned())
            .or_default()
            .add(s.label, said);
    }
    Ok(report)
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let pct =
            |x: Option<f64>| x.map_or_else(|| "—".to_owned(), |v| format!("{:.1}%", v * 100.0));
        writeln!(
            f,
            "{:<26} {:>5} {:>5} {:>5} {:>5}  {:>9} {:>7} {:>7}",
            "family", "TP", "FN", "FP", "TN", "precision", "recall", "FPR"
        )?;
        let mut row = |name: &str, c: &Counts| {
            writeln!(
                f,
                "{:<26} {:>5} {:>5} {:>5} {:>5}  {:>9} {:>7} {:>7}",
                name,
                c.tp,
                c.fn_,
                c.fp,
                c.tn,
                pct(c.precision()),
                pct(c.recall()),
                pct(c.false_positive_rate())
            )
        };
        for (name, c) in &self.families {
            row(name, c)?;
        }
        for (name, c) in &self.groups {
            row(&format!("{name} (all)"), c)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CORPUS: &str = include_str!("../../../tests/corpus/guard/corpus.jsonl");

    #[test]
    fn the_corpus_meets_the_targets() {
        let report = evaluate(&parse(CORPUS).unwrap()).unwrap();
        let g = |n: &str| report.groups[n];
        let injection = g("injection");
        let secret = g("secret");
        assert!(injection.recall().unwrap() >= 0.90, "{report}");
        assert!(injection.false_positive_rate().unwrap() <= 0.05, "{report}");
        assert!(secret.recall().unwrap() >= 0.95, "{report}");
        assert!(secret.false_positive_rate().unwrap() <= 0.01, "{report}");
        assert!(g("pii").recall().unwrap() >= 0.95, "{report}");
    }

    #[test]
    fn a_bad_line_is_named() {
        let e =
            parse("{\"family\": \"pii.email\", \"label\": true, \"text\": \"a@b.io\"}\nnot json")
                .unwrap_err();
        assert!(e.to_string().starts_with("line 2:"), "{e}");
        let e = evaluate(
            &parse("{\"family\": \"pii.shoe\", \"label\": true, \"text\": \"x\"}").unwrap(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("unknown family"), "{e}");
    }
}
