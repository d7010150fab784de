//! Listeners and the server's life cycle: bind, serve the adapters the composition root
//! built, report health, drain and stop on a signal.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tonic::codegen::{Body, Bytes, StdError};
use tonic::service::Routes;
use tower::layer::util::{Identity, Stack};
use tower::{Layer, Service};

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::server::NamedService;
use tonic::transport::server::{Router, TcpIncoming};
use tonic_health::ServingStatus;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::server::HealthReporter;
use tracing::{error, info, warn};

use crate::admission::AdmissionLayer;
use crate::app::{App, Backends, StartError, create_data_dir};
use crate::clock::{Clock, SystemClock};
use crate::config::{Config, ConfigError, ServeArgs};
use crate::connection::{self, Unvectored};
use crate::http::forward_auth::ForwardAuth;
use crate::http::{HttpApi, HttpLayer};
use crate::proto::authorizer_server::AuthorizerServer;
use crate::proto::key_manager_server::KeyManagerServer;
use crate::secrets::{PepperSource, Secrets};
use crate::service::authorizer::AuthorizerService;
use crate::service::check_wire::AuthorizationServer;
use crate::service::ext_authz::ExtAuthzService;
use crate::service::key_manager::KeyManagerService;
use crate::shutdown::until_stopped;
use crate::store::StoreBackend;
use crate::telemetry::Telemetry;
use crate::telemetry::rpc::{CallCounter, RpcLayer};
use crate::tls::{Listener, ServerTls};

/// The health service name whose status says whether keygate can decide for keys it has not
/// cached: SERVING while the store answers. The data-plane services themselves stay SERVING
/// while keygate runs, since cached keys are decided even when the store is down.
pub const READINESS_SERVICE: &str = "keygate.readiness";

/// How often the store is probed for readiness.
const READINESS_PROBE_INTERVAL: Duration = Duration::from_secs(1);

/// A started keygate; dropping it does not stop it, [`RunningServer::shutdown`] does.
pub struct RunningServer {
    management_addr: SocketAddr,
    data_plane_addr: SocketAddr,
    metrics_addr: SocketAddr,
    health_addr: Option<SocketAddr>,
    app: Arc<App>,
    stop: watch::Sender<bool>,
    task: JoinHandle<Result<(), ServeError>>,
}

impl RunningServer {
    /// The address the management API is bound to.
    pub fn management_addr(&self) -> SocketAddr {
        self.management_addr
    }

    /// The address the data plane (Check, Authorize) is bound to.
    pub fn data_plane_addr(&self) -> SocketAddr {
        self.data_plane_addr
    }

    /// The address Prometheus metrics are served on, at `/metrics`.
    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics_addr
    }

    /// The address of the plaintext health-only listener, if one is configured.
    pub fn health_addr(&self) -> Option<SocketAddr> {
        self.health_addr
    }

    /// The shared state, for counters and tests.
    pub fn app(&self) -> &Arc<App> {
        &self.app
    }

    /// Reports NOT_SERVING, keeps serving for the drain grace, then stops accepting calls,
    /// lets in-flight calls finish, writes pending key uses, and waits for the server to
    /// end.
    pub async fn shutdown(self) -> Result<(), ServeError> {
        let _ = self.stop.send(true);
        self.task.await?
    }

    /// Waits until the server ends by itself (a listener failure).
    async fn wait(&mut self) -> Result<(), ServeError> {
        (&mut self.task).await?
    }
}

