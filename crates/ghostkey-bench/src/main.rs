//! Ghostkey's benchmark harness. `bench/run.sh` is the documented entry point; it builds
//! the release binaries and runs `ghostkey-bench run` pinned to its own core.
//!
//! `run` starts the durable-write baseline and then Ghostkey (each pinned to another
//! core), drives both with the same closed-loop HTTP load generator, and writes the JSON
//! result and the Markdown table (docs/BENCHMARKS.md).
#![forbid(unsafe_code)]

mod attack;
mod baseline;
mod fill;
mod load;
mod procs;
mod receiver;
mod report;
mod scenarios;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use ghostkey_client::kit::unix_now;
use ghostkey_client::{AppSigningKey, Client};

use load::{closed_loop, PhaseResult};
use report::{DatabaseSize, Machine, RunResult};
use scenarios::Target;

#[derive(Parser)]
#[command(name = "ghostkey-bench", about = "Ghostkey's benchmark harness")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The baseline service: one durable SQLite write per `POST /write`.
    BaselineServer {
        /// Its database file.
        #[arg(long)]
        db: PathBuf,
        /// Where to listen.
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
    },
    /// The whole benchmark: baseline, then Ghostkey, same load generator, same run.
    Run(RunArgs),
}

#[derive(clap::Args)]
struct RunArgs {
    /// The release `ghostkey` binary.
    #[arg(long)]
    ghostkey: PathBuf,
    /// A scratch directory for databases, configuration and server logs (emptied first).
    #[arg(long)]
    work: PathBuf,
    /// Where to write the JSON result.
    #[arg(long)]
    json: PathBuf,
    /// The Markdown file whose section for this run's label is replaced.
    #[arg(long)]
    markdown: PathBuf,
    /// Names the run (and its section in the Markdown).
    #[arg(long, default_value = "small")]
    label: String,
    /// Users to bulk-load into Ghostkey's database before the run (the scale test).
    #[arg(long, default_value_t = 0)]
    preload_users: usize,
    /// Concurrency levels.
    #[arg(long, value_delimiter = ',', default_values_t = [1, 16, 64])]
    concurrency: Vec<usize>,
    /// Operations per concurrency level, as a multiple of the defaults (0.1 for a quick try).
    #[arg(long, default_value_t = 1.0)]
    scale: f64,
    /// The core the servers run on; the load generator should be pinned elsewhere
    /// (bench/run.sh pins it). Negative: no pinning.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    server_cpu: i64,
    /// Attacker workers of the attack scenario, each from its own loopback address
    /// (127.0.0.2 on); 0 leaves the scenario out.
    #[arg(long, default_value_t = 64)]
    attackers: usize,
    /// Legitimate workers of the attack scenario.
    #[arg(long, default_value_t = 16)]
    attack_concurrency: usize,
    /// Scenarios to leave out (`sms`, `passphrase`, `passkey`), to profile the server on
    /// the others alone (a run that skips any writes no tables worth publishing).
    #[arg(long, value_delimiter = ',', value_parser = ["sms", "passphrase", "passkey"])]
    skip: Vec<String>,
    /// A `postgres://` URL: Ghostkey runs on PostgreSQL (given to every node as
    /// `GHOSTKEY_DATABASE__URL`; the harness runs `ghostkey db migrate` first). bench/run.sh
    /// `--backend postgres` starts a cluster of its own and passes its URL here. Unset: SQLite.
    #[arg(long)]
    database_url: Option<String>,
    /// Ghostkey nodes (`serve` processes, same configuration and data key) the load
    /// generator spreads its requests over, in turn; more than one needs `--database-url`.
    #[arg(long, default_value_t = 1)]
    nodes: usize,
    /// Loopback addresses the measured load comes from (127.2.0.1 on), in turn with the
    /// nodes; 1 (the default): all of it from 127.0.0.1, as one client address, which
    /// makes the per-address limit's counter one row every request updates.
    #[arg(long, default_value_t = 1)]
    source_addresses: usize,
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::BaselineServer { db, listen } => baseline::serve(&db, listen),
        Command::Run(args) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .map_err(|e| e.to_string())
            .and_then(|rt| rt.block_on(run(args))),
    };
    if let Err(e) = result {
        eprintln!("ghostkey-bench: {e}");
        std::process::exit(1);
    }
}

