//! The tool gateway: every tool call runs one ordered pipeline
//! ([`pipeline`]); each stage can stop it with a typed [`Refusal`] that the
//! agent receives as a gRPC status and the record keeps.

pub mod approve;
pub mod authenticate;
pub mod authorize;
pub mod execute;
#[doc(hidden)]
pub mod fixture;
pub mod inspect;
pub mod limit;
pub mod pipeline;
pub mod record;
pub mod sensitive;
pub mod session;
pub mod validate;

pub use crate::policy::catalog;
pub use warden_shared::refusal::{Refusal, Stage};
