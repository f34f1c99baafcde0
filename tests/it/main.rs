//! The one integration-test binary: every module below shares it.

mod support;

mod cli;
mod storage;
mod vendor;