/// Operations per level: enough for a stable p99 at each concurrency.
fn ops(per_worker: usize, floor: usize, concurrency: usize, scale: f64) -> usize {
    (((per_worker * concurrency).max(floor)) as f64 * scale).ceil() as usize
}

/// How long the generator keeps an idle connection: under the server's keep-alive (actix's
/// default, 5 s), so it never sends a request on a connection the server is closing at
/// that moment (seen as an occasional "error sending request" in two-node runs, whose
/// connections sit idle longer).
pub(crate) const POOL_IDLE: Duration = Duration::from_secs(3);

fn http_client() -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .timeout(Duration::from_secs(60))
        .pool_idle_timeout(POOL_IDLE)
        .build()
        .map_err(|e| e.to_string())
}

fn print_phase(p: &PhaseResult) {
    eprintln!(
        "  {:<40} c={:<3} {:>7} ops in {:>6.2} s = {:>8.1}/s  p50 {:>7.2} ms  p99 {:>7.2} ms  max {:>7.2} ms  errors {}  shed {}",
        p.scenario,
        p.concurrency,
        p.operations,
        p.seconds,
        p.ops_per_sec,
        p.operation.p50_ms,
        p.operation.p99_ms,
        p.operation.max_ms,
        p.errors,
        p.shed
    );
    for e in &p.error_samples {
        eprintln!("    error: {e}");
    }
}

