//! The trust model: a release traces back to data Sym signed about that very workflow and
//! hold job, and a CI caller proves itself with CircleCI's OIDC token, scoped to its pipeline.
//! Each test is one attack (or its legitimate twin) against the running service.

use std::time::Duration;

use approver_test_support::fake_circleci::FakeJob;
use serde_json::{json, Value};
use sym_circleci_approver::domain::gate::{GateProblem, GateStatus};
use uuid::Uuid;

use crate::harness::*;
use crate::oidc_issuer::FakeIssuer;

const STAGING: &str = "deploy_gate_staging";

/// These tests' service: stepped, a reconciler reading its own fake Sym API, static CI tokens,
/// two hold jobs.
fn gated() -> AppBuilder {
    TestApp::builder()
        .stepped()
        .gate_token()
        .verdict_token()
        .admin_token()
        .sym_api()
        .flag(format!("--hold-job-names={HOLD},{STAGING}"))
}

fn run_id() -> String {
    format!("run-{}", Uuid::new_v4().simple())
}

// ---------------------------------------------------------------------------------------------
// Releases trace back to what Sym signed about this workflow and hold job
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_gate_naming_a_run_requested_for_another_workflow_is_never_released_nor_canceled() {
    let app = gated().flags(["--on-deny=cancel"]).spawn().await;
    let sym = app.sym();
    let (a, b) = (app.workflow("on_hold"), app.workflow("on_hold"));
    let run = run_id();
    sym.set_run(&run, "requested");

    // B registers A's run before Sym's request event for it arrives (the squat a holder of a
    // CI token could try); then the signed request event binds the run to A.
    let squat = app
        .register_gate(GATE, json!({"workflow_id": b, "sym_run_id": run}))
        .await;
    assert_eq!(squat.status, 201, "{}", squat.body);
    app.bind_run(&run, a, None).await;
    sym.set_run(&run, "approved");

    app.reconcile().await;
    app.step().await;
    let refused = app.gate(b).await;
    assert_eq!(
        (refused.status, refused.problem),
        (GateStatus::Closed, Some(GateProblem::RunBoundElsewhere)),
        "{refused:?}"
    );
    assert!(app.fake.calls_of("approve").is_empty());
    // A's own gate can still be registered (the squatter let go of the run) and is released.
    let own = app
        .register_gate(GATE, json!({"workflow_id": a, "sym_run_id": run}))
        .await;
    assert_eq!(own.status, 201, "{}", own.body);
    app.reconcile().await;
    app.step().await;
    assert_eq!(app.fake.job_status(a, HOLD).as_deref(), Some("success"));
    assert_eq!(app.fake.job_status(b, HOLD).as_deref(), Some("on_hold"));
    let verdict = app.verdict(b).await;
    assert_eq!(verdict.body["verdict"], "not_approved", "{}", verdict.body);
    assert!(app
        .metrics()
        .await
        .contains("sym_approver_gates_refused_total 1"));

    // Once the binding is known, registering a foreign run is refused at once, naming no run;
    // and a denial of that run cancels only the workflow it was requested for.
    let (c, d) = (app.workflow("on_hold"), app.workflow("on_hold"));
    let denied = run_id();
    app.bind_run(&denied, c, None).await;
    let foreign = app
        .register_gate(GATE, json!({"workflow_id": d, "sym_run_id": denied}))
        .await;
    assert_eq!(
        (foreign.status, foreign.body["error"].as_str()),
        (409, Some("gate_conflict"))
    );
    assert!(
        !foreign.body.to_string().contains(&denied),
        "{}",
        foreign.body
    );
    let own = app
        .register_gate(GATE, json!({"workflow_id": c, "sym_run_id": denied}))
        .await;
    assert_eq!(own.status, 201);
    sym.set_run(&denied, "denied");
    app.advance(Duration::from_secs(5));
    app.reconcile().await;
    app.step().await;
    let cancels = app.fake.calls_of("cancel");
    assert_eq!(cancels.len(), 1, "{cancels:?}");
    assert!(cancels[0].path.contains(&c.to_string()));
    assert_eq!(app.fake.job_status(d, HOLD).as_deref(), Some("on_hold"));
}

