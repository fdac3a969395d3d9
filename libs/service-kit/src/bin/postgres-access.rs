//! Makes each service's PostgreSQL role and its database, then exits:
//! compose's `postgres-access` step (see [`service_kit::postgres_access`]).
//!
//! `DATABASE_URL` (with `DATABASE_PASSWORD`) logs in as a superuser (the
//! image's `postgres`); the services' passwords come from the variables
//! [`service_kit::postgres_access::ROLES`] names, or the files their
//! `_FILE` twins name. No password is logged.

use service_kit::config::{Secret, credential, database_url};
use service_kit::lifecycle::block_on;
use service_kit::postgres_access::{ROLES, provision};

/// Its name in the logs.
const SERVICE: &str = "postgres-access";

fn main() -> anyhow::Result<()> {
    let _telemetry = service_kit::telemetry::init(SERVICE)?;
    let admin = database_url("postgres://postgres@127.0.0.1:5432/postgres")?;
    let passwords = ROLES
        .iter()
        .map(|&(role, var, _)| Ok((role, credential::<Secret>(var)?)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    block_on(async {
        for (role, password) in &passwords {
            provision(&admin, role, password).await?;
        }
        let names: Vec<&str> = passwords.iter().map(|(role, _)| *role).collect();
        tracing::info!(
            "roles {} are in place, each owning its database and allowed into no other",
            names.join(", ")
        );
        anyhow::Ok(())
    })?
}
