//! One-time codes under a keyed MAC (issue 17): a code is stored as HMAC-SHA256 under the
//! MAC key of the data key the challenge names; a code hashed with Argon2id before the
//! upgrade to schema version 7 still checks until it expires; a rotation mid-challenge
//! keeps the code valid. (That every check path makes one constant-time comparison is
//! checked by the unit test `service::tests::every_code_check_path_makes_one_constant_time_comparison`;
//! that wrong codes count and cap as before, by `tests/limits.rs` and `tests/brute_force.rs`.)

mod common;

use std::sync::Arc;

use common::{enrol, sms_gateway, TestServer};
use ghostkey::domain::code;
use ghostkey::domain::policy::PolicyChange;
use ghostkey::keys::{load_server_keys, write_key_file, DataKey, ServerKeys};
use ghostkey_client::proto::api::{ChallengePurpose, MethodKind, RecoveryState};
use ghostkey_client::proto::assertion::Purpose;
use ghostkey_client::proto::ErrorCode;
use rusqlite::{params, Connection};

fn keys_of(server: &TestServer) -> ServerKeys {
    load_server_keys(&server.config).unwrap().0
}

/// A challenge's stored code: salt, hash, key id and scheme, read from the file.
fn stored_code(server: &TestServer, id: &str) -> (Vec<u8>, Vec<u8>, String, Option<String>) {
    Connection::open(server.db_path())
        .unwrap()
        .query_row(
            "SELECT code_salt, code_hash, code_key_id, code_scheme FROM challenges WHERE id = ?1",
            [id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .unwrap()
}

fn no_back_off() -> PolicyChange {
    PolicyChange {
        user_backoff_base_secs: Some(0),
        ..Default::default()
    }
}

// Challenges written before the upgrade, by a version-6 Ghostkey: the database is taken
// back to version 6 (the challenges table without `code_scheme`), the codes of two live
// recoveries are rewritten as version 6 stored them (Argon2id of the code with a fresh
// salt and the pepper of the data key the row names, through the domain's own function),
// and a Ghostkey started on it upgrades it and checks them over HTTP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_code_hashed_before_the_upgrade_still_checks_until_it_expires() {
    let gateway = sms_gateway::accepting().await;
    let server = TestServer::start_with(|c| sms_gateway::configure(c, &gateway));
    let app = server.register_app("Health");
    server.set_policy(&app, no_back_off());
    let client = server.client();
    let mut recoveries = Vec::new();
    for user in ["u1", "u2"] {
        let (_, _, method) = common::enrol_with_sms(&server, &app, &gateway, user).await;
        let before = sms_gateway::received(&gateway).await.len();
        let started = client
            .start_recovery(&app.assertion(user, Purpose::Recover), &method)
            .await
            .unwrap();
        let code = sms_gateway::code(&gateway, before).await;
        recoveries.push((started.id, code, method));
    }
    let keys = keys_of(&server);
    let (config, dir, now) = (server.config.clone(), Arc::clone(&server.dir), server.now());
    // The app mints its assertions by the first server's clock; the second starts at the
    // same time and both move together.
    let app_clock = Arc::clone(&server.clock);
    drop(server);

    {
        let conn = Connection::open(&config.database.path).unwrap();
        conn.execute_batch(
            // Back to version 6: without what versions 7 and 8 added.
            "ALTER TABLE cancel_codes DROP COLUMN key_id; \
             ALTER TABLE challenges DROP COLUMN code_scheme; PRAGMA user_version = 6;",
        )
        .unwrap();
        let mut memory = code::Argon2Memory::new().unwrap();
        for (id, code, _) in &recoveries {
            let key_id: String = conn
                .query_row(
                    "SELECT code_key_id FROM challenges WHERE id = ?1",
                    [id],
                    |r| r.get(0),
                )
                .unwrap();
            let salt = code::new_salt();
            let pepper = keys.code_pepper_for(&key_id).unwrap();
            let hash = code::hash(&mut memory, pepper, &salt, code).unwrap();
            let changed = conn
                .execute(
                    "UPDATE challenges SET code_salt = ?2, code_hash = ?3 WHERE id = ?1",
                    params![id, salt.to_vec(), hash.to_vec()],
                )
                .unwrap();
            assert_eq!(changed, 1);
        }
    }

    let server = TestServer::relaunch(config, dir, now);
    assert_eq!(
        server.query_i64("PRAGMA user_version"),
        ghostkey::store::sqlite::SCHEMA_VERSION,
        "upgraded"
    );
    let (r1, code1, _) = &recoveries[0];
    let (r2, code2, method2) = &recoveries[1];
    assert_eq!(stored_code(&server, r1).3, None, "still an Argon2id hash");
    let client = server.client();
    // A wrong code still counts, as before.
    let wrong = if code1 == "00000000" {
        "00000001"
    } else {
        "00000000"
    };
    let err = client.verify_recovery(r1, wrong).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::InvalidCode));
    assert_eq!(
        server.query_i64(&format!(
            "SELECT attempts FROM challenges WHERE id = '{r1}'"
        )),
        1
    );
    // The right one opens it.
    let released = client.verify_recovery(r1, code1).await.unwrap();
    assert_eq!(released.state, RecoveryState::Released);
    assert!(released.sealed_virtual_device.is_some());
    // Expired, it answers like any expired code.
    server.clock.advance(600);
    app_clock.advance(600);
    let err = client.verify_recovery(r2, code2).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::CodeExpired));
    // What is written from now on is a MAC.
    let started = client
        .start_recovery(&app.assertion("u2", Purpose::Recover), method2)
        .await
        .unwrap();
    assert_eq!(
        stored_code(&server, &started.id).3.as_deref(),
        Some("hmac-sha256")
    );
}

