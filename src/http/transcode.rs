//! JSON routes transcoded into gRPC calls, in the shape of Google's HTTP transcoding: a route
//! binds a method and path template to a gRPC method; the request message is built from the
//! JSON body (when the route takes one), the `{id}` path segment and query parameters, in
//! the proto3 JSON mapping (camelCase or the proto field names accepted); it is then called
//! as a gRPC call on the same listener, with the request's headers (`authorization`, trace
//! context) and connection (peer address, client certificate), so authentication, authority,
//! validation, metrics and spans are the gRPC call's. The answer comes back as proto3 JSON,
//! or as a JSON error with the HTTP status of its gRPC code.

use http::{HeaderMap, Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use prost::Message;
use prost_reflect::{
    DescriptorPool, DeserializeOptions, DynamicMessage, Kind, MessageDescriptor, MethodDescriptor,
    SerializeOptions,
};
use serde_json::{Map, Value};
use tonic::body::Body;
use tonic::codegen::Bytes;

use super::{error_response, json_response};

/// The most a JSON request body may hold.
pub const MAX_BODY_BYTES: usize = 1 << 20;

/// One JSON route.
#[derive(Debug, Clone)]
pub struct Route {
    /// The HTTP method.
    pub method: Method,
    /// The path, with at most one `{id}` segment (`/v1/keys/{id}:rotate`).
    pub template: &'static str,
    /// The gRPC service called (`keygate.v1.KeyManager`).
    pub service: &'static str,
    /// The gRPC method called (`CreateKey`).
    pub rpc: &'static str,
    /// Whether the JSON body is the request message (otherwise it must be empty).
    pub body: bool,
    /// The request field `{id}` fills (`id`, `key.id`); empty without `{id}`.
    pub id_field: &'static str,
    /// What the route does, for the OpenAPI document.
    pub summary: &'static str,
}

impl Route {
    const fn new(
        method: Method,
        template: &'static str,
        (service, rpc): (&'static str, &'static str),
        body: bool,
        id_field: &'static str,
        summary: &'static str,
    ) -> Self {
        Route {
            method,
            template,
            service,
            rpc,
            body,
            id_field,
            summary,
        }
    }

    /// The `{id}` in `path`, `Some(None)` when the template has none and `path` matches it.
    fn id_in<'p>(&self, path: &'p str) -> Option<Option<&'p str>> {
        match self.template.split_once("{id}") {
            None => (path == self.template).then_some(None),
            Some((before, after)) => {
                let id = path.strip_prefix(before)?.strip_suffix(after)?;
                (!id.is_empty() && !id.contains('/')).then_some(Some(id))
            }
        }
    }
}

const KEY_MANAGER: &str = "keygate.v1.KeyManager";

