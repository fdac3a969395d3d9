//! ServiceA's audit log against a real PostgreSQL (a database of its own
//! per test): notifications recorded once, kept apart from the payment
//! copy, read a page at a time.

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use event_store::testing::TestDatabase;
use service_a::{AppState, Audit, PaymentEvents, State, app};
use service_kit::auth::{Callers, Rights, Token};
use service_kit::consumer::Handler;
use shared_events::testing::{delivered, payment};
use shared_events::{Envelope, Topics};
use tower::ServiceExt;
use uuid::Uuid;

/// The audit log in a database of its own, with that database, which the
/// test keeps for as long as it uses the log.
async fn audit() -> (TestDatabase, Audit) {
    let database = TestDatabase::empty().await;
    let audit = Audit::connect(database.url.parse().expect("url"), 2)
        .await
        .expect("connect and migrate");
    (database, audit)
}

/// Handles `count` notifications of new payments on the notifications topic.
async fn notify(
    handler: &PaymentEvents,
    topics: &Topics,
    count: i64,
) -> Vec<Envelope<shared_events::PaymentReceivedNotification>> {
    let mut sent = Vec::new();
    for offset in 0..count {
        let notification = Envelope::new("/test", payment().notification(), Uuid::now_v7(), None);
        handler
            .handle(&delivered(&topics.notifications, offset, &notification), 1)
            .await
            .expect("handled");
        sent.push(notification);
    }
    sent
}

#[tokio::test]
async fn a_redelivered_notification_is_recorded_once_and_the_copy_is_untouched() {
    let (_database, audit) = audit().await;
    let topics = Topics::default();
    let state = State::default();
    let handler = PaymentEvents::new(topics.clone(), state.clone(), audit.clone());
    let sent = Envelope::new("/test", payment().notification(), Uuid::now_v7(), None);
    let record = delivered(&topics.notifications, 7, &sent);

    for _ in 0..3 {
        handler.handle(&record, 1).await.expect("handled");
    }
    // Another instance on the same database: the notification is known.
    let restarted = PaymentEvents::new(topics, State::default(), audit.clone());
    restarted.handle(&record, 1).await.expect("handled");

    let entries = audit.page(None, 10).await.expect("read");
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].event_id, sent.metadata.id);
    assert_eq!((entries[0].offset, entries[0].kind.as_str()), (7, "received"));
    assert_eq!(
        state.payments.get(sent.data.payment_id),
        None,
        "a notification carries no state"
    );
}

/// `GET uri`, with `token` as the bearer token if there is one.
async fn get(
    router: &axum::Router,
    uri: &str,
    token: Option<&Token>,
) -> (StatusCode, Option<String>, serde_json::Value) {
    let mut request = Request::get(uri);
    if let Some(token) = token {
        request = request.header(header::AUTHORIZATION, token.authorization());
    }
    let response = router
        .clone()
        .oneshot(request.body(Body::empty()).expect("request"))
        .await
        .expect("infallible");
    let status = response.status();
    let link = response
        .headers()
        .get(header::LINK)
        .map(|v| v.to_str().expect("ascii").to_owned());
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .expect("body");
    (status, link, serde_json::from_slice(&bytes).expect("JSON"))
}

#[tokio::test]
async fn the_audit_is_read_a_page_at_a_time_in_the_order_it_was_recorded() {
    let (_database, audit) = audit().await;
    let topics = Topics::default();
    let handler = PaymentEvents::new(topics.clone(), State::default(), audit.clone());
    let sent = notify(&handler, &topics, 5).await;
    let token = Token::generate();
    let router = app(
        AppState {
            state: State::default(),
            audit,
        },
        Callers::of([("operator", Rights::READ, &token)]),
    );
    let (status, _, body) = get(&router, "/audit", None).await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "the audit log needs a caller's token: {body}"
    );
    let (status, _, _) = get(&router, &format!("/payments/{}", uuid::Uuid::new_v4()), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "so does the copy");

    let mut seen = Vec::new();
    let mut next = Some("/audit?limit=2".to_owned());
    let mut pages = 0;
    while let Some(uri) = next {
        let (status, link, body) = get(&router, &uri, Some(&token)).await;
        assert_eq!(status, StatusCode::OK, "{uri}: {body}");
        let page = body.as_array().expect("a list");
        assert!(page.len() <= 2);
        seen.extend(
            page.iter()
                .map(|e| e["event_id"].as_str().expect("id").to_owned()),
        );
        next = link.map(|l| {
            let target = l
                .strip_prefix('<')
                .and_then(|l| l.split_once(">; rel=\"next\""))
                .expect("a next link");
            target.0.to_owned()
        });
        pages += 1;
    }
    let expected: Vec<String> = sent.iter().map(|n| n.metadata.id.to_string()).collect();
    assert_eq!(seen, expected, "every entry once, in the order recorded");
    assert_eq!(pages, 3, "2 + 2 + 1, and no link after the last");

    let (status, link, all) = get(&router, "/audit", Some(&token)).await;
    assert_eq!((status, link), (StatusCode::OK, None));
    assert_eq!(all.as_array().map(Vec::len), Some(5));

    for bad in [
        "/audit?limit=0",
        "/audit?limit=1001",
        "/audit?after=x",
        "/audit?limit=-1",
    ] {
        let (status, _, body) = get(&router, bad, Some(&token)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
        assert_eq!(body["error"], "invalid_query", "{bad}");
    }
}
