//! A tiny HTTP/1.1 client for tests: one request per connection, the whole body buffered,
//! and a timeout on everything so a hung server fails a test instead of hanging it.

use std::net::SocketAddr;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::header::{HOST, HeaderMap, HeaderValue};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// How long [`get`] and [`send`] wait for a whole response.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a request got no response.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The TCP connection could not be made.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// Where we tried to connect.
        addr: SocketAddr,
        /// The socket error.
        source: std::io::Error,
    },
    /// The HTTP exchange failed (connection reset, malformed response, ...).
    #[error("HTTP error talking to {addr}: {source}")]
    Http {
        /// The server's address.
        addr: SocketAddr,
        /// What hyper reported.
        source: hyper::Error,
    },
    /// No complete response within the timeout.
    #[error("no response from {addr} within {timeout:?}")]
    Timeout {
        /// The server's address.
        addr: SocketAddr,
        /// The timeout that passed.
        timeout: Duration,
    },
}

/// A complete response.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    /// The status code.
    pub status: StatusCode,
    /// The response headers.
    pub headers: HeaderMap,
    /// The whole body.
    pub body: Bytes,
}

impl HttpResponse {
    /// The body as text (lossily decoded).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The value of header `name` if present and valid text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// `GET path` from the server at `addr`, with [`DEFAULT_TIMEOUT`].
pub async fn get(addr: SocketAddr, path: &str) -> Result<HttpResponse, HttpError> {
    let request = Request::builder()
        .method(Method::GET)
        .uri(path)
        .body(Full::new(Bytes::new()))
        .expect("a GET with a path is a valid request");
    send(addr, request, DEFAULT_TIMEOUT).await
}

/// Sends `request` (its URI is the path and query; `Host` is set from `addr` if missing) to
/// the server at `addr` on a new connection and reads the whole response within `timeout`.
pub async fn send(
    addr: SocketAddr,
    mut request: Request<Full<Bytes>>,
    timeout: Duration,
) -> Result<HttpResponse, HttpError> {
    if !request.headers().contains_key(HOST) {
        let host = HeaderValue::from_str(&addr.to_string()).expect("an address is a valid Host");
        request.headers_mut().insert(HOST, host);
    }
    let exchange = async {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|source| HttpError::Connect { addr, source })?;
        let http = |source| HttpError::Http { addr, source };
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(http)?;
        let _conn_task = AbortOnDrop(tokio::spawn(conn));
        let response = sender.send_request(request).await.map_err(http)?;
        let (parts, body) = response.into_parts();
        let body = body.collect().await.map_err(http)?.to_bytes();
        Ok(HttpResponse {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .unwrap_or(Err(HttpError::Timeout { addr, timeout }))
}

/// Aborts the connection task when the exchange ends or is dropped by the timeout, so no
/// connection to a hung server lingers.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}
