//! Check requests as Envoy sends them: lower-case headers, the path with its query string,
//! the peer address, the route's context extensions; and what keygate's answers carry.
//! Self-contained, so the benches include it too.

use std::collections::HashMap;

use envoy_types::pb::envoy::config::core::v3::{Address, SocketAddress, address};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Peer, Request};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest, CheckResponse};
use envoy_types::pb::google::protobuf::value::Kind;
use tonic::transport::Channel;

/// The request id every request built here carries.
pub const REQUEST_ID: &str = "req-42";

/// A Check request from `peer` for `method` `path` with `headers` and `extensions`.
pub fn check_request(
    peer: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    extensions: &[(&str, &str)],
) -> CheckRequest {
    let mut headers: HashMap<String, String> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    headers.insert(":method".into(), method.into());
    headers.insert(":path".into(), path.into());
    headers.insert("x-request-id".into(), REQUEST_ID.into());
    CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(Peer {
                address: Some(Address {
                    address: Some(address::Address::SocketAddress(SocketAddress {
                        address: peer.into(),
                        ..Default::default()
                    })),
                }),
                ..Default::default()
            }),
            request: Some(Request {
                http: Some(HttpRequest {
                    method: method.into(),
                    path: path.into(),
                    headers,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            context_extensions: extensions
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        }),
    }
}

/// Check's answer to `request` on `data_plane`; the call must succeed.
#[allow(dead_code)] // the benches drive their own clients
pub async fn check(data_plane: &Channel, request: CheckRequest) -> CheckResponse {
    try_check(data_plane, request).await.unwrap()
}

/// Check's answer to `request` on `data_plane`, or the status the call failed with.
#[allow(dead_code)] // the benches drive their own clients
pub async fn try_check(
    data_plane: &Channel,
    request: CheckRequest,
) -> Result<CheckResponse, tonic::Status> {
    AuthorizationClient::new(data_plane.clone())
        .check(request)
        .await
        .map(tonic::Response::into_inner)
}

/// The string keygate put under `field` in the answer's dynamic metadata.
#[allow(dead_code)] // the benches do not read answers
#[track_caller]
pub fn metadata_str<'a>(response: &'a CheckResponse, field: &str) -> &'a str {
    match response
        .dynamic_metadata
        .as_ref()
        .and_then(|m| m.fields.get(field))
        .and_then(|v| v.kind.as_ref())
    {
        Some(Kind::StringValue(value)) => value,
        other => panic!("no {field} string in the dynamic metadata: {other:?}"),
    }
}

/// The decision code keygate put in the answer's dynamic metadata.
#[allow(dead_code)] // the benches do not read answers
#[track_caller]
pub fn decision_code(response: &CheckResponse) -> String {
    metadata_str(response, "code").to_owned()
}
