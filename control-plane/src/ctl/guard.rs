//! `wardenctl guard`: the guardrail detectors, offline (no control plane
//! needed).

use std::io::Read;
use std::path::Path;

use anyhow::{Context, bail};
use serde_json::json;
use warden_shared::guard::{eval, injection, pii, secrets::Rules};

/// Largest text `scan` reads, bytes.
const MAX_SCAN_BYTES: u64 = 16 * 1024 * 1024;
/// Largest corpus `eval` reads, bytes.
const MAX_CORPUS_BYTES: u64 = 64 * 1024 * 1024;

/// A `guard` command.
#[derive(Debug)]
pub enum Cmd<'a> {
    /// Measure on a corpus.
    Eval {
        /// The corpus file.
        corpus: &'a Path,
    },
    /// Score one text.
    Scan {
        /// The text's file, or `-`.
        file: &'a Path,
        /// Extra credential rules.
        secret_rules: Option<&'a Path>,
    },
}

fn read(path: &Path, max: u64) -> anyhow::Result<String> {
    let mut text = String::new();
    if path == Path::new("-") {
        std::io::stdin()
            .take(max + 1)
            .read_to_string(&mut text)
            .context("reading standard input (UTF-8 text)")?;
    } else {
        std::fs::File::open(path)
            .with_context(|| format!("opening {}", path.display()))?
            .take(max + 1)
            .read_to_string(&mut text)
            .with_context(|| format!("reading {} (UTF-8 text)", path.display()))?;
    }
    if text.len() as u64 > max {
        bail!("{} is larger than {max} bytes", path.display());
    }
    Ok(text)
}

/// Runs `cmd`; `as_json` prints JSON.
pub fn run(cmd: Cmd<'_>, as_json: bool) -> anyhow::Result<()> {
    match cmd {
        Cmd::Eval { corpus } => {
            let samples = eval::parse(&read(corpus, MAX_CORPUS_BYTES)?)
                .with_context(|| format!("corpus {}", corpus.display()))?;
            let report = eval::evaluate(&samples)?;
            if as_json {
                let rows: serde_json::Map<String, serde_json::Value> = report
                    .families
                    .iter()
                    .map(|(k, c)| (k.clone(), counts(c)))
                    .chain(
                        report
                            .groups
                            .iter()
                            .map(|(k, c)| (format!("{k} (all)"), counts(c))),
                    )
                    .collect();
                println!("{}", serde_json::Value::Object(rows));
            } else {
                print!("{report}");
            }
            Ok(())
        }
        Cmd::Scan { file, secret_rules } => {
            let text = read(file, MAX_SCAN_BYTES)?;
            let mut rules = Rules::builtin()?;
            if let Some(p) = secret_rules {
                let extra = Rules::from_gitleaks_toml(&read(p, MAX_SCAN_BYTES)?)
                    .with_context(|| format!("rule file {}", p.display()))?;
                rules = rules.extend(extra);
            }
            let v = injection::scan(&text);
            let found: Vec<serde_json::Value> = pii::scan(&text)
                .into_iter()
                .chain(rules.scan(&text))
                .map(|f| json!({"kind": f.kind.family(), "label": f.kind.label(), "start": f.start, "end": f.end}))
                .collect();
            let hits: Vec<serde_json::Value> = v
                .hits
                .iter()
                .map(|h| json!({"signal": h.signal.as_str(), "score": h.score, "start": h.start, "end": h.end, "encoded": h.encoded}))
                .collect();
            let out = json!({
                "injection": {"score": v.score, "verdict": v.injection(), "hits": hits},
                "findings": found,
            });
            if as_json {
                println!("{out}");
            } else {
                println!(
                    "injection score {:.2} ({})",
                    v.score,
                    if v.injection() {
                        "an injection"
                    } else {
                        "below the threshold"
                    }
                );
                for h in &v.hits {
                    println!(
                        "  {} {:.2} at {}..{}{}",
                        h.signal.as_str(),
                        h.score,
                        h.start,
                        h.end,
                        if h.encoded { " (encoded)" } else { "" }
                    );
                }
                for f in &found {
                    println!(
                        "{} {} at {}..{}",
                        f["kind"].as_str().unwrap_or(""),
                        f["label"].as_str().unwrap_or(""),
                        f["start"],
                        f["end"]
                    );
                }
            }
            Ok(())
        }
    }
}

fn counts(c: &eval::Counts) -> serde_json::Value {
    json!({
        "tp": c.tp, "fn": c.fn_, "fp": c.fp, "tn": c.tn,
        "precision": c.precision(), "recall": c.recall(), "false_positive_rate": c.false_positive_rate(),
    })
}
