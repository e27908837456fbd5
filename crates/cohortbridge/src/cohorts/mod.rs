//! Behavioural cohorts: the definition language and its evaluation as of a given instant.

pub mod definition;
pub mod eval;
pub mod values;

pub use definition::{parse, Definition, DefinitionError};
pub use eval::{evaluate, CohortMembers, EvalError};
