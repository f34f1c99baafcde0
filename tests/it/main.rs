//! The one integration-test binary: every module below shares it.
mod vendor;
