//! The sidecar's Redis: one connection (to an endpoint or a cluster) shared
//! by the limiter and the replay cache. Every operation is bounded by a
//! short timeout and one circuit breaker, so an outage costs no waiting per
//! call; the connection reconnects by itself.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use warden_shared::policy::CircuitBreaker;

use super::breaker::Breakers;
pub use crate::config::RedisConfig;

/// Why an operation failed (the caller applies its own failure mode).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The breaker is open after repeated failures.
    #[error("the Redis circuit is open")]
    CircuitOpen,
    /// No answer within the timeout.
    #[error("Redis did not answer within {0:?}")]
    Timeout(Duration),
    /// Redis answered with an error, or the connection failed.
    #[error("Redis: {0}")]
    Redis(String),
    /// The answer has an unexpected shape.
    #[error("unexpected answer from Redis")]
    Answer,
}

/// A connection to one Redis endpoint, or to a cluster.
enum Conn {
    /// Reconnects by itself.
    Single(redis::aio::ConnectionManager),
    /// Connected on first use (and again after a failure to connect); it
    /// follows the slot map by itself.
    Cluster(Box<ClusterConn>),
}

/// See [`Conn::Cluster`].
struct ClusterConn {
    client: redis::cluster::ClusterClient,
    conn: tokio::sync::Mutex<Option<redis::cluster_async::ClusterConnection>>,
}

/// The connection, its timeout and its breaker.
pub struct Redis {
    conn: Conn,
    timeout: Duration,
    breaker: Breakers,
    breaker_cfg: CircuitBreaker,
    /// Failed checks (timeouts, errors), for metrics.
    pub errors: AtomicU64,
    /// Key prefix.
    pub prefix: String,
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redis")
            .field("timeout", &self.timeout)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// The shortest wait for a connection (the cluster client's connection
/// timeout is the same).
const CONNECT_TIMEOUT_MIN: Duration = Duration::from_millis(100);

/// The breaker's key.
const BREAKER: &str = "redis";

/// An operation in flight (see [`Redis::guarded`]).
struct Pending<'a> {
    redis: &'a Redis,
    done: bool,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.redis.breaker.abandon(BREAKER, Instant::now());
        }
    }
}

