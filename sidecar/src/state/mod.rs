//! What the sidecar was told by the control plane, as one immutable
//! snapshot ([`held::Held`]): written by the mesh task, read by every call.

pub mod held;
