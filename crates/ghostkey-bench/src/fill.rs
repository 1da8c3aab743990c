//! The bulk loader: enrols many users straight into a Ghostkey database through the
//! server's own store code (the same rows, audit events and `jti`s an enrolment over
//! HTTP writes), with real keys, sealed devices and endorsed roots. Key generation runs
//! on every core. On SQLite the writes go through one connection with
//! `synchronous=NORMAL`; on PostgreSQL through several connections with
//! `synchronous_commit=off` for the loader's sessions only. Both are safe for a loader
//! that can be rerun (the server itself writes durably). The loaded users' `jti`s are
//! deleted at the end, as the server's purge would have done.

use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ghostkey::config::Synchronous;
use ghostkey::domain::assertion::VerifiedAssertion;
use ghostkey::domain::enrollment::{new_enrollment, Enrollment};
use ghostkey::store::postgres::{Isolation, PgOptions};
use ghostkey::store::{PgStore, SqliteStore, Store};
use ghostkey_client::kit::unix_now;
use ghostkey_client::proto::api::EnrollRequest;
use ghostkey_client::proto::assertion::Purpose;
use ghostkey_client::proto::b64;
use ghostkey_client::{AppSigningKey, UserSecret};

/// One user, ready to store.
fn user(
    app_id: &str,
    key: &AppSigningKey,
    index: usize,
    now: i64,
) -> Result<(VerifiedAssertion, Enrollment), String> {
    let user_id = format!("fill-{index:08}");
    let prepared = ghostkey_client::prepare_enrolment(app_id, &user_id, key.kid())
        .map_err(|e| e.to_string())?;
    let root = key
        .endorse_root(&prepared.root, app_id, &user_id)
        .map_err(|e| e.to_string())?;
    let request = EnrollRequest {
        sealed_virtual_device: b64::encode(
            prepared
                .virtual_device
                .seal(&UserSecret::generate())
                .map_err(|e| e.to_string())?,
        ),
        virtual_device: prepared.virtual_device.keys().public(),
        root_block: b64::encode(root.encode()),
    };
    let assertion = VerifiedAssertion {
        app_id: app_id.to_owned(),
        user_id,
        jti: format!("fill-{index}"),
        remember_jti_until: now + 300,
        purpose: Purpose::Enroll,
    };
    let enrollment = new_enrollment(&assertion, &request, now).map_err(|e| e.to_string())?;
    Ok((assertion, enrollment))
}

/// Enrols `count` users of `app_id` (whose key is `key`) into the database at `db`.
pub fn fill(db: &Path, app_id: &str, key: &AppSigningKey, count: usize) -> Result<(), String> {
    let store = SqliteStore::open(db, Synchronous::Normal, Duration::from_secs(30))
        .map_err(|e| e.to_string())?;
    // SQLite has one writer: one thread writes.
    fill_store(&store, 1, app_id, key, count)?;
    drop(store);
    forget_jtis(db)
}

/// Enrols `count` users into the PostgreSQL database at `url`, then deletes their `jti`s
/// and analyses the tables (as autovacuum would have, long before a real store reached
/// that size).
pub fn fill_postgres(
    url: &str,
    app_id: &str,
    key: &AppSigningKey,
    count: usize,
) -> Result<(), String> {
    // Commits not waited for on disk: the loader's sessions only.
    let separator = if url.contains('?') { '&' } else { '?' };
    let url = format!("{url}{separator}options=-c%20synchronous_commit%3Doff");
    const WRITERS: usize = 8;
    let store = PgStore::open(&PgOptions {
        url: url.clone().into(),
        ca_file: None,
        max_connections: WRITERS,
        isolation: Isolation::ReadCommitted,
        retry_for: Duration::from_secs(30),
        prepared_statements: true,
    })
    .map_err(|e| e.to_string())?;
    // Several connections: each enrolment waits for round trips, not for the disk.
    fill_store(&store, WRITERS, app_id, key, count)?;
    drop(store);
    psql(
        &url,
        &[
            "DELETE FROM assertion_jtis WHERE jti LIKE 'fill-%'",
            "VACUUM ANALYZE",
        ],
    )
    .map_err(|e| format!("forgetting the loaded users' jtis, analysing: {e}"))
}

/// Runs statements through `psql` (which the PostgreSQL run needs anyway), one by one.
fn psql(url: &str, statements: &[&str]) -> Result<(), String> {
    let out = std::process::Command::new("psql")
        .arg(url)
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1"])
        .args(statements.iter().flat_map(|s| ["-c", s]))
        .output()
        .map_err(|e| format!("psql: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }
}

/// Makes the users on every core and stores them with `writers` threads.
fn fill_store(
    store: &(dyn Store + Sync),
    writers: usize,
    app_id: &str,
    key: &AppSigningKey,
    count: usize,
) -> Result<(), String> {
    let producers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (tx, rx) = mpsc::sync_channel(4096);
    let rx = std::sync::Mutex::new(rx);
    let now = unix_now();
    let started = Instant::now();
    let done = std::sync::atomic::AtomicUsize::new(0);
    let failed = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| -> Result<(), String> {
        for p in 0..producers {
            let tx = tx.clone();
            scope.spawn(move || {
                for index in (p..count).step_by(producers) {
                    if tx.send(user(app_id, key, index, now)).is_err() {
                        return;
                    }
                }
            });
        }
        drop(tx);
        let mut handles = Vec::new();
        for _ in 0..writers {
            let (rx, done, failed) = (&rx, &done, &failed);
            handles.push(scope.spawn(move || -> Result<(), String> {
                use std::sync::atomic::Ordering::Relaxed;
                let mut result = Ok(());
                loop {
                    let next = match rx.lock() {
                        Ok(rx) => rx.recv(),
                        Err(_) => return Err("a writer panicked".into()),
                    };
                    let Ok(made) = next else { return result };
                    // After a failure, only drain the channel so the producers finish.
                    if failed.load(Relaxed) {
                        continue;
                    }
                    let stored = made.and_then(|(assertion, enrollment)| {
                        store
                            .enroll(&assertion, &enrollment, now)
                            .map_err(|e| format!("storing {}: {e}", assertion.user_id))
                    });
                    if let Err(e) = stored {
                        failed.store(true, Relaxed);
                        result = Err(e);
                        continue;
                    }
                    let n = done.fetch_add(1, Relaxed) + 1;
                    if n.is_multiple_of(100_000) {
                        eprintln!(
                            "fill: {n} users in {:.0} s",
                            started.elapsed().as_secs_f64()
                        );
                    }
                }
            }));
        }
        let mut first_error = None;
        for h in handles {
            let result = h
                .join()
                .map_err(|_| "a writer panicked".to_owned())
                .and_then(|r| r);
            if let Err(e) = result {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    })?;
    eprintln!(
        "fill: {count} users in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Deletes the loaded users' assertion ids. The users stand for enrolments made long ago,
/// whose `jti`s the server would have purged once they expired (a few minutes later).
/// Left in place, the million of them would expire together during the measured pass,
/// and every write there would purge a batch of them: a burst no real store sees.
fn forget_jtis(db: &Path) -> Result<(), String> {
    let conn = rusqlite::Connection::open(db).map_err(|e| e.to_string())?;
    conn.execute("DELETE FROM assertion_jtis WHERE jti LIKE 'fill-%'", [])
        .map_err(|e| format!("forgetting the loaded users' jtis: {e}"))?;
    Ok(())
}
