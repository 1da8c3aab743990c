//! Domain rules, without I/O: the caller passes in what the store returned and the time.

pub mod app;
pub mod assertion;
pub mod audit;
pub mod cancel_code;
pub mod chain;
pub mod challenge;
pub mod code;
pub mod enrollment;
pub mod limits;
pub mod method;
pub mod origin;
pub mod passkey;
pub mod passphrase;
pub mod policy;
pub mod recovery;
pub mod totp;
