//! Envoy's `envoy.service.auth.v3.Authorization/Check` on the wire, as keygate reads and
//! writes it: the fields of `CheckRequest` and `CheckResponse` keygate uses, under Envoy's
//! field numbers, and the gRPC service that decodes and encodes them.
//!
//! Decoding only these fields is the point: a Check carries the destination, the request's
//! time, host, scheme, protocol and more that keygate never reads; they are skipped without
//! being copied. Protobuf maps (`headers`, `context_extensions`, the metadata `Struct`) are
//! read as the repeated key/value entries they are on the wire, so a Check builds no hash
//! map; a key sent twice means its last value, as for a map. The request's header and
//! extension entries stay slices of the received message, read as text only when asked
//! for, so a Check copies none of the headers keygate does not read.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use prost::bytes::Bytes;
use tonic::codegen::{Body, BoxFuture, StdError};
use tonic::server::{Grpc, NamedService, UnaryService};
use tonic::{Request, Response, Status};

use super::check_answer::CheckAnswer;

/// A Check: `CheckRequest`, keeping `attributes` (1).
#[derive(Clone, PartialEq, prost::Message)]
pub struct CheckRequest {
    /// What is known of the request to authorize.
    #[prost(message, optional, tag = "1")]
    pub attributes: Option<AttributeContext>,
}

/// `AttributeContext`: `source` (1), `request` (4), `context_extensions` (10).
#[derive(Clone, PartialEq, prost::Message)]
pub struct AttributeContext {
    /// The downstream client.
    #[prost(message, optional, tag = "1")]
    pub source: Option<Peer>,
    /// The request.
    #[prost(message, optional, tag = "4")]
    pub request: Option<AttributeRequest>,
    /// The route's `context_extensions`.
    #[prost(message, repeated, tag = "10")]
    pub context_extensions: Vec<StringEntry>,
}

impl AttributeContext {
    /// The context extension `name`.
    pub fn extension(&self, name: &str) -> Option<&str> {
        last_value(&self.context_extensions, name)
    }
}

/// `AttributeContext.Peer`: `address` (1).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Peer {
    /// The peer's address.
    #[prost(message, optional, tag = "1")]
    pub address: Option<Address>,
}

/// `config.core.v3.Address`, keeping its `socket_address` (1) alternative.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Address {
    /// An IP address and port.
    #[prost(message, optional, tag = "1")]
    pub socket_address: Option<SocketAddress>,
}

/// `config.core.v3.SocketAddress`: `address` (2).
#[derive(Clone, PartialEq, prost::Message)]
pub struct SocketAddress {
    /// The IP address, as text.
    #[prost(string, tag = "2")]
    pub address: String,
}

/// `AttributeContext.Request`: `http` (2).
#[derive(Clone, PartialEq, prost::Message)]
pub struct AttributeRequest {
    /// The HTTP request.
    #[prost(message, optional, tag = "2")]
    pub http: Option<HttpRequest>,
}

/// `AttributeContext.HttpRequest`: `id` (1), `method` (2), `headers` (3), `path` (4),
/// `header_map` (13).
#[derive(Clone, PartialEq, prost::Message)]
pub struct HttpRequest {
    /// Envoy's id of the stream.
    #[prost(string, tag = "1")]
    pub id: String,
    /// The HTTP method.
    #[prost(string, tag = "2")]
    pub method: String,
    /// The request's headers, names in lower case (Envoy's default encoding).
    #[prost(message, repeated, tag = "3")]
    pub headers: Vec<StringEntry>,
    /// The path, query string included.
    #[prost(string, tag = "4")]
    pub path: String,
    /// The request's headers, when Envoy sends them in this encoding instead.
    #[prost(message, optional, tag = "13")]
    pub header_map: Option<HeaderMap>,
}

impl HttpRequest {
    /// The value of request header `name` (lower-case), from either encoding.
    pub fn header(&self, name: &str) -> Option<&str> {
        if let Some(value) = last_value(&self.headers, name) {
            return Some(value);
        }
        let map = self.header_map.as_ref()?;
        let header = map.headers.iter().find(|h| h.key == name.as_bytes())?;
        let value = if header.value.is_empty() {
            &header.raw_value
        } else {
            &header.value
        };
        std::str::from_utf8(value).ok()
    }
}

