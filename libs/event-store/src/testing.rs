//! A database of its own for each test (feature `test-util`).
//!
//! The server is the one `DATABASE_URL` names (`cargo xtask test` sets it to
//! a local PostgreSQL on machines without a container engine), or else one
//! `postgres` container shared by the tests of the test binary (see
//! `testkit`). With neither, tests fail and say how to get one.

use std::str::FromStr;

use sqlx::Connection;
use sqlx::postgres::{PgConnectOptions, PgConnection};

use crate::store::EventStore;

/// A fresh, migrated database of its own on the tests' server.
#[derive(Debug)]
pub struct TestDatabase {
    /// Connection URL of this database.
    pub url: String,
    pub store: EventStore,
}

impl TestDatabase {
    /// A fresh database with the event store's schema.
    ///
    /// # Panics
    ///
    /// When there is no PostgreSQL to use, with instructions.
    pub async fn create() -> Self {
        let database = Self::empty().await;
        database.store.migrate().await.expect("migrate");
        database
    }

    /// A fresh database with nothing in it, for a service with a schema of
    /// its own (`store` is connected to it, but not migrated).
    ///
    /// # Panics
    ///
    /// When there is no PostgreSQL to use, with instructions.
    pub async fn empty() -> Self {
        let server_url = testkit::postgres_url().await;
        let name = format!("test_{}", uuid::Uuid::new_v4().simple());
        let mut admin = PgConnection::connect(&server_url)
            .await
            .expect("connect to PostgreSQL");
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .expect("create test database");
        admin.close().await.ok();

        let url = with_database(&server_url, &name);
        let options = PgConnectOptions::from_str(&url).expect("database URL");
        let store = EventStore::connect(options, 24)
            .await
            .expect("connect to test database");
        Self { url, store }
    }
}

/// `url` with its database replaced by `name`.
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = url.split_once('?').map_or((url, None), |(b, q)| (b, Some(q)));
    let server = base.rsplit_once('/').map_or(base, |(server, _)| server);
    match query {
        Some(q) => format!("{server}/{name}?{q}"),
        None => format!("{server}/{name}"),
    }
}

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn the_database_name_is_replaced() {
        assert_eq!(
            with_database("postgres://u@h:5432/postgres", "t1"),
            "postgres://u@h:5432/t1"
        );
        assert_eq!(
            with_database("postgres://u:p@h/postgres?sslmode=disable", "t1"),
            "postgres://u:p@h/t1?sslmode=disable"
        );
    }
}
