//! The fault plan: a pure function of the seed, the backend and the length of the chaos phase.
//! Everything random in a run comes from here (the service's own jitter aside), so a seed
//! replays the same workflows, deliveries, repeats and faults at the same moments.
//!
//! Times are seconds from the start of the run. The chaos phase is `[0, chaos)`; every fault
//! episode ends inside it, one at a time per track (the processes; the database, PostgreSQL
//! only). The probes (see [`Probes`]) are workflows built to show one known gap each; the
//! ones that need a deadline to pass play out in the drain, where nothing else is faulted.

use std::fmt;

/// How long a task stays leased (`TASK_LEASE`). Above 6.25 s on purpose: a step is cut off
/// at 0.8 × the lease, and only a step longer than the worker's fixed 5 s shutdown grace can
/// be cut off by a shutdown (the `term_mid_approve` probe); at 5 s that path never runs.
pub const TASK_LEASE_SECS: f64 = 8.0;
/// `CIRCLECI_TIMEOUT`: above the step's own limit (6.4 s), so an unanswered call is cut off
/// by the step's limit (the path of the deadline probe), and above the slow approve of the
/// `term_mid_approve` probe (so that approve is not an unanswered one).
pub const CIRCLECI_TIMEOUT_SECS: f64 = 7.0;
/// Time every task needs, at most, once the faults stop: a lease left by a killed or paused
/// process runs out (8 s), a step hung on an unanswered call is cut off (6.4 s), a retry, a
/// step, and the store's own patience after an outage.
pub const SETTLE_SECS: f64 = 24.0;
/// A pause lasts past the lease.
pub const PAUSE_SECS: f64 = TASK_LEASE_SECS + 1.0;
/// Most attempts of one delivery (a hook's retries are bounded too).
pub const MAX_ATTEMPTS: usize = 12;

/// A SplitMix64 generator: tiny, and its sequence for a seed never changes with a library
/// version (a plan must replay from its seed for as long as the suite exists).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// Uniform in `[lo, hi)`.
    pub fn between(&mut self, lo: f64, hi: f64) -> f64 {
        let unit = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        lo + (hi - lo) * unit
    }

    pub fn chance(&mut self, p: f64) -> bool {
        self.between(0.0, 1.0) < p
    }

    /// Picks by weight: `(weight, value)`.
    pub fn weighted<T: Copy>(&mut self, choices: &[(u32, T)]) -> T {
        let total: u32 = choices.iter().map(|(w, _)| w).sum();
        let mut roll = self.below(total as usize) as u32;
        for (weight, value) in choices {
            if roll < *weight {
                return *value;
            }
            roll -= weight;
        }
        choices[choices.len() - 1].1
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Self::Sqlite => "sqlite",
            Self::Postgres => "postgres",
        }
    }

    /// One serving process on a SQLite file; three replicas on PostgreSQL.
    pub fn replicas(self) -> usize {
        match self {
            Self::Sqlite => 1,
            Self::Postgres => 3,
        }
    }

    /// The seeds CI runs: together they inject every kind of fault of the backend (a test
    /// below checks it), each run short enough for CI.
    pub fn ci_seeds(self) -> &'static [u64] {
        match self {
            Self::Sqlite => &[1, 24],
            Self::Postgres => &[12, 24],
        }
    }

    /// The chaos phase CI runs (seconds): PostgreSQL's has a probe and a database track more.
    pub fn ci_chaos_secs(self) -> f64 {
        match self {
            Self::Sqlite => 16.0,
            Self::Postgres => 22.0,
        }
    }
}

/// One approve event for one workflow, sent until it gets a 2xx (at most [`MAX_ATTEMPTS`]).
#[derive(Debug, Clone, PartialEq)]
pub struct WorkflowPlan {
    pub send_at: f64,
    /// The replica each attempt goes to.
    pub replicas: Vec<usize>,
    pub repeats: Vec<Repeat>,
}

