//! The audit log: a realistic run leaves a chain `ghostkey audit verify` accepts, with no
//! personal value in it; an edited row is reported as the first broken link; an erased
//! user's events remain but name no one.

mod common;

use common::{sms_gateway, TestServer};
use ghostkey_client::proto::api::MethodKind;
use ghostkey_client::proto::assertion::Purpose;

#[tokio::test]
async fn the_audit_chain_verifies_names_no_one_and_catches_an_edit() {
    let gateway = sms_gateway::accepting().await;
    let server = TestServer::start_with(|c| sms_gateway::configure(c, &gateway));
    let app = server.register_app("Health");
    server.set_policy(
        &app,
        ghostkey::domain::policy::PolicyChange {
            user_backoff_base_secs: Some(0),
            ..Default::default()
        },
    );
    let client = server.client();
    for user in ["alice-7", "bob-9"] {
        common::enrol(&server, &app, user).await;
    }
    let added = client
        .add_method(
            &app.assertion("alice-7", Purpose::Enroll),
            MethodKind::Sms,
            Some("+33 6 12 34 56 78"),
            None,
        )
        .await
        .unwrap();
    // A wrong code first (the audit log records the failure).
    let err = client
        .answer(&added.challenge.id, "00000000")
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Some(ghostkey_client::proto::ErrorCode::InvalidCode),
        "{err}"
    );
    client
        .answer(&added.challenge.id, &sms_gateway::code(&gateway, 0).await)
        .await
        .unwrap();
    let started = client
        .start_recovery(
            &app.assertion("alice-7", Purpose::Recover),
            &added.method.id,
        )
        .await
        .unwrap();
    client
        .verify_recovery(&started.id, &sms_gateway::code(&gateway, 1).await)
        .await
        .unwrap();
    common::unlock_with_sms_proof(&server, &app, "alice-7", &added.method.id, &gateway)
        .await
        .unwrap();
    client
        .erase_user(&app.assertion("bob-9", Purpose::Manage))
        .await
        .unwrap();

    // Linked into the chain (PostgreSQL: a node does it within a second).
    server.maintain();
    let out = server.cli().args(["audit", "verify"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = server.cli().args(["audit", "export"]).output().unwrap();
    let export = String::from_utf8(out.stdout).unwrap();
    let events: Vec<serde_json::Value> = export
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let kinds: Vec<&str> = events.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    for kind in [
        "app_added",
        "app_policy_set",
        "enrolled",
        "method_added",
        "code_refused",
        "code_accepted",
        "method_confirmed",
        "recovery_started",
        "recovery_released",
        "user_unlocked",
        "user_erased",
    ] {
        assert!(kinds.contains(&kind), "no {kind} event in {kinds:?}");
    }
    // No user id, phone number or code in the log: users appear under pseudonyms. Nor the
    // handles the unauthenticated endpoints accept (challenge and recovery ids): only their
    // digests, which an operator given an id can look for.
    for needle in [
        "alice-7",
        "bob-9",
        "612345678",
        &sms_gateway::code(&gateway, 0).await,
        &added.challenge.id,
        &started.id,
    ] {
        assert!(!export.contains(needle), "{needle} is in the audit log");
    }
    let digest = ghostkey::domain::audit::handle_digest(&started.id);
    assert!(
        events
            .iter()
            .any(|e| e["kind"] == "recovery_released"
                && e["detail"].as_str().unwrap().contains(&digest)),
        "the release is findable by the recovery's digest"
    );
    // The erased user's events remain, under a pseudonym nothing links to them any more.
    let erased = events.iter().find(|e| e["kind"] == "user_erased").unwrap()["subject"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(erased.starts_with("u_"));
    assert!(
        events
            .iter()
            .filter(|e| e["subject"] == erased.as_str())
            .count()
            >= 2
    );
    let linked = server.query_i64(&format!(
        "SELECT count(*) FROM users WHERE audit_pseudonym = '{erased}'"
    ));
    assert_eq!(linked, 0);

    // Edit one event: verification names it.
    let target: i64 = events[5]["seq"].as_i64().unwrap();
    server.execute(&format!(
        "UPDATE audit_events SET detail = '{{\"edited\":true}}' WHERE seq = {target}"
    ));
    let out = server.cli().args(["audit", "verify"]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("broken at event {target}")), "{err}");
}