/// The management API's JSON routes.
pub fn management_routes() -> Vec<Route> {
    use Method as M;
    let rpc = |method| (KEY_MANAGER, method);
    vec![
        Route::new(
            M::POST,
            "/v1/owners",
            rpc("CreateOwner"),
            true,
            "",
            "Create an owner",
        ),
        Route::new(
            M::GET,
            "/v1/owners",
            rpc("ListOwners"),
            false,
            "",
            "List owners",
        ),
        Route::new(
            M::GET,
            "/v1/owners/{id}",
            rpc("GetOwner"),
            false,
            "id",
            "Get an owner",
        ),
        Route::new(
            M::PATCH,
            "/v1/owners/{id}",
            rpc("UpdateOwner"),
            true,
            "owner.id",
            "Update an owner's fields named in updateMask",
        ),
        Route::new(
            M::POST,
            "/v1/plans",
            rpc("CreatePlan"),
            true,
            "",
            "Create a plan",
        ),
        Route::new(
            M::GET,
            "/v1/plans",
            rpc("ListPlans"),
            false,
            "",
            "List plans and the default one",
        ),
        Route::new(
            M::GET,
            "/v1/plans/{id}",
            rpc("GetPlan"),
            false,
            "name",
            "Get a plan",
        ),
        Route::new(
            M::PATCH,
            "/v1/plans/{id}",
            rpc("UpdatePlan"),
            true,
            "plan.name",
            "Update a plan's fields named in updateMask; in force on every replica's next request",
        ),
        Route::new(
            M::DELETE,
            "/v1/plans/{id}",
            rpc("DeletePlan"),
            false,
            "name",
            "Delete a plan no owner or live key is on",
        ),
        Route::new(
            M::POST,
            "/v1/keys",
            rpc("CreateKey"),
            true,
            "",
            "Create a key; the answer holds its secret, shown this once",
        ),
        Route::new(
            M::GET,
            "/v1/keys",
            rpc("ListKeys"),
            false,
            "",
            "List an owner's keys",
        ),
        Route::new(
            M::GET,
            "/v1/keys/{id}",
            rpc("GetKey"),
            false,
            "id",
            "Get a key",
        ),
        Route::new(
            M::PATCH,
            "/v1/keys/{id}",
            rpc("UpdateKey"),
            true,
            "key.id",
            "Update a key's fields named in updateMask",
        ),
        Route::new(
            M::DELETE,
            "/v1/keys/{id}",
            rpc("DeleteKey"),
            false,
            "id",
            "Delete a key",
        ),
        Route::new(
            M::POST,
            "/v1/keys/{id}:activate",
            rpc("ActivateKey"),
            true,
            "id",
            "Activate a key with its activation code",
        ),
        Route::new(
            M::POST,
            "/v1/keys/{id}:rotate",
            rpc("RotateKey"),
            true,
            "id",
            "Rotate a key's secret; the answer holds the new secret, shown this once",
        ),
        Route::new(
            M::POST,
            "/v1/keys/{id}:revoke",
            rpc("RevokeKey"),
            true,
            "id",
            "Revoke a key",
        ),
        Route::new(
            M::POST,
            "/v1/keys:import",
            rpc("ImportKey"),
            true,
            "",
            "Import a key issued elsewhere",
        ),
        Route::new(
            M::GET,
            "/v1/keys/{id}/usage",
            rpc("GetKeyUsage"),
            false,
            "key_id",
            "A key's requests per day",
        ),
        Route::new(
            M::GET,
            "/v1/owners/{id}/usage",
            rpc("GetKeyUsage"),
            false,
            "owner_id",
            "An owner's requests per day, summed over its keys",
        ),
    ]
}

/// The data plane's JSON routes.
pub fn data_plane_routes() -> Vec<Route> {
    vec![Route::new(
        Method::POST,
        "/v1/authorize",
        ("keygate.v1.Authorizer", "Authorize"),
        true,
        "",
        "Decide whether a key may make a request",
    )]
}

/// A route table that names a method keygate's descriptors do not have.
#[derive(Debug, thiserror::Error)]
#[error("route {template} names {service}/{rpc}, which keygate's descriptors do not have")]
pub struct RouteError {
    template: &'static str,
    service: &'static str,
    rpc: &'static str,
}

/// What a request's method and path matched.
pub enum RouteMatch<'a> {
    /// The route and its `{id}`, if it has one.
    Found(usize, Option<&'a str>),
    /// The path is served, with these methods only.
    OtherMethods(Vec<Method>),
    /// No route has the path.
    None,
}

/// Routes bound to the gRPC methods they call.
pub struct Transcoder {
    routes: Vec<Route>,
    methods: Vec<MethodDescriptor>,
}

impl Transcoder {
    /// Binds `routes` to keygate's descriptors.
    pub fn new(routes: Vec<Route>) -> Result<Self, RouteError> {
        let pool = descriptor_pool();
        let methods = routes
            .iter()
            .map(|route| {
                pool.get_service_by_name(route.service)
                    .and_then(|s| s.methods().find(|m| m.name() == route.rpc))
                    .ok_or(RouteError {
                        template: route.template,
                        service: route.service,
                        rpc: route.rpc,
                    })
            })
            .collect::<Result<_, _>>()?;
        Ok(Transcoder { routes, methods })
    }

