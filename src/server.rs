//! Start-up: from a configuration to a listening server.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::Server;
use actix_web::{middleware, App, HttpServer};

use crate::clock::{Clock, SystemClock};
use crate::config::{Config, Mode};
use crate::delivery::setup::Senders;
use crate::delivery::worker::{Subjects, Worker};
use crate::domain::assertion::AssertionRules;
use crate::keys::{DataKeySource, ServerKeys};
use crate::service::Ghostkey;
use crate::store::postgres::PgOptions;
use crate::store::{DatabaseLock, LockHolder, PgStore, SqliteStore, Store};

/// A server bound to its address, ready to be awaited.
pub struct Running {
    /// The address actually bound (useful with port 0).
    pub addr: SocketAddr,
    /// The server future; await it to serve, use its handle to stop it.
    pub server: Server,
    /// The outbox worker; stop it once the server has stopped.
    pub worker: WorkerHandle,
    /// Where `/metrics` is served, if it is.
    pub metrics_addr: Option<SocketAddr>,
    /// The database's exclusive lock (see [`DatabaseLock`]), held while this value lives;
    /// `None` when started over a store opened elsewhere.
    pub database_lock: Option<DatabaseLock>,
}

/// Stops the outbox worker after the message it is sending, if any.
pub struct WorkerHandle {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl WorkerHandle {
    /// Asks the worker to stop and waits (at most `limit`) for it to finish its message.
    pub async fn shutdown(self, limit: Duration) {
        let _ = self.stop.send(true);
        if tokio::time::timeout(limit, self.task).await.is_err() {
            tracing::warn!(
                "the outbox worker did not stop in time; its message is sent again after the lease"
            );
        }
    }
}

/// How long a stopping server waits for the outbox worker to finish the message it is
/// sending: the longest a send may take and the time to record it (the database's busy
/// timeout), at most [`MAX_WORKER_GRACE`], so that the whole stop fits the 50 s the
/// deployment files give it (30 s of request drain first). A send still running after that
/// is sent again after the restart (delivery is at least once).
pub fn worker_grace(config: &Config) -> Duration {
    let send = Duration::from_millis(config.sms.timeout_ms.max(config.email.timeout_ms));
    let record = Duration::from_millis(config.database.busy_timeout_ms);
    (send + record).min(MAX_WORKER_GRACE)
}

/// The longest a stop waits for the outbox worker (see [`worker_grace`]).
pub const MAX_WORKER_GRACE: Duration = Duration::from_secs(15);

/// Opens the store the configuration names: PostgreSQL when `database.url` (or
/// `url_file`) is set, else the SQLite file at `database.path`.
pub fn open_store(config: &Config) -> Result<Arc<dyn Store>, String> {
    if config.database.is_postgres() {
        let store = PgStore::open(&postgres_options(config)?)
            .map_err(|e| format!("cannot open the PostgreSQL database: {e}"))?;
        Ok(Arc::new(store))
    } else {
        Ok(Arc::new(open_sqlite(config)?))
    }
}

/// How to reach the PostgreSQL database the configuration names.
pub fn postgres_options(config: &Config) -> Result<PgOptions, String> {
    let url = crate::config::resolve_secret(
        "database.url",
        &config.database.url,
        &config.database.url_file,
    )
    .map_err(|e| e.to_string())?
    .ok_or_else(|| "database.url (or database.url_file) is not set".to_owned())?;
    Ok(PgOptions {
        url,
        ca_file: config.database.ca_file.clone(),
        max_connections: config.database.max_connections,
        isolation: config.database.isolation,
        retry_for: Duration::from_millis(config.database.busy_timeout_ms),
        prepared_statements: config.database.prepared_statements,
    })
}

/// Opens the SQLite file the configuration names (backup and restore, which exist for
/// SQLite only).
pub fn open_sqlite(config: &Config) -> Result<SqliteStore, String> {
    SqliteStore::open(
        &config.database.path,
        config.database.synchronous,
        Duration::from_millis(config.database.busy_timeout_ms),
    )
    .map_err(|e| {
        format!(
            "cannot open the database {}: {e}",
            config.database.path.display()
        )
    })
}

/// Refuses to serve a database holding values under a data key this server does not have
/// (another key file, a deleted development key regenerated, a retired key removed too
/// early): it would answer every request touching them with a 500.
fn check_keys_cover_the_store(
    store: &dyn Store,
    keys: &ServerKeys,
    now: crate::clock::UnixTime,
    source: DataKeySource,
) -> Result<(), String> {
    let missing: Vec<String> = store
        .key_ids_in_use(now)
        .map_err(|e| format!("cannot read the database: {e}"))?
        .into_iter()
        .filter(|id| !keys.has_key(id))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let generated = if source == DataKeySource::GeneratedDevelopmentFile {
        " A new development data key was just generated: the one these values were \
         written with was deleted or moved."
    } else {
        ""
    };
    Err(format!(
        "the database holds values encrypted under data key(s) {} that this server does not \
         have (its key is {}).{generated} Configure the key they were written with \
         (`keys.data_key_file`), or list it in `keys.retired_key_files` if it was rotated; \
         refusing to start rather than failing every request that needs them.",
        missing.join(", "),
        keys.key_id()
    ))
}

/// Loads keys, opens the store and binds the listener, announcing what kind of setup runs.
pub fn start(config: &Config) -> Result<Running, String> {
    start_with_clock(config, Arc::new(SystemClock))
}

/// As [`start`], with a given clock (tests move time forward with it).
pub fn start_with_clock(config: &Config, clock: Arc<dyn Clock>) -> Result<Running, String> {
    let (keys, source) = crate::keys::load_server_keys(config)?;
    if config.mode == Mode::Development {
        tracing::warn!(
            "DEVELOPMENT SETUP: not for real users. Service id `{}`, data key in {}. \
             Set mode = \"production\" with your own service_id and keys for a real deployment.",
            config.service_id,
            if source == DataKeySource::Configured {
                "the configuration".to_owned()
            } else {
                config.dev_data_key_path().display().to_string()
            }
        );
    }
    if config.mode == Mode::Production
        && config.server.tls.is_none()
        && config.server.trusted_proxies.is_empty()
    {
        tracing::warn!(
            "PRODUCTION WITHOUT TLS: neither `server.tls` nor `server.trusted_proxies` is set. \
             Assertions, codes and sealed keys must never cross a network in clear: terminate TLS \
             here or in a reverse proxy listed in `server.trusted_proxies`."
        );
    }
    if source == DataKeySource::GeneratedDevelopmentFile {
        tracing::warn!(path = %config.dev_data_key_path().display(), "generated a new development data key");
    }
    tracing::info!(data_key_id = keys.key_id(), retired = ?keys.retired_ids(), "server data keys loaded");
    let (store, database_lock): (Arc<dyn Store>, _) = if config.database.is_postgres() {
        let store = PgStore::open(&postgres_options(config)?)
            .map_err(|e| format!("cannot open the PostgreSQL database: {e}"))?;
        for warning in store
            .durability_warnings()
            .map_err(|e| format!("cannot read the PostgreSQL settings: {e}"))?
        {
            tracing::warn!("DATABASE NOT DURABLE: {warning}");
        }
        tracing::info!(
            isolation = ?config.database.isolation,
            max_connections = config.database.max_connections,
            "using PostgreSQL"
        );
        // Several nodes share the database: no file lock.
        (Arc::new(store), None)
    } else {
        if config.database.synchronous != crate::config::Synchronous::Full {
            tracing::warn!(
                synchronous = config.database.synchronous.as_pragma(),
                "database.synchronous is lowered: acknowledged writes may be lost on power failure"
            );
        }
        let lock = DatabaseLock::acquire(&config.database.path, LockHolder::Server)?;
        (Arc::new(open_sqlite(config)?), Some(lock))
    };
    check_keys_cover_the_store(store.as_ref(), &keys, clock.now(), source)?;
    let senders = crate::delivery::setup::from_config_with_clock(config, Arc::clone(&clock))?;
    for sender in [&senders.sms, &senders.email] {
        if sender.is_development() {
            tracing::warn!(
                adapter = sender.name(),
                "DEVELOPMENT message sink: codes are written to this log"
            );
        }
    }
    let mut running = start_with(config, store, clock, Arc::new(keys), senders)?;
    running.database_lock = database_lock;
    Ok(running)
}

/// Binds a server over an already opened store, with a given clock, keys and senders,
/// and starts the outbox worker on the current runtime.
pub fn start_with(
    config: &Config,
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    keys: Arc<ServerKeys>,
    senders: Senders,
) -> Result<Running, String> {
    // Everything below runs on a time that never goes back before what the database
    // already relied on.
    let floor = store
        .time_floor()
        .map_err(|e| format!("cannot read the database: {e}"))?;
    let wall_now = clock.now();
    if floor > wall_now {
        // Said once here; the clock itself says when the system clock has caught up.
        tracing::error!(
            behind_secs = floor - wall_now,
            "the system clock is behind the latest time recorded in the database: the service \
             keeps that time until the clock catches up (assertions minted meanwhile look \
             expired). If the system clock is right and the recorded time is the mistake (the \
             clock had jumped ahead), stop the server and run `ghostkey clock reset --yes`"
        );
    }
    let clock: Arc<dyn Clock> = Arc::new(crate::clock::NeverBackwards::new(clock, floor));
    // Before anything starts: a certificate that does not fit its key, or out of its
    // validity, stops the start here.
    let tls = match &config.server.tls {
        Some(tls) => Some(crate::tls::server_config(tls, clock.now())?),
        None => None,
    };
    let rules = AssertionRules {
        service_id: config.service_id.clone(),
        max_lifetime_secs: config.assertions.max_lifetime_secs,
        max_clock_skew_secs: config.assertions.max_clock_skew_secs,
    };
    let argon2_concurrency = match config.server.argon2_concurrency {
        0 => std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2),
        n => n,
    };
    let service = Ghostkey::new(
        Arc::clone(&store),
        Arc::clone(&clock),
        rules,
        Arc::clone(&keys),
        argon2_concurrency,
    )
    .with_argon2_waiting(config.server.argon2_waiting);
    let send_timeout = config.sms.timeout_ms.max(config.email.timeout_ms);
    // Production never serves the development view, whatever the senders hold.
    let senders_view = senders
        .dev_messages
        .filter(|_| config.mode == Mode::Development);
    let worker = Worker {
        store,
        keys,
        sms: senders.sms,
        email: senders.email,
        clock,
        config: config.delivery.clone(),
        subjects: Subjects {
            code: config.email.subject.clone(),
            notice: "Security notice about your account recovery".to_owned(),
        },
        wake: service.outbox_wake(),
        // Twice the longest send, so a lease never ends while its send can still succeed.
        lease: Duration::from_millis(send_timeout.saturating_mul(2)).max(Duration::from_secs(5)),
        metrics: service.metrics(),
    };
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    actix_web::rt::spawn(maintain(service.clone(), stop_rx.clone()));
    let worker = WorkerHandle {
        stop,
        task: actix_web::rt::spawn(worker.run(stop_rx)),
    };
    let dev = crate::http::DevView {
        mode: config.mode,
        messages: senders_view,
    };
    let body_limit = config.server.body_limit_bytes;
    let proxies = Arc::new(config.server.trusted_proxies.clone());
    // One line for the whole node, shared by its workers.
    let refused_clients = Arc::new(crate::http::RefusedClients::with_bounds(
        crate::http::refused_clients::MAX_TRACKED,
        config.server.refused_clients_waiting,
    ));
    let metrics_addr = match config.metrics.listen {
        Some(listen) => Some(start_metrics(listen, service.clone())?),
        None => None,
    };
    let mut http = HttpServer::new(move || {
        App::new()
            .wrap(middleware::from_fn(crate::http::refused_clients_wait))
            .wrap(middleware::from_fn(crate::http::cors))
            .wrap(middleware::from_fn(crate::http::request_log))
            .configure(crate::http::configure(
                service.clone(),
                body_limit,
                Arc::clone(&proxies),
                Arc::clone(&refused_clients),
                dev.clone(),
            ))
    })
    .shutdown_timeout(30)
    // Blocking threads beyond what the store and the Argon2 slots can use at once only
    // wait, each with its own stack and allocator arena (actix's default is 512 per core).
    .worker_max_blocking_threads(
        BLOCKING_THREADS_PER_WORKER.max(config.database.max_connections + argon2_concurrency),
    );
    if config.server.workers > 0 {
        http = http.workers(config.server.workers);
    }
    let http = match tls {
        Some(tls) => http.bind_rustls_0_23(config.server.listen, tls),
        None => http.bind(config.server.listen),
    }
    .map_err(|e| format!("cannot listen on {}: {e}", config.server.listen))?;
    let addr = http
        .addrs()
        .first()
        .copied()
        .ok_or_else(|| "the listener has no address".to_owned())?;
    tracing::info!(%addr, service_id = %config.service_id, tls = config.server.tls.is_some(), "listening");
    Ok(Running {
        addr,
        server: http.run(),
        worker,
        metrics_addr,
        database_lock: None,
    })
}

