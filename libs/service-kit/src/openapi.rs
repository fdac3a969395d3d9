//! What the services' OpenAPI documents share: `GET /openapi.json`, and the
//! schemas of the contract's types, taken from their JSON Schema
//! (`shared_events::contracts`) so the HTTP and the Kafka contracts describe
//! a payment the same way.

use axum::routing::get;
use axum::{Json, Router};
use schemars::JsonSchema;
use schemars::generate::SchemaSettings;
use utoipa::openapi::{OpenApi, RefOr, Schema};

// For `contract_schema!`, in crates that do not name them.
#[doc(hidden)]
pub use {schemars, utoipa};

/// The OpenAPI schema of `T`, a type of the contract with a JSON Schema,
/// for a `utoipa::PartialSchema` impl of a type that stands for it.
pub fn schema_of<T: JsonSchema>() -> RefOr<Schema> {
    // OpenAPI 3.1 schemas are JSON Schema 2020-12; every type inlined.
    let mut value = SchemaSettings::draft2020_12()
        .with(|s| s.inline_subschemas = true)
        .into_generator()
        .into_root_schema_for::<T>()
        .to_value();
    if let Some(object) = value.as_object_mut() {
        object.remove("$schema");
    }
    serde_json::from_value(value).unwrap_or_else(|e| {
        panic!(
            "the JSON Schema of {} does not fit OpenAPI: {e}",
            T::schema_name()
        )
    })
}

/// Declares `$name`, a type standing for `$contract` (a type with a JSON
/// Schema) in utoipa's `body = ...` and `schemas(...)`, under `$contract`'s
/// schema name.
#[macro_export]
macro_rules! contract_schema {
    ($(#[$doc:meta])* $name:ident, $contract:ty) => {
        $(#[$doc])*
        #[derive(Debug)]
        pub struct $name;

        impl $crate::openapi::utoipa::PartialSchema for $name {
            fn schema() -> $crate::openapi::utoipa::openapi::RefOr<$crate::openapi::utoipa::openapi::Schema> {
                $crate::openapi::schema_of::<$contract>()
            }
        }

        impl $crate::openapi::utoipa::ToSchema for $name {
            fn name() -> std::borrow::Cow<'static, str> {
                <$contract as $crate::openapi::schemars::JsonSchema>::schema_name()
            }
        }
    };
}

/// The routes every service serves besides its own (`/health`, `/ready`,
/// `/metrics`), to merge into each service's document.
#[derive(Debug, utoipa::OpenApi)]
#[openapi(paths(crate::http::health_check, crate::http::ready_check, crate::metrics::render))]
pub struct SharedRoutes;

/// `document` with [`SharedRoutes`], as JSON.
///
/// # Panics
///
/// Never: utoipa's documents are plain data.
pub fn to_json(document: OpenApi) -> serde_json::Value {
    let document = document.merge_from(<SharedRoutes as utoipa::OpenApi>::openapi());
    serde_json::to_value(document).expect("an OpenAPI document serialises")
}

/// `GET /openapi.json`: the service's OpenAPI document.
pub fn openapi_router<S: Clone + Send + Sync + 'static>(document: serde_json::Value) -> Router<S> {
    let json = Json(document);
    Router::new().route("/openapi.json", get(move || async move { json.clone() }))
}
