//! `wardenctl audit`: read the audit log, verify it against its signed
//! heads, and print proofs that anyone holding the log's public key can
//! check offline (also with `wardenctl audit check`).

use std::path::Path;

use anyhow::{Context, bail, ensure};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tonic::transport::Channel;
use warden_shared::audit::{self, Record, TreeHead, Verifier};
use warden_shared::merkle::{self, Hash, hex};
use warden_shared::proto::v1 as pb;
use warden_shared::proto::v1::admin_service_client::AdminServiceClient;

/// The admin client.
pub type Client = AdminServiceClient<Channel>;

fn unhex(s: &str) -> anyhow::Result<Hash> {
    ensure!(s.len() == 64, "a hash is 64 hex digits: {s:?}");
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16)
            .with_context(|| format!("not hex: {s:?}"))?;
    }
    Ok(out)
}

fn hash(b: &[u8]) -> anyhow::Result<Hash> {
    b.try_into()
        .map_err(|_| anyhow::anyhow!("the control plane sent a hash of {} bytes", b.len()))
}

/// A signed head, as proof files carry it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct HeadJson {
    /// Leaves.
    pub tree_size: u64,
    /// Hex root hash.
    pub root_hash: String,
    /// Unix ms.
    pub timestamp_ms: i64,
    /// Signing key id.
    pub key_id: String,
    /// Base64 Ed25519 signature.
    pub signature: String,
}

impl HeadJson {
    fn from_pb(h: &pb::TreeHead) -> Self {
        Self {
            tree_size: h.size,
            root_hash: hex(&h.root_hash),
            timestamp_ms: h.timestamp_ms,
            key_id: h.key_id.clone(),
            signature: B64.encode(&h.signature),
        }
    }

    fn head(&self) -> anyhow::Result<TreeHead> {
        Ok(TreeHead {
            size: self.tree_size,
            root: unhex(&self.root_hash)?,
            time_ms: self.timestamp_ms,
        })
    }
}

/// A proof, as `prove` and `consistency` print it and `check` reads it.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum Proof {
    /// One entry is in the log a head describes.
    Inclusion {
        /// The log (trust domain).
        log_id: String,
        /// The entry's position.
        position: u64,
        /// The entry's exact bytes (RFC 8785 JSON text).
        record: String,
        /// Hex leaf hash.
        leaf_hash: String,
        /// The head.
        head: HeadJson,
        /// Hex hashes, RFC 9162 order.
        path: Vec<String>,
    },
    /// A later head extends an earlier one.
    Consistency {
        /// The log.
        log_id: String,
        /// The earlier head.
        old: HeadJson,
        /// The later head.
        new: HeadJson,
        /// Hex hashes, RFC 9162 order.
        path: Vec<String>,
    },
}

/// The log's public keys, as `wardenctl audit key --json` prints them.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Keys {
    /// The log.
    pub log_id: String,
    /// Its keys.
    pub keys: Vec<KeyJson>,
}

/// One public key.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyJson {
    /// Id.
    pub key_id: String,
    /// `ed25519`.
    pub algorithm: String,
    /// Base64 raw public key.
    pub public_key: String,
    /// Unix ms.
    pub created_ms: i64,
}

impl Keys {
    fn from_pb(r: pb::GetAuditKeysResponse) -> Self {
        Self {
            log_id: r.log_id,
            keys: r
                .keys
                .into_iter()
                .map(|k| KeyJson {
                    key_id: k.key_id,
                    algorithm: k.algorithm,
                    public_key: B64.encode(k.public_key),
                    created_ms: k.created_ms,
                })
                .collect(),
        }
    }

    /// Reads a key file.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the key file {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| {
            format!(
                "{} is not a key file (write one with `wardenctl audit key --json`)",
                path.display()
            )
        })
    }

    /// Whether `h` is signed by one of these keys for this log.
    pub fn signed(&self, log_id: &str, h: &HeadJson) -> anyhow::Result<bool> {
        if log_id != self.log_id {
            return Ok(false);
        }
        let Some(k) = self.keys.iter().find(|k| k.key_id == h.key_id) else {
            return Ok(false);
        };
        ensure!(k.algorithm == "ed25519", "key {} is not ed25519", k.key_id);
        let pk = B64
            .decode(&k.public_key)
            .context("a public key is not base64")?;
        let sig = B64
            .decode(&h.signature)
            .context("a signature is not base64")?;
        Ok(audit::head_signed(log_id, &h.head()?, &pk, &sig))
    }
}