/// How often a node runs the store's background maintenance.
const MAINTENANCE_INTERVAL: Duration = Duration::from_secs(1);

/// Blocking threads per HTTP worker, at least: the store's reads and writes and the
/// Argon2id hashes run there. SQLite has one writer and at most max(8, 2 per core)
/// readers; PostgreSQL, `database.max_connections` connections.
const BLOCKING_THREADS_PER_WORKER: usize = 32;

/// Runs the store's background maintenance ([`Store::maintain`]: linking audit events,
/// forgetting expired rows) every second until `stop`; every node does, with no leader.
async fn maintain(service: Ghostkey, mut stop: tokio::sync::watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(MAINTENANCE_INTERVAL) => {}
            _ = stop.changed() => return,
        }
        if *stop.borrow() {
            return;
        }
        service.release_idle_argon2_memory();
        let now = service.now();
        match service
            .blocking(move |store, _| Ok(store.maintain(now)?))
            .await
        {
            Ok(done) => {
                let age = done
                    .oldest_unlinked_at
                    .map_or(0, |at| u64::try_from(now - at).unwrap_or(0));
                service.metrics().set_audit_unlinked(done.unlinked, age);
            }
            Err(e) => {
                tracing::warn!(error = %e, cause = e.cause.as_deref().unwrap_or(""), "background maintenance failed; it runs again in a second")
            }
        }
    }
}

