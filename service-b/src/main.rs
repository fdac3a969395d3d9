use service_b::{Config, SERVICE, run};
use service_kit::lifecycle::{block_on, listen, shutdown_signal};

fn main() -> anyhow::Result<()> {
    // Held until the end of main: dropping it exports the last spans.
    let _telemetry = service_kit::telemetry::init(SERVICE)?;
    let config = Config::from_env()?;
    block_on(async {
        let listener = listen(SERVICE, config.service.http_addr, &config.service.kafka).await?;
        run(config, listener, shutdown_signal()).await?;
        tracing::info!("{SERVICE} stopped");
        anyhow::Ok(())
    })?
}
