//! The real binary as a child process, one wrapper for every test that runs it (`process`,
//! `adversarial`, `replicas`, a gate's release): [`ServiceProcess`] spawns it with a cleared
//! environment ([`Env`], only what a test sets plus `PATH`), collects its output line by line,
//! waits for a log line, for `listening` (its port: `LISTEN_ADDR=127.0.0.1:0`) or for its
//! exit, sends it signals, and posts signed [`Delivery`]s to it through an [`Endpoint`].
//!
//! The fakes run inside the test process, so every wait here is async, and each is woken by
//! what it waits for (a new line, the exit), never by a timer; the deadline only bounds it.

use std::net::SocketAddr;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use approver_test_support::fake_circleci::FakeCircleCi;
use serde_json::Value;
use sym_circleci_approver::domain::task::TaskState;
use sym_circleci_approver::inbound::signature::WebhookSecret;
use sym_circleci_approver::store::Store;
use tokio::io::{AsyncBufReadExt as _, AsyncRead, BufReader};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use uuid::Uuid;

use super::app::task_of;
use super::db::TestDatabase;
use super::wire::*;

pub const BIN: &str = env!("CARGO_BIN_EXE_sym-circleci-approver");
/// How long `serve` may take to listen, or a command to end by itself.
pub const STARTUP: Duration = Duration::from_secs(30);
/// How long `serve` may take to exit after SIGTERM (the worker's grace, then the server's).
pub const EXIT: Duration = Duration::from_secs(15);

// ---------------------------------------------------------------------------------------------
// What the child runs against
// ---------------------------------------------------------------------------------------------

/// Environment variables for one run; later `set`s replace earlier ones.
#[derive(Clone, Default)]
pub struct Env(Vec<(&'static str, String)>);

impl Env {
    pub fn set(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.0.retain(|(n, _)| *n != name);
        self.0.push((name, value.into()));
        self
    }

    pub fn unset(mut self, name: &str) -> Self {
        self.0.retain(|(n, _)| *n != name);
        self
    }
}

/// What a `serve` child runs against: a fake CircleCI (in the test process), a store, a
/// webhook secret.
pub struct Upstreams {
    pub fake: Arc<FakeCircleCi>,
    pub db: TestDatabase,
    pub secret_text: String,
    pub secret: WebhookSecret,
}

impl Upstreams {
    pub async fn new() -> Self {
        let fake = FakeCircleCi::start(TOKEN).await.expect("fake CircleCI");
        let db = TestDatabase::new().await;
        let (secret_text, secret) = new_secret();
        Self {
            fake: Arc::new(fake),
            db,
            secret_text,
            secret,
        }
    }

    /// `serve` against these: JSON logs on stdout, a random port.
    pub fn env(&self) -> Env {
        Env::default()
            .set("SYM_WEBHOOK_SECRET", self.secret_text.clone())
            .set("CIRCLECI_TOKEN", TOKEN)
            .set("CIRCLECI_API_URL", self.fake.base_url())
            .set("DATABASE_URL", self.db.url.clone())
            .set("LISTEN_ADDR", "127.0.0.1:0")
            .set("LOG_FORMAT", "json")
            .set("RUST_LOG", "info")
    }

    /// A store of the test's own on the service's database (to read what it stored).
    pub async fn store(&self) -> Store {
        Store::connect(
            &secrecy::SecretString::from(self.db.url.clone()),
            &sym_circleci_approver::store::StoreOptions::default(),
        )
        .await
        .expect("the test can open the store")
    }
}

// ---------------------------------------------------------------------------------------------
// Output
// ---------------------------------------------------------------------------------------------

#[derive(Default)]
struct Stream {
    lines: Vec<String>,
    /// The child closed the stream (it exited).
    closed: bool,
}

/// Lines a child wrote to one stream, collected as they come; waiters are woken by each.
#[derive(Clone, Default)]
pub struct Lines {
    stream: Arc<Mutex<Stream>>,
    grew: Arc<Notify>,
}

impl Lines {
    fn snapshot(&self) -> Vec<String> {
        self.stream.lock().unwrap().lines.clone()
    }

    pub fn text(&self) -> String {
        self.snapshot().join("\n")
    }

    /// The lines that are JSON objects (log events).
    pub fn events(&self) -> Vec<Value> {
        self.snapshot()
            .iter()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .filter(Value::is_object)
            .collect()
    }

    /// The first log event with this `message`.
    pub fn find(&self, message: &str) -> Option<Value> {
        self.events().into_iter().find(|e| e["message"] == message)
    }

    /// The child closed the stream (it exited, or is exiting).
    pub fn is_closed(&self) -> bool {
        self.stream.lock().unwrap().closed
    }

    /// Waits until `found` finds something in the lines so far (looked at again on each new
    /// line); None when the stream closes without it or at `deadline`.
    pub async fn wait_for<T>(
        &self,
        deadline: Instant,
        found: impl Fn(&Lines) -> Option<T>,
    ) -> Option<T> {
        loop {
            let grew = self.grew.notified();
            tokio::pin!(grew);
            grew.as_mut().enable();
            if let Some(found) = found(self) {
                return Some(found);
            }
            if self.is_closed() {
                return None;
            }
            tokio::time::timeout_at(deadline, grew).await.ok()?;
        }
    }

    fn collect_from(&self, stream: impl AsyncRead + Unpin + Send + 'static) -> JoinHandle<()> {
        let lines = self.clone();
        tokio::spawn(async move {
            let mut reader = BufReader::new(stream);
            let mut line = Vec::new();
            loop {
                line.clear();
                match reader.read_until(b'\n', &mut line).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let text = String::from_utf8_lossy(&line).trim_end().to_owned();
                        lines.stream.lock().unwrap().lines.push(text);
                        lines.grew.notify_waiters();
                    }
                }
            }
            lines.stream.lock().unwrap().closed = true;
            lines.grew.notify_waiters();
        })
    }
}

