//! The worker's decisions, as pure functions: what CircleCI showed, the task and the time go
//! in; the next step comes out. The worker does the I/O around them.
//!
//! A step is: read the workflow's jobs → [`next_step`] → maybe one call (approve or cancel)
//! → [`after_call`] → [`crate::domain::settle::settle`] (finish, or schedule the next step
//! within the deadline).

use std::time::Duration;

use crate::domain::ids::ApprovalRequestId;
use crate::domain::retry::RetryKind;
use crate::domain::task::{Outcome, TaskAction, TaskStatus};
use crate::domain::upstream::{Failure, UpstreamError};
use crate::domain::workflow::{HoldJobState, WorkflowView};

/// What the worker learned at the start of a step.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    pub action: TaskAction,
    pub hold_job_name: &'a str,
    pub view: &'a WorkflowView,
    /// None: every project is allowed.
    pub allowed_projects: Option<&'a [String]>,
    /// An earlier approve (or cancel) call of this task may have taken effect: it got a 2xx
    /// that was not stored, no answer, or a 5xx. Only looked up when the hold job shows the
    /// state that call would have left.
    pub our_call_may_have_landed: bool,
    /// The id of the user `CIRCLECI_TOKEN` belongs to (`GET /me`): an approve of ours shows
    /// it as the hold job's `approved_by`. Only looked up with `our_call_may_have_landed`.
    pub token_user: Option<&'a str>,
}

/// The next thing a step does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// `POST /workflow/{id}/approve/{approval_id}`.
    Approve(ApprovalRequestId),
    /// `POST /workflow/{id}/cancel`.
    Cancel,
    /// Nothing to call; the step ends with this.
    End(StepEnd),
}

/// How a step ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepEnd {
    /// The task is over.
    Done {
        status: TaskStatus,
        outcome: Outcome,
        detail: String,
    },
    /// Try again later.
    Retry {
        kind: RetryKind,
        retry_after: Option<Duration>,
        detail: String,
        /// An approve or cancel was sent (or noted as about to be) and its outcome is unknown:
        /// no answer, a 5xx, the step's time ran out, the process stopped.
        call_unknown: bool,
    },
}

impl StepEnd {
    pub(crate) fn succeeded(outcome: Outcome, detail: impl Into<String>) -> Self {
        Self::Done {
            status: TaskStatus::Succeeded,
            outcome,
            detail: detail.into(),
        }
    }

    pub(crate) fn failed(outcome: Outcome, detail: impl Into<String>) -> Self {
        Self::Done {
            status: TaskStatus::Failed,
            outcome,
            detail: detail.into(),
        }
    }

    pub(crate) fn poll(detail: impl Into<String>) -> Self {
        Self::Retry {
            kind: RetryKind::Poll,
            retry_after: None,
            detail: detail.into(),
            call_unknown: false,
        }
    }

    /// A failed CircleCI exchange while `doing` something: a refused token ends the task
    /// (retrying cannot help); anything else is retried after the error backoff.
    pub fn from_error(err: &UpstreamError, doing: &str) -> Self {
        if err.token_refused() {
            return Self::failed(
                Outcome::CircleciUnauthorized,
                format!("{err} while {doing}"),
            );
        }
        Self::Retry {
            kind: RetryKind::Error,
            retry_after: err.retry_after(),
            detail: format!("{err} while {doing}"),
            call_unknown: false,
        }
    }

    /// A call whose answer never came back in this step (its time ran out): it may have
    /// taken effect, so the job is re-read before anything else.
    pub fn call_unanswered(detail: impl Into<String>) -> Self {
        Self::Retry {
            kind: RetryKind::Error,
            retry_after: None,
            detail: detail.into(),
            call_unknown: true,
        }
    }

    /// A retry for a reason of our own (the store, a step that ran out of time).
    pub fn retry_error(detail: impl Into<String>) -> Self {
        Self::Retry {
            kind: RetryKind::Error,
            retry_after: None,
            detail: detail.into(),
            call_unknown: false,
        }
    }
}

