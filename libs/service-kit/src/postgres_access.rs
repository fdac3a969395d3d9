//! One PostgreSQL role per service, owning its own database and nothing
//! else: least privilege on the database server, as `kafka_ops::access` is
//! on the broker.
//!
//! A service's role and its database have the same name (`payments`,
//! `service_a`, `service_b` in the demo; a test's own name in the tests).
//! The role logs in, owns its database (so it runs its own migrations) and
//! may create nothing else: no databases, no roles, no superuser. It may
//! read the server's statistics (`pg_read_all_stats`), to tell the running
//! transactions of its own database from others'. No other
//! role may even connect to the database (CONNECT and TEMPORARY are revoked
//! from PUBLIC), so ServiceB's role cannot read the event store; a
//! superuser still can (the operator, xtask, the tests' setup).
//!
//! [`provision`] makes a role and its database, as a superuser: `cargo
//! xtask pg up` and `up`, compose's `postgres-access` step and the tests
//! call it. It may be run again: it sets the password anew, and gives the
//! role a database that existed before it (made by an earlier release, whose
//! services logged in as the superuser) with everything in its `public`
//! schema.

use shared_events::services::{PAYMENTS, SERVICE_A, SERVICE_B};
use sqlx::postgres::PgConnection;
use sqlx::{ConnectOptions, Connection};

use crate::config::{DatabaseUrl, Secret};

/// The demo's roles (compose, `cargo xtask up`), each with the variable that
/// holds its password (in `.env`, made by `cargo xtask credentials`), and
/// the service that logs in as it.
pub const ROLES: [(&str, &str, &str); 3] = [
    (
        PAYMENTS.database_role,
        "PAYMENTS_DATABASE_PASSWORD",
        PAYMENTS.name,
    ),
    (
        SERVICE_A.database_role,
        "SERVICE_A_DATABASE_PASSWORD",
        SERVICE_A.name,
    ),
    (
        SERVICE_B.database_role,
        "SERVICE_B_DATABASE_PASSWORD",
        SERVICE_B.name,
    ),
];

/// The demo's role (and database) of `service` (a package name, as in
/// [`ROLES`]).
pub fn role_of(service: &str) -> Option<&'static str> {
    ROLES
        .iter()
        .find(|(_, _, of)| *of == service)
        .map(|(role, _, _)| *role)
}

/// Makes role `name`, logging in with `password`, and database `name`, owned
/// by it, that no other role but a superuser may connect to; `admin` logs in
/// as a superuser. Returns how the role reaches its database: `admin`'s
/// server, as `name` with `password`.
///
/// # Errors
///
/// When `name` is not a plain lower-case identifier, or the server refuses.
pub async fn provision(admin: &DatabaseUrl, name: &str, password: &Secret) -> sqlx::Result<DatabaseUrl> {
    if !is_plain_identifier(name) {
        return Err(sqlx::Error::Configuration(
            format!("role and database name {name:?}: lower-case letters, digits and `_` only").into(),
        ));
    }
    // Not logged: the statements carry the password.
    let admin = admin.options().clone().disable_statement_logging();
    let mut server = PgConnection::connect_with(&admin).await?;
    let role_exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)")
        .bind(name)
        .fetch_one(&mut server)
        .await?;
    let verb = if role_exists { "ALTER" } else { "CREATE" };
    sqlx::query(&format!(
        "{verb} ROLE {name} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS \
         PASSWORD {}",
        literal(password.expose())
    ))
    .execute(&mut server)
    .await?;
    let database_exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(name)
            .fetch_one(&mut server)
            .await?;
    let database = if database_exists {
        format!("ALTER DATABASE {name} OWNER TO {name}")
    } else {
        format!("CREATE DATABASE {name} OWNER {name}")
    };
    sqlx::query(&database).execute(&mut server).await?;
    // PUBLIC may connect to (and make temporary tables in) a new database;
    // the owner keeps both.
    sqlx::query(&format!("REVOKE ALL ON DATABASE {name} FROM PUBLIC"))
        .execute(&mut server)
        .await?;
    // A reader in commit order (the outbox relay, ServiceA's audit: see
    // `event_store::commit_order`) waits only for the running transactions
    // of its own database, told apart by `pg_stat_activity.backend_xid`,
    // which PostgreSQL shows a role for its own sessions only unless it has
    // this. Without it, any open transaction on the server would hold the
    // reader back. It reads statistics (other sessions' queries among
    // them: parameterised, without values), and changes nothing.
    sqlx::query(&format!("GRANT pg_read_all_stats TO {name}"))
        .execute(&mut server)
        .await?;
    server.close().await?;

    if database_exists {
        let mut inside = PgConnection::connect_with(&admin.clone().database(name)).await?;
        sqlx::query(&hand_over(name)).execute(&mut inside).await?;
        inside.close().await?;
    }
    Ok(login(&DatabaseUrl::from(admin), name, password))
}