    /// The routes, in the order they are matched.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// The gRPC method route number `index` calls.
    pub fn method(&self, index: usize) -> &MethodDescriptor {
        &self.methods[index]
    }

    /// The route serving `method` on `path`.
    pub fn find<'p>(&self, method: &Method, path: &'p str) -> RouteMatch<'p> {
        let mut others = Vec::new();
        for (index, route) in self.routes.iter().enumerate() {
            if let Some(id) = route.id_in(path) {
                if route.method == method {
                    return RouteMatch::Found(index, id);
                }
                others.push(route.method.clone());
            }
        }
        if others.is_empty() {
            RouteMatch::None
        } else {
            RouteMatch::OtherMethods(others)
        }
    }

    /// Answers `request` through route number `index` by calling `grpc`.
    pub async fn call<S>(
        &self,
        index: usize,
        id: Option<&str>,
        mut grpc: S,
        request: Request<Body>,
    ) -> Response<Body>
    where
        S: tower::Service<Request<Body>, Response = Response<Body>> + Send,
        S::Future: Send,
    {
        let (route, method) = (&self.routes[index], &self.methods[index]);
        let id = id.map(percent_decode);
        let (parts, body) = request.into_parts();
        let message = match read_message(route, method.input(), id, &parts.uri, body).await {
            Ok(message) => message,
            Err(answer) => return *answer,
        };
        let call = grpc_request(route, parts, message);
        if std::future::poll_fn(|cx| grpc.poll_ready(cx))
            .await
            .is_err()
        {
            return error_response(tonic::Code::Unavailable, "keygate is not serving; retry");
        }
        match grpc.call(call).await {
            Ok(answer) => json_answer(method.output(), answer).await,
            Err(_) => error_response(tonic::Code::Unavailable, "keygate is not serving; retry"),
        }
    }
}

/// keygate's own descriptors, for the JSON mapping.
pub fn descriptor_pool() -> DescriptorPool {
    DescriptorPool::decode(crate::proto::FILE_DESCRIPTOR_SET)
        .expect("the descriptors built with keygate decode")
}

/// An answer that ends the call early (a refusal of the input).
type Refusal = Box<Response<Body>>;

fn invalid(message: String) -> Refusal {
    Box::new(error_response(tonic::Code::InvalidArgument, &message))
}

/// The request message from the body, the `{id}` and the query.
async fn read_message(
    route: &Route,
    input: MessageDescriptor,
    id: Option<String>,
    uri: &Uri,
    body: Body,
) -> Result<DynamicMessage, Refusal> {
    let bytes = match Limited::new(body, MAX_BODY_BYTES).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            let mut answer = error_response(
                tonic::Code::InvalidArgument,
                &format!("the request body is over {MAX_BODY_BYTES} bytes"),
            );
            *answer.status_mut() = StatusCode::PAYLOAD_TOO_LARGE;
            return Err(Box::new(answer));
        }
        Err(e) => return Err(invalid(format!("cannot read the request body: {e}"))),
    };
    let mut fields = if bytes.iter().all(u8::is_ascii_whitespace) {
        Map::new()
    } else if !route.body {
        return Err(invalid(format!(
            "{} {} takes no body; pass fields as query parameters",
            route.method, route.template
        )));
    } else {
        match serde_json::from_slice(&bytes) {
            Ok(Value::Object(fields)) => fields,
            Ok(_) => return Err(invalid("the request body must be a JSON object".into())),
            Err(e) => return Err(invalid(format!("the request body is not valid JSON: {e}"))),
        }
    };
    for (name, value) in query_pairs(uri.query().unwrap_or("")) {
        set_from_text(&mut fields, &input, &name, &value, true).map_err(invalid)?;
    }
    if let Some(id) = id {
        set_from_text(&mut fields, &input, route.id_field, &id, false).map_err(invalid)?;
    }
    camel_case_masks(&mut fields, &input);
    DynamicMessage::deserialize_with_options(
        input,
        Value::Object(fields),
        &DeserializeOptions::new().deny_unknown_fields(true),
    )
    .map_err(|e| invalid(format!("the request does not fit {}: {e}", route.rpc)))
}

