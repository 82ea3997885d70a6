//! A small fake of the Sym API, over real HTTP, for the tests and `demo`, next to the fake
//! CircleCI.
//!
//! It serves the two calls of the Sym orb this service relies on:
//! - `POST /api/v1/events/request` (what `sym/request` sends): creates a run in status
//!   [`INITIAL_RUN_STATUS`] and answers with its `run_id` and an `event_id`, so a demo can
//!   write `sym/requests.json` as the orb does;
//! - `GET /api/v1/runs/{run_id}` (what `sym/validate` and the gate reconciler read):
//!   `{"id": …, "status": …}`, or 404 for an unknown run.
//!
//! Both check `Authorization: Bearer <token>` (401 in Sym's error shape otherwise). Tests set
//! run statuses ([`FakeSymApi::set_run`]), inject faults ([`FakeSymApi::push_fault`]: status and
//! `Retry-After`, first in first out), and read back every request ([`FakeSymApi::calls`],
//! [`FakeSymApi::wait_for_calls`]).

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;
use serde_json::json;
use tokio::sync::Notify;
use tokio_util::sync::DropGuard;
use uuid::Uuid;

/// The status a run created through `POST /events/request` starts in. `requested` is the
/// word Sym's own de-escalate error message uses for a run not decided yet.
pub const INITIAL_RUN_STATUS: &str = "requested";

/// A fault to answer the next request with (after the token check).
#[derive(Debug, Clone, Copy)]
struct Fault {
    status: u16,
    retry_after: Option<u64>,
}

/// One request the fake received.
#[derive(Debug, Clone, Serialize)]
pub struct RecordedCall {
    pub method: String,
    /// The request path as received (percent-encoded), e.g. `/api/v1/runs/<id>`.
    pub path: String,
    /// The status answered.
    pub status: u16,
    /// Whether the request carried the right bearer token.
    pub token_ok: bool,
    /// The run id of a `GET /api/v1/runs/{run_id}` (decoded).
    pub run_id: Option<String>,
    #[serde(skip)]
    pub at: Instant,
    pub unix_ms: i64,
}

impl RecordedCall {
    /// Is this a read of the status of `run_id`?
    pub fn is_run_status_of(&self, run_id: &str) -> bool {
        self.method == "GET" && self.run_id.as_deref() == Some(run_id)
    }
}

#[derive(Default)]
struct Inner {
    runs: HashMap<String, String>,
    /// A run's request fields, served in its answer when set (`set_run_fields`).
    fields: HashMap<String, serde_json::Value>,
    faults: VecDeque<Fault>,
    calls: Vec<RecordedCall>,
    /// The token requests must carry (it can be rotated: `set_token`).
    token: String,
}

struct Shared {
    inner: Mutex<Inner>,
    changed: Notify,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock would only come from a bug in this fake.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn record(
        &self,
        method: &Method,
        uri: &Uri,
        run_id: Option<String>,
        status: StatusCode,
        token_ok: bool,
    ) {
        self.lock().calls.push(RecordedCall {
            method: method.as_str().to_owned(),
            path: uri.path().to_owned(),
            status: status.as_u16(),
            token_ok,
            run_id,
            at: Instant::now(),
            unix_ms: crate::unix_ms(SystemTime::now()),
        });
        self.changed.notify_waiters();
    }
}

/// A running fake Sym API; stops when dropped.
pub struct FakeSymApi {
    addr: SocketAddr,
    shared: Arc<Shared>,
    _stop: DropGuard,
}

impl std::fmt::Debug for FakeSymApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeSymApi")
            .field("addr", &self.addr)
            .field("token", &"[REDACTED]")
            .finish()
    }
}

