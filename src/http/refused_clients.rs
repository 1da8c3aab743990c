//! Clients just refused for a limit are served one at a time.
//!
//! (Only the API under `/v1`: the health checks are never slowed down.)
//!
//! A `429` tells a client to slow down until its `Retry-After`. A client that keeps
//! sending anyway (an attacker from many addresses, each as fast as it is answered)
//! still costs the node a request's work per answer, and on a saturated node that work
//! comes out of the legitimate users' latency. So for the `Retry-After` it was given (at
//! most [`LONGEST_MARK_SECS`]), every request from that client address (an IPv4 address
//! or an IPv6 /64, as the address limits count) first waits for its turn in one line
//! for the whole node, and the line serves one request at a time: all the refused
//! clients together then take about one request's share of the node, whatever their
//! number, while everyone else is served as usual.
//!
//! Two kinds of refusal mark a client, and they differ when the line cannot take it:
//! - `address_rate_limited`: the address itself is over its limit. Its request is answered
//!   `503 unavailable` (`Retry-After: 1`), before it is routed or its body read, if
//!   [`MAX_WAITING`] requests already wait or its turn has not come within
//!   [`LONGEST_WAIT`].
//! - Any other `429` (an app's ceiling, a user's back-off, a budget): the client may be a
//!   legitimate user refused because of what someone else did, so it is never turned
//!   away here: when the line is full, or its turn is late, it goes ahead unslowed.
//!
//! A turn lasts until the answer, or at most [`LONGEST_TURN`] (after which the request
//! goes on and the next one's turn comes), so a request that is slow to send its body
//! cannot hold up the line.
//!
//! This is scheduling, not a limit: a request served gets exactly the answer the database
//! gives it (the limits themselves are counted there, on every node). What this keeps is
//! a node's own memory and is lost on restart: a client it forgets, or never saw refused,
//! is only served sooner. The memory is bounded ([`MAX_TRACKED`] clients); past that,
//! clients refused meanwhile are not slowed down until room is freed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::StatusCode;
use actix_web::middleware::Next;
use actix_web::web::Data;
use actix_web::ResponseError;
use ghostkey_proto::ErrorCode;
use ipnet::IpNet;
use tokio::sync::{Semaphore, SemaphorePermit};

use crate::clock::UnixTime;
use crate::error::Error;
use crate::service::Ghostkey;

/// The longest a client stays marked after one refusal, whatever its `Retry-After` (a
/// failure budget can say hours): a minute, the address limit's own window.
pub const LONGEST_MARK_SECS: u64 = 60;
/// Client addresses remembered at most (about 100 bytes each, so under 2 MiB).
pub const MAX_TRACKED: usize = 16_384;
/// Requests from refused clients waiting for their turn at most, all clients together.
pub const MAX_WAITING: usize = 512;
/// The longest a request waits for its turn.
pub const LONGEST_WAIT: Duration = Duration::from_secs(1);
/// The longest one request holds the line.
pub const LONGEST_TURN: Duration = Duration::from_millis(250);

/// Why a client was refused, which decides what happens when the line cannot take it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mark {
    /// `address_rate_limited`: the address is over its own limit; turned away (503)
    /// when the line is full or its turn is late.
    OverAddressLimit,
    /// Any other `429`; goes ahead unslowed when the line is full or its turn is late.
    OtherLimit,
}

/// What the line did with a marked client's request.
#[derive(Debug, PartialEq, Eq)]
pub enum NoTurn {
    /// [`MAX_WAITING`] requests were already waiting.
    LineFull,
    /// Its turn did not come within [`LONGEST_WAIT`].
    Late,
}

/// Which client addresses were refused, until when and why, and the line their requests
/// wait in.
#[derive(Debug)]
pub struct RefusedClients {
    marks: Mutex<Marks>,
    /// One permit: refused clients' requests are served one at a time.
    turn: Semaphore,
    waiting: AtomicUsize,
    max_tracked: usize,
    max_waiting: usize,
}

