//! The chaos suite (issue 18): the real binary under faults, then a checker over the whole
//! history.
//!
//! - `plan`: the faults, deliveries and probes of a run, a pure function of the seed;
//! - `proxy`: the TCP proxy between the replicas and PostgreSQL (refuse, blackhole, reset);
//! - `supervisor`: the service's processes (SIGSTOP/SIGCONT, SIGKILL, SIGTERM, restart);
//! - `checker`: the four rules over the history, a pure function.
#![allow(clippy::unwrap_used, clippy::expect_used)]
// The run that uses these comes in the next commit.
#![allow(dead_code)]

mod checker;
mod plan;
mod proxy;
mod supervisor;
