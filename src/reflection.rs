//! gRPC server reflection for each listener: it lists exactly the services that listener
//! serves, and describes them and every message they use.
//!
//! Both reflection versions are served: grpcurl before 1.9 and many other tools speak only
//! v1alpha.

use tonic_reflection::server::{Builder, Error, v1, v1alpha};

use crate::proto::{FILE_DESCRIPTOR_SET, authorizer_server, key_manager_server};

/// Envoy's ext_authz service (`envoy.service.auth.v3`) and everything it imports, compiled
/// at build time from the protos the envoy-types crate ships. Only the descriptors: the
/// service itself is served with envoy-types' generated code.
pub const ENVOY_FILE_DESCRIPTOR_SET: &[u8] =
    tonic::include_file_descriptor_set!("envoy_descriptor");

/// The reflection services, both versions, as every listener lists them.
const REFLECTION_SERVICES: [&str; 2] = [
    tonic_reflection::pb::v1::server_reflection_server::SERVICE_NAME,
    tonic_reflection::pb::v1alpha::server_reflection_server::SERVICE_NAME,
];

/// What the management listener lists: the management API, health and reflection.
pub fn management_services() -> Vec<&'static str> {
    let mut services = vec![
        key_manager_server::SERVICE_NAME,
        tonic_health::pb::health_server::SERVICE_NAME,
    ];
    services.extend(REFLECTION_SERVICES);
    services
}

/// What the data-plane listener lists: Envoy's ext_authz, the Authorize API, health and
/// reflection.
pub fn data_plane_services() -> Vec<&'static str> {
    let mut services = vec![
        envoy_types::pb::envoy::service::auth::v3::authorization_server::SERVICE_NAME,
        authorizer_server::SERVICE_NAME,
        tonic_health::pb::health_server::SERVICE_NAME,
    ];
    services.extend(REFLECTION_SERVICES);
    services
}

/// The reflection services (v1, v1alpha) of the management listener.
pub fn management() -> Result<
    (
        v1::ServerReflectionServer<impl v1::ServerReflection>,
        v1alpha::ServerReflectionServer<impl v1alpha::ServerReflection>,
    ),
    Error,
> {
    let builder = || listing(&management_services(), &[]);
    Ok((builder().build_v1()?, builder().build_v1alpha()?))
}

/// The reflection services (v1, v1alpha) of the data-plane listener.
pub fn data_plane() -> Result<
    (
        v1::ServerReflectionServer<impl v1::ServerReflection>,
        v1alpha::ServerReflectionServer<impl v1alpha::ServerReflection>,
    ),
    Error,
> {
    let builder = || listing(&data_plane_services(), &[ENVOY_FILE_DESCRIPTOR_SET]);
    Ok((builder().build_v1()?, builder().build_v1alpha()?))
}

/// A reflection builder that lists `services` and knows keygate's, health's and both
/// reflection versions' descriptors, and those in `extra`.
fn listing<'a>(services: &[&'static str], extra: &[&'a [u8]]) -> Builder<'a> {
    let mut builder = Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET);
    for set in extra {
        builder = builder.register_encoded_file_descriptor_set(set);
    }
    for service in services {
        builder = builder.with_service_name(*service);
    }
    builder
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listener_builds_its_reflection() {
        management().unwrap();
        data_plane().unwrap();
    }

    #[test]
    fn envoy_descriptors_describe_ext_authz() {
        use prost::Message;
        let set = prost_types::FileDescriptorSet::decode(ENVOY_FILE_DESCRIPTOR_SET).unwrap();
        let file = set
            .file
            .iter()
            .find(|f| f.name() == "envoy/service/auth/v3/external_auth.proto")
            .expect("external_auth.proto");
        assert!(
            file.service.iter().any(
                |s| s.name() == "Authorization" && s.method.iter().any(|m| m.name() == "Check")
            )
        );
    }
}
