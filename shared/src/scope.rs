//! The scope grammar: `resource:action[:qualifier…]`, where any segment may
//! be `*`.
//!
//! A pattern **covers** a scope when it is a segment-wise prefix of it, `*`
//! matching any one segment. So `orders:read` covers the narrower
//! `orders:read:user:usr_1`, and `data:*` covers `data:read` and
//! `data:write:eu`. Granting is the lattice meet: the most general scope
//! covered by both the request and the allowance.

use std::fmt;

/// Most segments a scope may have.
pub const MAX_SEGMENTS: usize = 8;
/// Longest scope string accepted.
pub const MAX_LEN: usize = 256;
/// Most scopes in one request or allowance list.
pub const MAX_SCOPES: usize = 64;

/// Why a scope string was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// Fewer than two segments: a scope needs at least `resource:action`.
    #[error("scope {0:?} needs at least resource:action")]
    TooShort(String),
    /// More than [`MAX_SEGMENTS`] segments or [`MAX_LEN`] bytes.
    #[error("scope {0:?} is too long (at most {MAX_SEGMENTS} segments, {MAX_LEN} bytes)")]
    TooLong(String),
    /// An empty segment, or characters outside `[A-Za-z0-9_.-]` (or a lone `*`).
    #[error("scope {0:?} has an invalid segment: use [A-Za-z0-9_.-] or a lone '*'")]
    BadSegment(String),
    /// More than [`MAX_SCOPES`] scopes in one list.
    #[error("too many scopes (at most {MAX_SCOPES})")]
    TooMany,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Segment {
    Any,
    Lit(String),
}

/// A parsed scope or scope pattern.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Scope(Vec<Segment>);

impl Scope {
    /// Parses `resource:action[:qualifier…]`.
    pub fn parse(s: &str) -> Result<Self, Error> {
        if s.len() > MAX_LEN {
            return Err(Error::TooLong(truncate(s)));
        }
        let mut segs = Vec::new();
        for seg in s.split(':') {
            if segs.len() == MAX_SEGMENTS {
                return Err(Error::TooLong(truncate(s)));
            }
            if seg == "*" {
                segs.push(Segment::Any);
            } else if !seg.is_empty()
                && seg
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
            {
                segs.push(Segment::Lit(seg.to_owned()));
            } else {
                return Err(Error::BadSegment(s.to_owned()));
            }
        }
        if segs.len() < 2 {
            return Err(Error::TooShort(s.to_owned()));
        }
        Ok(Self(segs))
    }

    /// Parses a list, refusing more than [`MAX_SCOPES`].
    pub fn parse_all<S: AsRef<str>>(list: &[S]) -> Result<Vec<Self>, Error> {
        if list.len() > MAX_SCOPES {
            return Err(Error::TooMany);
        }
        list.iter().map(|s| Self::parse(s.as_ref())).collect()
    }

    /// Whether `self`, as a pattern, covers `other` (every concrete scope
    /// covered by `other` is covered by `self`).
    pub fn covers(&self, other: &Scope) -> bool {
        self.0.len() <= other.0.len()
            && self.0.iter().zip(&other.0).all(|(p, s)| match (p, s) {
                (Segment::Any, _) => true,
                (Segment::Lit(_), Segment::Any) => false,
                (Segment::Lit(a), Segment::Lit(b)) => a == b,
            })
    }

    /// The most general scope covered by both, if they overlap.
    pub fn meet(&self, other: &Scope) -> Option<Scope> {
        let n = self.0.len().max(other.0.len());
        let mut out = Vec::with_capacity(n);
        for i in 0..n {
            // Past its end, a pattern accepts anything (prefix semantics).
            let a = self.0.get(i).unwrap_or(&Segment::Any);
            let b = other.0.get(i).unwrap_or(&Segment::Any);
            out.push(match (a, b) {
                (Segment::Any, x) | (x, Segment::Any) => x.clone(),
                (Segment::Lit(x), Segment::Lit(y)) if x == y => a.clone(),
                _ => return None,
            });
        }
        Some(Scope(out))
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(40).collect::<String>() + "…"
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, seg) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(":")?;
            }
            match seg {
                Segment::Any => f.write_str("*")?,
                Segment::Lit(s) => f.write_str(s)?,
            }
        }
        Ok(())
    }
}

/// Whether any pattern in `granted` covers `needed`.
pub fn any_covers(granted: &[Scope], needed: &Scope) -> bool {
    granted.iter().any(|g| g.covers(needed))
}

