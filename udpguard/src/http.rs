//! The agent's HTTP endpoint: `GET /metrics` (the Prometheus exposition, read from the pinned
//! counters at each scrape; the classic text unless the `Accept` header asks for OpenMetrics)
//! and `GET /healthz`. Written on hyper directly rather than a web framework, for the limits an exporter facing a network needs and a framework's `serve`
//! does not expose: a header-read timeout and a deadline per connection (so half-open
//! connections cannot pile up), no keep-alive, and a cap on connections at once beyond which
//! new ones are closed at once.
use std::{convert::Infallible, sync::Arc, time::Duration};

use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode,
    body::{Bytes, Incoming},
    header,
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::{Semaphore, watch};

use crate::metrics;

/// How long a client may take to send its request's headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one connection may last, request and response together.
const CONNECTION_DEADLINE: Duration = Duration::from_secs(15);
/// Connections served at once; more are closed as they come.
const MAX_CONNECTIONS: usize = 64;

/// The server, running as a task until shutdown.
pub struct Server {
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    /// Serves on `listener` until `shutdown` turns true.
    pub fn start(listener: tokio::net::TcpListener, mut shutdown: watch::Receiver<bool>) -> Server {
        if let Ok(addr) = listener.local_addr() {
            tracing::info!("serving metrics on http://{addr}/metrics");
        }
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        let task = tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    _ = shutdown.wait_for(|stop| *stop) => return,
                    accepted = listener.accept() => accepted,
                };
                let Ok((stream, peer)) = accepted else {
                    continue;
                };
                // Full: this one is closed at once, so the backlog never fills with waiters.
                let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
                    continue;
                };
                tokio::spawn(async move {
                    let _slot = slot;
                    let connection = http1::Builder::new()
                        .timer(TokioTimer::new())
                        .header_read_timeout(HEADER_TIMEOUT)
                        .keep_alive(false)
                        .serve_connection(TokioIo::new(stream), service_fn(handle));
                    match tokio::time::timeout(CONNECTION_DEADLINE, connection).await {
                        Ok(Err(e)) => tracing::debug!("metrics client {peer}: {e}"),
                        Err(_) => tracing::debug!("metrics client {peer}: too slow, closed"),
                        Ok(Ok(())) => {}
                    }
                });
            }
        });
        Server { task }
    }

    /// Stops accepting; the connections being served finish within their deadline.
    pub async fn stop(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

/// One request.
async fn handle(request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let response = match (request.method(), request.uri().path()) {
        (&Method::GET, "/metrics") => {
            let accept = request
                .headers()
                .get(header::ACCEPT)
                .and_then(|v| v.to_str().ok());
            scrape(metrics::Format::negotiate(accept)).await
        }
        (&Method::GET, "/healthz") => text(StatusCode::OK, "text/plain", "ok\n".into()),
        (&Method::GET, _) => text(StatusCode::NOT_FOUND, "text/plain", "try /metrics\n".into()),
        _ => text(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET only\n".into(),
        ),
    };
    Ok(response)
}

/// Reads the pinned counters now (on a blocking thread: they are syscalls and a cgroup walk),
/// in the format the scraper asked for.
async fn scrape(format: metrics::Format) -> Response<Full<Bytes>> {
    let rendered = tokio::task::spawn_blocking(move || {
        let scrape = metrics::scrape();
        for problem in &scrape.unreadable {
            tracing::warn!("{problem}");
        }
        metrics::render(&scrape, format)
    })
    .await;
    match rendered {
        Ok(body) => text(StatusCode::OK, format.content_type(), body),
        Err(err) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain",
            format!("reading the counters failed: {err}\n"),
        ),
    }
}

fn text(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = content_type.parse() {
        response.headers_mut().insert(header::CONTENT_TYPE, value);
    }
    response
}
