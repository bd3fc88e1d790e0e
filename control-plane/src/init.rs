//! `warden-control-plane init`: creates (or imports) the CA, writes the
//! config, and issues the first admin credential.

use std::fs;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use warden_shared::spiffe::TrustDomain;

use crate::config::{CONFIG_FILE, Config};
use crate::ctl::CtlFiles;
use crate::identity::ca::{Ca, write_private};

/// What `init` needs.
#[derive(Debug, Clone)]
pub struct InitOptions {
    /// Data directory to create.
    pub data_dir: PathBuf,
    /// SPIFFE trust domain.
    pub trust_domain: String,
    /// Name of the first admin.
    pub admin_name: String,
    /// Admin certificate lifetime.
    pub admin_ttl: Duration,
    /// Import this CA (cert PEM, key PEM) instead of creating one.
    pub import_ca: Option<(PathBuf, PathBuf)>,
    /// Address wardenctl should dial (written into its config).
    pub listen: std::net::SocketAddr,
    /// JWKS listen address.
    pub jwks_listen: std::net::SocketAddr,
    /// Token endpoint (HTTPS) listen address written to the config.
    pub oauth_listen: std::net::SocketAddr,
}

/// Creates a private directory (0700).
pub fn private_dir(path: &Path) -> anyhow::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .with_context(|| format!("creating {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o700))?;
    Ok(())
}

/// Initialises a data directory; returns the config written.
pub fn run(opts: &InitOptions) -> anyhow::Result<Config> {
    let td = TrustDomain::new(&opts.trust_domain)?;
    let config_path = opts.data_dir.join(CONFIG_FILE);
    if config_path.exists() {
        bail!(
            "{} already exists; this data directory is initialised",
            config_path.display()
        );
    }
    private_dir(&opts.data_dir)?;
    let ca_dir = opts.data_dir.join("ca");
    let ca = match &opts.import_ca {
        Some((cert, key)) => {
            let cert =
                fs::read_to_string(cert).with_context(|| format!("reading {}", cert.display()))?;
            let key =
                fs::read_to_string(key).with_context(|| format!("reading {}", key.display()))?;
            Ca::import(&td, &ca_dir, &cert, &key)?
        }
        None => Ca::create(&td, &ca_dir)?,
    };
    let mut config = Config::new(&opts.trust_domain, &opts.data_dir);
    config.listen = opts.listen;
    config.jwks_listen = opts.jwks_listen;
    config.oauth_listen = opts.oauth_listen;
    config.validate()?;
    let mut text = toml::to_string_pretty(&config)?;
    // data_dir is implied by where the file lives.
    text = text
        .lines()
        .filter(|l| !l.starts_with("data_dir"))
        .collect::<Vec<_>>()
        .join("\n")
        + "\n";
    fs::write(&config_path, text)?;
    issue_admin(
        &ca,
        &opts.admin_name,
        opts.admin_ttl,
        &opts.data_dir.join("admin"),
        &config,
    )?;
    Ok(config)
}

/// Issues an admin credential into `out` as a wardenctl config directory.
pub fn issue_admin(
    ca: &Ca,
    name: &str,
    ttl: Duration,
    out: &Path,
    config: &Config,
) -> anyhow::Result<()> {
    let id = ca.trust_domain().admin(name).context("admin name")?;
    let cred = ca.issue(&id, &[], &[], false, ttl)?;
    private_dir(out)?;
    let files = CtlFiles::in_dir(out);
    write_private(&files.key, cred.key_pem.as_bytes())?;
    fs::write(&files.cert, &cred.cert_pem)?;
    fs::write(&files.ca, ca.cert_pem())?;
    let address = format!(
        "https://{}:{}",
        config
            .server_names
            .first()
            .map_or("localhost", String::as_str),
        config.listen.port()
    );
    fs::write(&files.settings, format!("address = {address:?}\n"))?;
    Ok(())
}
