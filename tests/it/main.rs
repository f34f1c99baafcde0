//! The one integration-test binary: every module below shares it.

mod support;

mod cli;
mod demo;
mod dial_time;
mod e2e;
mod probes;
mod reconcile;
mod storage;
mod vendor;
mod vendor_decisions;