async fn run(args: RunArgs) -> Result<(), String> {
    let cpu = (args.server_cpu >= 0).then_some(args.server_cpu as usize);
    let pinning = match cpu {
        Some(c) => format!(
            "servers pinned to core {c} with taskset, load generator on the other core(s) (bench/run.sh)"
        ),
        None => "no pinning".into(),
    };
    if args.work.exists() {
        std::fs::remove_dir_all(&args.work).map_err(|e| e.to_string())?;
    }
    std::fs::create_dir_all(&args.work).map_err(|e| e.to_string())?;
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    if args.nodes == 0 {
        return Err("--nodes must be at least 1".into());
    }
    if args.nodes > 1 && args.database_url.is_none() {
        return Err("several nodes share one database: --nodes > 1 needs --database-url".into());
    }

    // --- Baseline -------------------------------------------------------------------
    eprintln!("baseline: one durable SQLite write per request");
    let port = procs::free_port()?;
    let mut cmd = procs::pinned(&me, cpu);
    cmd.arg("baseline-server")
        .arg("--db")
        .arg(args.work.join("baseline.db"))
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"));
    let base = procs::start(
        cmd,
        format!("http://127.0.0.1:{port}"),
        "/healthz",
        &args.work.join("baseline.log"),
    )
    .await?;
    let http = http_client()?;
    let write_url = Arc::new(format!("{}/write", base.url));
    let mut baseline = Vec::new();
    for &c in &args.concurrency {
        let n = ops(150, 500, c, args.scale);
        let (h, u) = (http.clone(), Arc::clone(&write_url));
        let p = closed_loop("baseline: one durable write", vec![(); n], c, move |()| {
            scenarios::baseline_write(h.clone(), Arc::clone(&u))
        })
        .await;
        print_phase(&p);
        baseline.push(p);
    }
    let baseline_peak_mib = base.peak_memory_mib();
    drop(base);

    // --- Ghostkey ---------------------------------------------------------------------
    let (gateway, inbox) = receiver::start()?;
    let setup = GhostkeySetup::create(
        &args.work,
        &args.ghostkey,
        gateway,
        args.database_url.clone(),
        args.nodes,
    )?;
    setup.migrate()?;
    let key = AppSigningKey::generate("bench-1");
    let app_id = setup.register_app(&key)?;
    let users_before = setup.count_users()?;
    let gk = setup.start_nodes(cpu, &args.work, "ghostkey").await?;
    eprintln!(
        "ghostkey ({}): {} node(s), pids {:?}, {users_before} users before the run",
        setup.backend(),
        gk.len(),
        gk.iter().map(|s| s.pid()).collect::<Vec<_>>()
    );
    let mut clients = Vec::new();
    for a in 0..args.source_addresses.max(1) {
        for u in &setup.urls {
            clients.push(if args.source_addresses <= 1 {
                Client::with_http(u, http.clone()).map_err(|e| e.to_string())?
            } else {
                let from = std::net::Ipv4Addr::new(127, 2, (a / 250) as u8, (a % 250 + 1) as u8);
                let http = reqwest::Client::builder()
                    .local_address(std::net::IpAddr::V4(from))
                    .pool_max_idle_per_host(256)
                    .timeout(Duration::from_secs(60))
                    .pool_idle_timeout(POOL_IDLE)
                    .build()
                    .map_err(|e| e.to_string())?;
                Client::with_http(u, http).map_err(|e| e.to_string())?
            });
        }
    }
    let t = Arc::new(Target {
        clients: clients.clone(),
        next: std::sync::atomic::AtomicUsize::new(0),
        app_id,
        key,
        audience: setup.service_id.clone(),
        inbox,
        shed: std::sync::atomic::AtomicUsize::new(0),
    });
    // The attack scenario's victims: users of an app that keeps the default policy, so
    // the attackers meet the limits an operator would have.
    let plan = if args.attackers > 0 {
        let key = AppSigningKey::generate("victims-1");
        let app_id = setup.add_app(&key, "bench-victims")?;
        Some(attack::Plan {
            victims: Arc::new(Target {
                clients,
                next: std::sync::atomic::AtomicUsize::new(0),
                app_id,
                key,
                audience: setup.service_id.clone(),
                inbox: t.inbox.clone(),
                shed: std::sync::atomic::AtomicUsize::new(0),
            }),
            urls: setup.urls.clone(),
            attackers: args.attackers,
            concurrency: args.attack_concurrency,
            server_core: cpu,
        })
    } else {
        None
    };
    let (results, setups, attacked) = ghostkey_phases(
        &t,
        &args.concurrency,
        &args.skip,
        args.scale,
        "a",
        0,
        plan.as_ref(),
        gk[0].pid(),
    )
    .await?;
    let mut preload_comparison = None;
    let mut gk = gk;
    if args.preload_users > 0 {
        // The same phases again after bulk-loading users, in the same run, so the
        // comparison is not blurred by the machine's speed changing between runs.
        drop(gk);
        let filler = AppSigningKey::generate("fill-1");
        let fill_app = setup.register_app(&filler)?;
        eprintln!("preloading {} users", args.preload_users);
        let t0 = std::time::Instant::now();
        match &args.database_url {
            Some(url) => fill::fill_postgres(url, &fill_app, &filler, args.preload_users)?,
            None => fill::fill(&setup.db, &fill_app, &filler, args.preload_users)?,
        }
        let fill_seconds = t0.elapsed().as_secs_f64();
        let users = setup.count_users()?;
        gk = setup.start_nodes(cpu, &args.work, "ghostkey-2").await?;
        eprintln!("ghostkey restarted: pid {}, {users} users", gk[0].pid());
        let (after, _, attacked_after) = ghostkey_phases(
            &t,
            &args.concurrency,
            &args.skip,
            args.scale,
            "b",
            1,
            plan.as_ref(),
            gk[0].pid(),
        )
        .await?;
        preload_comparison = Some(report::Preloaded {
            users_loaded: args.preload_users,
            fill_seconds,
            users_before: users,
            phases: after,
            attack: attacked_after,
        });
    }
    // The largest node's peak (they serve the same load share).
    let ghostkey_peak_mib = gk
        .iter()
        .filter_map(|s| s.peak_memory_mib())
        .reduce(f64::max);
    eprintln!("SMS gateway received {} code messages", t.inbox.total());
    drop(gk);

    let database = setup.database_size()?;
    let run = RunResult {
        label: args.label.clone(),
        at: unix_now(),
        machine: Machine::probe(pinning),
        command: std::env::var("BENCH_COMMAND_LINE")
            .unwrap_or_else(|_| std::env::args().collect::<Vec<_>>().join(" ")),
        backend: setup.backend().into(),
        nodes: args.nodes,
        source_addresses: args.source_addresses.max(1),
        baseline_writes_to: "a local SQLite file (WAL, synchronous=FULL, one fsync per write; \
            the same baseline whatever Ghostkey's backend)"
            .into(),
        users_before,
        baseline,
        ghostkey: results,
        setup: setups,
        attack: attacked,
        baseline_peak_mib,
        ghostkey_peak_mib,
        preloaded: preload_comparison,
        database,
    };
    report::write(&run, &args.json, &args.markdown)?;
    eprint!("{}", report::markdown(&run));
    eprintln!(
        "wrote {} and the `{}` section of {}",
        args.json.display(),
        args.label,
        args.markdown.display()
    );
    Ok(())
}

