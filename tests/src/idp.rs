//! The tests' OpenID Connect provider: `tests/python/oidc_provider.py`
//! (Authlib), run as a child process on a loopback port, and the control
//! plane's configuration trusting it.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::Context;
use warden_control_plane::delegation::ProviderConfig;
use warden_control_plane::delegation::provider::ClaimMap;

/// Warden's client id at the provider (and the audience of its ID tokens).
pub const CLIENT_ID: &str = "warden";

/// A running provider; killed when dropped.
#[derive(Debug)]
pub struct Idp {
    child: Child,
    /// Its issuer identifier (`http://127.0.0.1:<port>`).
    pub issuer: String,
    port: u16,
    secret_file: PathBuf,
}

impl Drop for Idp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Idp {
    /// Starts a provider whose client secret is written under `dir`; returns
    /// once it listens.
    pub async fn start(dir: &Path) -> anyhow::Result<Self> {
        let python = std::env::var("WARDEN_PYTHON")
            .context("WARDEN_PYTHON must point at the tests' Python; run ./tests/run.sh")?;
        let secret = format!("secret-{}", crate::rand_suffix());
        let secret_file = dir.join(format!("idp-secret-{}", crate::rand_suffix()));
        std::fs::write(&secret_file, &secret)?;
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/python/oidc_provider.py");
        let mut child = Command::new(python)
            .args([script, CLIENT_ID, &secret])
            .stdout(Stdio::piped())
            .spawn()
            .context("starting the identity provider")?;
        let out = child.stdout.take().context("stdout")?;
        let port = tokio::task::spawn_blocking(move || -> anyhow::Result<u16> {
            let mut line = String::new();
            BufReader::new(out).read_line(&mut line)?;
            line.trim()
                .strip_prefix("PORT ")
                .with_context(|| format!("the identity provider printed {line:?}"))?
                .parse()
                .context("port")
        })
        .await??;
        Ok(Self {
            child,
            issuer: format!("http://127.0.0.1:{port}"),
            port,
            secret_file,
        })
    }

    /// The control plane's configuration trusting this provider, with its
    /// tier, groups and email claims mapped.
    pub fn provider(&self) -> ProviderConfig {
        ProviderConfig {
            name: "example".into(),
            issuer: self.issuer.clone(),
            jwks_uri: None,
            audiences: vec![CLIENT_ID.into()],
            algorithms: vec!["RS256".into()],
            clock_skew_secs: 30,
            claims: ClaimMap {
                tier: Some("tier".into()),
                groups: Some("groups".into()),
                email: Some("email".into()),
            },
            ca_file: None,
            client_id: Some(CLIENT_ID.into()),
            client_secret_file: Some(self.secret_file.clone()),
        }
    }

    async fn call(
        &self,
        method: &str,
        path: &str,
        body: &str,
    ) -> anyhow::Result<serde_json::Value> {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], self.port));
        let (status, _, text) = crate::http1::exchange(
            addr,
            method,
            path,
            &[("content-type", "application/json")],
            body.as_bytes(),
        )
        .await?;
        anyhow::ensure!(status == 200, "{path} answered {status}: {text}");
        Ok(serde_json::from_str(&text)?)
    }

    /// An ID token as the provider signs them (see the script for the
    /// fields of `spec`: `sub`, `aud`, `exp_in`, `forge`, `attack`…).
    pub async fn mint(&self, spec: serde_json::Value) -> anyhow::Result<String> {
        let v = self.call("POST", "/test/mint", &spec.to_string()).await?;
        v["token"].as_str().map(str::to_owned).context("no token")
    }

    /// A new signing key, published first; its kid.
    pub async fn rotate(&self) -> anyhow::Result<String> {
        let v = self.call("POST", "/test/rotate", "").await?;
        v["kid"].as_str().map(str::to_owned).context("no kid")
    }

    /// How often the JWK Set was read.
    pub async fn jwks_reads(&self) -> anyhow::Result<u64> {
        let v = self.call("GET", "/test/stats", "").await?;
        v["jwks_reads"].as_u64().context("no count")
    }
}
