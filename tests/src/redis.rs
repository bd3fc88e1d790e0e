//! Real Redis for the limit tests: the machine's shared Redis (unique key
//! prefixes per test, so nothing depends on leftovers), or a private
//! `redis-server` process a test can stop and start again.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context;

use crate::eventually;

/// The shared Redis: `WARDEN_TEST_REDIS_URL`, default the local one.
pub fn shared_url() -> String {
    std::env::var("WARDEN_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A key prefix no other test run uses.
pub fn unique_prefix() -> String {
    format!("wt:{}:", crate::rand_suffix())
}

/// A command on a fresh connection to `url`.
pub async fn command(url: &str, cmd: &mut redis::Cmd) -> anyhow::Result<redis::Value> {
    let client = redis::Client::open(url)?;
    let mut c = client.get_multiplexed_async_connection().await?;
    Ok(cmd.query_async(&mut c).await?)
}

/// A text reply as a string.
pub fn text(v: redis::Value) -> String {
    match v {
        redis::Value::VerbatimString { text, .. } => text,
        redis::Value::BulkString(b) => String::from_utf8_lossy(&b).into_owned(),
        other => format!("{other:?}"),
    }
}

/// `INFO section` as text.
pub async fn info(url: &str, section: &str) -> anyhow::Result<String> {
    Ok(text(command(url, redis::cmd("INFO").arg(section)).await?))
}

/// Whether Redis at `url` answers PING.
pub async fn is_up(url: &str) -> bool {
    tokio::time::timeout(
        Duration::from_millis(500),
        command(url, &mut redis::cmd("PING")),
    )
    .await
    .is_ok_and(|r| r.is_ok())
}

/// A `redis-server` of the test's own, on a loopback port.
#[derive(Debug)]
pub struct PrivateRedis {
    /// Its port.
    pub port: u16,
    child: Option<Child>,
    /// Extra `redis-server` arguments (with `{port}` for the port).
    args: Vec<String>,
    /// The URL clients use (`{port}` for the port).
    url: String,
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

impl PrivateRedis {
    /// Starts one (`redis-server` must be on the PATH, or in `REDIS_SERVER`).
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(&[], "redis://127.0.0.1:{port}").await
    }

    /// Starts one with extra `redis-server` arguments, reached at `url`
    /// (`{port}` is filled in both).
    pub async fn start_with(args: &[&str], url: &str) -> anyhow::Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let mut r = Self {
            port,
            child: None,
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            url: url.to_owned(),
        };
        r.restart().await?;
        Ok(r)
    }

    /// Its URL.
    pub fn url(&self) -> String {
        self.url.replace("{port}", &self.port.to_string())
    }

    /// Kills it (as a crash would).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port; returns once it answers.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        let bin = std::env::var("REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
        let port = self.port.to_string();
        let tls = self.args.iter().any(|a| a == "--tls-port");
        let mut args: Vec<String> =
            vec!["--port".into(), if tls { "0".into() } else { port.clone() }];
        args.extend(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"].map(str::to_owned));
        args.extend(self.args.iter().map(|a| a.replace("{port}", &port)));
        let child = Command::new(&bin)
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {bin} (install redis-server)"))?;
        self.child = Some(child);
        // Up once the port accepts connections (a password or TLS would
        // make a plain PING fail).
        let addr = format!("127.0.0.1:{}", self.port);
        let up = eventually(Duration::from_secs(10), || {
            let addr = addr.clone();
            async move { tokio::net::TcpStream::connect(addr).await.is_ok() }
        })
        .await;
        anyhow::ensure!(up, "redis-server on port {} did not come up", self.port);
        Ok(())
    }
}