/// Checks a proof offline; says what it shows.
pub fn check(proof: &Proof, keys: &Keys) -> anyhow::Result<String> {
    let path = |p: &[String]| {
        p.iter()
            .map(|h| unhex(h))
            .collect::<anyhow::Result<Vec<_>>>()
    };
    match proof {
        Proof::Inclusion {
            log_id,
            position,
            record,
            leaf_hash,
            head,
            path: p,
        } => {
            let leaf = merkle::leaf_hash(record.as_bytes());
            ensure!(
                hex(&leaf) == *leaf_hash,
                "the record does not hash to leaf_hash"
            );
            ensure!(
                keys.signed(log_id, head)?,
                "the head of size {} is not signed by a key of log {}",
                head.tree_size,
                keys.log_id
            );
            ensure!(
                merkle::verify_inclusion(
                    &leaf,
                    *position,
                    head.tree_size,
                    &path(p)?,
                    &head.head()?.root
                ),
                "the inclusion proof does not verify"
            );
            Ok(format!(
                "entry {position} is in the log {log_id} of {} entries signed by key {}",
                head.tree_size, head.key_id
            ))
        }
        Proof::Consistency {
            log_id,
            old,
            new,
            path: p,
        } => {
            for h in [old, new] {
                ensure!(
                    keys.signed(log_id, h)?,
                    "the head of size {} is not signed by a key of log {}",
                    h.tree_size,
                    keys.log_id
                );
            }
            ensure!(
                merkle::verify_consistency(
                    old.tree_size,
                    new.tree_size,
                    &old.head()?.root,
                    &new.head()?.root,
                    &path(p)?
                ),
                "the consistency proof does not verify"
            );
            Ok(format!(
                "the log {log_id} of {} entries extends its log of {} entries: nothing was removed, altered or reordered",
                new.tree_size, old.tree_size
            ))
        }
    }
}

/// `audit key`.
pub async fn keys(client: &mut Client) -> anyhow::Result<Keys> {
    let r = client
        .get_audit_keys(pb::GetAuditKeysRequest {})
        .await?
        .into_inner();
    Ok(Keys::from_pb(r))
}

/// `audit prove`.
pub async fn prove(client: &mut Client, position: u64, tree_size: u64) -> anyhow::Result<Proof> {
    let r = client
        .prove_inclusion(pb::ProveInclusionRequest {
            position,
            tree_size,
        })
        .await?
        .into_inner();
    let entry = r.entry.context("no entry in the answer")?;
    let head = r.head.context("no head in the answer")?;
    let record = String::from_utf8(entry.record.clone()).context("a record is not UTF-8")?;
    Ok(Proof::Inclusion {
        log_id: r.log_id,
        position: entry.position,
        leaf_hash: hex(&merkle::leaf_hash(&entry.record)),
        record,
        head: HeadJson::from_pb(&head),
        path: r.path.iter().map(|h| hex(h)).collect(),
    })
}

/// `audit consistency`.
pub async fn consistency(client: &mut Client, old: u64, new: u64) -> anyhow::Result<Proof> {
    let r = client
        .prove_consistency(pb::ProveConsistencyRequest {
            old_size: old,
            new_size: new,
        })
        .await?
        .into_inner();
    Ok(Proof::Consistency {
        log_id: r.log_id,
        old: HeadJson::from_pb(&r.old.context("no old head in the answer")?),
        new: HeadJson::from_pb(&r.new.context("no new head in the answer")?),
        path: r.path.iter().map(|h| hex(h)).collect(),
    })
}

/// Every signed head, smallest first, and the last answer's prune point
/// and kept subtrees.
pub async fn all_heads(client: &mut Client) -> anyhow::Result<(Vec<pb::TreeHead>, u64, Vec<Hash>)> {
    let mut heads = Vec::new();
    let mut from = 0;
    loop {
        let r = client
            .list_tree_heads(pb::ListTreeHeadsRequest {
                from_size: from,
                limit: 10_000,
            })
            .await?
            .into_inner();
        let n = r.heads.len();
        if let Some(last) = r.heads.last() {
            from = last.size + 1;
        }
        heads.extend(r.heads);
        if n < 10_000 {
            let peaks = r
                .pruned_peaks
                .iter()
                .map(|h| hash(h))
                .collect::<anyhow::Result<_>>()?;
            return Ok((heads, r.pruned_below, peaks));
        }
    }
}

/// What `audit verify` found.
#[derive(Debug)]
pub struct Verified {
    /// Entries read.
    pub entries: u64,
    /// Heads checked.
    pub heads: u64,
    /// Entries below this were pruned (0: none).
    pub pruned_below: u64,
    /// Heads of the pruned prefix not checked (no archive).
    pub heads_skipped: u64,
    /// Entries after the last signed head.
    pub uncovered: u64,
    /// The first problem, if any.
    pub finding: Option<audit::Finding>,
}