/// How role `name`, with `password`, reaches its database on `server`'s
/// server.
pub fn login(server: &DatabaseUrl, name: &str, password: &Secret) -> DatabaseUrl {
    DatabaseUrl::from(
        server
            .options()
            .clone()
            .username(name)
            .password(password.expose())
            .database(name),
    )
}

/// A block that gives role `name` every table, view, sequence and function
/// of schema `public` that another role owns (indexes, triggers and a
/// table's own sequences follow their table; an extension's objects stay
/// the extension's).
fn hand_over(name: &str) -> String {
    format!(
        "DO $$
DECLARE object record;
BEGIN
    FOR object IN
        SELECT c.oid::regclass AS relation FROM pg_class c
        WHERE c.relnamespace = 'public'::regnamespace
          AND c.relkind IN ('r', 'p', 'v', 'm', 'S')
          AND c.relowner <> '{name}'::regrole
          AND NOT EXISTS (SELECT 1 FROM pg_depend d
                          WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
                            AND d.deptype IN ('a', 'i', 'e'))
    LOOP
        EXECUTE format('ALTER TABLE %s OWNER TO {name}', object.relation);
    END LOOP;
    FOR object IN
        SELECT p.oid::regprocedure AS function FROM pg_proc p
        WHERE p.pronamespace = 'public'::regnamespace
          AND p.proowner <> '{name}'::regrole
          AND NOT EXISTS (SELECT 1 FROM pg_depend d
                          WHERE d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e')
    LOOP
        EXECUTE format('ALTER ROUTINE %s OWNER TO {name}', object.function);
    END LOOP;
END
$$"
    )
}

/// Whether `name` needs no quoting as an identifier: it is written into
/// statements that take no parameters.
fn is_plain_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|first| first.is_ascii_lowercase() || first == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && name.len() < 64
}

/// `value` as a string literal (with `standard_conforming_strings`, on
/// since PostgreSQL 9.1, a backslash is itself).
fn literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_identifiers_are_names() {
        for good in ["payments", "service_a", "test_0f3a", "_x"] {
            assert!(is_plain_identifier(good), "{good}");
        }
        for bad in [
            "",
            "Payments",
            "service-a",
            "1x",
            "a;drop role postgres",
            "a b",
            &"a".repeat(64),
        ] {
            assert!(!is_plain_identifier(bad), "{bad}");
        }
    }

    #[test]
    fn a_quote_in_a_password_is_doubled() {
        assert_eq!(literal("it's"), "'it''s'");
        assert_eq!(literal(r"a\b"), r"'a\b'");
    }

    #[test]
    fn every_demo_service_has_a_role() {
        assert_eq!(role_of("payments-service"), Some("payments"));
        assert_eq!(role_of("service-a"), Some("service_a"));
        assert_eq!(role_of("service-b"), Some("service_b"));
        assert_eq!(role_of("kafka-ui"), None);
    }
}
