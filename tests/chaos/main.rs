//! The chaos suite (issue 18): the real binary under faults, then a checker over the whole
//! history.
//!
//! - `plan`: the faults, deliveries and probes of a run, a pure function of the seed;
//! - `checker`: the four rules over the history, a pure function.
#![allow(clippy::unwrap_used, clippy::expect_used)]
// The run that uses these comes in the next commits.
#![allow(dead_code)]

mod checker;
mod plan;
