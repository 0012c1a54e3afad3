//! What every request goes through around its handler, in one layer: its id, its deadline, its
//! metrics and debug log, and a panic turned into a 500.
//!
//! axum applies a router's layers to each route, and each tower-http layer (request id set and
//! propagated, trace, catch-panic, timeout) and each `from_fn` middleware added its own
//! wrapper to every request: a boxed future or a boxed response body, and a clone of the stack
//! below it: allocating and freeing was 13.5 % of the gateway's CPU under saturated check-ins.
//! This layer does the same work with one future that is not boxed and leaves the response
//! body as it is; with it (and LTO) the gateway's CPU per check-in fell by about a fifth
//! (BENCHMARKS.md, the thirteenth machine).
//!
//! [`StartGate`] answers 503 until start-up (migrations, bootstrap) has finished; the router
//! puts it on the API's routes only, so that health checks answer during start-up.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use futures::future::{Either, Ready, ready};
use tower::{Layer, Service};

use super::error::ApiError;

/// The request id header: kept when the caller sent one, else set to a new UUID; echoed in the
/// answer and recorded with the events the request causes.
pub(super) const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Longest request id taken from a caller; a longer one is replaced.
const MAX_REQUEST_ID_LEN: usize = 128;

/// The layer that wraps every route in an [`Envelope`].
#[derive(Debug, Clone, Copy)]
pub(super) struct EnvelopeLayer {
    /// Longest a request may take before it is answered 503.
    pub(super) timeout: Duration,
}

impl<S> Layer<S> for EnvelopeLayer {
    type Service = Envelope<S>;

    fn layer(&self, inner: S) -> Envelope<S> {
        Envelope {
            inner,
            timeout: self.timeout,
        }
    }
}

/// A route's service inside the envelope.
#[derive(Debug, Clone)]
pub(super) struct Envelope<S> {
    inner: S,
    timeout: Duration,
}

impl<S> Service<Request> for Envelope<S>
where
    S: Service<Request, Response = Response, Error = std::convert::Infallible>,
{
    type Response = Response;
    type Error = std::convert::Infallible;
    type Future = EnvelopeFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request) -> Self::Future {
        let started = Instant::now();
        let request_id = match request.headers().get(&REQUEST_ID) {
            Some(id) if !id.is_empty() && id.len() <= MAX_REQUEST_ID_LEN && id.to_str().is_ok() => {
                id.clone()
            }
            _ => {
                let id = HeaderValue::try_from(uuid::Uuid::new_v4().to_string())
                    .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
                request.headers_mut().insert(REQUEST_ID, id.clone());
                id
            }
        };
        let method = method_label(request.method());
        let route = request
            .extensions()
            .get::<MatchedPath>()
            .map_or("unmatched", |p| intern(p.as_str()));
        let span = tracing::debug_span!(
            "request",
            method = %request.method(),
            uri = %request.uri(),
            request_id = request_id.to_str().unwrap_or_default(),
        );
        let inner = {
            let _entered = span.enter();
            // A handler's future is built here; building it runs no handler code, but a
            // service below may still panic while called.
            std::panic::catch_unwind(AssertUnwindSafe(|| self.inner.call(request))).ok()
        };
        EnvelopeFuture {
            inner,
            deadline: tokio::time::sleep(self.timeout),
            timeout: self.timeout,
            span,
            request_id: Some(request_id),
            method,
            route,
            started,
        }
    }
}

pin_project_lite::pin_project! {
    /// The future of an [`Envelope`]d request.
    pub(super) struct EnvelopeFuture<F> {
        #[pin]
        inner: Option<F>,
        #[pin]
        deadline: tokio::time::Sleep,
        timeout: Duration,
        span: tracing::Span,
        request_id: Option<HeaderValue>,
        method: &'static str,
        route: &'static str,
        started: Instant,
    }
}

