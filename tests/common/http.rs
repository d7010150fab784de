//! A minimal HTTP/1.1 client over a plain TCP stream, one request per connection, and the
//! message framing it shares with the test upstream.

use std::net::{IpAddr, SocketAddr};

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpSocket;

/// A response as the client received it.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    /// The status code.
    pub status: u16,
    /// The headers in order, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// The body, decoded from chunks when it was chunked.
    pub body: String,
}

impl HttpResponse {
    /// The value of the first header called `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }
}

/// Sends `method path` with `headers` (plus `host` and `connection: close`) to `addr`, and
/// reads the whole response.
pub async fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> HttpResponse {
    http_request_from(None, addr, method, path, headers).await
}

/// [`http_request`] from the local address `source` when given (any of 127.0.0.0/8 works
/// on loopback), so a server sees a client of that address.
pub async fn http_request_from(
    source: Option<IpAddr>,
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> HttpResponse {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4(),
        SocketAddr::V6(_) => TcpSocket::new_v6(),
    }
    .unwrap();
    if let Some(source) = source {
        socket.bind(SocketAddr::new(source, 0)).unwrap();
    }
    let mut stream = socket.connect(addr).await.unwrap();
    let mut request = format!("{method} {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();

    let mut reader = BufReader::new(stream);
    let status_line = read_line(&mut reader).await;
    let status = (status_line.split(' ').nth(1))
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP status line: {status_line:?}"));
    let headers = read_headers(&mut reader).await;
    let no_body = method == "HEAD" || status == 204 || status == 304 || status < 200;
    let body = if no_body {
        Vec::new()
    } else {
        match read_body(&mut reader, &headers).await {
            Some(body) => body,
            None => {
                let mut body = Vec::new();
                reader.read_to_end(&mut body).await.unwrap();
                body
            }
        }
    };
    HttpResponse {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

/// The value of the first header in `headers` called `name` (any case).
pub fn find_header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    (headers.iter())
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// One line without its CRLF; empty at the end of the stream.
pub async fn read_line(reader: &mut (impl AsyncBufRead + Unpin)) -> String {
    let mut line = String::new();
    reader.read_line(&mut line).await.unwrap();
    line.trim_end_matches(['\r', '\n']).to_owned()
}

/// Header lines up to the blank line that ends them, names lower-cased.
pub async fn read_headers(reader: &mut (impl AsyncBufRead + Unpin)) -> Vec<(String, String)> {
    let mut headers = Vec::new();
    loop {
        let line = read_line(reader).await;
        if line.is_empty() {
            return headers;
        }
        let (name, value) =
            (line.split_once(':')).unwrap_or_else(|| panic!("not an HTTP header line: {line:?}"));
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
    }
}

/// The body framed by `transfer-encoding: chunked` or `content-length`; `None` when
/// `headers` have neither (a response then runs to the end of the stream, a request has none).
pub async fn read_body(
    reader: &mut (impl AsyncBufRead + Unpin),
    headers: &[(String, String)],
) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    if find_header(headers, "transfer-encoding").is_some_and(|te| te.contains("chunked")) {
        loop {
            let size_line = read_line(reader).await;
            let size = (size_line.split(';').next())
                .and_then(|hex| usize::from_str_radix(hex.trim(), 16).ok())
                .unwrap_or_else(|| panic!("not a chunk size: {size_line:?}"));
            if size == 0 {
                read_headers(reader).await; // trailers
                return Some(body);
            }
            let start = body.len();
            body.resize(start + size, 0);
            reader.read_exact(&mut body[start..]).await.unwrap();
            read_line(reader).await;
        }
    }
    let length: usize = find_header(headers, "content-length")?.parse().unwrap();
    body.resize(length, 0);
    reader.read_exact(&mut body).await.unwrap();
    Some(body)
}
