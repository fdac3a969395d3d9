//! One statement, and one commit, for the rows of many records.
//!
//! The consumer handles records of different keys concurrently
//! ([`crate::consumer`]); were each to write its own row, every record would
//! cost a round trip and a commit (a WAL flush). Through [`Batched`], each
//! caller submits its row and awaits its own answer, and one statement
//! writes the rows submitted together. No timer is involved: while no
//! statement runs, the first row starts one at once (a lone record waits
//! for nothing), and the rows submitted while it runs make the next group,
//! up to [`MAX_ROWS`]. Groups so grow with the load by themselves.
//!
//! A caller is answered only once the statement's transaction has
//! committed. The consumer stores a record's offset, and starts the next
//! record of its key, only once its handler has returned: offsets still
//! follow the writes, and the records of a key are still written in order.
//!
//! A group that fails is not every row's failure. A database that is
//! unavailable fails each of them alike, and each caller is told so; any
//! other failure (a value the database rejects, one payment twice in a
//! group) may be one row's, so each row is then written again on its own,
//! and each caller gets its own outcome.
//!
//! The mechanism is not tied to one statement or one error type: the event
//! store commits concurrent appends together through it too
//! (`event_store::group`), each in a savepoint of the group's transaction,
//! with its own error type ([`GroupError`]).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};

use sqlx::PgPool;
use tokio::sync::oneshot;

use crate::Error;
use crate::consumer::HandleError;

/// The most rows one statement takes unless it says otherwise
/// ([`Statement::MAX_ROWS`]): a bound on the statement's size and on how
/// long its transaction holds its locks. The consumer's `max_in_flight` (256
/// by default) usually bounds a group first.
pub const MAX_ROWS: usize = 512;

/// A statement that writes (or reads) many rows at once.
pub trait Statement: Send + Sync + 'static {
    type Row: Send + Sync + 'static;
    type Answer: Send + 'static;
    /// How the statement fails: [`Error`] for a service's own database.
    type Error: GroupError;

    /// The most rows one run takes.
    const MAX_ROWS: usize = MAX_ROWS;

    /// Runs once for all of `rows`, in one transaction, and answers each
    /// row, in the order of `rows`.
    fn run(&self, rows: &[Self::Row]) -> impl Future<Output = Result<Vec<Self::Answer>, Self::Error>> + Send;
}

/// What an [`Sql`] statement's function returns: the answers of its rows.
pub type SqlFuture<'a, Answer> = Pin<Box<dyn Future<Output = crate::Result<Vec<Answer>>> + Send + 'a>>;

/// A [`Statement`] on a service's own database: a function of the pool and
/// the rows, as ServiceA and ServiceB write theirs:
/// `Sql::new(pool, |pool, rows| Box::pin(insert(pool, rows)))`, where
/// `insert` is an `async fn(&PgPool, &[Row]) -> Result<Vec<Answer>>`.
/// (The future is boxed because a plain `async fn` pointer cannot promise a
/// `Send` future on stable Rust; one allocation per group is nothing next
/// to its round trip.)
#[derive(Debug)]
pub struct Sql<Row, Answer> {
    pool: PgPool,
    run: for<'a> fn(&'a PgPool, &'a [Row]) -> SqlFuture<'a, Answer>,
}

impl<Row, Answer> Sql<Row, Answer> {
    pub fn new(pool: PgPool, run: for<'a> fn(&'a PgPool, &'a [Row]) -> SqlFuture<'a, Answer>) -> Self {
        Self { pool, run }
    }
}

impl<Row: Send + Sync + 'static, Answer: Send + 'static> Statement for Sql<Row, Answer> {
    type Row = Row;
    type Answer = Answer;
    type Error = Error;

    async fn run(&self, rows: &[Row]) -> crate::Result<Vec<Answer>> {
        (self.run)(&self.pool, rows).await
    }
}

/// What [`Batched`] needs of a statement's error to answer every row of a
/// group that failed.
pub trait GroupError: fmt::Display + Send + Sized + 'static {
    /// Whether the failure is every row's alike (the database unavailable),
    /// not possibly one row's: its rows are then not written one by one.
    fn fails_every_row(&self) -> bool;
    /// The failure of a whole group, as each of its callers is told it.
    fn shared(failure: Arc<Self>) -> Self;
    /// What a caller is told whose row's group ended without answering it
    /// (its task failed): whether the row was written is unknown.
    fn unanswered() -> Self;
}

impl GroupError for Error {
    /// As the consumer classifies it: a database that is unavailable fails
    /// every row; a statement it rejects may be one row's.
    fn fails_every_row(&self) -> bool {
        match self {
            Error::Database(e) => HandleError::is_unavailable(e),
            _ => true,
        }
    }

