//! End-to-end tests against a real Apache Kafka broker (see
//! `integration_tests::broker`). Each test has its own topics and groups.

mod access;
mod batched;
mod consumers;
mod failures;
mod flow;
mod outbox;
mod processes;
mod queue;
mod upgrade;