/// Sets field `path` (dotted, proto or JSON names) of the JSON object `fields` from its text
/// form, typed by the field's kind. A repeated field collects every value when
/// `repeatable`; otherwise a value already there must be the same text.
fn set_from_text(
    fields: &mut Map<String, Value>,
    message: &MessageDescriptor,
    path: &str,
    text: &str,
    repeatable: bool,
) -> Result<(), String> {
    let (name, rest) = match path.split_once('.') {
        Some((name, rest)) => (name, Some(rest)),
        None => (path, None),
    };
    let field = message
        .get_field_by_name(name)
        .or_else(|| message.get_field_by_json_name(name))
        .ok_or_else(|| format!("{} has no field {name:?}", message.name()))?;
    let key = field.json_name().to_owned();
    let existing = fields.remove(field.name()).or_else(|| fields.remove(&key));
    if let Some(rest) = rest {
        let Kind::Message(inner) = field.kind() else {
            return Err(format!("{name} has no fields"));
        };
        let mut nested = match existing {
            Some(Value::Object(nested)) => nested,
            None => Map::new(),
            Some(_) => return Err(format!("{name} must be an object")),
        };
        set_from_text(&mut nested, &inner, rest, text, repeatable)?;
        fields.insert(key, Value::Object(nested));
        return Ok(());
    }
    if field.is_map() {
        return Err(format!("{name} is a map; set it in the JSON body"));
    }
    let value = typed(&field.kind(), text).map_err(|kind| format!("{name} must be {kind}"))?;
    let value = match existing {
        None if field.is_list() => Value::Array(vec![value]),
        None => value,
        Some(Value::Array(mut values)) if field.is_list() && repeatable => {
            values.push(value);
            Value::Array(values)
        }
        Some(same) if same == value => same,
        Some(other) => {
            return Err(format!(
                "{name} is given twice, as {other} and as {value}; give it once"
            ));
        }
    };
    fields.insert(key, value);
    Ok(())
}

/// The JSON value a query parameter's text stands for, or what the kind needs.
fn typed(kind: &Kind, text: &str) -> Result<Value, &'static str> {
    match kind {
        Kind::Bool => match text {
            "true" => Ok(Value::Bool(true)),
            "false" => Ok(Value::Bool(false)),
            _ => Err("true or false"),
        },
        Kind::Double | Kind::Float => text
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map(Value::Number)
            .ok_or("a number"),
        Kind::Int32
        | Kind::Sint32
        | Kind::Sfixed32
        | Kind::Int64
        | Kind::Sint64
        | Kind::Sfixed64 => text
            .parse::<i64>()
            .map(|n| Value::Number(n.into()))
            .map_err(|_| "an integer"),
        Kind::Uint32 | Kind::Fixed32 | Kind::Uint64 | Kind::Fixed64 => text
            .parse::<u64>()
            .map(|n| Value::Number(n.into()))
            .map_err(|_| "a non-negative integer"),
        Kind::Message(message) if !is_text_message(message) => Err("set in the JSON body"),
        _ => Ok(Value::String(text.to_owned())),
    }
}

/// Field masks in the proto3 JSON mapping name fields in camelCase; the proto names
/// (`expire_time`) are taken too, as everywhere else in the request.
fn camel_case_masks(fields: &mut Map<String, Value>, message: &MessageDescriptor) {
    for field in message.fields() {
        let is_mask = matches!(field.kind(), Kind::Message(m) if m.full_name() == "google.protobuf.FieldMask");
        if !is_mask {
            continue;
        }
        for name in [field.name(), field.json_name()] {
            if let Some(Value::String(paths)) = fields.get_mut(name) {
                *paths = paths
                    .split(',')
                    .map(|path| lower_camel_case(path.trim()))
                    .collect::<Vec<_>>()
                    .join(",");
            }
        }
    }
}