/// Why a running server stopped badly.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A listener failed.
    #[error("a listener failed: {0}")]
    Listener(#[from] tonic::transport::Error),
    /// The serving task panicked or was cancelled.
    #[error("the server task ended abnormally: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// Refuses an exposed management API with neither an admin token nor admin identities
/// (which need mutual TLS): on a non-loopback address it would otherwise be open to the
/// network.
pub fn check_management_exposure(
    config: &Config,
    admin_token_given: bool,
) -> Result<(), ConfigError> {
    if !config.listen.management.ip().is_loopback()
        && !admin_token_given
        && config.management.admin_identities.is_empty()
    {
        return Err(ConfigError::Field {
            field: "listen.management".into(),
            message: format!(
                "{} is not a loopback address; set KEYGATE_ADMIN_TOKEN or KEYGATE_ADMIN_TOKEN_FILE (or management.admin_identities with mutual TLS) before exposing the management API",
                config.listen.management
            ),
        });
    }
    Ok(())
}

/// Checks what the configuration needs from the environment `env`: an admin token when the
/// management API is exposed, a shared pepper with the Redis store.
pub fn check_deployment(config: &Config, env: &HashMap<String, String>) -> Result<(), ConfigError> {
    let given = |names: [&str; 2]| {
        names
            .iter()
            .any(|name| env.get(*name).is_some_and(|v| !v.is_empty()))
    };
    check_management_exposure(
        config,
        given(["KEYGATE_ADMIN_TOKEN", "KEYGATE_ADMIN_TOKEN_FILE"]),
    )?;
    if config.store == StoreBackend::Redis && !given(["KEYGATE_PEPPER", "KEYGATE_PEPPER_FILE"]) {
        return Err(ConfigError::Field {
            field: "store".into(),
            message: "with the Redis store every replica must share one pepper: set KEYGATE_PEPPER or KEYGATE_PEPPER_FILE".into(),
        });
    }
    Ok(())
}

/// Binds the listeners and starts serving. The backends and clock are passed in so tests
/// can drive a server over any store and time.
pub async fn start(
    config: &Config,
    secrets: Secrets,
    backends: Backends,
    clock: Arc<dyn Clock>,
) -> Result<RunningServer, StartError> {
    check_management_exposure(config, secrets.admin_token.is_some())?;
    if secrets.admin_token.is_none() {
        warn!(
            "no admin token configured: the management API accepts unauthenticated calls on loopback; set KEYGATE_ADMIN_TOKEN to require one"
        );
    }
    let app = Arc::new(App::new(config, secrets, backends, clock)?);
    app.store_configured_plans().await?;
    app.authorizer
        .keys()
        .load_imported()
        .await
        .map_err(|e| StartError::Runtime(format!("cannot read imported keys: {e}")))?;
    let management_tls = server_tls(config, Listener::Management)?;
    let data_plane_tls = server_tls(config, Listener::DataPlane)?;
    let handshake_timeout = config.tls.handshake_timeout;
    let management = bind(config.listen.management, "listen.management").await?;
    let data_plane = bind(config.listen.data_plane, "listen.data_plane").await?;
    let metrics = bind(config.listen.metrics, "listen.metrics").await?;
    let health_only = match config.listen.health {
        Some(addr) => Some(bind(addr, "listen.health").await?),
        None => None,
    };
    let health_addr = health_only.as_ref().map(local_addr).transpose()?;
    let management_addr = local_addr(&management)?;
    let data_plane_addr = local_addr(&data_plane)?;
    let metrics_addr = local_addr(&metrics)?;
    let registry = app
        .metrics
        .registry(app.authorizer.clone(), app.invalidations.clone());

    let (reporter, health) = tonic_health::server::health_reporter();
    set_health(&reporter, ServingStatus::Serving).await;
    let management_router = management_router(&app, health.clone())?;
    let health_router = tonic::transport::Server::builder().add_service(health.clone());
    let data_plane_router = data_plane_router(&app, health)?;

    let (stop, stopped) = watch::channel(false);
    let (close, closed) = watch::channel(false);
    let task_app = app.clone();
    let task = tokio::spawn(async move {
        let app = &task_app;
        let (management, data_plane, health, (), (), (), (), ()) = tokio::join!(
            serve_listener(
                management_router,
                management,
                management_tls,
                handshake_timeout,
                closed.clone()
            ),
            serve_listener(
                data_plane_router,
                data_plane,
                data_plane_tls,
                handshake_timeout,
                closed.clone()
            ),
            async {
                match health_only {
                    Some(listener) => {
                        let closing = until_stopped(closed.clone());
                        health_router
                            .serve_with_incoming_shutdown(incoming(listener), closing)
                            .await
                    }
                    None => Ok(()),
                }
            },
            crate::metrics::serve(metrics, registry, closed.clone()),
            flush_usage(app, closed.clone()),
            drain(
                &reporter,
                app.config.shutdown.drain_grace,
                stopped.clone(),
                close
            ),
            follow_invalidations(app, closed.clone()),
            track_readiness(app, &reporter, stopped),
        );
        app.authorizer.flush_usage(app.store.as_ref()).await;
        management
            .and(data_plane)
            .and(health)
            .map_err(ServeError::from)
    });
    let tls = |listener| match config.tls.files(listener) {
        Ok(Some(files)) if files.client_ca_file.is_some() => "mutual TLS",
        Ok(Some(_)) => "TLS",
        _ => "plaintext",
    };
    // The address last: scripts read it up to the end of the line.
    info!(transport = tls(Listener::Management), addr = %management_addr, "management API listening");
    info!(transport = tls(Listener::DataPlane), addr = %data_plane_addr, "data plane listening");
    info!(addr = %metrics_addr, "metrics listening");
    if let Some(addr) = health_addr {
        info!(addr = %addr, "health listening");
    }
    Ok(RunningServer {
        management_addr,
        data_plane_addr,
        metrics_addr,
        health_addr,
        app,
        stop,
        task,
    })
}

/// A router answering HTTP requests, with keygate's tower layer in front of every call.
type LayeredRouter = Router<Stack<RpcLayer, Stack<HttpLayer, Identity>>>;

/// The data plane's router: the same, then admission.
type AdmittedRouter = Router<Stack<AdmissionLayer, Stack<RpcLayer, Stack<HttpLayer, Identity>>>>;

/// The management listener's services: KeyManager, health and reflection, each call
/// traced and counted; the JSON routes and their OpenAPI document beside them.
fn management_router(
    app: &Arc<App>,
    health: HealthServer<impl Health>,
) -> Result<LayeredRouter, StartError> {
    let (v1, v1alpha) = crate::reflection::management().map_err(reflection_failed)?;
    let calls = CallCounter::new(app.metrics.clone(), management_methods());
    let http = HttpApi::management().map_err(routes_failed)?;
    let router = tonic::transport::Server::builder()
        .accept_http1(true)
        .layer(HttpLayer::new(http))
        .layer(RpcLayer::counted(calls))
        .add_service(health)
        .add_service(v1)
        .add_service(v1alpha)
        .add_service(KeyManagerServer::new(KeyManagerService::new(
            app.management.clone(),
        )));
    Ok(router)
}

/// The data-plane listener's services: Check, Authorize, health and reflection, each call
/// traced and admitted within the configured limits; Authorize's JSON route and
/// forward-auth beside them, forward-auth admitted by the same limits.
fn data_plane_router(
    app: &Arc<App>,
    health: HealthServer<impl Health>,
) -> Result<AdmittedRouter, StartError> {
    let (v1, v1alpha) = crate::reflection::data_plane().map_err(reflection_failed)?;
    let plane = &app.data_plane;
    let admission = &app.config.admission;
    let admitted = AdmissionLayer::new(admission, app.metrics.clone());
    let forward_auth = ForwardAuth::new(plane.clone(), admitted.clone());
    let http = HttpApi::data_plane(forward_auth).map_err(routes_failed)?;
    let router = tonic::transport::Server::builder()
        .accept_http1(true)
        .max_concurrent_streams(admission.max_concurrent_streams)
        // Under overload Envoy gives up on calls still queued on the connection and resets
        // their streams; h2 drops the whole connection (every admitted call on it) once
        // more than 20 such resets wait to be accepted. Reset streams no longer count as
        // open, so a client can have several times `max_concurrent_streams` of them: allow
        // four times, still a bound on the memory they hold.
        .http2_max_pending_accept_reset_streams(Some(4 * admission.max_concurrent_streams as usize))
        .layer(HttpLayer::new(http))
        .layer(RpcLayer::spans())
        .layer(admitted)
        .add_service(health)
        .add_service(v1)
        .add_service(v1alpha)
        .add_service(AuthorizationServer::new(ExtAuthzService::new(
            plane.clone(),
        )))
        .add_service(AuthorizerServer::new(AuthorizerService::new(plane.clone())));
    Ok(router)
}

fn routes_failed(e: crate::http::transcode::RouteError) -> StartError {
    StartError::Runtime(format!("cannot build the JSON routes: {e}"))
}

fn reflection_failed(e: tonic_reflection::server::Error) -> StartError {
    StartError::Runtime(format!("cannot build the reflection service: {e}"))
}

/// Writes noted key uses every flush interval until the listeners close.
async fn flush_usage(app: &App, closed: watch::Receiver<bool>) {
    let mut ticks = tokio::time::interval(app.config.usage.flush_interval);
    ticks.tick().await;
    let closing = until_stopped(closed);
    tokio::pin!(closing);
    loop {
        tokio::select! {
            _ = ticks.tick() => app.authorizer.flush_usage(app.store.as_ref()).await,
            () = &mut closing => break,
        }
    }
}

/// On the stop signal: reports NOT_SERVING everywhere, keeps serving for `grace`, then
/// tells the listeners to close.
async fn drain(
    reporter: &HealthReporter,
    grace: Duration,
    stopped: watch::Receiver<bool>,
    close: watch::Sender<bool>,
) {
    until_stopped(stopped).await;
    set_health(reporter, ServingStatus::NotServing).await;
    reporter
        .set_service_status(READINESS_SERVICE, ServingStatus::NotServing)
        .await;
    if !grace.is_zero() {
        info!(grace = %humantime::format_duration(grace), "reporting NOT_SERVING; draining before the listeners close");
        tokio::time::sleep(grace).await;
    }
    let _ = close.send(true);
}

/// With the Redis store, applies other replicas' changes to this replica's cache, confirms
/// them and keeps this replica in the live set until the listeners close.
async fn follow_invalidations(app: &App, closed: watch::Receiver<bool>) {
    if let Some(replica) = app.invalidations.replica() {
        let url = app.config.redis.subscribe_url().to_owned();
        crate::invalidation::follow(url, app.authorizer.clone(), replica.clone(), closed).await;
    }
}

/// Probes the store every second and reports its reachability as [`READINESS_SERVICE`]
/// until the stop signal.
async fn track_readiness(app: &App, reporter: &HealthReporter, stopped: watch::Receiver<bool>) {
    let stopping = until_stopped(stopped);
    tokio::pin!(stopping);
    let mut ticks = tokio::time::interval(READINESS_PROBE_INTERVAL);
    let mut ready = None;
    loop {
        tokio::select! {
            _ = ticks.tick() => {
                let now_ready = app.store.ping().await.is_ok();
                if ready != Some(now_ready) {
                    let status = if now_ready { ServingStatus::Serving } else { ServingStatus::NotServing };
                    reporter.set_service_status(READINESS_SERVICE, status).await;
                    if ready.is_some() {
                        warn!(ready = now_ready, "store reachability changed; unseen keys {} decided", if now_ready { "are" } else { "cannot be" });
                    }
                    ready = Some(now_ready);
                }
            }
            () = &mut stopping => break,
        }
    }
}

async fn bind(addr: SocketAddr, field: &str) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| StartError::Runtime(format!("cannot listen on {addr} ({field}): {e}")))
}

