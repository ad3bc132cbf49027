//! The API over HTTP/1.1: routes, authentication, bounded bodies and
//! connections, TLS (rustls, ring provider), and the long poll of
//! `GET /v1/events`. Each call runs its [`Service`] method on tokio's
//! blocking pool (the service waits on fdatasync).
//!
//! Bounds: `api.max_connections` connections (one more is closed at
//! once), a TLS handshake within 10 s, request headers within 10 s, a
//! body of at most 16 KiB, a long poll of at most 30 s.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path as UrlPath, RawQuery, State};
use axum::http::header::AUTHORIZATION;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::TlsAcceptor;

use crate::auth::{authenticate, Caller};
use crate::error::ApiError;
use crate::service::{Action, Service, MAX_EVENTS_PER_ANSWER};

/// The largest request body.
pub const MAX_BODY: usize = 16 * 1024;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest long poll.
pub const MAX_WAIT_MS: u64 = 30_000;

/// Why the API could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Plain HTTP asked for on an address that is not loopback.
    #[error("the API speaks plain HTTP only on a loopback address; {0} needs api.tls_cert and api.tls_key")]
    PlainNotLoopback(SocketAddr),
    /// The certificate or key could not be used.
    #[error("TLS: {0}")]
    Tls(String),
    /// Binding or the runtime failed.
    #[error("API listener: {0}")]
    Io(#[from] io::Error),
}

/// A running API.
#[derive(Debug)]
pub struct ApiServer {
    addr: SocketAddr,
    tls: bool,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl ApiServer {
    /// Where it listens.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its base URL (`https://` with TLS).
    pub fn base_url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// Stop accepting and wait for the server thread.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn tls_acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, StartError> {
    let e = |what: &str, p: &Path, x: &dyn std::fmt::Display| {
        StartError::Tls(format!("{what} {}: {x}", p.display()))
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|x| e("certificate", cert, &x))?
        .collect::<Result<_, _>>()
        .map_err(|x| e("certificate", cert, &x))?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|x| e("key", key, &x))?;
    // ring, not aws-lc-rs (which needs cmake and minutes of C on two
    // cores). rustls marks ring's provider deprecated only because it has
    // no post-quantum key exchange; its classical suites are current.
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|x| StartError::Tls(x.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|x| StartError::Tls(x.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Start the API on `listen` (HTTPS when `tls` names a certificate and
/// key) over `service`. Returns once bound.
pub fn start(
    service: Arc<Service>,
    listen: SocketAddr,
    tls: Option<&(PathBuf, PathBuf)>,
) -> Result<ApiServer, StartError> {
    let acceptor = match tls {
        Some((cert, key)) => Some(tls_acceptor(cert, key)?),
        None if listen.ip().is_loopback() => None,
        None => return Err(StartError::PlainNotLoopback(listen)),
    };
    let listener = std::net::TcpListener::bind(listen)?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let max_connections = service.api_config().max_connections;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(16)
        .thread_name("tessera-api")
        .enable_all()
        .build()?;
    let (stop, stopped) = tokio::sync::oneshot::channel();
    let watcher = Arc::clone(&service);
    let security = match service.vault_ref().audit_log() {
        Some(log) => Some(engine::audit::SecuritySink::spawn(Arc::clone(log))?),
        None => None,
    };
    let router = router(service);
    let tls = acceptor.is_some();
    let thread = std::thread::Builder::new()
        .name("tessera-api".into())
        .spawn(move || {
            runtime.block_on(async move {
                tokio::spawn(watch_locks(watcher));
                match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => {
                        accept_loop(l, acceptor, router, stopped, max_connections, security).await
                    }
                    Err(e) => eprintln!("tessera-api: listener: {e}"),
                }
            });
            runtime.shutdown_timeout(Duration::from_secs(1));
        })?;
    Ok(ApiServer {
        addr,
        tls,
        stop: Some(stop),
        thread: Some(thread),
    })
}

/// How often tokens locked by the pipeline are looked for.
const LOCK_WATCH: Duration = Duration::from_secs(1);

/// `TOKEN_LOCKED` notifications: the pipeline locks tokens on its own, so
/// the service looks for them.
async fn watch_locks(service: Svc) {
    let mut tick = tokio::time::interval(LOCK_WATCH);
    loop {
        tick.tick().await;
        let s = Arc::clone(&service);
        if let Ok(Err(e)) = tokio::task::spawn_blocking(move || s.notify_locks()).await {
            eprintln!("tessera-api: lock notifications: {e}");
        }
    }
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    acceptor: Option<TlsAcceptor>,
    router: Router,
    mut stopped: tokio::sync::oneshot::Receiver<()>,
    max_connections: usize,
    security: Option<engine::audit::SecuritySink>,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(max_connections));
    loop {
        let accepted = tokio::select! {
            _ = &mut stopped => return,
            a = listener.accept() => a,
        };
        let Ok((stream, peer)) = accepted else {
            // Out of descriptors, say: do not spin.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        // Over the bound: close at once rather than queue.
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            continue;
        };
        let (router, acceptor, security) = (router.clone(), acceptor.clone(), security.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let _ = stream.set_nodelay(true);
            match acceptor {
                Some(a) => match tokio::time::timeout(HANDSHAKE_TIMEOUT, a.accept(stream)).await {
                    Ok(Ok(tls)) => serve_connection(tls, router).await,
                    refused => {
                        let why = match refused {
                            Ok(Err(e)) => e.to_string(),
                            _ => "handshake timeout".to_owned(),
                        };
                        if let Some(sink) = security {
                            sink.send(
                                engine::audit::Event::new("api", "security.tls_refused")
                                    .subject(peer.to_string())
                                    .outcome(engine::audit::Outcome::Refused, "handshake")
                                    .detail("error", why),
                            );
                        }
                    }
                },
                None => serve_connection(stream, router).await,
            }
        });
    }
}

async fn serve_connection<S>(io: S, router: Router)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = TowerToHyperService::new(router);
    let _ = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(64 * 1024)
        .serve_connection(TokioIo::new(io), service)
        .await;
}

