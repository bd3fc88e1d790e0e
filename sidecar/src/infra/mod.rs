//! Infrastructure the stages share, below them all: the Redis connection
//! (the limiter's and the replay cache's, with one timeout and breaker) and
//! circuit breakers, the audit spool and the sink in front of it, and
//! accepting connections. It depends on `config` only.

pub mod audit;
pub mod breaker;
pub mod net;
pub mod redis;
pub mod spool;
