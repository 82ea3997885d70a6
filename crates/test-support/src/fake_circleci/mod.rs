//! A small fake of the CircleCI API v2, over real HTTP, shared by `demo`, the container test
//! (`approver-dev fake-circleci`) and the integration tests.
//!
//! It serves the endpoints this service calls (`/me`, a workflow, its jobs, approve,
//! cancel), models reruns of a workflow, paginates job lists (two jobs a page by
//! default, so a hold job is usually on a later page), checks the `Circle-Token` header,
//! records every request, and can inject faults (status, `Retry-After`, delay, "do it but
//! answer an error", which models a lost response, a slow right answer, or a request carried
//! out late), each aimed at any request or one workflow's, and hold jobs that go on hold
//! later. An approve that reaches a hold job already approved is recorded as such.

use std::collections::{HashMap, VecDeque};
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use axum::routing::{get, post};
use axum::Router;
use serde::Serialize;
use tokio::sync::Notify;

mod routes;
use routes::{approve, cancel, list_jobs, me, workflow};
use tokio_util::sync::DropGuard;
use uuid::Uuid;

/// A job in a fake workflow.
#[derive(Debug, Clone)]
pub struct FakeJob {
    pub id: Uuid,
    pub name: String,
    pub job_type: String,
    pub status: String,
    pub approval_request_id: Option<Uuid>,
    pub job_number: i64,
    /// Until this instant the job reports `blocked`, then `on_hold` (models upstream jobs).
    pub on_hold_at: Option<Instant>,
    /// Approval jobs: who approved it (CircleCI's `approved_by`, a user id).
    pub approved_by: Option<Uuid>,
}

impl FakeJob {
    pub fn build(name: &str, status: &str, number: i64) -> Self {
        Self {
            id: Uuid::new_v4(),
            name: name.to_owned(),
            job_type: "build".to_owned(),
            status: status.to_owned(),
            approval_request_id: None,
            job_number: number,
            on_hold_at: None,
            approved_by: None,
        }
    }

    /// An approval job with its own `approval_request_id` (as CircleCI has).
    pub fn approval(name: &str, status: &str) -> Self {
        Self {
            id: Uuid::new_v4(),
            name: name.to_owned(),
            job_type: "approval".to_owned(),
            status: status.to_owned(),
            approval_request_id: Some(Uuid::new_v4()),
            job_number: 0,
            on_hold_at: None,
            approved_by: None,
        }
    }

    fn effective_status(&self) -> &str {
        match self.on_hold_at {
            Some(at) if self.status == "on_hold" && Instant::now() < at => "blocked",
            _ => &self.status,
        }
    }
}

#[derive(Debug, Clone)]
struct FakeWorkflow {
    project_slug: String,
    pipeline_id: Uuid,
    name: String,
    jobs: Vec<FakeJob>,
}

/// The user the fake's token belongs to (`GET /me`); approvals made through the API carry
/// it as `approved_by`.
pub const TOKEN_USER_ID: Uuid = Uuid::from_u128(0x5e4c_0b07_0000_4000_8000_0000_0000_0001);
/// The workflow name fake workflows have.
pub const WORKFLOW_NAME: &str = "build-and-deploy";

/// A fault to inject into the next matching request.
#[derive(Debug, Clone, Default)]
pub struct Fault {
    /// The status answered; 0 answers what the request would get without a fault (a slow but
    /// correct answer, with `delay`).
    pub status: u16,
    pub retry_after: Option<u64>,
    pub delay: Option<Duration>,
    /// Only for this operation (`list_jobs`, `approve`, `cancel`); any when None.
    pub operation: Option<&'static str>,
    /// Only for requests about this workflow; any when None.
    pub workflow: Option<Uuid>,
    /// Carry out the request, then answer with the fault (a lost response). A `delay` always
    /// comes after the request is carried out and recorded: only the answer is late.
    pub after_effect: bool,
    /// Carry the request out only this long after it arrived (CircleCI processing slowly).
    /// Approves are carried out even if the caller hangs up meanwhile.
    pub effect_delay: Option<Duration>,
    /// Recorded with the call this fault hit ([`RecordedCall::fault`]).
    pub label: Option<&'static str>,
}

impl Fault {
    pub fn status(status: u16) -> Self {
        Self {
            status,
            ..Self::default()
        }
    }

    pub fn on(mut self, operation: &'static str) -> Self {
        self.operation = Some(operation);
        self
    }