// ---------------------------------------------------------------------------------------------
// The child
// ---------------------------------------------------------------------------------------------

/// The binary running as a child; killed (SIGKILL) when dropped before it exited, e.g. on a
/// failed assert, and its output printed then.
pub struct ServiceProcess {
    /// Names the child in failure messages ("the binary", "replica A").
    label: String,
    child: tokio::process::Child,
    pub stdout: Lines,
    pub stderr: Lines,
    readers: Vec<JoinHandle<()>>,
    exit: Option<ExitStatus>,
    /// Where it listens, once it does.
    endpoint: Option<Endpoint>,
}

impl ServiceProcess {
    /// The binary with `args`, nothing inherited from the test's environment but `PATH`; not
    /// waited for.
    pub fn spawn(label: impl Into<String>, args: &[&str], env: &Env) -> Self {
        let mut command = tokio::process::Command::new(BIN);
        command
            .args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .current_dir(std::env::temp_dir())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for (name, value) in &env.0 {
            command.env(name, value);
        }
        let mut child = command.spawn().expect("the binary starts");
        let stdout = Lines::default();
        let stderr = Lines::default();
        let readers = vec![
            stdout.collect_from(child.stdout.take().expect("piped stdout")),
            stderr.collect_from(child.stderr.take().expect("piped stderr")),
        ];
        Self {
            label: label.into(),
            child,
            stdout,
            stderr,
            readers,
            exit: None,
            endpoint: None,
        }
    }

    /// Closes the test's end of the child's stdout, as a log collector that went away: the
    /// child's writes there fail from now on (EPIPE), and nothing more is collected.
    pub async fn close_stdout(&mut self) {
        // `spawn` starts stdout's reader first.
        let reader = self.readers.remove(0);
        reader.abort();
        let _ = reader.await;
    }

    /// `serve` with `env`, listening.
    pub async fn start(label: impl Into<String>, env: &Env) -> Self {
        let mut service = Self::spawn(label, &["serve"], env);
        service.wait_listening(STARTUP).await;
        service
    }

    /// Runs a command that ends by itself (a refusal at startup, a subcommand); its status,
    /// and the child, to read its output.
    pub async fn run_to_end(args: &[&str], env: &Env) -> (ExitStatus, Self) {
        let mut process = Self::spawn(format!("`{}`", args.join(" ")), args, env);
        let status = process.exited_within(STARTUP).await;
        (status, process)
    }

    /// Waits for the `listening` log line and returns the address it names; fails if the
    /// process exits first or `timeout` passes.
    pub async fn wait_listening(&mut self, timeout: Duration) -> SocketAddr {
        let deadline = Instant::now() + timeout;
        let listening = self
            .stdout
            .wait_for(deadline, |lines| {
                let event = lines.find("listening")?;
                event["addr"].as_str().map(str::to_owned)
            })
            .await;
        let Some(addr) = listening else {
            self.fail_waiting("a \"listening\" log line", timeout).await
        };
        let addr: SocketAddr = addr.parse().expect("the listening line has an address");
        self.endpoint = Some(Endpoint::new(addr));
        addr
    }