    fn shared(failure: Arc<Self>) -> Self {
        Error::Shared(failure)
    }

    fn unanswered() -> Self {
        Error::Unanswered
    }
}

type Answered<S> = Result<<S as Statement>::Answer, <S as Statement>::Error>;

/// Runs `S` for the rows submitted together. Cheap to clone; the clones
/// share their groups.
pub struct Batched<S: Statement> {
    shared: Arc<Shared<S>>,
}

struct Shared<S: Statement> {
    statement: S,
    queue: Mutex<Queue<S>>,
}

struct Queue<S: Statement> {
    /// Submitted, for the next group.
    waiting: Vec<Pending<S>>,
    /// Whether a task is running groups; it runs them until none is waiting.
    running: bool,
}

struct Pending<S: Statement> {
    row: S::Row,
    answer: oneshot::Sender<Answered<S>>,
}

impl<S: Statement> Batched<S> {
    pub fn new(statement: S) -> Self {
        Self {
            shared: Arc::new(Shared {
                statement,
                queue: Mutex::new(Queue {
                    waiting: Vec::new(),
                    running: false,
                }),
            }),
        }
    }

    /// Runs the statement for `row`, together with the rows submitted while
    /// the statement before ran, and returns `row`'s answer once the
    /// transaction has committed. Should the caller stop waiting, the row
    /// may still be written.
    pub async fn submit(&self, row: S::Row) -> Answered<S> {
        let (answer, answered) = oneshot::channel();
        let start = {
            let mut queue = self.shared.lock();
            queue.waiting.push(Pending { row, answer });
            !std::mem::replace(&mut queue.running, true)
        };
        if start {
            tokio::spawn(Arc::clone(&self.shared).run_groups());
        }
        answered.await.unwrap_or_else(|_| Err(S::Error::unanswered()))
    }

    /// How many rows wait for the next group (the running one's excluded).
    pub fn waiting(&self) -> usize {
        self.shared.lock().waiting.len()
    }
}

impl<S: Statement> Shared<S> {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queue<S>> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs a group of what waits, then the next, until nothing waits.
    async fn run_groups(self: Arc<Self>) {
        let _running = Running(&self);
        loop {
            let group: Vec<_> = {
                let mut queue = self.lock();
                if queue.waiting.is_empty() {
                    queue.running = false;
                    return;
                }
                let size = queue.waiting.len().min(S::MAX_ROWS);
                queue.waiting.drain(..size).collect()
            };
            self.run_group(group).await;
        }
    }

    async fn run_group(&self, group: Vec<Pending<S>>) {
        let (rows, answers): (Vec<_>, Vec<_>) = group.into_iter().map(|p| (p.row, p.answer)).unzip();
        match self.statement.run(&rows).await {
            // A row left without an answer learns so from its dropped sender.
            Ok(answered) => {
                for (answer, outcome) in answers.into_iter().zip(answered) {
                    let _ = answer.send(Ok(outcome));
                }
            }
            Err(e) if answers.len() == 1 => {
                if let Some(answer) = answers.into_iter().next() {
                    let _ = answer.send(Err(e));
                }
            }
            Err(e) if e.fails_every_row() => {
                let e = Arc::new(e);
                for answer in answers {
                    let _ = answer.send(Err(S::Error::shared(Arc::clone(&e))));
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, rows = rows.len(), "a group failed; writing its rows one by one");
                for (row, answer) in rows.iter().zip(answers) {
                    let outcome = self.statement.run(std::slice::from_ref(row)).await;
                    let _ =
                        answer.send(outcome.and_then(|mut one| one.pop().ok_or_else(S::Error::unanswered)));
                }
            }
        }
    }
}

/// Should a statement panic, lets the next submission start a new task
/// rather than wait for ever on this one.
struct Running<'a, S: Statement>(&'a Shared<S>);

impl<S: Statement> Drop for Running<'_, S> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.lock().running = false;
        }
    }
}