/// The same delivery again, as a retrying hook sends it.
#[derive(Debug, Clone, PartialEq)]
pub struct Repeat {
    pub kind: RepeatKind,
    /// After the original's first attempt.
    pub after: f64,
    pub replicas: Vec<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RepeatKind {
    /// Same webhook-id and body, a fresh timestamp and signature (Standard Webhooks retry).
    SameWebhookId,
    /// The same Sym event (same body) under a new webhook-id.
    SameSymEvent,
}

/// A fault of the fake CircleCI, aimed at one workflow's next call of one operation.
#[derive(Debug, Clone, PartialEq)]
pub struct CircleFault {
    pub at: f64,
    /// Index into [`Plan::workflows`].
    pub workflow: usize,
    pub operation: &'static str,
    pub kind: CircleFaultKind,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum CircleFaultKind {
    /// The right answer, late (an approve is carried out at once).
    Slow { secs: f64 },
    /// 429 with `Retry-After`, nothing done.
    TooMany { retry_after: u64 },
    /// A 5xx, nothing done.
    ServerError { status: u16 },
    /// An approve carried out, its answer never comes (well past `CIRCLECI_TIMEOUT`).
    LostApprove,
}

impl CircleFaultKind {
    pub fn label(self) -> &'static str {
        match self {
            Self::Slow { .. } => "cci_slow",
            Self::TooMany { .. } => "cci_429",
            Self::ServerError { .. } => "cci_5xx",
            Self::LostApprove => "cci_lost_approve",
        }
    }
}

/// Someone clicks Approve in the CircleCI UI (if the hold job is still on hold).
#[derive(Debug, Clone, PartialEq)]
pub struct UiClick {
    pub at: f64,
    /// Index into [`Plan::workflows`].
    pub workflow: usize,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ProcessFault {
    /// SIGSTOP for `secs` (past the lease), then SIGCONT.
    Pause { replica: usize, secs: f64 },
    /// SIGKILL, down for `down_secs`, started again.
    Kill { replica: usize, down_secs: f64 },
    /// SIGTERM, waited for, down for `down_secs`, started again.
    Term { replica: usize, down_secs: f64 },
    /// The `term_mid_approve` probe (PostgreSQL): SIGTERM to the replica whose approve
    /// CircleCI is still processing.
    TermMidApprove,
}

impl ProcessFault {
    pub fn label(self) -> &'static str {
        match self {
            Self::Pause { .. } => "pause",
            Self::Kill { .. } => "kill9",
            Self::Term { .. } => "term",
            Self::TermMidApprove => "probe_term_mid_approve",
        }
    }

