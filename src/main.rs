//! The `dialer` command line (filled in by the spine work).
fn main() {}
