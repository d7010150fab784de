//! The environment Kubernetes gives a container: a service-link variable set for every
//! Service in the namespace (unless the pod sets `enableServiceLinks: false`), named after
//! the Service, so a release named `keygate` puts `KEYGATE_*` names next to keygate's own.

/// The variables the kubelet sets for the Service `name` at `cluster_ip` with `ports`
/// (port name, port number, protocol in upper case): `<SVC>_SERVICE_HOST`,
/// `<SVC>_SERVICE_PORT[_<PORT NAME>]` and the Docker-link style `<SVC>_PORT[_<n>_<PROTOCOL>
/// [_PROTO|_PORT|_ADDR]]`, where `<SVC>` is the name upper-cased with `-` as `_`.
pub fn service_links(
    name: &str,
    cluster_ip: &str,
    ports: &[(&str, u16, &str)],
) -> Vec<(String, String)> {
    let service = name.to_ascii_uppercase().replace('-', "_");
    let mut vars = vec![(format!("{service}_SERVICE_HOST"), cluster_ip.to_owned())];
    let Some(&(_, first_port, first_protocol)) = ports.first() else {
        return vars;
    };
    let url = |port: u16, protocol: &str| {
        format!("{}://{cluster_ip}:{port}", protocol.to_ascii_lowercase())
    };
    vars.push((format!("{service}_SERVICE_PORT"), first_port.to_string()));
    vars.push((format!("{service}_PORT"), url(first_port, first_protocol)));
    for &(port_name, port, protocol) in ports {
        if !port_name.is_empty() {
            let port_name = port_name.to_ascii_uppercase().replace('-', "_");
            vars.push((
                format!("{service}_SERVICE_PORT_{port_name}"),
                port.to_string(),
            ));
        }
        let link = format!("{service}_PORT_{port}_{protocol}");
        vars.push((format!("{link}_PROTO"), protocol.to_ascii_lowercase()));
        vars.push((format!("{link}_PORT"), port.to_string()));
        vars.push((format!("{link}_ADDR"), cluster_ip.to_owned()));
        vars.push((link, url(port, protocol)));
    }
    vars
}

/// The service links of a release named `keygate` as the chart installs it: the data-plane
/// Service `keygate`, the management Service `keygate-management` and a bundled
/// `keygate-redis`.
pub fn keygate_release_links() -> Vec<(String, String)> {
    [
        service_links(
            "keygate",
            "10.96.0.10",
            &[("grpc-authz", 9191, "TCP"), ("http-metrics", 9090, "TCP")],
        ),
        service_links(
            "keygate-management",
            "10.96.0.11",
            &[("grpc-admin", 9192, "TCP")],
        ),
        service_links("keygate-redis", "10.96.0.12", &[("redis", 6379, "TCP")]),
    ]
    .concat()
}
