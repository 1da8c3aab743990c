//! Ghostkey validates every block before appending it: forks, replays, strangers, wrong
//! purposes and unendorsed roots are refused with stable codes, and nothing changes.

mod common;

use common::{enrol_body, TestApp, TestServer};
use ghostkey_client::chain::{add_device, revoke_device};
use ghostkey_client::proto::assertion::Purpose;
use ghostkey_client::proto::chain::{verify_chain, ChainState};
use ghostkey_client::proto::{b64, ErrorCode};
use ghostkey_client::{AppSigningKey, Client, DeviceKeys, Enrolled, UserSecret};

fn pinned(app: &TestApp) -> impl Fn(&str) -> Option<[u8; 32]> + '_ {
    move |kid| (kid == app.key.kid()).then(|| app.key.public_key())
}

async fn state(client: &Client, app: &TestApp, user: &str) -> ChainState {
    let blocks = client
        .chain(&app.assertion(user, Purpose::Manage), user)
        .await
        .unwrap();
    verify_chain(&blocks, &pinned(app)).unwrap()
}

async fn enrolled(server: &TestServer, app: &TestApp, user: &str) -> Enrolled {
    ghostkey_client::enroll(
        &server.client(),
        &app.assertion(user, Purpose::Enroll),
        &UserSecret::generate(),
        &app.id,
        user,
        &app.key,
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn blocks_are_checked_against_the_whole_chain_before_they_are_appended() {
    let server = TestServer::start();
    let app = server.register_app("Health");
    let client = server.client();
    let u = enrolled(&server, &app, "u").await;
    let s0 = state(&client, &app, "u").await;
    assert_eq!(s0.len, 1);

    let phone = DeviceKeys::generate();
    let add_phone = add_device(&s0, u.virtual_device.keys(), &phone, &u.user_keys).unwrap();
    // Revoking needs `manage`; admitting accepts `recover` or `manage`; `enroll` neither.
    let err = client
        .append_block(&app.assertion("u", Purpose::Enroll), &add_phone.encode())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::AssertionWrongPurpose));
    client
        .append_block(&app.assertion("u", Purpose::Recover), &add_phone.encode())
        .await
        .unwrap();

    // The same block again: a replay.
    let err = client
        .append_block(&app.assertion("u", Purpose::Manage), &add_phone.encode())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::ChainBlockReplayed));
    // Another block built on the old head: a fork.
    let laptop = DeviceKeys::generate();
    let fork = add_device(&s0, u.virtual_device.keys(), &laptop, &u.user_keys).unwrap();
    let err = client
        .append_block(&app.assertion("u", Purpose::Manage), &fork.encode())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::ChainFork));

    let s1 = state(&client, &app, "u").await;
    // A stranger's block: a device the chain never admitted.
    let stranger = DeviceKeys::generate();
    let mut forged = s1.clone();
    forged.devices[0].signing = stranger.signing_public();
    let by_stranger = add_device(&forged, &stranger, &laptop, &u.user_keys).unwrap();
    let err = client
        .append_block(&app.assertion("u", Purpose::Manage), &by_stranger.encode())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::InvalidBlock));
    let ghostkey_client::ClientError::Api { problem, .. } = &err else {
        panic!()
    };
    assert_eq!(problem.detail.as_deref(), Some("unknown_author"));
    // Revoking the virtual device.
    let revoke_vd = revoke_device(&s1, &phone, &u.virtual_device.keys().signing_public()).unwrap();
    let err = client
        .append_block(&app.assertion("u", Purpose::Manage), &revoke_vd.encode())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::InvalidBlock));
    // Junk.
    let err = client
        .append_block(&app.assertion("u", Purpose::Manage), b"not a block")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::InvalidBlock));

    // Revoking the phone with `manage` works; the revoked phone can then author nothing.
    let revoke_phone =
        revoke_device(&s1, u.virtual_device.keys(), &phone.signing_public()).unwrap();
    let err = client
        .append_block(
            &app.assertion("u", Purpose::Recover),
            &revoke_phone.encode(),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::AssertionWrongPurpose));
    client
        .append_block(&app.assertion("u", Purpose::Manage), &revoke_phone.encode())
        .await
        .unwrap();
    let s2 = state(&client, &app, "u").await;
    let mut as_if_valid = s2.clone();
    as_if_valid
        .devices
        .iter_mut()
        .for_each(|d| d.revoked_at = None);
    let by_revoked = add_device(&as_if_valid, &phone, &laptop, &u.user_keys).unwrap();
    let err = client
        .append_block(&app.assertion("u", Purpose::Manage), &by_revoked.encode())
        .await
        .unwrap_err();
    let ghostkey_client::ClientError::Api { problem, .. } = &err else {
        panic!()
    };
    assert_eq!(problem.detail.as_deref(), Some("revoked_author"));

    assert_eq!(state(&client, &app, "u").await.len, 3);
    assert_eq!(server.count("chain_blocks"), 3);
}

