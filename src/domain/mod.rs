//! What the service decides, free of I/O: ids, task states, the rule that turns a Sym event
//! into a task, the worker's next step, and the retry policy.
pub mod decide;
pub mod gate;
pub mod ids;
pub mod retry;
pub mod settle;
pub mod task;
pub mod verdict;
