//! The audit trail's shared ground: the event every decision and every
//! administrative act records, the log record (a Merkle-tree leaf) the
//! control plane makes of it, the signed tree head, and [`Verifier`], which
//! checks a log against its signed heads and names the first position that
//! does not match.
//!
//! A record's bytes are the RFC 8785 canonical JSON of
//! `{"v":1,"source":…,"seq":…,"received_ms":…,"event":{…}}`; its leaf hash
//! is `SHA-256(0x00 || bytes)` (RFC 9162, see [`crate::merkle`]). A tree
//! head is signed with Ed25519 over [`head_message`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::merkle::{self, Frontier, Hash};

/// Largest event, as JSON.
pub const MAX_EVENT_BYTES: usize = 16 * 1024;
/// Longest text field of an event, in bytes.
pub const MAX_FIELD_BYTES: usize = 1024;
/// Most `detail` entries.
pub const MAX_DETAIL: usize = 32;
/// The record format this code writes.
pub const RECORD_VERSION: u32 = 1;
/// Where the control plane's own events come from.
pub const CONTROL_PLANE_SOURCE: &str = "control-plane";
/// What a tree head's signature covers starts with this.
pub const HEAD_CONTEXT: &[u8] = b"warden audit tree head v1\n";

/// Who acted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ActorKind {
    /// An agent (through its sidecar or its certificate).
    #[default]
    Agent,
    /// A person (an admin, an approver, the agent's user).
    Human,
    /// Warden itself (a timer, a cascade).
    System,
}

/// The actor of an event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Actor {
    /// Its identity: an agent id, an admin's name, a user id.
    pub id: String,
    /// Agent, person or system.
    pub kind: ActorKind,
}

/// How a call's arguments are kept in its event (per tool, by policy).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ArgumentsMode {
    /// Only a keyed hash: equal arguments correlate, none is readable.
    Hash,
    /// The arguments with secrets and sensitive values removed.
    #[default]
    Redacted,
    /// As sent (secrets injected by the sidecar are never in them).
    Full,
}

/// A call's arguments as its event keeps them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Arguments {
    /// Size as sent, bytes.
    pub bytes: u64,
    /// HMAC-SHA256 (truncated, hex) under the sidecar's audit key.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub hmac: String,
    /// How.
    pub mode: ArgumentsMode,
    /// The value (`redacted` or `full`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<serde_json::Value>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// One audit event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Event {
    /// Who did it.
    pub actor: Actor,
    /// The agent concerned.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub agent: String,
    /// The approval request concerned.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub approval: String,
    /// The call's arguments, as the tool's policy keeps them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arguments: Option<Arguments>,
    /// Bytes received from the caller.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub bytes_in: u64,
    /// Bytes answered.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub bytes_out: u64,
    /// The call's id.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub call_id: String,
    /// Anything else, by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub detail: BTreeMap<String, String>,
    /// Time taken, µs.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub duration_us: u64,
    /// What happened: `tool.call`, `approval.decided`, `agent.revoked`…
    pub kind: String,
    /// `allowed`, `denied`, `failed`, `cancelled`, `ok`…
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub outcome: String,
    /// The agent's peer address.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub peer: String,
    /// The refusal's reason code.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// The rule that decided.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub rule: String,
    /// Its session.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub session: String,
    /// The refusing stage.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub stage: String,
    /// When it happened, unix milliseconds.
    pub time_ms: i64,
    /// The tool.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub tool: String,
    /// The caller's trace id.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub trace_id: String,
    /// The end user the agent acts for.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub user: String,
}

/// Why an event or a record is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Not JSON of the event's shape.
    #[error("not an audit event: {0}")]
    Shape(String),
    /// Too large.
    #[error("{what} is {len} bytes; at most {max}")]
    TooLarge {
        /// Which.
        what: String,
        /// Its size.
        len: usize,
        /// The bound.
        max: usize,
    },
    /// A field's value is not acceptable.
    #[error("{field}: {why}")]
    Field {
        /// Which.
        field: &'static str,
        /// Why.
        why: &'static str,
    },
}

/// Largest number JSON carries exactly (RFC 8785 writes numbers as
/// doubles).
const MAX_EXACT: u64 = (1 << 53) - 1;