    /// Waits for the first log event with `message` on stdout.
    pub async fn wait_log(&self, message: &str, timeout: Duration) -> Value {
        self.wait_log_where(message, timeout, |_| true).await
    }

    /// Waits for the first log event with `message` on stdout for which `matches` holds.
    pub async fn wait_log_where(
        &self,
        message: &str,
        timeout: Duration,
        matches: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        let found = self
            .stdout
            .wait_for(deadline, |lines| {
                lines
                    .events()
                    .into_iter()
                    .find(|e| e["message"] == message && matches(e))
            })
            .await;
        found.unwrap_or_else(|| {
            panic!(
                "{}: no {message:?} log line within {timeout:?} (or it exited):\n{}",
                self.label,
                self.output()
            )
        })
    }

    /// The delivery's task once the service has logged its end (the line follows the stored
    /// result), read from `store`.
    pub async fn finished_task(
        &self,
        store: &Store,
        delivery_id: &str,
        timeout: Duration,
    ) -> TaskState {
        let of_this_task = |e: &Value| e["span"]["delivery_id"] == delivery_id;
        let deadline = Instant::now() + timeout;
        let ended = self
            .stdout
            .wait_for(deadline, |lines| {
                lines.events().into_iter().find(|e| {
                    (e["message"] == "task succeeded" || e["message"] == "task failed")
                        && of_this_task(e)
                })
            })
            .await;
        assert!(
            ended.is_some(),
            "{}: task of {delivery_id} not finished within {timeout:?}:\n{}",
            self.label,
            self.output()
        );
        task_of(store, delivery_id).await
    }

    /// Where it listens (after [`Self::wait_listening`]); cheap to clone into tasks.
    pub fn endpoint(&self) -> &Endpoint {
        self.endpoint
            .as_ref()
            .unwrap_or_else(|| panic!("{} is not listening (yet)", self.label))
    }

    pub fn addr(&self) -> SocketAddr {
        self.endpoint().addr
    }

    pub fn url(&self, path: &str) -> String {
        self.endpoint().url(path)
    }

    /// Delivers an approve event for `workflow_id`; asserts 202 and returns the delivery (to
    /// send again) and its id.
    pub async fn approve(&self, secret: &WebhookSecret, workflow_id: Uuid) -> (Delivery, String) {
        let delivery = Delivery::new_approve(secret, workflow_id);
        let answer = self.endpoint().deliver(&delivery).await;
        assert_eq!(answer.status, 202, "{}", answer.body);
        (delivery, answer.delivery_id())
    }

    /// Sends SIGTERM (through `kill`: the tests forbid unsafe code).
    pub async fn terminate(&self) {
        let pid = self.child.id().expect("still running").to_string();
        let status = tokio::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .await
            .expect("kill runs");
        assert!(status.success(), "kill -TERM failed: {status}");
    }

    /// SIGTERM, then the exit status (the process must be gone within [`EXIT`]).
    pub async fn stop(&mut self) -> ExitStatus {
        self.terminate().await;
        self.exited_within(EXIT).await
    }

    /// SIGKILL, as after a crash or an OOM kill (no chance to clean up or give a lease back);
    /// returns once the process is gone.
    pub async fn kill_9(&mut self) {
        self.child.start_kill().expect("SIGKILL delivered");
        self.exited_within(EXIT).await;
    }

