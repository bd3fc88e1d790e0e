//! Kill-switch benchmark: revocation propagation — from the admin call
//! returning to the push reaching the revoked agent's stream, and to every
//! other stream learning that the agent is blocked — with 1, 100, 1,000 and
//! 10,000 connected streams; control-plane memory per stream; and the time
//! to push a policy change to every stream.
//!
//! The control plane runs as a separate process (this binary re-executed),
//! so its RSS is its own. The simulated sidecars speak the real protocol
//! (Hello, then an Ack per push) over real mTLS channels, 100 streams per
//! agent identity and connection.
//!
//! Run: `cargo bench -p warden-tests --bench mesh`

#![allow(
    clippy::unwrap_used,
    reason = "a benchmark aborts on any unexpected error"
)]

use std::io::BufRead;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use warden_shared::agent::AgentId;
use warden_shared::proto::v1 as pb;
use warden_shared::proto::v1::admin_service_client::AdminServiceClient;
use warden_shared::proto::v1::identity_service_client::IdentityServiceClient;
use warden_shared::proto::v1::mesh_service_client::MeshServiceClient;
use warden_shared::spiffe::TrustDomain;
use warden_sidecar::identity::enroll::key_and_csr;

const TD: &str = "bench.warden";
const PER_CONNECTION: usize = 100;
const TRIALS: usize = 20;
const POLICY: &str = include_str!("../../deploy/policies/example.yaml");

fn child_main(dir: &str) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut c = warden_control_plane::config::Config::load(std::path::Path::new(dir)).unwrap();
        c.durable_sync = false;
        let running = warden_control_plane::app::start(c).await.unwrap();
        println!("READY {}", running.grpc_addr.port());
        // Until the parent closes our stdin.
        let _ = tokio::task::spawn_blocking(|| std::io::stdin().lines().count()).await;
    });
}

struct Cp {
    child: Child,
    url: String,
    ca: String,
    admin: AdminServiceClient<Channel>,
}

impl Cp {
    fn rss_kib(&self) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let line = s.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    async fn channel(&self, cert: &str, key: &str) -> Channel {
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca))
            .identity(Identity::from_pem(cert, key));
        Endpoint::from_shared(self.url.clone())
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    /// Registers and enrolls an agent; returns an mTLS channel as it.
    async fn agent(&mut self, id: &str) -> Channel {
        self.admin
            .register_agent(pb::RegisterAgentRequest {
                id: id.into(),
                agent_type: "bench".into(),
                owner: "bench".into(),
                allowed_scopes: vec!["data:read".into()],
                ..Default::default()
            })
            .await
            .unwrap();
        let token = self
            .admin
            .create_join_token(pb::CreateJoinTokenRequest {
                agent_id: id.into(),
                ttl_seconds: 0,
            })
            .await
            .unwrap()
            .into_inner()
            .join_token;
        let spiffe = TrustDomain::new(TD)
            .unwrap()
            .agent(&AgentId::new(id).unwrap());
        let (key, csr) = key_and_csr(&spiffe).unwrap();
        let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&self.ca));
        let anon = Endpoint::from_shared(self.url.clone())
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect()
            .await
            .unwrap();
        let cert = IdentityServiceClient::new(anon)
            .enroll(pb::EnrollRequest {
                agent_id: id.into(),
                join_token: token,
                csr_der: csr,
            })
            .await
            .unwrap()
            .into_inner()
            .certificate
            .unwrap();
        let pem = warden_shared::svid::pem("CERTIFICATE", &cert.certificate_der);
        self.channel(&pem, &key).await
    }
}

