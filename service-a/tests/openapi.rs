//! service-a's OpenAPI document: generated from the handlers, served at
//! `GET /openapi.json`, committed as `contracts/openapi/service-a.json`.

use service_a::api::openapi;
use shared_events::contracts::check_committed;

#[test]
fn contracts_the_committed_openapi_document_is_the_generated_one() {
    let document = openapi();
    check_committed("openapi/service-a.json", &document).unwrap_or_else(|e| panic!("{e}"));
}
