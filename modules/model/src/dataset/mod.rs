//! The dataset config of SPEC §3: the IceProd version-3 JSON a person submits, read into typed
//! structs ([`config`]), checked in one place ([`validate`]), and the `$name(…)` expression
//! language its strings may hold ([`expr`]), including the per-job evaluation of task
//! requirements ([`requirements`]).
//!
//! An IceProd 2.3 config must be accepted unchanged: fields this server does not use are kept,
//! not refused, so a config read and written again keeps every field its author wrote.
//!
//! This module must not touch the database or the network: it only reads and checks values.

mod arith;
pub mod config;
mod error;
pub mod expr;
pub mod limits;
mod pyfmt;
pub mod requirements;
pub mod sample;
pub mod validate;

#[cfg(test)]
mod tests;

pub use config::{
    Batchsys, Data, DataType, Dependency, Job, Module, Movement, Parameters, Resource, Steering,
    Task, TaskRequirements, Tray,
};
pub use error::{DatasetError, DatasetErrors, ExprError};
pub use expr::{
    expand, expand_value, infer_type, parse, Ast, Call, Env, EnvironLookup, Func, Part, MAX_DEPTH,
};
pub use requirements::Requirements;
pub use sample::sample_jobs;
pub use validate::{parse_and_validate, CrossDatasetDependency, ResolvedDependency, Validated};
