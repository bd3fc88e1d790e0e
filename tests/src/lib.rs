//! Test harness: a real control plane and real sidecars in-process, on
//! 127.0.0.1 with ephemeral ports, real mTLS and a real SQLite store.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use hyper_util::rt::TokioIo;
use tempfile::TempDir;
use tonic::metadata::MetadataValue;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use warden_control_plane::app::{self, Running as ControlPlane};
use warden_control_plane::ctl::{self, CtlConfig};
use warden_control_plane::init::{self, InitOptions};
use warden_shared::proto::v1 as pb;
use warden_shared::proto::v1::admin_service_client::AdminServiceClient;
use warden_shared::proto::v1::agent_service_client::AgentServiceClient;
use warden_shared::proto::v1::identity_service_client::IdentityServiceClient;
pub use warden_sidecar::app::Running as Sidecar;
use warden_sidecar::config::Config as SidecarConfig;

pub mod approvals;
pub mod bench;
pub mod gateway;
pub mod http1;
pub mod idp;
pub mod logs;
pub mod messaging;
pub mod raw;
pub mod rawgrpc;
pub mod redis;
pub mod upstream;

/// The complete example policy from `deploy/policies/`.
pub const EXAMPLE_POLICY: &str = include_str!("../../deploy/policies/example.yaml");

/// A request applying `doc` as the next policy version.
pub fn apply_policy(doc: &str) -> pb::ApplyPolicyRequest {
    pb::ApplyPolicyRequest {
        document: doc.into(),
        expected_version: 0,
        dry_run: false,
    }
}

/// The trust domain every test mesh uses.
pub const TD: &str = "test.warden";

/// A control plane in a temporary data directory.
#[derive(Debug)]
pub struct Mesh {
    /// Data directory (kept alive with the mesh).
    pub dir: TempDir,
    /// The running control plane.
    pub cp: ControlPlane,
    /// wardenctl settings for the first admin.
    pub ctl: CtlConfig,
}

/// Binds nothing: just an ephemeral loopback address.
pub fn any_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

