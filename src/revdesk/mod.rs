//! The vendor: wire types, error taxonomy, client, webhook signatures.
pub mod codes;
pub mod wire;
