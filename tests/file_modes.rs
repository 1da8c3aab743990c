//! Every file Ghostkey writes that holds (or sits beside) user data is readable by its
//! owner alone, as SECURITY.md says: the database, its `-wal` and `-shm` files, the
//! development data key, the lock file, backups, and a database after a restore.
#![cfg(unix)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use common::TestServer;

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

fn beside(db: &Path, suffix: &str) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

fn ghostkey(db: &Path) -> Command {
    common::ghostkey_on(db)
}

#[tokio::test]
async fn the_database_its_wal_and_shm_the_key_the_lock_and_backups_are_owner_only() {
    let server = TestServer::start();
    let app = server.register_app("Health");
    common::enrol(&server, &app, "alice-7").await;
    let db = server.db_path();
    // While the server runs, the write-ahead log and shared-memory index exist.
    let files = [
        db.clone(),
        beside(&db, "-wal"),
        beside(&db, "-shm"),
        beside(&db, ".lock"),
        server.config.dev_data_key_path(),
    ];
    for file in &files {
        assert_eq!(mode(file), 0o600, "{}", file.display());
    }

    let backup = server.dir.path().join("backup.db");
    let out = ghostkey(&db).arg("backup").arg(&backup).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(mode(&backup), 0o600, "backup");

    // A restore into a database that did not exist creates it owner-only too.
    let dir = Arc::clone(&server.dir);
    drop(server);
    let restored = dir.path().join("restored.db");
    let out = ghostkey(&restored)
        .arg("restore")
        .arg(&backup)
        .arg("--yes")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for file in [restored.clone(), beside(&restored, ".lock")] {
        assert_eq!(mode(&file), 0o600, "{}", file.display());
    }
    // Opened again (as a server would), its new -wal and -shm are owner-only as well.
    let store = ghostkey::store::SqliteStore::open(
        &restored,
        ghostkey::config::Synchronous::Full,
        std::time::Duration::from_secs(1),
    )
    .unwrap();
    use ghostkey::store::Store;
    assert!(store.audit_head().unwrap().is_some());
    for suffix in ["-wal", "-shm"] {
        let file = beside(&restored, suffix);
        assert_eq!(mode(&file), 0o600, "{}", file.display());
    }
}
