//! Process-wide logging for every binary of the project (the broker roles and the operator).

/// Installs the `tracing` subscriber: the level from `RUST_LOG` (default `info`), and one JSON
/// object per line when `RMQ_LOG_FORMAT=json` (what log collectors in Kubernetes read).
pub fn init() {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    if std::env::var("RMQ_LOG_FORMAT").is_ok_and(|f| f == "json") {
        tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .init();
    } else {
        tracing_subscriber::fmt().with_env_filter(filter).init();
    }
}