// The stored MAC is HMAC-SHA256 under the MAC key of the data key whose id the challenge
// records: it differs under any other key, and the right code fails once the row names
// another key the server holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mac_changes_with_the_peppers_key_id() {
    let gateway = sms_gateway::accepting().await;
    let other = DataKey::generate();
    let other_id = other.id().to_owned();
    let server = TestServer::start_with(|c| {
        sms_gateway::configure(c, &gateway);
        let path = c.database.path.with_file_name("other.key");
        write_key_file(&path, &other).unwrap();
        c.keys.retired_key_files = vec![path];
    });
    let app = server.register_app("Health");
    server.set_policy(&app, no_back_off());
    enrol(&server, &app, "u").await;
    let client = server.client();
    let added = client
        .add_method(
            &app.assertion("u", Purpose::Enroll),
            MethodKind::Sms,
            Some("+33 6 12 34 56 78"),
            None,
        )
        .await
        .unwrap();
    let code = sms_gateway::code(&gateway, 0).await;
    let id = &added.challenge.id;

    let keys = keys_of(&server);
    assert_ne!(keys.key_id(), other_id);
    let (salt, hash, key_id, scheme) = stored_code(&server, id);
    let salt: [u8; 16] = salt.try_into().unwrap();
    assert_eq!(scheme.as_deref(), Some("hmac-sha256"));
    assert_eq!(key_id, keys.key_id(), "the key id is recorded");
    assert_eq!(
        hash,
        code::mac(keys.code_mac_key(), &salt, &code),
        "HMAC-SHA256 under the recorded key's MAC key, over the label, salt and code"
    );
    let under_other = code::mac(keys.code_mac_key_for(&other_id).unwrap(), &salt, &code);
    assert_ne!(hash, under_other.to_vec());
    // Neither the pepper itself nor Argon2id made it.
    assert_ne!(hash, code::mac(keys.code_pepper(), &salt, &code).to_vec());

    // The row names the other key: the same right code is now a wrong one, and counts.
    let set_key = |key: &str| {
        Connection::open(server.db_path())
            .unwrap()
            .execute(
                "UPDATE challenges SET code_key_id = ?2 WHERE id = ?1",
                params![id, key],
            )
            .unwrap()
    };
    set_key(&other_id);
    let err = client.answer(id, &code).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::InvalidCode));
    assert_eq!(
        server.query_i64(&format!(
            "SELECT attempts FROM challenges WHERE id = '{id}'"
        )),
        1
    );
    set_key(keys.key_id());
    client.answer(id, &code).await.unwrap();
}

// A code sent under one data key stays valid after the key is rotated mid-challenge: the
// server restarts with a new current key and the old one retired, `keys rotate` moves the
// method onto the new key and reports the live challenge that still needs the old one,
// and the code is accepted. Codes sent afterwards are under the new key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_mid_challenge_keeps_the_code_valid() {
    let gateway = sms_gateway::accepting().await;
    let server = TestServer::start_with(|c| sms_gateway::configure(c, &gateway));
    let app = server.register_app("Health");
    enrol(&server, &app, "u").await;
    let added = server
        .client()
        .add_method(
            &app.assertion("u", Purpose::Enroll),
            MethodKind::Sms,
            Some("+33 6 12 34 56 78"),
            None,
        )
        .await
        .unwrap();
    let code = sms_gateway::code(&gateway, 0).await;
    let old_id = keys_of(&server).key_id().to_owned();

    let new_key = server.dir.path().join("new.key");
    write_key_file(&new_key, &DataKey::generate()).unwrap();
    let old_key = server.config.dev_data_key_path();
    let server = server.restart(|c| {
        c.keys.data_key_file = Some(new_key.clone());
        c.keys.retired_key_files = vec![old_key.clone()];
    });
    let keys = keys_of(&server);
    assert_ne!(keys.key_id(), old_id);
    let report = ghostkey::admin::rotate_keys(&*server.store(), &keys, 500, server.now()).unwrap();
    assert_eq!(report.methods, 1);
    assert_eq!(
        report.retired,
        vec![(old_id.clone(), 0, 0, 1)],
        "the live challenge still needs the old key"
    );

    let client = server.client();
    client.answer(&added.challenge.id, &code).await.unwrap();
    let proof = client
        .start_challenge(
            &app.assertion("u", Purpose::Manage),
            &added.method.id,
            ChallengePurpose::Proof,
        )
        .await
        .unwrap();
    let (_, _, key_id, scheme) = stored_code(&server, &proof.id);
    assert_eq!(
        (key_id.as_str(), scheme.as_deref()),
        (keys.key_id(), Some("hmac-sha256"))
    );
    let report = ghostkey::admin::rotate_keys(&*server.store(), &keys, 500, server.now()).unwrap();
    assert_eq!(
        report.retired,
        vec![(old_id, 0, 0, 0)],
        "the old key can go"
    );
}