impl Redis {
    /// A connection on `cfg`; connects lazily (a Redis that is down at start
    /// is an outage like any other, not a start failure).
    pub fn new(cfg: &RedisConfig) -> Result<Self, String> {
        use redis::IntoConnectionInfo;
        cfg.validate()?;
        let mut info = cfg
            .url
            .as_str()
            .into_connection_info()
            .map_err(|e| format!("redis.url: {e}"))?;
        if let Some(p) = &cfg.password_file {
            let pw = std::fs::read_to_string(p)
                .map_err(|e| format!("redis.password_file {}: {e}", p.display()))?;
            let settings = info.redis_settings().clone().set_password(pw.trim_end());
            info = info.set_redis_settings(settings);
        }
        let timeout = Duration::from_millis(cfg.timeout_ms);
        let root = match &cfg.ca_file {
            Some(ca) => Some(
                std::fs::read(ca).map_err(|e| format!("redis.ca_file {}: {e}", ca.display()))?,
            ),
            None => None,
        };
        let conn = if cfg.cluster {
            let mut b = redis::cluster::ClusterClient::builder([info.clone()])
                .connection_timeout(timeout.max(CONNECT_TIMEOUT_MIN))
                .response_timeout(timeout)
                .retries(1);
            if let Some(pw) = info.redis_settings().password() {
                b = b.password(pw);
            }
            if let Some(root) = root {
                b = b.certs(redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(root),
                });
            }
            Conn::Cluster(Box::new(ClusterConn {
                client: b.build().map_err(|e| format!("redis: {e}"))?,
                conn: tokio::sync::Mutex::new(None),
            }))
        } else {
            let client = match root {
                Some(root) => redis::Client::build_with_tls(
                    info,
                    redis::TlsCertificates {
                        client_tls: None,
                        root_cert: Some(root),
                    },
                ),
                None => redis::Client::open(info),
            }
            .map_err(|e| format!("redis: {e}"))?;
            let conf = redis::aio::ConnectionManagerConfig::new()
                .set_response_timeout(Some(timeout))
                .set_connection_timeout(Some(timeout.max(CONNECT_TIMEOUT_MIN)))
                .set_number_of_retries(1);
            Conn::Single(
                redis::aio::ConnectionManager::new_lazy_with_config(client, conf)
                    .map_err(|e| format!("redis: {e}"))?,
            )
        };
        Ok(Self {
            conn,
            timeout,
            breaker: Breakers::default(),
            breaker_cfg: CircuitBreaker {
                failures: cfg.breaker_failures,
                cooldown_ms: cfg.breaker_cooldown_ms,
            },
            errors: AtomicU64::new(0),
            prefix: cfg.key_prefix.clone(),
        })
    }

    /// The breaker's state name (`closed`, `open`, `half_open`).
    pub fn breaker_state(&self) -> &'static str {
        self.breaker
            .states()
            .get(BREAKER)
            .map_or("closed", |s| s.name())
    }

    /// A connection: the manager (which reconnects by itself), or the
    /// cluster connection, made on first use.
    async fn handle(&self) -> redis::RedisResult<Handle> {
        match &self.conn {
            Conn::Single(c) => Ok(Handle::Single(c.clone())),
            Conn::Cluster(cc) => {
                let mut held = cc.conn.lock().await;
                if let Some(c) = held.as_ref() {
                    return Ok(Handle::Cluster(c.clone()));
                }
                let c = cc.client.get_async_connection().await?;
                *held = Some(c.clone());
                Ok(Handle::Cluster(c))
            }
        }
    }

    /// Runs one Redis operation under the breaker and the timeout; counts
    /// and logs a failure. Getting the connection is not under `timeout`
    /// but under the longer connection timeout: connecting to a cluster (a
    /// handshake and a slot lookup) takes longer than one check may, and
    /// would otherwise never succeed. While Redis is away, the breaker
    /// opens after a few failed connections and no call waits.
    pub async fn guarded<T, F>(
        &self,
        what: &'static str,
        op: impl FnOnce(Handle) -> F,
    ) -> Result<T, Error>
    where
        F: Future<Output = Result<T, Error>>,
    {
        if self.breaker.admit(BREAKER, Instant::now()).is_err() {
            return Err(Error::CircuitOpen);
        }
        // An operation dropped unfinished (the caller went away) is
        // abandoned: a half-open probe must never leave the breaker waiting.
        let mut pending = Pending {
            redis: self,
            done: false,
        };
        let connect = self.timeout.max(CONNECT_TIMEOUT_MIN);
        let result = match tokio::time::timeout(connect, self.handle()).await {
            Err(_) => Err(Error::Timeout(connect)),
            Ok(Err(e)) => Err(redis_error(e)),
            Ok(Ok(h)) => match tokio::time::timeout(self.timeout, op(h)).await {
                Err(_) => Err(Error::Timeout(self.timeout)),
                Ok(r) => r,
            },
        };
        pending.done = true;
        self.breaker
            .record(BREAKER, result.is_ok(), &self.breaker_cfg, Instant::now());
        if let Err(e) = &result {
            self.errors.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(error = %e, what, "Redis operation failed");
        }
        result
    }

    /// `SET key 1 NX PX ttl_ms`: whether the key was new.
    pub async fn set_nx(&self, key: &str, ttl_ms: u64) -> Result<bool, Error> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(key).arg(1).arg("NX").arg("PX").arg(ttl_ms.max(1));
        self.guarded("replay check", |h| async move {
            let set: Option<String> = match h {
                Handle::Single(mut c) => cmd.query_async(&mut c).await,
                Handle::Cluster(mut c) => cmd.query_async(&mut c).await,
            }
            .map_err(redis_error)?;
            Ok(set.is_some())
        })
        .await
    }
}

/// A Redis failure as an [`Error`].
pub fn redis_error(e: redis::RedisError) -> Error {
    Error::Redis(e.to_string())
}

/// A connection for one operation.
#[allow(
    missing_debug_implementations,
    reason = "the redis crate's connections are not Debug"
)]
pub enum Handle {
    /// To one endpoint.
    Single(redis::aio::ConnectionManager),
    /// To a cluster.
    Cluster(redis::cluster_async::ClusterConnection),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_password_even_when_it_holds_an_at_sign() {
        for url in [
            "redis://:p@ss@host:6379",
            "rediss://user:s3cr3t@host:6379/0",
        ] {
            let shown = format!("{:?}", RedisConfig::new(url));
            assert!(shown.contains("[redacted]@host"), "{shown}");
            assert!(
                !shown.contains("ss@") && !shown.contains("s3cr3t"),
                "{shown}"
            );
        }
        assert!(
            format!("{:?}", RedisConfig::new("redis://host:6379")).contains("redis://host:6379")
        );
    }
}