#[tokio::test]
async fn concurrent_appends_on_one_head_land_exactly_once() {
    let server = TestServer::start();
    let app = server.register_app("Health");
    let client = server.client();
    let u = enrolled(&server, &app, "u").await;
    let s0 = state(&client, &app, "u").await;
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let block = add_device(
                &s0,
                u.virtual_device.keys(),
                &DeviceKeys::generate(),
                &u.user_keys,
            )
            .unwrap();
            let client = client.clone();
            let token = app.assertion("u", Purpose::Manage);
            tokio::spawn(async move { client.append_block(&token, &block.encode()).await })
        })
        .collect();
    let mut landed = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(()) => landed += 1,
            Err(e) => assert_eq!(e.code(), Some(ErrorCode::ChainFork), "{e}"),
        }
    }
    assert_eq!(landed, 1);
    assert_eq!(state(&client, &app, "u").await.len, 2);
}

#[tokio::test]
async fn an_enrolment_whose_root_is_not_endorsed_by_the_app_is_refused() {
    let server = TestServer::start();
    let app = server.register_app("Health");
    let http = reqwest::Client::new();
    let url = format!("{}/v1/enrollments", server.base_url);
    let post = |body: serde_json::Value| {
        http.post(&url)
            .bearer_auth(app.assertion("u", Purpose::Enroll))
            .json(&body)
            .send()
    };
    // Endorsed by another key under the app's kid.
    let mut impostor = app.clone_for_test();
    impostor.key = AppSigningKey::generate("k1");
    let res = post(enrol_body(&impostor, "u")).await.unwrap();
    assert_eq!(res.status(), 422);
    let p: serde_json::Value = res.json().await.unwrap();
    assert_eq!(p["code"], "invalid_block");
    // A root for another user, or binding other keys than the virtual device's.
    let mut other_user = enrol_body(&app, "v");
    let ours = enrol_body(&app, "u");
    other_user["sealed_virtual_device"] = ours["sealed_virtual_device"].clone();
    let res = post(other_user).await.unwrap();
    assert_eq!(res.status(), 422);
    let p: serde_json::Value = res.json().await.unwrap();
    assert_eq!(p["code"], "invalid_block");
    assert_eq!(
        p["detail"],
        "`root_block` must be a root for this app, user and virtual device"
    );
    let mut mismatched = enrol_body(&app, "u");
    mismatched["root_block"] = enrol_body(&app, "u")["root_block"].clone();
    let res = post(mismatched).await.unwrap();
    assert_eq!(res.status(), 422);
    let p: serde_json::Value = res.json().await.unwrap();
    assert_eq!(p["code"], "invalid_block");
    assert_eq!(
        p["detail"],
        "`root_block` must be a root for this app, user and virtual device"
    );
    // Not a block at all.
    let mut junk = enrol_body(&app, "u");
    junk["root_block"] = serde_json::json!(b64::encode(b"junk"));
    let res = post(junk).await.unwrap();
    assert_eq!(res.status(), 422);
    let p: serde_json::Value = res.json().await.unwrap();
    assert_eq!(p["code"], "invalid_block");
    assert_eq!(p["detail"], "`root_block`: unknown block format version");
    assert_eq!(server.count("users"), 0);
    assert_eq!(server.count("chain_blocks"), 0);
    // The real thing works.
    assert_eq!(post(enrol_body(&app, "u")).await.unwrap().status(), 201);
    assert_eq!(server.count("chain_blocks"), 1);
}

