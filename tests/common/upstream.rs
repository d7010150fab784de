//! The services behind Envoy in the e2e tests, on loopback ports: an HTTP/1.1 server and a
//! gRPC health server, each recording the requests it received so that a test can assert
//! what got through and with which headers.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;

use super::http::{find_header, read_body, read_headers, read_line};

/// The body of every HTTP upstream answer.
pub const UPSTREAM_BODY: &str = "upstream ok";

/// A request as the HTTP upstream received it.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    /// The method, e.g. `GET`.
    pub method: String,
    /// The path with its query string.
    pub path: String,
    /// The headers in order, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// The body, empty when there was none.
    pub body: String,
}

impl RecordedRequest {
    /// The value of the first header called `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }
}

/// An HTTP/1.1 server that answers every request `200 upstream ok`, keeping connections
/// alive as clients ask, and records the requests.
pub struct HttpUpstream {
    /// Where it listens, on 127.0.0.1.
    pub addr: SocketAddr,
    requests: Arc<Mutex<Vec<RecordedRequest>>>,
    task: JoinHandle<()>,
}

impl HttpUpstream {
    /// Starts the server on a free loopback port, on the current tokio runtime.
    pub async fn start() -> HttpUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let kept = requests.clone();
        let task = tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                tokio::spawn(serve_connection(stream, kept.clone()));
            }
        });
        HttpUpstream {
            addr,
            requests,
            task,
        }
    }

    /// The requests received so far, oldest first.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for HttpUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Answers the requests on one connection until the client closes it or asks to.
async fn serve_connection(stream: TcpStream, requests: Arc<Mutex<Vec<RecordedRequest>>>) {
    let mut reader = BufReader::new(stream);
    loop {
        let request_line = read_line(&mut reader).await;
        let mut parts = request_line.split(' ');
        let (Some(method), Some(path)) = (parts.next(), parts.next()) else {
            return; // the client closed the connection
        };
        let headers = read_headers(&mut reader).await;
        let body = read_body(&mut reader, &headers).await.unwrap_or_default();
        let close = find_header(&headers, "connection").is_some_and(|c| c.contains("close"));
        requests.lock().unwrap().push(RecordedRequest {
            method: method.to_owned(),
            path: path.to_owned(),
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        });
        let response = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n{}\r\n{UPSTREAM_BODY}",
            UPSTREAM_BODY.len(),
            if close { "connection: close\r\n" } else { "" },
        );
        let written = reader.get_mut().write_all(response.as_bytes()).await;
        if written.is_err() || close {
            return;
        }
    }
}

/// A gRPC server with the standard health service (`grpc.health.v1.Health`, overall status
/// SERVING) that records each request's metadata.
pub struct GrpcUpstream {
    /// Where it listens, on 127.0.0.1.
    pub addr: SocketAddr,
    requests: Arc<Mutex<Vec<HashMap<String, String>>>>,
    task: JoinHandle<()>,
}

impl GrpcUpstream {
    /// Starts the server on a free loopback port, on the current tokio runtime.
    pub async fn start() -> GrpcUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let kept = requests.clone();
        let record = move |request: tonic::Request<()>| {
            let metadata = request.metadata().clone().into_headers();
            let headers = (metadata.iter())
                .map(|(name, value)| {
                    let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
                    (name.as_str().to_owned(), value)
                })
                .collect();
            kept.lock().unwrap().push(headers);
            Ok(request)
        };
        let (_reporter, health) = tonic_health::server::health_reporter();
        let server = tonic::transport::Server::builder()
            .layer(tonic::service::InterceptorLayer::new(record))
            .add_service(health)
            .serve_with_incoming(TcpListenerStream::new(listener));
        let task = tokio::spawn(async move { server.await.unwrap() });
        GrpcUpstream {
            addr,
            requests,
            task,
        }
    }

    /// The metadata of each request received so far (lower-cased name → value), oldest first.
    pub fn requests(&self) -> Vec<HashMap<String, String>> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for GrpcUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}