/// `config.core.v3.HeaderMap`: `headers` (1).
#[derive(Clone, PartialEq, prost::Message)]
pub struct HeaderMap {
    /// The headers.
    #[prost(message, repeated, tag = "1")]
    pub headers: Vec<RequestHeader>,
}

/// `config.core.v3.HeaderValue` as a request carries it: `key` (1), `value` (2),
/// `raw_value` (3), each a slice of the message (the two text fields unchecked until read).
#[derive(Clone, PartialEq, prost::Message)]
pub struct RequestHeader {
    /// The header's name.
    #[prost(bytes = "bytes", tag = "1")]
    pub key: Bytes,
    /// Its value, as text.
    #[prost(bytes = "bytes", tag = "2")]
    pub value: Bytes,
    /// Its value, as bytes (set instead of `value` by some Envoy settings).
    #[prost(bytes = "bytes", tag = "3")]
    pub raw_value: Bytes,
}

/// `config.core.v3.HeaderValue` as an answer carries it: `key` (1), `value` (2); keygate's
/// header values are text, so it never writes `raw_value` (3).
#[derive(Clone, PartialEq, prost::Message)]
pub struct HeaderValue {
    /// The header's name.
    #[prost(string, tag = "1")]
    pub key: String,
    /// Its value.
    #[prost(string, tag = "2")]
    pub value: String,
}

/// An entry of a `map<string, string>`: `key` (1), `value` (2), each a slice of the
/// message, its text unchecked until read.
#[derive(Clone, PartialEq, prost::Message)]
pub struct StringEntry {
    /// The entry's key.
    #[prost(bytes = "bytes", tag = "1")]
    pub key: Bytes,
    /// Its value.
    #[prost(bytes = "bytes", tag = "2")]
    pub value: Bytes,
}

/// The value of the last entry named `key`, as a map decoding them would keep; `None` when
/// it is not text.
fn last_value<'a>(entries: &'a [StringEntry], key: &str) -> Option<&'a str> {
    let entry = entries.iter().rev().find(|e| e.key == key.as_bytes())?;
    std::str::from_utf8(&entry.value).ok()
}

/// `CheckResponse`: `status` (1), `denied_response` (2) or `ok_response` (3),
/// `dynamic_metadata` (4).
#[derive(Clone, PartialEq, prost::Message)]
pub struct CheckResponse {
    /// OK to allow; a denial's gRPC code otherwise.
    #[prost(message, optional, tag = "1")]
    pub status: Option<RpcStatus>,
    /// What the client gets when denied.
    #[prost(message, optional, tag = "2")]
    pub denied_response: Option<DeniedHttpResponse>,
    /// What changes on the request when allowed.
    #[prost(message, optional, tag = "3")]
    pub ok_response: Option<OkHttpResponse>,
    /// Metadata for the filters after ext_authz and the access log.
    #[prost(message, optional, tag = "4")]
    pub dynamic_metadata: Option<Struct>,
}

/// `google.rpc.Status`: `code` (1), `message` (2).
#[derive(Clone, PartialEq, prost::Message)]
pub struct RpcStatus {
    /// The gRPC code.
    #[prost(int32, tag = "1")]
    pub code: i32,
    /// A message for the operator.
    #[prost(string, tag = "2")]
    pub message: String,
}

/// `DeniedHttpResponse`: `status` (1), `headers` (2), `body` (3).
#[derive(Clone, PartialEq, prost::Message)]
pub struct DeniedHttpResponse {
    /// The HTTP status.
    #[prost(message, optional, tag = "1")]
    pub status: Option<HttpStatus>,
    /// Headers for the client.
    #[prost(message, repeated, tag = "2")]
    pub headers: Vec<HeaderValueOption>,
    /// The body for the client.
    #[prost(string, tag = "3")]
    pub body: String,
}

/// `type.v3.HttpStatus`: `code` (1).
#[derive(Clone, PartialEq, prost::Message)]
pub struct HttpStatus {
    /// The status code.
    #[prost(int32, tag = "1")]
    pub code: i32,
}