impl Event {
    /// Parses and checks an event sent as JSON.
    pub fn from_json(bytes: &[u8]) -> Result<Self, Error> {
        if bytes.len() > MAX_EVENT_BYTES {
            return Err(Error::TooLarge {
                what: "event".into(),
                len: bytes.len(),
                max: MAX_EVENT_BYTES,
            });
        }
        // The parser's message can quote the offending value; only where it
        // failed is kept, never what was there.
        let e: Self = serde_json::from_slice(bytes).map_err(|e| {
            Error::Shape(format!(
                "{} error at line {} column {}",
                match e.classify() {
                    serde_json::error::Category::Io => "read",
                    serde_json::error::Category::Syntax => "syntax",
                    serde_json::error::Category::Data => "field or type",
                    serde_json::error::Category::Eof => "end of input",
                },
                e.line(),
                e.column()
            ))
        })?;
        // The whole was bounded as it came; its fields are checked here.
        e.check_fields()?;
        Ok(e)
    }

    /// Checks the bounds and forms of every field.
    pub fn check_fields(&self) -> Result<(), Error> {
        let kind_ok = !self.kind.is_empty()
            && self.kind.len() <= 64
            && self
                .kind
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'_');
        if !kind_ok {
            return Err(Error::Field {
                field: "kind",
                why: "must be 1-64 of a-z, 0-9, '.', '_'",
            });
        }
        if self.time_ms <= 0 || self.time_ms as u64 > MAX_EXACT {
            return Err(Error::Field {
                field: "time_ms",
                why: "must be a positive unix time in milliseconds",
            });
        }
        for n in [self.duration_us, self.bytes_in, self.bytes_out]
            .into_iter()
            .chain(self.arguments.as_ref().map(|a| a.bytes))
        {
            if n > MAX_EXACT {
                return Err(Error::Field {
                    field: "duration_us/bytes",
                    why: "must be below 2^53",
                });
            }
        }
        let fields = [
            ("actor.id", &self.actor.id),
            ("agent", &self.agent),
            ("session", &self.session),
            ("user", &self.user),
            ("trace_id", &self.trace_id),
            ("call_id", &self.call_id),
            ("tool", &self.tool),
            ("outcome", &self.outcome),
            ("stage", &self.stage),
            ("reason", &self.reason),
            ("rule", &self.rule),
            ("approval", &self.approval),
            ("peer", &self.peer),
        ];
        for (name, v) in fields {
            if v.len() > MAX_FIELD_BYTES {
                return Err(Error::TooLarge {
                    what: name.into(),
                    len: v.len(),
                    max: MAX_FIELD_BYTES,
                });
            }
        }
        if self.detail.len() > MAX_DETAIL {
            return Err(Error::Field {
                field: "detail",
                why: "at most 32 entries",
            });
        }
        for (k, v) in &self.detail {
            let name_ok = (1..=64).contains(&k.len())
                && k.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
            if !name_ok || v.len() > MAX_FIELD_BYTES {
                return Err(Error::Field {
                    field: "detail",
                    why: "names must be 1-64 of a-z, 0-9, '_'; values at most 1024 bytes",
                });
            }
        }
        Ok(())
    }

    /// [`Event::check_fields`] and the size bound of the whole event.
    pub fn check(&self) -> Result<(), Error> {
        self.check_fields()?;
        let len = serde_json::to_vec(self).map_or(usize::MAX, |v| v.len());
        if len > MAX_EVENT_BYTES {
            return Err(Error::TooLarge {
                what: "event".into(),
                len,
                max: MAX_EVENT_BYTES,
            });
        }
        Ok(())
    }
}

/// One entry of the log: an event, where it came from and when it arrived.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    /// The event.
    pub event: Event,
    /// When the control plane took it, unix milliseconds.
    pub received_ms: i64,
    /// The event's number in its source, from 1.
    pub seq: u64,
    /// The shipper: a sidecar's agent and spool (`<agent>/<spool id>`), or
    /// [`CONTROL_PLANE_SOURCE`].
    pub source: String,
    /// [`RECORD_VERSION`].
    pub v: u32,
}

impl Record {
    /// The exact bytes the log stores and hashes (RFC 8785).
    ///
    /// Without an arguments value, serde's own output already is the
    /// canonical form: every struct declares its fields in sorted order,
    /// `detail` keys are ASCII (so byte order is UTF-16 order), numbers are
    /// integers below 2^53, and serde_json escapes strings as RFC 8785 does.
    /// A free-form value goes through [`crate::jcs`].
    pub fn to_bytes(&self) -> Vec<u8> {
        if self
            .event
            .arguments
            .as_ref()
            .is_none_or(|a| a.value.is_none())
            && let Ok(b) = serde_json::to_vec(self)
        {
            return b;
        }
        self.canonical()
    }

