use anyhow::Context;
use service_a::{Config, run};
use service_kit::lifecycle::shutdown_signal;
use tokio::net::TcpListener;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    service_kit::telemetry::init();
    let config = Config::from_env()?;
    let listener = TcpListener::bind(config.http_addr)
        .await
        .with_context(|| format!("cannot listen on {}", config.http_addr))?;
    tracing::info!(addr = %listener.local_addr()?, kafka = %config.kafka.bootstrap_servers, group = %config.group_id, "service-a starting");
    run(config, listener, shutdown_signal()).await?;
    tracing::info!("service-a stopped");
    Ok(())
}
