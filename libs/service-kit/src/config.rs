//! Typed configuration from the environment.
//!
//! Every service reads its settings once, at start, through [`var`], so a
//! typo in a value stops the service with a message naming the variable
//! instead of surfacing later. Every default runs the demo locally.
//!
//! Plain values only, with their parsing: this module depends on nothing
//! else in the crate, so the settings can be read (and printed, and
//! checked) without the Kafka clients that use them.

use std::env::VarError;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use shared_events::Topics;

/// An environment variable set to something unusable.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {var}={value:?}: {reason}")]
pub struct ConfigError {
    pub var: &'static str,
    pub value: String,
    pub reason: String,
}

type Result<T, E = ConfigError> = std::result::Result<T, E>;

/// Reads `name` and parses it, or returns `default` when it is unset or empty.
pub fn var<T>(name: &'static str, default: T) -> Result<T>
where
    T: FromStr,
    T::Err: std::fmt::Display,
{
    parse(name, std::env::var(name), default)
}

fn parse<T>(name: &'static str, raw: Result<String, VarError>, default: T) -> Result<T>
where
    T: FromStr,
    T::Err: std::fmt::Display,
{
    match raw {
        Ok(value) if !value.trim().is_empty() => value.trim().parse().map_err(|e: T::Err| ConfigError {
            var: name,
            value,
            reason: e.to_string(),
        }),
        Ok(_) | Err(VarError::NotPresent) => Ok(default),
        Err(VarError::NotUnicode(value)) => Err(ConfigError {
            var: name,
            value: value.to_string_lossy().into_owned(),
            reason: "not valid UTF-8".to_owned(),
        }),
    }
}

/// Like [`var`], for a value that may hold a password (a database URL): an
/// error names the variable but does not repeat the value.
pub fn secret<T>(name: &'static str, default: &str) -> Result<T>
where
    T: FromStr,
    T::Err: std::fmt::Display,
{
    let raw: String = var(name, default.to_owned())?;
    raw.parse().map_err(|e: T::Err| ConfigError {
        var: name,
        value: "(not shown: may hold a password)".to_owned(),
        reason: e.to_string(),
    })
}

/// The value of `name`, else the content of the file `<name>_FILE` names
/// (the official images' convention for secrets kept in files: compose's
/// credential volumes); `None` when neither is set. A set variable wins
/// over the file, so a value given in the environment (`.env`) overrides
/// the file. The one place a secret is read from a file; the value is never
/// logged, nor repeated in an error.
pub fn var_or_file(name: &'static str) -> Result<Option<String>> {
    let file_var = format!("{name}_FILE");
    value_or_file(
        name,
        std::env::var(name).unwrap_or_default(),
        std::env::var_os(&file_var).map(std::path::PathBuf::from),
    )
}

/// [`var_or_file`] of the variable's `value` and the `file` its `_FILE`
/// twin names.
fn value_or_file(
    name: &'static str,
    value: String,
    file: Option<std::path::PathBuf>,
) -> Result<Option<String>> {
    if !value.trim().is_empty() {
        return Ok(Some(value.trim().to_owned()));
    }
    let file_var = format!("{name}_FILE");
    let Some(path) = file.filter(|path| !path.as_os_str().is_empty()) else {
        return Ok(None);
    };
    match std::fs::read_to_string(&path) {
        Ok(value) if !value.trim().is_empty() => Ok(Some(value.trim().to_owned())),
        Ok(_) => Err(ConfigError {
            var: name,
            value: String::new(),
            reason: format!(
                "not set, and the file {file_var} names ({}) is empty",
                path.display()
            ),
        }),
        Err(e) => Err(ConfigError {
            var: name,
            value: String::new(),
            reason: format!(
                "not set, and the file {file_var} names ({}) cannot be read: {e}",
                path.display()
            ),
        }),
    }
}

/// A credential the service cannot run without (`HTTP_CALLERS`,
/// `PAYMENTS_TOKEN`; see [`crate::auth`]), from the variable or the file
/// `<name>_FILE` names ([`var_or_file`]). It has no default: a default
/// would be in the repository. An error names the variable and says where a
/// set comes from, and never repeats the value.
pub fn credential<T>(name: &'static str) -> Result<T>
where
    T: FromStr,
    T::Err: std::fmt::Display,
{
    let Some(raw) = var_or_file(name)? else {
        return Err(ConfigError {
            var: name,
            value: String::new(),
            reason: format!(
                "not set, nor {name}_FILE; `cargo xtask credentials` writes a set of credentials into .env, \
                 compose's `credentials` step into files"
            ),
        });
    };
    raw.parse().map_err(|e: T::Err| ConfigError {
        var: name,
        value: "(not shown: a credential)".to_owned(),
        reason: e.to_string(),
    })
}

/// `DATABASE_URL` (default `default`), with the password of
/// `DATABASE_PASSWORD` (or the file `DATABASE_PASSWORD_FILE` names) when
/// that is set: compose keeps the password out of the URL, in a file.
pub fn database_url(default: &str) -> Result<DatabaseUrl> {
    let url: DatabaseUrl = secret("DATABASE_URL", default)?;
    Ok(match var_or_file("DATABASE_PASSWORD")? {
        Some(password) => DatabaseUrl(url.0.password(&password)),
        None => url,
    })
}

/// A database URL (`DATABASE_URL`), parsed: the options to connect with.
/// Its `Debug` (and so every config's) shows where it points and never the
/// password; `PgConnectOptions`' own `Debug` prints it.
#[derive(Clone)]
pub struct DatabaseUrl(sqlx::postgres::PgConnectOptions);

impl DatabaseUrl {
    pub fn options(&self) -> &sqlx::postgres::PgConnectOptions {
        &self.0
    }

    /// The URL, password included: for the one place that hands it on (a
    /// child process's `DATABASE_URL`).
    pub fn expose(&self) -> String {
        sqlx::ConnectOptions::to_url_lossy(&self.0).to_string()
    }
}

impl From<sqlx::postgres::PgConnectOptions> for DatabaseUrl {
    fn from(options: sqlx::postgres::PgConnectOptions) -> Self {
        Self(options)
    }
}

impl FromStr for DatabaseUrl {
    type Err = sqlx::Error;

    fn from_str(url: &str) -> std::result::Result<Self, Self::Err> {
        url.parse().map(Self)
    }
}

impl std::fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let options = &self.0;
        write!(
            f,
            "postgres://{}@{}:{}/{} (password not shown)",
            options.get_username(),
            options.get_host(),
            options.get_port(),
            options.get_database().unwrap_or("postgres"),
        )
    }
}

/// Reads a duration given in milliseconds.
pub fn millis(name: &'static str, default: Duration) -> Result<Duration> {
    let default_ms = u64::try_from(default.as_millis()).unwrap_or(u64::MAX);
    var(name, default_ms).map(Duration::from_millis)
}

/// How to reach Kafka and which topics to use. The same for every service.
#[derive(Debug, Clone)]
pub struct KafkaConfig {
    /// `KAFKA_BOOTSTRAP_SERVERS`: comma-separated `host:port` list.
    pub bootstrap_servers: String,
    /// `TOPIC_NOTIFICATIONS` and `TOPIC_STATE`.
    pub topics: Topics,
    /// `KAFKA_REPLICATION_FACTOR`: replicas of each topic created at startup
    /// (1 for a single local broker; 3 in a real cluster).
    pub replication_factor: i32,
    /// `KAFKA_COMMIT_INTERVAL_MS`: how often consumers commit the offsets of
    /// handled records in the background (on shutdown they commit at once).
    /// Default 5 s. A crash re-delivers at most this much.
    pub commit_interval: Duration,
    /// `KAFKA_DEBUG`: librdkafka's debug contexts for every client (for
    /// example `eos,protocol` to time each request of the relay's
    /// transactions), logged at debug level through `tracing`. Default none.
    pub debug: String,
    /// `KAFKA_SASL_USERNAME` and `KAFKA_SASL_PASSWORD`: the service's own
    /// Kafka user, to log in with SASL/SCRAM-SHA-512 on a listener where the
    /// broker checks what each user may do (`kafka_ops::access`). Both or
    /// neither; neither connects without logging in (a local broker's
    /// loopback listener, the tests').
    pub user: Option<KafkaUser>,
}

/// A Kafka user and its password. Its `Debug` never shows the password.
#[derive(Clone)]
pub struct KafkaUser {
    pub name: String,
    pub password: Secret,
}

impl std::fmt::Debug for KafkaUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (password not shown)", self.name)
    }
}

