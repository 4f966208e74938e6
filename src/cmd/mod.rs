//! One module per top-level subcommand.

pub mod auth;
pub mod bench;
pub mod crush;
pub mod mds;
pub mod mount;
pub mod osd;
pub mod pg;
pub mod pool;
pub mod status;
pub mod up;

/// Returns when the process gets SIGINT or SIGTERM.
pub async fn wait_for_stop_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
}