/// The TLS configuration of `listener`, read from its files; `None` for plaintext.
fn server_tls(config: &Config, listener: Listener) -> Result<Option<Arc<ServerTls>>, StartError> {
    let files = config
        .tls
        .files(listener)
        .map_err(|(field, message)| ConfigError::Field { field, message })?;
    files
        .map(|files| {
            ServerTls::load(files).map(Arc::new).map_err(|e| {
                StartError::Config(ConfigError::Field {
                    field: format!("tls.{}", listener.name()),
                    message: e.to_string(),
                })
            })
        })
        .transpose()
}

/// Serves `router` on `listener` until `closed`: over TLS, each handshake within
/// `handshake_timeout`, when `tls` is set, in plaintext otherwise.
async fn serve_listener<L, ResBody>(
    router: Router<L>,
    listener: TcpListener,
    tls: Option<Arc<ServerTls>>,
    handshake_timeout: Duration,
    closed: watch::Receiver<bool>,
) -> Result<(), tonic::transport::Error>
where
    L: Layer<Routes>,
    L::Service: Service<http::Request<tonic::body::Body>, Response = http::Response<ResBody>>
        + Clone
        + Send
        + 'static,
    <L::Service as Service<http::Request<tonic::body::Body>>>::Future: Send,
    <L::Service as Service<http::Request<tonic::body::Body>>>::Error: Into<StdError> + Send,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<StdError>,
{
    let closing = until_stopped(closed);
    match tls {
        Some(tls) => {
            let accepted = crate::tls::accept(listener, tls, handshake_timeout);
            router.serve_with_incoming_shutdown(accepted, closing).await
        }
        None => {
            router
                .serve_with_incoming_shutdown(incoming(listener), closing)
                .await
        }
    }
}