    /// Waits for the process to exit; all its output is then in.
    pub async fn exited_within(&mut self, timeout: Duration) -> ExitStatus {
        let status = match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(status) => status.expect("wait for the child"),
            Err(_) => panic!(
                "{} did not exit within {timeout:?}:\n{}",
                self.label,
                self.output()
            ),
        };
        self.exit = Some(status);
        // The pipes closed with the process: the readers end at once.
        for reader in self.readers.drain(..) {
            reader.await.expect("output reader");
        }
        status
    }

    pub fn has_exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// Everything the process wrote, stdout then stderr.
    pub fn output(&self) -> String {
        format!("{}\n{}", self.stdout.text(), self.stderr.text())
    }

    /// Fails a wait for `what`, saying whether the process exited first.
    async fn fail_waiting(&mut self, what: &str, timeout: Duration) -> ! {
        if self.stdout.is_closed() {
            let status = self.exited_within(EXIT).await;
            panic!(
                "{} exited ({status}) before {what}:\n{}",
                self.label,
                self.output()
            );
        }
        panic!(
            "{}: no {what} within {timeout:?}:\n{}",
            self.label,
            self.output()
        );
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        if self.exit.is_none() {
            // kill_on_drop would too; this makes it now, before the output is printed.
            let _ = self.child.start_kill();
        }
        if std::thread::panicking() {
            eprintln!(
                "----- stdout of {label} -----\n{}\n----- stderr of {label} -----\n{}",
                self.stdout.text(),
                self.stderr.text(),
                label = self.label
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------------------------

/// Where to send requests to one process (cheap to clone into tasks).
#[derive(Clone)]
pub struct Endpoint {
    addr: SocketAddr,
    client: reqwest::Client,
}

/// An answer, and how long it took to come.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub body: Value,
    pub took: Duration,
}

impl Endpoint {
    fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub async fn get(&self, path: &str) -> Answer {
        let response = self.client.get(self.url(path)).send().await;
        answer(response.expect("the service answers")).await
    }

    /// The status `/readyz` answers; 0 for no answer.
    pub async fn readyz(&self) -> u16 {
        match self.client.get(self.url("/readyz")).send().await {
            Ok(response) => response.status().as_u16(),
            Err(_) => 0,
        }
    }

    /// `POST path` with a JSON body and a bearer token.
    pub async fn post_json(&self, path: &str, bearer: &str, body: &Value) -> Answer {
        let request = self
            .client
            .post(self.url(path))
            .bearer_auth(bearer)
            .json(body);
        answer(request.send().await.expect("the service answers")).await
    }

    /// The Prometheus text of `/metrics`.
    pub async fn metrics(&self) -> String {
        let response = self.client.get(self.url("/metrics")).send().await;
        let response = response.expect("the service answers");
        assert_eq!(response.status(), 200);
        response.text().await.unwrap()
    }

    /// Posts a delivery to `/webhooks/sym` exactly as it was signed.
    pub async fn deliver(&self, delivery: &Delivery) -> Answer {
        let response = delivery
            .post(&self.client, &self.url("/webhooks/sym"))
            .send()
            .await
            .expect("the service answers");
        answer(response).await
    }

    /// [`Self::deliver`], for when there may be no answer (an outage): what went wrong then.
    pub async fn try_deliver(&self, delivery: &Delivery) -> Result<Reply, String> {
        let started = Instant::now();
        let response = delivery
            .post(&self.client, &self.url("/webhooks/sym"))
            .send()
            .await
            .map_err(|e| format!("no answer: {e}"))?;
        let status = response.status().as_u16();
        let text = response.text().await.map_err(|e| e.to_string())?;
        let body = serde_json::from_str(&text).map_err(|_| format!("HTTP {status}: {text:?}"))?;
        Ok(Reply {
            status,
            body,
            took: started.elapsed(),
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Signed deliveries
// ---------------------------------------------------------------------------------------------

/// A signed Standard Webhooks delivery, kept so it can be sent again unchanged (the hook retrying).
#[derive(Clone)]
pub struct Delivery {
    webhook_id: String,
    timestamp: i64,
    signature: String,
    body: Vec<u8>,
}

impl Delivery {
    pub fn signed(secret: &WebhookSecret, body: Vec<u8>) -> Self {
        let webhook_id = new_webhook_id();
        let timestamp = now_secs();
        let signature = secret.sign(&webhook_id, timestamp, &body);
        Self {
            webhook_id,
            timestamp,
            signature,
            body,
        }
    }

    /// An approve event with Sym id `sym_event_id` for `workflow_id`.
    pub fn approve(secret: &WebhookSecret, sym_event_id: &str, workflow_id: Uuid) -> Self {
        Self::signed(
            secret,
            approve_event(sym_event_id, &workflow_id.to_string()),
        )
    }

    /// An approve event with a new Sym id for `workflow_id`.
    pub fn new_approve(secret: &WebhookSecret, workflow_id: Uuid) -> Self {
        Self::approve(secret, &Uuid::new_v4().to_string(), workflow_id)
    }

    /// A POST of this delivery to `url`, exactly as it was signed.
    pub fn post(&self, client: &reqwest::Client, url: &str) -> reqwest::RequestBuilder {
        client
            .post(url)
            .header("content-type", "application/json")
            .header("webhook-id", &self.webhook_id)
            .header("webhook-timestamp", self.timestamp.to_string())
            .header("webhook-signature", &self.signature)
            .body(self.body.clone())
    }
}