    /// Time the planner sets aside for it (process start included).
    fn budget(self) -> f64 {
        match self {
            Self::Pause { secs, .. } => secs + 0.2,
            Self::Kill { down_secs, .. } => down_secs + 2.5,
            Self::Term { down_secs, .. } => 5.5 + down_secs + 2.5,
            Self::TermMidApprove => 9.0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CutMode {
    /// New connections refused, open ones reset.
    Refuse,
    /// Nothing goes through: open connections stall, new ones hang.
    Blackhole,
    /// Open connections reset once; new ones go through.
    Reset,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum DbFault {
    /// `pg_ctl stop -m fast`, down for `down_secs`, `pg_ctl start`.
    Restart { down_secs: f64 },
    /// The proxy in front of PostgreSQL cuts the network for `secs`, then restores it.
    Cut { mode: CutMode, secs: f64 },
}

impl DbFault {
    pub fn label(self) -> &'static str {
        match self {
            Self::Restart { .. } => "db_restart",
            Self::Cut {
                mode: CutMode::Refuse,
                ..
            } => "net_refuse",
            Self::Cut {
                mode: CutMode::Blackhole,
                ..
            } => "net_blackhole",
            Self::Cut {
                mode: CutMode::Reset,
                ..
            } => "net_reset",
        }
    }

    fn budget(self) -> f64 {
        match self {
            Self::Restart { down_secs } => down_secs + 2.0,
            Self::Cut { secs, .. } => secs + 0.1,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Episode<K> {
    pub at: f64,
    pub kind: K,
}

/// Workflows built to show one known gap each; each is its own workflow, never aimed at by a
/// random CircleCI fault.
#[derive(Debug, Clone, PartialEq)]
pub struct Probes {
    /// `deadline_edge`: the first approval is sent at the start, its hold job goes on hold
    /// 4 s before that approval's `APPROVAL_TIMEOUT`, and the approve is carried out but
    /// never answered: the step's own limit cuts it off after the deadline.
    pub deadline_edge: bool,
    /// `second_approval`: the first approval is sent at the start while the hold job is not
    /// on hold; a second Sym approval (a new Sym event) comes halfway through the first's
    /// `APPROVAL_TIMEOUT`; the hold job goes on hold 5 s after the first's deadline.
    pub second_approval: bool,
    /// `ui_race`: when this workflow's approve gets a 503 (nothing done), someone clicks
    /// Approve in the CircleCI UI before the next step reads the job. Sent at this time.
    pub ui_race_at: f64,
    /// `term_mid_approve` (PostgreSQL): the first episode of the process track.
    pub term_mid_approve: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub seed: u64,
    pub backend: Backend,
    pub chaos_secs: f64,
    pub approval_timeout_secs: f64,
    pub workflows: Vec<WorkflowPlan>,
    pub circleci: Vec<CircleFault>,
    pub ui_clicks: Vec<UiClick>,
    pub processes: Vec<Episode<ProcessFault>>,
    pub database: Vec<Episode<DbFault>>,
    pub probes: Probes,
}

/// Normal workflows per second of chaos.
const WORKFLOWS_PER_SEC: f64 = 2.0;
/// Random CircleCI faults per normal workflow.
const CIRCLE_FAULTS_PER_WORKFLOW: f64 = 0.8;
/// Approvals clicked in the UI per normal workflow.
const UI_CLICKS_PER_WORKFLOW: f64 = 0.1;

impl Plan {
    pub fn new(seed: u64, backend: Backend, chaos_secs: f64) -> Self {
        // Each part draws from a stream of its own: a part added later (or drawing more)
        // leaves the others' plans of every seed as they were.
        let stream = |part: u64| {
            Rng::new(seed ^ backend_salt(backend) ^ part.wrapping_mul(0x9e37_79b9_7f4a_7c15))
        };
        let mut rng = stream(1);
        let replicas = backend.replicas();
        let picks = |rng: &mut Rng| -> Vec<usize> {
            (0..MAX_ATTEMPTS).map(|_| rng.below(replicas)).collect()
        };

        // Normal workflows: sent during the chaos phase, at least 2 s before it ends.
        let count = ((chaos_secs - 2.0).max(1.0) * WORKFLOWS_PER_SEC).round() as usize;
        let mut workflows = Vec::with_capacity(count);
        for _ in 0..count {
            let send_at = rng.between(0.2, (chaos_secs - 2.0).max(0.3));
            let replicas = picks(&mut rng);
            let mut repeats = Vec::new();
            let same = rng.weighted(&[(50, 0), (35, 1), (15, 2)]);
            for _ in 0..same {
                repeats.push(Repeat {
                    kind: RepeatKind::SameWebhookId,
                    after: rng.between(0.0, 4.0),
                    replicas: picks(&mut rng),
                });
            }
            if rng.chance(0.3) {
                repeats.push(Repeat {
                    kind: RepeatKind::SameSymEvent,
                    after: rng.between(0.0, 4.0),
                    replicas: picks(&mut rng),
                });
            }
            workflows.push(WorkflowPlan {
                send_at,
                replicas,
                repeats,
            });
        }
        workflows.sort_by(|a, b| a.send_at.total_cmp(&b.send_at));

        // CircleCI faults, each aimed at one workflow's next call of one operation, set up
        // just before the workflow's approval is sent (so its first steps meet them).
        let mut rng = stream(2);
        let faults = (count as f64 * CIRCLE_FAULTS_PER_WORKFLOW).round() as usize;
        let mut circleci = Vec::with_capacity(faults);
        for _ in 0..faults {
            let workflow = rng.below(count);
            let at = (workflows[workflow].send_at - rng.between(0.1, 0.5)).max(0.0);
            let operation =
                rng.weighted(&[(50, "list_jobs"), (15, "get_workflow"), (35, "approve")]);
            let kind = if operation == "approve" {
                match rng.below(4) {
                    0 => CircleFaultKind::Slow {
                        secs: rng.between(0.5, 3.0),
                    },
                    1 => CircleFaultKind::TooMany {
                        retry_after: 1 + rng.below(2) as u64,
                    },
                    2 => CircleFaultKind::ServerError {
                        status: [500, 502, 503, 504][rng.below(4)],
                    },
                    _ => CircleFaultKind::LostApprove,
                }
            } else {
                match rng.below(3) {
                    // Some slow answers come after CIRCLECI_TIMEOUT (and the step's limit).
                    0 => CircleFaultKind::Slow {
                        secs: if rng.chance(0.25) {
                            CIRCLECI_TIMEOUT_SECS + 3.0
                        } else {
                            rng.between(0.5, 3.0)
                        },
                    },
                    1 => CircleFaultKind::TooMany {
                        retry_after: 1 + rng.below(2) as u64,
                    },
                    _ => CircleFaultKind::ServerError {
                        status: [500, 502, 503, 504][rng.below(4)],
                    },
                }
            };
            circleci.push(CircleFault {
                at,
                workflow,
                operation,
                kind,
            });
        }
        circleci.sort_by(|a, b| a.at.total_cmp(&b.at));

        // A few hold jobs approved in the UI, around when their Sym approval is worked on.
        let mut rng = stream(3);
        let clicks = (count as f64 * UI_CLICKS_PER_WORKFLOW).round() as usize;
        let mut ui_clicks: Vec<UiClick> = (0..clicks)
            .map(|_| {
                let workflow = rng.below(count);
                UiClick {
                    at: workflows[workflow].send_at + rng.between(0.0, 1.5),
                    workflow,
                }
            })
            .collect();
        ui_clicks.sort_by(|a, b| a.at.total_cmp(&b.at));

        // The process track: one episode at a time, each inside the chaos phase.
        let mut rng = stream(4);
        let term_mid_approve = backend == Backend::Postgres;
        let mut processes = Vec::new();
        let mut at = 1.0;
        if term_mid_approve {
            processes.push(Episode {
                at,
                kind: ProcessFault::TermMidApprove,
            });
            at += ProcessFault::TermMidApprove.budget() + 0.5;
        }
        let end = chaos_secs - 0.5;
        loop {
            at += rng.between(0.5, 2.5);
            let replica = rng.below(replicas);
            let pause = ProcessFault::Pause {
                replica,
                secs: PAUSE_SECS,
            };
            let kill = ProcessFault::Kill {
                replica,
                down_secs: rng.between(0.2, 1.5),
            };
            let term = ProcessFault::Term {
                replica,
                down_secs: rng.between(0.2, 1.0),
            };
            let drawn = rng.weighted(&[(35, pause), (30, kill), (35, term)]);
            // What does not fit is replaced by the next kind that does (a kill, the shortest,
            // last); when nothing fits, the track ends.
            let Some(kind) = [drawn, term, pause, kill]
                .into_iter()
                .find(|k| at + k.budget() <= end)
            else {
                break;
            };
            processes.push(Episode { at, kind });
            at += kind.budget();
        }

        // The database track (PostgreSQL), after the term_mid_approve probe's window.
        let mut rng = stream(5);
        let mut database = Vec::new();
        if backend == Backend::Postgres {
            let mut at = 1.0 + ProcessFault::TermMidApprove.budget() + 0.5;
            loop {
                at += rng.between(0.5, 2.0);
                let kind = match rng.weighted(&[(25, 0), (25, 1), (30, 2), (20, 3)]) {
                    0 => DbFault::Restart {
                        down_secs: rng.between(0.5, 2.0),
                    },
                    1 => DbFault::Cut {
                        mode: CutMode::Refuse,
                        secs: rng.between(1.0, 3.0),
                    },
                    2 => DbFault::Cut {
                        mode: CutMode::Blackhole,
                        secs: rng.between(1.0, 3.0),
                    },
                    _ => DbFault::Cut {
                        mode: CutMode::Reset,
                        secs: 0.0,
                    },
                };
                if at + kind.budget() > end {
                    break;
                }
                database.push(Episode { at, kind });
                at += kind.budget();
            }
        }

        let mut rng = stream(6);
        let probes = Probes {
            deadline_edge: true,
            second_approval: true,
            ui_race_at: rng.between(0.5, (chaos_secs / 2.0).max(0.6)),
            term_mid_approve,
        };
        Self {
            seed,
            backend,
            chaos_secs,
            approval_timeout_secs: chaos_secs + SETTLE_SECS,
            workflows,
            circleci,
            ui_clicks,
            processes,
            database,
            probes,
        }
    }
}

/// Different backends get different plans from one seed.
fn backend_salt(backend: Backend) -> u64 {
    match backend {
        Backend::Sqlite => 0x5117_e000,
        Backend::Postgres => 0x9057_9000,
    }
}

impl fmt::Display for Plan {
    /// One line per fault episode: what a failing seed's log shows first.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "plan: seed {} on {}: {} workflows over {:.0} s of chaos, APPROVAL_TIMEOUT {:.0} s",
            self.seed,
            self.backend.name(),
            self.workflows.len(),
            self.chaos_secs,
            self.approval_timeout_secs
        )?;
        for e in &self.processes {
            writeln!(f, "  {:6.2} s  process  {:?}", e.at, e.kind)?;
        }
        for e in &self.database {
            writeln!(f, "  {:6.2} s  database {:?}", e.at, e.kind)?;
        }
        write!(
            f,
            "  {} CircleCI faults aimed at workflows, {} UI clicks; ui_race sent at {:.2} s",
            self.circleci.len(),
            self.ui_clicks.len(),
            self.probes.ui_race_at
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_always_makes_the_same_plan_and_another_seed_another() {
        for backend in [Backend::Sqlite, Backend::Postgres] {
            let a = Plan::new(7, backend, backend.ci_chaos_secs());
            let b = Plan::new(7, backend, backend.ci_chaos_secs());
            let c = Plan::new(8, backend, backend.ci_chaos_secs());
            assert_eq!(a, b);
            assert_ne!(a, c);
        }
    }

    #[test]
    fn the_generator_is_splitmix64() {
        // The reference sequence for seed 0 (Vigna's splitmix64.c): a plan replays across
        // library versions because this never changes.
        let mut rng = Rng::new(0);
        assert_eq!(rng.next_u64(), 0xe220_a839_7b1d_cdaf);
        assert_eq!(rng.next_u64(), 0x6e78_9e6a_a1b9_65f4);
    }

    #[test]
    fn every_fault_is_bounded_in_count_and_time_and_ends_before_the_drain() {
        for seed in 0..200 {
            for backend in [Backend::Sqlite, Backend::Postgres] {
                let chaos = backend.ci_chaos_secs();
                let plan = Plan::new(seed, backend, chaos);
                let mut end = 0.0;
                for e in &plan.processes {
                    assert!(e.at >= end, "seed {seed}: overlapping process episodes");
                    end = e.at + e.kind.budget();
                    assert!(
                        end <= chaos - 0.5,
                        "seed {seed}: {e:?} ends after the chaos"
                    );
                    if let ProcessFault::Pause { secs, .. } = e.kind {
                        assert!(secs > TASK_LEASE_SECS, "a pause shorter than the lease");
                    }
                }
                let mut end = 0.0;
                for e in &plan.database {
                    assert!(e.at >= end, "seed {seed}: overlapping database episodes");
                    end = e.at + e.kind.budget();
                    assert!(
                        end <= chaos - 0.5,
                        "seed {seed}: {e:?} ends after the chaos"
                    );
                }
                assert!(plan.processes.len() <= 8 && plan.database.len() <= 10);
                assert!(plan.circleci.len() <= plan.workflows.len());
                assert!(plan.circleci.iter().all(|f| f.at < chaos));
                assert!(plan.ui_clicks.iter().all(|c| c.at < chaos));
                for w in &plan.workflows {
                    assert!(w.send_at < chaos - 1.9 && w.replicas.len() == MAX_ATTEMPTS);
                    assert!(w.replicas.iter().all(|r| *r < backend.replicas()));
                    assert!(w.repeats.len() <= 3);
                }
            }
        }
    }

    #[test]
    fn the_database_track_and_the_shutdown_probe_are_postgresql_only() {
        for seed in 0..50 {
            let sqlite = Plan::new(seed, Backend::Sqlite, 16.0);
            assert!(sqlite.database.is_empty());
            assert!(!sqlite.probes.term_mid_approve);
            assert!(sqlite
                .processes
                .iter()
                .all(|e| e.kind != ProcessFault::TermMidApprove));
            let postgres = Plan::new(seed, Backend::Postgres, 22.0);
            assert_eq!(postgres.processes[0].kind, ProcessFault::TermMidApprove);
            // Its window is quiet on the database track.
            assert!(postgres
                .database
                .iter()
                .all(|e| e.at >= 1.0 + ProcessFault::TermMidApprove.budget()));
        }
    }

    #[test]
    fn the_ci_seeds_together_inject_every_kind_of_fault() {
        for backend in [Backend::Sqlite, Backend::Postgres] {
            let mut kinds = std::collections::BTreeSet::new();
            for seed in backend.ci_seeds() {
                let plan = Plan::new(*seed, backend, backend.ci_chaos_secs());
                kinds.extend(plan.processes.iter().map(|e| e.kind.label()));
                kinds.extend(plan.database.iter().map(|e| e.kind.label()));
                kinds.extend(plan.circleci.iter().map(|f| f.kind.label()));
            }
            let mut every = vec![
                "pause",
                "kill9",
                "cci_slow",
                "cci_429",
                "cci_5xx",
                "cci_lost_approve",
            ];
            match backend {
                Backend::Sqlite => every.push("term"),
                // A SIGTERM mid-step: the probe's.
                Backend::Postgres => every.extend([
                    "probe_term_mid_approve",
                    "db_restart",
                    "net_refuse",
                    "net_blackhole",
                    "net_reset",
                ]),
            }
            for kind in every {
                assert!(
                    kinds.contains(kind),
                    "{}: no {kind} in {kinds:?}",
                    backend.name()
                );
            }
        }
    }

    #[test]
    fn every_task_has_time_to_settle_before_its_deadline_once_the_faults_stop() {
        // A delivery accepted at any moment of the chaos phase is due no sooner than the
        // phase's end plus the time any task needs once faults stop.
        for backend in [Backend::Sqlite, Backend::Postgres] {
            let plan = Plan::new(1, backend, backend.ci_chaos_secs());
            assert!(plan.approval_timeout_secs >= plan.chaos_secs + SETTLE_SECS);
        }
    }
}
