//! The Sym API client (`outbound::sym_api`) against the fake Sym API, over real HTTP: what
//! the reconciler reads, refused tokens, faults and `Retry-After`, and odd run ids.

use std::time::{Duration, Instant};

use approver_test_support::fake_sym::{FakeSymApi, INITIAL_RUN_STATUS};
use secrecy::SecretString;
use serde_json::json;
use sym_circleci_approver::domain::run::RunStatus;
use sym_circleci_approver::domain::upstream::{Failure, UpstreamError};
use sym_circleci_approver::outbound::sym_api::SymApiClient;

const TOKEN: &str = "fake-sym-token-0123456789";

fn client(fake: &FakeSymApi, token: &str) -> SymApiClient {
    SymApiClient::new(
        fake.base_url().parse().unwrap(),
        &SecretString::from(token.to_owned()),
        Duration::from_secs(5),
        sym_circleci_approver::clock::Clock::system(),
    )
    .unwrap()
}

#[tokio::test]
async fn a_requested_run_is_read_back_and_follows_set_run() {
    let fake = FakeSymApi::start(TOKEN).await.unwrap();
    assert!(fake.base_url().ends_with("/api/v1"));
    // What the orb's `sym/request` sends.
    let response = reqwest::Client::new()
        .post(format!("{}/events/request", fake.base_url()))
        .bearer_auth(TOKEN)
        .json(&json!({
            "flow_srn": "acme:flow:deploy_gate:latest",
            "flow_inputs": {"workflow_id": "0f9e8d7c-aaaa-4bbb-8ccc-ddddeeeeffff"},
            "context": {}
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    let run_id = body["run_id"].as_str().unwrap().to_owned();
    assert!(body["event_id"].is_string());
    assert_eq!(
        fake.run_status(&run_id).as_deref(),
        Some(INITIAL_RUN_STATUS)
    );

    let sym = client(&fake, TOKEN);
    assert_eq!(
        sym.run_status(&run_id).await.unwrap(),
        RunStatus::Open(INITIAL_RUN_STATUS.into())
    );
    fake.set_run(&run_id, "approved");
    assert_eq!(sym.run_status(&run_id).await.unwrap(), RunStatus::Approved);
    fake.set_run(&run_id, "escalated");
    assert!(sym.run_status(&run_id).await.unwrap().is_approved());
    assert_eq!(fake.run_status_calls(&run_id).len(), 3);
    assert!(fake.calls().iter().all(|c| c.token_ok));
}

#[tokio::test]
async fn a_request_without_flow_srn_is_refused() {
    let fake = FakeSymApi::start(TOKEN).await.unwrap();
    let response = reqwest::Client::new()
        .post(format!("{}/events/request", fake.base_url()))
        .bearer_auth(TOKEN)
        .json(&json!({"flow_inputs": {}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
}

#[tokio::test]
async fn a_wrong_or_missing_token_gets_401_in_syms_error_shape() {
    let fake = FakeSymApi::start(TOKEN).await.unwrap();
    fake.set_run("r1", "approved");
    let wrong = client(&fake, "not-the-token");
    assert_eq!(
        wrong.run_status("r1").await.unwrap_err(),
        UpstreamError::sym(Failure::Unauthorized)
    );
    let response = reqwest::get(format!("{}/runs/r1", fake.base_url()))
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"], true);
    assert_eq!(body["status_code"], 401);
    assert!(body["message"].is_string() && body["code"].is_string());
    let calls = fake.calls();
    assert_eq!(calls.len(), 2);
    assert!(calls.iter().all(|c| !c.token_ok && c.status == 401));
}

#[tokio::test]
async fn an_unknown_run_is_404() {
    let fake = FakeSymApi::start(TOKEN).await.unwrap();
    let sym = client(&fake, TOKEN);
    assert_eq!(
        sym.run_status("nope").await.unwrap_err(),
        UpstreamError::sym(Failure::NotFound)
    );
}

#[tokio::test]
async fn faults_answer_the_next_requests_in_order() {
    let fake = FakeSymApi::start(TOKEN).await.unwrap();
    fake.set_run("r1", "approved");
    fake.push_fault(500, None);
    fake.push_fault(429, Some(3));
    fake.push_fault(503, Some(9));
    let sym = client(&fake, TOKEN);
    assert_eq!(
        sym.run_status("r1").await.unwrap_err(),
        UpstreamError::sym(Failure::Server {
            status: 500,
            retry_after: None
        })
    );
    assert_eq!(
        sym.run_status("r1").await.unwrap_err(),
        UpstreamError::sym(Failure::RateLimited {
            retry_after: Some(Duration::from_secs(3))
        })
    );
    let mut calls = Vec::new();
    let err = sym.run_recorded("r1", &mut calls).await.unwrap_err();
    assert_eq!(err.retry_after(), Some(Duration::from_secs(9)));
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].endpoint, "/runs/r1");
    assert_eq!(calls[0].status, Some(503));
    assert!(calls[0].error.is_some());
    assert_eq!(sym.run_status("r1").await.unwrap(), RunStatus::Approved);
    let statuses: Vec<u16> = fake.calls().iter().map(|c| c.status).collect();
    assert_eq!(statuses, [500, 429, 503, 200]);
}

#[tokio::test]
async fn run_ids_travel_percent_encoded() {
    let fake = FakeSymApi::start(TOKEN).await.unwrap();
    fake.set_run("a/b c", "denied");
    let sym = client(&fake, TOKEN);
    assert_eq!(sym.run_status("a/b c").await.unwrap(), RunStatus::Denied);
    let calls = fake.run_status_calls("a/b c");
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].path, "/api/v1/runs/a%2Fb%20c");
}

#[tokio::test]
async fn unknown_routes_are_404_and_recorded() {
    let fake = FakeSymApi::start(TOKEN).await.unwrap();
    let response = reqwest::get(format!("{}/nothing/here", fake.base_url()))
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    assert_eq!(fake.calls()[0].path, "/api/v1/nothing/here");
}

#[tokio::test]
async fn wait_for_calls_sees_new_calls_and_gives_up_at_the_timeout() {
    let fake = FakeSymApi::start(TOKEN).await.unwrap();
    fake.set_run("r1", "requested");
    let sym = client(&fake, TOKEN);
    let poller = tokio::spawn(async move {
        for _ in 0..3 {
            let _ = sym.run_status("r1").await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    assert!(
        fake.wait_for_calls(Duration::from_secs(5), |c| c.len() >= 3)
            .await
    );
    poller.await.unwrap();
    let started = Instant::now();
    assert!(
        !fake
            .wait_for_calls(Duration::from_millis(200), |c| c.len() >= 10)
            .await
    );
    assert!(started.elapsed() >= Duration::from_millis(200));
}
