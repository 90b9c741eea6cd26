//! Process-wide set-up for every binary of the project (the broker roles and the operator):
//! logging, and the open files limit.

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

/// Raises this process's soft limit on open files to its hard limit. Many runtimes start
/// containers with a soft limit of 1024, which a proxy with thousands of connections (or a
/// store node with many queue files) would hit; the hard limit is what the operator allows.
pub fn raise_open_files_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current == limit.maximum {
        return;
    }
    let raised = rustix::process::Rlimit {
        current: limit.maximum,
        maximum: limit.maximum,
    };
    match setrlimit(Resource::Nofile, raised) {
        Ok(()) => tracing::info!(
            from = limit.current,
            to = limit.maximum,
            "raised the open files limit"
        ),
        Err(e) => {
            tracing::warn!(error = %e, soft = limit.current, "could not raise the open files limit")
        }
    }
}