type Svc = Arc<Service>;

fn router(service: Svc) -> Router {
    Router::new()
        .route("/v1/tokens/eligibility", post(eligibility))
        .route("/v1/tokens", post(create_token))
        .route("/v1/tokens/{token_ref}", get(get_token))
        .route("/v1/tokens/{token_ref}/idv/otp", post(send_otp))
        .route("/v1/tokens/{token_ref}/idv/verify", post(verify_otp))
        .route("/v1/tokens/{token_ref}/provision", post(provision))
        .route("/v1/tokens/{token_ref}/{action}", post(token_action))
        .route("/v1/provisioning/{session_id}", post(answer))
        .route("/v1/cards/{action}", post(card_action))
        .route("/v1/events", get(events))
        .fallback(|| async { ApiError::not_found("route").into_response() })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(service)
}

/// Parse a body. The error says where, never what: a malformed body may
/// carry a PAN, and serde's messages quote values.
fn parse<T: DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        let what = match e.classify() {
            serde_json::error::Category::Syntax | serde_json::error::Category::Eof => "is not JSON",
            _ => "does not have the fields and types this call takes (see docs/api.yaml)",
        };
        ApiError::bad_request(format!(
            "the body {what} (line {}, column {})",
            e.line(),
            e.column()
        ))
    })
}

fn caller(svc: &Service, headers: &HeaderMap) -> Result<Caller, ApiError> {
    let h = headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok());
    authenticate(svc.api_config(), h)
}

/// A refused key: written (on the blocking pool: it waits for the disk)
/// when the per-second bound allows, else only counted, with no task
/// spawned for it.
async fn record_refused_key(svc: &Svc, action: &'static str) {
    let Some(not_recorded_before) = svc.auth_failure_recordable() else {
        return;
    };
    let s = Arc::clone(svc);
    let _ = tokio::task::spawn_blocking(move || s.audit_auth_failure(action, not_recorded_before))
        .await;
}

/// Authenticate, then run `f` on the blocking pool; record the call in
/// the audit trail (durable before the answer goes out); answer `ok` with
/// its JSON or the error. A refused key is a security event, recorded
/// with a bound on how many per second
/// ([`crate::audit::AUTH_FAILURE_AUDIT_PER_SEC`]).
async fn call<F>(
    svc: Svc,
    headers: HeaderMap,
    ok: StatusCode,
    action: &'static str,
    subject: String,
    f: F,
) -> Response
where
    F: FnOnce(&Service, &Caller) -> Result<Value, ApiError> + Send + 'static,
{
    let who = match caller(&svc, &headers) {
        Ok(c) => c,
        Err(e) => {
            record_refused_key(&svc, action).await;
            return e.into_response();
        }
    };
    let done = tokio::task::spawn_blocking(move || {
        let result = f(&svc, &who);
        svc.audit_call(&who, action, &subject, &result)?;
        result
    })
    .await;
    match done {
        Ok(Ok(v)) => (ok, Json(v)).into_response(),
        Ok(Err(e)) => e.into_response(),
        Err(_) => ApiError::internal("the call failed").into_response(),
    }
}

async fn eligibility(State(svc): State<Svc>, headers: HeaderMap, body: Bytes) -> Response {
    call(
        svc,
        headers,
        StatusCode::OK,
        "provisioning.eligibility",
        String::new(),
        move |s, c| s.eligibility(c, parse(&body)?),
    )
    .await
}

async fn create_token(State(svc): State<Svc>, headers: HeaderMap, body: Bytes) -> Response {
    call(
        svc,
        headers,
        StatusCode::CREATED,
        "provisioning.decision",
        String::new(),
        move |s, c| s.create_token(c, parse(&body)?),
    )
    .await
}

