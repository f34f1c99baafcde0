//! revdesk-dialer: an outbound-call worker with local pre-flight compliance.
//!
//! The pure core (`phone`, `compliance`, `decision`) does no I/O; `store`,
//! `revdesk` and `http` are the edges; `worker` wires them together.

pub mod clock;
pub mod decision;
pub mod phone;
pub mod revdesk;
pub mod worker;
