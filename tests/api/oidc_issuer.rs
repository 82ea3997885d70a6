//! A local OIDC issuer shaped like CircleCI's (`/org/<org-id>`): a discovery document, a JWK
//! set, and tokens signed with test-only keys (`tests/fixtures/oidc/keys.json`). Which keys it
//! publishes can change (a rotation); it counts the key-set fetches.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use base64::Engine as _;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use uuid::Uuid;

const KEYS: &str = include_str!("../fixtures/oidc/keys.json");

struct Issued {
    published: Vec<&'static str>,
    key_set_fetches: usize,
}

pub struct FakeIssuer {
    pub org_id: Uuid,
    addr: SocketAddr,
    state: Arc<Mutex<Issued>>,
    keys: Value,
    _stop: tokio_util::sync::DropGuard,
}

#[derive(Clone)]
struct Served {
    state: Arc<Mutex<Issued>>,
    keys: Value,
    issuer: String,
}

impl FakeIssuer {
    /// Starts on a random loopback port, publishing `key1`.
    pub async fn start() -> Self {
        let org_id = Uuid::new_v4();
        let keys: Value = serde_json::from_str(KEYS).unwrap();
        let state = Arc::new(Mutex::new(Issued {
            published: vec!["key1"],
            key_set_fetches: 0,
        }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let served = Served {
            state: Arc::clone(&state),
            keys: keys.clone(),
            issuer: format!("http://{addr}/org/{org_id}"),
        };
        let app = Router::new()
            .route(
                &format!("/org/{org_id}/.well-known/openid-configuration"),
                get(discovery),
            )
            .route(
                &format!("/org/{org_id}/.well-known/jwks-pub.json"),
                get(key_set),
            )
            .with_state(served);
        let stop = approver_test_support::serve_until_dropped(listener, app);
        Self {
            org_id,
            addr,
            state,
            keys,
            _stop: stop,
        }
    }

    /// `CIRCLECI_OIDC_ISSUER`.
    pub fn issuer(&self) -> String {
        format!("http://{}/org/{}", self.addr, self.org_id)
    }

    /// The service's flags for this issuer.
    pub fn flags(&self) -> [String; 2] {
        [
            format!("--circleci-oidc-org-id={}", self.org_id),
            format!("--circleci-oidc-issuer={}", self.issuer()),
        ]
    }

    /// From now on the key set holds these keys (`key1`, `key2`; `key3` is never published).
    pub fn publish(&self, keys: &[&'static str]) {
        self.state.lock().unwrap().published = keys.to_vec();
    }

    pub fn key_set_fetches(&self) -> usize {
        self.state.lock().unwrap().key_set_fetches
    }

    /// The claims CircleCI puts in a job's token, for a job of `pipeline` (workflow and
    /// project made up), valid for an hour from now.
    pub fn claims(&self, pipeline: Uuid) -> Value {
        let now = crate::harness::now_secs();
        let project = Uuid::new_v4();
        json!({
            "iss": self.issuer(),
            "aud": self.org_id.to_string(),
            "sub": format!("org/{}/project/{project}/user/{}", self.org_id, Uuid::new_v4()),
            "iat": now,
            "exp": now + 3600,
            "oidc.circleci.com/project-id": project.to_string(),
            "oidc.circleci.com/pipeline-id": pipeline.to_string(),
            "oidc.circleci.com/workflow-id": Uuid::new_v4().to_string(),
            "oidc.circleci.com/context-ids": [],
            "oidc.circleci.com/ssh-rerun": false,
        })
    }

    /// `claims` signed with `key` (RS256, its key id in the header).
    pub fn sign(&self, key: &str, claims: &Value) -> String {
        let fixture = &self.keys[key];
        let der = base64::engine::general_purpose::STANDARD
            .decode(fixture["private_der_b64"].as_str().unwrap())
            .unwrap();
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(fixture["kid"].as_str().unwrap().to_owned());
        encode(&header, claims, &EncodingKey::from_rsa_der(&der)).unwrap()
    }

    /// A good token of a job of `pipeline`, signed with `key1`.
    pub fn token(&self, pipeline: Uuid) -> String {
        self.sign("key1", &self.claims(pipeline))
    }
}

async fn discovery(State(served): State<Served>) -> Json<Value> {
    Json(json!({
        "issuer": served.issuer,
        "jwks_uri": format!("{}/.well-known/jwks-pub.json", served.issuer),
        "id_token_signing_alg_values_supported": ["RS256"],
    }))
}

async fn key_set(State(served): State<Served>) -> Json<Value> {
    let published = {
        let mut state = served.state.lock().unwrap();
        state.key_set_fetches += 1;
        state.published.clone()
    };
    let keys: Vec<Value> = published
        .iter()
        .map(|k| {
            let fixture = &served.keys[*k];
            json!({
                "kty": "RSA",
                "use": "sig",
                "alg": "RS256",
                "kid": fixture["kid"],
                "n": fixture["n"],
                "e": fixture["e"],
            })
        })
        .collect();
    Json(json!({ "keys": keys }))
}