    pub fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }

    pub fn delayed(mut self, delay: Duration) -> Self {
        self.delay = Some(delay);
        self
    }

    pub fn after_effect(mut self) -> Self {
        self.after_effect = true;
        self
    }

    /// The answer the request would get anyway, `delay` late.
    pub fn slow(delay: Duration) -> Self {
        Self::status(0).delayed(delay)
    }

    pub fn for_workflow(mut self, workflow: Uuid) -> Self {
        self.workflow = Some(workflow);
        self
    }

    pub fn effect_after(mut self, delay: Duration) -> Self {
        self.effect_delay = Some(delay);
        self
    }

    pub fn labelled(mut self, label: &'static str) -> Self {
        self.label = Some(label);
        self
    }
}

/// One request the fake received.
#[derive(Debug, Clone, Serialize)]
pub struct RecordedCall {
    pub operation: &'static str,
    pub method: &'static str,
    pub path: String,
    pub query: Option<String>,
    pub token_ok: bool,
    pub status: u16,
    #[serde(skip)]
    pub at: Option<Instant>,
    pub unix_ms: i64,
    /// The same moment in microseconds (latency measurements need better than a millisecond).
    pub unix_us: i64,
    /// The label of the injected fault this call hit, if any.
    pub fault: Option<&'static str>,
    /// An approve that reached a hold job already approved (when it was carried out, or when
    /// it arrived if a fault kept it from being carried out): who had approved it (the nil id
    /// when the job does not say).
    pub found_approved_by: Option<Uuid>,
}

#[derive(Default)]
struct Inner {
    workflows: HashMap<Uuid, FakeWorkflow>,
    faults: VecDeque<Fault>,
    calls: Vec<RecordedCall>,
}

struct Shared {
    inner: Mutex<Inner>,
    changed: Notify,
    token: String,
    page_size: usize,
    /// The calls file, opened once (appending): each call is one `write` of one whole line,
    /// so a reader tailing it never sees half a line, and a call costs no open and close.
    calls_file: Option<Mutex<std::fs::File>>,
    /// Serve any workflow id: an unknown one is created on first sight as the standard
    /// workflow of this project, hold job on hold (load runs, where every event is new).
    any_workflow: Option<String>,
    /// Keep recorded calls in memory (off for long load runs).
    keep_calls: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock would only come from a bug in this fake.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn record(&self, call: RecordedCall) {
        if let Some(file) = &self.calls_file {
            if let Ok(mut line) = serde_json::to_vec(&call) {
                line.push(b'\n');
                let mut file = file.lock().unwrap_or_else(|p| p.into_inner());
                let _ = file.write_all(&line);
            }
        }
        if self.keep_calls {
            self.lock().calls.push(call);
        }
        self.changed.notify_waiters();
    }

    fn take_fault(&self, operation: &str, path: &str) -> Option<Fault> {
        let mut inner = self.lock();
        let index = inner.faults.iter().position(|f| {
            f.operation.is_none_or(|op| op == operation)
                && f.workflow
                    .is_none_or(|w| path.contains(&format!("/workflow/{w}")))
        })?;
        inner.faults.remove(index)
    }
}

/// How to start a fake.
#[derive(Debug, Clone)]
pub struct FakeOptions {
    pub listen: SocketAddr,
    pub token: String,
    /// Append one JSON line per request received to this file.
    pub calls_file: Option<PathBuf>,
    /// Jobs per page of a job list (2 by default, so the hold job is on a later page).
    pub page_size: usize,
    /// Serve any workflow id as a standard workflow of this project slug.
    pub any_workflow: Option<String>,
    /// Keep every recorded call in memory (tests read them back).
    pub keep_calls: bool,
}

impl FakeOptions {
    /// Loopback, a random port, two jobs a page, calls kept in memory.
    pub fn new(token: &str) -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            token: token.to_owned(),
            calls_file: None,
            page_size: 2,
            any_workflow: None,
            keep_calls: true,
        }
    }
}

/// A running fake CircleCI; stops when dropped.
pub struct FakeCircleCi {
    addr: SocketAddr,
    shared: Arc<Shared>,
    _stop: DropGuard,
}

impl FakeCircleCi {
    /// Starts on a random loopback port.
    pub async fn start(token: &str) -> anyhow::Result<Self> {
        Self::start_with(FakeOptions::new(token)).await
    }