/// The variables a [`KafkaUser`] is read from.
const KAFKA_SASL_USERNAME: &str = "KAFKA_SASL_USERNAME";
const KAFKA_SASL_PASSWORD: &str = "KAFKA_SASL_PASSWORD";

impl KafkaUser {
    /// The environment that makes a service log in as this user (what
    /// [`KafkaUser::from_env`] reads).
    pub fn to_env(&self) -> [(&'static str, String); 2] {
        [
            (KAFKA_SASL_USERNAME, self.name.clone()),
            (KAFKA_SASL_PASSWORD, self.password.expose().to_owned()),
        ]
    }

    /// `KAFKA_SASL_USERNAME` and `KAFKA_SASL_PASSWORD` (or the file
    /// `KAFKA_SASL_PASSWORD_FILE` names), when set.
    pub fn from_env() -> Result<Option<Self>> {
        let name: String = var(KAFKA_SASL_USERNAME, String::new())?;
        let password = var_or_file(KAFKA_SASL_PASSWORD)?;
        match (name.is_empty(), password) {
            (true, None) => Ok(None),
            (false, Some(password)) => Ok(Some(Self {
                name,
                password: Secret::new(password),
            })),
            (true, Some(_)) => Err(ConfigError {
                var: KAFKA_SASL_USERNAME,
                value: String::new(),
                reason: "not set, and KAFKA_SASL_PASSWORD is: a password needs its user".to_owned(),
            }),
            (false, None) => Err(ConfigError {
                var: KAFKA_SASL_PASSWORD,
                value: String::new(),
                reason: format!(
                    "not set, nor KAFKA_SASL_PASSWORD_FILE, and KAFKA_SASL_USERNAME is ({name}); `cargo xtask \
                     credentials` writes the services' Kafka passwords into .env"
                ),
            }),
        }
    }
}

/// A password or token: its `Debug` and `Display` never show it; only
/// [`Secret::expose`] does, for the one place that sends it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("(not shown)")
    }
}

