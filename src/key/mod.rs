//! API keys: their textual format and how their secrets are hashed and digested.

pub mod foreign;
pub mod format;
pub mod hash;
