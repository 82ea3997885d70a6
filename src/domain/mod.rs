//! What the service decides, free of I/O: ids, task states, the rule that turns a Sym event
//! into a task, the worker's next step, and the retry policy.

/// Implements `as_str`, `parse` and `Display` for a unit enum stored as text.
macro_rules! text_enum {
    ($name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }

            /// The stored text back to the value; None for text this version does not know.
            pub fn parse(text: &str) -> Option<Self> {
                match text {
                    $($text => Some($name::$variant),)+
                    _ => None,
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

pub mod binding;
pub mod decide;
pub mod event;
pub mod gate;
pub mod ids;
pub mod retry;
pub mod run;
pub mod settle;
pub mod task;
pub mod upstream;
pub mod verdict;
pub mod workflow;