impl<F> Future for EnvelopeFuture<F>
where
    F: Future<Output = Result<Response, std::convert::Infallible>>,
{
    type Output = Result<Response, std::convert::Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let _entered = this.span.enter();
        let mut response = match this.inner.as_mut().as_pin_mut() {
            None => panicked(),
            Some(inner) => match std::panic::catch_unwind(AssertUnwindSafe(|| inner.poll(cx))) {
                Ok(Poll::Ready(Ok(response))) => response,
                Ok(Poll::Ready(Err(never))) => match never {},
                Ok(Poll::Pending) => {
                    if this.deadline.poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    // Dropping the handler's future cancels what it was waiting for; a
                    // check-in already queued is still recorded and its retry is a duplicate.
                    this.inner.set(None);
                    ApiError::Unavailable(format!(
                        "the request took longer than http.request_timeout ({})",
                        humantime::format_duration(*this.timeout)
                    ))
                    .into_response()
                }
                Err(_) => {
                    this.inner.set(None);
                    panicked()
                }
            },
        };
        if let Some(id) = this.request_id.take() {
            response.headers_mut().insert(REQUEST_ID, id);
        }
        let status = intern(response.status().as_str());
        let elapsed = this.started.elapsed();
        let (requests, duration) = request_metrics(this.method, this.route, status);
        requests.increment(1);
        duration.record(elapsed.as_secs_f64());
        tracing::debug!(status, latency_ms = elapsed.as_secs_f64() * 1e3, "answered");
        Poll::Ready(Ok(response))
    }
}

fn panicked() -> Response {
    ApiError::Internal("a request handler panicked".into()).into_response()
}

/// The layer that puts a [`StartGate`] in front of a route.
#[derive(Debug, Clone)]
pub(super) struct StartGateLayer {
    /// Set once start-up has finished.
    pub(super) started: Arc<AtomicBool>,
}

impl<S> Layer<S> for StartGateLayer {
    type Service = StartGate<S>;

    fn layer(&self, inner: S) -> StartGate<S> {
        StartGate {
            inner,
            started: self.started.clone(),
        }
    }
}

/// A route that answers 503 until start-up has finished.
#[derive(Debug, Clone)]
pub(super) struct StartGate<S> {
    inner: S,
    started: Arc<AtomicBool>,
}

impl<S> Service<Request> for StartGate<S>
where
    S: Service<Request, Response = Response, Error = std::convert::Infallible>,
{
    type Response = Response;
    type Error = std::convert::Infallible;
    type Future = Either<Ready<Result<Response, std::convert::Infallible>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        if self.started.load(Ordering::Acquire) {
            Either::Right(self.inner.call(request))
        } else {
            Either::Left(ready(Ok(ApiError::Unavailable(
                "the gateway is starting (waiting for the database)".into(),
            )
            .into_response())))
        }
    }
}