/// `audit verify`: every head's signature, then every entry in order. A
/// log pruned below a point is read from there, from the hashes kept for
/// the pruned prefix; with `archive` (the prefix as `audit export` printed
/// it), from its first entry.
pub async fn verify(
    client: &mut Client,
    keys: &Keys,
    archive: Option<&Path>,
) -> anyhow::Result<Verified> {
    let (heads, pruned_below, peaks) = all_heads(client).await?;
    let mut checked = Vec::with_capacity(heads.len());
    for h in &heads {
        let j = HeadJson::from_pb(h);
        checked.push((j.head()?, keys.signed(&keys.log_id, &j)?));
    }
    let mut v = match archive {
        Some(path) => {
            let mut v = Verifier::new(checked);
            let text = std::fs::read(path)
                .with_context(|| format!("reading the archive {}", path.display()))?;
            for (i, line) in text
                .split(|b| *b == b'\n')
                .filter(|l| !l.is_empty())
                .enumerate()
            {
                v.entry(i as u64, line, None);
            }
            v
        }
        None if pruned_below > 0 => Verifier::resume(pruned_below, peaks, checked)
            .context("the control plane sent the wrong number of kept hashes")?,
        None => Verifier::new(checked),
    };
    let mut feed = client
        .export_audit(pb::ExportAuditRequest { from: 0, to: 0 })
        .await?
        .into_inner();
    while let Some(page) = feed.message().await? {
        for e in page.entries {
            let recorded = if e.leaf_hash.is_empty() {
                None
            } else {
                Some(hash(&e.leaf_hash)?)
            };
            v.entry(e.position, &e.record, recorded.as_ref());
        }
    }
    let entries = v.len();
    let heads = v.heads_checked;
    let heads_skipped = v.heads_skipped;
    let (finding, uncovered) = v.finish();
    Ok(Verified {
        entries,
        heads,
        pruned_below,
        heads_skipped,
        uncovered,
        finding,
    })
}

/// An entry for people: time, kind, actor, agent, tool, outcome, reason.
pub fn entry_line(e: &pb::AuditEntry) -> String {
    match Record::from_bytes(&e.record) {
        Ok(r) => {
            let ev = &r.event;
            let when =
                time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ev.time_ms) * 1_000_000)
                    .ok()
                    .and_then(|t| {
                        t.format(&time::format_description::well_known::Rfc3339)
                            .ok()
                    })
                    .unwrap_or_else(|| "-".into());
            let dash = |s: &str| {
                if s.is_empty() {
                    "-".to_owned()
                } else {
                    s.to_owned()
                }
            };
            format!(
                "{:<8} {:<29} {:<20} {:<20} {:<20} {:<10} {}",
                e.position,
                when,
                ev.kind,
                dash(&ev.agent),
                dash(&ev.tool),
                dash(&ev.outcome),
                if ev.reason.is_empty() {
                    String::new()
                } else {
                    format!("{} {}", ev.stage, ev.reason)
                }
            )
        }
        Err(err) => format!("{:<8} (unreadable record: {err})", e.position),
    }
}

/// The header of [`entry_line`].
pub const ENTRY_HEADER: &str = "POSITION TIME                          KIND                 AGENT                TOOL                 OUTCOME    REFUSAL";

/// An entry for scripts: position and the record's JSON.
pub fn entry_json(e: &pb::AuditEntry) -> serde_json::Value {
    let record: serde_json::Value =
        serde_json::from_slice(&e.record).unwrap_or_else(|_| json!(null));
    json!({"position": e.position, "record": record})
}

/// Parses a time for `--since`/`--until`: RFC 3339, unix milliseconds, or a
/// duration ago (`15m`, `2h`, `7d`).
pub fn parse_time(s: &str) -> Result<i64, String> {
    if let Ok(ms) = s.parse::<i64>() {
        return if ms > 0 {
            Ok(ms)
        } else {
            Err(format!("{s:?}: unix milliseconds must be positive"))
        };
    }
    if let Ok(t) = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339) {
        return i64::try_from(t.unix_timestamp_nanos() / 1_000_000)
            .map_err(|_| format!("{s:?}: out of range"));
    }
    match super::parse_duration(s) {
        Ok(d) => Ok(crate::now_unix_ms() - i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 2)),
        Err(_) => Err(format!(
            "{s:?}: expected RFC 3339 (2026-01-31T12:00:00Z), unix milliseconds, or a duration ago (15m, 2h, 7d)"
        )),
    }
}

/// Reads a proof file.
pub fn load_proof(path: &Path) -> anyhow::Result<Proof> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the proof {}", path.display()))?;
    match serde_json::from_str(&text) {
        Ok(p) => Ok(p),
        Err(e) => bail!(
            "{} is not a proof printed by `wardenctl audit prove` or `consistency`: {e}",
            path.display()
        ),
    }
}
