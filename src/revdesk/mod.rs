//! The vendor: wire types, error taxonomy, client, webhook signatures.
pub mod client;
pub mod codes;
pub mod signature;
pub mod wire;
