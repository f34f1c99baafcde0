//! The worker: claim loop, leases, rate limiting, shutdown.
pub mod breaker;
pub mod pacing;
