//! The service's processes: the real binary, started, paused (SIGSTOP/SIGCONT), killed
//! (SIGKILL), stopped (SIGTERM) and started again. Each start logs (JSON lines, stdout and
//! stderr) to a file of its own under the run's folder, kept for a failing seed.
//!
//! Signals go through `kill` (the crate forbids unsafe code). Every wait is for a condition
//! (a log line, an exit) with a deadline.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::process::{Child, Command};
use tokio::sync::Mutex;
use tokio::time::Instant;

pub const BIN: &str = env!("CARGO_BIN_EXE_sym-circleci-approver");
/// How often a wait looks again.
const POLL: Duration = Duration::from_millis(50);
/// A start may wait for the database (PostgreSQL restarting, the network cut).
const STARTUP: Duration = Duration::from_secs(40);
/// SIGTERM: the worker's 5 s grace, requests' SHUTDOWN_GRACE, then exit.
const EXIT: Duration = Duration::from_secs(20);

struct Slot {
    child: Option<Child>,
    generation: u32,
    paused: bool,
    owner: Option<String>,
}

pub struct Supervisor {
    env: Vec<(String, String)>,
    dir: PathBuf,
    slots: Vec<Mutex<Slot>>,
    /// Where each replica listens now (None while it is down): read by the senders.
    addrs: Arc<RwLock<Vec<Option<SocketAddr>>>>,
}

impl Supervisor {
    /// Starts `count` replicas of `serve` with exactly `env` (plus `PATH`).
    pub async fn start(count: usize, env: Vec<(String, String)>, dir: &Path) -> Self {
        let supervisor = Self {
            env,
            dir: dir.to_owned(),
            slots: (0..count)
                .map(|_| {
                    Mutex::new(Slot {
                        child: None,
                        generation: 0,
                        paused: false,
                        owner: None,
                    })
                })
                .collect(),
            addrs: Arc::new(RwLock::new(vec![None; count])),
        };
        for i in 0..count {
            supervisor.launch(i).await;
        }
        supervisor
    }

    pub fn count(&self) -> usize {
        self.slots.len()
    }

    /// The addresses, shared with whoever sends to the replicas.
    pub fn addrs(&self) -> Arc<RwLock<Vec<Option<SocketAddr>>>> {
        Arc::clone(&self.addrs)
    }

    pub fn addr(&self, replica: usize) -> Option<SocketAddr> {
        self.addrs.read().unwrap()[replica]
    }

    fn set_addr(&self, replica: usize, addr: Option<SocketAddr>) {
        self.addrs.write().unwrap()[replica] = addr;
    }

    /// The lease owner of each running replica's worker.
    pub async fn owners(&self) -> Vec<Option<String>> {
        let mut owners = Vec::new();
        for slot in &self.slots {
            owners.push(slot.lock().await.owner.clone());
        }
        owners
    }

    fn log_path(&self, replica: usize, generation: u32) -> PathBuf {
        self.dir
            .join(format!("replica-{replica}-start-{generation}.log"))
    }

