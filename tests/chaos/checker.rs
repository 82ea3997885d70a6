//! The checker: a pure function over a run's recorded history (what was delivered and
//! answered, every approve call CircleCI received, the hold jobs and the verdicts at the end,
//! the tasks as the audit API lists them). It asserts the four rules of issue 18 and counts
//! the figures a run prints.
//!
//! 1. every delivery answered 2xx ends with its hold job approved (a *lost approval*
//!    otherwise, counted per workflow);
//! 2. no approve call reaches a hold job that is already approved (a *duplicate approve call*).
//!    One that meets a hold job someone approved in the UI between the service's read and its
//!    approve is a race with a person, not a second approve of the service's: counted apart,
//!    not a violation;
//! 3. the verdict agrees with CircleCI: `approved` exactly when the hold job was approved by
//!    this service's token user (an approval clicked in the UI is not the service's);
//! 4. no task is left pending.

use std::collections::{BTreeMap, HashMap};
use std::fmt::{self, Write as _};

use uuid::Uuid;

/// A workflow of the run, as it ended.
#[derive(Debug, Clone)]
pub struct WorkflowRecord {
    pub id: Uuid,
    /// `normal`, or the probe it is (`deadline_edge`, …).
    pub role: &'static str,
    pub hold: HoldRecord,
    /// `GET /v1/verdicts/{id}`'s `verdict`; Err: what went wrong asking.
    pub verdict: Result<String, String>,
}

/// The hold job at CircleCI at the end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HoldRecord {
    pub status: String,
    /// `approved_by` is the service's token user.
    pub approved_by_us: bool,
}

impl HoldRecord {
    pub fn approved(&self) -> bool {
        self.status == "success"
    }
}

/// One attempt to deliver one webhook.
#[derive(Debug, Clone)]
pub struct DeliveryRecord {
    pub workflow: Uuid,
    /// `original`, `same_webhook_id`, `same_sym_event`, `second_approval`.
    pub kind: &'static str,
    pub webhook_id: String,
    pub sym_event_id: String,
    /// Seconds from the run's start.
    pub at: f64,
    pub answer: Answer,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// An HTTP answer and the body's `status` (`queued`, `duplicate`, …) when there is one.
    Http { code: u16, status: Option<String> },
    /// No answer (refused, reset, timed out, replica down).
    None(String),
}

impl Answer {
    pub fn is_2xx(&self) -> bool {
        matches!(self, Self::Http { code, .. } if (200..300).contains(code))
    }
}

