//! JSON-RPC as an MCP client speaks it: the messages it sends, and the
//! reading of what comes back (one JSON message, or a server-sent event
//! stream that carries the answer among notifications).

use serde_json::{Value, json};

use super::Failure;

/// Protocol revisions this client accepts from a server, newest first (the
/// first is the one asked for). As a client it sends no batches, so the
/// 2025-03-26 revision reads the same.
pub(super) const VERSIONS: [&str; 3] = ["2025-11-25", "2025-06-18", "2025-03-26"];

/// The `initialize` request's parameters.
pub(super) fn initialize_params() -> Value {
    json!({
        "protocolVersion": VERSIONS[0],
        "capabilities": {},
        "clientInfo": {"name": "warden-sidecar", "version": env!("CARGO_PKG_VERSION")},
    })
}

/// A request.
pub(super) fn request(id: u64, method: &str, params: &Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params})
}

/// A notification.
pub(super) fn notification(method: &str, params: Option<&Value>) -> Value {
    match params {
        Some(p) => json!({"jsonrpc": "2.0", "method": method, "params": p}),
        None => json!({"jsonrpc": "2.0", "method": method}),
    }
}

/// What one message from the server is.
#[derive(Debug)]
pub(super) enum Message {
    /// The answer to our request `id`: its result or its error code.
    Answer(u64, Result<Value, i64>),
    /// A notification (its method).
    Notification(String),
    /// A request of the server's (its id and method).
    Request(Value, String),
    /// Something else (an answer to an id we did not use, say).
    Other,
}

/// Reads one JSON-RPC message.
pub(super) fn classify(v: &Value) -> Result<Message, Failure> {
    let Value::Object(m) = v else {
        return Err(Failure::Protocol(
            "a message that is not a JSON object".into(),
        ));
    };
    if m.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Err(Failure::Protocol(
            "a message that is not JSON-RPC 2.0".into(),
        ));
    }
    let method = m.get("method").and_then(Value::as_str);
    match (m.get("id"), method) {
        (Some(id), Some(method)) => Ok(Message::Request(id.clone(), method.to_owned())),
        (None, Some(method)) => Ok(Message::Notification(method.to_owned())),
        (Some(id), None) => {
            let Some(id) = id.as_u64() else {
                return Ok(Message::Other);
            };
            if let Some(r) = m.get("result") {
                return Ok(Message::Answer(id, Ok(r.clone())));
            }
            let code = m
                .get("error")
                .and_then(|e| e.get("code"))
                .and_then(Value::as_i64)
                .ok_or_else(|| Failure::Protocol("an answer without result or error".into()))?;
            Ok(Message::Answer(id, Err(code)))
        }
        (None, None) => Err(Failure::Protocol("a message without id or method".into())),
    }
}

/// The answer to request `id` in an HTTP body of `content_type`: one JSON
/// message, or an event stream whose events' data are messages. `seen` is
/// told of every notification on the way.
pub(super) fn answer_in(
    content_type: &str,
    body: &[u8],
    id: u64,
    seen: &mut dyn FnMut(&str),
) -> Result<Result<Value, i64>, Failure> {
    let media = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    let mut found = None;
    let mut take = |v: &Value| -> Result<(), Failure> {
        match classify(v)? {
            Message::Answer(got, r) if got == id => found = Some(r),
            Message::Notification(m) => seen(&m),
            _ => {}
        }
        Ok(())
    };
    match media.as_str() {
        "application/json" => {
            let v: Value = serde_json::from_slice(body)
                .map_err(|_| Failure::Protocol("an answer that is not JSON".into()))?;
            take(&v)?;
        }
        "text/event-stream" => {
            let text = std::str::from_utf8(body)
                .map_err(|_| Failure::Protocol("an event stream that is not UTF-8".into()))?;
            for data in events(text) {
                // Events without JSON (a priming event, say) carry nothing
                // for us.
                if let Ok(v) = serde_json::from_str::<Value>(&data) {
                    take(&v)?;
                }
            }
        }
        other => {
            return Err(Failure::Protocol(format!(
                "an answer of type {:?}",
                other.chars().take(64).collect::<String>()
            )));
        }
    }
    found.ok_or_else(|| Failure::Protocol("no answer to the request".into()))
}

/// Whether `body`, an answer of type `parts`, is an event stream that has
/// carried the answer to request `id` in a complete event.
pub(super) fn stream_answered(parts: &http::response::Parts, body: &[u8], id: u64) -> bool {
    let sse = parts
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| {
            t.split(';')
                .next()
                .is_some_and(|m| m.trim().eq_ignore_ascii_case("text/event-stream"))
        });
    if !sse {
        return false;
    }
    let Ok(text) = std::str::from_utf8(body) else {
        return false;
    };
    // Only complete events: up to the last blank line.
    let Some(end) = text.rfind("\n\n").or_else(|| text.rfind("\r\n\r\n")) else {
        return false;
    };
    events(&text[..end]).iter().any(|data| {
        serde_json::from_str::<Value>(data)
            .ok()
            .and_then(|v| classify(&v).ok())
            .is_some_and(|m| matches!(m, Message::Answer(got, _) if got == id))
    })
}

/// The data of each event of a server-sent event stream (the lines of
/// one event joined by `\n`), per the HTML living standard's parsing rules
/// for `data` fields; other fields are ignored.
pub(super) fn events(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut data: Option<String> = None;
    for line in text.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.is_empty() {
            if let Some(d) = data.take() {
                out.push(d);
            }
            continue;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        if field == "data" {
            match &mut data {
                Some(d) => {
                    d.push('\n');
                    d.push_str(value);
                }
                None => data = Some(value.to_owned()),
            }
        }
    }
    if let Some(d) = data {
        out.push(d);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_streams_yield_the_answer_among_notifications() {
        let body = "event: message\r\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/tools/list_changed\"}\r\n\r\n: comment\n\nid: 7\ndata: {\"jsonrpc\":\"2.0\",\ndata: \"id\":3,\"result\":{\"ok\":true}}\n\n";
        let mut notes = Vec::new();
        let r = answer_in("text/event-stream", body.as_bytes(), 3, &mut |m| {
            notes.push(m.to_owned());
        })
        .unwrap();
        assert_eq!(r.unwrap(), json!({"ok": true}));
        assert_eq!(notes, ["notifications/tools/list_changed"]);
    }

    #[test]
    fn errors_and_missing_answers_are_told_apart() {
        let body = br#"{"jsonrpc":"2.0","id":5,"error":{"code":-32602,"message":"x"}}"#;
        let r = answer_in("application/json; charset=utf-8", body, 5, &mut |_| {}).unwrap();
        assert_eq!(r, Err(-32602));
        for (ct, body) in [
            (
                "application/json",
                &br#"{"jsonrpc":"2.0","id":6,"result":{}}"#[..],
            ),
            ("application/json", b"not json"),
            ("text/html", b"<p>"),
            ("text/event-stream", b"data: {}\n\n"),
        ] {
            assert!(answer_in(ct, body, 5, &mut |_| {}).is_err(), "{ct}");
        }
    }
}
