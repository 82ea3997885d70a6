//! Which workflow and hold job a Sym run was requested for, as Sym signed it.
//!
//! A gate names a Sym run; whoever registers it (a CircleCI job) could name any run, even one
//! approved yesterday for another deploy. So the reconciler releases a gate only when its run
//! is *bound* to that very workflow and hold job by data Sym signed: the flow's `request` event
//! (sent by its `after_request` hook, signed with the webhook secret), an `approve`, `deny` or
//! `expire` event of the same run, or Sym's own answer for the run when it carries the
//! request's fields. The first binding of a run stands; a run belongs to one workflow and hold
//! job.

use crate::domain::ids::WorkflowId;

/// Where a run's binding came from (stored as text).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BindingSource {
    /// The flow's `request` event (its `after_request` hook).
    Request,
    /// An `approve` event of the run.
    Approve,
    /// A `deny` event of the run.
    Deny,
    /// An `expire` event of the run.
    Expire,
    /// Sym's answer to `GET /runs/{run_id}`, carrying the request's fields.
    SymApi,
}
text_enum!(BindingSource {
    Request => "request",
    Approve => "approve",
    Deny => "deny",
    Expire => "expire",
    SymApi => "sym_api",
});

/// A run bound to the workflow and hold job it was requested for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunBinding {
    /// The run id as the store keys it ([`run_key`]).
    pub run_key: String,
    pub workflow_id: WorkflowId,
    /// The hold job the request names (the service's default when it names none).
    pub hold_job_name: String,
    pub source: BindingSource,
}

/// A run id as bindings and gates are keyed: trimmed and lowercased (Sym's SDK lowercases
/// every SRN component, so the id in an event's SRN is lowercase whatever the API returned).
pub fn run_key(run_id: &str) -> String {
    run_id.trim().to_ascii_lowercase()
}

/// How a gate stands with its run's binding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BindingCheck {
    /// The run was requested for this gate's workflow and hold job.
    Bound,
    /// Nothing Sym signed binds the run yet (its `request` event may still be on its way).
    Unbound,
    /// The run was requested for another workflow or hold job: this gate is never released
    /// by it.
    Elsewhere,
}

/// The gate (`workflow`, `hold_job`) against its run's binding, if any.
pub fn check(
    workflow: WorkflowId,
    hold_job: &str,
    binding: Option<(WorkflowId, &str)>,
) -> BindingCheck {
    match binding {
        None => BindingCheck::Unbound,
        Some((w, h)) if w == workflow && h == hold_job => BindingCheck::Bound,
        Some(_) => BindingCheck::Elsewhere,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_gate_is_bound_only_to_its_own_workflow_and_hold_job() {
        let a: WorkflowId = "7b2d6c1e-8f3a-4b5c-9d0e-1f2a3b4c5d6e".parse().unwrap();
        let b: WorkflowId = "0f9e8d7c-aaaa-4bbb-8ccc-ddddeeeeffff".parse().unwrap();
        assert_eq!(check(a, "prod", Some((a, "prod"))), BindingCheck::Bound);
        assert_eq!(check(a, "prod", None), BindingCheck::Unbound);
        assert_eq!(check(b, "prod", Some((a, "prod"))), BindingCheck::Elsewhere);
        assert_eq!(
            check(a, "staging", Some((a, "prod"))),
            BindingCheck::Elsewhere
        );
    }

    #[test]
    fn run_keys_ignore_case_and_surrounding_space() {
        assert_eq!(run_key(" ABC-def "), "abc-def");
        for s in BindingSource::ALL {
            assert_eq!(BindingSource::parse(s.as_str()), Some(*s));
        }
    }
}
