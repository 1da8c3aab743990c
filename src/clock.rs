//! Time, read once per request at the edge and passed down as a value.

/// Seconds since the Unix epoch.
pub type UnixTime = i64;

/// A source of the current time. Domain logic never calls it; handlers and workers do,
/// and pass the value down, so rules about expiry are tested without sleeping.
pub trait Clock: Send + Sync + 'static {
    /// The current time.
    fn now(&self) -> UnixTime;
}

/// The system's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> UnixTime {
        match std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
            Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            // A clock before 1970 is broken; 0 makes every assertion look expired (fail closed).
            Err(_) => 0,
        }
    }
}