/// Serves `GET /metrics` on its own listener (one worker), so the API's port exposes no
/// operational data. Runs on the current runtime until the process stops.
fn start_metrics(listen: SocketAddr, service: Ghostkey) -> Result<SocketAddr, String> {
    use actix_web::{web, HttpResponse};
    async fn metrics(service: web::Data<Ghostkey>) -> HttpResponse {
        // The depth is counted here, when it is read (the outbox worker does not count it).
        // Should the count fail, the last value read is shown.
        if let Ok(counts) = service
            .blocking(|store, _| Ok(store.outbox_counts()?))
            .await
        {
            service.metrics().set_outbox_depth(counts.pending);
        }
        HttpResponse::Ok()
            .content_type("text/plain; version=0.0.4")
            .body(service.metrics().render())
    }
    let server = HttpServer::new(move || {
        App::new()
            .app_data(web::Data::new(service.clone()))
            .route("/metrics", web::get().to(metrics))
    })
    .workers(1)
    .disable_signals()
    .bind(listen)
    .map_err(|e| format!("cannot listen on {listen} (`metrics.listen`): {e}"))?;
    let addr = server
        .addrs()
        .first()
        .copied()
        .ok_or_else(|| "the metrics listener has no address".to_owned())?;
    actix_web::rt::spawn(server.run());
    tracing::info!(%addr, "metrics listening");
    Ok(addr)
}
