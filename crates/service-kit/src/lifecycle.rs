//! Starting and stopping a service.
//!
//! A service is a few long-running tasks (the HTTP server, one consumer loop
//! or more) sharing one [`CancellationToken`]. [`supervise`] runs them; when
//! any of them ends, for whatever reason, it cancels the token so the others
//! wind down too, and it logs how each one ended.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;

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
    tracing::info!(addr = %listener.local_addr()?, kafka = %kafka.bootstrap_servers, "{service} starting");
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
/// first error is returned once every task has finished.
pub async fn supervise(stop: CancellationToken, tasks: impl IntoIterator<Item = Task>) -> Result<()> {
    let mut set = JoinSet::new();
    let mut names = HashMap::new();
    for (name, fut) in tasks {
        names.insert(set.spawn(fut).id(), name);
    }
    let mut first_error = None;
    while let Some(joined) = set.join_next_with_id().await {
        stop.cancel();
        let name = |id| names.get(&id).copied().unwrap_or("unnamed");
        match joined {
            Ok((id, Ok(()))) => tracing::info!(task = name(id), "task stopped"),
            Ok((id, Err(e))) => {
                tracing::error!(task = name(id), error = %e, "task failed");
                first_error.get_or_insert(e);
            }
            Err(source) => {
                let task = name(source.id());
                tracing::error!(task, error = %source, "task panicked");
                first_error.get_or_insert(Error::Task { task, source });
            }
        }
    }
    first_error.map_or(Ok(()), Err)
}