/// An untimed setup phase at c=16: `make` for every item, what each made kept (in the
/// order they finished), the phase printed and recorded in `setups`; like a measured
/// phase, any error aborts the run.
pub(crate) async fn setup_phase<I, T, F, Fut>(
    t: &Arc<Target>,
    setups: &mut Vec<PhaseResult>,
    name: &str,
    step: &'static str,
    items: Vec<I>,
    make: F,
) -> Result<Vec<T>, String>
where
    I: Send + 'static,
    T: Send + 'static,
    F: Fn(I) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<T, String>> + Send,
{
    let made = Arc::new(std::sync::Mutex::new(Vec::new()));
    let m = Arc::clone(&made);
    let p = closed_loop(name, items, 16, move |item| {
        let (m, make) = (Arc::clone(&m), make.clone());
        async move {
            let t0 = std::time::Instant::now();
            let one = make(item).await?;
            m.lock().map_err(|e| e.to_string())?.push(one);
            Ok(vec![(step, t0.elapsed())])
        }
    })
    .await;
    let p = with_shed(t, p);
    print_phase(&p);
    check_clean(&p)?;
    setups.push(p);
    let made = std::mem::take(&mut *made.lock().map_err(|e| e.to_string())?);
    Ok(made)
}

/// A Ghostkey phase's result with the `503 unavailable` answers it met (counted apart
/// from errors: each was retried after its Retry-After).
fn with_shed(t: &scenarios::Target, mut p: PhaseResult) -> PhaseResult {
    p.shed = t.take_shed();
    p
}

/// A phase with errors is not a benchmark result.
fn check_clean(p: &PhaseResult) -> Result<(), String> {
    if p.errors > 0 {
        return Err(format!(
            "{} at c={} had {} errors, first: {:?}",
            p.scenario, p.concurrency, p.errors, p.error_samples
        ));
    }
    Ok(())
}

/// A Ghostkey deployment in the work directory: data key, webhook secret, configuration.
struct GhostkeySetup {
    binary: PathBuf,
    config: PathBuf,
    db: PathBuf,
    /// The nodes' base URLs; the first is the configuration's `server.listen`, the others
    /// override it with `GHOSTKEY_SERVER__LISTEN`.
    urls: Vec<String>,
    service_id: String,
    /// The PostgreSQL URL (every `ghostkey` command gets it as `GHOSTKEY_DATABASE__URL`).
    database_url: Option<String>,
}

impl GhostkeySetup {
    fn create(
        work: &Path,
        binary: &Path,
        gateway: SocketAddr,
        database_url: Option<String>,
        nodes: usize,
    ) -> Result<GhostkeySetup, String> {
        let dir = work.join("ghostkey");
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let data_key = dir.join("data.key");
        procs::run(
            std::process::Command::new(binary)
                .args(["keys", "generate", "--out"])
                .arg(&data_key),
        )?;
        let secret = dir.join("webhook.secret");
        std::fs::write(&secret, "bench-webhook-signing-secret-0123456789")
            .map_err(|e| e.to_string())?;
        let port = procs::free_port()?;
        let db = dir.join("ghostkey.db");
        let service_id = "bench.ghostkey.test".to_owned();
        let config = dir.join("ghostkey.toml");
        // Production mode, durable writes, request logs at info level to a file: what an
        // operator runs, minus TLS (a proxy in front would terminate it).
        let text = format!(
            r#"mode = "production"
service_id = "{service_id}"

[server]
listen = "127.0.0.1:{port}"

[database]
path = "{db}"
synchronous = "full"

[keys]
data_key_file = "{key}"

[log]
format = "json"
level = "info"

[sms]
provider = "webhook"

[sms.webhook]
url = "http://{gateway}/sms"
secret_file = "{secret}"

[email]
provider = "smtp"
smtp_host = "127.0.0.1"
smtp_port = 2525
smtp_tls = "none"
from = "Ghostkey <no-reply@bench.ghostkey.test>"
"#,
            db = db.display(),
            key = data_key.display(),
            secret = secret.display(),
        );
        std::fs::write(&config, text).map_err(|e| e.to_string())?;
        let mut urls = vec![format!("http://127.0.0.1:{port}")];
        for _ in 1..nodes {
            urls.push(format!("http://127.0.0.1:{}", procs::free_port()?));
        }
        Ok(GhostkeySetup {
            binary: binary.to_owned(),
            config,
            db,
            urls,
            service_id,
            database_url,
        })
    }

