//! One pooled connection, and how its socket is driven.
//!
//! A connection owns a single-threaded Tokio runtime of its own, and its socket is driven
//! by the thread that waits for the answer: a round trip is the caller writing to the
//! socket and sleeping in `epoll` until the server answers, with no other thread woken on
//! the way (a shared runtime thread cost two extra thread switches per round trip, which
//! measured as most of a loaded node's CPU).
//!
//! A thread inside an async runtime must not block on another runtime (Tokio refuses),
//! so such callers (tests, the server's start) hand the wait to a short-lived thread; the
//! server's own store calls run on blocking-pool threads marked with
//! [`crate::store::as_store_thread`], where the wait runs in place.

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio_postgres::{Client, Statement};

use crate::store::StoreError;

/// The half of a connection that reads and writes its socket.
type Socket = Pin<Box<dyn Future<Output = Result<(), tokio_postgres::Error>> + Send>>;

/// A connection: the client that sends statements, the socket's driver, the runtime whose
/// I/O driver the socket is registered with, and the statements prepared on it.
pub(super) struct Conn {
    pub(super) client: Client,
    /// `None` once the connection ended (the server closed it, or it failed).
    socket: RefCell<Option<Socket>>,
    runtime: OwnRuntime,
    pub(super) prepared: RefCell<HashMap<String, Statement>>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        // The socket before the runtime: it deregisters from the runtime's I/O driver.
        self.socket.get_mut().take();
    }
}

/// A connection's runtime, shut down without waiting when dropped: also on an async
/// thread (a connection given up there, or one that failed to open), where Tokio panics
/// on a waiting shutdown. Nothing is spawned on it, so there is nothing to wait for.
struct OwnRuntime(Option<tokio::runtime::Runtime>);

impl OwnRuntime {
    fn new() -> Result<OwnRuntime, StoreError> {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map(|runtime| OwnRuntime(Some(runtime)))
            .map_err(|e| {
                StoreError::Backend(format!("cannot start a database connection's runtime: {e}"))
            })
    }

    fn get(&self) -> Result<&tokio::runtime::Runtime, StoreError> {
        self.0
            .as_ref()
            .ok_or_else(|| StoreError::Backend("the connection's runtime is stopped".into()))
    }
}

impl Drop for OwnRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

/// Runs `f` on this thread if it may block, or else on a short-lived thread of its own.
fn in_place_or_aside<T: Send>(f: impl FnOnce() -> T + Send) -> Result<T, StoreError> {
    if crate::store::is_store_thread() || tokio::runtime::Handle::try_current().is_err() {
        return Ok(f());
    }
    std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("ghostkey-postgres-wait".into())
            .spawn_scoped(scope, f)
            .map_err(|e| StoreError::Backend(format!("cannot start a thread: {e}")))?
            .join()
            .map_err(|_| StoreError::Backend("a database wait failed".into()))
    })
}

impl Conn {
    /// Connects, with `connect` run on the connection's own runtime.
    pub(super) fn open<C, S>(connect: C) -> Result<Conn, StoreError>
    where
        C: Future<Output = Result<(Client, S), tokio_postgres::Error>> + Send,
        S: Future<Output = Result<(), tokio_postgres::Error>> + Send + 'static,
    {
        let runtime = OwnRuntime::new()?;
        let own = runtime.get()?;
        let (client, socket) = in_place_or_aside(|| own.block_on(connect))??;
        Ok(Conn {
            client,
            socket: RefCell::new(Some(Box::pin(socket))),
            runtime,
            prepared: RefCell::default(),
        })
    }

    /// Whether the connection ended.
    pub(super) fn is_closed(&self) -> bool {
        self.socket.borrow().is_none() || self.client.is_closed()
    }

    /// Runs `future` (a statement of this connection's client) to its end, driving the
    /// socket meanwhile.
    ///
    /// Should the wait itself fail (no thread to wait on, or a panic in it), the
    /// connection's state is unknown (a `COMMIT` may be queued, a transaction left open):
    /// it is closed, so that nothing queued on it is ever sent and the pool discards it.
    pub(super) fn wait<F>(&self, future: F) -> Result<F::Output, StoreError>
    where
        F: Future + Send,
        F::Output: Send,
    {
        let runtime = self.runtime.get()?;
        let mut guard = self.socket.borrow_mut();
        let socket = &mut *guard;
        let waited = in_place_or_aside(move || {
            runtime.block_on(async move {
                let mut future = std::pin::pin!(future);
                std::future::poll_fn(|cx| {
                    // The statement queues its messages, the socket sends them and hands
                    // the answers over, then the statement reads them.
                    if let Poll::Ready(out) = future.as_mut().poll(cx) {
                        return Poll::Ready(out);
                    }
                    drive(socket, cx);
                    future.as_mut().poll(cx)
                })
                .await
            })
        });
        if waited.is_err() {
            guard.take();
        }
        waited
    }

    /// Sends what the client has queued (a `COMMIT` or `ROLLBACK` whose answer nobody
    /// waits for) without waiting for anything: the socket is written if it can be, and
    /// what could not be written goes out with the connection's next use.
    ///
    /// `unconstrained`: on a thread inside a Tokio task whose cooperative budget is spent,
    /// the socket would answer "not ready" without writing anything.
    pub(super) fn flush(&self) {
        let Ok(runtime) = self.runtime.get() else {
            return;
        };
        let _entered = runtime.enter();
        let mut socket = self.socket.borrow_mut();
        let mut once = std::pin::pin!(tokio::task::unconstrained(std::future::poll_fn(|cx| {
            drive(&mut socket, cx);
            Poll::Ready(())
        })));
        let _ = once
            .as_mut()
            .poll(&mut Context::from_waker(std::task::Waker::noop()));
    }

    /// Notices a connection the server closed while it sat idle (a restart, a failover):
    /// the runtime's I/O driver gets one turn, then the socket reads what arrived.
    pub(super) fn refresh(&self) {
        let Ok(runtime) = self.runtime.get() else {
            return;
        };
        let mut guard = self.socket.borrow_mut();
        let socket = &mut *guard;
        let refreshed = in_place_or_aside(move || {
            runtime.block_on(async move {
                tokio::task::yield_now().await;
                std::future::poll_fn(|cx| {
                    drive(socket, cx);
                    Poll::Ready(())
                })
                .await
            })
        });
        if refreshed.is_err() {
            guard.take();
        }
    }
}

/// Polls the socket once; drops it when the connection ended, which fails the client's
/// waiting statements instead of leaving them waiting.
fn drive(socket: &mut Option<Socket>, cx: &mut Context<'_>) {
    if let Some(running) = socket.as_mut() {
        if let Poll::Ready(ended) = running.as_mut().poll(cx) {
            if let Err(e) = ended {
                tracing::warn!(error = %e, "a database connection ended");
            }
            *socket = None;
        }
    }
}