impl Mesh {
    /// Initialises and starts a control plane.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(|c| c.durable_sync = false).await
    }

    /// [`Mesh::start`] with a config tweak.
    pub async fn start_with(
        tweak: impl FnOnce(&mut warden_control_plane::config::Config),
    ) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let data = dir.path().join("cp");
        init::run(&InitOptions {
            data_dir: data.clone(),
            trust_domain: TD.into(),
            admin_name: "root".into(),
            admin_ttl: Duration::from_secs(3600),
            import_ca: None,
            listen: any_port(),
            jwks_listen: any_port(),
            oauth_listen: any_port(),
        })?;
        let mut config = warden_control_plane::config::Config::load(&data)?;
        // Tests favour speed (durable_sync = false); durability is exercised
        // by the store's own tests and the benchmark runs the default.
        tweak(&mut config);
        let cp = app::start(config).await?;
        let ctl = CtlConfig::from_dir(
            &data.join("admin"),
            Some(format!("https://localhost:{}", cp.grpc_addr.port())),
        )?;
        Ok(Self { dir, cp, ctl })
    }

    /// Restarts the control plane on the same data directory and port.
    pub async fn restart(self) -> anyhow::Result<Self> {
        self.while_down(|| async {}).await
    }

    /// Stops the control plane, runs `f`, and starts it again on the same
    /// data directory and ports.
    pub async fn while_down<F: std::future::Future<Output = ()>>(
        self,
        f: impl FnOnce() -> F,
    ) -> anyhow::Result<Self> {
        let Mesh { dir, cp, ctl } = self;
        let (addr, jwks, oauth) = (cp.grpc_addr, cp.jwks_addr, cp.oauth_addr);
        cp.shutdown().await?;
        f().await;
        let mut config = warden_control_plane::config::Config::load(&dir.path().join("cp"))?;
        config.durable_sync = false;
        config.listen = addr;
        config.jwks_listen = jwks;
        config.oauth_listen = oauth;
        let cp = app::start(config).await?;
        Ok(Self { dir, cp, ctl })
    }

    /// Every record of the control plane's audit log, in order.
    pub async fn audit_records(&self) -> anyhow::Result<Vec<warden_shared::audit::Record>> {
        let mut feed = self
            .admin()
            .await?
            .export_audit(pb::ExportAuditRequest::default())
            .await?
            .into_inner();
        let mut out = Vec::new();
        while let Some(page) = feed.message().await? {
            for e in page.entries {
                out.push(warden_shared::audit::Record::from_bytes(&e.record)?);
            }
        }
        Ok(out)
    }

    /// URL of the control plane.
    pub fn url(&self) -> String {
        format!("https://localhost:{}", self.cp.grpc_addr.port())
    }

    /// The CA certificate path.
    pub fn ca_path(&self) -> PathBuf {
        self.dir.path().join("cp/ca/ca.crt")
    }

    /// An admin client.
    pub async fn admin(&self) -> anyhow::Result<AdminServiceClient<Channel>> {
        ctl::connect(&self.ctl).await
    }

    /// Registers an agent.
    pub async fn register(
        &self,
        id: &str,
        scopes: &[&str],
        max_sessions: u32,
    ) -> anyhow::Result<pb::Agent> {
        let r = self
            .admin()
            .await?
            .register_agent(pb::RegisterAgentRequest {
                id: id.into(),
                agent_type: "test".into(),
                owner: "team-test".into(),
                max_concurrent_sessions: max_sessions,
                allowed_scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
                ..Default::default()
            })
            .await?
            .into_inner();
        r.agent.context("no agent")
    }

    /// A join token for an agent.
    pub async fn join_token(&self, id: &str) -> anyhow::Result<String> {
        let r = self
            .admin()
            .await?
            .create_join_token(pb::CreateJoinTokenRequest {
                agent_id: id.into(),
                ttl_seconds: 0,
            })
            .await?
            .into_inner();
        Ok(r.join_token)
    }

    /// Sidecar settings for an agent, in a fresh directory under the mesh.
    pub fn sidecar_config(&self, agent: &str, join_token: Option<String>) -> SidecarConfig {
        let dir = self
            .dir
            .path()
            .join(format!("sidecar-{agent}-{}", rand_suffix()));
        let mut c = SidecarConfig::new(&self.url(), self.ca_path(), agent, dir);
        c.trust_domain = TD.into();
        c.listen = any_port();
        c.health_listen = any_port();
        c.join_token = join_token;
        c
    }

    /// Registers `agent`, and starts an enrolled sidecar for it.
    pub async fn agent(
        &self,
        agent: &str,
        scopes: &[&str],
        max_sessions: u32,
    ) -> anyhow::Result<Sidecar> {
        self.register(agent, scopes, max_sessions).await?;
        self.enrolled_sidecar(agent).await
    }

    /// Registers `id` (type `batch`, scope `data:read`) with an identity
    /// that expires at `expires` (unix seconds).
    pub async fn register_expiring(&self, id: &str, expires: i64) -> anyhow::Result<()> {
        self.admin()
            .await?
            .register_agent(pb::RegisterAgentRequest {
                id: id.into(),
                agent_type: "batch".into(),
                owner: "team".into(),
                max_concurrent_sessions: 4,
                allowed_scopes: vec!["data:read".into()],
                expires_at: Some(prost_types::Timestamp {
                    seconds: expires,
                    nanos: 0,
                }),
                ..Default::default()
            })
            .await?;
        Ok(())
    }

    /// Starts an enrolled sidecar for the registered agent `agent`.
    pub async fn enrolled_sidecar(&self, agent: &str) -> anyhow::Result<Sidecar> {
        let token = self.join_token(agent).await?;
        let sc = start_sidecar(self.sidecar_config(agent, Some(token))).await?;
        anyhow::ensure!(
            sc.identity.snapshot().current.is_some(),
            "sidecar did not enroll"
        );
        Ok(sc)
    }

    /// An identity client without a client certificate.
    pub async fn anonymous_identity(&self) -> anyhow::Result<IdentityServiceClient<Channel>> {
        Ok(IdentityServiceClient::new(self.anonymous_channel().await?))
    }

    /// A TLS channel without a client certificate.
    pub async fn anonymous_channel(&self) -> anyhow::Result<Channel> {
        let ca = std::fs::read_to_string(self.ca_path())?;
        let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca));
        Ok(Endpoint::from_shared(self.url())?
            .tls_config(tls)?
            .connect()
            .await?)
    }

    /// A channel presenting `cert_pem`/`key_pem`.
    pub async fn mtls_channel(
        &self,
        cert_pem: &str,
        key_pem: &str,
    ) -> Result<Channel, tonic::transport::Error> {
        let ca = std::fs::read_to_string(self.ca_path()).unwrap_or_default();
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(ca))
            .identity(Identity::from_pem(cert_pem, key_pem));
        Endpoint::from_shared(self.url())?
            .tls_config(tls)?
            .connect()
            .await
    }
}

/// Starts a sidecar with `config` and waits until it holds a push from the
/// control plane (what readiness waits for too).
pub async fn start_sidecar(config: SidecarConfig) -> anyhow::Result<Sidecar> {
    let sc = warden_sidecar::app::start(config).await?;
    let pushed = eventually(Duration::from_secs(10), || async {
        sc.auth.state().held_version() > 0
    })
    .await;
    anyhow::ensure!(pushed, "sidecar received no push from the control plane");
    Ok(sc)
}

/// Eight random hex digits.
pub fn rand_suffix() -> String {
    let mut b = [0u8; 4];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b).ok();
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Adds the agent header and, optionally, a bearer token.
#[derive(Debug, Clone, Default)]
pub struct AgentAuth {
    /// Bearer token to send.
    pub token: Option<String>,
    /// Omit the agent header (to test its enforcement).
    pub no_header: bool,
}

impl Interceptor for AgentAuth {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if !self.no_header {
            req.metadata_mut().insert(
                warden_shared::AGENT_HEADER,
                MetadataValue::from_static("true"),
            );
        }
        if let Some(t) = &self.token {
            let v = MetadataValue::try_from(format!("Bearer {t}"))
                .map_err(|_| tonic::Status::internal("token"))?;
            req.metadata_mut().insert("authorization", v);
        }
        Ok(req)
    }
}