#[tokio::test]
async fn an_approved_run_that_nothing_binds_is_never_released_and_shows_as_unbound() {
    let app = gated().spawn().await;
    let sym = app.sym();
    let workflow = app.workflow("on_hold");
    let run = run_id();
    sym.set_run(&run, "approved");
    let registered = app
        .register_gate(GATE, json!({"workflow_id": workflow, "sym_run_id": run}))
        .await;
    assert_eq!(registered.status, 201);

    app.reconcile().await;
    app.step().await;
    assert!(
        app.fake.calls_of("approve").is_empty(),
        "never released unbound"
    );
    let gate = app.gate(workflow).await;
    assert_eq!(
        (gate.status, gate.problem, gate.bound),
        (GateStatus::Open, Some(GateProblem::Unbound), false),
        "{gate:?}"
    );
    assert!(app
        .metrics()
        .await
        .contains("sym_approver_gate_problems{problem=\"unbound\"} 1"));

    // The signed request event arrives late: the gate is read again at once and released.
    app.bind_run(&run, workflow, None).await;
    assert_eq!(app.reconcile().await, 1);
    app.step().await;
    assert_eq!(app.fake.successful_approvals(), 1);
    let gate = app.gate(workflow).await;
    assert_eq!((gate.status, gate.bound), (GateStatus::Released, true));
}

#[tokio::test]
async fn a_gate_bound_by_its_signed_request_event_is_released_when_the_approve_delivery_is_lost() {
    let app = gated().spawn().await;
    let sym = app.sym();
    let workflow = app.workflow("on_hold");
    let run = run_id();
    app.bind_run(&run, workflow, None).await;
    sym.set_run(&run, "approved");
    let registered = app
        .register_gate(GATE, json!({"workflow_id": workflow, "sym_run_id": run}))
        .await;
    assert_eq!(registered.status, 201);

    app.reconcile().await;
    app.step().await;

    assert_eq!(app.fake.successful_approvals(), 1);
    let verdict = app.verdict(workflow).await;
    assert_eq!(verdict.body["verdict"], "approved", "{}", verdict.body);
}

#[tokio::test]
async fn sym_s_own_answer_carrying_the_request_fields_binds_the_run() {
    let app = gated().spawn().await;
    let sym = app.sym();
    let (workflow, other) = (app.workflow("on_hold"), app.workflow("on_hold"));
    let (run, foreign) = (run_id(), run_id());
    for (r, w) in [(&run, workflow), (&foreign, other)] {
        sym.set_run(r, "approved");
        sym.set_run_fields(r, json!({"workflow_id": w, "hold_job_name": HOLD}));
    }
    app.register_gate(GATE, json!({"workflow_id": workflow, "sym_run_id": run}))
        .await;
    // A gate for a third workflow naming `foreign`: Sym says it is `other`'s.
    let third = app.workflow("on_hold");
    app.register_gate(GATE, json!({"workflow_id": third, "sym_run_id": foreign}))
        .await;

    app.reconcile().await;
    app.step().await;

    assert_eq!(
        app.fake.job_status(workflow, HOLD).as_deref(),
        Some("success")
    );
    assert_eq!(app.fake.job_status(third, HOLD).as_deref(), Some("on_hold"));
    assert_eq!(
        app.gate(third).await.problem,
        Some(GateProblem::RunBoundElsewhere)
    );
}