#[tokio::test]
async fn chains_are_served_to_the_same_app_only() {
    let server = TestServer::start();
    let app = server.register_app("Health");
    let other = server.register_app("Other");
    let client = server.client();
    enrolled(&server, &app, "patient").await;
    // Another user of the same app reads it (the doctor needs the patient's user key).
    let blocks = client
        .chain(&app.assertion("doctor", Purpose::Recover), "patient")
        .await
        .unwrap();
    assert!(verify_chain(&blocks, &pinned(&app)).is_ok());
    // Another app sees nothing.
    let err = client
        .chain(&other.assertion("x", Purpose::Manage), "patient")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::ChainNotFound));
    // Verification from the wrong pinned keys fails on the client.
    assert!(verify_chain(&blocks, &pinned(&other)).is_err());
}

async fn blocks_verified(server: &TestServer) -> i64 {
    let addr = server.metrics_addr.expect("metrics listener");
    let text = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| {
            l.strip_prefix("ghostkey_chain_blocks_verified_total")?
                .trim()
                .parse()
                .ok()
        })
        .expect("ghostkey_chain_blocks_verified_total")
}

/// Attack 7: a stale append re-verified the whole stored chain before looking at the head,
/// and did not spend its assertion, so one assertion replayed stale blocks made the server
/// check every block again and again.
#[tokio::test]
async fn stale_appends_cost_no_verification_and_every_refusal_spends_its_assertion() {
    let server = TestServer::start_with(|c| {
        c.metrics.listen = Some("127.0.0.1:0".parse().unwrap());
    });
    let app = server.register_app("Health");
    let client = server.client();
    let u = enrolled(&server, &app, "u").await;
    // A chain of 40 devices, each admitted by the virtual device.
    let mut state_now = state(&client, &app, "u").await;
    let mut stale = Vec::new();
    for _ in 0..40 {
        let block = add_device(
            &state_now,
            u.virtual_device.keys(),
            &DeviceKeys::generate(),
            &u.user_keys,
        )
        .unwrap();
        stale.push(block.encode());
        client
            .append_block(&app.assertion("u", Purpose::Manage), &block.encode())
            .await
            .unwrap();
        state_now.apply(&block).unwrap();
    }
    // Each append after the first checked one block: the verified state is kept.
    let before = blocks_verified(&server).await;

    // Stale blocks (built on old heads): refused at the head, no block checked.
    let old = verify_chain(
        &client
            .chain(&app.assertion("u", Purpose::Manage), "u")
            .await
            .unwrap()[..10],
        &pinned(&app),
    )
    .unwrap();
    for _ in 0..5 {
        let fork = add_device(
            &old,
            u.virtual_device.keys(),
            &DeviceKeys::generate(),
            &u.user_keys,
        )
        .unwrap();
        let err = client
            .append_block(&app.assertion("u", Purpose::Manage), &fork.encode())
            .await
            .unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::ChainFork));
    }
    assert_eq!(
        blocks_verified(&server).await,
        before,
        "a stale append checked blocks"
    );

    // One assertion, replayed with stale blocks: refused as a replay after its first use.
    let assertion = app.assertion("u", Purpose::Manage);
    let err = client
        .append_block(&assertion, &stale[3])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::ChainBlockReplayed));
    for block in &stale[4..8] {
        let err = client.append_block(&assertion, block).await.unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::AssertionReplayed));
    }
    // So does an invalid block's.
    let assertion = app.assertion("u", Purpose::Manage);
    let err = client.append_block(&assertion, b"junk").await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::InvalidBlock));
    let err = client.append_block(&assertion, b"junk").await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::AssertionReplayed));

    // A valid append on the current head: one block checked.
    let next = add_device(
        &state_now,
        u.virtual_device.keys(),
        &DeviceKeys::generate(),
        &u.user_keys,
    )
    .unwrap();
    client
        .append_block(&app.assertion("u", Purpose::Manage), &next.encode())
        .await
        .unwrap();
    assert_eq!(blocks_verified(&server).await, before + 1);
}

/// PROTOCOL.md: a user id with reserved characters goes into the path percent-encoded.
#[tokio::test]
async fn a_user_id_with_reserved_characters_is_read_percent_encoded() {
    let server = TestServer::start();
    let app = server.register_app("Health");
    let user = "a/b?c#d%e+f";
    enrolled(&server, &app, user).await;
    let encoded = "a%2Fb%3Fc%23d%25e%2Bf";
    let res = reqwest::Client::new()
        .get(format!("{}/v1/chains/{encoded}", server.base_url))
        .bearer_auth(app.assertion(user, Purpose::Manage))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["user_id"], user);
}
