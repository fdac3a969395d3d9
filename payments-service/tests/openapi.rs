//! Payments' OpenAPI document: generated from the handlers, served at
//! `GET /openapi.json`, committed as `contracts/openapi/payments-service.json`.

use payments_service::api::openapi;
use shared_events::contracts::check_committed;

#[test]
fn contracts_the_committed_openapi_document_is_the_generated_one() {
    let document = openapi();
    check_committed("openapi/payments-service.json", &document).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn contracts_the_document_is_openapi_3_1_with_every_route() {
    let document = openapi();
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
    // A new payment links to reading and refunding it.
    let links = &document["paths"]["/payments"]["post"]["responses"]["201"]["links"];
    assert_eq!(links["Refund"]["operationId"], "refund");
    assert_eq!(
        links["GetPayment"]["parameters"]["id"],
        "$response.body#/payment_id"
    );
}