impl<S: Statement> Clone for Batched<S> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<S: Statement> fmt::Debug for Batched<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Batched")
            .field("waiting", &self.waiting())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::sync::Semaphore;

    use super::*;

    /// Doubles each number; fails a group holding a negative one as the
    /// database would reject the row, and (while `down`) every group as a
    /// database that is down would. Notes each group's size, and holds each
    /// run until the test lets it go.
    struct Doubling {
        groups: Arc<Mutex<Vec<usize>>>,
        gate: Arc<Semaphore>,
        down: Arc<AtomicUsize>,
    }

    impl Statement for Doubling {
        type Row = i64;
        type Answer = i64;
        type Error = Error;

        async fn run(&self, rows: &[i64]) -> crate::Result<Vec<i64>> {
            self.groups.lock().expect("lock").push(rows.len());
            self.gate.acquire().await.expect("open").forget();
            if self.down.load(Ordering::SeqCst) > 0 {
                return Err(Error::Database(sqlx::Error::PoolTimedOut));
            }
            if rows.iter().any(|row| *row < 0) {
                return Err(Error::Database(sqlx::Error::RowNotFound));
            }
            Ok(rows.iter().map(|row| row * 2).collect())
        }
    }

    /// Permits enough for every statement a test runs, once its rows wait.
    const ALL: usize = 100;

    /// What the tests watch of a [`Doubling`].
    type Watched = (Arc<Mutex<Vec<usize>>>, Arc<Semaphore>, Arc<AtomicUsize>);

    fn doubling() -> (Batched<Doubling>, Watched) {
        let groups = Arc::new(Mutex::new(Vec::new()));
        let gate = Arc::new(Semaphore::new(0));
        let down = Arc::new(AtomicUsize::new(0));
        let batched = Batched::new(Doubling {
            groups: Arc::clone(&groups),
            gate: Arc::clone(&gate),
            down: Arc::clone(&down),
        });
        (batched, (groups, gate, down))
    }

    /// Submits `row` from a task of its own, and returns once its group's
    /// statement runs (the first of the test: nothing else runs).
    async fn submit_first(
        batched: &Batched<Doubling>,
        groups: &Mutex<Vec<usize>>,
        row: i64,
    ) -> tokio::task::JoinHandle<crate::Result<i64>> {
        let submitted = tokio::spawn({
            let batched = batched.clone();
            async move { batched.submit(row).await }
        });
        while groups.lock().expect("lock").is_empty() {
            tokio::task::yield_now().await;
        }
        submitted
    }

    /// Submits each of `rows` from a task of its own, and returns once all
    /// of them wait for the next group (a statement runs meanwhile).
    async fn submit_all(
        batched: &Batched<Doubling>,
        rows: impl IntoIterator<Item = i64>,
    ) -> Vec<tokio::task::JoinHandle<crate::Result<i64>>> {
        let mut submitted = Vec::new();
        for row in rows {
            let batched = batched.clone();
            submitted.push(tokio::spawn(async move { batched.submit(row).await }));
        }
        while batched.waiting() < submitted.len() {
            tokio::task::yield_now().await;
        }
        submitted
    }

    #[tokio::test]
    async fn rows_submitted_while_a_statement_runs_share_the_next_and_each_gets_its_own_answer() {
        let (batched, (groups, gate, _)) = doubling();
        // A lone row starts a statement at once.
        let first = submit_first(&batched, &groups, 1).await;
        // Ten more arrive while it runs: one statement for all ten.
        let next = submit_all(&batched, 2..12).await;
        gate.add_permits(ALL);
        assert_eq!(first.await.expect("task").expect("ran"), 2);
        for (row, answer) in (2..12).zip(next) {
            assert_eq!(answer.await.expect("task").expect("ran"), row * 2);
        }
        assert_eq!(*groups.lock().expect("lock"), [1, 10]);
    }

    #[tokio::test]
    async fn a_row_the_statement_rejects_fails_alone_and_the_rest_of_its_group_is_written() {
        let (batched, (groups, gate, _)) = doubling();
        let first = submit_first(&batched, &groups, 0).await;
        let next = submit_all(&batched, [3, -1, 5]).await;
        gate.add_permits(ALL);
        first.await.expect("task").expect("ran");
        let mut answers = Vec::new();
        for answer in next {
            answers.push(answer.await.expect("task").ok());
        }
        assert_eq!(answers, [Some(6), None, Some(10)]);
        // The first, the group of three that failed, then each of its rows alone.
        assert_eq!(*groups.lock().expect("lock"), [1, 3, 1, 1, 1]);
    }

    #[tokio::test]
    async fn a_database_that_is_down_fails_every_row_of_the_group_as_unavailable() {
        let (batched, (groups, gate, down)) = doubling();
        let first = submit_first(&batched, &groups, 0).await;
        let next = submit_all(&batched, [1, 2, 3]).await;
        down.store(1, Ordering::SeqCst);
        gate.add_permits(ALL);
        let _ = first.await.expect("task");
        for answer in next {
            let failed = answer.await.expect("task").expect_err("down");
            assert!(
                matches!(HandleError::from(failed), HandleError::Unavailable { .. }),
                "a shared failure is the dependency's"
            );
        }
        // Not tried row by row: the database is down for all of them.
        assert_eq!(*groups.lock().expect("lock"), [1, 3]);
    }
}
