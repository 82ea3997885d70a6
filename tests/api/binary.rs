//! The real binary as a child process, shared by `process` and `replicas`: its environment,
//! its output collected line by line, waiting for it to listen or to exit, signals, and signed
//! deliveries to post to it.
//!
//! The binary gets a cleared environment (only what a test sets, plus `PATH`), logs JSON lines
//! on stdout, and learns its port from `LISTEN_ADDR=127.0.0.1:0` (the `listening` log line).
//! The fake CircleCI runs inside the test process, so waits here are always async (never a
//! blocking wait that would starve it).

use std::io::{BufRead as _, BufReader, Read};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use approver_test_support::fake_circleci::FakeCircleCi;
use serde_json::Value;
use sym_circleci_approver::inbound::signature::WebhookSecret;
use tokio::time::Instant;
use uuid::Uuid;

use crate::helpers::{approve_event, new_webhook_id, now_secs, TestDatabase, TOKEN};

pub const BIN: &str = env!("CARGO_BIN_EXE_sym-circleci-approver");
/// How often the waits here (and in the tests using them) look again.
pub const POLL: Duration = Duration::from_millis(50);

// ---------------------------------------------------------------------------------------------
// Environment and command line
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

/// What `serve` needs to run against `fake` and `db`, JSON logs on stdout, a random port.
pub fn serve_env(fake: &FakeCircleCi, db: &TestDatabase, secret_text: &str) -> Env {
    Env::default()
        .set("SYM_WEBHOOK_SECRET", secret_text)
        .set("CIRCLECI_TOKEN", TOKEN)
        .set("CIRCLECI_API_URL", fake.base_url())
        .set("DATABASE_URL", db.url.clone())
        .set("LISTEN_ADDR", "127.0.0.1:0")
        .set("LOG_FORMAT", "json")
        .set("RUST_LOG", "info")
}

/// The binary with `args`, nothing inherited from the test's environment but `PATH`.
pub fn binary(args: &[&str], env: &Env) -> Command {
    let mut command = Command::new(BIN);
    command
        .args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .current_dir(std::env::temp_dir())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (name, value) in &env.0 {
        command.env(name, value);
    }
    command
}

// ---------------------------------------------------------------------------------------------
// A running child and its output
// ---------------------------------------------------------------------------------------------

/// Lines a child wrote to one stream, collected by a background thread.
#[derive(Clone, Default)]
pub struct Lines(Arc<Mutex<Vec<String>>>);

impl Lines {
    fn snapshot(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
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

    fn collect_from(&self, stream: impl Read + Send + 'static) -> JoinHandle<()> {
        let lines = self.clone();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stream);
            let mut line = Vec::new();
            loop {
                line.clear();
                match reader.read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => lines
                        .0
                        .lock()
                        .unwrap()
                        .push(String::from_utf8_lossy(&line).trim_end().to_owned()),
                }
            }
        })
    }
}

/// A running child; killed (SIGKILL) when dropped before it exited, e.g. on a failed assert.
pub struct Running {
    /// Names the child in failure messages ("the binary", "replica A").
    label: String,
    child: Child,
    pub stdout: Lines,
    pub stderr: Lines,
    readers: Vec<JoinHandle<()>>,
    exit: Option<ExitStatus>,
}

impl Running {
    pub fn start(mut command: Command, label: impl Into<String>) -> Self {
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
        }
    }

    /// Sends SIGTERM (through `kill`, so the tests need no unsafe code).
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -TERM failed: {status}");
    }

    /// SIGKILL: no chance to clean up (or give a lease back), as after a crash or an OOM kill.
    pub fn kill_9(&mut self) {
        self.child.kill().expect("SIGKILL delivered");
    }

    /// Waits (without blocking the runtime) for the process to exit; all output is then in.
    pub async fn exited_within(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not exit within {timeout:?}",
                self.label
            );
            tokio::time::sleep(POLL).await;
        };
        self.exit = Some(status);
        // The pipes closed with the process: the readers end at once.
        for reader in self.readers.drain(..) {
            reader.join().expect("output reader");
        }
        status
    }

    /// Waits for the `listening` log line and returns the address it names; fails if the
    /// process exits first or `timeout` passes.
    pub async fn wait_listening(&mut self, timeout: Duration) -> SocketAddr {
        let deadline = Instant::now() + timeout;
        loop {
            let listening = self
                .stdout
                .find("listening")
                .and_then(|e| e["addr"].as_str().map(str::to_owned));
            if let Some(addr) = listening {
                return addr.parse().expect("the listening line has an address");
            }
            assert!(
                !self.has_exited(),
                "{} exited before listening:\n{}",
                self.label,
                self.output()
            );
            assert!(
                Instant::now() < deadline,
                "{}: no \"listening\" log line within {timeout:?}:\n{}",
                self.label,
                self.output()
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// Everything the process wrote, stdout then stderr.
    pub fn output(&self) -> String {
        format!("{}\n{}", self.stdout.text(), self.stderr.text())
    }

    pub fn has_exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.exit.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
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