#[derive(Debug, Default)]
struct Marks {
    until: HashMap<String, Until>,
    /// When clients whose mark is over were last swept out, at most once a second.
    swept_at: UnixTime,
}

/// When a client's marks end, each kind apart (0: never marked so).
#[derive(Debug, Default, Clone, Copy)]
struct Until {
    over_address_limit: UnixTime,
    other_limit: UnixTime,
}

impl Until {
    fn any_after(&self, now: UnixTime) -> bool {
        self.over_address_limit.max(self.other_limit) > now
    }
}

impl Default for RefusedClients {
    fn default() -> RefusedClients {
        RefusedClients::with_bounds(MAX_TRACKED, MAX_WAITING)
    }
}

/// A request of a refused client that was given its turn; the next one waits until
/// this is dropped.
pub type Turn<'a> = SemaphorePermit<'a>;

impl RefusedClients {
    /// With other bounds than the defaults (tests reach them with a few requests).
    pub fn with_bounds(max_tracked: usize, max_waiting: usize) -> RefusedClients {
        RefusedClients {
            marks: Mutex::new(Marks::default()),
            turn: Semaphore::new(1),
            waiting: AtomicUsize::new(0),
            max_tracked,
            max_waiting,
        }
    }

    /// How `client` (an [`address_key`](crate::domain::limits::address_key)) is marked
    /// now, if it is. A mark never outlasts [`LONGEST_MARK_SECS`] from now, even if the
    /// clock stepped back since it was made.
    pub fn mark(&self, client: &str, now: UnixTime) -> Option<Mark> {
        let marks = self.marks.lock().ok()?;
        let until = marks.until.get(client)?;
        let longest = now.saturating_add(i64::try_from(LONGEST_MARK_SECS).unwrap_or(0));
        let current = |t: UnixTime| t > now && t <= longest;
        if current(until.over_address_limit) {
            Some(Mark::OverAddressLimit)
        } else if current(until.other_limit) {
            Some(Mark::OtherLimit)
        } else {
            None
        }
    }

    /// Records that `client` was answered `429` for `mark`, with this `Retry-After` (none:
    /// the longest mark). Each kind of mark lasts its own refusals' time.
    pub fn note_refusal(&self, client: &str, mark: Mark, now: UnixTime, retry_after: Option<u64>) {
        let secs = retry_after
            .unwrap_or(LONGEST_MARK_SECS)
            .clamp(1, LONGEST_MARK_SECS);
        let end = now.saturating_add(i64::try_from(secs).unwrap_or(0));
        let Ok(mut marks) = self.marks.lock() else {
            return;
        };
        let lengthen = |t: &mut UnixTime| *t = if *t > now { (*t).max(end) } else { end };
        if let Some(until) = marks.until.get_mut(client) {
            match mark {
                Mark::OverAddressLimit => lengthen(&mut until.over_address_limit),
                Mark::OtherLimit => lengthen(&mut until.other_limit),
            }
            return;
        }
        if marks.until.len() >= self.max_tracked && marks.swept_at < now {
            // Room is made from clients whose mark is over, never from current ones.
            marks.until.retain(|_, until| until.any_after(now));
            marks.swept_at = now;
        }
        if marks.until.len() < self.max_tracked {
            let mut until = Until::default();
            match mark {
                Mark::OverAddressLimit => until.over_address_limit = end,
                Mark::OtherLimit => until.other_limit = end,
            }
            marks.until.insert(client.to_owned(), until);
        }
    }

    /// Waits for a refused client's request's turn (first come, first served), at most
    /// [`LONGEST_WAIT`].
    pub async fn wait_turn(&self) -> Result<Turn<'_>, NoTurn> {
        // Counted before the wait and uncounted however it ends (the client may leave).
        struct InLine<'a>(&'a AtomicUsize);
        impl Drop for InLine<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        if self.waiting.fetch_add(1, Ordering::SeqCst) >= self.max_waiting {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            return Err(NoTurn::LineFull);
        }
        let _in_line = InLine(&self.waiting);
        match tokio::time::timeout(LONGEST_WAIT, self.turn.acquire()).await {
            Ok(Ok(turn)) => Ok(turn),
            // The semaphore is never closed.
            Ok(Err(_)) | Err(_) => Err(NoTurn::Late),
        }
    }

    /// Requests waiting for their turn now.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }
}

