//! The signing keys of CircleCI's OIDC issuer for an organization
//! (`https://oidc.circleci.com/org/<org-id>`), fetched the OpenID Connect way: the discovery
//! document (`{issuer}/.well-known/openid-configuration`) names `jwks_uri`, which serves the
//! keys as a JWK set.
//!
//! Keys are cached. They are fetched again when the cache is an hour old, and when a token
//! names a key id the cache does not hold (the issuer rotated its keys), but such fetches at
//! most once per [`MIN_REFETCH`], so that forged tokens with made-up key ids cannot make this
//! service hammer the issuer. A failed fetch keeps the keys already held.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey};
use reqwest::Url;
use serde::Deserialize;
use tokio::sync::{Mutex, RwLock};
use tokio::time::Instant;

/// Keys older than this are fetched again before use.
const MAX_AGE: Duration = Duration::from_secs(3600);
/// Fewest seconds between two fetches prompted by an unknown key id.
pub const MIN_REFETCH: Duration = Duration::from_secs(10);
/// Largest discovery document or key set read.
const MAX_BODY_BYTES: usize = 256 * 1024;

/// A key a token may be signed with.
#[derive(Clone)]
pub struct SigningKey {
    pub key: DecodingKey,
    pub algorithm: Algorithm,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

/// Why no key could be had.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    /// The issuer publishes no key with this id (a forged or foreign token).
    #[error("the issuer publishes no key {0:?}")]
    UnknownKey(String),
    /// The issuer could not be read and no keys are held: no token can be checked now.
    #[error("the OIDC issuer's keys cannot be fetched: {0}")]
    Unavailable(String),
}

#[derive(Default)]
struct Cache {
    keys: HashMap<String, SigningKey>,
    fetched_at: Option<Instant>,
    last_attempt: Option<Instant>,
    /// The last fetch an unknown key id prompted.
    last_unknown_key_fetch: Option<Instant>,
    /// Counts fetches, so callers that waited for one in flight do not fetch again.
    generation: u64,
}

/// The issuer's keys, shared by every request. Cheap to clone.
#[derive(Clone)]
pub struct OidcKeys {
    http: reqwest::Client,
    issuer: Url,
    allow_insecure_http: bool,
    cache: Arc<RwLock<Cache>>,
    /// One fetch at a time.
    fetching: Arc<Mutex<()>>,
}

impl std::fmt::Debug for OidcKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OidcKeys")
            .field("issuer", &self.issuer.as_str())
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct Discovery {
    issuer: String,
    jwks_uri: String,
}

