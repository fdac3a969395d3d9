//! service-b's OpenAPI document: generated from the handlers, served at
//! `GET /openapi.json`, committed as `contracts/openapi/service-b.json`.

use service_b::api::openapi;
use shared_events::contracts::check_committed;

#[test]
fn contracts_the_committed_openapi_document_is_the_generated_one() {
    let document = openapi();
    check_committed("openapi/service-b.json", &document).unwrap_or_else(|e| panic!("{e}"));
}
