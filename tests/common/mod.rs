//! A real Ghostkey server on 127.0.0.1:0 over a real SQLite file, for integration tests.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ghostkey::clock::{Clock, SystemClock};
use ghostkey::config::Config;
use ghostkey::store::{SqliteStore, Store};
use ghostkey_client::kit::AssertionRequest;
use ghostkey_client::proto::assertion::Purpose;
use ghostkey_client::{AppSigningKey, Client};

pub const SERVICE_ID: &str = "ghostkey-test";

pub struct TestServer {
    pub addr: SocketAddr,
    pub base_url: String,
    pub config: Config,
    pub dir: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TestServer {
    pub fn start() -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config {
            service_id: SERVICE_ID.into(),
            ..Config::default()
        };
        config.server.listen = "127.0.0.1:0".parse().unwrap();
        config.server.workers = 2;
        config.database.path = dir.path().join("ghostkey.db");
        config.validate().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server_config = config.clone();
        let thread = std::thread::spawn(move || {
            actix_web::rt::System::new().block_on(async move {
                let running = ghostkey::server::start(&server_config).unwrap();
                tx.send(running.addr).unwrap();
                let handle = running.server.handle();
                actix_web::rt::spawn(async move {
                    let _ = stop_rx.await;
                    handle.stop(false).await;
                });
                running.server.await.unwrap();
            });
        });
        let addr = rx.recv_timeout(Duration::from_secs(30)).unwrap();
        TestServer {
            addr,
            base_url: format!("http://{addr}"),
            config,
            dir,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    pub fn db_path(&self) -> PathBuf {
        self.config.database.path.clone()
    }

    /// The same database the server uses, as the admin commands open it.
    pub fn store(&self) -> SqliteStore {
        ghostkey::server::open_store(&self.config).unwrap()
    }

    pub fn client(&self) -> Client {
        Client::new(&self.base_url).unwrap()
    }

    /// Registers an app through the admin code path; returns its id and signing key.
    pub fn register_app(&self, name: &str) -> TestApp {
        let key = AppSigningKey::generate("k1");
        let id =
            ghostkey::admin::add_app(&self.store(), name, key.kid(), &key.public_key_b64(), now())
                .unwrap();
        TestApp { id, key }
    }

    /// Raw row counts, read straight from the SQLite file.
    pub fn count(&self, table: &str) -> i64 {
        let conn = rusqlite::Connection::open(self.db_path()).unwrap();
        conn.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
            .unwrap()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

pub struct TestApp {
    pub id: String,
    pub key: AppSigningKey,
}

impl TestApp {
    pub fn assertion(&self, user_id: &str, purpose: Purpose) -> String {
        self.key
            .mint(
                &AssertionRequest {
                    app_id: &self.id,
                    user_id,
                    audience: SERVICE_ID,
                    purpose,
                },
                now(),
                120,
            )
            .unwrap()
    }
}

pub fn now() -> i64 {
    SystemClock.now()
}

pub fn open_store_arc(config: &Config) -> Arc<dyn Store> {
    Arc::new(ghostkey::server::open_store(config).unwrap())
}