/// The middleware, for `actix_web::middleware::from_fn`: a request from a client refused
/// for a limit waits for its turn; every `429` answer marks its client.
pub async fn refused_clients_wait(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    let (Some(refused), Some(service), Some(proxies)) = (
        req.app_data::<Data<RefusedClients>>().cloned(),
        req.app_data::<Data<Ghostkey>>().cloned(),
        req.app_data::<Data<Vec<IpNet>>>().cloned(),
    ) else {
        return next.call(req).await.map(|res| res.map_into_left_body());
    };
    if !req.path().starts_with("/v1/") {
        return next.call(req).await.map(|res| res.map_into_left_body());
    }
    let client = crate::domain::limits::address_key(super::client_addr::client_address(
        req.request(),
        &proxies,
    ));
    let metrics = service.metrics();
    let count = |result: &str| {
        metrics.inc(
            "ghostkey_refused_client_requests_total",
            &[("result", result)],
        )
    };
    let turn = match refused.mark(&client, service.now()) {
        None => None,
        Some(mark) => match (refused.wait_turn().await, mark) {
            (Ok(turn), _) => {
                count("waited");
                Some(turn)
            }
            (Err(_), Mark::OverAddressLimit) => {
                count("shed");
                let busy = Error::retry_after(ErrorCode::Unavailable, 1).error_response();
                return Ok(req.into_response(busy).map_into_right_body());
            }
            (Err(_), Mark::OtherLimit) => {
                count("went_ahead");
                None
            }
        },
    };
    let call = next.call(req);
    let res = match turn {
        None => call.await?,
        Some(turn) => {
            let mut call = std::pin::pin!(call);
            tokio::select! {
                res = &mut call => res?,
                () = tokio::time::sleep(LONGEST_TURN) => {
                    drop(turn);
                    call.await?
                }
            }
        }
    };
    if res.status() == StatusCode::TOO_MANY_REQUESTS {
        let code = res
            .response()
            .error()
            .and_then(|e| e.as_error::<Error>())
            .map(|e| e.code);
        let mark = if code == Some(ErrorCode::AddressRateLimited) {
            Mark::OverAddressLimit
        } else {
            Mark::OtherLimit
        };
        let retry_after = res
            .headers()
            .get(actix_web::http::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        refused.note_refusal(&client, mark, service.now(), retry_after);
    }
    Ok(res.map_into_left_body())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    const T: UnixTime = 1_800_000_000;
    const OTHER: Mark = Mark::OtherLimit;
    const OVER: Mark = Mark::OverAddressLimit;

    #[test]
    fn a_mark_lasts_its_retry_after_within_a_minute() {
        let r = RefusedClients::default();
        assert_eq!(r.mark("192.0.2.1", T), None);
        r.note_refusal("192.0.2.1", OTHER, T, Some(5));
        assert_eq!(r.mark("192.0.2.1", T), Some(OTHER));
        assert_eq!(r.mark("192.0.2.1", T + 4), Some(OTHER));
        assert_eq!(r.mark("192.0.2.1", T + 5), None);
        assert_eq!(r.mark("192.0.2.2", T), None, "another client is not marked");
        // A budget refused for hours marks its client for a minute.
        r.note_refusal("192.0.2.3", OTHER, T, Some(7200));
        assert!(r.mark("192.0.2.3", T + 59).is_some());
        assert!(r.mark("192.0.2.3", T + 60).is_none());
        // No Retry-After: a minute. Zero: a second.
        r.note_refusal("192.0.2.4", OTHER, T, None);
        assert!(r.mark("192.0.2.4", T + 59).is_some());
        r.note_refusal("192.0.2.5", OTHER, T, Some(0));
        assert!(r.mark("192.0.2.5", T).is_some());
        assert!(r.mark("192.0.2.5", T + 1).is_none());
        // A shorter refusal never shortens a longer one.
        r.note_refusal("192.0.2.3", OTHER, T + 1, Some(1));
        assert!(r.mark("192.0.2.3", T + 59).is_some());
        // The clock stepped back an hour: the mark still ends within a minute of now.
        assert!(r.mark("192.0.2.3", T - 3600).is_none());
    }

    #[test]
    fn each_kind_of_mark_lasts_its_own_refusals_time() {
        let r = RefusedClients::default();
        r.note_refusal("a", OTHER, T, Some(10));
        r.note_refusal("a", OVER, T + 1, Some(5));
        assert_eq!(
            r.mark("a", T + 2),
            Some(OVER),
            "the address limit's mark first"
        );
        r.note_refusal("a", OTHER, T + 2, Some(20));
        assert_eq!(r.mark("a", T + 5), Some(OVER));
        assert_eq!(
            r.mark("a", T + 6),
            Some(OTHER),
            "not lengthened by another refusal"
        );
        assert_eq!(r.mark("a", T + 22), None);
        // Over: a new refusal marks afresh.
        r.note_refusal("a", OVER, T + 30, Some(3));
        assert_eq!(r.mark("a", T + 32), Some(OVER));
        assert_eq!(r.mark("a", T + 33), None);
    }

    #[test]
    fn memory_is_bounded_and_expired_clients_make_room() {
        let r = RefusedClients::with_bounds(2, MAX_WAITING);
        r.note_refusal("a", OTHER, T, Some(10));
        r.note_refusal("b", OTHER, T, Some(20));
        r.note_refusal("c", OTHER, T, Some(30));
        assert_eq!(
            r.mark("c", T),
            None,
            "full: a third client is not remembered"
        );
        assert!(r.mark("a", T).is_some() && r.mark("b", T).is_some());
        // Once a's mark is over, its place is taken (at the next second's sweep).
        r.note_refusal("c", OTHER, T + 10, Some(30));
        assert!(r.mark("c", T + 10).is_some());
        assert!(r.mark("b", T + 10).is_some());
        assert_eq!(r.marks.lock().unwrap().until.len(), 2);
        // Full of current marks: swept at most once a second.
        r.note_refusal("d", OTHER, T + 10, Some(30));
        assert_eq!(r.marks.lock().unwrap().swept_at, T + 10);
    }

    #[tokio::test]
    async fn refused_requests_are_served_one_at_a_time_and_the_line_is_bounded() {
        let r = Arc::new(RefusedClients::with_bounds(MAX_TRACKED, 8));
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let first = r.wait_turn().await.unwrap();
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let (r, running, most) = (Arc::clone(&r), Arc::clone(&running), Arc::clone(&most));
                tokio::spawn(async move {
                    let _turn = r.wait_turn().await.unwrap();
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    tokio::task::yield_now().await;
                    running.fetch_sub(1, Ordering::SeqCst);
                })
            })
            .collect();
        // All eight are in line behind the first turn: a ninth is refused at once.
        while r.waiting() < 8 {
            tokio::task::yield_now().await;
        }
        assert_eq!(r.wait_turn().await.err(), Some(NoTurn::LineFull));
        drop(first);
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(most.load(Ordering::SeqCst), 1, "one at a time");
        assert_eq!(r.waiting(), 0);
        // A request that leaves the line (its client hung up) leaves no trace in it.
        let held = r.wait_turn().await.unwrap();
        let gone = tokio::time::timeout(Duration::from_millis(10), r.wait_turn()).await;
        assert!(gone.is_err());
        assert_eq!(r.waiting(), 0);
        // A turn that does not come within the longest wait is late.
        tokio::time::pause();
        assert_eq!(r.wait_turn().await.err(), Some(NoTurn::Late));
        assert_eq!(r.waiting(), 0);
        drop(held);
    }
}