/// `expire_time` as `expireTime`; a name already in camelCase stays as it is.
fn lower_camel_case(name: &str) -> String {
    let mut camel = String::with_capacity(name.len());
    let mut upper = false;
    for c in name.chars() {
        match c {
            '_' => upper = true,
            c if upper => {
                camel.push(c.to_ascii_uppercase());
                upper = false;
            }
            c => camel.push(c),
        }
    }
    camel
}

/// Whether `message` is written as one JSON string (timestamps, durations, field masks).
pub fn is_text_message(message: &MessageDescriptor) -> bool {
    matches!(
        message.full_name(),
        "google.protobuf.Timestamp" | "google.protobuf.Duration" | "google.protobuf.FieldMask"
    )
}

/// The query's `name=value` pairs, decoded (`+` is a space).
fn query_pairs(query: &str) -> impl Iterator<Item = (String, String)> + '_ {
    query.split('&').filter(|p| !p.is_empty()).map(|pair| {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let decode = |text: &str| percent_decode(&text.replace('+', " "));
        (decode(name), decode(value))
    })
}

/// `text` with `%XX` escapes decoded; invalid escapes and UTF-8 are kept as they are.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1), bytes.get(i + 2)) {
            (b'%', Some(&hi), Some(&lo)) if hex(hi).is_some() && hex(lo).is_some() => {
                decoded.push((hex(hi).unwrap_or(0) * 16 + hex(lo).unwrap_or(0)) as u8);
                i += 3;
            }
            (byte, _, _) => {
                decoded.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8(decoded).unwrap_or_else(|_| text.to_owned())
}

/// Headers that describe the HTTP request itself, not the call: not passed on as metadata.
const NOT_METADATA: [&str; 8] = [
    "content-type",
    "content-length",
    "transfer-encoding",
    "connection",
    "te",
    "accept-encoding",
    "grpc-encoding",
    "grpc-accept-encoding",
];

/// The gRPC call for `message`, carrying the request's metadata and connection.
fn grpc_request(
    route: &Route,
    parts: http::request::Parts,
    message: DynamicMessage,
) -> Request<Body> {
    // The gRPC frame: uncompressed, the length, the message encoded in place.
    let length = message.encoded_len();
    let mut frame = Vec::with_capacity(5 + length);
    frame.push(0);
    frame.extend_from_slice(&(length as u32).to_be_bytes());
    message.encode_raw(&mut frame);
    let mut headers = HeaderMap::with_capacity(parts.headers.len() + 2);
    for (name, value) in &parts.headers {
        if !NOT_METADATA.contains(&name.as_str()) {
            headers.append(name.clone(), value.clone());
        }
    }
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/grpc"),
    );
    headers.insert(http::header::TE, http::HeaderValue::from_static("trailers"));
    let mut call = Request::new(Body::new(Full::new(Bytes::from(frame))));
    *call.method_mut() = Method::POST;
    *call.uri_mut() = Uri::builder()
        .path_and_query(format!("/{}/{}", route.service, route.rpc))
        .build()
        .expect("a method's path is a valid URI");
    *call.headers_mut() = headers;
    *call.extensions_mut() = parts.extensions;
    call
}

