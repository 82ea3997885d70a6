//! A Sym run as the reconciler sees it: its status, and the request's fields when Sym's answer
//! carries them. The adapter (`outbound::sym_api`) reads Sym's words into these.

/// Where a Sym run is.
///
/// Only `approved` and `escalated` are documented (the orb's `validate` accepts exactly those
/// two). `denied` and `expired` are this service's reading of Sym's `deny` and
/// `request_expire` events; any other word (e.g. `requested`) means the run is still open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunStatus {
    /// `approved`: the request was approved.
    Approved,
    /// `escalated`: approved and access granted (the orb treats it as approved too).
    Escalated,
    /// `denied` (or `deny`): final, not approved.
    Denied,
    /// `expired` (or `request_expire`): final, not approved.
    Expired,
    /// Any other status, kept as Sym wrote it (truncated): not decided yet.
    Open(String),
}

impl RunStatus {
    /// Does this status release the gate? True for `approved` and `escalated` only.
    pub fn is_approved(&self) -> bool {
        matches!(self, Self::Approved | Self::Escalated)
    }

    /// Is this a final answer that can never become approved?
    pub fn is_final_not_approved(&self) -> bool {
        matches!(self, Self::Denied | Self::Expired)
    }
}

impl std::fmt::Display for RunStatus {
    /// Sym's word for it (canonical spelling for the known ones).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Approved => "approved",
            Self::Escalated => "escalated",
            Self::Denied => "denied",
            Self::Expired => "expired",
            Self::Open(s) => s,
        })
    }
}

/// A run as the reconciler reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunInfo {
    pub status: RunStatus,
    /// The request's fields, when Sym's answer carries them.
    pub request: Option<RequestFields>,
}

/// The fields of the request a run was made for, as far as the service binds runs by them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestFields {
    pub workflow_id: uuid::Uuid,
    /// None: the request named no hold job (the service's default).
    pub hold_job_name: Option<String>,
}
