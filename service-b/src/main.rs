use service_b::{Config, SERVICE, run};
use service_kit::lifecycle::{block_on, listen, shutdown_signal};

/// mimalloc rather than glibc's malloc, whose calls took about a fifth of
/// Payments' CPU under load: with it the services spent a quarter less CPU
/// per payment, for about 10 MB more memory each (docs/measured.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
