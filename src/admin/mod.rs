//! The admin listener (default `127.0.0.1:9090`), apart from client traffic:
//! - `GET /healthz`: 200 while the process runs;
//! - `GET /readyz`: 200 once everything a request needs is loaded (provider metadata and
//!   JWKS when configured), else 503;
//! - `GET /metrics`: Prometheus text format;
//! - `POST /sessions/revoke?sub=SUB`: ends every session of that user issued until now
//!   (the subject's not-before time in the revocation set, kept for the session lifetime;
//!   with Redis, on every replica). State-changing, so it needs
//!   `Authorization: Bearer <the token in server.admin_token_file>` (401 without or with
//!   another; 403 when no token file is configured). 200 with a JSON summary.

pub mod exposition;
pub mod metrics;
mod process;
pub mod provider;

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::{HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::body::RespBody;
use crate::revocation::{Recorded, Revocations, Target};
pub use metrics::Metrics;

/// Is everything loaded that requests need? Checked by `/readyz`.
pub type ReadyCheck = Arc<dyn Fn() -> bool + Send + Sync>;

/// What the state-changing endpoints need, read at each request: the revocation store
/// in use and the running config's settings.
pub type Actions = Arc<dyn Fn() -> ActionSettings + Send + Sync>;

/// What `POST /sessions/revoke` needs.
pub struct ActionSettings {
    /// The process' revocation store (it outlives config generations).
    pub revocations: Revocations,
    /// `server.admin_token_file`.
    pub token_file: Option<PathBuf>,
    /// The provider's issuer (what sessions' `iss` is) and `session.lifetime`, when logins
    /// are configured.
    pub sessions: Option<(String, Duration)>,
}

fn text(status: StatusCode, ctype: &'static str, body: String) -> Response<RespBody> {
    let mut r = Response::new(RespBody::full(body));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(http::header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    r
}

fn json(status: StatusCode, body: serde_json::Value) -> Response<RespBody> {
    let mut r = text(status, "application/json", body.to_string());
    r.headers_mut().insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-store"),
    );
    r
}

fn error(status: StatusCode, error: &str, description: &str) -> Response<RespBody> {
    let mut r = json(
        status,
        serde_json::json!({"error": error, "error_description": description}),
    );
    if status == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(
            http::header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"portcullis-admin\""),
        );
    }
    r
}

async fn handle(
    req: &Request<Incoming>,
    metrics: &Metrics,
    ready: &ReadyCheck,
    actions: &Actions,
) -> Response<RespBody> {
    match (req.method(), req.uri().path()) {
        (_, "/healthz") => text(StatusCode::OK, "text/plain", "ok\n".into()),
        (_, "/readyz") if ready() => text(StatusCode::OK, "text/plain", "ready\n".into()),
        (_, "/readyz") => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "not ready\n".into(),
        ),
        (_, "/metrics") => text(
            StatusCode::OK,
            "text/plain; version=0.0.4",
            metrics.render(),
        ),
        (&Method::POST, "/sessions/revoke") => revoke_subject(req, actions).await,
        (_, "/sessions/revoke") => {
            let mut r = error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "use POST",
            );
            r.headers_mut()
                .insert(http::header::ALLOW, HeaderValue::from_static("POST"));
            r
        }
        _ => text(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    }
}

/// Is the request's bearer token the one in `file`? (Read at each request: a rotated
/// token needs no reload. An empty or unreadable file lets nobody in.)
async fn authorized(req: &Request<Incoming>, file: &Path) -> bool {
    let Ok(want) = tokio::fs::read_to_string(file).await else {
        tracing::warn!(file = %file.display(), "server.admin_token_file cannot be read; refusing admin actions");
        return false;
    };
    let want = want.trim();
    let mut values = req.headers().get_all(http::header::AUTHORIZATION).iter();
    let (Some(v), None) = (values.next(), values.next()) else {
        return false;
    };
    let got = v
        .to_str()
        .ok()
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim());
    match got {
        Some(got) if !want.is_empty() => {
            aws_lc_rs::constant_time::verify_slices_are_equal(got.as_bytes(), want.as_bytes())
                .is_ok()
        }
        _ => false,
    }
}

/// `POST /sessions/revoke?sub=SUB`.
async fn revoke_subject(req: &Request<Incoming>, actions: &Actions) -> Response<RespBody> {
    let settings = actions();
    let Some(file) = settings.token_file else {
        return error(
            StatusCode::FORBIDDEN,
            "forbidden",
            "state-changing admin endpoints need server.admin_token_file",
        );
    };
    if !authorized(req, &file).await {
        tracing::warn!("admin: POST /sessions/revoke without the admin token; refused");
        return error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "Authorization: Bearer <admin token> required",
        );
    }
    let query = req.uri().query().unwrap_or("");
    let subs: Vec<String> = url::form_urlencoded::parse(query.as_bytes())
        .filter(|(k, _)| k == "sub")
        .map(|(_, v)| v.into_owned())
        .collect();
    let sub = match subs.as_slice() {
        [s] if !s.is_empty() => s.clone(),
        [] | [_] => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "sub is required",
            )
        }
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "sub is given more than once",
            )
        }
    };
    let Some((issuer, lifetime)) = settings.sessions else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "no login is configured: there are no sessions to revoke",
        );
    };
    let now = SystemTime::now();
    match settings
        .revocations
        .revoke(
            Target::Subject {
                iss: &issuer,
                sub: &sub,
            },
            now + lifetime,
            now,
        )
        .await
    {
        Ok(recorded) => {
            tracing::info!(user = %sub, "admin: sessions of the user revoked");
            let not_before = now
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            json(
                StatusCode::OK,
                serde_json::json!({
                    "revoked": "sub",
                    "iss": issuer,
                    "sub": sub,
                    "not_before": not_before,
                    "store_reset": recorded == Recorded::Raised,
                }),
            )
        }
        Err(e) => {
            tracing::warn!(error = %e, "admin: revocation store unavailable");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                "the revocation store is unavailable",
            )
        }
    }
}

/// Serves the admin endpoints until `shutdown` changes.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    ready: ReadyCheck,
    actions: Actions,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let (stream, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let metrics = metrics.clone();
        let ready = ready.clone();
        let actions = actions.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let (metrics, ready, actions) = (metrics.clone(), ready.clone(), actions.clone());
                async move { Ok::<_, Infallible>(handle(&req, &metrics, &ready, &actions).await) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .http1_only()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
