//! Clients just refused for a limit wait behind everyone else.
//!
//! (Only the API under `/v1`: the health checks are never slowed down.)
//!
//! A `429` tells a client to slow down until its `Retry-After`. A client that keeps
//! sending anyway (an attacker from many addresses, each as fast as it is answered)
//! still costs the node a request's work per answer, and on a saturated node that work
//! comes out of the legitimate users' latency. So for the `Retry-After` it was given (at
//! most [`LONGEST_WAIT_SECS`]), every request from that client address (an IPv4 address
//! or an IPv6 /64, as the address limits count) is served **one at a time across the
//! node**, each after the ones before it, while everyone else is served as usual.
//!
//! This is scheduling, not a limit: a request that waited gets exactly the answer the
//! database gives it (the limits themselves are counted there, on every node). What this
//! keeps is a node's own memory and is lost on restart: a client it forgets, or never
//! saw refused, is only served sooner. The memory is bounded ([`MAX_TRACKED`] clients);
//! past that, clients refused meanwhile are not slowed down until room is freed.
//! Requests waiting at once are bounded too ([`MAX_WAITING`]); past that, the answer is
//! `503 unavailable` with `Retry-After: 1`, at once and with no work done.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

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

/// The longest a client is slowed down after one refusal, whatever its `Retry-After`
/// (a failure budget can say hours): a minute, the address limit's own window.
pub const LONGEST_WAIT_SECS: u64 = 60;
/// Client addresses remembered at most (about 50 bytes each).
pub const MAX_TRACKED: usize = 16_384;
/// Requests from refused clients waiting for their turn at most, all clients together.
pub const MAX_WAITING: usize = 512;

/// Which client addresses were refused, until when, and the line their requests wait in.
#[derive(Debug)]
pub struct RefusedClients {
    until: Mutex<HashMap<String, UnixTime>>,
    /// One permit: refused clients' requests are served one at a time.
    turn: Semaphore,
    waiting: AtomicUsize,
    max_tracked: usize,
    max_waiting: usize,
}

impl Default for RefusedClients {
    fn default() -> RefusedClients {
        RefusedClients::with_bounds(MAX_TRACKED, MAX_WAITING)
    }
}

/// A request of a refused client that was given its turn; the next one waits until
/// this is dropped.
pub type Turn<'a> = SemaphorePermit<'a>;

/// The line of refused clients' requests is full.
#[derive(Debug, PartialEq, Eq)]
pub struct LineFull;

impl RefusedClients {
    /// With other bounds than the defaults (tests reach them with a few requests).
    pub fn with_bounds(max_tracked: usize, max_waiting: usize) -> RefusedClients {
        RefusedClients {
            until: Mutex::new(HashMap::new()),
            turn: Semaphore::new(1),
            waiting: AtomicUsize::new(0),
            max_tracked,
            max_waiting,
        }
    }

    /// Whether `client` (an [`address_key`](crate::domain::limits::address_key)) was
    /// refused recently enough to wait now.
    pub fn is_refused(&self, client: &str, now: UnixTime) -> bool {
        match self.until.lock() {
            Ok(until) => until.get(client).is_some_and(|t| *t > now),
            Err(_) => false,
        }
    }

    /// Records that `client` was answered `429` with this `Retry-After` (none: the
    /// longest wait).
    pub fn note_refusal(&self, client: &str, now: UnixTime, retry_after: Option<u64>) {
        let secs = retry_after
            .unwrap_or(LONGEST_WAIT_SECS)
            .clamp(1, LONGEST_WAIT_SECS);
        let end = now.saturating_add(i64::try_from(secs).unwrap_or(0));
        let Ok(mut until) = self.until.lock() else {
            return;
        };
        if let Some(t) = until.get_mut(client) {
            *t = (*t).max(end);
            return;
        }
        if until.len() >= self.max_tracked {
            // Room is made from clients whose wait is over, never from current ones.
            until.retain(|_, t| *t > now);
            if until.len() >= self.max_tracked {
                return;
            }
        }
        until.insert(client.to_owned(), end);
    }