/// The JSON answer for the gRPC call's `answer`.
async fn json_answer(output: MessageDescriptor, answer: Response<Body>) -> Response<Body> {
    let (parts, body) = answer.into_parts();
    if let Some(status) = tonic::Status::from_header_map(&parts.headers) {
        return status_answer(&status);
    }
    let collected = match body.collect().await {
        Ok(collected) => collected,
        Err(status) => return status_answer(&status),
    };
    let status = collected
        .trailers()
        .and_then(tonic::Status::from_header_map)
        .unwrap_or_else(|| tonic::Status::internal("the call ended without a status"));
    if status.code() != tonic::Code::Ok {
        return status_answer(&status);
    }
    let data = collected.to_bytes();
    let message = data
        .get(5..)
        .filter(|_| data[0] == 0)
        .and_then(|bytes| DynamicMessage::decode(output, bytes).ok());
    let Some(message) = message else {
        return error_response(tonic::Code::Internal, "the answer could not be read");
    };
    let mut json = Vec::with_capacity(data.len() * 2);
    let written = message.serialize_with_options(
        &mut serde_json::Serializer::new(&mut json),
        &SerializeOptions::new().skip_default_fields(false),
    );
    match written {
        Ok(()) => json_response(StatusCode::OK, Bytes::from(json)),
        Err(_) => error_response(tonic::Code::Internal, "the answer could not be written"),
    }
}

