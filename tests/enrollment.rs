//! Enrolment of the sealed virtual device, end to end over HTTP.

mod common;

use common::TestServer;
use ghostkey_client::proto::api::EnrollmentState;
use ghostkey_client::proto::assertion::Purpose;
use ghostkey_client::proto::ErrorCode;
use ghostkey_client::sealed::SealError;
use ghostkey_client::{UserSecret, VirtualDevice};

#[tokio::test]
async fn enrolment_stores_a_blob_that_opens_with_the_user_secret_and_nothing_else() {
    let server = TestServer::start();
    let app = server.register_app("Health platform");
    let client = server.client();
    assert_eq!(client.health().await.unwrap().status, "ok");
    assert_eq!(client.ready().await.unwrap().status, "ok");

    let secret = UserSecret::generate();
    let assertion = app.assertion("patient-7f3a", Purpose::Enroll);
    let enrolled = ghostkey_client::enroll(
        &client,
        &assertion,
        &secret,
        &app.id,
        "patient-7f3a",
        &app.key,
    )
    .await
    .unwrap();
    assert_ne!(
        enrolled.user_keys.public(),
        enrolled.virtual_device.keys().encryption_public()
    );
    let (device, answer) = (enrolled.virtual_device, enrolled.answer);
    assert_eq!(answer.app_id, app.id);
    assert_eq!(answer.user_id, "patient-7f3a");
    assert_eq!(answer.state, EnrollmentState::Pending);

    // Read what was stored straight from the database file.
    let stored = server
        .store()
        .enrollment(&app.id, "patient-7f3a")
        .unwrap()
        .unwrap();
    assert_eq!(stored.state, EnrollmentState::Pending);
    assert_eq!(stored.signing_key, device.keys().signing_public());
    assert_eq!(stored.encryption_key, device.keys().encryption_public());
    let opened = VirtualDevice::open(
        &stored.sealed_virtual_device,
        &secret,
        &app.id,
        "patient-7f3a",
        1,
    )
    .unwrap();
    assert_eq!(opened, device);

    // Nothing else opens it: not another secret, not the server's own data key.
    assert_eq!(
        VirtualDevice::open(
            &stored.sealed_virtual_device,
            &UserSecret::generate(),
            &app.id,
            "patient-7f3a",
            1
        ),
        Err(SealError::Decrypt)
    );
    let data_key = std::fs::read_to_string(server.config.dev_data_key_path()).unwrap();
    let data_key = UserSecret::from_b64(&data_key).unwrap();
    assert_eq!(
        VirtualDevice::open(
            &stored.sealed_virtual_device,
            &data_key,
            &app.id,
            "patient-7f3a",
            1
        ),
        Err(SealError::Decrypt)
    );
    // The user secret appears nowhere in the database file.
    let db = std::fs::read(server.db_path()).unwrap();
    let wal = std::fs::read(server.db_path().with_extension("db-wal")).unwrap_or_default();
    for bytes in [&db, &wal] {
        assert!(!bytes.windows(32).any(|w| w == secret.expose()));
    }
}

#[tokio::test]
async fn a_second_enrolment_is_refused_and_changes_nothing() {
    let server = TestServer::start();
    let app = server.register_app("App");
    let client = server.client();
    let secret = UserSecret::generate();
    ghostkey_client::enroll(
        &client,
        &app.assertion("u1", Purpose::Enroll),
        &secret,
        &app.id,
        "u1",
        &app.key,
    )
    .await
    .unwrap();
    let before = server.store().enrollment(&app.id, "u1").unwrap().unwrap();

    let other = UserSecret::generate();
    let err = ghostkey_client::enroll(
        &client,
        &app.assertion("u1", Purpose::Enroll),
        &other,
        &app.id,
        "u1",
        &app.key,
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::AlreadyEnrolled));
    assert_eq!(
        server.store().enrollment(&app.id, "u1").unwrap().unwrap(),
        before
    );
    assert_eq!(server.count("users"), 1);
}

#[tokio::test]
async fn the_same_user_id_in_two_apps_is_two_users() {
    let server = TestServer::start();
    let a = server.register_app("A");
    let b = server.register_app("B");
    let client = server.client();
    for app in [&a, &b] {
        ghostkey_client::enroll(
            &client,
            &app.assertion("same", Purpose::Enroll),
            &UserSecret::generate(),
            &app.id,
            "same",
            &app.key,
        )
        .await
        .unwrap();
    }
    assert_eq!(server.count("users"), 2);
}

// Several client threads: a single-threaded test runtime under load could leave
// connections idle past the server's request-head timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_uses_of_one_assertion_enrol_exactly_once() {
    let server = TestServer::start();
    let app = server.register_app("App");
    let client = server.client();
    let assertion = app.assertion("racer", Purpose::Enroll);
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let client = client.clone();
        let assertion = assertion.clone();
        let app_id = app.id.clone();
        let key = app.key.clone();
        tasks.push(tokio::spawn(async move {
            ghostkey_client::enroll(
                &client,
                &assertion,
                &UserSecret::generate(),
                &app_id,
                "racer",
                &key,
            )
            .await
        }));
    }
    let mut ok = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => ok += 1,
            Err(e) => assert_eq!(e.code(), Some(ErrorCode::AssertionReplayed)),
        }
    }
    assert_eq!(ok, 1);
    assert_eq!(server.count("users"), 1);
}
