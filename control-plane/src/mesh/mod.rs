//! What the mesh streams share: the hub that wakes the streams a change
//! concerns (and keeps the blocked-agents list), and the registry of open
//! streams. The stream service itself is `api::mesh`.

pub mod hub;
pub mod registry;
