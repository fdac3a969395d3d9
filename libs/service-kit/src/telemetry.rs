//! Logging setup. Levels come from `RUST_LOG` (default: `info`, with
//! librdkafka's own chatter at `warn`).

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Installs the global `tracing` subscriber. Call once, from `main`.
pub fn init() {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,librdkafka=warn,rdkafka=warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        // Colours for a terminal only: `docker logs` and files get plain text.
        .with_ansi(std::io::stdout().is_terminal())
        .init();
}

/// A subscriber for tests: the logs of the services a test runs in-process
/// go to the test's captured output, shown when it fails. Safe to call from
/// every test; the first call installs it.
pub fn init_for_tests() {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,librdkafka=warn,rdkafka=warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_test_writer()
        .try_init();
}