#[tokio::test]
async fn two_gates_in_one_workflow_both_work_and_a_409_names_no_run() {
    let app = gated().spawn().await;
    let sym = app.sym();
    let workflow = Uuid::new_v4();
    app.fake.add_workflow(
        workflow,
        PROJECT,
        vec![
            FakeJob::build("build", "success", 1),
            FakeJob::approval(STAGING, "on_hold"),
            FakeJob::build("deploy-staging", "blocked", 2),
            FakeJob::approval(HOLD, "on_hold"),
            FakeJob::build("deploy", "blocked", 3),
        ],
    );
    let (staging, production) = (run_id(), run_id());
    for (run, hold) in [(&staging, STAGING), (&production, HOLD)] {
        app.bind_run(run, workflow, Some(hold)).await;
        sym.set_run(run, "approved");
        let registered = app
            .register_gate(
                GATE,
                json!({"workflow_id": workflow, "sym_run_id": run, "hold_job_name": hold}),
            )
            .await;
        assert_eq!(registered.status, 201, "{}", registered.body);
    }
    let again = app
        .register_gate(
            GATE,
            json!({"workflow_id": workflow, "sym_run_id": run_id(), "hold_job_name": HOLD}),
        )
        .await;

    assert_eq!(app.reconcile().await, 2);
    app.step().await;
    app.advance(Duration::from_secs(5));
    app.step().await;

    assert_eq!(
        app.fake.job_status(workflow, STAGING).as_deref(),
        Some("success")
    );
    assert_eq!(
        app.fake.job_status(workflow, HOLD).as_deref(),
        Some("success")
    );
    assert_eq!(app.fake.successful_approvals(), 2);
    assert_eq!(again.status, 409, "{}", again.body);
    let text = again.body.to_string();
    assert!(
        !text.contains(&staging) && !text.contains(&production),
        "{text}"
    );
    // Each hold job has its own verdict; the default is the service's default hold job.
    for hold in [None, Some(STAGING)] {
        let verdict = app.verdict_with(Some(VERDICT), workflow, hold).await;
        assert_eq!(verdict.body["verdict"], "approved", "{}", verdict.body);
        assert_eq!(verdict.body["hold_job"], hold.unwrap_or(HOLD));
    }
}

#[tokio::test]
async fn a_verdict_is_about_one_hold_job_the_default_unless_asked() {
    // Sym approved the staging gate; the production hold job was clicked in the UI. The
    // production deploy's verdict (the default hold job) must not pass on staging's approval.
    let app = TestApp::builder()
        .verdict_token()
        .flag(format!("--hold-job-names={HOLD},{STAGING}"))
        .spawn()
        .await;
    let workflow = Uuid::new_v4();
    app.fake.add_workflow(
        workflow,
        PROJECT,
        vec![
            FakeJob::approval(STAGING, "on_hold"),
            FakeJob::approval(HOLD, "on_hold"),
        ],
    );
    let staging = run_event("approve", &run_id(), workflow, Some(STAGING));
    let answer_ = app.post_signed(staging, &new_webhook_id()).await;
    assert_eq!(answer_.status, 202, "{}", answer_.body);
    let delivery = answer_.delivery_id();
    app.finished_task(&delivery, Duration::from_secs(30)).await;
    app.fake.approve_in_ui(workflow, HOLD, Uuid::new_v4());

    let production = app.verdict(workflow).await;
    assert_eq!(production.body["hold_job"], HOLD);
    assert_eq!(
        production.body["verdict"], "not_approved",
        "{}",
        production.body
    );
}

