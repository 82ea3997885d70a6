//! The verdict flow: what a deploy job's verdict needs from the store and (for a workflow with
//! no approval of its own) from CircleCI, gathered around the decisions of `domain::verdict`.

use crate::domain::ids::WorkflowId;
use crate::domain::task::TaskRules;
use crate::domain::verdict::{self, Verdict};
use crate::domain::workflow::WorkflowInfo;
use crate::outbound::circleci::lookups::{LookupError, WorkflowLookups};
use crate::store::{Store, StoreError};

/// Why no verdict could be given now (the caller should ask again).
#[derive(Debug, thiserror::Error)]
pub enum VerdictError {
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Lookup(#[from] LookupError),
}

/// Gives verdicts. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Verdicts {
    store: Store,
    lookups: WorkflowLookups,
    rules: std::sync::Arc<TaskRules>,
}

impl Verdicts {
    pub fn new(store: Store, lookups: WorkflowLookups, rules: std::sync::Arc<TaskRules>) -> Self {
        Self {
            store,
            lookups,
            rules,
        }
    }

    /// The verdict on `workflow`'s hold job `hold_job`. `known` is the workflow as CircleCI
    /// described it, when the caller check already read it (saves a lookup).
    pub async fn verdict(
        &self,
        workflow: WorkflowId,
        hold_job: &str,
        known: Option<WorkflowInfo>,
    ) -> Result<Verdict, VerdictError> {
        let default_hold = self.rules.default_hold_job();
        let records = self
            .store
            .approvals_of_workflow(workflow, Some(hold_job), default_hold)
            .await?;
        let id = workflow.to_string();
        if let Some(verdict) = verdict::from_own_records(&id, &records) {
            return Ok(verdict);
        }
        // No approval of its own: is it a rerun of an approved workflow of its pipeline?
        let info = match known {
            Some(info) => info,
            None => match self.lookups.workflow(workflow).await? {
                Some(info) => info,
                None => return Ok(verdict::for_rerun(&id, None, None)),
            },
        };
        let original = self
            .store
            .approved_in_pipeline(&info.pipeline_id, &info.name, Some(hold_job), default_hold)
            .await?;
        let Some(original) = original else {
            return Ok(verdict::for_rerun(&id, None, None));
        };
        let hold = self.lookups.hold_job(workflow, hold_job).await?;
        Ok(verdict::for_rerun(&id, Some(&original), hold.as_ref()))
    }
}
