use payments_service::{Config, SERVICE, run};
use service_kit::lifecycle::{block_on, listen, shutdown_signal};

fn main() -> anyhow::Result<()> {
    service_kit::telemetry::init();
    let config = Config::from_env()?;
    block_on(async {
        let listener = listen(SERVICE, config.http_addr, &config.kafka).await?;
        run(config, listener, shutdown_signal()).await?;
        tracing::info!("{SERVICE} stopped");
        anyhow::Ok(())
    })?
}
