//! kat's userspace: loader, record source, tracker and views.
//! The `kat` binary (main.rs) is a thin command-line front over these.

pub mod at_risk;
pub mod btf;
pub mod cli;
pub mod closes;
pub mod conns;
pub mod conntrack;
pub mod demo;
pub mod diag;
pub mod doctor;
pub mod engine;
pub mod event;
pub mod exit;
#[cfg(test)]
mod hostile;
pub mod journal;
pub mod kernel;
pub mod loader;
pub mod metrics;
pub mod misses;
pub mod owner;
pub mod privilege;
pub mod record;
pub mod report;
pub mod source;
#[cfg(any(test, feature = "testkit"))]
pub mod testkit;
pub mod text;
pub mod top;
pub mod trace;
pub mod tracker;
pub mod workload;
