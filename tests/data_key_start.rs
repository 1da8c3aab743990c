//! A server never starts on a database it cannot fully read: with another valid data key
//! than the one the values were written with, or without a retired key that values still
//! need (the rotation not run yet), it refuses with a message that names the key and what
//! to configure, instead of answering 500s on those users. (A deleted development key is
//! in `tests/cli.rs`.) Once the rotation has moved everything, the retired key can go.

mod common;

use std::path::PathBuf;
use std::sync::Arc;

use common::TestServer;
use ghostkey::config::Config;
use ghostkey::keys::DataKey;
use ghostkey_client::proto::api::MethodKind;
use ghostkey_client::proto::assertion::Purpose;

/// Starts a server with `config` in a thread of its own; its address, or why it refused.
fn try_start(config: &Config) -> Result<std::net::SocketAddr, String> {
    let config = config.clone();
    std::thread::spawn(move || {
        actix_web::rt::System::new()
            .block_on(async move { ghostkey::server::start(&config).map(|running| running.addr) })
    })
    .join()
    .unwrap()
}

fn new_key_file(dir: &std::path::Path, name: &str) -> (PathBuf, String) {
    let key = DataKey::generate();
    let path = dir.join(name);
    ghostkey::keys::write_key_file(&path, &key).unwrap();
    (path, key.id().to_owned())
}

/// A server whose database holds a TOTP secret under the development key; stopped. The
/// directory (kept alive), the configuration and the development key's id.
async fn a_database_with_a_secret() -> (Arc<tempfile::TempDir>, Config, String) {
    let server = TestServer::start();
    let app = server.register_app("Health");
    common::enrol(&server, &app, "u").await;
    server
        .client()
        .add_method(
            &app.assertion("u", Purpose::Enroll),
            MethodKind::Totp,
            None,
            None,
        )
        .await
        .unwrap();
    let key_id = ghostkey::keys::read_key_file(&server.config.dev_data_key_path())
        .unwrap()
        .id()
        .to_owned();
    assert_eq!(
        server.query_i64(&format!(
            "SELECT count(*) FROM methods WHERE key_id = '{key_id}'"
        )),
        1
    );
    let (dir, mut config) = (Arc::clone(&server.dir), server.config.clone());
    drop(server);
    config.server.listen = "127.0.0.1:0".parse().unwrap();
    (dir, config, key_id)
}

#[tokio::test]
async fn another_valid_data_key_stops_the_start_naming_the_missing_one() {
    let (dir, mut config, old_id) = a_database_with_a_secret().await;
    let (other, other_id) = new_key_file(dir.path(), "other.key");
    config.keys.data_key_file = Some(other);
    let err = try_start(&config).expect_err("it served with another key");
    assert!(err.contains(&format!("data key(s) {old_id}")), "{err}");
    assert!(err.contains(&format!("its key is {other_id}")), "{err}");
    assert!(err.contains("keys.data_key_file"), "{err}");
    assert!(
        !err.contains("deleted or moved"),
        "not a regenerated key: {err}"
    );
}

#[tokio::test]
async fn a_retired_key_removed_before_the_rotation_stops_the_start_until_rotated() {
    let (dir, mut config, old_id) = a_database_with_a_secret().await;
    let old_key = config.dev_data_key_path();
    let (new_key, new_id) = new_key_file(dir.path(), "new.key");
    config.keys.data_key_file = Some(new_key);

    // New key current, old key retired: the server starts (the values are readable).
    config.keys.retired_key_files = vec![old_key.clone()];
    try_start(&config).expect("current and retired keys cover the database");

    // The retired key removed before `keys rotate` moved anything: refused.
    config.keys.retired_key_files.clear();
    let err = try_start(&config).expect_err("it served without the retired key");
    assert!(err.contains(&format!("data key(s) {old_id}")), "{err}");
    assert!(err.contains(&format!("its key is {new_id}")), "{err}");
    assert!(err.contains("keys.retired_key_files"), "{err}");

    // After the rotation, nothing needs the old key: it can go.
    config.keys.retired_key_files = vec![old_key];
    let keys = ghostkey::keys::load_server_keys(&config).unwrap().0;
    let store = ghostkey::server::open_store(&config).unwrap();
    let report = ghostkey::admin::rotate_keys(&*store, &keys, 100, common::now()).unwrap();
    assert_eq!(report.methods, 1);
    drop(store);
    config.keys.retired_key_files.clear();
    try_start(&config).expect("rotated: the old key is no longer needed");
}