    /// `sqlite` or `postgres`.
    fn backend(&self) -> &'static str {
        if self.database_url.is_some() {
            "postgres"
        } else {
            "sqlite"
        }
    }

    /// `ghostkey --config <config>`, with the PostgreSQL URL in its environment if any.
    fn command(&self, program: std::process::Command) -> std::process::Command {
        let mut c = program;
        c.arg("--config").arg(&self.config);
        if let Some(url) = &self.database_url {
            c.env("GHOSTKEY_DATABASE__URL", url);
        }
        c
    }

    /// `ghostkey db migrate` (creates the PostgreSQL schema; SQLite needs nothing).
    fn migrate(&self) -> Result<(), String> {
        if self.database_url.is_some() {
            procs::run(
                self.command(std::process::Command::new(&self.binary))
                    .args(["db", "migrate"]),
            )?;
        }
        Ok(())
    }

    /// Starts every node (`ghostkey serve`, pinned like the single server) and waits until
    /// each is ready; logs `<work>/<log>.log`, `<log>-node2.log`, ...
    async fn start_nodes(
        &self,
        cpu: Option<usize>,
        work: &Path,
        log: &str,
    ) -> Result<Vec<procs::Server>, String> {
        let mut servers = Vec::new();
        for (i, url) in self.urls.iter().enumerate() {
            let mut cmd = self.command(procs::pinned(&self.binary, cpu));
            cmd.arg("serve");
            let name = if i == 0 {
                format!("{log}.log")
            } else {
                cmd.env("GHOSTKEY_SERVER__LISTEN", url.trim_start_matches("http://"));
                format!("{log}-node{}.log", i + 1)
            };
            servers.push(procs::start(cmd, url.clone(), "/readyz", &work.join(name)).await?);
        }
        Ok(servers)
    }

    /// A query's single value through `psql` (the PostgreSQL backend).
    fn psql(&self, url: &str, sql: &str) -> Result<String, String> {
        let out = procs::run(std::process::Command::new("psql").arg(url).args([
            "-X",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            sql,
        ]))?;
        Ok(out.trim().to_owned())
    }

    fn count_users(&self) -> Result<i64, String> {
        match &self.database_url {
            Some(url) => self
                .psql(url, "SELECT count(*) FROM users")?
                .parse()
                .map_err(|e| format!("count of users: {e}")),
            None => count_users(&self.db),
        }
    }

    fn database_size(&self) -> Result<DatabaseSize, String> {
        match &self.database_url {
            Some(url) => {
                let users = self.count_users()?;
                let bytes: u64 = self
                    .psql(
                        url,
                        "CHECKPOINT; SELECT pg_database_size(current_database())",
                    )
                    .and_then(|b| {
                        b.lines()
                            .last()
                            .unwrap_or_default()
                            .parse()
                            .map_err(|e| format!("database size: {e}"))
                    })?;
                Ok(DatabaseSize {
                    bytes,
                    users,
                    bytes_per_user: bytes as f64 / (users.max(1) as f64),
                })
            }
            None => database_size(&self.db),
        }
    }

    /// Registers an app named `name` with `key` and the default policy; its id.
    fn add_app(&self, key: &AppSigningKey, name: &str) -> Result<String, String> {
        let out = procs::run(
            self.command(std::process::Command::new(&self.binary))
                .args(["app", "add", "--name", name, "--key-id", key.kid()])
                .arg(format!("--public-key={}", key.public_key_b64())),
        )?;
        Ok(out.trim().to_owned())
    }

    /// Registers an app with `key` and a policy fit for load from one address; its id.
    fn register_app(&self, key: &AppSigningKey) -> Result<String, String> {
        let app_id = self.add_app(key, "bench")?;
        procs::run(
            self.command(std::process::Command::new(&self.binary))
                .args(["app", "policy", "set", &app_id])
                .args(["--requests-per-address-per-minute", "100000"])
                .args(["--sends-per-destination-per-hour", "100"])
                .args(["--sends-per-destination-per-day", "1000"])
                .args(["--app-daily-send-budget", "10000000"])
                // The app-wide ceiling on code checks without an assertion (default 600
                // a minute) would refuse the load of one benchmark; at its maximum.
                .args(["--code-checks-per-app-per-minute", "1000000"])
                .args(["--allowed-methods", "totp,sms,passphrase,passkey"]),
        )?;
        // Passkeys: the RP id and the page they are made and used on.
        procs::run(
            self.command(std::process::Command::new(&self.binary))
                .args(["app", "passkey", "set", &app_id])
                .args(["--rp-id", scenarios::PASSKEY_RP_ID]),
        )?;
        procs::run(
            self.command(std::process::Command::new(&self.binary))
                .args(["app", "origins", "add", &app_id, scenarios::PASSKEY_ORIGIN]),
        )?;
        Ok(app_id)
    }
}

