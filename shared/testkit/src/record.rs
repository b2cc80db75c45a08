//! Connection records for tests, made the way storage reads them back (from
//! JSON): no field of a record is writable outside the state machine, so a
//! test states the record it needs as data.

use domain::model::Connection;
use serde_json::{Value, json};

/// A record with these fields over plain defaults (an active connection
/// `conn_test` of tenant `t`, version 1).
pub fn connection(fields: Value) -> Connection {
    let base = json!({
        "id": "conn_test", "tenant_id": "t", "end_user_id": "u", "integration_id": "i",
        "provider": "p", "scopes": [], "status": "active", "secret_name": "s",
        "created_at": 0, "updated_at": 0, "version": 1
    });
    patched_value(base, fields)
}

/// `c` with these fields set.
pub fn patched(c: &Connection, fields: Value) -> Connection {
    patched_value(
        serde_json::to_value(c).expect("a record serializes"),
        fields,
    )
}

fn patched_value(mut v: Value, fields: Value) -> Connection {
    for (k, x) in fields.as_object().expect("fields are an object") {
        v[k] = x.clone();
    }
    serde_json::from_value(v).expect("a record reads back from these fields")
}
