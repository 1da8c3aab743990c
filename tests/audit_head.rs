//! The audit log's end is anchored: deleting its last events, or all of them, no longer
//! passes `ghostkey audit verify` (the store records the head in the same transaction as
//! each event), nor does a log rewritten from an event an operator noted off-host
//! (`--anchor`). A log that keeps growing while it is verified still passes.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::TestServer;
use ghostkey_client::proto::assertion::Purpose;

fn ghostkey(db: &Path) -> Command {
    common::ghostkey_on(db)
}

fn verify(db: &Path, anchors: &[&str]) -> Output {
    let mut cmd = ghostkey(db);
    cmd.args(["audit", "verify"]);
    for a in anchors {
        cmd.args(["--anchor", a]);
    }
    cmd.output().unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The head `audit verify` printed on standard output (`SEQ:HASH`).
fn printed_head(out: &Output) -> String {
    assert!(out.status.success(), "{}", stderr(out));
    let head = String::from_utf8(out.stdout.clone()).unwrap();
    let head = head.trim().to_owned();
    let (seq, hash) = head.split_once(':').unwrap();
    assert!(seq.parse::<i64>().unwrap() > 0, "{head}");
    assert_eq!(hash.len(), 64, "{head}");
    head
}

/// A server with a few users' worth of events, stopped; its database path.
async fn a_log_with_events(server: &TestServer) -> i64 {
    let app = server.register_app("Health");
    for user in ["alice-7", "bob-9", "carol-3"] {
        common::enrol(server, &app, user).await;
    }
    server
        .client()
        .erase_user(&app.assertion("carol-3", Purpose::Manage))
        .await
        .unwrap();
    let conn = rusqlite::Connection::open(server.db_path()).unwrap();
    conn.query_row("SELECT max(seq) FROM audit_events", [], |r| r.get(0))
        .unwrap()
}

#[tokio::test]
async fn deleting_the_last_events_or_all_of_them_is_detected() {
    let server = TestServer::start();
    let last = a_log_with_events(&server).await;
    assert!(last >= 5, "only {last} events");
    let db = server.db_path();
    let intact = verify(&db, &[]);
    let head = printed_head(&intact);
    assert_eq!(head.split_once(':').unwrap().0, last.to_string());
    assert!(
        stderr(&intact).contains(&format!("audit log intact: {last} events")),
        "{}",
        stderr(&intact)
    );

    // Delete the last two events: every remaining link still holds, but the head is gone.
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute("DELETE FROM audit_events WHERE seq > ?1", [last - 2])
        .unwrap();
    let out = verify(&db, &[]);
    assert!(!out.status.success(), "a truncated log passed");
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "the log ends at event {} but reached event {last} before",
            last - 2
        )),
        "{err}"
    );

    // Delete them all.
    conn.execute("DELETE FROM audit_events", []).unwrap();
    let out = verify(&db, &[]);
    assert!(!out.status.success(), "an emptied log passed");
    assert!(
        stderr(&out).contains(&format!("the log ends at event 0 but reached event {last}")),
        "{}",
        stderr(&out)
    );

    // And the head record with them: that is named too, not taken for an empty log.
    conn.execute("DELETE FROM audit_head", []).unwrap();
    let out = verify(&db, &[]);
    assert!(!out.status.success(), "a log without its head passed");
    assert!(
        stderr(&out).contains("head record is missing"),
        "{}",
        stderr(&out)
    );
}

#[tokio::test]
async fn a_server_writing_after_a_truncation_leaves_a_gap_that_verify_names() {
    let server = TestServer::start();
    let app = server.register_app("Health");
    common::enrol(&server, &app, "alice-7").await;
    let conn = rusqlite::Connection::open(server.db_path()).unwrap();
    let last: i64 = conn
        .query_row("SELECT max(seq) FROM audit_events", [], |r| r.get(0))
        .unwrap();
    conn.execute("DELETE FROM audit_events WHERE seq = ?1", [last])
        .unwrap();
    // The next event follows the recorded head, not the last row left.
    common::enrol(&server, &app, "bob-9").await;
    let out = verify(&server.db_path(), &[]);
    assert!(
        !out.status.success(),
        "a log with a hole at its old end passed"
    );
    assert!(
        stderr(&out).contains(&format!("audit chain broken at event {last}")),
        "{}",
        stderr(&out)
    );
}

