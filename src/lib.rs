//! Ghostkey: a recovery service for the virtual devices of end-to-end encrypted apps, with
//! split-knowledge custody (see `DESIGN.md`).
//!
//! Layout, from the outside in:
//! - [`http`]: thin actix-web handlers, problem documents, request logs;
//! - [`service`]: one function per use case, combining the store with domain rules;
//! - [`domain`]: the rules themselves, without I/O, the clock passed in;
//! - [`store`]: the storage interface and its SQLite backend;
//! - [`config`], [`keys`], [`admin`]: start-up, the server data key, operator commands.
#![forbid(unsafe_code)]

pub mod admin;
pub mod clock;
pub mod config;
pub mod delivery;
pub mod demo;
pub mod domain;
pub mod error;
pub mod http;
pub mod keys;
pub mod metrics;
pub mod server;
pub mod service;
pub mod store;
pub mod tls;

pub use error::Error;