// ---------------------------------------------------------------------------------------------
// CI callers prove who they are with CircleCI's OIDC tokens
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn registration_and_verdicts_refuse_every_bad_or_foreign_token_with_a_typed_401_or_403() {
    let issuer = FakeIssuer::start().await;
    let app = TestApp::builder().flags(issuer.flags()).spawn().await;
    let workflow = app.workflow("on_hold");
    let pipeline = app.fake.pipeline_of(workflow).unwrap();
    let good = issuer.claims(pipeline);
    let with = |change: &dyn Fn(&mut Value)| {
        let mut claims = good.clone();
        change(&mut claims);
        issuer.sign("key1", &claims)
    };
    let now = now_secs();
    let cases: Vec<(&str, Option<String>, u16)> = vec![
        ("no token", None, 401),
        ("not a JWT", Some("gate-token-7d41c0a9e2".into()), 401),
        (
            "another issuer",
            Some(with(&|c| {
                c["iss"] = "https://oidc.circleci.com/org/other".into()
            })),
            401,
        ),
        (
            "expired",
            Some(with(&|c| {
                c["iat"] = (now - 7200).into();
                c["exp"] = (now - 3600).into();
            })),
            401,
        ),
        (
            "wrong audience",
            Some(with(&|c| c["aud"] = "someone-else".into())),
            401,
        ),
        (
            "a key the issuer never published",
            Some(issuer.sign("key3", &good)),
            401,
        ),
        (
            "another pipeline's token",
            Some(issuer.token(Uuid::new_v4())),
            403,
        ),
        (
            "an SSH rerun",
            Some(with(&|c| c["oidc.circleci.com/ssh-rerun"] = true.into())),
            403,
        ),
    ];
    for (what, token, status) in &cases {
        let gate = match token {
            Some(t) => {
                app.register_gate(t, json!({"workflow_id": workflow, "sym_run_id": "run-1"}))
                    .await
            }
            None => {
                answer(
                    app.client
                        .post(app.url("/v1/gates"))
                        .json(&json!({"workflow_id": workflow, "sym_run_id": "run-1"}))
                        .send()
                        .await
                        .unwrap(),
                )
                .await
            }
        };
        let verdict = app.verdict_with(token.as_deref(), workflow, None).await;
        let error = if *status == 401 {
            "unauthorized"
        } else {
            "forbidden"
        };
        for (route, got) in [("registration", &gate), ("verdict", &verdict)] {
            assert_eq!(
                (got.status, got.body["error"].as_str()),
                (*status, Some(error)),
                "{what}: {route}: {}",
                got.body
            );
            assert!(got.body["detail"].is_string(), "{what}");
        }
    }
    assert!(app
        .store
        .gates_of(&workflow.to_string())
        .await
        .unwrap()
        .is_empty());

    // The right pipeline's token is accepted by both.
    let token = issuer.token(pipeline);
    let registered = app
        .register_gate(
            &token,
            json!({"workflow_id": workflow, "sym_run_id": "run-1"}),
        )
        .await;
    let verdict = app.verdict_with(Some(&token), workflow, None).await;
    assert_eq!(registered.status, 201, "{}", registered.body);
    assert_eq!(verdict.status, 200, "{}", verdict.body);
    assert_eq!(verdict.body["verdict"], "not_approved");
    let metrics = app.metrics().await;
    assert!(
        metrics.contains("sym_approver_ci_auth_refused_total{reason=\"wrong_pipeline\"} 2"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_workflow_of_a_project_that_is_not_allowed_is_refused_with_403() {
    let issuer = FakeIssuer::start().await;
    let app = TestApp::builder()
        .flags(issuer.flags())
        .flags(["--allowed-projects=gh/acme/web"])
        .spawn()
        .await;
    let workflow = app.workflow("on_hold");
    let token = issuer.token(app.fake.pipeline_of(workflow).unwrap());

    let registered = app
        .register_gate(
            &token,
            json!({"workflow_id": workflow, "sym_run_id": "run-1"}),
        )
        .await;

    assert_eq!(
        (registered.status, registered.body["error"].as_str()),
        (403, Some("forbidden")),
        "{}",
        registered.body
    );
    assert!(registered.body["detail"]
        .as_str()
        .unwrap()
        .contains("ALLOWED_PROJECTS"));
}

#[tokio::test]
async fn a_rotation_of_the_issuers_keys_is_followed_and_forged_key_ids_do_not_hammer_it() {
    let issuer = FakeIssuer::start().await;
    let app = TestApp::builder().flags(issuer.flags()).spawn().await;
    let workflow = app.workflow("on_hold");
    let pipeline = app.fake.pipeline_of(workflow).unwrap();
    let first = app
        .verdict_with(Some(&issuer.token(pipeline)), workflow, None)
        .await;
    assert_eq!(first.status, 200, "{}", first.body);

    // The issuer rotates: key2 only. A token signed with it makes the service fetch again.
    issuer.publish(&["key2"]);
    let rotated = issuer.sign("key2", &issuer.claims(pipeline));
    let after = app.verdict_with(Some(&rotated), workflow, None).await;
    assert_eq!(after.status, 200, "{}", after.body);
    let fetches = issuer.key_set_fetches();

    // Tokens naming keys the issuer never published: refused, and no fetch per token.
    for _ in 0..20 {
        let forged = issuer.sign("key3", &issuer.claims(pipeline));
        assert_eq!(
            app.verdict_with(Some(&forged), workflow, None).await.status,
            401
        );
    }
    assert_eq!(issuer.key_set_fetches(), fetches);
}

// ---------------------------------------------------------------------------------------------
// Verdicts do not spend the CircleCI budget approvals need
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_thousand_verdicts_for_a_hundred_unknown_workflows_cost_at_most_a_call_each_five_a_second(
) {
    let app = TestApp::builder().verdict_token().spawn().await;
    let workflows: Vec<Uuid> = (0..100).map(|_| Uuid::new_v4()).collect();

    // 250 at a time (one client's connections, under MAX_CONNECTIONS), a thousand in all.
    let mut statuses = Vec::new();
    for round in 0..4 {
        let asks = (0..250).map(|i| {
            let app = &app;
            let workflow = workflows[(round * 37 + i) % workflows.len()];
            async move { app.verdict(workflow).await.status }
        });
        statuses.extend(futures_join_all(asks).await);
    }

    assert!(
        statuses.iter().all(|s| matches!(s, 200 | 429)),
        "{statuses:?}"
    );
    assert!(statuses.contains(&200));
    let lookups = app.fake.calls_of("get_workflow");
    assert!(lookups.len() <= 100, "{} lookups", lookups.len());
    // Spread: one every 250 ms at the most, so no two-second window holds more than eight
    // (plus one for a wake-up or a request that ran late on a loaded machine: arrival times at
    // the fake carry that jitter; without the limit all of them would arrive at once).
    let mut at: Vec<i64> = lookups.iter().map(|c| c.unix_us).collect();
    at.sort_unstable();
    for (i, start) in at.iter().enumerate() {
        let within = at[i..]
            .iter()
            .take_while(|t| **t < start + 2_000_000)
            .count();
        assert!(within <= 9, "{within} lookups within two seconds");
    }
    // Asked again: answered from what was learnt, not from CircleCI.
    let before = app.fake.calls_of("get_workflow").len();
    for workflow in workflows.iter().take(5) {
        app.verdict(*workflow).await;
    }
    let learnt = app.fake.calls_of("get_workflow").len() - before;
    assert!(learnt <= 5);
}

/// Runs the futures concurrently (no extra crate: a JoinSet over borrowed futures is not
/// possible, so they are polled together in one task).
async fn futures_join_all<F: std::future::Future<Output = u16>>(
    futures: impl Iterator<Item = F>,
) -> Vec<u16> {
    let pinned: Vec<std::pin::Pin<Box<F>>> = futures.map(Box::pin).collect();
    let mut pending: Vec<Option<std::pin::Pin<Box<F>>>> = pinned.into_iter().map(Some).collect();
    let mut out = vec![0u16; pending.len()];
    std::future::poll_fn(|cx| {
        let mut done = true;
        for (i, slot) in pending.iter_mut().enumerate() {
            if let Some(f) = slot {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(status) => {
                        out[i] = status;
                        *slot = None;
                    }
                    std::task::Poll::Pending => done = false,
                }
            }
        }
        if done {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    out
}

#[tokio::test]
async fn the_verify_command_in_a_job_proves_itself_with_the_jobs_oidc_token() {
    let issuer = FakeIssuer::start().await;
    let app = TestApp::builder().flags(issuer.flags()).spawn().await;
    let workflow = app.workflow("on_hold");
    let delivery = app.approve(workflow).await;
    app.finished_task(&delivery, Duration::from_secs(30)).await;
    let verify = |token: String| {
        let env = Env::default()
            .set("APPROVER_URL", app.url(""))
            .set("CIRCLE_WORKFLOW_ID", workflow.to_string())
            .set("CIRCLE_OIDC_TOKEN_V2", token);
        async move { ServiceProcess::run_to_end(&["verify"], &env).await }
    };

    let (own, own_run) = verify(issuer.token(app.fake.pipeline_of(workflow).unwrap())).await;
    let (foreign, foreign_run) = verify(issuer.token(Uuid::new_v4())).await;

    assert_eq!(own.code(), Some(0), "{}", own_run.output());
    assert_eq!(foreign.code(), Some(3), "{}", foreign_run.output());
    assert!(
        foreign_run.output().contains("refused this job"),
        "{}",
        foreign_run.output()
    );
}
