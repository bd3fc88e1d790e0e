//! The policy's external prompt-injection classifier (`classifier`): a
//! model a team runs behind HTTP, asked about the same texts as the
//! built-in detector (argument strings at stage 3, the answer's strings at
//! stage 8, after credentials and personal data are redacted).
//!
//! One request per call and direction, in the Hugging Face
//! text-classification shape (Text Embeddings Inference's `/predict`,
//! Inference Endpoints): `POST {"inputs": [chunk, …]}`, answered with one
//! list of `{"label", "score"}` per chunk. Short texts share a chunk (joined
//! by a blank line); a text longer than `chunk_chars` is split into
//! overlapping chunks. A text's verdict is the best score among the
//! policy's `labels` over the chunks it is in.
//!
//! Whatever keeps the classifier from answering usably (a transport
//! error, the timeout, a status other than 2xx, an answer of another shape,
//! more text than `max_chunks` holds) is a [`Failure`], which the policy's
//! `on_failure` turns into a refusal or lets pass.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use serde_json::{Value, json};
use warden_shared::policy::{Classifier, Upstream};

use crate::gateway::execute::http::{self, Clients};
use crate::gateway::execute::secrets;

/// Largest answer read from the classifier, bytes.
const MAX_ANSWER_BYTES: usize = 256 * 1024;

/// Why the classifier gave no usable answer.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// A secret its headers or TLS settings use could not be resolved.
    #[error("a secret it uses is unavailable")]
    Secret,
    /// Connecting or exchanging failed, or no answer came in time.
    #[error(transparent)]
    Transport(#[from] http::Failure),
    /// It answered with a status other than 2xx.
    #[error("it answered with HTTP status {0}")]
    Status(u16),
    /// Its answer is not one list of labels and scores per input.
    #[error("its answer has an unexpected shape: {0}")]
    Shape(String),
    /// The text needs more chunks than `max_chunks`.
    #[error("the text needs more than {0} chunks")]
    TooMuch(u32),
}

impl Failure {
    /// A word for the agent, which learns nothing of the classifier's
    /// address or its errors (those go to the sidecar's log).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Secret => "a secret it needs is unavailable",
            Self::Transport(http::Failure::Timeout(_)) => "no answer in time",
            Self::Transport(_) => "unreachable",
            Self::Status(_) => "an error status",
            Self::Shape(_) => "an answer of the wrong shape",
            Self::TooMuch(_) => "more text than it is asked about",
        }
    }
}

/// The classifier's verdict on one text that it counts as an injection.
#[derive(Debug, Clone, PartialEq)]
pub struct Hit {
    /// The policy's name of the label that scored (never the server's
    /// own string).
    pub label: String,
    /// Its score.
    pub score: f32,
}

/// What asking needs: the settings, the document's secret references and
/// the sidecar's HTTP clients.
#[derive(Clone, Copy)]
pub struct Ask<'a> {
    /// The policy's `classifier`.
    pub spec: &'a Classifier,
    /// The document's `secrets`.
    pub secrets: &'a BTreeMap<String, String>,
    /// The HTTP clients (their pools are shared with the upstreams).
    pub clients: &'a Clients,
}

impl std::fmt::Debug for Ask<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ask")
            .field("timeout_ms", &self.spec.timeout_ms)
            .finish_non_exhaustive()
    }
}

/// One chunk: the texts it covers and what is sent.
#[derive(Debug, PartialEq)]
struct Chunk {
    covers: Vec<usize>,
    text: String,
}

/// The chunks of `texts`: texts that are empty or all whitespace are
/// skipped; short ones are packed together; a long one is cut at
/// character boundaries into chunks of `size` characters, each starting an
/// eighth of `size` before the previous one ended, so that a phrase cut
/// by one boundary is whole in the next chunk.
fn chunks(texts: &[&str], size: usize, max: u32) -> Result<Vec<Chunk>, Failure> {
    let mut out: Vec<Chunk> = Vec::new();
    let mut packed: Option<(Chunk, usize)> = None;
    let too_many = |n: usize| n > max as usize;
    for (i, t) in texts.iter().enumerate() {
        if t.trim().is_empty() {
            continue;
        }
        let chars = t.chars().count();
        if chars > size {
            let starts: Vec<usize> = t.char_indices().map(|(b, _)| b).collect();
            let step = size - size / 8;
            let mut from = 0;
            loop {
                let to = (from + size).min(chars);
                let end = starts.get(to).copied().unwrap_or(t.len());
                out.push(Chunk {
                    covers: vec![i],
                    text: t[starts[from]..end].to_owned(),
                });
                if too_many(out.len()) {
                    return Err(Failure::TooMuch(max));
                }
                if to == chars {
                    break;
                }
                from += step;
            }
            continue;
        }
        match &mut packed {
            Some((c, n)) if *n + 2 + chars <= size => {
                c.text.push_str("\n\n");
                c.text.push_str(t);
                c.covers.push(i);
                *n += 2 + chars;
            }
            _ => {
                if let Some((c, _)) = packed.take() {
                    out.push(c);
                }
                packed = Some((
                    Chunk {
                        covers: vec![i],
                        text: (*t).to_owned(),
                    },
                    chars,
                ));
            }
        }
        if too_many(out.len() + usize::from(packed.is_some())) {
            return Err(Failure::TooMuch(max));
        }
    }
    out.extend(packed.map(|(c, _)| c));
    Ok(out)
}

