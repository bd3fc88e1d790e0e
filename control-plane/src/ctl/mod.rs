//! The admin client behind `wardenctl`: credentials from a config directory
//! or flags, one mTLS channel.

pub mod audit;
pub mod guard;

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Deserialize;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use warden_shared::proto::v1::admin_service_client::AdminServiceClient;

/// Files of a wardenctl config directory.
#[derive(Debug, Clone)]
pub struct CtlFiles {
    /// Trust anchor (CA certificate PEM).
    pub ca: PathBuf,
    /// Admin certificate PEM.
    pub cert: PathBuf,
    /// Admin private key PEM (0600).
    pub key: PathBuf,
    /// `wardenctl.toml` with the control-plane address.
    pub settings: PathBuf,
}

impl CtlFiles {
    /// The standard file names inside `dir`.
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            ca: dir.join("ca.crt"),
            cert: dir.join("admin.crt"),
            key: dir.join("admin.key"),
            settings: dir.join("wardenctl.toml"),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    address: String,
}

/// Resolved admin client settings.
#[derive(Debug, Clone)]
pub struct CtlConfig {
    /// `https://host:port`
    pub address: String,
    /// Files.
    pub files: CtlFiles,
}

impl CtlConfig {
    /// Reads a config directory; `address` overrides its settings file.
    pub fn from_dir(dir: &Path, address: Option<String>) -> anyhow::Result<Self> {
        let files = CtlFiles::in_dir(dir);
        let address = match address {
            Some(a) => a,
            None => {
                let text = std::fs::read_to_string(&files.settings).with_context(|| {
                    format!(
                        "no control-plane address: pass --address, or point --config-dir at the admin directory \
                         written by `warden-control-plane init` (missing {})",
                        files.settings.display()
                    )
                })?;
                toml::from_str::<Settings>(&text)
                    .with_context(|| format!("parsing {}", files.settings.display()))?
                    .address
            }
        };
        Ok(Self { address, files })
    }
}

/// Builds the mTLS endpoint for the admin credential.
pub fn endpoint(cfg: &CtlConfig) -> anyhow::Result<Endpoint> {
    let read = |p: &Path| {
        std::fs::read_to_string(p)
            .with_context(|| format!("reading admin credential {}", p.display()))
    };
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read(&cfg.files.ca)?))
        .identity(Identity::from_pem(
            read(&cfg.files.cert)?,
            read(&cfg.files.key)?,
        ));
    let ep = Endpoint::from_shared(cfg.address.clone())
        .with_context(|| format!("invalid address {:?}", cfg.address))?
        .tls_config(tls)?
        .connect_timeout(std::time::Duration::from_secs(5))
        .timeout(std::time::Duration::from_secs(30));
    Ok(ep)
}

/// Connects the admin client.
pub async fn connect(cfg: &CtlConfig) -> anyhow::Result<AdminServiceClient<Channel>> {
    let ch = endpoint(cfg)?.connect().await.with_context(|| {
        format!(
            "cannot reach the control plane at {} (is `warden-control-plane serve` running?)",
            cfg.address
        )
    })?;
    Ok(AdminServiceClient::new(ch))
}

/// Parses `90s`, `30m`, `12h` or `30d` (a number and one unit).
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?}: expected a number and a unit, e.g. 30d"))?;
    let mult = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{s:?}: unit must be s, m, h or d")),
    };
    n.checked_mul(mult)
        .filter(|&v| v > 0 && v <= 100 * 365 * 86_400)
        .map(std::time::Duration::from_secs)
        .ok_or_else(|| format!("{s:?}: must be between 1s and 100 years"))
}

#[cfg(test)]
mod tests {
    use super::parse_duration;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s").unwrap().as_secs(), 90);
        assert_eq!(parse_duration("30d").unwrap().as_secs(), 30 * 86_400);
        assert!(parse_duration("30").is_err());
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("5y").is_err());
        assert!(parse_duration("d").is_err());
        assert!(parse_duration("99999999999999d").is_err());
    }
}
