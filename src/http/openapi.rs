//! The OpenAPI 3.1 document of the JSON routes, generated from the route table and
//! keygate's protobuf descriptors (the same the routes are transcoded with), so the document
//! cannot drift from what is served. Schemas follow the proto3 JSON mapping: camelCase
//! names, 64-bit integers as strings, timestamps as RFC 3339 text, durations as `"3600s"`,
//! field masks as comma-separated paths.

use std::collections::BTreeMap;

use prost_reflect::{FieldDescriptor, Kind, MessageDescriptor};
use serde_json::{Map, Value, json};

use super::transcode::{Route, Transcoder, is_text_message};

/// The document for `transcoder`'s routes.
pub fn document(transcoder: &Transcoder) -> Value {
    let mut schemas = BTreeMap::new();
    let mut paths: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
    for (index, route) in transcoder.routes().iter().enumerate() {
        // Fields any route of the same method fills from its path are never query parameters.
        let path_fields: Vec<&str> = transcoder
            .routes()
            .iter()
            .filter(|r| r.rpc == route.rpc && !r.id_field.is_empty())
            .map(|r| r.id_field.split('.').next().unwrap_or_default())
            .collect();
        let shared = transcoder
            .routes()
            .iter()
            .filter(|r| r.rpc == route.rpc)
            .count()
            > 1;
        let method = transcoder.method(index);
        let (input, output) = (method.input(), method.output());
        collect_schemas(&input, &mut schemas);
        collect_schemas(&output, &mut schemas);
        paths.entry(route.template.to_owned()).or_default().insert(
            route.method.as_str().to_ascii_lowercase(),
            operation(route, shared, &path_fields, &input, &output),
        );
    }
    schemas.insert("Error".into(), error_schema());
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "keygate management API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "API keys and their owners, over JSON. Every route is the JSON form of a keygate.v1.KeyManager gRPC method, served on the same port with the same rules. Authenticate with `Authorization: Bearer` and the admin token, or an API key holding the `keygate:keys` scope (which may manage only its own owner's keys, never giving more than it holds). Field names are camelCase; the protobuf names (snake_case) are accepted too.",
        },
        "security": [{ "bearer": [] }],
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "The admin token, or an API key holding the keygate:keys scope.",
                }
            },
            "schemas": schemas,
        },
    })
}

/// One route's operation; `shared` when other routes call the same method, whose ids then
/// name the field the path fills (`GetKeyUsageByOwnerId`); `path_fields` are never query
/// parameters.
fn operation(
    route: &Route,
    shared: bool,
    path_fields: &[&str],
    input: &MessageDescriptor,
    output: &MessageDescriptor,
) -> Value {
    let mut parameters = Vec::new();
    if !route.id_field.is_empty() {
        parameters.push(json!({
            "name": "id",
            "in": "path",
            "required": true,
            "schema": { "type": "string" },
            "description": format!("Sets `{}`.", route.id_field),
        }));
    }
    let operation_id = if shared {
        let by: String = route
            .id_field
            .split(['_', '.'])
            .map(|word| word[..1].to_ascii_uppercase() + &word[1..])
            .collect();
        format!("{}By{by}", route.rpc)
    } else {
        route.rpc.to_owned()
    };
    let mut operation = json!({
        "operationId": operation_id,
        "summary": route.summary,
        "tags": [tag(route)],
        "responses": {
            "200": {
                "description": "OK",
                "content": { "application/json": { "schema": reference(output) } },
            },
            "default": {
                "description": "An error: 400 bad input, 401 no or unknown credential, 403 not allowed, 404 not found, 409 already exists, 412 not in a state that allows it, 429 over a limit, 503 unavailable.",
                "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } },
            },
        },
    });
    if route.body {
        operation["requestBody"] = json!({
            "required": true,
            "content": { "application/json": { "schema": reference(input) } },
        });
    } else {
        for field in input.fields().filter(|f| !path_fields.contains(&f.name())) {
            parameters.push(json!({
                "name": field.json_name(),
                "in": "query",
                "schema": field_schema(&field),
            }));
        }
    }
    if !parameters.is_empty() {
        operation["parameters"] = Value::Array(parameters);
    }
    operation
}

/// The group a route is listed under: the first path segment after the version.
fn tag(route: &Route) -> &'static str {
    let segment = route.template.split('/').nth(2).unwrap_or_default();
    segment.split([':', '{']).next().unwrap_or(segment)
}

/// The schema name of `message` (`keygate.v1.Key`).
fn reference(message: &MessageDescriptor) -> Value {
    json!({ "$ref": format!("#/components/schemas/{}", message.full_name()) })
}