/// Decides what to do after reading the workflow's jobs.
pub fn next_step(f: &Facts<'_>) -> Next {
    let name = f.hold_job_name;
    // The project check comes first: a foreign project's jobs are never touched.
    if let Some(allowed) = f.allowed_projects {
        match &f.view.project_slug {
            Some(slug) if allowed.iter().any(|a| same_project(a, slug)) => {}
            Some(slug) => {
                return Next::End(StepEnd::failed(
                    Outcome::ProjectNotAllowed,
                    format!("project {slug} is not in ALLOWED_PROJECTS"),
                ))
            }
            None if !f.view.has_jobs => {
                return Next::End(StepEnd::poll("the workflow has no jobs yet"))
            }
            None => {
                return Next::End(StepEnd::failed(
                    Outcome::ProjectNotAllowed,
                    "CircleCI did not say which project the workflow belongs to",
                ))
            }
        }
    }
    let state = f.view.hold.as_ref().map(|h| &h.state);
    match f.action {
        TaskAction::Approve => {
            let Some(hold) = &f.view.hold else {
                return Next::End(StepEnd::poll(format!(
                    "approval job {name:?} is not in the workflow (yet)"
                )));
            };
            match &hold.state {
                HoldJobState::OnHold => match hold.approval_id {
                    Some(id) => Next::Approve(id),
                    None => Next::End(StepEnd::failed(
                        Outcome::InvalidJob,
                        "the hold job has no usable approval_request_id or id",
                    )),
                },
                // Ours only if an earlier approve of this task may have landed (its answer was
                // lost) AND CircleCI says our token's user approved it: a click in the UI while
                // our call was unanswered is someone else's approval.
                HoldJobState::Approved if f.our_call_may_have_landed => {
                    approved_after_lost_answer(name, hold.approved_by.as_deref(), f.token_user)
                }
                HoldJobState::Approved => Next::End(StepEnd::succeeded(
                    Outcome::AlreadyApproved,
                    format!("hold job {name:?} was already approved (not by this service)"),
                )),
                HoldJobState::Canceled => Next::End(StepEnd::failed(
                    Outcome::HoldJobCanceled,
                    format!("hold job {name:?} is canceled; nothing to approve"),
                )),
                HoldJobState::Stopped(status) => Next::End(StepEnd::failed(
                    Outcome::HoldJobFailed,
                    format!("hold job {name:?} is {status}; nothing to approve"),
                )),
                HoldJobState::NotYet(status) => Next::End(StepEnd::poll(format!(
                    "hold job {name:?} is {status}, not on hold yet"
                ))),
            }
        }
        TaskAction::Cancel => match state {
            Some(HoldJobState::Approved) => Next::End(StepEnd::failed(
                Outcome::AlreadyApproved,
                "the hold job was already approved; the workflow is not canceled",
            )),
            Some(HoldJobState::Canceled) if f.our_call_may_have_landed => {
                Next::End(StepEnd::succeeded(
                    Outcome::Canceled,
                    "workflow canceled; confirmed by re-reading the job after the cancel call's \
                     answer was lost",
                ))
            }
            Some(s @ (HoldJobState::Canceled | HoldJobState::Stopped(_))) => {
                Next::End(StepEnd::succeeded(
                    Outcome::AlreadyStopped,
                    format!("the hold job is already {s}"),
                ))
            }
            _ => Next::Cancel,
        },
    }
}

/// The hold job shows approved after an approve of ours went unanswered: ours if CircleCI
/// names our token's user as the approver, someone else's if it names another user.
fn approved_after_lost_answer(
    name: &str,
    approved_by: Option<&str>,
    token_user: Option<&str>,
) -> Next {
    match (approved_by, token_user) {
        (Some(by), Some(us)) if by == us => Next::End(StepEnd::succeeded(
            Outcome::Approved,
            format!(
                "approved hold job {name:?}; confirmed by re-reading the job after the approve \
                 call's answer was lost (approved by this service's CircleCI user)"
            ),
        )),
        (Some(by), Some(_)) => Next::End(StepEnd::succeeded(
            Outcome::AlreadyApproved,
            format!(
                "hold job {name:?} was approved by another user ({by}), not by this service, \
                 while its own approve call went unanswered"
            ),
        )),
        // CircleCI names an approver but whose token this is is not known yet (GET /me has
        // not answered): ask again rather than guess.
        (Some(_), None) => Next::End(StepEnd::retry_error(
            "the hold job is approved, but whether by this service cannot be told yet: the \
             user of CIRCLECI_TOKEN is not known (GET /me)",
        )),
        // CircleCI does not say who approved it: the lost approve is the only explanation
        // this service can give.
        (None, _) => Next::End(StepEnd::succeeded(
            Outcome::Approved,
            format!(
                "approved hold job {name:?}; confirmed by re-reading the job after the approve \
                 call's answer was lost (CircleCI does not say who approved it)"
            ),
        )),
    }
}