    /// Starts replica `i` and waits until it listens (a start that dies is tried again).
    async fn launch(&self, i: usize) {
        let mut slot = self.slots[i].lock().await;
        for _ in 0..5 {
            slot.generation += 1;
            let log = self.log_path(i, slot.generation);
            let file = std::fs::File::create(&log).expect("a log file");
            let mut command = Command::new(BIN);
            command
                .arg("serve")
                .env_clear()
                .env("PATH", std::env::var_os("PATH").unwrap_or_default())
                .current_dir(&self.dir)
                .stdin(Stdio::null())
                .stdout(file.try_clone().expect("log file handle"))
                .stderr(file)
                .kill_on_drop(true);
            for (name, value) in &self.env {
                command.env(name, value);
            }
            let mut child = command.spawn().expect("the binary starts");
            match wait_listening(&mut child, &log).await {
                Ok((addr, owner)) => {
                    slot.child = Some(child);
                    slot.paused = false;
                    slot.owner = Some(owner);
                    drop(slot);
                    self.set_addr(i, Some(addr));
                    return;
                }
                Err(why) => {
                    eprintln!("chaos: replica {i} did not start ({why}); trying again");
                    let _ = child.start_kill();
                    let _ = child.wait().await;
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
        panic!(
            "replica {i} did not start five times; see {}",
            self.dir.display()
        );
    }

    async fn signal(&self, i: usize, signal: &str) -> bool {
        let slot = self.slots[i].lock().await;
        let Some(pid) = slot.child.as_ref().and_then(Child::id) else {
            return false;
        };
        Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .await
            .is_ok_and(|s| s.success())
    }

    /// SIGSTOP; false if the replica is not running.
    pub async fn pause(&self, i: usize) -> bool {
        let done = self.signal(i, "-STOP").await;
        self.slots[i].lock().await.paused = done;
        done
    }

    /// SIGCONT.
    pub async fn resume(&self, i: usize) {
        if self.signal(i, "-CONT").await {
            self.slots[i].lock().await.paused = false;
        }
    }

    /// SIGKILL: no chance to clean up or give a lease back.
    pub async fn kill_9(&self, i: usize) {
        self.set_addr(i, None);
        let mut slot = self.slots[i].lock().await;
        if let Some(mut child) = slot.child.take() {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
    }

    /// SIGTERM and the exit; a replica that does not exit in time is killed (None).
    pub async fn terminate(&self, i: usize) -> Option<ExitStatus> {
        if self.slots[i].lock().await.paused {
            self.resume(i).await;
        }
        self.signal(i, "-TERM").await;
        let mut slot = self.slots[i].lock().await;
        let mut child = slot.child.take()?;
        let exited = tokio::time::timeout(EXIT, child.wait()).await;
        self.set_addr(i, None);
        match exited {
            Ok(Ok(status)) => Some(status),
            _ => {
                eprintln!("chaos: replica {i} did not exit within {EXIT:?} of SIGTERM; killed");
                let _ = child.start_kill();
                let _ = child.wait().await;
                None
            }
        }
    }

    /// Starts replica `i` again (after a kill or a stop).
    pub async fn restart(&self, i: usize) {
        self.launch(i).await;
    }

    /// Every replica running and not paused (the drain begins).
    pub async fn restore_all(&self) {
        for i in 0..self.count() {
            let (paused, running) = {
                let mut slot = self.slots[i].lock().await;
                let running = match slot.child.as_mut() {
                    Some(child) => matches!(child.try_wait(), Ok(None)),
                    None => false,
                };
                (slot.paused, running)
            };
            if paused {
                self.resume(i).await;
            }
            if !running {
                eprintln!("chaos: replica {i} was not running at the drain; starting it");
                self.kill_9(i).await;
                self.launch(i).await;
            }
        }
    }

    /// Stops every replica (SIGTERM); how many exited 0.
    pub async fn stop_all(&self) -> usize {
        let mut clean = 0;
        for i in 0..self.count() {
            if self.terminate(i).await.is_some_and(|s| s.success()) {
                clean += 1;
            }
        }
        clean
    }
}

/// Waits for the `listening` line (its address) and the worker's owner id, or the exit.
async fn wait_listening(child: &mut Child, log: &Path) -> Result<(SocketAddr, String), String> {
    let deadline = Instant::now() + STARTUP;
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let events: Vec<serde_json::Value> = text
            .lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect();
        let addr = events
            .iter()
            .find(|e| e["message"] == "listening")
            .and_then(|e| e["addr"].as_str()?.parse().ok());
        let owner = events
            .iter()
            .find(|e| e["message"] == "approval worker started")
            .and_then(|e| e["owner"].as_str());
        if let (Some(addr), Some(owner)) = (addr, owner) {
            return Ok((addr, owner.to_owned()));
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("exited {status} before listening"));
        }
        if Instant::now() > deadline {
            return Err(format!("not listening within {STARTUP:?}"));
        }
        tokio::time::sleep(POLL).await;
    }
}
