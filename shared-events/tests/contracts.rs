//! The documents under `contracts/` are what the code generates: a change to
//! an event's type, its topic or its headers fails here until the documents
//! are regenerated (`UPDATE_CONTRACTS=1 cargo test -p shared-events --test
//! contracts`) and the change is reviewed in them.

use std::path::PathBuf;

use serde_json::Value;
use shared_events::contracts::{asyncapi, event_schemas};

fn contracts_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../contracts")
}

/// Compares `generated` with the committed `file`, or writes it when asked.
fn matches_committed(file: &str, generated: &Value) -> Result<(), String> {
    let path = contracts_dir().join(file);
    let text = serde_json::to_string_pretty(generated).expect("serialise") + "\n";
    if std::env::var_os("UPDATE_CONTRACTS").is_some() {
        std::fs::write(&path, &text).expect("write contract");
        return Ok(());
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    if committed == text {
        Ok(())
    } else {
        Err(format!(
            "{} differs from what the code generates; review the change and run \
             UPDATE_CONTRACTS=1 cargo test -p shared-events --test contracts",
            path.display()
        ))
    }
}

#[test]
fn the_committed_event_schemas_are_the_generated_ones() {
    let schemas = event_schemas();
    assert_eq!(schemas.len(), 3, "one per published event");
    let failures: Vec<String> = schemas
        .iter()
        .filter_map(|(file, schema)| matches_committed(file, schema).err())
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn the_committed_asyncapi_document_is_the_generated_one() {
    matches_committed("asyncapi.json", &asyncapi()).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn every_message_payload_is_a_schema_of_the_document() {
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