/// Opens a stream that Acks every push and reports each one.
async fn open_stream(
    ch: Channel,
    pushes: mpsc::UnboundedSender<(usize, pb::StreamResponse, Instant)>,
    id: usize,
) {
    let (tx, rx) = mpsc::channel(4);
    tx.send(pb::StreamRequest {
        kind: Some(pb::stream_request::Kind::Hello(pb::Hello::default())),
    })
    .await
    .unwrap();
    let mut inbound = MeshServiceClient::new(ch)
        .stream(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    tokio::spawn(async move {
        while let Ok(Some(p)) = inbound.message().await {
            let at = Instant::now();
            let ack = pb::Ack {
                version: p.version,
                nonce: p.nonce.clone(),
            };
            // Report first: after a final push (revoked) the server has ended
            // the call and the Ack cannot be sent.
            if pushes.send((id, p, at)).is_err() {
                break;
            }
            let _ = tx
                .send(pb::StreamRequest {
                    kind: Some(pb::stream_request::Kind::Ack(ack)),
                })
                .await;
        }
    });
}

fn pct(v: &mut [Duration], p: f64) -> f64 {
    v.sort();
    v[((v.len() as f64 * p) as usize).min(v.len() - 1)].as_secs_f64() * 1e3
}

#[tokio::main]
async fn main() {
    if let Ok(dir) = std::env::var("WARDEN_BENCH_CP_DIR") {
        return tokio::task::spawn_blocking(move || child_main(&dir))
            .await
            .unwrap();
    }
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("cp");
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    warden_control_plane::init::run(&warden_control_plane::init::InitOptions {
        data_dir: data.clone(),
        trust_domain: TD.into(),
        admin_name: "bench".into(),
        admin_ttl: Duration::from_secs(3600),
        import_ca: None,
        listen: any,
        jwks_listen: any,
        oauth_listen: any,
    })
    .unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .env("WARDEN_BENCH_CP_DIR", &data)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port: u16 = line.trim().strip_prefix("READY ").unwrap().parse().unwrap();
    let url = format!("https://localhost:{port}");
    let ctl =
        warden_control_plane::ctl::CtlConfig::from_dir(&data.join("admin"), Some(url.clone()))
            .unwrap();
    let admin = warden_control_plane::ctl::connect(&ctl).await.unwrap();
    let ca = std::fs::read_to_string(data.join("admin/ca.crt")).unwrap();
    let mut cp = Cp {
        child,
        url,
        ca,
        admin,
    };

    println!("warden mesh benchmark: revocation propagation and memory per stream");
    println!(
        "(control plane in its own process; simulated sidecars: real protocol over mTLS, {PER_CONNECTION} streams per connection)"
    );
    println!();
    println!(
        "{:>7}  {:>9} {:>9} {:>9}   {:>11} {:>11}   {:>10}   {:>16}",
        "streams",
        "p50 ms",
        "p99 ms",
        "max ms",
        "all p50 ms",
        "all p99 ms",
        "KiB/stream",
        "policy to all ms"
    );
    let (push_tx, mut push_rx) = mpsc::unbounded_channel();
    let push_tx = Arc::new(push_tx);
    let mut connected = 0usize;
    let mut next_agent = 0usize;
    let baseline_rss = cp.rss_kib();
    let mut policy_applied = false;
    for target in [1usize, 100, 1_000, 10_000] {
        // Background streams up to the target.
        let before = connected;
        while connected < target {
            let n = PER_CONNECTION.min(target - connected);
            let ch = cp.agent(&format!("bg-{next_agent}")).await;
            next_agent += 1;
            for _ in 0..n {
                open_stream(ch.clone(), (*push_tx).clone(), usize::MAX).await;
            }
            connected += n;
        }
        // Every stream's first push has arrived before measuring.
        let mut first = before;
        while first < connected {
            push_rx.recv().await.unwrap();
            first += 1;
        }
        let rss = cp.rss_kib();
        let per_stream = (rss.saturating_sub(baseline_rss)) as f64 / connected as f64;

        let mut lat = Vec::with_capacity(TRIALS);
        let mut all = Vec::with_capacity(TRIALS);
        let status = |p: &pb::StreamResponse| p.standing.as_ref().map(|s| s.status);
        for t in 0..TRIALS {
            let id = format!("victim-{target}-{t}");
            let ch = cp.agent(&id).await;
            open_stream(ch, (*push_tx).clone(), t).await;
            let (_, p, _) = push_rx.recv().await.unwrap();
            assert_eq!(status(&p), Some(pb::AgentStatus::Active as i32));
            cp.admin
                .revoke_agent(pb::RevokeAgentRequest {
                    id: id.clone(),
                    reason: "bench".into(),
                })
                .await
                .unwrap();
            let returned = Instant::now();
            // Until the victim's own stream is told, and every background
            // stream has learnt that the victim is blocked.
            let (mut own, mut reached, mut last) = (None, 0, returned);
            while own.is_none() || reached < connected {
                let (who, p, at) = push_rx.recv().await.unwrap();
                if who == t && status(&p) == Some(pb::AgentStatus::Revoked as i32) {
                    own = Some(at.saturating_duration_since(returned));
                }
                let names_victim = p
                    .blocked_agents
                    .as_ref()
                    .is_some_and(|b| b.blocked.iter().any(|a| a.agent_id == id));
                if who == usize::MAX && names_victim {
                    reached += 1;
                    last = at;
                }
            }
            lat.extend(own);
            all.push(last.saturating_duration_since(returned));
        }
        // Policy change to every connected stream.
        let policy_ms = {
            let doc = POLICY.replace(
                "calls_per_minute: 30",
                &format!("calls_per_minute: {}", 30 + target),
            );
            let start = Instant::now();
            let v = cp
                .admin
                .apply_policy(pb::ApplyPolicyRequest {
                    document: doc,
                    expected_version: 0,
                    dry_run: false,
                })
                .await
                .unwrap()
                .into_inner()
                .version;
            policy_applied = true;
            let mut got = 0;
            while got < connected {
                let (who, p, _) = push_rx.recv().await.unwrap();
                if who == usize::MAX && p.policy.as_ref().is_some_and(|x| x.version == v) {
                    got += 1;
                }
            }
            start.elapsed().as_secs_f64() * 1e3
        };
        let (p50, p99, max) = (pct(&mut lat, 0.5), pct(&mut lat, 0.99), pct(&mut lat, 1.0));
        let (all50, all99) = (pct(&mut all, 0.5), pct(&mut all, 0.99));
        println!(
            "{connected:>7}  {p50:>9.2} {p99:>9.2} {max:>9.2}   {all50:>11.2} {all99:>11.2}   {per_stream:>10.1}   {policy_ms:>16.0}"
        );
    }
    let _ = policy_applied;
    drop(cp.child.stdin.take());
    let _ = cp.child.kill();
    let _ = cp.child.wait();
}
