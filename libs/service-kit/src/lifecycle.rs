//! Starting and stopping a service.
//!
//! A service is a few long-running tasks (the HTTP server, one consumer loop
//! or more) sharing one [`CancellationToken`]. [`supervise`] runs them; when
//! any of them ends, for whatever reason, it cancels the token so the others
//! wind down too, and it logs how each one ended. Once the token is
//! cancelled, the tasks have `SHUTDOWN_TIMEOUT_MS` to end; what still runs
//! then is aborted, so a service always stops.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::KafkaConfig;
use crate::error::{Error, Result};

/// Resolves on ctrl-c or SIGTERM (what `docker stop` and Kubernetes send).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for ctrl-c");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut sigterm) => {
                sigterm.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();

    tokio::select! {
        () = ctrl_c => tracing::info!("ctrl-c received, shutting down"),
        () = terminate => tracing::info!("SIGTERM received, shutting down"),
    }
}

/// Binds the service's HTTP listener, logging where it listens (tests give
/// port 0 and read the chosen port from this line).
pub async fn listen(service: &str, addr: SocketAddr, kafka: &KafkaConfig) -> Result<TcpListener> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Bind { addr, source })?;
    // Who it logs in to Kafka as, never with what password.
    let kafka_user = kafka.user.as_ref().map_or("(none)", |user| user.name.as_str());
    tracing::info!(
        addr = %listener.local_addr()?,
        kafka = %kafka.bootstrap_servers,
        %kafka_user,
        "{service} starting"
    );
    Ok(listener)
}

/// A token that is cancelled when `shutdown` resolves.
pub fn stop_token(shutdown: impl Future<Output = ()> + Send + 'static) -> CancellationToken {
    let token = CancellationToken::new();
    let stop = token.clone();
    tokio::spawn(async move {
        tokio::select! {
            () = shutdown => stop.cancel(),
            () = stop.cancelled() => {}
        }
    });
    token
}

/// One named long-running part of a service.
pub type Task = (&'static str, Pin<Box<dyn Future<Output = Result<()>> + Send>>);

/// Names a future as a [`Task`].
pub fn task(name: &'static str, fut: impl Future<Output = Result<()>> + Send + 'static) -> Task {
    (name, Box::pin(fut))
}

/// Runs `tasks` until all have ended. The first to end cancels `stop`; the
/// first error is returned once every task has finished. Once `stop` is
/// cancelled, tasks still running after `shutdown_timeout` are aborted, and
/// that is an error naming them.
pub async fn supervise(
    stop: CancellationToken,
    tasks: impl IntoIterator<Item = Task>,
    shutdown_timeout: Duration,
) -> Result<()> {
    let mut set = JoinSet::new();
    let mut running = HashMap::new();
    for (name, fut) in tasks {
        running.insert(set.spawn(fut).id(), name);
    }
    let mut first_error = None;
    let mut deadline = None;
    loop {
        let joined = match deadline {
            None => tokio::select! {
                joined = set.join_next_with_id() => joined,
                () = stop.cancelled() => {
                    deadline = Some(tokio::time::Instant::now() + shutdown_timeout);
                    continue;
                }
            },
            Some(at) => match tokio::time::timeout_at(at, set.join_next_with_id()).await {
                Ok(joined) => joined,
                Err(_) => {
                    let tasks = running.values().copied().collect::<Vec<_>>().join(", ");
                    tracing::error!(tasks, timeout = ?shutdown_timeout, "tasks did not stop in time; aborting them");
                    set.shutdown().await;
                    first_error.get_or_insert(Error::ShutdownTimeout {
                        timeout: shutdown_timeout,
                        tasks,
                    });
                    break;
                }
            },
        };
        let Some(joined) = joined else { break };
        stop.cancel();
        let id = match &joined {
            Ok((id, _)) => *id,
            Err(source) => source.id(),
        };
        let task = running.remove(&id).unwrap_or("unnamed");
        match joined {
            Ok((_, Ok(()))) => tracing::info!(task, "task stopped"),
            Ok((_, Err(e))) => {
                tracing::error!(task, error = %e, "task failed");
                first_error.get_or_insert(e);
            }
            Err(source) => {
                tracing::error!(task, error = %source, "task panicked");
                first_error.get_or_insert(Error::Task { task, source });
            }
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// Runs `service` to completion on a multi-threaded runtime, then gives the
/// runtime's blocking threads a second to finish: a client call stuck on an
/// unreachable broker or database must not keep the process from exiting
/// once its tasks have stopped. A service's `main` in one call.
///
/// # Errors
///
/// When the runtime cannot be built.
pub fn block_on<T>(service: impl Future<Output = T>) -> std::io::Result<T> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let outcome = runtime.block_on(service);
    runtime.shutdown_timeout(Duration::from_secs(1));
    Ok(outcome)
}