async fn get_token(
    State(svc): State<Svc>,
    headers: HeaderMap,
    UrlPath(token_ref): UrlPath<String>,
) -> Response {
    let subject = token_ref.clone();
    call(
        svc,
        headers,
        StatusCode::OK,
        "token.get",
        subject,
        move |s, c| s.get_token(c, &token_ref),
    )
    .await
}

async fn send_otp(
    State(svc): State<Svc>,
    headers: HeaderMap,
    UrlPath(token_ref): UrlPath<String>,
    body: Bytes,
) -> Response {
    let subject = token_ref.clone();
    call(
        svc,
        headers,
        StatusCode::ACCEPTED,
        "provisioning.idv_otp",
        subject,
        move |s, c| s.send_otp(c, &token_ref, parse(&body)?),
    )
    .await
}

async fn verify_otp(
    State(svc): State<Svc>,
    headers: HeaderMap,
    UrlPath(token_ref): UrlPath<String>,
    body: Bytes,
) -> Response {
    let subject = token_ref.clone();
    call(
        svc,
        headers,
        StatusCode::OK,
        "provisioning.idv_verify",
        subject,
        move |s, c| s.verify_otp(c, &token_ref, parse(&body)?),
    )
    .await
}

async fn provision(
    State(svc): State<Svc>,
    headers: HeaderMap,
    UrlPath(token_ref): UrlPath<String>,
) -> Response {
    let subject = token_ref.clone();
    call(
        svc,
        headers,
        StatusCode::CREATED,
        "provisioning.script_session",
        subject,
        move |s, c| s.provision(c, &token_ref),
    )
    .await
}

async fn token_action(
    State(svc): State<Svc>,
    headers: HeaderMap,
    UrlPath((token_ref, action)): UrlPath<(String, String)>,
) -> Response {
    let Some(action) = Action::from_name(&action) else {
        return ApiError::not_found("route").into_response();
    };
    let subject = token_ref.clone();
    call(
        svc,
        headers,
        StatusCode::OK,
        action.audit_action(),
        subject,
        move |s, c| s.token_lifecycle(c, &token_ref, action),
    )
    .await
}

async fn answer(
    State(svc): State<Svc>,
    headers: HeaderMap,
    UrlPath(session_id): UrlPath<String>,
    body: Bytes,
) -> Response {
    let subject = format!("session:{session_id}");
    call(
        svc,
        headers,
        StatusCode::OK,
        "provisioning.receipt",
        subject,
        move |s, c| s.answer(c, &session_id, parse(&body)?),
    )
    .await
}

async fn card_action(
    State(svc): State<Svc>,
    headers: HeaderMap,
    UrlPath(action): UrlPath<String>,
    body: Bytes,
) -> Response {
    let Some(action) = Action::from_name(&action) else {
        return ApiError::not_found("route").into_response();
    };
    // The subject (the masked PAN) is named by the service's own record.
    call(
        svc,
        headers,
        StatusCode::OK,
        action.audit_card_action(),
        String::new(),
        move |s, c| s.card_lifecycle(c, parse(&body)?, action),
    )
    .await
}

/// `after` and `wait_ms` from the query string.
fn events_query(q: Option<&str>) -> Result<(u64, u64), ApiError> {
    let (mut after, mut wait) = (0, 0);
    for pair in q.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let n: u64 = v
            .parse()
            .map_err(|_| ApiError::bad_request(format!("{k} must be a number")))?;
        match k {
            "after" => after = n,
            "wait_ms" => wait = n.min(MAX_WAIT_MS),
            _ => return Err(ApiError::bad_request(format!("unknown parameter {k}"))),
        }
    }
    Ok((after, wait))
}

async fn events(State(svc): State<Svc>, headers: HeaderMap, RawQuery(q): RawQuery) -> Response {
    let result = async {
        let who = match caller(&svc, &headers) {
            Ok(c) => c,
            Err(e) => {
                record_refused_key(&svc, "events").await;
                return Err(e);
            }
        };
        who.requestor()?;
        let (after, wait_ms) = events_query(q.as_deref())?;
        let deadline = tokio::time::Instant::now() + Duration::from_millis(wait_ms);
        loop {
            // Armed before looking, so a notification between the look and
            // the wait is not missed.
            let notified = svc.notified().notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let (s, w) = (Arc::clone(&svc), who.clone());
            let found = tokio::task::spawn_blocking(move || s.events(&w, after))
                .await
                .map_err(|_| ApiError::internal("the call failed"))??;
            if !found.is_empty() || tokio::time::Instant::now() >= deadline {
                let next = found.last().map_or(after, |e| e.seq);
                let events: Vec<Value> = found
                    .iter()
                    .map(|e| json!({ "seq": e.seq, "token_ref": e.token_ref, "event": e.event, "at": e.at }))
                    .collect();
                return Ok::<_, ApiError>(json!({
                    "events": events, "next": next, "limit": MAX_EVENTS_PER_ANSWER
                }));
            }
            let _ = tokio::time::timeout_at(deadline, notified).await;
        }
    }
    .await;
    match result {
        Ok(v) => Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}