impl KafkaConfig {
    /// Defaults: a broker on `127.0.0.1:9092` and the standard topic names.
    pub fn local() -> Self {
        Self {
            bootstrap_servers: "127.0.0.1:9092".to_owned(),
            topics: Topics::default(),
            replication_factor: 1,
            commit_interval: Duration::from_secs(5),
            debug: String::new(),
            user: None,
        }
    }

    /// Reads the settings above, defaulting to [`KafkaConfig::local`].
    pub fn from_env() -> Result<Self> {
        let local = Self::local();
        Ok(Self {
            bootstrap_servers: var("KAFKA_BOOTSTRAP_SERVERS", local.bootstrap_servers)?,
            topics: Topics {
                notifications: var("TOPIC_NOTIFICATIONS", local.topics.notifications)?,
                state: var("TOPIC_STATE", local.topics.state)?,
            },
            replication_factor: var("KAFKA_REPLICATION_FACTOR", local.replication_factor)?,
            commit_interval: millis("KAFKA_COMMIT_INTERVAL_MS", local.commit_interval)?,
            debug: var("KAFKA_DEBUG", local.debug)?,
            user: KafkaUser::from_env()?,
        })
    }
}

/// How a service's consumers behave. The same settings for all of a
/// service's consumers.
#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    /// `START_FROM`: where a group member starts reading a partition its
    /// group has no committed offset for: `committed` (default: the
    /// beginning), `earliest`, `latest`, or a time (RFC 3339, or milliseconds
    /// since the epoch). See [`StartFrom`].
    pub start_from: StartFrom,
    /// `RETRY_INITIAL_MS` / `RETRY_MAX_MS`: backoff between attempts at a
    /// record whose handling failed for a reason that may pass, its own or
    /// a dependency's (default
    /// 100 ms doubling up to 10 s, with jitter).
    pub retry: Backoff,
    /// `RETRY_MAX_ATTEMPTS`: attempts at a record whose failure is its own
    /// ([`crate::consumer::HandleError::Transient`]) before it goes to the
    /// dead-letter topic. Default 20 (about a minute and a half of retrying);
    /// 0 retries for ever. A dependency that is down does not count: the
    /// consumer pauses and retries for as long as the outage lasts, with
    /// this backoff.
    pub max_attempts: u32,
    /// `KAFKA_SESSION_TIMEOUT_MS`: how soon the group notices a member that
    /// died without leaving and gives its partitions away. Default 10 s.
    pub session_timeout: Duration,
    /// `KAFKA_MAX_POLL_INTERVAL_MS`: how long a member may go without polling
    /// before it is dropped from the group. Default 300 s.
    pub max_poll_interval: Duration,
    /// `KAFKA_STATISTICS_INTERVAL_MS`: how often the lag metrics are
    /// refreshed. Default 5 s.
    pub statistics_interval: Duration,
    /// `SHUTDOWN_TIMEOUT_MS`: see [`shutdown_timeout`]. On shutdown the loop
    /// gives the records in hand half of it, then commits what it handled;
    /// a rebalance waits as long for the records of the partitions it takes
    /// away.
    pub shutdown_timeout: Duration,
    /// `CONSUMER_MAX_IN_FLIGHT`: how many records a consumer may have
    /// received and not yet handled, across all its partitions (those being
    /// handled, and those waiting behind an earlier record of their key).
    /// At the bound it takes no more until one is done (see
    /// [`crate::consumer`]). Default 256: the records handled together
    /// share their statements ([`crate::batch`]), so the bound sets how
    /// large those groups grow; with 64, a consumer was waiting on it, and
    /// ServiceB drained a backlog of 30,000 at 9,441/s against 13,404/s
    /// with 256 (`cargo xtask bench`, short runs back to back). It is also
    /// what a crash may hand again and what may wait behind a stuck key.
    pub max_in_flight: usize,
}