    /// RFC 8785 through a `serde_json::Value` (the general path).
    fn canonical(&self) -> Vec<u8> {
        let v = serde_json::to_value(self).unwrap_or(serde_json::Value::Null);
        crate::jcs::canonicalize(&v)
            .unwrap_or_default()
            .into_bytes()
    }

    /// Reads stored bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, Error> {
        serde_json::from_slice(bytes).map_err(|e| Error::Shape(e.to_string()))
    }
}

/// A tree head: the log's size and root hash at a time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TreeHead {
    /// Leaves.
    pub size: u64,
    /// RFC 9162 root hash.
    pub root: Hash,
    /// When it was signed, unix milliseconds.
    pub time_ms: i64,
}

/// What a tree head's Ed25519 signature covers: [`HEAD_CONTEXT`], the log
/// id's length (2 bytes, big-endian) and UTF-8 bytes, the size (8 bytes,
/// big-endian), the time (8 bytes, big-endian) and the 32-byte root.
pub fn head_message(log_id: &str, head: &TreeHead) -> Vec<u8> {
    let id = log_id.as_bytes();
    let mut m = Vec::with_capacity(HEAD_CONTEXT.len() + 2 + id.len() + 48);
    m.extend_from_slice(HEAD_CONTEXT);
    m.extend_from_slice(&u16::try_from(id.len()).unwrap_or(u16::MAX).to_be_bytes());
    m.extend_from_slice(id);
    m.extend_from_slice(&head.size.to_be_bytes());
    m.extend_from_slice(&head.time_ms.to_be_bytes());
    m.extend_from_slice(&head.root);
    m
}

/// Whether `signature` is the Ed25519 signature of `head` by `public_key`.
pub fn head_signed(log_id: &str, head: &TreeHead, public_key: &[u8], signature: &[u8]) -> bool {
    ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, public_key)
        .verify(&head_message(log_id, head), signature)
        .is_ok()
}

/// The first thing wrong with a log, by position.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Finding {
    /// The entry at this position is missing (the next one has a later
    /// position).
    #[error("event {position} is missing (the log jumps to {next})")]
    Missing {
        /// The position expected.
        position: u64,
        /// The position found.
        next: u64,
    },
    /// The entry's bytes do not hash to the leaf recorded for its
    /// position: altered, or moved there from elsewhere.
    #[error(
        "event {position} was altered or moved (it does not hash to the leaf recorded for position {position})"
    )]
    Altered {
        /// Its position.
        position: u64,
    },
    /// The entries up to a signed head no longer hash to its root: an
    /// event after position `after` and before `size` was changed (its
    /// recorded leaf with it).
    #[error("the signed head of size {size} does not match: an event from {after} to {last} was altered, removed or reordered", last = size - 1)]
    HeadMismatch {
        /// The head's size.
        size: u64,
        /// The size of the last head that matched (0 if none).
        after: u64,
    },
    /// The hashes kept for a pruned prefix do not match a signed head of
    /// that size (the store's kept subtrees were altered).
    #[error(
        "the hashes kept for the entries pruned below {at} do not match the signed head of that size"
    )]
    KeptSubtrees {
        /// The prune point.
        at: u64,
    },
    /// A head's signature does not verify.
    #[error("the tree head of size {size} has a bad signature")]
    BadSignature {
        /// Its size.
        size: u64,
    },
    /// The log ends before a signed head.
    #[error("a head of size {size} was signed but the log ends after {len} events")]
    Truncated {
        /// The head's size.
        size: u64,
        /// Events found.
        len: u64,
    },
}

/// Checks a log read in order against its signed heads, naming the first
/// problem by position.
#[derive(Debug)]
pub struct Verifier {
    frontier: Frontier,
    /// Heads not yet reached, smallest last.
    heads: Vec<(TreeHead, bool)>,
    matched: u64,
    /// Heads checked.
    pub heads_checked: u64,
    /// Heads of a pruned prefix, not checked (no archive given).
    pub heads_skipped: u64,
    /// Where the entries start, when resumed after a prune.
    pruned_at: Option<u64>,
    first: Option<Finding>,
}

