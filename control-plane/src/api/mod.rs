//! The gRPC services: the admin API ([`admin`]), the identity API
//! ([`identity`]), the approval desk for sidecars ([`approval`]), the audit log ([`audit`]) and the mesh stream to every sidecar ([`mesh`], with the
//! parts it pushes in [`parts`]). They sit above the shared state and the
//! infrastructure (CA, key ring, store, hub) and below the wiring in `app`.

pub mod admin;
pub mod approval;
pub mod audit;
pub mod identity;
pub mod mesh;
pub mod parts;
