//! The shared limiter: one Lua script per call on Redis ([`SCRIPT`]),
//! invoked by EVALSHA (loaded again on NOSCRIPT), on the Redis clock, with
//! every key of a call under one hash tag (Redis Cluster safe), over the
//! sidecar's shared connection ([`Redis`]: its timeout and breaker).

use std::sync::Arc;

use super::{Item, Kind, Outcome};
pub use crate::config::RedisConfig;
pub use crate::infra::redis::Error;
use crate::infra::redis::{Handle, Redis, redis_error};

/// The check-and-count script.
pub const SCRIPT: &str = include_str!("gcra.lua");

/// The Redis-backed limiter: the script, on the shared connection (which
/// it derefs to, for its breaker state, error count and key prefix).
#[derive(Debug)]
pub struct RedisLimiter {
    redis: Arc<Redis>,
    script: redis::Script,
}

impl std::ops::Deref for RedisLimiter {
    type Target = Redis;

    fn deref(&self) -> &Redis {
        &self.redis
    }
}

impl RedisLimiter {
    /// A limiter with a connection of its own on `cfg`.
    pub fn new(cfg: &RedisConfig) -> Result<Self, String> {
        Ok(Self::on(Arc::new(Redis::new(cfg)?)))
    }

    /// A limiter on the shared connection `redis`.
    pub fn on(redis: Arc<Redis>) -> Self {
        Self {
            redis,
            script: redis::Script::new(SCRIPT),
        }
    }

    /// The connection it runs on.
    pub fn redis(&self) -> &Arc<Redis> {
        &self.redis
    }

    /// Checks and counts `items` in one script run.
    pub async fn check(&self, items: &[Item]) -> Result<Vec<Outcome>, Error> {
        let mut inv = self.script.prepare_invoke();
        for it in items {
            let (kind, a, b) = match it.kind {
                Kind::Rate { interval_us, burst } => ("r", interval_us, burst),
                Kind::Quota { window_us, budget } => ("q", window_us, budget),
            };
            inv.key(&it.key)
                .arg(kind)
                .arg(if it.enforce { "1" } else { "0" })
                .arg(a)
                .arg(b)
                .arg(it.weight);
        }
        self.redis
            .guarded("shared limit check", |h| async move {
                let v: Vec<i64> = match h {
                    Handle::Single(mut c) => inv.invoke_async(&mut c).await,
                    Handle::Cluster(mut c) => inv.invoke_async(&mut c).await,
                }
                .map_err(redis_error)?;
                if v.len() != 1 + 3 * items.len() {
                    return Err(Error::Answer);
                }
                Ok(v[1..]
                    .chunks(3)
                    .map(|c| Outcome {
                        admitted: c[0] == 1,
                        retry_after_us: c[1],
                        usage_permille: u32::try_from(c[2]).unwrap_or(u32::MAX),
                    })
                    .collect())
            })
            .await
    }
}
