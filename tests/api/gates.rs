//! Gates: hold jobs registered from CircleCI with their Sym run, released by the reconciler
//! from Sym's run status when the hook's delivery never arrives.

use std::time::Duration;

use approver_test_support::fake_sym::FakeSymApi;
use serde_json::{json, Value};
use sym_circleci_approver::domain::gate::{ApprovalPath, GateProblem, GateStatus};
use uuid::Uuid;

use crate::harness::*;

/// These tests' service: stepped, with gates, the audit API and a reconciler reading its own
/// fake Sym API.
fn gated() -> AppBuilder {
    TestApp::builder()
        .stepped()
        .gate_token()
        .admin_token()
        .sym_api()
}

impl TestApp {
    /// A gate for a new workflow (hold job on hold) and its Sym run (in `run_status` at the
    /// fake Sym API), bound by the flow's signed `request` event and registered as CircleCI's
    /// step does.
    async fn gated_workflow(&self, run_status: &str) -> (Uuid, String) {
        let workflow = self.workflow("on_hold");
        let run = format!("run-{}", Uuid::new_v4().simple());
        self.bind_run(&run, workflow, None).await;
        self.sym().set_run(&run, run_status);
        let registered = self
            .register_gate(GATE, json!({"workflow_id": workflow, "sym_run_id": run}))
            .await;
        assert_eq!(registered.status, 201, "{}", registered.body);
        (workflow, run)
    }
}

#[tokio::test]
async fn gate_registration_needs_its_token_and_refuses_bad_input_with_typed_errors() {
    let app = gated().spawn().await;
    let plain = TestApp::builder().spawn().await;
    let workflow = Uuid::new_v4();
    let good = json!({"workflow_id": workflow, "sym_run_id": "run-1"});

    let disabled = plain.register_gate(GATE, good.clone()).await;
    let wrong = app
        .register_gate("wrong-token-wrong-token", good.clone())
        .await;
    let admin = app.register_gate(ADMIN, good.clone()).await;
    let created = app.register_gate(GATE, good.clone()).await;
    let again = app.register_gate(GATE, good.clone()).await;
    let other_run = app
        .register_gate(
            GATE,
            json!({"workflow_id": workflow, "sym_run_id": "run-2"}),
        )
        .await;
    let reads = app
        .client
        .get(app.url("/v1/approvals"))
        .bearer_auth(GATE)
        .send()
        .await
        .unwrap();

    assert_eq!(
        (disabled.status, disabled.body["error"].as_str()),
        (404, Some("not_found"))
    );
    assert_eq!(
        (wrong.status, wrong.body["error"].as_str()),
        (401, Some("unauthorized"))
    );
    assert_eq!(admin.status, 401, "the admin token cannot register gates");
    assert_eq!(created.status, 201, "{}", created.body);
    assert_eq!(created.body["hold_job_name"], HOLD);
    assert_eq!(again.status, 200, "{}", again.body);
    assert_eq!(again.body["status"], "already_registered");
    assert_eq!(
        (other_run.status, other_run.body["error"].as_str()),
        (409, Some("gate_conflict"))
    );
    assert_eq!(reads.status(), 401, "the gate token reads nothing");
    assert_eq!(app.gate(workflow).await.sym_run_id, "run-1");

    for (body, status, error) in [
        (json!("not an object"), 400, "invalid_request"),
        (json!({"sym_run_id": "run-1"}), 400, "invalid_request"),
        (
            json!({"workflow_id": "nope", "sym_run_id": "run-1"}),
            422,
            "invalid_workflow_id",
        ),
        (
            json!({"workflow_id": Uuid::new_v4(), "sym_run_id": ""}),
            400,
            "invalid_request",
        ),
        (
            json!({"workflow_id": Uuid::new_v4(), "sym_run_id": "r", "extra": 1}),
            400,
            "invalid_request",
        ),
        (
            json!({"workflow_id": Uuid::new_v4(), "sym_run_id": "r", "hold_job_name": "deploy"}),
            422,
            "hold_job_not_allowed",
        ),
    ] {
        let refused = app.register_gate(GATE, body.clone()).await;
        assert_eq!(refused.status, status, "{body}: {}", refused.body);
        assert_eq!(refused.body["error"], error, "{body}");
        assert!(refused.body["detail"].is_string());
    }
}

