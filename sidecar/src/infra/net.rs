//! Accepting connections on the sidecar's own listeners (MCP, messages).

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// After a failed accept (out of file descriptors, say), a listener waits
/// this long rather than spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The next connection on `listener`, or `None` once `stop` turns true. A
/// failed accept is logged under `what` and tried again after a pause.
pub async fn accept(
    listener: &TcpListener,
    stop: &mut watch::Receiver<bool>,
    what: &'static str,
) -> Option<(TcpStream, SocketAddr)> {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            // (The guard `wait_for` returns must not live across awaits.)
            () = async { let _ = stop.wait_for(|s| *s).await; } => return None,
        };
        match accepted {
            Ok(c) => return Some(c),
            Err(e) => {
                tracing::warn!(error = %e, listener = what, "accept failed; trying again shortly");
                tokio::select! {
                    () = tokio::time::sleep(ACCEPT_BACKOFF) => {}
                    () = async { let _ = stop.wait_for(|s| *s).await; } => return None,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn yields_connections_until_stopped() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop_tx, mut stop) = watch::channel(false);
        let client = TcpStream::connect(addr).await.unwrap();
        let (_conn, peer) = accept(&listener, &mut stop, "test").await.unwrap();
        assert_eq!(peer, client.local_addr().unwrap());
        stop_tx.send_replace(true);
        assert!(accept(&listener, &mut stop, "test").await.is_none());
    }
}