/// An agent client.
pub type AgentClient = AgentServiceClient<InterceptedService<Channel, AgentAuth>>;

/// An agent client over the sidecar's TCP port.
pub async fn agent_tcp(sc: &Sidecar, auth: AgentAuth) -> anyhow::Result<AgentClient> {
    let addr = sc.agent_addr.context("the sidecar serves no TCP port")?;
    let ch = Endpoint::from_shared(format!("http://{addr}"))?
        .connect()
        .await?;
    Ok(AgentServiceClient::with_interceptor(ch, auth))
}

/// A channel to the sidecar's Unix socket.
pub async fn unix_channel(path: &Path) -> anyhow::Result<Channel> {
    let path = path.to_owned();
    Ok(Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?))
            }
        }))
        .await?)
}

/// An agent client over the sidecar's Unix socket.
pub async fn agent_unix(path: &Path, auth: AgentAuth) -> anyhow::Result<AgentClient> {
    Ok(AgentServiceClient::with_interceptor(
        unix_channel(path).await?,
        auth,
    ))
}

/// Runs `tests/python/<script>` with the Python of `WARDEN_PYTHON` (set up
/// by `tests/run.sh`), `input` on its standard input; returns what it
/// printed. Panics when it fails.
pub fn python_stdin(script: &str, input: &str) -> String {
    use std::io::Write;
    let python = std::env::var("WARDEN_PYTHON").expect(
        "WARDEN_PYTHON must point at a Python with tests/python/requirements.txt installed; run the tests with ./tests/run.sh",
    );
    let path = format!("{}/python/{script}", env!("CARGO_MANIFEST_DIR"));
    let mut child = std::process::Command::new(python)
        .arg(path)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("running python");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("writing to python");
    let out = child.wait_with_output().expect("python");
    assert!(
        out.status.success(),
        "{script} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The Warden reason of a status.
pub fn reason(s: &tonic::Status) -> String {
    warden_shared::refusal::reason_of(s)
        .unwrap_or_else(|| format!("<no reason; {:?}: {}>", s.code(), s.message()))
}

/// Asserts a refusal's code and reason.
#[track_caller]
pub fn assert_refused<T: std::fmt::Debug>(
    r: Result<T, tonic::Status>,
    code: tonic::Code,
    why: &str,
) -> tonic::Status {
    match r {
        Ok(v) => panic!("expected {code:?}/{why}, got success: {v:?}"),
        Err(s) => {
            assert_eq!(
                (s.code(), reason(&s).as_str()),
                (code, why),
                "message: {}",
                s.message()
            );
            s
        }
    }
}

/// Decodes a JWT payload without verifying (for inspection in tests).
pub fn jwt_payload(token: &str) -> serde_json::Value {
    use base64::Engine;
    let p = token.split('.').nth(1).unwrap_or_default();
    let b = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(p)
        .unwrap_or_default();
    serde_json::from_slice(&b).unwrap_or_default()
}

/// Polls `f` until it returns true or `deadline` passes.
pub async fn eventually<F, Fut>(deadline: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let end = tokio::time::Instant::now() + deadline;
    loop {
        if f().await {
            return true;
        }
        if tokio::time::Instant::now() >= end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A minimal HTTP/1.1 GET (status, body) for the health and JWKS endpoints.
pub async fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).await?;
    let (head, body) = buf.split_once("\r\n\r\n").context("no header end")?;
    let code = head.split(' ').nth(1).context("no status")?.parse()?;
    Ok((code, body.to_owned()))
}

/// Opens a `data:read` session at the sidecar, as its agent would.
pub async fn session(sc: &Sidecar) -> pb::StartSessionResponse {
    session_with(sc, &["data:read"]).await
}

/// An agent client carrying `token`.
pub async fn with_token(sc: &Sidecar, token: &str) -> anyhow::Result<AgentClient> {
    agent_tcp(
        sc,
        AgentAuth {
            token: Some(token.to_owned()),
            no_header: false,
        },
    )
    .await
}

/// Opens a session with `scopes` at the sidecar, as its agent would.
pub async fn session_with(sc: &Sidecar, scopes: &[&str]) -> pb::StartSessionResponse {
    let mut c = agent_tcp(sc, AgentAuth::default())
        .await
        .expect("agent client");
    c.start_session(pb::StartSessionRequest {
        scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
        ..Default::default()
    })
    .await
    .expect("session")
    .into_inner()
}

/// `WhoAmI` at the sidecar with `token`.
pub async fn who(
    sc: &Sidecar,
    token: impl Into<String>,
) -> Result<pb::WhoAmIResponse, tonic::Status> {
    let auth = AgentAuth {
        token: Some(token.into()),
        no_header: false,
    };
    let mut c = agent_tcp(sc, auth)
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    c.who_am_i(pb::WhoAmIRequest {})
        .await
        .map(tonic::Response::into_inner)
}
