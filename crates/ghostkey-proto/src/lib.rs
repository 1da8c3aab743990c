//! Ghostkey wire types, formats and stable error codes.
//!
//! This crate is shared by the server and the client library. It does no I/O and holds
//! no secrets: only the shapes of what crosses the wire and the rules for checking them.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod api;
pub mod assertion;
pub mod b64;
pub mod chain;
pub mod error;
pub mod sealed;

pub use error::{ErrorCode, Problem};