fn count_users(db: &Path) -> Result<i64, String> {
    let conn = rusqlite::Connection::open(db).map_err(|e| e.to_string())?;
    conn.query_row("SELECT count(*) FROM users", [], |r| r.get(0))
        .map_err(|e| e.to_string())
}

/// The database's size once its WAL is checkpointed, per enrolled user.
fn database_size(db: &Path) -> Result<DatabaseSize, String> {
    let conn = rusqlite::Connection::open(db).map_err(|e| e.to_string())?;
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .map_err(|e| e.to_string())?;
    let users: i64 = conn
        .query_row("SELECT count(*) FROM users", [], |r| r.get(0))
        .map_err(|e| e.to_string())?;
    drop(conn);
    let bytes = std::fs::metadata(db).map(|m| m.len()).unwrap_or(0);
    Ok(DatabaseSize {
        bytes,
        users,
        bytes_per_user: bytes as f64 / (users.max(1) as f64),
    })
}

/// Ghostkey's measured phases (and their setup) against the running server, and the
/// attack scenario when there is a `plan`; `pass` names the users, so a second pass on the
/// same database enrols new ones.
#[allow(clippy::too_many_arguments)]
async fn ghostkey_phases(
    t: &Arc<Target>,
    concurrency: &[usize],
    skip: &[String],
    scale: f64,
    pass: &str,
    pass_no: usize,
    plan: Option<&attack::Plan>,
    server_pid: u32,
) -> Result<
    (
        Vec<PhaseResult>,
        Vec<PhaseResult>,
        Option<attack::AttackScenario>,
    ),
    String,