impl OidcKeys {
    pub fn new(issuer: Url, allow_insecure_http: bool, timeout: Duration) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .user_agent(concat!(
                env!("CARGO_PKG_NAME"),
                "/",
                env!("CARGO_PKG_VERSION")
            ))
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Self {
            http,
            issuer,
            allow_insecure_http,
            cache: Arc::default(),
            fetching: Arc::default(),
        })
    }

    /// Fetches the keys now (at startup, so the first request does not wait for them).
    pub async fn prefetch(&self) {
        let generation = self.cache.read().await.generation;
        let _ = self.refresh(generation).await;
    }

    /// The issuer's key `kid`.
    pub async fn key(&self, kid: &str) -> Result<SigningKey, KeyError> {
        let (held, stale, may_refetch, generation) = {
            let cache = self.cache.read().await;
            let stale = cache.fetched_at.is_none_or(|at| at.elapsed() >= MAX_AGE);
            let may_refetch = cache
                .last_unknown_key_fetch
                .is_none_or(|at| at.elapsed() >= MIN_REFETCH);
            (
                cache.keys.get(kid).cloned(),
                stale,
                may_refetch,
                cache.generation,
            )
        };
        match held {
            Some(key) if !stale => return Ok(key),
            // Known but old: use it if the issuer cannot be reached.
            Some(key) => {
                let recently_tried = self
                    .cache
                    .read()
                    .await
                    .last_attempt
                    .is_some_and(|at| at.elapsed() < MIN_REFETCH);
                if !recently_tried {
                    let _ = self.refresh(generation).await;
                }
                let cache = self.cache.read().await;
                return Ok(cache.keys.get(kid).cloned().unwrap_or(key));
            }
            None if !may_refetch => {
                let cache = self.cache.read().await;
                return if cache.keys.is_empty() {
                    Err(KeyError::Unavailable(
                        "the last fetch failed; trying again shortly".into(),
                    ))
                } else {
                    Err(KeyError::UnknownKey(kid.to_owned()))
                };
            }
            None => {}
        }
        let fetched = self.refresh_for_unknown_key(generation).await;
        let cache = self.cache.read().await;
        match (cache.keys.get(kid), fetched) {
            (Some(key), _) => Ok(key.clone()),
            (None, Err(e)) if cache.keys.is_empty() => Err(KeyError::Unavailable(e)),
            (None, _) => Err(KeyError::UnknownKey(kid.to_owned())),
        }
    }

    /// [`Self::refresh`] for a token naming a key not held: such fetches count against
    /// [`MIN_REFETCH`] (a first fetch, with no keys held yet, does not).
    async fn refresh_for_unknown_key(&self, seen: u64) -> Result<(), String> {
        let _one = self.fetching.lock().await;
        let counts = {
            let cache = self.cache.read().await;
            if cache.generation != seen {
                return Ok(());
            }
            !cache.keys.is_empty()
        };
        if counts {
            self.cache.write().await.last_unknown_key_fetch = Some(Instant::now());
        }
        self.fetch_now().await
    }

    /// Fetches the keys, unless a fetch ended since the caller looked (`seen`): however many
    /// callers ask at the same time, one fetch.
    async fn refresh(&self, seen: u64) -> Result<(), String> {
        let _one = self.fetching.lock().await;
        if self.cache.read().await.generation != seen {
            return Ok(());
        }
        self.fetch_now().await
    }

    /// One fetch, its result kept (the caller holds `fetching`).
    async fn fetch_now(&self) -> Result<(), String> {
        let result = self.fetch().await;
        let mut cache = self.cache.write().await;
        cache.last_attempt = Some(Instant::now());
        cache.generation += 1;
        match result {
            Ok(keys) => {
                tracing::info!(issuer = %self.issuer, keys = keys.len(), "OIDC issuer keys fetched");
                cache.keys = keys;
                cache.fetched_at = Some(Instant::now());
                Ok(())
            }
            Err(e) => {
                tracing::warn!(issuer = %self.issuer, error = %e, "cannot fetch the OIDC issuer's keys");
                Err(e)
            }
        }
    }

    async fn fetch(&self) -> Result<HashMap<String, SigningKey>, String> {
        let discovery_url = format!(
            "{}/.well-known/openid-configuration",
            self.issuer.as_str().trim_end_matches('/')
        );
        let discovery: Discovery = serde_json::from_slice(&self.get(&discovery_url).await?)
            .map_err(|e| format!("discovery document: {e}"))?;
        if discovery.issuer.trim_end_matches('/') != self.issuer.as_str().trim_end_matches('/') {
            return Err(format!(
                "the discovery document names issuer {:?}, not {:?}",
                discovery.issuer,
                self.issuer.as_str()
            ));
        }
        let jwks_uri = super::urls::secure_base_url(&discovery.jwks_uri, self.allow_insecure_http)
            .map_err(|e| {
                format!(
                    "jwks_uri: {}",
                    e.replace("{override}", "CIRCLECI_ALLOW_INSECURE_HTTP")
                )
            })?;
        let set: JwkSet = serde_json::from_slice(&self.get(jwks_uri.as_str()).await?)
            .map_err(|e| format!("key set: {e}"))?;
        let mut keys = HashMap::new();
        for jwk in &set.keys {
            let Some(kid) = jwk.common.key_id.clone() else {
                continue;
            };
            let Some(algorithm) = algorithm_of(jwk) else {
                continue;
            };
            if let Ok(key) = DecodingKey::from_jwk(jwk) {
                keys.insert(kid, SigningKey { key, algorithm });
            }
        }
        if keys.is_empty() {
            return Err("the key set holds no usable signing key".into());
        }
        Ok(keys)
    }

    async fn get(&self, url: &str) -> Result<Vec<u8>, String> {
        let mut response = self
            .http
            .get(url)
            .header("accept", "application/json")
            .send()
            .await
            .map_err(|e| e.without_url().to_string())?;
        if !response.status().is_success() {
            return Err(format!("HTTP {}", response.status().as_u16()));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| e.without_url().to_string())?
        {
            if body.len() + chunk.len() > MAX_BODY_BYTES {
                return Err(format!("larger than {MAX_BODY_BYTES} bytes"));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }
}

/// The algorithm a key signs with: the one it names, else the usual one for its type. Only
/// asymmetric signatures: a key the issuer publishes can never be an HMAC secret.
fn algorithm_of(jwk: &jsonwebtoken::jwk::Jwk) -> Option<Algorithm> {
    let named = jwk.common.key_algorithm.and_then(|a| match a {
        KeyAlgorithm::RS256 => Some(Algorithm::RS256),
        KeyAlgorithm::RS384 => Some(Algorithm::RS384),
        KeyAlgorithm::RS512 => Some(Algorithm::RS512),
        KeyAlgorithm::PS256 => Some(Algorithm::PS256),
        KeyAlgorithm::PS384 => Some(Algorithm::PS384),
        KeyAlgorithm::PS512 => Some(Algorithm::PS512),
        KeyAlgorithm::ES256 => Some(Algorithm::ES256),
        KeyAlgorithm::ES384 => Some(Algorithm::ES384),
        _ => None,
    });
    if jwk.common.key_algorithm.is_some() {
        return named;
    }
    match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Some(Algorithm::RS256),
        AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
            jsonwebtoken::jwk::EllipticCurve::P256 => Some(Algorithm::ES256),
            jsonwebtoken::jwk::EllipticCurve::P384 => Some(Algorithm::ES384),
            _ => None,
        },
        _ => None,
    }
}