/// How long a service waits at start for the broker and its database unless
/// `STARTUP_TIMEOUT_MS` says otherwise.
pub const DEFAULT_STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

/// `STARTUP_TIMEOUT_MS`: how long a service waits at start for the broker
/// and its database (they may be starting too) before it gives up, saying
/// which it could not reach and how to start it. Default
/// [`DEFAULT_STARTUP_TIMEOUT`].
pub fn startup_timeout() -> Result<Duration> {
    millis("STARTUP_TIMEOUT_MS", DEFAULT_STARTUP_TIMEOUT)
}

/// How long a service may take to stop after SIGTERM unless
/// `SHUTDOWN_TIMEOUT_MS` says otherwise. `docker-compose.yml` gives the
/// services 15 s before it kills them.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);

/// `SHUTDOWN_TIMEOUT_MS`: how long a service may take to stop after SIGTERM
/// or ctrl-c, whatever it is waiting on; tasks still running then are
/// aborted. Default [`DEFAULT_SHUTDOWN_TIMEOUT`].
pub fn shutdown_timeout() -> Result<Duration> {
    millis("SHUTDOWN_TIMEOUT_MS", DEFAULT_SHUTDOWN_TIMEOUT)
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        Self {
            start_from: StartFrom::Committed,
            retry: Backoff::default(),
            max_attempts: 20,
            session_timeout: Duration::from_secs(10),
            max_poll_interval: Duration::from_secs(300),
            statistics_interval: Duration::from_secs(5),
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
            max_in_flight: 256,
        }
    }
}

impl ConsumerConfig {
    /// Reads the settings above, defaulting to [`ConsumerConfig::default`].
    pub fn from_env() -> Result<Self> {
        let default = Self::default();
        Ok(Self {
            start_from: var("START_FROM", default.start_from)?,
            retry: Backoff {
                initial: millis("RETRY_INITIAL_MS", default.retry.initial)?,
                max: millis("RETRY_MAX_MS", default.retry.max)?,
            },
            max_attempts: var("RETRY_MAX_ATTEMPTS", default.max_attempts)?,
            session_timeout: millis("KAFKA_SESSION_TIMEOUT_MS", default.session_timeout)?,
            max_poll_interval: millis("KAFKA_MAX_POLL_INTERVAL_MS", default.max_poll_interval)?,
            statistics_interval: millis("KAFKA_STATISTICS_INTERVAL_MS", default.statistics_interval)?,
            shutdown_timeout: shutdown_timeout()?,
            max_in_flight: var("CONSUMER_MAX_IN_FLIGHT", default.max_in_flight)?,
        })
    }
}