/// `OkHttpResponse`: `headers` (2), `headers_to_remove` (5), `response_headers_to_add` (6).
#[derive(Clone, PartialEq, prost::Message)]
pub struct OkHttpResponse {
    /// Headers set on the request for the upstream.
    #[prost(message, repeated, tag = "2")]
    pub headers: Vec<HeaderValueOption>,
    /// Headers removed from the request before the upstream sees it.
    #[prost(string, repeated, tag = "5")]
    pub headers_to_remove: Vec<String>,
    /// Headers added to the response the client gets.
    #[prost(message, repeated, tag = "6")]
    pub response_headers_to_add: Vec<HeaderValueOption>,
}

/// `config.core.v3.HeaderValueOption`: `header` (1), `append_action` (3).
#[derive(Clone, PartialEq, prost::Message)]
pub struct HeaderValueOption {
    /// The header.
    #[prost(message, optional, tag = "1")]
    pub header: Option<HeaderValue>,
    /// How it joins a header of the same name.
    #[prost(int32, tag = "3")]
    pub append_action: i32,
}

impl HeaderValueOption {
    /// `HeaderAppendAction.OVERWRITE_IF_EXISTS_OR_ADD`.
    pub const OVERWRITE_IF_EXISTS_OR_ADD: i32 = 2;

    /// A header that replaces whatever is there under the same name.
    pub fn overwrite(key: String, value: String) -> Self {
        HeaderValueOption {
            header: Some(HeaderValue { key, value }),
            append_action: Self::OVERWRITE_IF_EXISTS_OR_ADD,
        }
    }
}

/// `google.protobuf.Struct` with string values: `fields` (1).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Struct {
    /// The fields, as map entries.
    #[prost(message, repeated, tag = "1")]
    pub fields: Vec<StructField>,
}

impl Struct {
    /// A struct of string fields.
    pub fn of_strings(fields: &[(&str, &str)]) -> Self {
        Struct {
            fields: fields
                .iter()
                .map(|(key, value)| StructField {
                    key: (*key).to_owned(),
                    value: Some(StringValue {
                        string_value: Some((*value).to_owned()),
                    }),
                })
                .collect(),
        }
    }
}

/// An entry of `Struct.fields`: `key` (1), `value` (2).
#[derive(Clone, PartialEq, prost::Message)]
pub struct StructField {
    /// The field's name.
    #[prost(string, tag = "1")]
    pub key: String,
    /// Its value.
    #[prost(message, optional, tag = "2")]
    pub value: Option<StringValue>,
}

/// `google.protobuf.Value` holding a string: `string_value` (3), written even when empty,
/// as the `kind` oneof it belongs to is.
#[derive(Clone, PartialEq, prost::Message)]
pub struct StringValue {
    /// The string.
    #[prost(string, optional, tag = "3")]
    pub string_value: Option<String>,
}

/// What answers Check.
pub trait Check: Send + Sync + 'static {
    /// Decides `request`.
    fn check(
        &self,
        request: Request<CheckRequest>,
    ) -> impl Future<Output = Result<Response<CheckAnswer>, Status>> + Send;
}

/// The gRPC service `envoy.service.auth.v3.Authorization` over these messages; its one
/// method, Check, answered by `T`.
pub struct AuthorizationServer<T> {
    inner: Arc<T>,
}

impl<T> AuthorizationServer<T> {
    /// The service, answering with `inner`.
    pub fn new(inner: T) -> Self {
        AuthorizationServer {
            inner: Arc::new(inner),
        }
    }
}

impl<T> Clone for AuthorizationServer<T> {
    fn clone(&self) -> Self {
        AuthorizationServer {
            inner: self.inner.clone(),
        }
    }
}

impl<T> NamedService for AuthorizationServer<T> {
    const NAME: &'static str = "envoy.service.auth.v3.Authorization";
}

/// The full path of Check, as a client calls it.
pub const CHECK_PATH: &str = "/envoy.service.auth.v3.Authorization/Check";

/// One Check call, for tonic's unary handling.
struct CheckCall<T>(Arc<T>);

impl<T: Check> UnaryService<CheckRequest> for CheckCall<T> {
    type Response = CheckAnswer;
    type Future = BoxFuture<Response<CheckAnswer>, Status>;

    fn call(&mut self, request: Request<CheckRequest>) -> Self::Future {
        let inner = self.0.clone();
        Box::pin(async move { inner.check(request).await })
    }
}

