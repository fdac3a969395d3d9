//! A database of its own for each test (feature `test-util`), owned by a
//! role of its own, as each service's is (`service_kit::postgres_access`).
//!
//! The server is the one `DATABASE_URL` names (`cargo xtask test` sets it to
//! a local PostgreSQL on machines without a container engine), or else one
//! `postgres` container shared by the tests of the test binary (see
//! `testkit`). With neither, tests fail and say how to get one.

use std::time::{Duration, Instant};

use service_kit::config::{DatabaseUrl, Secret};
use service_kit::postgres_access::provision;
use sqlx::{Postgres, Transaction};

use crate::store::EventStore;

/// A fresh, migrated database of its own on the tests' server.
#[derive(Debug)]
pub struct TestDatabase {
    /// The database's name, and its owner's: a service given [`Self::url`]
    /// logs in as that role. No other test's role may connect to it.
    pub name: String,
    /// Connection URL of this database, as its owner (password included).
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
        let server: DatabaseUrl = testkit::postgres_url()
            .await
            .parse()
            .expect("the tests' PostgreSQL URL");
        let name = format!("test_{}", uuid::Uuid::new_v4().simple());
        let password = Secret::new(uuid::Uuid::new_v4().simple().to_string());
        let own = provision(&server, &name, &password)
            .await
            .expect("create the test's role and database");
        let store = EventStore::connect(own.options().clone(), 24)
            .await
            .expect("connect to test database");
        Self {
            name,
            url: own.expose(),
            store,
        }
    }

    /// A connection to this database as the server's superuser, for what a
    /// test sets up that the database's own role may not (making roles,
    /// granting them this database).
    ///
    /// # Panics
    ///
    /// When the superuser cannot connect.
    pub async fn as_superuser(&self) -> sqlx::PgConnection {
        use sqlx::Connection as _;
        let server: DatabaseUrl = testkit::postgres_url()
            .await
            .parse()
            .expect("the tests' PostgreSQL URL");
        sqlx::PgConnection::connect_with(&server.options().clone().database(&self.name))
            .await
            .expect("connect to the test database as the superuser")
    }

    /// Holds back every append to this database until the hold is
    /// released: a transaction of the test's holds a lock on the events
    /// table that every insert into it waits for. Reads go on.
    ///
    /// # Panics
    ///
    /// When the lock cannot be taken.
    pub async fn hold_appends(&self) -> HeldAppends {
        let mut lock = self.store.pool().begin().await.expect("begin");
        sqlx::query("LOCK TABLE events IN SHARE MODE")
            .execute(&mut *lock)
            .await
            .expect("lock the events table");
        HeldAppends {
            lock,
            store: self.store.clone(),
        }
    }
}

/// How long the waits here wait before they fail the test.
const WAIT: Duration = Duration::from_secs(10);
/// How often they look.
const POLL: Duration = Duration::from_millis(10);

/// Returns once `count()` is `expected`: to wait for writes to queue for a
/// group commit ([`crate::GroupCommit::waiting`]).
///
/// # Panics
///
/// When it is not within ten seconds.
pub async fn until_count(what: &str, expected: usize, count: impl Fn() -> usize) {
    let deadline = Instant::now() + WAIT;
    while count() != expected {
        assert!(Instant::now() < deadline, "{} {what}, not {expected}", count());
        tokio::time::sleep(POLL).await;
    }
}

/// Appends held back ([`TestDatabase::hold_appends`]) until
/// [`HeldAppends::release`].
#[derive(Debug)]
pub struct HeldAppends {
    lock: Transaction<'static, Postgres>,
    store: EventStore,
}

impl HeldAppends {
    /// Returns once `sessions` sessions wait for the hold.
    ///
    /// # Panics
    ///
    /// When they do not within ten seconds.
    pub async fn until_waited_on_by(&self, sessions: i64) {
        let deadline = Instant::now() + WAIT;
        loop {
            let waiting: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_locks WHERE relation = 'events'::regclass AND NOT granted \
                 AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            )
            .fetch_one(self.store.pool())
            .await
            .expect("read pg_locks");
            if waiting == sessions {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{waiting} sessions wait for the held appends, not {sessions}"
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// Lets the held appends go on.
    ///
    /// # Panics
    ///
    /// When the lock's transaction cannot be ended.
    pub async fn release(self) {
        self.lock.rollback().await.expect("release the events table");
    }
}
