//! Domain rules, without I/O: the caller passes in what the store returned and the time.

pub mod app;
pub mod assertion;
pub mod enrollment;
pub mod policy;
