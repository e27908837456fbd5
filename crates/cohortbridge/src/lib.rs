//! cohortbridge: Mixpanel-compatible ingestion, behavioural cohorts, and cohort sync to Braze.
//!
//! Data flows through the modules in this order:
//! `api` (HTTP) → `ingest` (decode, validate) → `identity` (ID merge) → `store` (SQLite) →
//! `cohorts` (evaluate) → `sync` (diff, send) → `braze` (partner API client); Braze Currents
//! events come back through `api` and `braze::currents`, and `mtu` counts tracked users.

pub mod accounts;
pub mod api;
pub mod braze;
pub mod cli;
pub mod cohorts;
pub mod config;
pub mod identity;
pub mod ingest;
pub mod mtu;
pub mod secrets;
pub mod server;
pub mod store;
pub mod sync;
pub mod ui;
