//! Prometheus metrics over HTTP (`GET /metrics` on `metrics_listen`),
//! rendered from the status file the loop last wrote: a scrape never
//! touches the VRRP loop.

use std::{convert::Infallible, net::SocketAddr};

use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode, body::Bytes, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::status::{Status, metrics};

/// Longest a client may take to send its request.
const HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Serves `/metrics` of `instance` on `addr` until the thread stops.
pub(super) async fn serve(addr: SocketAddr, instance: String) {
    let listener = match TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            warn!(cause = %e, %addr, "metrics listener unavailable");
            return;
        }
    };
    info!(%addr, "metrics on /metrics");
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let instance = instance.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let instance = instance.clone();
                async move { Ok::<_, Infallible>(respond(&req, &instance)) }
            });
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .keep_alive(false);
            let _ = http.serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

fn respond<B>(req: &Request<B>, instance: &str) -> Response<Full<Bytes>> {
    let reply = |code: StatusCode, ctype: &'static str, body: String| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = code;
        r.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static(ctype),
        );
        r
    };
    if req.method() != Method::GET {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET only\n".into(),
        );
    }
    match req.uri().path() {
        "/metrics" | "/" => match Status::read(instance) {
            Ok(st) => reply(
                StatusCode::OK,
                "text/plain; version=0.0.4",
                metrics::render(&st),
            ),
            Err(e) => reply(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                format!("no status yet: {e}\n"),
            ),
        },
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "try /metrics\n".into()),
    }
}
