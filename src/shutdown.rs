//! How `serve`'s listeners stop together: one `watch` flag turned true at
//! SIGTERM/SIGINT, and a semaphore per listener with a permit per open
//! connection, all of them back once every connection has closed.

use tokio::sync::{Semaphore, watch};

/// Resolves once `stop` turns true or its sender is gone.
pub(crate) async fn stopped(stop: &mut watch::Receiver<bool>) {
    // The value is dropped here: holding it across an await is not `Send`.
    let _ = stop.wait_for(|s| *s).await;
}

/// Resolves once all `max` permits of `connections` are back, i.e. every
/// connection that held one has closed.
pub(crate) async fn all_closed(connections: &Semaphore, max: usize) {
    let all = u32::try_from(max).unwrap_or(u32::MAX);
    let _ = connections.acquire_many(all).await;
}

/// Resolves at `at`, or never when `None`.
pub(crate) async fn until(at: Option<tokio::time::Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}
