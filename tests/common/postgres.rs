//! A real PostgreSQL cluster for the tests: `initdb` and `pg_ctl` in a temporary directory,
//! listening on a free loopback port, one per test binary, each test in a fresh database.
//!
//! PostgreSQL refuses to run as root: as root the cluster runs as the `postgres` user
//! (Debian's package creates it). A missing PostgreSQL fails the test with what to install;
//! it never skips. A watchdog stops the cluster and removes its directory when the test
//! process ends.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

/// A running cluster.
pub struct PgCluster {
    pub port: u16,
    pub data_dir: PathBuf,
    pub bin_dir: PathBuf,
    /// The OS user the server runs as (`None`: this process's user).
    pub os_user: Option<String>,
}

/// The directory of `initdb`, `pg_ctl`, `psql`...
pub fn bin_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("GHOSTKEY_TEST_PG_BIN") {
        return PathBuf::from(dir);
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if dir.join("initdb").is_file() {
            return dir;
        }
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|entries| {
            entries
                .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
                .filter(|p| p.join("initdb").is_file())
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found.pop().unwrap_or_else(|| {
        panic!(
            "PostgreSQL is not installed (no initdb in /usr/lib/postgresql/*/bin or on PATH): \
             the PostgreSQL tests need it; `bash scripts/test-all.sh` installs it \
             (Debian package `postgresql`)"
        )
    })
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl PgCluster {
    /// A command running `program` from the cluster's bin directory as its OS user.
    pub fn command(&self, program: &str) -> Command {
        let path = self.bin_dir.join(program);
        match &self.os_user {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(path);
                c
            }
            None => Command::new(path),
        }
    }

    /// Initialises and starts a new cluster in a fresh directory under `parent`.
    pub fn start_in(parent: &Path, extra_conf: &str) -> PgCluster {
        let bin_dir = bin_dir();
        let os_user = is_root().then(|| "postgres".to_owned());
        let data_dir = parent.join(format!("pg-{}", free_port()));
        std::fs::create_dir_all(&data_dir).unwrap();
        if let Some(user) = &os_user {
            let status = Command::new("chown")
                .args(["-R", &format!("{user}:"), parent.to_str().unwrap()])
                .status()
                .unwrap();
            assert!(status.success(), "chown of the cluster directory failed");
            // The server's user must reach the directory through its parents.
            let mut dir = parent.to_path_buf();
            while let Some(p) = dir.parent() {
                let _ = Command::new("chmod")
                    .args(["o+x", p.to_str().unwrap()])
                    .status();
                dir = p.to_path_buf();
            }
        }
        let cluster = PgCluster {
            port: free_port(),
            data_dir,
            bin_dir,
            os_user,
        };
        let out = cluster
            .command("initdb")
            .args(["-D", cluster.data_dir.to_str().unwrap()])
            .args(["-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let conf = format!(
            "listen_addresses = '127.0.0.1'\nport = {}\nunix_socket_directories = '{}'\n\
             max_connections = 300\nshared_buffers = 32MB\nfsync = on\nsynchronous_commit = on\n\
             log_min_messages = warning\n{extra_conf}\n",
            cluster.port,
            cluster.data_dir.display()
        );
        let conf_path = cluster.data_dir.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf_path).unwrap();
        text.push_str(&conf);
        std::fs::write(&conf_path, text).unwrap();
        cluster.pg_ctl_start();
        cluster.watch_parent();
        cluster
    }

    pub fn pg_ctl_start(&self) {
        let out = self
            .command("pg_ctl")
            .args(["-D", self.data_dir.to_str().unwrap()])
            .args(["-l", self.data_dir.join("server.log").to_str().unwrap()])
            .args(["-w", "-t", "60", "start"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pg_ctl start failed: {} (log: {})",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(self.data_dir.join("server.log")).unwrap_or_default()
        );
    }

    /// Stops the server: `mode` is `fast` or `immediate` (a crash: no checkpoint).
    pub fn pg_ctl_stop(&self, mode: &str) {
        let _ = self
            .command("pg_ctl")
            .args(["-D", self.data_dir.to_str().unwrap()])
            .args(["-m", mode, "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }

    /// Stops the cluster and removes its directory when this process ends (also when a
    /// test panics or the binary is killed).
    fn watch_parent(&self) {
        let pg_ctl = self.bin_dir.join("pg_ctl");
        let runas = match &self.os_user {
            Some(u) => format!("runuser -u {u} -- "),
            None => String::new(),
        };
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 0.5; done; \
             {runas}{pg_ctl} -D '{dir}' -m immediate -w stop >/dev/null 2>&1; rm -rf '{dir}'; \
             rmdir '{parent}' 2>/dev/null",
            pid = std::process::id(),
            pg_ctl = pg_ctl.display(),
            dir = self.data_dir.display(),
            parent = self.data_dir.parent().unwrap_or(&self.data_dir).display(),
        );
        let _ = Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
    }

    /// Runs SQL as the superuser on `database`; its output (unaligned, tuples only).
    pub fn psql(&self, database: &str, sql: &str) -> String {
        let out = Command::new(self.bin_dir.join("psql"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
            ])
            .args(["-d", database, "-v", "ON_ERROR_STOP=1", "-At", "-c", sql])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "psql failed on `{sql}`: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// A fresh, empty database; its URL.
    pub fn new_database(&self) -> String {
        static NEXT: AtomicU32 = AtomicU32::new(1);
        let name = format!(
            "gk_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        self.psql("postgres", &format!("CREATE DATABASE {name}"));
        self.url(&name)
    }

    pub fn url(&self, database: &str) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/{database}?sslmode=disable",
            self.port
        )
    }
}

/// The cluster this test binary shares (started on first use).
pub fn shared() -> &'static PgCluster {
    static CLUSTER: OnceLock<PgCluster> = OnceLock::new();
    CLUSTER.get_or_init(|| {
        let parent = std::env::temp_dir().join(format!("ghostkey-pg-{}", std::process::id()));
        std::fs::create_dir_all(&parent).unwrap();
        let cluster = PgCluster::start_in(&parent, "");
        // Give the server a moment to accept connections on TCP as well.
        for _ in 0..50 {
            if std::net::TcpStream::connect(("127.0.0.1", cluster.port)).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        cluster
    })
}

/// A fresh database on the shared cluster with the Ghostkey schema; its URL.
pub fn migrated_database() -> String {
    let url = shared().new_database();
    let options = options(&url);
    ghostkey::store::postgres::migrate(&options).unwrap();
    url
}

pub fn options(url: &str) -> ghostkey::store::postgres::PgOptions {
    ghostkey::store::postgres::PgOptions {
        url: secrecy::SecretString::from(url.to_owned()),
        ca_file: None,
        max_connections: 8,
        isolation: isolation(),
        retry_for: std::time::Duration::from_secs(5),
        prepared_statements: true,
    }
}

/// The isolation level the tests run at: `GHOSTKEY_TEST_PG_ISOLATION=serializable` runs
/// them under `SERIALIZABLE`.
pub fn isolation() -> ghostkey::store::postgres::Isolation {
    match std::env::var("GHOSTKEY_TEST_PG_ISOLATION").as_deref() {
        Ok("serializable") => ghostkey::store::postgres::Isolation::Serializable,
        _ => ghostkey::store::postgres::Isolation::ReadCommitted,
    }
}

impl PgCluster {
    /// Allows replication connections from 127.0.0.1 without a password (`initdb
    /// --auth=trust` already writes that line; it is added, and the server reloaded, if
    /// it is missing).
    pub fn allow_local_replication(&self) {
        let hba_path = self.data_dir.join("pg_hba.conf");
        let hba = std::fs::read_to_string(&hba_path).unwrap();
        let present = hba.lines().any(|l| {
            l.split_whitespace().collect::<Vec<_>>()
                == ["host", "replication", "all", "127.0.0.1/32", "trust"]
        });
        if !present {
            std::fs::write(
                &hba_path,
                format!("{hba}\nhost replication all 127.0.0.1/32 trust\n"),
            )
            .unwrap();
            let status = self
                .command("pg_ctl")
                .args(["-D", self.data_dir.to_str().unwrap(), "reload"])
                .stdout(Stdio::null())
                .status()
                .unwrap();
            assert!(status.success(), "pg_ctl reload failed");
        }
    }

    /// A streaming-replication standby of this cluster in a fresh directory under `parent`
    /// (`pg_basebackup -R`), connecting as `application_name`, on a port of its own, with
    /// `extra_auto_conf` appended to its `postgresql.auto.conf` (which overrides the
    /// `postgresql.conf` it copied from this cluster); started, watched like
    /// [`PgCluster::start_in`]'s clusters.
    pub fn start_standby_in(
        &self,
        parent: &Path,
        application_name: &str,
        extra_auto_conf: &str,
    ) -> PgCluster {
        self.allow_local_replication();
        let standby = PgCluster {
            port: free_port(),
            data_dir: parent.join(format!("pg-standby-{}", free_port())),
            bin_dir: self.bin_dir.clone(),
            os_user: self.os_user.clone(),
        };
        let out = self
            .command("pg_basebackup")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-U", "postgres", "-D", standby.data_dir.to_str().unwrap()])
            .args(["-R", "-X", "stream", "-c", "fast"])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pg_basebackup failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // The copied files: the primary's log and `postgresql.conf` (its port, its socket
        // directory), overridden below.
        let _ = std::fs::remove_file(standby.data_dir.join("server.log"));
        let auto_path = standby.data_dir.join("postgresql.auto.conf");
        let auto = std::fs::read_to_string(&auto_path).unwrap();
        let mut text: String = auto
            .lines()
            .filter(|l| !l.trim_start().starts_with("primary_conninfo"))
            .map(|l| format!("{l}\n"))
            .collect();
        text.push_str(&format!(
            "port = {}\nunix_socket_directories = '{}'\n\
             primary_conninfo = 'host=127.0.0.1 port={} user=postgres application_name={application_name}'\n\
             {extra_auto_conf}\n",
            standby.port,
            standby.data_dir.display(),
            self.port,
        ));
        std::fs::write(&auto_path, text).unwrap();
        if let Some(user) = &standby.os_user {
            let status = Command::new("chown")
                .args([
                    "-R",
                    &format!("{user}:"),
                    standby.data_dir.to_str().unwrap(),
                ])
                .status()
                .unwrap();
            assert!(status.success(), "chown of the standby's directory failed");
        }
        standby.pg_ctl_start();
        standby.watch_parent();
        standby
    }

    /// Promotes this standby to a primary (`pg_ctl promote`, waiting for it to finish).
    pub fn promote(&self) {
        let out = self
            .command("pg_ctl")
            .args(["-D", self.data_dir.to_str().unwrap()])
            .args(["-w", "-t", "60", "promote"])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pg_ctl promote failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
