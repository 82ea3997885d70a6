//! Ids that must not be mixed up. Each is stored as text and converted once, at the store
//! boundary ([`std::fmt::Display`] to write, [`std::str::FromStr`] to read).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            /// A new id that sorts after the ids made before it (UUIDv7: a millisecond
            /// timestamp, then random bits). Rows keyed by such ids are appended to the end of
            /// their index instead of landing on a random page of it, so a batch of inserts
            /// dirties (and writes to disk) a few pages, not one per row.
            pub fn new_random() -> Self {
                Self(Uuid::now_v7())
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl FromStr for $name {
            type Err = uuid::Error;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::try_parse(s.trim()).map(Self)
            }
        }

        impl From<Uuid> for $name {
            fn from(id: Uuid) -> Self {
                Self(id)
            }
        }
    };
}

uuid_id!(
    /// A CircleCI workflow (`$CIRCLE_WORKFLOW_ID`).
    WorkflowId
);
uuid_id!(
    /// What CircleCI's approve endpoint takes: the hold job's `approval_request_id` (or its
    /// job id, which CircleCI also accepts).
    ApprovalRequestId
);
uuid_id!(
    /// One stored webhook delivery (what `POST /webhooks/sym` answers with).
    DeliveryId
);
uuid_id!(
    /// One task: the work a delivery asked for.
    TaskId
);

/// One claim of a task. Every write of a step is guarded by it, so a process whose lease ran
/// out cannot overwrite what the next holder does.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LeaseToken(String);

impl LeaseToken {
    /// A fresh token for a claim by `owner` (the process).
    pub fn new(owner: &str) -> Self {
        Self(format!("{owner}/{}", Uuid::new_v4().simple()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for LeaseToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
