//! The documents under `contracts/` are what the code generates: a change to
//! an event's type, its topic or its headers fails here until the documents
//! are regenerated (`UPDATE_CONTRACTS=1 cargo test --workspace contracts`)
//! and the change is reviewed in them.

use shared_events::contracts::{asyncapi, check_committed, event_schemas};

#[test]
fn contracts_the_committed_event_schemas_are_the_generated_ones() {
    let schemas = event_schemas();
    assert_eq!(schemas.len(), 4, "one per event version published or read");
    let failures: Vec<String> = schemas
        .iter()
        .filter_map(|(file, schema)| check_committed(file, schema).err())
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn contracts_the_committed_asyncapi_document_is_the_generated_one() {
    check_committed("asyncapi.json", &asyncapi()).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn contracts_every_message_payload_is_a_schema_of_the_document() {
    let doc = asyncapi();
    let messages = doc["components"]["messages"].as_object().expect("messages");
    for (name, message) in messages {
        if let Some(reference) = message["payload"]["$ref"].as_str() {
            let target = reference.trim_start_matches("#/components/schemas/");
            assert!(
                doc["components"]["schemas"].get(target).is_some(),
                "{name}: {reference} resolves"
            );
        }
    }
    assert_eq!(doc["channels"]["state"]["address"], "payments.state");
}
