//! The JSON management API through curl, an independent HTTP client: a KeyManager method and
//! its request message (proto3 JSON, as grpcurl takes them) become the route's method, path,
//! query and body, from keygate's own route table. grpcurl also takes a field mask as
//! `{"paths": [...]}`; the proto3 JSON mapping has it as one comma-separated string, which is
//! what is sent.

use std::net::SocketAddr;
use std::process::Command;

use keygate::http::transcode::{Route, management_routes};
use serde_json::Value;

use super::tools::system_tool;

/// The route serving KeyManager method `rpc` for `message`: of the routes of one method,
/// the one whose path takes the id the message has.
pub fn route(rpc: &str, message: &Value) -> Route {
    management_routes()
        .into_iter()
        .find(|route| {
            route.rpc == rpc
                && (route.id_field.is_empty() || !field(message, route.id_field).is_null())
        })
        .unwrap_or_else(|| panic!("no JSON route for {rpc} {message}"))
}

/// The value at dotted `path` (proto field names) in `message`, whose names may be the proto
/// names or their camelCase JSON names.
fn field<'a>(message: &'a Value, path: &str) -> &'a Value {
    path.split('.').fold(message, |value, name| {
        let found = &value[name];
        if found.is_null() {
            &value[camel_case(name).as_str()]
        } else {
            found
        }
    })
}

/// `key_id` as `keyId`.
fn camel_case(name: &str) -> String {
    let mut words = name.split('_');
    let first = words.next().unwrap_or_default().to_owned();
    words.fold(first, |text, word| text + &upper_first(word))
}

/// `word` with its first letter in upper case.
fn upper_first(word: &str) -> String {
    let mut chars = word.chars();
    chars
        .next()
        .map(|first| first.to_ascii_uppercase().to_string() + chars.as_str())
        .unwrap_or_default()
}

/// The path (with query) and body that call `rpc` with `message`: the `{id}` taken from the
/// message, and for routes without a body, the message's fields as query parameters.
pub fn request_for(route: &Route, message: &Value) -> (String, Option<Value>) {
    let mut path = route.template.to_owned();
    if !route.id_field.is_empty() {
        let id = field(message, route.id_field)
            .as_str()
            .unwrap_or_else(|| panic!("{} needs {}: {message}", route.rpc, route.id_field));
        path = path.replace("{id}", id);
    }
    if route.body {
        let mut body = message.clone();
        for name in ["update_mask", "updateMask"] {
            if let Some(paths) = body[name]["paths"].as_array() {
                let paths: Vec<&str> = paths.iter().filter_map(Value::as_str).collect();
                body[name] = Value::String(paths.join(","));
            }
        }
        return (path, Some(body));
    }
    let query: Vec<String> = message
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(name, _)| name.as_str() != route.id_field && **name != camel_case(route.id_field))
        .map(|(name, value)| match value {
            Value::String(text) => format!("{name}={text}"),
            other => format!("{name}={other}"),
        })
        .collect();
    if !query.is_empty() {
        path = format!("{path}?{}", query.join("&"));
    }
    (path, None)
}

/// Sends `method path` with `body` and the bearer `token` (none when empty) with curl;
/// returns the status and the JSON answer.
pub fn send(
    addr: SocketAddr,
    token: &str,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> (u16, Value) {
    let mut curl = Command::new(system_tool("curl"));
    curl.args(["--silent", "--show-error", "--request", method])
        .args(["--write-out", "\n%{http_code}"]);
    if !token.is_empty() {
        curl.args(["--header", &format!("authorization: Bearer {token}")]);
    }
    if let Some(body) = body {
        curl.args(["--header", "content-type: application/json"])
            .args(["--data-binary", &body.to_string()]);
    }
    let output = curl
        .arg(format!("http://{addr}{path}"))
        .output()
        .expect("cannot run curl");
    assert!(
        output.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8_lossy(&output.stdout);
    let (json, status) = text.rsplit_once('\n').expect("curl wrote the status");
    let status = status.trim().parse().expect("an HTTP status");
    let json = serde_json::from_str(json)
        .unwrap_or_else(|e| panic!("{method} {path} answered {status} with no JSON ({e}): {json}"));
    (status, json)
}

/// Calls KeyManager method `rpc` with `message` as the holder of `token`: the answer, or the
/// refusal's code (as grpcurl names it: `PermissionDenied`) and message.
pub fn call(
    addr: SocketAddr,
    token: &str,
    rpc: &str,
    message: Value,
) -> Result<Value, (String, String)> {
    let route = route(rpc, &message);
    let (path, body) = request_for(&route, &message);
    let (status, answer) = send(addr, token, route.method.as_str(), &path, body.as_ref());
    if status == 200 {
        return Ok(answer);
    }
    let error = &answer["error"];
    assert_eq!(
        error["code"], status,
        "the body repeats the status: {answer}"
    );
    let name = error["status"].as_str().expect("an error names its status");
    Err((
        code_name(name),
        error["message"].as_str().unwrap_or_default().to_owned(),
    ))
}

/// `PERMISSION_DENIED` as `PermissionDenied`.
fn code_name(name: &str) -> String {
    name.split('_')
        .map(|word| upper_first(&word.to_ascii_lowercase()))
        .collect()
}
