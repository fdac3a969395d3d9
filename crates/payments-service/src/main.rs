use payments_service::{Config, SERVICE, run};
use service_kit::lifecycle::{listen, shutdown_signal};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    service_kit::telemetry::init();
    let config = Config::from_env()?;
    let listener = listen(SERVICE, config.http_addr, &config.kafka).await?;
    run(config, listener, shutdown_signal()).await?;
    tracing::info!("{SERVICE} stopped");
    Ok(())
}