    /// Waits for a refused client's request's turn (first come, first served), or says
    /// at once that the line is full.
    pub async fn wait_turn(&self) -> Result<Turn<'_>, LineFull> {
        // Counted before the wait and uncounted however it ends (the client may leave).
        struct InLine<'a>(&'a AtomicUsize);
        impl Drop for InLine<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        if self.waiting.fetch_add(1, Ordering::SeqCst) >= self.max_waiting {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            return Err(LineFull);
        }
        let _in_line = InLine(&self.waiting);
        // The semaphore is never closed.
        self.turn.acquire().await.map_err(|_| LineFull)
    }

    /// Requests waiting for their turn now.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }
}

/// The middleware, for `actix_web::middleware::from_fn`: a request from a client refused
/// for a limit waits for its turn; any `429` answer marks its client.
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
    let _turn = if refused.is_refused(&client, service.now()) {
        match refused.wait_turn().await {
            Ok(turn) => {
                metrics.inc(
                    "ghostkey_refused_client_requests_total",
                    &[("result", "waited")],
                );
                Some(turn)
            }
            Err(LineFull) => {
                metrics.inc(
                    "ghostkey_refused_client_requests_total",
                    &[("result", "shed")],
                );
                let busy = Error::retry_after(ErrorCode::Unavailable, 1).error_response();
                return Ok(req.into_response(busy).map_into_right_body());
            }
        }
    } else {
        None
    };
    let res = next.call(req).await?;
    if res.status() == StatusCode::TOO_MANY_REQUESTS {
        let retry_after = res
            .headers()
            .get(actix_web::http::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        refused.note_refusal(&client, service.now(), retry_after);
    }
    Ok(res.map_into_left_body())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    const T: UnixTime = 1_800_000_000;

    #[test]
    fn a_refusal_lasts_its_retry_after_within_a_minute() {
        let r = RefusedClients::default();
        assert!(!r.is_refused("192.0.2.1", T));
        r.note_refusal("192.0.2.1", T, Some(5));
        assert!(r.is_refused("192.0.2.1", T));
        assert!(r.is_refused("192.0.2.1", T + 4));
        assert!(!r.is_refused("192.0.2.1", T + 5));
        assert!(
            !r.is_refused("192.0.2.2", T),
            "another client is not slowed"
        );
        // A budget refused for hours slows its client for a minute.
        r.note_refusal("192.0.2.3", T, Some(7200));
        assert!(r.is_refused("192.0.2.3", T + 59));
        assert!(!r.is_refused("192.0.2.3", T + 60));
        // No Retry-After: a minute. Zero: a second.
        r.note_refusal("192.0.2.4", T, None);
        assert!(r.is_refused("192.0.2.4", T + 59));
        r.note_refusal("192.0.2.5", T, Some(0));
        assert!(r.is_refused("192.0.2.5", T));
        assert!(!r.is_refused("192.0.2.5", T + 1));
        // A shorter refusal never shortens a longer one.
        r.note_refusal("192.0.2.3", T + 1, Some(1));
        assert!(r.is_refused("192.0.2.3", T + 59));
    }

    #[test]
    fn memory_is_bounded_and_expired_clients_make_room() {
        let r = RefusedClients::with_bounds(2, MAX_WAITING);
        r.note_refusal("a", T, Some(10));
        r.note_refusal("b", T, Some(20));
        r.note_refusal("c", T, Some(30));
        assert!(
            !r.is_refused("c", T),
            "full: a third client is not remembered"
        );
        assert!(r.is_refused("a", T) && r.is_refused("b", T));
        // Once a's wait is over, its place is taken.
        r.note_refusal("c", T + 10, Some(30));
        assert!(r.is_refused("c", T + 10));
        assert!(r.is_refused("b", T + 10));
        assert_eq!(r.until.lock().unwrap().len(), 2);
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
        assert_eq!(r.wait_turn().await.err(), Some(LineFull));
        drop(first);
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(most.load(Ordering::SeqCst), 1, "one at a time");
        assert_eq!(r.waiting(), 0);
        // A request that leaves the line (its client hung up) leaves no trace in it.
        let held = r.wait_turn().await.unwrap();
        let gone = tokio::time::timeout(std::time::Duration::from_millis(10), r.wait_turn()).await;
        assert!(gone.is_err());
        assert_eq!(r.waiting(), 0);
        drop(held);
    }
}