/// The grant for a request: every meet of a requested and an allowed scope,
/// without duplicates or scopes already covered by another in the grant,
/// sorted. Empty when nothing overlaps; [`Error::TooMany`] when the grant
/// would exceed [`MAX_SCOPES`] (ask for narrower scopes).
pub fn intersect(requested: &[Scope], allowed: &[Scope]) -> Result<Vec<Scope>, Error> {
    let mut meets: Vec<Scope> = requested
        .iter()
        .flat_map(|r| allowed.iter().filter_map(|a| r.meet(a)))
        .collect();
    // A scope can only be covered by a shorter one, or by one of the same
    // length with fewer literal segments: visiting in that order, a scope is
    // redundant exactly when an already kept one covers it. The work is
    // bounded by |meets| x MAX_SCOPES.
    let literals = |s: &Scope| s.0.iter().filter(|g| matches!(g, Segment::Lit(_))).count();
    meets.sort_by(|a, b| (a.0.len(), literals(a), a).cmp(&(b.0.len(), literals(b), b)));
    meets.dedup();
    let mut kept: Vec<Scope> = Vec::new();
    for m in meets {
        if kept.iter().any(|k| k.covers(&m)) {
            continue;
        }
        if kept.len() == MAX_SCOPES {
            return Err(Error::TooMany);
        }
        kept.push(m);
    }
    kept.sort();
    Ok(kept)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn s(x: &str) -> Scope {
        Scope::parse(x).unwrap()
    }

    #[test]
    fn grammar() {
        assert_eq!(
            s("orders:read:user:usr_abc123").to_string(),
            "orders:read:user:usr_abc123"
        );
        assert!(matches!(Scope::parse("orders"), Err(Error::TooShort(_))));
        assert!(matches!(
            Scope::parse("orders::read"),
            Err(Error::BadSegment(_))
        ));
        assert!(matches!(
            Scope::parse("orders:re*d"),
            Err(Error::BadSegment(_))
        ));
        assert!(matches!(Scope::parse("a:b c"), Err(Error::BadSegment(_))));
        assert!(matches!(
            Scope::parse(&"a:b:".repeat(5)),
            Err(Error::TooLong(_))
        ));
        assert!(matches!(
            Scope::parse(&"a".repeat(300)),
            Err(Error::TooLong(_))
        ));
    }

    #[test]
    fn covering_examples() {
        assert!(s("data:*").covers(&s("data:read")));
        assert!(s("data:*").covers(&s("data:read:eu")));
        assert!(s("orders:read").covers(&s("orders:read:user:usr_abc123")));
        assert!(!s("orders:read:user:usr_abc123").covers(&s("orders:read")));
        assert!(!s("orders:read").covers(&s("orders:*")));
        assert!(!s("data:read").covers(&s("data:write")));
    }

    #[test]
    fn intersection_examples() {
        let g = intersect(
            &[s("data:*"), s("mail:send")],
            &[s("data:read"), s("data:write:eu")],
        )
        .unwrap();
        assert_eq!(g, vec![s("data:read"), s("data:write:eu")]);
        let g = intersect(&[s("orders:read:user:u1")], &[s("orders:*")]).unwrap();
        assert_eq!(g, vec![s("orders:read:user:u1")]);
        assert!(
            intersect(&[s("mail:send")], &[s("data:*")])
                .unwrap()
                .is_empty()
        );
        // 64 x 64 pairwise-distinct meets would make a 4096-scope grant.
        let req: Vec<Scope> = (0..64).map(|i| s(&format!("*:*:q{i}"))).collect();
        let allow: Vec<Scope> = (0..64).map(|i| s(&format!("a{i}:*"))).collect();
        assert_eq!(intersect(&req, &allow), Err(Error::TooMany));
    }

    fn seg() -> impl Strategy<Value = String> {
        prop_oneof![Just("*".to_owned()), "[ab]", Just("c".to_owned())]
    }

    fn scope() -> impl Strategy<Value = Scope> {
        prop::collection::vec(seg(), 2..5).prop_map(|v| s(&v.join(":")))
    }

    fn concrete() -> impl Strategy<Value = Scope> {
        prop::collection::vec("[abc]", 2..6).prop_map(|v| s(&v.join(":")))
    }

    proptest! {
        #[test]
        fn covers_is_reflexive(a in scope()) {
            prop_assert!(a.covers(&a));
        }

        #[test]
        fn covers_is_transitive(a in scope(), b in scope(), c in scope()) {
            if a.covers(&b) && b.covers(&c) {
                prop_assert!(a.covers(&c));
            }
        }

        #[test]
        fn display_round_trips(a in scope()) {
            prop_assert_eq!(Scope::parse(&a.to_string()).unwrap(), a);
        }

        #[test]
        fn meet_is_covered_by_both(a in scope(), b in scope()) {
            if let Some(m) = a.meet(&b) {
                prop_assert!(a.covers(&m) && b.covers(&m));
            }
        }

        /// The meet loses nothing: a concrete scope both allow is allowed by
        /// the meet, and if none exists there is no meet.
        #[test]
        fn meet_is_exact(a in scope(), b in scope(), x in concrete()) {
            let both = a.covers(&x) && b.covers(&x);
            match a.meet(&b) {
                Some(m) => prop_assert_eq!(m.covers(&x), both),
                None => prop_assert!(!both),
            }
        }

        /// The grant never exceeds the allowance nor the request.
        #[test]
        fn grant_is_within_request_and_allowance(
            req in prop::collection::vec(scope(), 0..4),
            allow in prop::collection::vec(scope(), 0..4),
            x in concrete(),
        ) {
            let grant = intersect(&req, &allow).unwrap();
            let granted = any_covers(&grant, &x);
            prop_assert_eq!(granted, any_covers(&req, &x) && any_covers(&allow, &x));
        }
    }
}
