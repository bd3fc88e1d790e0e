//! Agent-to-agent messaging helpers: sidecars with a delivery listener, and
//! messaging clients.

use std::time::Duration;

use anyhow::Context;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use warden_shared::proto::v1::messaging_service_client::MessagingServiceClient;
use warden_sidecar::config::Config as SidecarConfig;

use crate::{AgentAuth, Mesh, Sidecar, any_port, eventually};

/// A messaging client.
pub type MessagingClient = MessagingServiceClient<InterceptedService<Channel, AgentAuth>>;

/// A messaging client over `sc`'s TCP port, in a new session.
pub async fn client(sc: &Sidecar) -> anyhow::Result<MessagingClient> {
    let s = crate::session(sc).await;
    let addr = sc.agent_addr.context("the sidecar serves no TCP port")?;
    let ch = Endpoint::from_shared(format!("http://{addr}"))?
        .tcp_nodelay(true)
        .connect()
        .await?;
    Ok(MessagingServiceClient::with_interceptor(
        ch,
        AgentAuth {
            token: Some(s.token),
            no_header: false,
        },
    ))
}

impl Mesh {
    /// Starts an enrolled sidecar for the registered `agent`, with a
    /// delivery listener and the listeners of `peers` as its peers' addresses;
    /// `tweak` adjusts the rest. Returns once it holds its pair keys part.
    pub async fn messaging_sidecar(
        &self,
        agent: &str,
        peers: &[(&str, &Sidecar)],
        tweak: impl FnOnce(&mut SidecarConfig),
    ) -> anyhow::Result<Sidecar> {
        let token = self.join_token(agent).await?;
        let mut c = self.sidecar_config(agent, Some(token));
        c.messaging.listen = Some(any_port());
        for (a, sc) in peers {
            let addr = sc.messaging_addr.context("the peer has no listener")?;
            c.messaging.peers.insert((*a).to_owned(), addr.to_string());
        }
        tweak(&mut c);
        let sc = warden_sidecar::app::start(c).await?;
        let keyed = eventually(Duration::from_secs(10), || async {
            sc.auth.state().held().raw.pairs.is_some()
        })
        .await;
        anyhow::ensure!(keyed, "{agent}'s sidecar received no pair keys");
        Ok(sc)
    }
}