/// How long a service keeps what it needs only for a while (ServiceB's
/// handled notification ids, ServiceA's audit log), and how it prunes the
/// rest: see [`crate::retention`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionConfig {
    /// `RETENTION_DAYS`: rows older than this many days are deleted. Default
    /// [`DEFAULT_RETENTION_DAYS`]; at least 1. It must be longer than a
    /// notification can be delivered again: see [`crate::retention`].
    pub keep: Duration,
    /// `PRUNE_INTERVAL_MS`: how often a round runs while there is nothing
    /// more to delete. Default 10 minutes.
    pub interval: Duration,
    /// `PRUNE_BATCH`: the most rows one round deletes (one short
    /// statement); a full round is followed by the next at once. Default
    /// 1,000; at least 1.
    pub batch: u32,
}

/// Default `RETENTION_DAYS`: 15. A notification stays on its topic for
/// `retention.ms` (7 days) after the segment that holds it last took a
/// record, and a segment takes records for up to `segment.ms` (the
/// broker's default, 7 days): up to 14 days in all. One more day on top.
pub const DEFAULT_RETENTION_DAYS: u32 = 15;

impl Default for RetentionConfig {
    fn default() -> Self {
        Self {
            keep: days(DEFAULT_RETENTION_DAYS),
            interval: Duration::from_secs(10 * 60),
            batch: 1000,
        }
    }
}

impl RetentionConfig {
    /// Reads the settings above, defaulting to [`RetentionConfig::default`].
    pub fn from_env() -> Result<Self> {
        let default = Self::default();
        let keep_days: u32 = var("RETENTION_DAYS", DEFAULT_RETENTION_DAYS)?;
        let batch: u32 = var("PRUNE_BATCH", default.batch)?;
        let at_least_one = |var: &'static str, value: u32| {
            if value == 0 {
                Err(ConfigError {
                    var,
                    value: value.to_string(),
                    reason: "must be at least 1".to_owned(),
                })
            } else {
                Ok(value)
            }
        };
        Ok(Self {
            keep: days(at_least_one("RETENTION_DAYS", keep_days)?),
            interval: millis("PRUNE_INTERVAL_MS", default.interval)?,
            batch: at_least_one("PRUNE_BATCH", batch)?,
        })
    }
}

fn days(n: u32) -> Duration {
    Duration::from_secs(u64::from(n) * 24 * 60 * 60)
}

/// Where a group member starts reading a partition its group has no
/// committed offset for (`START_FROM`): a new group, or one whose offsets
/// were reset away. Partitions the group has read always resume where it
/// left off; to move those, stop the group and reset its offsets
/// (Kafka's `kafka-consumer-groups.sh --reset-offsets`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StartFrom {
    /// `committed`: the beginning (`auto.offset.reset=earliest`).
    #[default]
    Committed,
    /// `earliest`: the oldest record the topic retains.
    Earliest,
    /// `latest`: only records published after the consumer got the partition.
    Latest,
    /// An RFC 3339 time or milliseconds since the epoch: the first record
    /// with a timestamp at or after it.
    At(DateTime<Utc>),
}

impl FromStr for StartFrom {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "committed" => Ok(Self::Committed),
            "earliest" => Ok(Self::Earliest),
            "latest" => Ok(Self::Latest),
            _ => {
                if let Ok(ms) = s.parse::<i64>() {
                    return DateTime::from_timestamp_millis(ms)
                        .map(Self::At)
                        .ok_or_else(|| format!("{ms} ms is out of range"));
                }
                DateTime::parse_from_rfc3339(s)
                    .map(|t| Self::At(t.to_utc()))
                    .map_err(|_| {
                        "expected committed, earliest, latest, an RFC 3339 time or milliseconds since the epoch"
                            .to_owned()
                    })
            }
        }
    }
}

/// Exponential backoff with full jitter: attempt `n` waits a random time
/// between zero and `min(max, initial * 2^(n-1))`, so retrying instances do
/// not hammer a recovering dependency in lockstep.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(10),
        }
    }
}

