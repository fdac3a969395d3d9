//! The Kafka UI: see [`kafka_ops::ui`].

use kafka_ops::ui::{Config, SERVICE, run};
use service_kit::lifecycle::{block_on, listen, shutdown_signal};

fn main() -> anyhow::Result<()> {
    // Held until the end of main: dropping it exports the last spans.
    let _telemetry = service_kit::telemetry::init(SERVICE)?;
    let config = Config::from_env()?;
    block_on(async {
        let listener = listen(SERVICE, config.http_addr, &config.kafka).await?;
        run(config, listener, shutdown_signal()).await?;
        tracing::info!("{SERVICE} stopped");
        anyhow::Ok(())
    })?
}