    pub async fn start_with(options: FakeOptions) -> anyhow::Result<Self> {
        let addr = options.listen;
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner::default()),
            changed: Notify::new(),
            token: options.token,
            page_size: options.page_size.max(1),
            calls_file: match &options.calls_file {
                Some(path) => Some(Mutex::new(
                    std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(path)
                        .with_context(|| format!("calls file {}", path.display()))?,
                )),
                None => None,
            },
            any_workflow: options.any_workflow,
            keep_calls: options.keep_calls,
        });
        let app = Router::new()
            .route("/api/v2/me", get(me))
            .route("/api/v2/workflow/{id}", get(workflow))
            .route("/api/v2/workflow/{id}/job", get(list_jobs))
            .route("/api/v2/workflow/{id}/approve/{approval_id}", post(approve))
            .route("/api/v2/workflow/{id}/cancel", post(cancel))
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

    /// The `CIRCLECI_API_URL` to give the service.
    pub fn base_url(&self) -> String {
        format!("http://{}/api/v2", self.addr)
    }

    /// Adds a workflow with these jobs, in order.
    pub fn add_workflow(&self, workflow_id: Uuid, project_slug: &str, jobs: Vec<FakeJob>) {
        self.shared.lock().workflows.insert(
            workflow_id,
            FakeWorkflow {
                project_slug: project_slug.to_owned(),
                pipeline_id: Uuid::new_v4(),
                name: WORKFLOW_NAME.to_owned(),
                jobs,
            },
        );
    }

    /// The pipeline a workflow belongs to (what `GET /workflow/{id}` answers as `pipeline_id`).
    pub fn pipeline_of(&self, workflow_id: Uuid) -> Option<Uuid> {
        self.shared
            .lock()
            .workflows
            .get(&workflow_id)
            .map(|w| w.pipeline_id)
    }

    /// Someone clicks Approve in the CircleCI UI: the job is approved by `user`, not
    /// through the API.
    pub fn approve_in_ui(&self, workflow_id: Uuid, job_name: &str, user: Uuid) {
        let mut inner = self.shared.lock();
        if let Some(job) = inner
            .workflows
            .get_mut(&workflow_id)
            .and_then(|w| w.jobs.iter_mut().find(|j| j.name == job_name))
        {
            job.status = "success".to_owned();
            job.on_hold_at = None;
            job.approved_by = Some(user);
        }
    }

    /// "Rerun workflow from failed": a new workflow in the same pipeline with the same name;
    /// jobs that succeeded (an approved hold job included) carry over as they were, the rest
    /// run again. Returns the new workflow's id (None for an unknown workflow).
    pub fn rerun_from_failed(&self, workflow_id: Uuid) -> Option<Uuid> {
        self.rerun(workflow_id, true)
    }

    /// "Rerun workflow from start": a new workflow in the same pipeline with the same name;
    /// every job runs again, so the hold job waits for an approval again.
    pub fn rerun_from_start(&self, workflow_id: Uuid) -> Option<Uuid> {
        self.rerun(workflow_id, false)
    }

    fn rerun(&self, workflow_id: Uuid, from_failed: bool) -> Option<Uuid> {
        let mut inner = self.shared.lock();
        let mut copy = inner.workflows.get(&workflow_id)?.clone();
        for job in &mut copy.jobs {
            if from_failed && job.status == "success" {
                continue;
            }
            job.id = Uuid::new_v4();
            job.approved_by = None;
            job.on_hold_at = None;
            if job.job_type == "approval" {
                job.approval_request_id = Some(Uuid::new_v4());
                job.status = "on_hold".to_owned();
            } else {
                job.status = "running".to_owned();
            }
        }
        let new_id = Uuid::new_v4();
        inner.workflows.insert(new_id, copy);
        Some(new_id)
    }

    /// A typical workflow: three build jobs, then the hold job (so it is on page 2), then
    /// the deploy job. Returns the hold job.
    pub fn add_standard_workflow(
        &self,
        workflow_id: Uuid,
        project_slug: &str,
        hold_name: &str,
        hold_status: &str,
    ) -> FakeJob {
        let (hold, workflow) = standard_workflow(project_slug, hold_name);
        self.shared.lock().workflows.insert(workflow_id, workflow);
        self.set_job_status(workflow_id, hold_name, hold_status);
        FakeJob {
            status: hold_status.to_owned(),
            ..hold
        }
    }

    pub fn push_fault(&self, fault: Fault) {
        self.shared.lock().faults.push_back(fault);
    }

    /// Drops every fault not injected yet.
    pub fn clear_faults(&self) {
        self.shared.lock().faults.clear();
    }

    /// A job of a workflow as it stands (its `approved_by`, say).
    pub fn job(&self, workflow_id: Uuid, job_name: &str) -> Option<FakeJob> {
        let inner = self.shared.lock();
        let job = inner
            .workflows
            .get(&workflow_id)?
            .jobs
            .iter()
            .find(|j| j.name == job_name)?;
        Some(FakeJob {
            status: job.effective_status().to_owned(),
            ..job.clone()
        })
    }

    /// [`Self::approve_in_ui`], only if the job is on hold now; true if it was.
    pub fn approve_in_ui_if_on_hold(&self, workflow_id: Uuid, job_name: &str, user: Uuid) -> bool {
        let mut inner = self.shared.lock();
        let Some(job) = inner
            .workflows
            .get_mut(&workflow_id)
            .and_then(|w| w.jobs.iter_mut().find(|j| j.name == job_name))
        else {
            return false;
        };
        if job.effective_status() != "on_hold" {
            return false;
        }
        job.status = "success".to_owned();
        job.on_hold_at = None;
        job.approved_by = Some(user);
        true
    }

    /// Makes a job report `blocked` for `delay` more, then `on_hold`.
    pub fn hold_after(&self, workflow_id: Uuid, job_name: &str, delay: Duration) {
        let mut inner = self.shared.lock();
        if let Some(job) = inner
            .workflows
            .get_mut(&workflow_id)
            .and_then(|w| w.jobs.iter_mut().find(|j| j.name == job_name))
        {
            job.status = "on_hold".to_owned();
            job.on_hold_at = Some(Instant::now() + delay);
        }
    }

    pub fn set_job_status(&self, workflow_id: Uuid, job_name: &str, status: &str) {
        let mut inner = self.shared.lock();
        if let Some(job) = inner
            .workflows
            .get_mut(&workflow_id)
            .and_then(|w| w.jobs.iter_mut().find(|j| j.name == job_name))
        {
            job.status = status.to_owned();
            job.on_hold_at = None;
        }
    }

    pub fn job_status(&self, workflow_id: Uuid, job_name: &str) -> Option<String> {
        let inner = self.shared.lock();
        inner
            .workflows
            .get(&workflow_id)?
            .jobs
            .iter()
            .find(|j| j.name == job_name)
            .map(|j| j.effective_status().to_owned())
    }

    /// The calls about workflows, in order. The service's startup token check (`GET /me`)
    /// is left out: see [`Self::token_checks`].
    pub fn calls(&self) -> Vec<RecordedCall> {
        self.shared
            .lock()
            .calls
            .iter()
            .filter(|c| c.operation != "me")
            .cloned()
            .collect()
    }

    /// The `GET /me` token checks received.
    pub fn token_checks(&self) -> Vec<RecordedCall> {
        self.shared
            .lock()
            .calls
            .iter()
            .filter(|c| c.operation == "me")
            .cloned()
            .collect()
    }

    /// Calls of one operation (`list_jobs`, `approve`, `cancel`) that carried the right token.
    pub fn calls_of(&self, operation: &str) -> Vec<RecordedCall> {
        self.calls()
            .into_iter()
            .filter(|c| c.operation == operation)
            .collect()
    }

    /// Approve calls that CircleCI accepted (202).
    pub fn successful_approvals(&self) -> usize {
        self.calls_of("approve")
            .iter()
            .filter(|c| c.status == 202)
            .count()
    }

    /// Waits until `check` holds for the recorded calls, or `timeout` passes.
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
            // Job status may change with time alone (hold_after), so wake up now and then.
            let wake = deadline.min(tokio::time::Instant::now() + Duration::from_millis(250));
            if tokio::time::timeout_at(wake, changed).await.is_err()
                && tokio::time::Instant::now() >= deadline
            {
                return check(&self.shared.lock().calls);
            }
        }
    }
}

const DEFAULT_HOLD: &str = crate::DEFAULT_HOLD_JOB_NAME;

/// Three build jobs, then the hold job (on hold), then the deploy job.
fn standard_workflow(project_slug: &str, hold_name: &str) -> (FakeJob, FakeWorkflow) {
    let hold = FakeJob::approval(hold_name, "on_hold");
    let jobs = vec![
        FakeJob::build("checkout", "success", 1),
        FakeJob::build("test", "success", 2),
        FakeJob::build("sym/request", "success", 3),
        hold.clone(),
        FakeJob::build("deploy", "blocked", 4),
    ];
    (
        hold,
        FakeWorkflow {
            project_slug: project_slug.to_owned(),
            pipeline_id: Uuid::new_v4(),
            name: WORKFLOW_NAME.to_owned(),
            jobs,
        },
    )
}