/// The best counted label of one input's labels and scores: a list of
/// `{"label", "score"}`, or one such object.
fn best(spec: &Classifier, v: &Value) -> Result<Option<Hit>, Failure> {
    let one = |o: &Value| -> Result<Option<Hit>, Failure> {
        let label = o
            .get("label")
            .and_then(Value::as_str)
            .ok_or_else(|| Failure::Shape("an entry without a label".into()))?;
        let score = o
            .get("score")
            .and_then(Value::as_f64)
            .filter(|s| (0.0..=1.0).contains(s))
            .ok_or_else(|| Failure::Shape("an entry without a score from 0 to 1".into()))?;
        #[allow(clippy::cast_possible_truncation)]
        let score = score as f32;
        Ok(spec
            .labels
            .iter()
            .find(|l| l.eq_ignore_ascii_case(label))
            .map(|l| Hit {
                label: l.clone(),
                score,
            }))
    };
    let entries: Vec<&Value> = match v {
        Value::Array(a) => a.iter().collect(),
        o @ Value::Object(_) => vec![o],
        _ => return Err(Failure::Shape("an input's result is not a list".into())),
    };
    let mut top: Option<Hit> = None;
    for e in entries {
        if let Some(h) = one(e)?
            && top.as_ref().is_none_or(|t| h.score > t.score)
        {
            top = Some(h);
        }
    }
    Ok(top)
}

/// One result per input from the answer: a list with one list per input,
/// or, for a single input, its list of labels itself.
fn results(spec: &Classifier, answer: &Value, inputs: usize) -> Result<Vec<Option<Hit>>, Failure> {
    let Value::Array(list) = answer else {
        return Err(Failure::Shape("the answer is not a list".into()));
    };
    let flat = inputs == 1 && list.first().is_some_and(Value::is_object);
    if flat {
        return Ok(vec![best(spec, answer)?]);
    }
    if list.len() != inputs {
        return Err(Failure::Shape(format!(
            "{} results for {inputs} inputs",
            list.len()
        )));
    }
    list.iter().map(|v| best(spec, v)).collect()
}

impl Ask<'_> {
    /// The verdict on each of `texts` (`None`: not an injection by the
    /// classifier's scores), asked in one request.
    pub async fn ask(&self, texts: &[&str], call_id: &str) -> Result<Vec<Option<Hit>>, Failure> {
        let spec = self.spec;
        let chunks = chunks(texts, spec.chunk_chars as usize, spec.max_chunks)?;
        let mut verdicts: Vec<Option<Hit>> = vec![None; texts.len()];
        if chunks.is_empty() {
            return Ok(verdicts);
        }
        let mut resolved = HashMap::new();
        for s in spec.secret_uses() {
            let reference = self.secrets.get(s).map(String::as_str).unwrap_or_default();
            let v = secrets::resolve(reference).map_err(|_| Failure::Secret)?;
            resolved.insert(s.to_owned(), v);
        }
        let upstream = Upstream {
            kind: "http".into(),
            address: spec.url.clone(),
            tool: None,
            pin: None,
            method: Some("POST".into()),
            headers: spec.headers.clone(),
            body_fields: BTreeMap::new(),
            tls: spec.tls.clone(),
            max_response_bytes: None,
            circuit_breaker: None,
        };
        let inputs: Vec<&str> = chunks.iter().map(|c| c.text.as_str()).collect();
        let args = json!({ "inputs": inputs });
        let out = http::call(
            self.clients,
            http::Call {
                upstream: &upstream,
                args: &args,
                secrets: &resolved,
                call_id,
                trace_id: "",
                timeout: Duration::from_millis(u64::from(spec.timeout_ms)),
                max_bytes: MAX_ANSWER_BYTES,
            },
        )
        .await?;
        if !(200..300).contains(&out.status) {
            return Err(Failure::Status(out.status));
        }
        let answer: Value = serde_json::from_slice(&out.content)
            .map_err(|e| Failure::Shape(format!("not JSON: {e}")))?;
        for (c, hit) in chunks.iter().zip(results(spec, &answer, chunks.len())?) {
            let Some(hit) = hit.filter(|h| h.score >= spec.threshold) else {
                continue;
            };
            for &i in &c.covers {
                if verdicts[i].as_ref().is_none_or(|v| hit.score > v.score) {
                    verdicts[i] = Some(hit.clone());
                }
            }
        }
        Ok(verdicts)
    }
}

#[cfg(test)]
pub(crate) mod tests;