/// How a step ends after its approve or cancel call answered `result`.
pub fn after_call(next: &Next, hold_job_name: &str, result: &Result<(), UpstreamError>) -> StepEnd {
    match (next, result) {
        (Next::Approve(id), Ok(())) => StepEnd::succeeded(
            Outcome::Approved,
            format!("approved hold job {hold_job_name:?} ({id})"),
        ),
        (Next::Approve(_), Err(e)) => {
            let mut end = StepEnd::from_error(e, "approving the hold job");
            if let StepEnd::Retry { call_unknown, .. } = &mut end {
                // A definite 4xx means it did not land; anything else may have.
                *call_unknown = !matches!(
                    e.failure,
                    Failure::Client { .. }
                        | Failure::NotFound
                        | Failure::RateLimited { .. }
                        | Failure::InvalidRequest(_)
                );
            }
            end
        }
        (Next::Cancel, Ok(())) => StepEnd::succeeded(Outcome::Canceled, "workflow canceled"),
        (
            Next::Cancel,
            Err(UpstreamError {
                failure: Failure::Client { status, message },
                ..
            }),
        ) => StepEnd::failed(
            Outcome::CancelRefused,
            format!("CircleCI refused to cancel (HTTP {status}): {message}"),
        ),
        (Next::Cancel, Err(e)) => {
            let mut end = StepEnd::from_error(e, "canceling the workflow");
            if let StepEnd::Retry { call_unknown, .. } = &mut end {
                *call_unknown = !matches!(
                    e.failure,
                    Failure::NotFound | Failure::RateLimited { .. } | Failure::InvalidRequest(_)
                );
            }
            end
        }
        (Next::End(end), _) => end.clone(),
    }
}