/// Accepted plaintext connections, prepared for small answers ([`connection::plaintext`]).
fn incoming(
    listener: TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<Unvectored<TcpStream>>> {
    use tokio_stream::StreamExt;
    TcpIncoming::from(listener).map(|accepted| accepted.map(connection::plaintext))
}

fn local_addr(listener: &TcpListener) -> Result<SocketAddr, StartError> {
    listener
        .local_addr()
        .map_err(|e| StartError::Runtime(e.to_string()))
}

/// `keygate serve`: loads configuration and secrets, opens the embedded store, serves until
/// SIGINT or SIGTERM.
pub async fn serve(args: ServeArgs) -> ExitCode {
    let telemetry = Telemetry::init(args.log_format);
    let code = match serve_until_signal(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e}");
            e.exit_code()
        }
    };
    telemetry.shutdown().await;
    code
}

async fn serve_until_signal(args: ServeArgs) -> Result<(), StartError> {
    let config = args.load()?;
    // Only the embedded store keeps anything there: its file and, unless one is given, the
    // pepper. The Redis store needs a shared pepper from the environment.
    if config.store == StoreBackend::Embedded {
        create_data_dir(&config.data_dir)?;
    }
    let env: HashMap<String, String> = std::env::vars().collect();
    check_deployment(&config, &env)?;
    let (secrets, pepper_source) =
        Secrets::load(&env, &config.data_dir).map_err(|e| ConfigError::Field {
            field: "secrets".into(),
            message: e.to_string(),
        })?;
    if let PepperSource::Generated(path) = &pepper_source {
        warn!(path = %path.display(), "generated a new pepper; back it up with the data directory, imported keys depend on it");
    }
    // Listening for signals before any listener opens: whoever sees a listener up may stop
    // keygate at once, and gets a drained stop.
    let stop_signal = crate::shutdown::signal();
    let backends = Backends::open(&config).await?;
    let mut server = start(&config, secrets, backends, Arc::new(SystemClock)).await?;
    tokio::select! {
        result = server.wait() => {
            return result.map_err(|e| StartError::Runtime(e.to_string()));
        }
        () = stop_signal => {}
    }
    info!("shutting down");
    server
        .shutdown()
        .await
        .map_err(|e| StartError::Runtime(e.to_string()))?;
    info!("stopped");
    Ok(())
}

