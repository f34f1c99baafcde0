//! revdesk-dialer: an outbound-call worker with local pre-flight compliance.
//!
//! The pure core (`phone`, `compliance`, `decision`) does no I/O; `store`,
//! `revdesk` and `http` are the edges; `worker` wires them together.

pub mod campaign;
pub mod cli;
pub mod clock;
pub mod compliance;
pub mod config;
pub mod decision;
pub mod demo;
pub mod http;
pub mod import;
pub mod metrics;
pub mod phone;
pub mod revdesk;
pub mod scrub;
pub mod simulator;
pub mod store;
pub mod worker;