/// One approve call CircleCI received.
#[derive(Debug, Clone)]
pub struct ApproveCall {
    pub workflow: Uuid,
    pub at: f64,
    pub status: u16,
    pub fault: Option<&'static str>,
    /// The hold job was already approved when this approve reached it, and by whom.
    pub found_approved: Option<ApprovedBy>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApprovedBy {
    /// The service's token user.
    Service,
    /// Anyone else (a click in the UI).
    Other,
}

/// One task, as the audit API lists it.
#[derive(Debug, Clone)]
pub struct TaskRecord {
    pub workflow: Option<Uuid>,
    pub status: String,
    pub outcome: Option<String>,
    pub detail: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct History {
    pub workflows: Vec<WorkflowRecord>,
    pub deliveries: Vec<DeliveryRecord>,
    pub approve_calls: Vec<ApproveCall>,
    pub tasks: Vec<TaskRecord>,
    /// Faults injected, by kind.
    pub faults: BTreeMap<&'static str, usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Rule {
    LostApproval,
    DuplicateApprove,
    VerdictMismatch,
    PendingTask,
}

impl Rule {
    pub fn describe(self) -> &'static str {
        match self {
            Self::LostApproval => "every delivery answered 2xx ends with its hold job approved",
            Self::DuplicateApprove => "no approve call reaches a hold job that is already approved",
            Self::VerdictMismatch => "the verdict agrees with CircleCI",
            Self::PendingTask => "no task is left pending",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Violation {
    pub rule: Rule,
    pub workflow: Option<Uuid>,
    pub role: &'static str,
    pub detail: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Figures {
    pub workflows: usize,
    pub deliveries: usize,
    pub deliveries_2xx: usize,
    pub deliveries_other: usize,
    pub lost_approvals: usize,
    pub duplicate_approve_calls: usize,
    /// Approve calls that met a hold job approved in the UI meanwhile (not a violation).
    pub approves_after_ui_approval: usize,
    pub verdict_mismatches: usize,
    pub pending_tasks: usize,
}

#[derive(Debug, Clone)]
pub struct Report {
    pub figures: Figures,
    pub faults: BTreeMap<&'static str, usize>,
    pub violations: Vec<Violation>,
}

impl Report {
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }

    /// The rules broken, each once.
    pub fn rules_broken(&self) -> Vec<Rule> {
        let mut rules: Vec<Rule> = self.violations.iter().map(|v| v.rule).collect();
        rules.sort();
        rules.dedup();
        rules
    }
}

/// Checks the four rules over a run's history.
pub fn check(h: &History) -> Report {
    let role_of: HashMap<Uuid, &'static str> = h.workflows.iter().map(|w| (w.id, w.role)).collect();
    let role = |id: &Uuid| role_of.get(id).copied().unwrap_or("unknown");
    let mut violations = Vec::new();

    // 1. Lost approvals: a 2xx delivery whose hold job never got approved.
    let mut lost = 0;
    for w in &h.workflows {
        let answered: Vec<&DeliveryRecord> = h
            .deliveries
            .iter()
            .filter(|d| d.workflow == w.id && d.answer.is_2xx())
            .collect();
        if !answered.is_empty() && !w.hold.approved() {
            lost += 1;
            violations.push(Violation {
                rule: Rule::LostApproval,
                workflow: Some(w.id),
                role: w.role,
                detail: format!(
                    "{} deliveries answered 2xx, the hold job ended {}",
                    answered.len(),
                    w.hold.status
                ),
            });
        }
    }

    // 2. Approve calls that reached a hold job already approved.
    let duplicates: Vec<&ApproveCall> = h
        .approve_calls
        .iter()
        .filter(|c| c.found_approved == Some(ApprovedBy::Service))
        .collect();
    for call in &duplicates {
        violations.push(Violation {
            rule: Rule::DuplicateApprove,
            workflow: Some(call.workflow),
            role: role(&call.workflow),
            detail: format!(
                "an approve at {:.2} s (answered {}) reached the hold job already approved",
                call.at, call.status
            ),
        });
    }

    // 3. The verdict against CircleCI.
    let mut mismatches = 0;
    for w in &h.workflows {
        let ours = w.hold.approved() && w.hold.approved_by_us;
        let says_approved = w.verdict.as_deref() == Ok("approved");
        if ours != says_approved || w.verdict.is_err() {
            mismatches += 1;
            let circleci = match (w.hold.approved(), w.hold.approved_by_us) {
                (true, true) => "approved by this service's token user".to_owned(),
                (true, false) => "approved by someone else (the UI)".to_owned(),
                _ => format!("{} (not approved)", w.hold.status),
            };
            violations.push(Violation {
                rule: Rule::VerdictMismatch,
                workflow: Some(w.id),
                role: w.role,
                detail: format!("verdict {:?}, CircleCI: hold job {circleci}", w.verdict),
            });
        }
    }

    // 4. Pending tasks.
    let pending: Vec<&TaskRecord> = h.tasks.iter().filter(|t| t.status == "pending").collect();
    for task in &pending {
        violations.push(Violation {
            rule: Rule::PendingTask,
            workflow: task.workflow,
            role: task.workflow.as_ref().map_or("unknown", role),
            detail: format!(
                "still pending: {}",
                task.detail.as_deref().unwrap_or("(no detail)")
            ),
        });
    }

    let deliveries_2xx = h.deliveries.iter().filter(|d| d.answer.is_2xx()).count();
    Report {
        figures: Figures {
            workflows: h.workflows.len(),
            deliveries: h.deliveries.len(),
            deliveries_2xx,
            deliveries_other: h.deliveries.len() - deliveries_2xx,
            lost_approvals: lost,
            duplicate_approve_calls: duplicates.len(),
            approves_after_ui_approval: h
                .approve_calls
                .iter()
                .filter(|c| c.found_approved == Some(ApprovedBy::Other))
                .count(),
            verdict_mismatches: mismatches,
            pending_tasks: pending.len(),
        },
        faults: h.faults.clone(),
        violations,
    }
}

/// What the history shows about one workflow: its deliveries, approve calls, tasks, hold
/// job and verdict (printed under each violation).
pub fn story(h: &History, workflow: Uuid) -> String {
    let mut out = String::new();
    for d in h.deliveries.iter().filter(|d| d.workflow == workflow) {
        let answer = match &d.answer {
            Answer::Http { code, status } => {
                format!("{code} {}", status.as_deref().unwrap_or(""))
            }
            Answer::None(why) => format!("no answer ({why})"),
        };
        let _ = writeln!(
            out,
            "      delivery {:6.2} s {:16} sym {} webhook {}: {answer}",
            d.at, d.kind, d.sym_event_id, d.webhook_id
        );
    }
    for c in h.approve_calls.iter().filter(|c| c.workflow == workflow) {
        let _ = writeln!(
            out,
            "      approve  {:6.2} s answered {} fault {} {}",
            c.at,
            c.status,
            c.fault.unwrap_or("-"),
            match c.found_approved {
                Some(ApprovedBy::Service) => "FOUND THE HOLD JOB ALREADY APPROVED BY THE SERVICE",
                Some(ApprovedBy::Other) => "found the hold job approved in the UI",
                None => "",
            }
        );
    }
    for t in h.tasks.iter().filter(|t| t.workflow == Some(workflow)) {
        let _ = writeln!(
            out,
            "      task     {} {}: {}",
            t.status,
            t.outcome.as_deref().unwrap_or("-"),
            t.detail.as_deref().unwrap_or("")
        );
    }
    if let Some(w) = h.workflows.iter().find(|w| w.id == workflow) {
        let _ = writeln!(
            out,
            "      end      hold job {} (by this service: {}), verdict {:?}",
            w.hold.status, w.hold.approved_by_us, w.verdict
        );
    }
    out
}

impl fmt::Display for Figures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "workflows {} | deliveries {} (2xx {}, other {}) | lost approvals {} | duplicate \
             approve calls {} | verdict mismatches {} | pending tasks left {} | approves that met \
             a UI approval {}",
            self.workflows,
            self.deliveries,
            self.deliveries_2xx,
            self.deliveries_other,
            self.lost_approvals,
            self.duplicate_approve_calls,
            self.verdict_mismatches,
            self.pending_tasks,
            self.approves_after_ui_approval
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workflow(id: Uuid, status: &str, by_us: bool, verdict: &str) -> WorkflowRecord {
        WorkflowRecord {
            id,
            role: "normal",
            hold: HoldRecord {
                status: status.to_owned(),
                approved_by_us: by_us,
            },
            verdict: Ok(verdict.to_owned()),
        }
    }

    fn delivery(id: Uuid, code: u16) -> DeliveryRecord {
        DeliveryRecord {
            workflow: id,
            kind: "original",
            webhook_id: "msg_1".to_owned(),
            sym_event_id: "evt".to_owned(),
            at: 1.0,
            answer: Answer::Http { code, status: None },
        }
    }

    fn approve(id: Uuid, found_approved: Option<ApprovedBy>) -> ApproveCall {
        ApproveCall {
            workflow: id,
            at: 2.0,
            status: if found_approved.is_some() { 400 } else { 202 },
            fault: None,
            found_approved,
        }
    }

    fn task(id: Uuid, status: &str) -> TaskRecord {
        TaskRecord {
            workflow: Some(id),
            status: status.to_owned(),
            outcome: Some("approved".to_owned()),
            detail: None,
        }
    }

    /// One workflow that went right: delivered, approved once, verdict approved, task done.
    fn clean() -> (Uuid, History) {
        let id = Uuid::new_v4();
        let history = History {
            workflows: vec![workflow(id, "success", true, "approved")],
            deliveries: vec![delivery(id, 503), delivery(id, 202), delivery(id, 200)],
            approve_calls: vec![approve(id, None)],
            tasks: vec![task(id, "succeeded")],
            faults: BTreeMap::from([("kill9", 1)]),
        };
        (id, history)
    }

    #[test]
    fn a_clean_history_passes_and_its_figures_add_up() {
        let (_, history) = clean();

        let report = check(&history);

        assert!(report.passed(), "{:?}", report.violations);
        assert_eq!(
            report.figures,
            Figures {
                workflows: 1,
                deliveries: 3,
                deliveries_2xx: 2,
                deliveries_other: 1,
                ..Figures::default()
            }
        );
        assert_eq!(report.faults["kill9"], 1);
    }

    #[test]
    fn a_2xx_delivery_whose_hold_job_stays_on_hold_is_a_lost_approval() {
        let (id, mut history) = clean();
        history.workflows[0] = workflow(id, "on_hold", false, "not_approved");
        history.approve_calls.clear();

        let report = check(&history);

        assert_eq!(report.rules_broken(), vec![Rule::LostApproval]);
        assert_eq!(report.figures.lost_approvals, 1);
    }

    #[test]
    fn a_workflow_whose_deliveries_all_failed_may_stay_unapproved() {
        let id = Uuid::new_v4();
        let history = History {
            workflows: vec![workflow(id, "on_hold", false, "not_approved")],
            deliveries: vec![DeliveryRecord {
                answer: Answer::None("timed out".to_owned()),
                ..delivery(id, 0)
            }],
            ..History::default()
        };

        assert!(check(&history).passed());
    }

    #[test]
    fn an_approve_that_finds_the_hold_job_approved_by_the_service_is_a_duplicate_call() {
        let (id, mut history) = clean();
        history
            .approve_calls
            .push(approve(id, Some(ApprovedBy::Service)));

        let report = check(&history);

        assert_eq!(report.rules_broken(), vec![Rule::DuplicateApprove]);
        assert_eq!(report.figures.duplicate_approve_calls, 1);
    }

    #[test]
    fn an_approve_that_meets_a_ui_approval_is_counted_but_no_violation() {
        // Someone clicked Approve between the service's read and its approve.
        let (id, mut history) = clean();
        history.workflows[0] = workflow(id, "success", false, "not_approved");
        history.approve_calls = vec![approve(id, Some(ApprovedBy::Other))];

        let report = check(&history);

        assert!(report.passed(), "{:?}", report.violations);
        assert_eq!(report.figures.approves_after_ui_approval, 1);
    }

    #[test]
    fn a_timed_out_verdict_for_a_hold_job_the_service_approved_is_a_mismatch() {
        let (id, mut history) = clean();
        history.workflows[0] = workflow(id, "success", true, "not_approved");

        let report = check(&history);

        assert_eq!(report.rules_broken(), vec![Rule::VerdictMismatch]);
        assert_eq!(report.figures.verdict_mismatches, 1);
    }

    #[test]
    fn an_approved_verdict_for_a_hold_job_approved_in_the_ui_is_a_mismatch() {
        let (id, mut history) = clean();
        history.workflows[0] = workflow(id, "success", false, "approved");

        assert_eq!(check(&history).rules_broken(), vec![Rule::VerdictMismatch]);
    }

    #[test]
    fn a_ui_approval_with_a_not_approved_verdict_agrees() {
        let (id, mut history) = clean();
        history.workflows[0] = workflow(id, "success", false, "not_approved");

        assert!(check(&history).passed());
    }

    #[test]
    fn a_verdict_that_could_not_be_read_is_a_mismatch() {
        let (_, mut history) = clean();
        history.workflows[0].verdict = Err("connection refused".to_owned());

        assert_eq!(check(&history).rules_broken(), vec![Rule::VerdictMismatch]);
    }

    #[test]
    fn a_pending_task_at_the_end_is_reported() {
        let (id, mut history) = clean();
        history.tasks.push(task(id, "pending"));

        let report = check(&history);

        assert_eq!(report.rules_broken(), vec![Rule::PendingTask]);
        assert_eq!(report.figures.pending_tasks, 1);
    }

    #[test]
    fn the_story_of_a_workflow_shows_its_deliveries_calls_task_and_end() {
        let (id, mut history) = clean();
        history
            .approve_calls
            .push(approve(id, Some(ApprovedBy::Service)));

        let story = story(&history, id);

        assert_eq!(story.matches("delivery").count(), 3);
        assert!(story.contains("FOUND THE HOLD JOB ALREADY APPROVED BY THE SERVICE"));
        assert!(story.contains("task     succeeded approved"));
        assert!(story.contains("verdict Ok(\"approved\")"));
    }
}