impl Backoff {
    /// The delay before retry number `attempt` (1-based).
    pub fn delay(&self, attempt: u32) -> Duration {
        let ceiling = self
            .initial
            .saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1)))
            .min(self.max);
        ceiling.mul_f64(fastrand::f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_database_url_is_shown_without_its_password() {
        let url: DatabaseUrl = "postgres://payments:s3cretpw@db.internal:6543/events"
            .parse()
            .expect("a URL");
        let shown = format!("{url:?}");
        assert_eq!(
            shown,
            "postgres://payments@db.internal:6543/events (password not shown)"
        );
        assert!(!format!("{:?}", Some(url.clone())).contains("s3cret"));
        // Exposed, it reads back as the same login. (A password of letters
        // and digits: sqlx percent-encodes the others, `-` as `%2D`.)
        let again: DatabaseUrl = url.expose().parse().expect("the exposed URL");
        assert_eq!(again.options().get_username(), "payments");
        assert_eq!(again.options().get_database(), Some("events"));
        assert!(url.expose().contains(":s3cretpw@"), "{}", url.expose());
    }

    #[test]
    fn a_kafka_user_is_shown_without_its_password() {
        let config = KafkaConfig {
            user: Some(KafkaUser {
                name: "service-a".to_owned(),
                password: Secret::new("s3cret-pw"),
            }),
            ..KafkaConfig::local()
        };
        let shown = format!("{config:?} {:#?}", config.user);
        assert!(shown.contains("service-a (password not shown)"), "{shown}");
        assert!(!shown.contains("s3cret"), "{shown}");
    }

    #[test]
    fn a_secret_is_the_variable_else_its_file_never_shown() {
        let dir = std::env::temp_dir().join(format!("service-kit-file-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("KAFKA_SASL_PASSWORD");
        std::fs::write(&file, "from-the-file\n").expect("write");
        let read = |value: &str, file: Option<&std::path::Path>| {
            value_or_file("KAFKA_SASL_PASSWORD", value.to_owned(), file.map(Into::into))
        };
        assert_eq!(read("", Some(&file)).ok(), Some(Some("from-the-file".to_owned())));
        assert_eq!(read("set", Some(&file)).ok(), Some(Some("set".to_owned())));
        assert_eq!(read(" ", None).ok(), Some(None));
        let missing = read("", Some(&dir.join("missing"))).expect_err("no such file");
        std::fs::write(&file, "\n").expect("write");
        let empty = read("", Some(&file)).expect_err("an empty file");
        std::fs::remove_dir_all(&dir).expect("clean up");
        for error in [missing, empty] {
            let text = error.to_string();
            assert!(
                text.contains("KAFKA_SASL_PASSWORD=") && text.contains("KAFKA_SASL_PASSWORD_FILE"),
                "{text}"
            );
        }
    }

    #[test]
    fn unset_or_empty_uses_the_default() {
        assert_eq!(parse("PORT", Err(VarError::NotPresent), 7u16).ok(), Some(7));
        assert_eq!(parse("PORT", Ok(" ".to_owned()), 7u16).ok(), Some(7));
        assert_eq!(parse("PORT", Ok(" 80 ".to_owned()), 7u16).ok(), Some(80));
    }

    #[test]
    fn a_bad_value_names_the_variable() {
        let err = parse("PORT", Ok("eighty".to_owned()), 80u16).expect_err("not a number");
        let text = err.to_string();
        assert!(text.contains("PORT") && text.contains("eighty"), "{text}");
    }

    #[test]
    fn unset_variables_give_the_local_defaults() {
        assert_eq!(
            millis("SERVICE_KIT_TEST_SURELY_UNSET_MS", Duration::from_millis(1500)).ok(),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(KafkaConfig::local().bootstrap_servers, "127.0.0.1:9092");
    }

    #[test]
    fn the_default_retention_outlasts_a_notification_on_its_topic() {
        let retention_ms = u64::try_from(shared_events::topics::NOTIFICATION_RETENTION_MS).expect("positive");
        // `retention.ms` after its segment's newest record, and a segment
        // takes records for up to the broker's default `segment.ms`, 7 days.
        let on_topic = Duration::from_millis(retention_ms) + days(7);
        assert!(RetentionConfig::default().keep > on_topic);
    }

    #[test]
    fn start_positions_parse() {
        let at = |s: &str| parse("START_FROM", Ok(s.to_owned()), StartFrom::Committed).ok();
        assert_eq!(at("earliest"), Some(StartFrom::Earliest));
        assert_eq!(at("latest"), Some(StartFrom::Latest));
        assert_eq!(at("committed"), Some(StartFrom::Committed));
        let time = chrono::DateTime::parse_from_rfc3339("2026-11-27T10:00:00Z")
            .expect("time")
            .to_utc();
        assert_eq!(at("2026-11-27T11:00:00+01:00"), Some(StartFrom::At(time)));
        assert_eq!(
            at(&time.timestamp_millis().to_string()),
            Some(StartFrom::At(time))
        );
        assert_eq!(at("yesterday"), None);
    }
}