/// Adds the schema of `message` and of every message its fields use.
fn collect_schemas(message: &MessageDescriptor, schemas: &mut BTreeMap<String, Value>) {
    if schemas.contains_key(message.full_name()) {
        return;
    }
    let mut properties = Map::new();
    for field in message.fields() {
        properties.insert(field.json_name().to_owned(), field_schema(&field));
    }
    schemas.insert(
        message.full_name().to_owned(),
        json!({ "type": "object", "properties": properties }),
    );
    for field in message.fields() {
        let kind = if field.is_map() {
            match field.kind() {
                Kind::Message(entry) => entry.map_entry_value_field().kind(),
                kind => kind,
            }
        } else {
            field.kind()
        };
        if let Kind::Message(used) = kind
            && !is_text_message(&used)
        {
            collect_schemas(&used, schemas);
        }
    }
}

/// The JSON schema of one field.
fn field_schema(field: &FieldDescriptor) -> Value {
    if field.is_map() {
        let Kind::Message(entry) = field.kind() else {
            return json!({ "type": "object" });
        };
        let value = entry.map_entry_value_field();
        return json!({ "type": "object", "additionalProperties": kind_schema(&value.kind()) });
    }
    let single = kind_schema(&field.kind());
    if field.is_list() {
        json!({ "type": "array", "items": single })
    } else {
        single
    }
}

/// The JSON schema of one value of `kind`.
fn kind_schema(kind: &Kind) -> Value {
    match kind {
        Kind::Bool => json!({ "type": "boolean" }),
        Kind::String => json!({ "type": "string" }),
        Kind::Bytes => json!({ "type": "string", "contentEncoding": "base64" }),
        Kind::Double | Kind::Float => json!({ "type": "number" }),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => {
            json!({ "type": "integer", "format": "int32" })
        }
        Kind::Uint32 | Kind::Fixed32 => {
            json!({ "type": "integer", "format": "int64", "minimum": 0, "maximum": u32::MAX })
        }
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => {
            json!({ "type": ["string", "integer"], "format": "int64" })
        }
        Kind::Uint64 | Kind::Fixed64 => {
            json!({ "type": ["string", "integer"], "format": "uint64", "pattern": "^[0-9]+$" })
        }
        Kind::Enum(values) => {
            let names: Vec<String> = values.values().map(|v| v.name().to_owned()).collect();
            json!({ "type": "string", "enum": names })
        }
        Kind::Message(message) => match message.full_name() {
            "google.protobuf.Timestamp" => json!({ "type": "string", "format": "date-time" }),
            "google.protobuf.Duration" => json!({
                "type": "string",
                "pattern": "^-?[0-9]+(\\.[0-9]{1,9})?s$",
                "examples": ["3600s"],
            }),
            "google.protobuf.FieldMask" => json!({
                "type": "string",
                "description": "Comma-separated field names (`name,scopes`).",
            }),
            _ => reference(message),
        },
    }
}

/// The error answer's schema.
fn error_schema() -> Value {
    json!({
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "status", "message"],
                "properties": {
                    "code": { "type": "integer", "description": "The HTTP status." },
                    "status": { "type": "string", "description": "The gRPC code's name (NOT_FOUND)." },
                    "message": { "type": "string", "description": "What went wrong and what to do." },
                },
            }
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::transcode::management_routes;

    #[test]
    fn every_route_is_documented_with_its_schemas() {
        let transcoder = Transcoder::new(management_routes()).unwrap();
        let document = document(&transcoder);
        for route in transcoder.routes() {
            let operation =
                &document["paths"][route.template][route.method.as_str().to_ascii_lowercase()];
            let id = operation["operationId"].as_str().unwrap();
            assert!(id.starts_with(route.rpc), "{}: {id}", route.template);
        }
        let schemas = document["components"]["schemas"].as_object().unwrap();
        for name in [
            "keygate.v1.Key",
            "keygate.v1.CreateKeyResponse",
            "keygate.v1.Owner",
            "Error",
        ] {
            assert!(schemas.contains_key(name), "{name}");
        }
        let key = &schemas["keygate.v1.Key"]["properties"];
        assert_eq!(key["expireTime"]["format"], "date-time");
        assert_eq!(key["metadata"]["additionalProperties"]["type"], "string");
        assert_eq!(key["scopes"]["items"]["type"], "string");
        let list = &document["paths"]["/v1/keys"]["get"]["parameters"];
        let names: Vec<&str> = list
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        assert!(
            names.contains(&"ownerId") && names.contains(&"pageToken"),
            "{names:?}"
        );
        let get = &document["paths"]["/v1/keys/{id}"]["get"]["parameters"];
        assert_eq!(get.as_array().unwrap().len(), 1, "only the id: {get}");
        let by_owner = &document["paths"]["/v1/owners/{id}/usage"]["get"];
        assert_eq!(by_owner["operationId"], "GetKeyUsageByOwnerId");
        let names: Vec<&str> = by_owner["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            ["id", "startDate", "endDate"],
            "the id fills ownerId"
        );
    }
}