impl FakeSymApi {
    /// Starts on a random loopback port (127.0.0.1:0), accepting `Bearer <token>`.
    pub async fn start(token: &str) -> std::io::Result<Self> {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), token).await
    }

    /// Starts on `addr` (a demo may want a fixed port).
    pub async fn start_on(addr: SocketAddr, token: &str) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner {
                token: token.to_owned(),
                ..Inner::default()
            }),
            changed: Notify::new(),
        });
        let app = Router::new()
            .route("/api/v1/runs/{run_id}", get(run_status))
            .route("/api/v1/events/request", post(request_event))
            .fallback(not_found)
            .with_state(Arc::clone(&shared));
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let _stop = crate::serve_until_dropped(listener, app);
        Ok(Self {
            addr,
            shared,
            _stop,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The `SYM_API_URL` to give the service (ends in `/api/v1`, like Sym's).
    pub fn base_url(&self) -> String {
        format!("http://{}/api/v1", self.addr)
    }

    /// Creates the run or sets its status (`approved`, `escalated`, `denied`, `expired`, …).
    pub fn set_run(&self, run_id: &str, status: &str) {
        self.shared
            .lock()
            .runs
            .insert(run_id.to_owned(), status.to_owned());
        self.shared.changed.notify_waiters();
    }

    /// The run's current status, None for an unknown run.
    pub fn run_status(&self, run_id: &str) -> Option<String> {
        self.shared.lock().runs.get(run_id).cloned()
    }

    /// From now on, requests must carry this token (a rotation at Sym).
    pub fn set_token(&self, token: &str) {
        token.clone_into(&mut self.shared.lock().token);
    }

    /// Serves `fields` (the request's prompt fields) in the run's answer, as a `fields` object.
    pub fn set_run_fields(&self, run_id: &str, fields: serde_json::Value) {
        self.shared.lock().fields.insert(run_id.to_owned(), fields);
    }

    /// The next request with the right token is answered with `status` (and `Retry-After`
    /// seconds when given) instead of its normal answer; faults queue up, first in first out.
    pub fn push_fault(&self, status: u16, retry_after: Option<u64>) {
        self.shared.lock().faults.push_back(Fault {
            status,
            retry_after,
        });
    }

    /// Every request received so far, in order.
    pub fn calls(&self) -> Vec<RecordedCall> {
        self.shared.lock().calls.clone()
    }

    /// The reads of `run_id`'s status, in order.
    pub fn run_status_calls(&self, run_id: &str) -> Vec<RecordedCall> {
        self.calls()
            .into_iter()
            .filter(|c| c.is_run_status_of(run_id))
            .collect()
    }

    /// Waits until `check` holds for the recorded calls, or `timeout` passes; returns whether
    /// it held.
    pub async fn wait_for_calls(
        &self,
        timeout: Duration,
        check: impl Fn(&[RecordedCall]) -> bool,
    ) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let changed = self.shared.changed.notified();
            if check(&self.shared.lock().calls) {
                return true;
            }
            // A short poll as well as the notification, so no wake-up can be missed.
            let wake = deadline.min(tokio::time::Instant::now() + Duration::from_millis(50));
            if tokio::time::timeout_at(wake, changed).await.is_err()
                && tokio::time::Instant::now() >= deadline
            {
                return check(&self.shared.lock().calls);
            }
        }
    }
}

/// Sym's documented error shape.
fn sym_error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        Json(json!({
            "error": true,
            "message": message,
            "code": code,
            "status_code": status.as_u16(),
        })),
    )
        .into_response()
}

fn fault_response(fault: Fault) -> Response {
    let status = StatusCode::from_u16(fault.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = sym_error(status, "Fake:INJECTED_FAULT", "injected fault");
    if let Some(secs) = fault.retry_after {
        if let Ok(value) = secs.to_string().parse() {
            response.headers_mut().insert("retry-after", value);
        }
    }
    response
}

/// Token check, fault injection and recording around one request.
fn handle(
    shared: &Shared,
    headers: &HeaderMap,
    method: &Method,
    uri: &Uri,
    run_id: Option<String>,
    act: impl FnOnce(&mut Inner) -> Response,
) -> Response {
    let token_ok = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|v| v == shared.lock().token);
    let response = if token_ok {
        let fault = shared.lock().faults.pop_front();
        match fault {
            Some(fault) => fault_response(fault),
            None => act(&mut shared.lock()),
        }
    } else {
        sym_error(
            StatusCode::UNAUTHORIZED,
            "Authentication:INVALID_TOKEN",
            "A valid Sym token is required.",
        )
    };
    shared.record(method, uri, run_id, response.status(), token_ok);
    response
}

async fn run_status(
    State(shared): State<Arc<Shared>>,
    Path(run_id): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    handle(
        &shared,
        &headers,
        &method,
        &uri,
        Some(run_id.clone()),
        |inner| match inner.runs.get(&run_id) {
            Some(status) => {
                let mut run = json!({ "id": run_id, "status": status });
                if let Some(fields) = inner.fields.get(&run_id) {
                    run["fields"] = fields.clone();
                }
                Json(run).into_response()
            }
            None => sym_error(
                StatusCode::NOT_FOUND,
                "RunAPI:NOT_FOUND",
                "No run with this id.",
            ),
        },
    )
}

async fn request_event(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    handle(&shared, &headers, &method, &uri, None, |inner| {
        let request: serde_json::Value = match serde_json::from_slice(&body) {
            Ok(v @ serde_json::Value::Object(_)) => v,
            _ => {
                return sym_error(
                    StatusCode::BAD_REQUEST,
                    "RequestAPI:INVALID_BODY",
                    "The body must be a JSON object.",
                )
            }
        };
        if !request.get("flow_srn").is_some_and(|v| v.is_string()) {
            return sym_error(
                StatusCode::BAD_REQUEST,
                "RequestAPI:MISSING_FLOW_SRN",
                "flow_srn is required.",
            );
        }
        let run_id = Uuid::new_v4().to_string();
        inner
            .runs
            .insert(run_id.clone(), INITIAL_RUN_STATUS.to_owned());
        Json(json!({
            "event_id": Uuid::new_v4(),
            "run_id": run_id,
            "request_body": request,
        }))
        .into_response()
    })
}

/// Unknown routes: 404, recorded (the token is not checked and no fault is used).
async fn not_found(State(shared): State<Arc<Shared>>, method: Method, uri: Uri) -> Response {
    let response = sym_error(StatusCode::NOT_FOUND, "NOT_FOUND", "Not found.");
    shared.record(&method, &uri, None, response.status(), false);
    response
}