/// Project slugs compare case-insensitively, with the long VCS names CircleCI also accepts
/// (`github/acme/api` is `gh/acme/api`, `bitbucket/…` is `bb/…`).
pub fn same_project(a: &str, b: &str) -> bool {
    fn normal(slug: &str) -> String {
        let slug = slug.trim().to_ascii_lowercase();
        for (long, short) in [("github/", "gh/"), ("bitbucket/", "bb/")] {
            if let Some(rest) = slug.strip_prefix(long) {
                return format!("{short}{rest}");
            }
        }
        slug
    }
    normal(a) == normal(b)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::domain::workflow::HoldJob;

    const NAME: &str = "wait_for_sym_approval";
    const ID: &str = "0f9e8d7c-aaaa-4bbb-8ccc-ddddeeeeffff";

    fn view(state: Option<HoldJobState>) -> WorkflowView {
        WorkflowView {
            hold: state.map(|state| HoldJob {
                state,
                approval_id: Some(ID.parse().unwrap()),
                job_id: None,
                job_number: Some(7),
                project_slug: Some("gh/acme/api".into()),
                approved_by: None,
            }),
            project_slug: Some("gh/acme/api".into()),
            has_jobs: true,
        }
    }

    fn facts<'a>(action: TaskAction, view: &'a WorkflowView) -> Facts<'a> {
        Facts {
            action,
            hold_job_name: NAME,
            view,
            allowed_projects: None,
            our_call_may_have_landed: false,
            token_user: None,
        }
    }

    fn outcome(next: Next) -> Outcome {
        match next {
            Next::End(StepEnd::Done { outcome, .. }) => outcome,
            other => panic!("expected a final step, got {other:?}"),
        }
    }

    fn is_poll(next: &Next) -> bool {
        matches!(
            next,
            Next::End(StepEnd::Retry {
                kind: RetryKind::Poll,
                ..
            })
        )
    }

    #[test]
    fn a_hold_job_on_hold_is_approved_by_its_approval_id() {
        let v = view(Some(HoldJobState::OnHold));
        assert_eq!(
            next_step(&facts(TaskAction::Approve, &v)),
            Next::Approve(ID.parse().unwrap())
        );
    }

    #[test]
    fn a_hold_job_without_an_approval_id_is_an_invalid_job() {
        let mut v = view(Some(HoldJobState::OnHold));
        v.hold.as_mut().unwrap().approval_id = None;
        assert_eq!(
            outcome(next_step(&facts(TaskAction::Approve, &v))),
            Outcome::InvalidJob
        );
    }

    #[test]
    fn an_approved_hold_job_is_ours_only_if_our_approve_may_have_landed_and_we_approved_it() {
        let mut v = view(Some(HoldJobState::Approved));
        v.hold.as_mut().unwrap().approved_by = Some("bot".into());
        let mut f = facts(TaskAction::Approve, &v);
        f.token_user = Some("bot");
        assert_eq!(outcome(next_step(&f)), Outcome::AlreadyApproved);
        f.our_call_may_have_landed = true;
        assert_eq!(outcome(next_step(&f)), Outcome::Approved);
    }

    #[test]
    fn a_ui_click_while_our_approve_was_unanswered_is_someone_elses_approval() {
        let mut v = view(Some(HoldJobState::Approved));
        v.hold.as_mut().unwrap().approved_by = Some("mallory".into());
        let mut f = facts(TaskAction::Approve, &v);
        f.our_call_may_have_landed = true;
        f.token_user = Some("bot");
        assert_eq!(outcome(next_step(&f)), Outcome::AlreadyApproved);
        // Whose token this is not known yet: ask again, do not guess.
        f.token_user = None;
        assert!(matches!(
            next_step(&f),
            Next::End(StepEnd::Retry {
                kind: RetryKind::Error,
                ..
            })
        ));
        // CircleCI names no approver: the lost approve is the only explanation.
        let mut anonymous = v.clone();
        anonymous.hold.as_mut().unwrap().approved_by = None;
        let f = Facts {
            view: &anonymous,
            ..f
        };
        assert_eq!(outcome(next_step(&f)), Outcome::Approved);
    }

    #[test]
    fn a_canceled_hold_job_is_our_cancel_only_if_it_may_have_landed() {
        let v = view(Some(HoldJobState::Canceled));
        let mut f = facts(TaskAction::Cancel, &v);
        assert_eq!(outcome(next_step(&f)), Outcome::AlreadyStopped);
        f.our_call_may_have_landed = true;
        assert_eq!(outcome(next_step(&f)), Outcome::Canceled);
    }

    #[test]
    fn missing_or_not_yet_held_jobs_are_polled() {
        for v in [
            view(None),
            view(Some(HoldJobState::NotYet("blocked".into()))),
        ] {
            assert!(is_poll(&next_step(&facts(TaskAction::Approve, &v))));
        }
    }

    #[test]
    fn canceled_and_failed_hold_jobs_end_the_task() {
        let v = view(Some(HoldJobState::Canceled));
        assert_eq!(
            outcome(next_step(&facts(TaskAction::Approve, &v))),
            Outcome::HoldJobCanceled
        );
        let v = view(Some(HoldJobState::Stopped("failed".into())));
        assert_eq!(
            outcome(next_step(&facts(TaskAction::Approve, &v))),
            Outcome::HoldJobFailed
        );
    }

    #[test]
    fn foreign_projects_are_never_touched() {
        let v = view(Some(HoldJobState::OnHold));
        let allowed = vec!["gh/acme/web".to_owned()];
        let mut f = facts(TaskAction::Approve, &v);
        f.allowed_projects = Some(&allowed);
        assert_eq!(outcome(next_step(&f)), Outcome::ProjectNotAllowed);
        f.action = TaskAction::Cancel;
        assert_eq!(outcome(next_step(&f)), Outcome::ProjectNotAllowed);

        let allowed = vec!["github/ACME/api".to_owned()];
        f.allowed_projects = Some(&allowed);
        assert_eq!(next_step(&f), Next::Cancel);
    }

    #[test]
    fn an_unknown_project_is_polled_while_there_are_no_jobs_and_refused_after() {
        let allowed = vec!["gh/acme/api".to_owned()];
        let empty = WorkflowView::default();
        let mut f = facts(TaskAction::Approve, &empty);
        f.allowed_projects = Some(&allowed);
        assert!(is_poll(&next_step(&f)));
        let anonymous = WorkflowView {
            has_jobs: true,
            ..WorkflowView::default()
        };
        f.view = &anonymous;
        assert_eq!(outcome(next_step(&f)), Outcome::ProjectNotAllowed);
    }

    #[test]
    fn cancel_stops_a_running_workflow_but_not_an_approved_or_stopped_one() {
        for state in [
            None,
            Some(HoldJobState::OnHold),
            Some(HoldJobState::NotYet("blocked".into())),
        ] {
            let v = view(state);
            assert_eq!(next_step(&facts(TaskAction::Cancel, &v)), Next::Cancel);
        }
        let v = view(Some(HoldJobState::Approved));
        assert_eq!(
            outcome(next_step(&facts(TaskAction::Cancel, &v))),
            Outcome::AlreadyApproved
        );
        let v = view(Some(HoldJobState::Canceled));
        assert_eq!(
            outcome(next_step(&facts(TaskAction::Cancel, &v))),
            Outcome::AlreadyStopped
        );
    }

    #[test]
    fn call_answers_end_the_step() {
        let approve = Next::Approve(ID.parse().unwrap());
        assert!(matches!(
            after_call(&approve, NAME, &Ok(())),
            StepEnd::Done {
                outcome: Outcome::Approved,
                ..
            }
        ));
        // No answer: may have landed. A 4xx: did not.
        assert!(matches!(
            after_call(
                &approve,
                NAME,
                &Err(UpstreamError::circleci(Failure::Timeout))
            ),
            StepEnd::Retry {
                kind: RetryKind::Error,
                call_unknown: true,
                ..
            }
        ));
        let refused = UpstreamError::circleci(Failure::Client {
            status: 400,
            message: "no".into(),
        });
        assert!(matches!(
            after_call(&approve, NAME, &Err(refused.clone())),
            StepEnd::Retry {
                call_unknown: false,
                ..
            }
        ));
        assert!(matches!(
            after_call(
                &approve,
                NAME,
                &Err(UpstreamError::circleci(Failure::Unauthorized))
            ),
            StepEnd::Done {
                outcome: Outcome::CircleciUnauthorized,
                ..
            }
        ));
        assert!(matches!(
            after_call(&Next::Cancel, NAME, &Ok(())),
            StepEnd::Done {
                outcome: Outcome::Canceled,
                ..
            }
        ));
        assert!(matches!(
            after_call(&Next::Cancel, NAME, &Err(refused)),
            StepEnd::Done {
                outcome: Outcome::CancelRefused,
                status: TaskStatus::Failed,
                ..
            }
        ));
        let limited = UpstreamError::circleci(Failure::RateLimited {
            retry_after: Some(Duration::from_secs(7)),
        });
        assert!(matches!(
            after_call(&Next::Cancel, NAME, &Err(limited)),
            StepEnd::Retry { retry_after: Some(d), .. } if d == Duration::from_secs(7)
        ));
    }

    #[test]
    fn project_slugs_match_case_insensitively_and_by_long_vcs_name() {
        assert!(same_project("gh/Acme/API", "gh/acme/api"));
        assert!(same_project("github/acme/api", "gh/acme/api"));
        assert!(same_project("bb/acme/api", "bitbucket/acme/api"));
        assert!(!same_project("gh/acme/api", "gh/acme/api-evil"));
        assert!(!same_project("gh/acme/api", "bb/acme/api"));
    }
}
