//! Behavioural cohorts: the definition language and its evaluation as of a given instant.

mod compact_interner;
pub mod data;
pub mod definition;
pub mod engine;
pub mod eval;
pub mod explain;
mod interner;
pub mod live;
mod profiles;
pub mod reference;
pub mod rows;
pub mod values;
pub mod window;

pub use definition::{parse, Definition, DefinitionError};
pub use eval::{
    check_references, evaluate, evaluate_cohort, evaluate_property, evaluate_with_properties,
    CohortMembers, EvalError,
};

#[cfg(test)]
mod tests;
