//! The scrape endpoint: `GET /metrics` (OpenMetrics text) and
//! `GET /healthz`; 404 for any other path, 405 for any other method.
//! Each connection is a task of its own, so a slow scraper never holds up
//! the live loop, and lives at most `CONNECTION_TIMEOUT`: a client that
//! connects and stalls costs its own connection for that long, no more.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result};
use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{ALLOW, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

/// A scrape connection is closed after this long, whatever it is doing
/// (Prometheus opens a new one when it needs to).
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const TEXT: &str = "text/plain; charset=utf-8";

/// `--metrics ADDR`: `HOST:PORT`, or `:PORT` for every IPv4 address.
pub fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    let full = if s.starts_with(':') {
        format!("0.0.0.0{s}")
    } else {
        s.to_string()
    };
    full.parse().map_err(|_| {
        format!(
            "{s:?} is not an address to listen on (examples: :9464, 127.0.0.1:9464, [::1]:9464)"
        )
    })
}

/// Binds now, so that an address in use is an error at start-up.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot serve metrics on {addr}"))
}

/// Serves until the runtime ends; each connection for at most `timeout`.
pub async fn serve(listener: TcpListener, registry: Arc<Registry>, timeout: Duration) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                log::warn!("metrics: accept: {e}");
                continue;
            }
        };
        let registry = Arc::clone(&registry);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<_>| {
                let reply = respond(req.method(), req.uri().path(), &registry);
                async move { Ok::<_, Infallible>(reply) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            match tokio::time::timeout(timeout, connection).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => log::debug!("metrics: connection: {e}"),
                Err(_) => log::debug!("metrics: a connection outlived {timeout:?}: closed"),
            }
        });
    }
}

/// The reply to a request, by its method and path alone.
pub fn respond(method: &Method, path: &str, registry: &Registry) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, content_type: &str, body: String| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = status;
        if let Ok(v) = content_type.parse() {
            r.headers_mut().insert(CONTENT_TYPE, v);
        }
        r
    };
    if path != "/metrics" && path != "/healthz" {
        return reply(
            StatusCode::NOT_FOUND,
            TEXT,
            "not found: kat serves /metrics and /healthz\n".into(),
        );
    }
    if method != Method::GET && method != Method::HEAD {
        let mut r = reply(
            StatusCode::METHOD_NOT_ALLOWED,
            TEXT,
            format!("method {method} not allowed on {path}: use GET\n"),
        );
        r.headers_mut()
            .insert(ALLOW, hyper::header::HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    if path == "/healthz" {
        return reply(StatusCode::OK, TEXT, "ok\n".into());
    }
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, registry) {
        Ok(()) => reply(StatusCode::OK, OPENMETRICS, body),
        Err(e) => reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            TEXT,
            format!("cannot encode the metrics: {e}\n"),
        ),
    }
}
