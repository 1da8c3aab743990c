//! The bulk loader: enrols many users straight into a Ghostkey database through the
//! server's own store code (the same rows, audit events and `jti`s an enrolment over
//! HTTP writes), with real keys, sealed devices and endorsed roots. Key generation runs
//! on every core; the writes go through one connection with `synchronous=NORMAL`, which
//! is safe for a loader that can be rerun (the server reopens the file in `full` mode).
//! The loaded users' `jti`s are deleted at the end, as the server's purge would have done.

use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ghostkey::config::Synchronous;
use ghostkey::domain::assertion::VerifiedAssertion;
use ghostkey::domain::enrollment::{new_enrollment, Enrollment};
use ghostkey::store::{SqliteStore, Store};
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
    let producers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (tx, rx) = mpsc::sync_channel(4096);
    let now = unix_now();
    let started = Instant::now();
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
        let mut done = 0usize;
        for made in rx {
            let (assertion, enrollment) = made?;
            store
                .enroll(&assertion, &enrollment, now)
                .map_err(|e| format!("storing user {done}: {e}"))?;
            done += 1;
            if done.is_multiple_of(100_000) {
                eprintln!(
                    "fill: {done} users in {:.0} s",
                    started.elapsed().as_secs_f64()
                );
            }
        }
        Ok(())
    })?;
    drop(store);
    forget_jtis(db)?;
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