> {
    let mut results = Vec::new();
    let mut setups = Vec::new();
    // The concurrency levels a scenario runs at: none when it is skipped.
    let levels = |scenario: &str| -> &[usize] {
        if skip.iter().any(|s| s == scenario) {
            &[]
        } else {
            concurrency
        }
    };

    // Enrolments; the users enrolled here recover below.
    let mut enrolled = Vec::new();
    for &c in concurrency {
        let n = ops(40, 300, c, scale);
        let ids: Vec<String> = (0..n).map(|i| format!("bench-{pass}-c{c}-{i}")).collect();
        let prepared = ids
            .iter()
            .map(|id| scenarios::prepare_enrolment(t, id))
            .collect::<Result<Vec<_>, _>>()?;
        let tt = Arc::clone(t);
        let p = closed_loop("enrolment", prepared, c, move |e| {
            scenarios::enrol(Arc::clone(&tt), e)
        })
        .await;
        let p = with_shed(t, p);
        print_phase(&p);
        check_clean(&p)?;
        results.push(p);
        enrolled.push((c, ids));
    }

    // Each of those users confirms a TOTP method (untimed setup, recorded).
    let mut totp_users: Vec<(usize, Vec<scenarios::TotpUser>)> = Vec::new();
    for (c, ids) in enrolled {
        let tt = Arc::clone(t);
        let users = setup_phase(
            t,
            &mut setups,
            "setup: add and confirm TOTP",
            "add + confirm TOTP",
            ids,
            move |id| scenarios::setup_totp(Arc::clone(&tt), id),
        )
        .await?;
        totp_users.push((c, users));
    }
    // The attack scenario's users confirm TOTP here too, before the wait.
    let attack_users = match plan {
        Some(plan) => Some(attack::prepare(t, plan, scale, pass, &mut setups).await?),
        None => None,
    };
    // A TOTP step is spent once per method: recoveries use the step after confirmation.
    let wait = 31 - unix_now().rem_euclid(30);
    eprintln!("waiting {wait} s for the next TOTP step");
    tokio::time::sleep(Duration::from_secs(wait as u64)).await;

    for (c, users) in totp_users {
        let prepared = users
            .into_iter()
            .map(|u| scenarios::prepare_totp_recovery(t, u))
            .collect::<Result<Vec<_>, _>>()?;
        let tt = Arc::clone(t);
        let p = closed_loop("complete TOTP recovery", prepared, c, move |r| {
            scenarios::totp_recovery(Arc::clone(&tt), r)
        })
        .await;
        let p = with_shed(t, p);
        print_phase(&p);
        check_clean(&p)?;
        results.push(p);
    }

    // The same recoveries alone and under attack, while the TOTP step is fresh.
    let attacked = match (plan, attack_users) {
        (Some(plan), Some(users)) => {
            Some(attack::measure(t, plan, users, server_pid, &mut setups).await?)
        }
        _ => None,
    };

    // SMS: users with a confirmed phone and a started recovery, then the verification.
    for &c in levels("sms") {
        let n = ops(6, 40, c, scale);
        let users: Vec<(String, String)> = (0..n)
            .map(|i| {
                (
                    format!("sms-{pass}-c{c}-{i}"),
                    format!("+41{}{:07}", 76 + pass_no, c * 100_000 + i),
                )
            })
            .collect();
        let tt = Arc::clone(t);
        let ready = setup_phase(
            t,
            &mut setups,
            "setup: enrol, confirm SMS, start recovery",
            "setup",
            users,
            move |(id, phone)| scenarios::setup_sms_recovery(Arc::clone(&tt), id, phone),
        )
        .await?;
        let tt = Arc::clone(t);
        let p = closed_loop("SMS-code verification", ready, c, move |v| {
            scenarios::sms_verification(Arc::clone(&tt), v)
        })
        .await;
        let p = with_shed(t, p);
        print_phase(&p);
        check_clean(&p)?;
        results.push(p);
    }

    // Passphrase: users with a confirmed passphrase (the client's derivation done once
    // per user here), then the complete recoveries.
    // Each user costs the server two Argon2id at setup (add, confirm): fewer than the SMS
    // phases, to keep the run short; c=64 still overfills the Argon2 line.
    for &c in levels("passphrase") {
        let n = ops(4, 30, c, scale);
        let ids: Vec<String> = (0..n).map(|i| format!("pass-{pass}-c{c}-{i}")).collect();
        let tt = Arc::clone(t);
        let users = setup_phase(
            t,
            &mut setups,
            "setup: enrol, derive, add and confirm passphrase",
            "setup",
            ids,
            move |id| scenarios::setup_passphrase(Arc::clone(&tt), id),
        )
        .await?;
        let prepared = users
            .into_iter()
            .map(|u| scenarios::prepare_passphrase_recovery(t, u))
            .collect::<Result<Vec<_>, _>>()?;
        let tt = Arc::clone(t);
        let p = closed_loop(
            "complete passphrase recovery (Argon2id)",
            prepared,
            c,
            move |r| scenarios::passphrase_recovery(Arc::clone(&tt), r),
        )
        .await;
        let p = with_shed(t, p);
        print_phase(&p);
        check_clean(&p)?;
        results.push(p);
    }

    // Passkey: users with a registered software passkey, then the complete recoveries.
    for &c in levels("passkey") {
        let n = ops(10, 200, c, scale);
        let ids: Vec<String> = (0..n).map(|i| format!("key-{pass}-c{c}-{i}")).collect();
        let tt = Arc::clone(t);
        let users = setup_phase(
            t,
            &mut setups,
            "setup: enrol, register passkey",
            "setup",
            ids,
            move |id| scenarios::setup_passkey(Arc::clone(&tt), id),
        )
        .await?;
        let prepared = users
            .into_iter()
            .map(|u| scenarios::prepare_passkey_recovery(t, u))
            .collect::<Result<Vec<_>, _>>()?;
        let tt = Arc::clone(t);
        let p = closed_loop(
            "complete passkey recovery (WebAuthn)",
            prepared,
            c,
            move |r| scenarios::passkey_recovery(Arc::clone(&tt), r),
        )
        .await;
        let p = with_shed(t, p);
        print_phase(&p);
        check_clean(&p)?;
        results.push(p);
    }
    Ok((results, setups, attacked))
}