#[tokio::test]
async fn a_gate_whose_hook_never_arrives_is_approved_by_the_reconciler_exactly_once() {
    let app = gated().spawn().await;
    let sym = app.sym();
    let (workflow, run) = app.gated_workflow("requested").await;

    assert_eq!(app.reconcile().await, 1, "the first read: not decided yet");
    assert_eq!(app.step().await, 0, "nothing to approve yet");
    sym.set_run(&run, "approved");
    app.advance(Duration::from_secs(5));
    assert_eq!(app.reconcile().await, 1);
    assert_eq!(app.step().await, 1);

    assert_eq!(app.fake.successful_approvals(), 1);
    assert_eq!(
        app.fake.job_status(workflow, HOLD).as_deref(),
        Some("success")
    );
    let gate = app.gate(workflow).await;
    assert_eq!(
        (gate.status, gate.released_by),
        (GateStatus::Released, Some(ApprovalPath::Reconciler))
    );

    // Nothing more to read, and a late hook delivery is a no-op.
    app.advance(Duration::from_secs(600));
    assert_eq!(app.reconcile().await, 0);
    let late = app.send_event("approve", workflow).await;
    assert_eq!(
        (late.status, late.body["status"].as_str()),
        (200, Some("duplicate"))
    );
    app.advance(Duration::from_secs(60));
    app.step().await;
    assert_eq!(app.fake.successful_approvals(), 1);

    // The audit record tells the path, the metrics count it.
    let items = app.audit_of(workflow).await;
    // The late hook delivery is kept, attached to the reconciler's approval, which released
    // the hold job.
    let with =
        |status: &str| -> Vec<&Value> { items.iter().filter(|i| i["status"] == status).collect() };
    let (released, attached, bound) = (with("succeeded"), with("attached"), with("bound"));
    assert_eq!(
        (released.len(), attached.len(), bound.len()),
        (1, 1, 1),
        "{items:?}"
    );
    assert_eq!(bound[0]["event_type"], "request");
    assert_eq!(attached[0]["attached_to"], released[0]["id"]);
    let id = released[0]["id"].as_str().unwrap().to_owned();
    let detail = app.admin_get(&format!("/v1/approvals/{id}")).await;
    assert_eq!(detail.body["path"], "reconciler", "{}", detail.body);
    assert_eq!(detail.body["gate"]["released_by"], "reconciler");
    let metrics = app.metrics().await;
    assert!(
        metrics.contains("sym_approver_approvals_by_path_total{path=\"reconciler\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("sym_approver_gates_open 0"), "{metrics}");
}

#[tokio::test]
async fn a_hook_and_the_reconciler_racing_on_one_gate_give_one_approve() {
    let app = gated().spawn().await;
    for _ in 0..5 {
        let (workflow, _run) = app.gated_workflow("approved").await;
        let body = approve_event(&Uuid::new_v4().to_string(), &workflow.to_string());
        let webhook_id = new_webhook_id();

        let (hook, _) = tokio::join!(app.post_signed(body, &webhook_id), app.reconcile());
        assert!(
            matches!(hook.status, 200 | 202),
            "the hook is accepted either way: {}",
            hook.body
        );
        app.step().await;
        app.advance(Duration::from_secs(5));
        app.step().await;

        let approves = app
            .fake
            .calls_of("approve")
            .into_iter()
            .filter(|c| c.path.contains(&workflow.to_string()))
            .count();
        assert_eq!(approves, 1, "one approve for workflow {workflow}");
        assert_eq!(app.gate(workflow).await.status, GateStatus::Released);
    }
    let metrics = app.metrics().await;
    assert!(
        metrics.contains(
            "sym_approver_tasks_finished_total{action=\"approve\",outcome=\"already_approved\"} 0"
        ),
        "neither path's task found the hold job approved by someone else:\n{metrics}"
    );
}

#[tokio::test]
async fn denied_and_expired_runs_close_the_gate_without_approving_and_on_deny_cancel_cancels() {
    let app = gated().flags(["--on-deny=cancel"]).spawn().await;
    let (denied, _) = app.gated_workflow("denied").await;
    let (expired, _) = app.gated_workflow("expired").await;

    assert_eq!(app.reconcile().await, 2);
    app.step().await;

    assert_eq!(app.gate(denied).await.status, GateStatus::Closed);
    assert_eq!(app.gate(expired).await.status, GateStatus::Closed);
    assert!(app.fake.calls_of("approve").is_empty());
    // As with the hook's deny and expire events, ON_DENY=cancel cancels both workflows.
    let cancels: Vec<_> = app.fake.calls_of("cancel");
    assert_eq!(cancels.len(), 2);
    for workflow in [denied, expired] {
        assert!(cancels
            .iter()
            .any(|c| c.path.contains(&workflow.to_string())));
    }
}

#[tokio::test]
async fn a_sym_api_answering_500_then_429_with_retry_after_is_retried() {
    let app = gated().spawn().await;
    let sym = app.sym();
    let (workflow, _run) = app.gated_workflow("approved").await;
    sym.push_fault(500, None);
    sym.push_fault(429, Some(30));

    assert_eq!(app.reconcile().await, 1, "the 500");
    app.advance(Duration::from_secs(5));
    assert_eq!(app.reconcile().await, 1, "the 429 asking for 30 s");
    app.advance(Duration::from_secs(25));
    assert_eq!(app.reconcile().await, 0, "not before Retry-After");
    app.advance(Duration::from_secs(6));
    assert_eq!(app.reconcile().await, 1);
    app.step().await;

    assert_eq!(app.gate(workflow).await.status, GateStatus::Released);
    assert_eq!(app.fake.successful_approvals(), 1);
    let statuses: Vec<u16> = sym.calls().iter().map(|c| c.status).collect();
    assert_eq!(statuses, [500, 429, 200]);
}

#[tokio::test]
async fn a_refused_sym_token_pauses_the_reconciler_which_checks_again_with_backoff() {
    // The fake Sym API takes SYM_TOKEN; the service sends another.
    let app = gated().sym_api_token("a-wrong-token").spawn().await;
    let sym = app.sym();
    let (first, _) = app.gated_workflow("approved").await;
    let (second, _) = app.gated_workflow("approved").await;

    assert_eq!(app.reconcile().await, 1, "pauses at the first refusal");
    assert_eq!(app.reconcile().await, 0, "paused");
    assert!(app
        .metrics()
        .await
        .contains("sym_approver_reconciler_paused 1"));
    // Checked again after the pause (30 s), not after a restart; refused again: a longer one.
    app.advance(Duration::from_secs(31));
    assert_eq!(app.reconcile().await, 1);
    app.advance(Duration::from_secs(31));
    assert_eq!(app.reconcile().await, 0, "the second pause is a minute");
    assert_eq!(sym.calls().len(), 2);
    for gate in [app.gate(first).await, app.gate(second).await] {
        assert_eq!(gate.status, GateStatus::Open, "{gate:?}");
        assert!(gate.polling, "{gate:?}");
    }

    // The token works again (rotated at Sym): the next check resumes and releases both.
    sym.set_token("a-wrong-token");
    app.advance(Duration::from_secs(30));
    assert_eq!(app.reconcile().await, 2);
    app.step().await;
    assert_eq!(app.fake.successful_approvals(), 2);
    assert!(app
        .metrics()
        .await
        .contains("sym_approver_reconciler_paused 0"));
}

#[tokio::test]
async fn a_run_sym_forbids_marks_its_gate_and_polling_goes_on_for_the_others() {
    let app = gated().spawn().await;
    let sym = app.sym();
    let (first, _) = app.gated_workflow("approved").await;
    let (second, _) = app.gated_workflow("approved").await;
    sym.push_fault(403, None);

    assert_eq!(app.reconcile().await, 2, "the 403 stops nothing");
    app.step().await;
    let gates = [app.gate(first).await, app.gate(second).await];
    let forbidden: Vec<&Gate> = gates
        .iter()
        .filter(|g| g.status == GateStatus::Open)
        .collect();
    assert_eq!(forbidden.len(), 1, "{gates:?}");
    assert_eq!(forbidden[0].problem, Some(GateProblem::SymForbidden));
    assert!(forbidden[0].polling);
    assert!(app
        .metrics()
        .await
        .contains("sym_approver_gate_problems{problem=\"sym_forbidden\"} 1"));

    // Read again on its schedule: Sym answers now, and it is released too.
    app.advance(Duration::from_secs(5));
    assert_eq!(app.reconcile().await, 1);
    app.step().await;
    assert_eq!(app.fake.successful_approvals(), 2);
    for workflow in [first, second] {
        let gate = app.gate(workflow).await;
        assert_eq!((gate.status, gate.problem), (GateStatus::Released, None));
    }
}

#[tokio::test]
async fn without_a_sym_token_gates_are_recorded_and_the_hook_releases_them() {
    let app = TestApp::builder().gate_token().spawn().await;
    let workflow = app.workflow("on_hold");
    let registered = app
        .register_gate(
            GATE,
            json!({"workflow_id": workflow, "sym_run_id": "run-9"}),
        )
        .await;
    assert_eq!(registered.status, 201);

    let delivery = app.approve(workflow).await;
    app.finished_task(&delivery, Duration::from_secs(45)).await;

    let gate = app.gate(workflow).await;
    assert_eq!(
        (gate.status, gate.released_by),
        (GateStatus::Released, Some(ApprovalPath::Hook))
    );
}

/// The same recovery with the real binary, its reconciler running in the background.
#[tokio::test]
async fn the_binary_releases_a_gate_whose_hook_never_arrives_exactly_once() {
    let up = Upstreams::new().await;
    let sym = FakeSymApi::start(SYM_TOKEN).await.unwrap();
    let env = up
        .env()
        .set("GATE_TOKEN", GATE)
        .set("SYM_API_URL", sym.base_url())
        .set("SYM_API_TOKEN", SYM_TOKEN);
    let mut process = ServiceProcess::start("the binary", &env).await;
    let fake = &up.fake;

    let workflow = workflow_on_hold(fake);
    let run = format!("run-{}", Uuid::new_v4().simple());
    sym.set_run(&run, "approved");
    // The flow's signed request event binds the run to the workflow.
    let request = Delivery::signed(&up.secret, run_event("request", &run, workflow, None));
    let bound = process.endpoint().deliver(&request).await;
    assert_eq!(bound.status, 200, "{}", bound.body);
    let registered = process
        .endpoint()
        .post_json(
            "/v1/gates",
            GATE,
            &json!({"workflow_id": workflow, "sym_run_id": run}),
        )
        .await;
    assert_eq!(registered.status, 201, "{}", registered.body);

    assert!(
        fake.wait_for_calls(Duration::from_secs(30), |c| accepted(c, "approve") >= 1)
            .await,
        "{}",
        process.output()
    );
    assert_eq!(fake.successful_approvals(), 1);
    assert_eq!(fake.job_status(workflow, HOLD).as_deref(), Some("success"));
    assert_eq!(process.stop().await.code(), Some(0));
}
