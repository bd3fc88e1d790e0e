//! Builtin tools for demos and tests: `echo` returns its arguments, `clock`
//! the current time.

use super::Output;

/// Runs builtin `name`.
pub fn run(name: &str, args: &serde_json::Value, now: time::OffsetDateTime) -> Option<Output> {
    let body = match name {
        "echo" => serde_json::to_vec(args).ok()?,
        "clock" => serde_json::to_vec(&serde_json::json!({
            "unix": now.unix_timestamp(),
            "rfc3339": now
                .format(&time::format_description::well_known::Rfc3339)
                .ok()?,
        }))
        .ok()?,
        _ => return None,
    };
    Some(Output {
        content: body,
        content_type: "application/json".into(),
        status: 0,
        secrets: Vec::new(),
    })
}
