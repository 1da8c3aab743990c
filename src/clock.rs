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

/// The time the service runs on: the wall clock, except that it never goes back, not even
/// across a restart (it starts no earlier than the time the database last relied on, see
/// [`crate::store::Store::time_floor`]). Expired replay-cache entries, rate windows and
/// failures are forgotten as time passes; a clock stepped backwards (a bad NTP answer, a
/// hand-set clock, a restored VM snapshot) would otherwise bring them back as usable: a
/// replayed assertion, a fresh budget. While the wall clock is behind, the service stays
/// at the latest time it has seen, and says so once in its log.
pub struct NeverBackwards {
    wall: std::sync::Arc<dyn Clock>,
    latest: std::sync::atomic::AtomicI64,
    behind: std::sync::atomic::AtomicBool,
}

impl NeverBackwards {
    /// Runs on `wall`, never earlier than `floor` (whoever builds it says so if the wall
    /// clock starts behind the floor).
    pub fn new(wall: std::sync::Arc<dyn Clock>, floor: UnixTime) -> NeverBackwards {
        let behind = wall.now() < floor;
        NeverBackwards {
            wall,
            latest: std::sync::atomic::AtomicI64::new(floor),
            behind: std::sync::atomic::AtomicBool::new(behind),
        }
    }
}

impl Clock for NeverBackwards {
    fn now(&self) -> UnixTime {
        use std::sync::atomic::Ordering;
        let wall = self.wall.now();
        let latest = self.latest.fetch_max(wall, Ordering::SeqCst);
        if wall >= latest {
            if self.behind.swap(false, Ordering::Relaxed) {
                tracing::info!("the system clock has caught up with the service's time");
            }
            return wall;
        }
        if !self.behind.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                behind_secs = latest - wall,
                "the system clock is behind the latest time this service has relied on (it was \
                 stepped backwards): the service keeps that time until the clock catches up; \
                 check the machine's time source"
            );
        }
        latest
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicI64, Ordering};
    use std::sync::Arc;

    struct Manual(AtomicI64);
    impl Clock for Manual {
        fn now(&self) -> UnixTime {
            self.0.load(Ordering::SeqCst)
        }
    }

    #[test]
    fn never_goes_back_from_the_floor_or_from_what_it_has_read() {
        let wall = Arc::new(Manual(AtomicI64::new(1_000)));
        let clock = NeverBackwards::new(wall.clone(), 1_500);
        assert_eq!(clock.now(), 1_500, "starts no earlier than the floor");
        wall.0.store(2_000, Ordering::SeqCst);
        assert_eq!(clock.now(), 2_000, "runs with the wall clock past it");
        wall.0.store(1_200, Ordering::SeqCst);
        assert_eq!(clock.now(), 2_000, "a step back is not followed");
        wall.0.store(2_001, Ordering::SeqCst);
        assert_eq!(clock.now(), 2_001, "and it runs again once caught up");
    }
}
