//! Payments' OpenAPI document: generated from the handlers, served at
//! `GET /openapi.json`, committed as `contracts/openapi/payments-service.json`.

use payments_service::api::ApiDoc;
use shared_events::contracts::check_committed;
use utoipa::OpenApi;

#[test]
fn contracts_the_committed_openapi_document_is_the_generated_one() {
    let document = serde_json::to_value(ApiDoc::openapi()).expect("serialise");
    check_committed("openapi/payments-service.json", &document).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn contracts_the_document_is_openapi_3_1_with_every_route() {
    let document = serde_json::to_value(ApiDoc::openapi()).expect("serialise");
    assert_eq!(document["openapi"], "3.1.0");
    for (path, method) in [
        ("/payments", "post"),
        ("/payments/{id}", "get"),
        ("/payments/{id}/events", "get"),
        ("/payments/{id}/refunds", "post"),
    ] {
        assert!(
            document["paths"][path][method].is_object(),
            "{method} {path} documented"
        );
    }
    // The payment is described as the Kafka contract describes it.
    let state = &document["components"]["schemas"]["PaymentState"];
    assert_eq!(state["properties"]["amount"]["minimum"], 1);
    assert_eq!(state["properties"]["currency"]["pattern"], "^[A-Z]{3}$");
}