#[tokio::test]
async fn a_log_rebuilt_by_someone_who_can_write_the_database_misses_the_noted_anchor() {
    let server = TestServer::start();
    let last = a_log_with_events(&server).await;
    let db = server.db_path();
    let noted = printed_head(&verify(&db, &[]));

    // Later events: the noted head is now inside the log, and still reached.
    let app = server.register_app("Later");
    common::enrol(&server, &app, "dave-1").await;
    let later = verify(&db, &[&noted]);
    assert!(later.status.success(), "{}", stderr(&later));
    assert!(
        stderr(&later).contains("1 anchor(s) reached"),
        "{}",
        stderr(&later)
    );

    // Someone with write access edits an old event and recomputes every hash after it, and
    // the recorded head: the chain and the head agree again, so only the anchor shows it.
    let conn = rusqlite::Connection::open(&db).unwrap();
    let mut events: Vec<(i64, i64, String, String, String, String)> = conn
        .prepare("SELECT seq, at, kind, app_id, subject, detail FROM audit_events ORDER BY seq")
        .unwrap()
        .query_map([], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
            ))
        })
        .unwrap()
        .map(Result::unwrap)
        .collect();
    events[2].5 = "{\"rewritten\":true}".into();
    let mut prev = [0u8; 32];
    for (seq, at, kind, app_id, subject, detail) in &events {
        prev = ghostkey::domain::audit::chain_hash(&prev, *seq, *at, kind, app_id, subject, detail);
        conn.execute(
            "UPDATE audit_events SET detail = ?2, hash = ?3 WHERE seq = ?1",
            rusqlite::params![seq, detail, prev.to_vec()],
        )
        .unwrap();
    }
    conn.execute(
        "UPDATE audit_head SET hash = ?1 WHERE id = 1",
        [prev.to_vec()],
    )
    .unwrap();
    let rebuilt = verify(&db, &[]);
    assert!(rebuilt.status.success(), "{}", stderr(&rebuilt));
    let out = verify(&db, &[&noted]);
    assert!(
        !out.status.success(),
        "a rebuilt log reached the noted anchor"
    );
    assert!(
        stderr(&out).contains(&format!(
            "event {last} does not have the hash recorded for it"
        )),
        "{}",
        stderr(&out)
    );

    // A malformed anchor is refused before anything is read.
    let out = verify(&db, &["12:abc"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("not an audit anchor"),
        "{}",
        stderr(&out)
    );
}

#[tokio::test]
async fn events_an_older_ghostkey_appended_past_the_head_are_followed_not_collided_with() {
    let server = TestServer::start();
    let app = server.register_app("Health");
    let conn = rusqlite::Connection::open(server.db_path()).unwrap();
    let (seq, hash): (i64, Vec<u8>) = conn
        .query_row(
            "SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    // An older Ghostkey, still running when this one upgraded the schema, appends an
    // event the way it always did: chained, but without moving the head it knows nothing of.
    let prev: [u8; 32] = hash.try_into().unwrap();
    let at = server.now();
    let next =
        ghostkey::domain::audit::chain_hash(&prev, seq + 1, at, "enrolled", &app.id, "", "{}");
    conn.execute(
        "INSERT INTO audit_events (seq, at, kind, app_id, subject, detail, hash) VALUES (?1, ?2, 'enrolled', ?3, '', '{}', ?4)",
        rusqlite::params![seq + 1, at, app.id, next.to_vec()],
    )
    .unwrap();
    // The next audited write goes on after it (it used to collide with its position).
    common::enrol(&server, &app, "alice-7").await;
    let out = verify(&server.db_path(), &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let head = printed_head(&out);
    assert!(
        head.split_once(':').unwrap().0.parse::<i64>().unwrap() > seq + 1,
        "{head}"
    );
}
