//! SPIFFE IDs (`spiffe://<trust-domain>/<path>`) and the three kinds of
//! principal Warden knows: agents, admins and the control plane.

use std::fmt;

use crate::agent::AgentId;

/// Longest SPIFFE ID accepted, per the SPIFFE ID specification.
pub const MAX_SPIFFE_ID_LEN: usize = 2048;

/// Why a SPIFFE ID or trust domain was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// The string does not start with `spiffe://`.
    #[error("not a SPIFFE ID: expected the scheme spiffe://")]
    Scheme,
    /// The trust domain is empty or has characters outside `[a-z0-9._-]`.
    #[error("invalid trust domain {0:?}: use lower-case letters, digits, '.', '-' and '_'")]
    TrustDomain(String),
    /// A path segment is empty, `.`/`..`, or has characters outside `[A-Za-z0-9._-]`.
    #[error("invalid SPIFFE ID path {0:?}")]
    Path(String),
    /// The ID is longer than [`MAX_SPIFFE_ID_LEN`].
    #[error("SPIFFE ID longer than {MAX_SPIFFE_ID_LEN} bytes")]
    TooLong,
    /// A well-formed ID that names no Warden principal.
    #[error(
        "SPIFFE ID {0} names no Warden principal (expected /agent/<id>, /admin/<name> or /control-plane)"
    )]
    UnknownPrincipal(String),
}

/// A validated trust domain name.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TrustDomain(String);

impl TrustDomain {
    /// Validates a trust domain name.
    pub fn new(name: &str) -> Result<Self, Error> {
        let ok = !name.is_empty()
            && name.len() <= 255
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b".-_".contains(&b));
        if ok {
            Ok(Self(name.to_owned()))
        } else {
            Err(Error::TrustDomain(name.to_owned()))
        }
    }

    /// The name, e.g. `example.org`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `spiffe://<td>/agent/<id>`
    pub fn agent(&self, id: &AgentId) -> SpiffeId {
        SpiffeId {
            td: self.clone(),
            path: format!("/agent/{id}"),
        }
    }

    /// `spiffe://<td>/admin/<name>`; the name must be a valid path segment.
    pub fn admin(&self, name: &str) -> Result<SpiffeId, Error> {
        SpiffeId::parse(&format!("spiffe://{}/admin/{name}", self.0))
    }

    /// `spiffe://<td>/control-plane`
    pub fn control_plane(&self) -> SpiffeId {
        SpiffeId {
            td: self.clone(),
            path: "/control-plane".into(),
        }
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A syntactically valid SPIFFE ID.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SpiffeId {
    td: TrustDomain,
    path: String,
}

/// The Warden principal a SPIFFE ID names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Principal {
    /// `/agent/<id>`
    Agent(AgentId),
    /// `/admin/<name>`
    Admin(String),
    /// `/control-plane`
    ControlPlane,
}

impl SpiffeId {
    /// Parses and validates a SPIFFE ID.
    pub fn parse(s: &str) -> Result<Self, Error> {
        if s.len() > MAX_SPIFFE_ID_LEN {
            return Err(Error::TooLong);
        }
        let rest = s.strip_prefix("spiffe://").ok_or(Error::Scheme)?;
        let (td, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let td = TrustDomain::new(td)?;
        if !path.is_empty() {
            for seg in path[1..].split('/') {
                let ok = !seg.is_empty()
                    && seg != "."
                    && seg != ".."
                    && seg
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b".-_".contains(&b));
                if !ok {
                    return Err(Error::Path(path.to_owned()));
                }
            }
        }
        Ok(Self {
            td,
            path: path.to_owned(),
        })
    }

    /// The trust domain.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.td
    }

    /// The path, starting with `/` (empty for a trust domain ID).
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Which Warden principal this ID names.
    pub fn principal(&self) -> Result<Principal, Error> {
        let segs: Vec<&str> = self.path.trim_start_matches('/').split('/').collect();
        match segs.as_slice() {
            ["agent", id] => AgentId::new(id)
                .map(Principal::Agent)
                .map_err(|_| Error::UnknownPrincipal(self.to_string())),
            ["admin", name] => Ok(Principal::Admin((*name).to_owned())),
            ["control-plane"] => Ok(Principal::ControlPlane),
            _ => Err(Error::UnknownPrincipal(self.to_string())),
        }
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "spiffe://{}{}", self.td, self.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_warden_principals() {
        let id = SpiffeId::parse("spiffe://example.org/agent/coder-1").unwrap();
        assert_eq!(
            id.principal().unwrap(),
            Principal::Agent(AgentId::new("coder-1").unwrap())
        );
        let id = SpiffeId::parse("spiffe://example.org/admin/alice").unwrap();
        assert_eq!(id.principal().unwrap(), Principal::Admin("alice".into()));
        let id = SpiffeId::parse("spiffe://example.org/control-plane").unwrap();
        assert_eq!(id.principal().unwrap(), Principal::ControlPlane);
        assert_eq!(id.to_string(), "spiffe://example.org/control-plane");
    }

    #[test]
    fn refuses_malformed_ids() {
        assert_eq!(SpiffeId::parse("https://x/agent/a"), Err(Error::Scheme));
        assert!(matches!(
            SpiffeId::parse("spiffe://Ex.org/a"),
            Err(Error::TrustDomain(_))
        ));
        assert!(matches!(
            SpiffeId::parse("spiffe://ex.org/a//b"),
            Err(Error::Path(_))
        ));
        assert!(matches!(
            SpiffeId::parse("spiffe://ex.org/a/../b"),
            Err(Error::Path(_))
        ));
        assert!(matches!(
            SpiffeId::parse("spiffe://ex.org/a/"),
            Err(Error::Path(_))
        ));
        let id = SpiffeId::parse("spiffe://ex.org/agent/a/b").unwrap();
        assert!(matches!(id.principal(), Err(Error::UnknownPrincipal(_))));
    }
}
