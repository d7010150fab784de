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

/// The route serving KeyManager method `rpc`.
pub fn route(rpc: &str) -> Route {
    management_routes()
        .into_iter()
        .find(|route| route.rpc == rpc)
        .unwrap_or_else(|| panic!("no JSON route for {rpc}"))
}

/// The path (with query) and body that call `rpc` with `message`: the `{id}` taken from the
/// message, and for routes without a body, the message's fields as query parameters.
pub fn request_for(route: &Route, message: &Value) -> (String, Option<Value>) {
    let mut path = route.template.to_owned();
    if !route.id_field.is_empty() {
        let id = route
            .id_field
            .split('.')
            .fold(message, |value, name| &value[name])
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
        .filter(|(name, _)| name.as_str() != route.id_field)
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
    let route = route(rpc);
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
        camel_case(name),
        error["message"].as_str().unwrap_or_default().to_owned(),
    ))
}

/// `PERMISSION_DENIED` as `PermissionDenied`.
fn camel_case(name: &str) -> String {
    name.split('_')
        .map(|word| {
            let lower = word.to_ascii_lowercase();
            let mut chars = lower.chars();
            chars
                .next()
                .map(|first| first.to_ascii_uppercase().to_string() + chars.as_str())
                .unwrap_or_default()
        })
        .collect()
}
