//! The OpenAPI 3.1 description of every route, served at
//! `GET /openapi.json` as `shared/web/openapi.json`.
//!
//! That file is generated, never edited: [`generate`] takes the operations
//! (paths, parameters, statuses and their prose) from
//! `shared/web/openapi/operations.json` and the schemas from the types
//! themselves, the response bodies of [`crate::views`] (as they serialize)
//! and the handlers' request bodies (as they deserialize), with schemars.
//! `cargo run -p broker-web --example openapi` writes it;
//! `the_openapi_document_is_generated_from_the_types` holds the committed
//! file to the types, and `tests/tests/openapi_doc.rs` holds its paths to
//! the route table ([`crate::routes`]) and every `$ref` to a type.
//! Serving the committed text costs nothing at init.

use crate::handlers::{api, connect, connections, custom_providers, events};
use crate::handlers::{integrations, webhook_endpoints};
use crate::views::*;
use schemars::JsonSchema;
use schemars::generate::{Contract, SchemaGenerator, SchemaSettings};
use serde_json::{Map, Value};

/// The document, as served.
pub const OPENAPI_JSON: &str = include_str!("../openapi.json");

/// The operations, as written by hand (no schema of a body in them: a
/// `$ref` to a type's).
const OPERATIONS: &str = include_str!("../openapi/operations.json");

fn generator(contract: Contract) -> SchemaGenerator {
    let mut settings = SchemaSettings::draft2020_12();
    settings.definitions_path = "/components/schemas/".into();
    settings.meta_schema = None;
    settings.contract = contract;
    settings.into_generator()
}

/// The schemas of every response body, as it serializes.
fn response_schemas() -> Map<String, Value> {
    let mut g = generator(Contract::Serialize);
    g.subschema_for::<ErrorBody>();
    g.subschema_for::<ConnectionView>();
    g.subschema_for::<ConnectionPage>();
    g.subschema_for::<Disconnected>();
    g.subschema_for::<IntegrationView>();
    g.subschema_for::<IntegrationList>();
    g.subschema_for::<IntegrationDeleted>();
    g.subschema_for::<ClientSecretRotated>();
    g.subschema_for::<WebhookSecretSet>();
    g.subschema_for::<WebhookSecretRemoved>();
    g.subschema_for::<IntegrationStats>();
    g.subschema_for::<ConnectionHealth>();
    g.subschema_for::<WebhookEndpointView>();
    g.subschema_for::<WebhookEndpointWithSecret>();
    g.subschema_for::<WebhookEndpointList>();
    g.subschema_for::<Deleted>();
    g.subschema_for::<TokenView>();
    g.subschema_for::<TestResult>();
    g.subschema_for::<SessionView>();
    g.subschema_for::<SessionStatus>();
    g.subschema_for::<ConnectPageSession>();
    g.subschema_for::<PageConnected>();
    g.subschema_for::<EventPage>();
    g.subschema_for::<Redelivery>();
    g.subschema_for::<ProviderPage>();
    g.subschema_for::<ProviderDetail>();
    g.subschema_for::<CustomProviderList>();
    g.subschema_for::<Discovered>();
    g.subschema_for::<WebhookChallenge>();
    g.subschema_for::<WebhookReceived>();
    g.subschema_for::<domain::ids::Id>();
    g.take_definitions(true)
}

/// The schemas of every JSON request body, as it deserializes.
fn request_schemas() -> Map<String, Value> {
    let mut g = generator(Contract::Deserialize);
    g.subschema_for::<api::NewSession>();
    g.subschema_for::<integrations::NewIntegration>();
    g.subschema_for::<integrations::IntegrationUpdate>();
    g.subschema_for::<integrations::NewSecret>();
    g.subschema_for::<integrations::WebhookSecret>();
    g.subschema_for::<connections::NewCredentialConnection>();
    g.subschema_for::<webhook_endpoints::NewEndpoint>();
    g.subschema_for::<webhook_endpoints::EndpointChange>();
    g.subschema_for::<webhook_endpoints::Rotation>();
    g.subschema_for::<events::Redeliver>();
    g.subschema_for::<custom_providers::NewCustomProvider>();
    g.subschema_for::<custom_providers::DiscoveryRequest>();
    g.subschema_for::<connect::SessionRequest>();
    g.subschema_for::<connect::KeySubmission>();
    g.take_definitions(true)
}

/// Every schema; a name both sides define must mean one schema.
pub fn schemas() -> Map<String, Value> {
    let mut all = response_schemas();
    for (name, schema) in request_schemas() {
        match all.get(&name) {
            Some(same) if *same == schema => {}
            Some(_) => panic!("{name} is both a request and a response schema, and they differ"),
            None => {
                all.insert(name, schema);
            }
        }
    }
    all
}

/// The whole document: the operations with the types' schemas.
pub fn generate() -> Value {
    let mut doc: Value = serde_json::from_str(OPERATIONS).expect("operations.json is JSON");
    doc["components"]["schemas"] = Value::Object(schemas());
    doc
}

/// A type's schema name, for tests that look one up.
pub fn name_of<T: JsonSchema>() -> String {
    T::schema_name().into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_openapi_document_is_generated_from_the_types() {
        let served: Value = serde_json::from_str(OPENAPI_JSON).expect("openapi.json is JSON");
        assert!(
            served == generate(),
            "shared/web/openapi.json differs from the types: run \
             `cargo run -p broker-web --example openapi`"
        );
    }

    #[test]
    fn a_name_both_request_and_response_types_use_is_one_schema() {
        let requests = request_schemas();
        let shared: Vec<_> = response_schemas()
            .into_iter()
            .filter(|(name, _)| requests.contains_key(name))
            .collect();
        // The ids: one rule, whichever way they travel.
        assert_eq!(
            shared.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
            ["Id"]
        );
        for (name, schema) in shared {
            assert_eq!(requests[&name], schema, "{name}");
        }
    }

    #[test]
    fn every_schema_reference_in_the_operations_names_a_type() {
        let schemas = schemas();
        let mut refs = Vec::new();
        collect_refs(&serde_json::from_str(OPERATIONS).unwrap(), &mut refs);
        assert!(refs.len() > 50, "{}", refs.len());
        for r in refs {
            let name = r
                .strip_prefix("#/components/schemas/")
                .unwrap_or_else(|| panic!("{r}"));
            assert!(schemas.contains_key(name), "{r} is no type's schema");
        }
    }

    fn collect_refs(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                if let Some(Value::String(r)) = m.get("$ref") {
                    out.push(r.clone());
                }
                m.values().for_each(|x| collect_refs(x, out));
            }
            Value::Array(a) => a.iter().for_each(|x| collect_refs(x, out)),
            _ => {}
        }
    }
}