impl<T, B> tower::Service<http::Request<B>> for AuthorizationServer<T>
where
    T: Check,
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if request.uri().path() != CHECK_PATH {
            return Box::pin(std::future::ready(
                Ok(Status::unimplemented("").into_http()),
            ));
        }
        let call = CheckCall(self.inner.clone());
        Box::pin(async move {
            let mut grpc = Grpc::new(tonic_prost::ProstCodec::default());
            Ok(grpc.unary(call, request).await)
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use envoy_types::ext_authz::v3::pb as envoy;
    use envoy_types::pb::envoy::config::core::v3 as core;
    use envoy_types::pb::envoy::service::auth::v3::attribute_context;
    use envoy_types::pb::google::protobuf::value::Kind;
    use prost::Message;

    use super::*;

    /// A Check as Envoy's own message types write it.
    fn envoy_check(
        headers: HashMap<String, String>,
        header_map: Vec<(&str, &str, &[u8])>,
    ) -> Vec<u8> {
        let socket = core::SocketAddress {
            address: "203.0.113.9".into(),
            port_specifier: Some(core::socket_address::PortSpecifier::PortValue(443)),
            ..Default::default()
        };
        let peer = |address: core::SocketAddress| attribute_context::Peer {
            address: Some(core::Address {
                address: Some(core::address::Address::SocketAddress(address)),
            }),
            principal: "spiffe://peer".into(),
            ..Default::default()
        };
        envoy::CheckRequest {
            attributes: Some(
                envoy_types::pb::envoy::service::auth::v3::AttributeContext {
                    source: Some(peer(socket.clone())),
                    destination: Some(peer(core::SocketAddress {
                        address: "10.0.0.1".into(),
                        ..socket
                    })),
                    request: Some(attribute_context::Request {
                        time: Some(Default::default()),
                        http: Some(attribute_context::HttpRequest {
                            id: "1234".into(),
                            method: "POST".into(),
                            headers,
                            header_map: (!header_map.is_empty()).then(|| core::HeaderMap {
                                headers: header_map
                                    .into_iter()
                                    .map(|(key, value, raw)| core::HeaderValue {
                                        key: key.into(),
                                        value: value.into(),
                                        raw_value: raw.to_vec(),
                                    })
                                    .collect(),
                            }),
                            path: "/v1/sites?page=2".into(),
                            host: "api.example.com".into(),
                            scheme: "https".into(),
                            protocol: "HTTP/2".into(),
                            ..Default::default()
                        }),
                    }),
                    context_extensions: HashMap::from([
                        ("keygate.scopes".into(), "sites:write".into()),
                        ("other".into(), "x".into()),
                    ]),
                    ..Default::default()
                },
            ),
        }
        .encode_to_vec()
    }

    #[test]
    fn a_check_from_envoy_reads_as_envoy_wrote_it() {
        let headers = HashMap::from([
            ("authorization".to_owned(), "Bearer kg_x".to_owned()),
            ("x-request-id".to_owned(), "req-1".to_owned()),
        ]);
        let check = CheckRequest::decode(envoy_check(headers, vec![]).as_slice()).unwrap();
        let attributes = check.attributes.unwrap();
        assert_eq!(
            attributes
                .source
                .as_ref()
                .unwrap()
                .address
                .as_ref()
                .unwrap()
                .socket_address
                .as_ref()
                .unwrap()
                .address,
            "203.0.113.9"
        );
        assert_eq!(attributes.extension("keygate.scopes"), Some("sites:write"));
        assert_eq!(attributes.extension("keygate.cost"), None);
        let http = attributes.request.unwrap().http.unwrap();
        assert_eq!((http.id.as_str(), http.method.as_str()), ("1234", "POST"));
        assert_eq!(http.path, "/v1/sites?page=2");
        assert_eq!(http.header("authorization"), Some("Bearer kg_x"));
        assert_eq!(http.header("x-request-id"), Some("req-1"));
        assert_eq!(http.header("x-api-key"), None);
    }

    #[test]
    fn headers_in_envoys_raw_encoding_are_read_too() {
        let raw = vec![
            ("x-api-key", "", b"kg_raw".as_slice()),
            ("authorization", "Bearer kg_text", b"".as_slice()),
        ];
        let check = CheckRequest::decode(envoy_check(HashMap::new(), raw).as_slice()).unwrap();
        let http = check.attributes.unwrap().request.unwrap().http.unwrap();
        assert_eq!(http.header("x-api-key"), Some("kg_raw"));
        assert_eq!(http.header("authorization"), Some("Bearer kg_text"));
    }

    #[test]
    fn a_key_sent_twice_in_a_map_means_its_last_value() {
        let entry = |key: &'static str, value: &'static str| StringEntry {
            key: Bytes::from_static(key.as_bytes()),
            value: Bytes::from_static(value.as_bytes()),
        };
        let http = HttpRequest {
            headers: vec![
                entry("authorization", "first"),
                entry("authorization", "last"),
            ],
            ..Default::default()
        };
        // Envoy's own types, reading the same bytes as a map, agree.
        let bytes = http.encode_to_vec();
        let envoy = attribute_context::HttpRequest::decode(bytes.as_slice()).unwrap();
        assert_eq!(envoy.headers["authorization"], "last");
        assert_eq!(http.header("authorization"), Some("last"));
    }

    #[test]
    fn a_header_that_is_not_text_stands_in_the_way_of_no_other() {
        let http = HttpRequest {
            headers: vec![
                StringEntry {
                    key: Bytes::from_static(b"x-binary"),
                    value: Bytes::from_static(&[0xff, 0xfe]),
                },
                StringEntry {
                    key: Bytes::from_static(b"authorization"),
                    value: Bytes::from_static(b"Bearer kg_x"),
                },
            ],
            ..Default::default()
        };
        let read = HttpRequest::decode(http.encode_to_vec().as_slice()).unwrap();
        assert_eq!(read.header("authorization"), Some("Bearer kg_x"));
        assert_eq!(read.header("x-binary"), None);
    }

    #[test]
    fn answers_read_as_envoys_types_read_them() {
        let allow = CheckResponse {
            status: Some(RpcStatus::default()),
            ok_response: Some(OkHttpResponse {
                headers: vec![HeaderValueOption::overwrite(
                    "x-keygate-key-id".into(),
                    "k1".into(),
                )],
                headers_to_remove: vec!["authorization".into()],
                response_headers_to_add: vec![HeaderValueOption::overwrite(
                    "x-ratelimit-remaining".into(),
                    "9".into(),
                )],
            }),
            dynamic_metadata: Some(Struct::of_strings(&[("code", "OK"), ("plan", "")])),
            ..CheckResponse::default()
        };
        let read = envoy::CheckResponse::decode(allow.encode_to_vec().as_slice()).unwrap();
        assert_eq!(read.status.unwrap().code, 0);
        let Some(envoy::HttpResponse::OkResponse(ok)) = read.http_response else {
            panic!("an OK response");
        };
        let header = ok.headers[0].header.as_ref().unwrap();
        assert_eq!(
            (header.key.as_str(), header.value.as_str()),
            ("x-keygate-key-id", "k1")
        );
        assert_eq!(
            ok.headers[0].append_action,
            envoy::HeaderAppendAction::OverwriteIfExistsOrAdd as i32
        );
        assert_eq!(ok.headers_to_remove, ["authorization"]);
        assert_eq!(
            ok.response_headers_to_add[0].header.as_ref().unwrap().value,
            "9"
        );
        let metadata = read.dynamic_metadata.unwrap().fields;
        assert_eq!(metadata["code"].kind, Some(Kind::StringValue("OK".into())));
        // An empty string is still a string, not an unset value.
        assert_eq!(
            metadata["plan"].kind,
            Some(Kind::StringValue(String::new()))
        );

        let deny = CheckResponse {
            status: Some(RpcStatus {
                code: 16,
                message: "INVALID_API_KEY".into(),
            }),
            denied_response: Some(DeniedHttpResponse {
                status: Some(HttpStatus { code: 401 }),
                headers: vec![HeaderValueOption::overwrite("x-error".into(), "no".into())],
                body: "{}".into(),
            }),
            ..CheckResponse::default()
        };
        let read = envoy::CheckResponse::decode(deny.encode_to_vec().as_slice()).unwrap();
        assert_eq!(read.status.as_ref().unwrap().code, 16);
        let Some(envoy::HttpResponse::DeniedResponse(denied)) = read.http_response else {
            panic!("a denied response");
        };
        assert_eq!(denied.status.unwrap().code, 401);
        assert_eq!(denied.body, "{}");
        assert_eq!(denied.headers[0].header.as_ref().unwrap().key, "x-error");
    }
}