impl Verifier {
    /// A verifier for heads given with whether their signatures verified.
    pub fn new(mut heads: Vec<(TreeHead, bool)>) -> Self {
        heads.sort_by_key(|h| std::cmp::Reverse(h.0.size));
        Self {
            frontier: Frontier::default(),
            heads,
            matched: 0,
            heads_checked: 0,
            heads_skipped: 0,
            pruned_at: None,
            first: None,
        }
    }

    /// A verifier for a log pruned below `at`, from the heads of the
    /// pruned prefix's largest complete subtrees (`peaks`, largest first):
    /// entries are read from `at` on; heads smaller than `at` are skipped
    /// (check them against the archive with [`Verifier::new`]). `None` if
    /// the number of peaks does not fit `at`.
    pub fn resume(at: u64, peaks: Vec<Hash>, heads: Vec<(TreeHead, bool)>) -> Option<Self> {
        let frontier = Frontier::restore(at, peaks)?;
        let mut v = Self::new(heads);
        let before = v.heads.len();
        v.heads.retain(|(h, _)| h.size >= at);
        v.heads_skipped = (before - v.heads.len()) as u64;
        v.frontier = frontier;
        v.matched = at;
        v.pruned_at = Some(at);
        v.reach();
        Some(v)
    }

    fn found(&mut self, f: Finding) {
        if self.first.is_none() {
            self.first = Some(f);
        }
    }

    /// The next entry: its position, its bytes, and the leaf hash the store
    /// recorded for that position (if it has one).
    pub fn entry(&mut self, position: u64, bytes: &[u8], recorded: Option<&Hash>) {
        if self.first.is_some() {
            return;
        }
        let expected = self.frontier.size();
        if position != expected {
            self.found(Finding::Missing {
                position: expected,
                next: position,
            });
            return;
        }
        let leaf = merkle::leaf_hash(bytes);
        if recorded.is_some_and(|r| *r != leaf) {
            self.found(Finding::Altered { position });
            return;
        }
        self.frontier.push(leaf, &mut Vec::new());
        self.reach();
    }

    /// Checks every head whose size the log has reached.
    fn reach(&mut self) {
        while let Some((head, signed)) = self.heads.last().copied() {
            if head.size > self.frontier.size() {
                break;
            }
            self.heads.pop();
            self.heads_checked += 1;
            if !signed {
                self.found(Finding::BadSignature { size: head.size });
            } else if head.size == 0 || self.frontier.root() == head.root {
                self.matched = head.size;
            } else if self.pruned_at == Some(head.size) {
                self.found(Finding::KeptSubtrees { at: head.size });
            } else {
                self.found(Finding::HeadMismatch {
                    size: head.size,
                    after: self.matched,
                });
            }
        }
    }

    /// The end of the log: the first finding, if any, and how many events
    /// no signed head covers yet.
    pub fn finish(mut self) -> (Option<Finding>, u64) {
        self.reach();
        if self.first.is_none()
            && let Some((head, _)) = self.heads.last().copied()
        {
            self.found(Finding::Truncated {
                size: head.size,
                len: self.frontier.size(),
            });
        }
        let uncovered = self.frontier.size().saturating_sub(self.matched);
        (self.first, uncovered)
    }

    /// Entries read so far.
    pub fn len(&self) -> u64 {
        self.frontier.size()
    }