/// A method as a label; methods outside the standard set share one, so that clients cannot grow
/// the interned set.
fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// The request counter and duration histogram of one method, route and status. Each is
/// registered once and its handle kept, so that answering a request neither allocates its labels
/// nor looks them up in the registry (together 2 % of the gateway's CPU under saturated
/// check-ins). The set is bounded as the labels are ([`method_label`], [`intern`]).
fn request_metrics(
    method: &'static str,
    route: &'static str,
    status: &'static str,
) -> (metrics::Counter, metrics::Histogram) {
    use std::collections::HashMap;
    use std::sync::{OnceLock, RwLock};
    type Handles =
        HashMap<(&'static str, &'static str, &'static str), (metrics::Counter, metrics::Histogram)>;
    static HANDLES: OnceLock<RwLock<Handles>> = OnceLock::new();
    let handles = HANDLES.get_or_init(Default::default);
    let key = (method, route, status);
    if let Some(found) = handles.read().unwrap_or_else(|e| e.into_inner()).get(&key) {
        return found.clone();
    }
    handles
        .write()
        .unwrap_or_else(|e| e.into_inner())
        .entry(key)
        .or_insert_with(|| {
            (
                metrics::counter!("logbook_http_requests_total", "method" => method, "route" => route, "status" => status),
                metrics::histogram!("logbook_http_request_duration_seconds", "method" => method, "route" => route),
            )
        })
        .clone()
}

/// The `'static` copy of a label from a small, bounded set (matched routes, status codes), so
/// that no request allocates its metric labels.
fn intern(label: &str) -> &'static str {
    use std::collections::HashSet;
    use std::sync::{OnceLock, RwLock};
    static LABELS: OnceLock<RwLock<HashSet<&'static str>>> = OnceLock::new();
    let labels = LABELS.get_or_init(Default::default);
    if let Some(found) = labels.read().unwrap_or_else(|e| e.into_inner()).get(label) {
        return found;
    }
    let mut labels = labels.write().unwrap_or_else(|e| e.into_inner());
    if let Some(found) = labels.get(label) {
        return found;
    }
    let leaked: &'static str = Box::leak(label.to_owned().into_boxed_str());
    labels.insert(leaked);
    leaked
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::StatusCode;
    use tower::ServiceExt;

    async fn body_json(response: Response) -> serde_json::Value {
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .expect("body");
        serde_json::from_slice(&bytes).expect("JSON body")
    }

    fn envelope<F, Fut>(timeout: Duration, handler: F) -> Envelope<tower::util::ServiceFn<F>>
    where
        F: FnMut(Request) -> Fut,
        Fut: Future<Output = Result<Response, std::convert::Infallible>>,
    {
        EnvelopeLayer { timeout }.layer(tower::service_fn(handler))
    }

    fn echo_request_id(request: Request) -> Ready<Result<Response, std::convert::Infallible>> {
        let seen = request.headers().get(&REQUEST_ID).cloned();
        ready(Ok(seen
            .map(|id| id.to_str().unwrap_or_default().to_string())
            .unwrap_or_default()
            .into_response()))
    }

    #[tokio::test]
    async fn a_request_without_an_id_gets_one_that_the_handler_and_the_answer_share() {
        let response = envelope(Duration::from_secs(5), echo_request_id)
            .oneshot(Request::new(Body::empty()))
            .await
            .expect("infallible");
        let answered = response.headers()[&REQUEST_ID]
            .to_str()
            .expect("ascii")
            .to_string();
        uuid::Uuid::parse_str(&answered).expect("a UUID");
        let bytes = axum::body::to_bytes(response.into_body(), 1024)
            .await
            .expect("body");
        assert_eq!(bytes, answered.as_bytes());
    }

    #[tokio::test]
    async fn a_callers_request_id_is_kept_unless_it_is_unreasonable() {
        for (sent, kept) in [
            ("trace-7", true),
            ("", false),
            (&"x".repeat(MAX_REQUEST_ID_LEN + 1)[..], false),
        ] {
            let request = Request::builder()
                .header(&REQUEST_ID, sent)
                .body(Body::empty())
                .expect("request");
            let response = envelope(Duration::from_secs(5), echo_request_id)
                .oneshot(request)
                .await
                .expect("infallible");
            let answered = response.headers()[&REQUEST_ID].to_str().expect("ascii");
            assert_eq!(
                answered == sent,
                kept,
                "sent {sent:?}, answered {answered:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_handler_that_panics_is_answered_500_with_the_request_id() {
        let response = envelope(Duration::from_secs(5), |_request: Request| async move {
            if true {
                panic!("boom");
            }
            Ok("unreachable".into_response())
        })
        .oneshot(Request::new(Body::empty()))
        .await
        .expect("infallible");
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(response.headers().contains_key(&REQUEST_ID));
        assert_eq!(body_json(response).await["error"]["code"], "internal");
    }

    #[tokio::test]
    async fn a_handler_that_takes_too_long_is_answered_503_naming_the_setting() {
        let response = envelope(Duration::from_millis(50), |_request: Request| async move {
            tokio::time::sleep(Duration::from_secs(10)).await;
            Ok("late".into_response())
        })
        .oneshot(Request::new(Body::empty()))
        .await
        .expect("infallible");
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        let body = body_json(response).await;
        let message = body["error"]["message"].as_str().expect("message");
        assert!(message.contains("http.request_timeout"), "{message}");
    }

    #[tokio::test]
    async fn the_gate_answers_503_until_start_up_has_finished() {
        let started = Arc::new(AtomicBool::new(false));
        let gate = StartGateLayer {
            started: started.clone(),
        }
        .layer(tower::service_fn(|_request: Request| async {
            Ok::<_, std::convert::Infallible>("open".into_response())
        }));
        let response = gate
            .clone()
            .oneshot(Request::new(Body::empty()))
            .await
            .expect("infallible");
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        started.store(true, Ordering::Release);
        let response = gate
            .oneshot(Request::new(Body::empty()))
            .await
            .expect("infallible");
        assert_eq!(response.status(), StatusCode::OK);
    }
}