/// The JSON error answer for a gRPC status.
fn status_answer(status: &tonic::Status) -> Response<Body> {
    error_response(status.code(), status.message())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(transcoder: &Transcoder, index: usize, query: &str, id: Option<&str>) -> Value {
        let input = transcoder.method(index).input();
        let mut fields = Map::new();
        for (name, value) in query_pairs(query) {
            set_from_text(&mut fields, &input, &name, &value, true).unwrap();
        }
        if let Some(id) = id {
            let route = &transcoder.routes()[index];
            set_from_text(&mut fields, &input, route.id_field, id, false).unwrap();
        }
        Value::Object(fields)
    }

    #[test]
    fn every_route_names_a_method_keygate_serves() {
        let management = Transcoder::new(management_routes()).unwrap();
        let served: Vec<&str> = management.routes().iter().map(|r| r.rpc).collect();
        let pool = descriptor_pool();
        let service = pool.get_service_by_name(KEY_MANAGER).unwrap();
        for method in service.methods() {
            assert!(
                served.contains(&method.name()),
                "{} has no JSON route",
                method.name()
            );
        }
        Transcoder::new(data_plane_routes()).unwrap();
        let wrong = vec![Route::new(
            Method::GET,
            "/x",
            (KEY_MANAGER, "Nope"),
            false,
            "",
            "",
        )];
        assert!(Transcoder::new(wrong).is_err());
    }

    #[test]
    fn paths_match_their_routes_with_the_id() {
        let transcoder = Transcoder::new(management_routes()).unwrap();
        let found = |method: Method, path: &str| match transcoder.find(&method, path) {
            RouteMatch::Found(index, id) => {
                Some((transcoder.routes()[index].rpc, id.map(str::to_owned)))
            }
            _ => None,
        };
        let id = Some("key_1".to_owned());
        assert_eq!(found(Method::GET, "/v1/keys"), Some(("ListKeys", None)));
        assert_eq!(
            found(Method::GET, "/v1/keys/key_1"),
            Some(("GetKey", id.clone()))
        );
        assert_eq!(
            found(Method::PATCH, "/v1/keys/key_1"),
            Some(("UpdateKey", id.clone()))
        );
        assert_eq!(
            found(Method::DELETE, "/v1/keys/key_1"),
            Some(("DeleteKey", id.clone()))
        );
        assert_eq!(
            found(Method::POST, "/v1/keys/key_1:rotate"),
            Some(("RotateKey", id.clone()))
        );
        assert_eq!(
            found(Method::POST, "/v1/keys:import"),
            Some(("ImportKey", None))
        );
        let plan = Some("team".to_owned());
        assert_eq!(found(Method::POST, "/v1/plans"), Some(("CreatePlan", None)));
        assert_eq!(
            found(Method::GET, "/v1/plans/team"),
            Some(("GetPlan", plan.clone()))
        );
        assert_eq!(
            found(Method::PATCH, "/v1/plans/team"),
            Some(("UpdatePlan", plan.clone()))
        );
        assert_eq!(
            found(Method::DELETE, "/v1/plans/team"),
            Some(("DeletePlan", plan))
        );
        assert_eq!(found(Method::GET, "/v1/keys/a/b"), None);
        assert_eq!(found(Method::GET, "/v1/keys/"), None);
        match transcoder.find(&Method::PUT, "/v1/keys/key_1") {
            RouteMatch::OtherMethods(methods) => {
                assert_eq!(methods, [Method::GET, Method::PATCH, Method::DELETE]);
            }
            _ => panic!("a known path with another method"),
        }
        assert!(matches!(
            transcoder.find(&Method::GET, "/v2/keys"),
            RouteMatch::None
        ));
    }

    #[test]
    fn query_parameters_and_the_id_are_typed_by_their_fields() {
        let transcoder = Transcoder::new(management_routes()).unwrap();
        let index = |name: &str| {
            transcoder
                .routes()
                .iter()
                .position(|r| r.rpc == name)
                .unwrap()
        };
        assert_eq!(
            object(
                &transcoder,
                index("ListKeys"),
                "owner_id=own_1&pageSize=10&page_token=a%2Bb",
                None
            ),
            serde_json::json!({"ownerId": "own_1", "pageSize": 10, "pageToken": "a+b"})
        );
        assert_eq!(
            object(
                &transcoder,
                index("UpdateKey"),
                "updateMask=name",
                Some("key_1")
            ),
            serde_json::json!({"key": {"id": "key_1"}, "updateMask": "name"})
        );
        assert_eq!(
            object(&transcoder, index("DeletePlan"), "", Some("Team Pro")),
            serde_json::json!({"name": "Team Pro"})
        );
        let input = transcoder.method(index("ListKeys")).input();
        for (query, error) in [
            ("page_size=ten", "page_size must be a non-negative integer"),
            ("pageSize=-1", "pageSize must be a non-negative integer"),
            ("colour=red", "has no field \"colour\""),
            ("owner_id=a&owner_id=b", "given twice"),
        ] {
            let mut fields = Map::new();
            let result = query_pairs(query)
                .try_for_each(|(n, v)| set_from_text(&mut fields, &input, &n, &v, true));
            let message = result.unwrap_err();
            assert!(message.contains(error), "{query}: {message}");
        }
    }

    /// The input message of the route calling `rpc`.
    fn input_of(transcoder: &Transcoder, rpc: &str) -> MessageDescriptor {
        let index = transcoder.routes().iter().position(|r| r.rpc == rpc);
        transcoder.method(index.unwrap()).input()
    }

    #[test]
    fn the_path_id_must_agree_with_the_body() {
        let transcoder = Transcoder::new(management_routes()).unwrap();
        let input = input_of(&transcoder, "UpdateKey");
        let mut fields =
            serde_json::from_str::<Map<String, Value>>(r#"{"key": {"id": "key_2"}}"#).unwrap();
        let error = set_from_text(&mut fields, &input, "key.id", "key_1", false).unwrap_err();
        assert!(error.contains("given twice"), "{error}");
        let mut fields =
            serde_json::from_str::<Map<String, Value>>(r#"{"key": {"id": "key_1"}}"#).unwrap();
        set_from_text(&mut fields, &input, "key.id", "key_1", false).unwrap();
    }

    #[test]
    fn field_masks_take_either_spelling() {
        let transcoder = Transcoder::new(management_routes()).unwrap();
        let input = input_of(&transcoder, "UpdateKey");
        let mut fields: Map<String, Value> =
            serde_json::from_str(r#"{"update_mask": "expire_time, allowedCidrs,name"}"#).unwrap();
        camel_case_masks(&mut fields, &input);
        assert_eq!(fields["update_mask"], "expireTime,allowedCidrs,name");
    }

    #[test]
    fn escapes_are_decoded() {
        assert_eq!(percent_decode("a%20b%2Fc"), "a b/c");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
        assert_eq!(percent_decode("%ff"), "%ff");
    }
}
