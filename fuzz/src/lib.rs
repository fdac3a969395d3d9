//! What the fuzz targets under `fuzz_targets/` share: how an input becomes
//! a Kafka record or an HTTP request, and what must hold of the answer.
//!
//! - [`record`]: a Kafka record as a consumer receives it (headers plus
//!   value), built from `arbitrary` choices biased toward real events, and
//!   the checks of every decoder and handler that reads one.
//! - [`http`]: an HTTP/1.1 request as a client sends it, parsed as the
//!   server parses it, handed to a service's router as served, and the
//!   checks of its answer.
//!
//! Nothing here reaches a broker. The services get a database that fails
//! at once (see [`unreachable_database`]), which is what lets a run do
//! thousands of requests a second, unless `FUZZ_DATABASE_URL` names a real
//! one ([`database`]): then what gets past validation is stored and read
//! for real (payments, refunds with `If-Match` and `Idempotency-Key`, the
//! callback's read, the audit and the records), slower.

pub mod http;
pub mod record;

use std::sync::OnceLock;

use service_kit::auth::{Callers, Rights, Token};
use sqlx::postgres::PgConnectOptions;

/// The one runtime of the process: the targets run each input to the end
/// with `block_on`, on this thread, so a panic anywhere is the input's.
pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a current-thread runtime")
    })
}

/// The variable naming the database the HTTP targets' services use;
/// `cargo xtask fuzz` sets it for its `…+db` runs, a database of the local
/// PostgreSQL made for each target.
pub const DATABASE_VAR: &str = "FUZZ_DATABASE_URL";

/// The database `FUZZ_DATABASE_URL` names, if it is set.
///
/// # Panics
///
/// If it is set and is not a PostgreSQL URL.
pub fn database() -> Option<PgConnectOptions> {
    let url = std::env::var(DATABASE_VAR).ok().filter(|url| !url.is_empty())?;
    Some(
        url.parse()
            .unwrap_or_else(|e| panic!("{DATABASE_VAR} is not a PostgreSQL URL: {e}")),
    )
}

/// A PostgreSQL server nobody runs: a Unix socket that does not exist. Every
/// query fails at once with an I/O error, as with a server that is down.
/// (Not a closed TCP port: sqlx retries a refused connection until its
/// acquire timeout, which would cost that timeout on every input that gets
/// as far as the database.)
pub fn unreachable_database() -> PgConnectOptions {
    PgConnectOptions::new()
        .socket("/nonexistent/fuzz")
        .username("fuzz")
        .database("fuzz")
}

/// The bearer token of the one caller the services let in; the seeds and
/// the dictionary carry it, so inputs get past authentication.
pub const CALLER_TOKEN: &str = "fuzz-caller-token-0123456789abcdef";

/// The services' callers: only the holder of [`CALLER_TOKEN`].
pub fn callers() -> Callers {
    let token: Token = CALLER_TOKEN.parse().expect("a valid token");
    Callers::of([("fuzz", Rights::READ_REFUND, &token)])
}