    /// Whether no entry was read.
    pub fn is_empty(&self) -> bool {
        self.frontier.size() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(i: u64) -> Event {
        Event {
            time_ms: 1_700_000_000_000 + i as i64,
            kind: "tool.call".into(),
            actor: Actor {
                kind: ActorKind::Agent,
                id: "a1".into(),
            },
            agent: "a1".into(),
            tool: format!("t{i}"),
            outcome: "allowed".into(),
            ..Event::default()
        }
    }

    fn record(i: u64) -> Vec<u8> {
        Record {
            v: RECORD_VERSION,
            source: "a1/s".into(),
            seq: i + 1,
            received_ms: 1,
            event: event(i),
        }
        .to_bytes()
    }

    fn head(records: &[Vec<u8>]) -> TreeHead {
        let leaves: Vec<Hash> = records.iter().map(|r| merkle::leaf_hash(r)).collect();
        TreeHead {
            size: records.len() as u64,
            root: merkle::root(&leaves),
            time_ms: 1,
        }
    }

    fn verify(
        records: &[(u64, Vec<u8>)],
        recorded: &[Hash],
        heads: &[TreeHead],
    ) -> Option<Finding> {
        let mut v = Verifier::new(heads.iter().map(|h| (*h, true)).collect());
        for (p, r) in records {
            v.entry(*p, r, recorded.get(*p as usize));
        }
        v.finish().0
    }

    #[test]
    fn records_are_canonical_and_events_are_bounded() {
        let r = record(0);
        let text = String::from_utf8(r.clone()).unwrap();
        assert!(
            text.starts_with(r#"{"event":{"actor":{"id":"a1","kind":"agent"}"#),
            "{text}"
        );
        assert_eq!(Record::from_bytes(&r).unwrap().to_bytes(), r);
        assert!(
            Event::from_json(
                br#"{"time_ms":1,"kind":"x","actor":{"kind":"agent","id":""},"extra":1}"#
            )
            .is_err()
        );
        assert!(
            Event::from_json(
                br#"{"time_ms":1,"kind":"Bad Kind","actor":{"kind":"agent","id":""}}"#
            )
            .is_err()
        );
        let mut big = event(0);
        big.tool = "x".repeat(MAX_FIELD_BYTES + 1);
        assert!(matches!(big.check(), Err(Error::TooLarge { .. })));
        assert!(Event::from_json(&vec![b' '; MAX_EVENT_BYTES + 1]).is_err());
        // A refusal says where the event is wrong, never what it held.
        for bad in [
            &br#"{"time_ms":"sk-live-SECRET","kind":"x","actor":{"kind":"agent","id":""}}"#[..],
            br#"{"time_ms":1,"kind":"x","actor":{"kind":"agent","id":""},"sk-live-SECRET":1}"#,
            br#"{"time_ms":1,"kind":"x","actor":{"kind":"sk-live-SECRET","id":""}}"#,
        ] {
            let e = Event::from_json(bad).unwrap_err().to_string();
            assert!(!e.contains("SECRET") && e.contains("column"), "{e}");
        }
    }

    #[test]
    fn the_fast_record_bytes_are_the_canonical_ones() {
        let texts = [
            "plain",
            "quote \" backslash \\ slash /",
            "controls \u{1} \u{8} \t \n \r \u{c} \u{1f} \u{7f}",
            "unicode é ü 日本 \u{2028} \u{e000} \u{ffff} 😀 \u{10ffff}",
            "",
        ];
        for (i, t) in texts.iter().enumerate() {
            let mut e = event(i as u64);
            e.user = (*t).to_owned();
            e.tool = t.chars().rev().collect();
            e.trace_id = format!("{t}{i}");
            e.duration_us = (1 << 53) - 1;
            e.bytes_out = i as u64;
            e.detail.insert("z_last".into(), (*t).to_owned());
            e.detail.insert("a_first".into(), "x".into());
            e.arguments = Some(Arguments {
                mode: ArgumentsMode::Hash,
                bytes: 9,
                hmac: "00ff".into(),
                value: None,
            });
            let r = Record {
                v: RECORD_VERSION,
                source: format!("a/{t}"),
                seq: u64::MAX >> 11,
                received_ms: 1_800_000_000_000,
                event: e,
            };
            assert_eq!(
                String::from_utf8(r.to_bytes()).unwrap(),
                String::from_utf8(r.canonical()).unwrap(),
                "{t:?}"
            );
        }
        // A free-form value takes the general path.
        let mut e = event(1);
        e.arguments = Some(Arguments {
            mode: ArgumentsMode::Full,
            bytes: 1,
            hmac: String::new(),
            value: Some(serde_json::json!({"b": 1.5e30, "a": [1, "x"]})),
        });
        let r = Record {
            v: 1,
            source: "s".into(),
            seq: 1,
            received_ms: 1,
            event: e,
        };
        assert_eq!(r.to_bytes(), r.canonical());
        assert!(
            String::from_utf8(r.to_bytes())
                .unwrap()
                .contains(r#"{"a":[1,"x"],"b":1.5e+30}"#)
        );
        let mut bad = event(0);
        bad.detail.insert("Upper Case".into(), "x".into());
        assert!(bad.check().is_err());
    }

    #[test]
    fn the_verifier_names_the_first_bad_position() {
        let records: Vec<Vec<u8>> = (0..10).map(record).collect();
        let leaves: Vec<Hash> = records.iter().map(|r| merkle::leaf_hash(r)).collect();
        let heads = [head(&records[..4]), head(&records)];
        let good: Vec<(u64, Vec<u8>)> = records
            .iter()
            .cloned()
            .enumerate()
            .map(|(i, r)| (i as u64, r))
            .collect();
        assert_eq!(verify(&good, &leaves, &heads), None);

        let mut altered = good.clone();
        altered[6].1 = record(60);
        assert_eq!(
            verify(&altered, &leaves, &heads),
            Some(Finding::Altered { position: 6 })
        );
        // Altered with its recorded leaf: the head names the range.
        let mut relabelled = leaves.clone();
        relabelled[6] = merkle::leaf_hash(&altered[6].1);
        assert_eq!(
            verify(&altered, &relabelled, &heads),
            Some(Finding::HeadMismatch { size: 10, after: 4 })
        );

        let mut missing = good.clone();
        missing.remove(3);
        assert_eq!(
            verify(&missing, &leaves, &heads),
            Some(Finding::Missing {
                position: 3,
                next: 4
            })
        );

        let mut swapped = good.clone();
        let (a, b) = (swapped[2].1.clone(), swapped[5].1.clone());
        swapped[2].1 = b;
        swapped[5].1 = a;
        assert_eq!(
            verify(&swapped, &leaves, &heads),
            Some(Finding::Altered { position: 2 })
        );

        assert_eq!(
            verify(&good[..7], &leaves, &heads),
            Some(Finding::Truncated { size: 10, len: 7 })
        );
        let mut v = Verifier::new(vec![(heads[0], false)]);
        for (p, r) in &good {
            v.entry(*p, r, None);
        }
        assert_eq!(v.finish().0, Some(Finding::BadSignature { size: 4 }));
    }

    #[test]
    fn a_pruned_log_is_checked_from_its_kept_subtrees() {
        let records: Vec<Vec<u8>> = (0..13).map(record).collect();
        let leaves: Vec<Hash> = records.iter().map(|r| merkle::leaf_hash(r)).collect();
        let heads = [head(&records[..3]), head(&records[..6]), head(&records)];
        let peaks = |at: usize| -> Vec<Hash> {
            Frontier::peaks_of(at as u64)
                .iter()
                .map(|n| {
                    let start = (n.index << n.level) as usize;
                    merkle::root(&leaves[start..start + (1 << n.level)])
                })
                .collect()
        };
        let run = |at: usize, peaks: Vec<Hash>, rows: &[(u64, Vec<u8>)]| {
            let mut v =
                Verifier::resume(at as u64, peaks, heads.iter().map(|h| (*h, true)).collect())
                    .unwrap();
            for (p, r) in rows {
                v.entry(*p, r, None);
            }
            let skipped = v.heads_skipped;
            (v.finish(), skipped)
        };
        let live: Vec<(u64, Vec<u8>)> = records
            .iter()
            .cloned()
            .enumerate()
            .skip(6)
            .map(|(i, r)| (i as u64, r))
            .collect();
        // Pruned below 6: the head of 3 is skipped, that of 6 checked
        // against the kept subtrees, that of 13 against them and the rest.
        assert_eq!(run(6, peaks(6), &live), ((None, 0), 1));
        let mut wrong = peaks(6);
        wrong[0][0] ^= 1;
        assert_eq!(
            run(6, wrong, &live).0.0,
            Some(Finding::KeptSubtrees { at: 6 })
        );
        let mut altered = live.clone();
        altered[2].1 = record(99);
        assert_eq!(
            run(6, peaks(6), &altered).0.0,
            Some(Finding::HeadMismatch { size: 13, after: 6 })
        );
        assert!(Verifier::resume(6, vec![], vec![]).is_none());
    }

    #[test]
    fn a_head_signature_covers_size_time_root_and_log() {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let key = ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        use ring::signature::KeyPair;
        let h = TreeHead {
            size: 3,
            root: [7; 32],
            time_ms: 99,
        };
        let sig = key.sign(&head_message("example.org", &h));
        let pk = key.public_key().as_ref();
        assert!(head_signed("example.org", &h, pk, sig.as_ref()));
        assert!(!head_signed("other.org", &h, pk, sig.as_ref()));
        for other in [
            TreeHead { size: 4, ..h },
            TreeHead { time_ms: 98, ..h },
            TreeHead { root: [8; 32], ..h },
        ] {
            assert!(!head_signed("example.org", &other, pk, sig.as_ref()));
        }
    }
}