/// Marks the server as a whole (service `""`) and every gRPC service keygate serves as
/// `status` in the health service.
async fn set_health(reporter: &HealthReporter, status: ServingStatus) {
    for service in [
        "",
        <KeyManagerServer<KeyManagerService> as NamedService>::NAME,
        <AuthorizationServer<ExtAuthzService> as NamedService>::NAME,
        <AuthorizerServer<AuthorizerService> as NamedService>::NAME,
    ] {
        reporter.set_service_status(service, status).await;
    }
}

/// The full paths (`/keygate.v1.KeyManager/CreateKey`) of the management API's methods,
/// from keygate's own descriptors: the label values management calls are counted under.
fn management_methods() -> Vec<String> {
    use prost::Message;
    let service = <KeyManagerServer<KeyManagerService> as NamedService>::NAME;
    let descriptors = prost_types::FileDescriptorSet::decode(crate::proto::FILE_DESCRIPTOR_SET)
        .unwrap_or_default();
    descriptors
        .file
        .iter()
        .flat_map(|file| {
            file.service
                .iter()
                .filter(move |s| format!("{}.{}", file.package(), s.name()) == service)
        })
        .flat_map(|s| s.method.iter())
        .map(|method| format!("/{service}/{}", method.name()))
        .collect()
}
