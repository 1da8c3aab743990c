//! The result of a run: JSON for machines, a Markdown table for docs/BENCHMARKS.md.

use std::path::Path;

use serde::Serialize;

use crate::attack::AttackScenario;
use crate::load::PhaseResult;

/// Everything one run measured.
#[derive(Debug, Clone, Serialize)]
pub struct RunResult {
    /// A name for the run (`small` store, `1m` users).
    pub label: String,
    /// When it ran (Unix seconds).
    pub at: i64,
    /// The machine.
    pub machine: Machine,
    /// The command line.
    pub command: String,
    /// Ghostkey's store: `sqlite` (a file beside the node) or `postgres` (a PostgreSQL
    /// cluster the run started, shared by every node).
    pub backend: String,
    /// Ghostkey nodes (`serve` processes) the load generator spread requests over, in turn.
    pub nodes: usize,
    /// Loopback addresses the measured load came from (1: all from 127.0.0.1).
    pub source_addresses: usize,
    /// What the baseline's one durable write goes to.
    pub baseline_writes_to: String,
    /// Enrolled users in Ghostkey's database when the run began.
    pub users_before: i64,
    /// The baseline's phases.
    pub baseline: Vec<PhaseResult>,
    /// Ghostkey's phases.
    pub ghostkey: Vec<PhaseResult>,
    /// Untimed setup (method confirmations), for the record.
    pub setup: Vec<PhaseResult>,
    /// The attack scenario: legitimate TOTP recoveries alone and under attack, and what
    /// the attackers got (absent with `--attackers 0`).
    pub attack: Option<AttackScenario>,
    /// Peak resident memory of the baseline server, MiB.
    pub baseline_peak_mib: Option<f64>,
    /// Peak resident memory of the Ghostkey server over the whole run, MiB.
    pub ghostkey_peak_mib: Option<f64>,
    /// Ghostkey's database after the run.
    pub database: DatabaseSize,
    /// The scale test: the same phases after bulk-loading users.
    pub preloaded: Option<Preloaded>,
}

/// The second pass of a scale test.
#[derive(Debug, Clone, Serialize)]
pub struct Preloaded {
    /// Users the bulk loader added.
    pub users_loaded: usize,
    /// How long the bulk load took, in seconds.
    pub fill_seconds: f64,
    /// Enrolled users when the second pass began.
    pub users_before: i64,
    /// Ghostkey's phases on the loaded database.
    pub phases: Vec<PhaseResult>,
    /// The attack scenario on the loaded database.
    pub attack: Option<AttackScenario>,
}

/// The machine the run used.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// CPU model.
    pub cpu: String,
    /// Cores the OS shows.
    pub cores: usize,
    /// Memory, MiB.
    pub memory_mib: u64,
    /// Kernel.
    pub kernel: String,
    /// How server and load generator were placed.
    pub pinning: String,
}

/// Ghostkey's database size.
#[derive(Debug, Clone, Serialize)]
pub struct DatabaseSize {
    /// Bytes on disk (database file, after a checkpoint).
    pub bytes: u64,
    /// Enrolled users in it.
    pub users: i64,
    /// Bytes per enrolled user.
    pub bytes_per_user: f64,
}

impl Machine {
    /// What /proc says about this machine.
    pub fn probe(pinning: String) -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split(':').nth(1))
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|| "unknown".into());
        let cores = cpuinfo
            .lines()
            .filter(|l| l.starts_with("processor"))
            .count();
        let memory_mib = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines()
                    .find(|l| l.starts_with("MemTotal:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|k| k.parse::<u64>().ok())
            })
            .map_or(0, |kib| kib / 1024);
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_owned())
            .unwrap_or_default();
        Machine {
            cpu,
            cores,
            memory_mib,
            kernel,
            pinning,
        }
    }
}

fn find<'a>(phases: &'a [PhaseResult], scenario: &str, c: usize) -> Option<&'a PhaseResult> {
    phases
        .iter()
        .find(|p| p.scenario == scenario && p.concurrency == c)
}

fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 {
        format!("{:.2}x", a / b)
    } else {
        "n/a".into()
    }
}

fn percent(share: Option<f64>) -> String {
    share.map_or("n/a".into(), |s| format!("{:.0} %", s * 100.0))
}

/// The attack scenario's tables: the legitimate recoveries alone and under attack, then
/// the attackers' answers.
fn attack_tables(a: &AttackScenario) -> String {
    let mut s = String::new();
    s.push_str(&format!(
        "Complete TOTP recoveries at c={} alone, then while {} attackers (one address each, \
         {} to {}) send, as fast as they are answered, wrong codes to the open recoveries of \
         {} other users (an app with the default policy) and codes to unknown recovery ids, \
         in turn:\n\n",
        a.concurrency, a.attackers, a.attacker_addresses[0], a.attacker_addresses[1], a.victims
    ));
    s.push_str(
        "| legitimate TOTP recovery | ops/s alone | ops/s under attack | p50 ms alone \
         | p50 ms under attack | p50 ratio | p99 ms alone | p99 ms under attack | p99 ratio \
         | errors |\n",
    );
    s.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    let (x, y) = (&a.alone, &a.under_attack);
    s.push_str(&format!(
        "| whole operation | {:.0} | {:.0} | {:.2} | {:.2} | {} | {:.2} | {:.2} | **{}** | {} / {} |\n",
        x.ops_per_sec,
        y.ops_per_sec,
        x.operation.p50_ms,
        y.operation.p50_ms,
        ratio(y.operation.p50_ms, x.operation.p50_ms),
        x.operation.p99_ms,
        y.operation.p99_ms,
        ratio(y.operation.p99_ms, x.operation.p99_ms),
        x.errors,
        y.errors
    ));
    for (name, l) in &x.endpoints {
        let Some(m) = y.endpoints.get(name) else {
            continue;
        };
        s.push_str(&format!(
            "| `{name}` | | | {:.2} | {:.2} | {} | {:.2} | {:.2} | {} | |\n",
            l.p50_ms,
            m.p50_ms,
            ratio(m.p50_ms, l.p50_ms),
            l.p99_ms,
            m.p99_ms,
            ratio(m.p99_ms, l.p99_ms),
        ));
    }
    s.push_str(&format!(
        "\nLegitimate p99 under attack / alone: {:.2}x (target: at most 2x, {}); throughput \
         {:.2}x. {} recoveries per phase. CPU, alone / under attack: Ghostkey {} / {} of a \
         core; its core busy {} / {} with everything that ran on it; load generator {} / {}.\n\n",
        a.p99_ratio,
        if a.p99_ratio <= 2.0 { "met" } else { "missed" },
        a.ops_ratio,
        x.operations,
        percent(a.server_cpu[0]),
        percent(a.server_cpu[1]),
        percent(a.server_core_busy[0]),
        percent(a.server_core_busy[1]),
        percent(a.generator_cpu[0]),
        percent(a.generator_cpu[1]),
    ));
    s.push_str("| attacker request | HTTP status | code | answers | share | p50 ms | p99 ms |\n");
    s.push_str("|---|---:|---|---:|---:|---:|---:|\n");
    let total = a.attack.requests.max(1) as f64;
    for n in &a.attack.answers {
        let request = match n.request.as_str() {
            "wrong_code_open_recovery" => "wrong code, another user's open recovery",
            "unknown_recovery_id" => "code for an unknown recovery id",
            other => other,
        };
        s.push_str(&format!(
            "| {request} | {} | `{}` | {} | {:.1} % | {:.2} | {:.2} |\n",
            n.status,
            n.code,
            n.count,
            n.count as f64 * 100.0 / total,
            n.latency.p50_ms,
            n.latency.p99_ms,
        ));
    }
    s.push_str(&format!(
        "| all | | | {} | 100 % | {:.2} | {:.2} |\n",
        a.attack.requests, a.attack.latency.p50_ms, a.attack.latency.p99_ms
    ));
    s.push_str(&format!(
        "\nThe attackers got {} answers in {:.2} s ({:.0}/s).\n",
        a.attack.requests, a.attack.seconds, a.attack.per_sec
    ));
    s
}

/// The Markdown section for `run`.
pub fn markdown(run: &RunResult) -> String {
    let mut s = String::new();
    s.push_str(&format!(
        "Run `{}`: backend **{}**, **{} Ghostkey node{}** (requests spread over them in turn), load from {} client address{}; baseline: one durable write to {}; {} users enrolled before the run; {} ({} cores, {} MiB), Linux {}; {}.\n\n",
        run.label,
        run.backend,
        run.nodes,
        if run.nodes == 1 { "" } else { "s" },
        run.source_addresses,
        if run.source_addresses == 1 { "" } else { "es" },
        run.baseline_writes_to,
        run.users_before,
        run.machine.cpu,
        run.machine.cores,
        run.machine.memory_mib,
        run.machine.kernel,
        run.machine.pinning
    ));
    s.push_str("| scenario | endpoint | c | ops/s | ops/s vs baseline | p50 ms | p99 ms | max ms | p99 vs baseline p99 | errors | shed (503) |\n");
    s.push_str("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for p in run.baseline.iter().chain(run.ghostkey.iter()) {
        let base = find(&run.baseline, "baseline: one durable write", p.concurrency);
        let base_rate = base.map_or(0.0, |b| b.ops_per_sec);
        let base_p99 = base.map_or(0.0, |b| b.operation.p99_ms);
        s.push_str(&format!(
            "| {} | whole operation | {} | {:.0} | {} | {:.2} | {:.2} | {:.2} | {} | {} | {} |\n",
            p.scenario,
            p.concurrency,
            p.ops_per_sec,
            ratio(p.ops_per_sec, base_rate),
            p.operation.p50_ms,
            p.operation.p99_ms,
            p.operation.max_ms,
            ratio(p.operation.p99_ms, base_p99),
            p.errors,
            p.shed
        ));
        if p.endpoints.len() > 1 {
            for (name, l) in &p.endpoints {
                // The client's own work inside an operation (a passkey's signature) is
                // shown, but is no request to compare with the baseline's.
                let (shown, vs_base) = match name.strip_prefix("client: ") {
                    Some(what) => (format!("client: {what}"), String::new()),
                    None => (format!("`{name}`"), ratio(l.p99_ms, base_p99)),
                };
                s.push_str(&format!(
                    "| | {} | {} | | | {:.2} | {:.2} | {:.2} | {} | | |\n",
                    shown, p.concurrency, l.p50_ms, l.p99_ms, l.max_ms, vs_base,
                ));
            }
        }
    }
    if let Some(a) = &run.attack {
        s.push_str("\n**Under attack.** ");
        s.push_str(&attack_tables(a));
    }
    if let Some(pre) = &run.preloaded {
        s.push_str(&format!(
            "\nThe same phases after bulk-loading {} users in {:.0} s ({} users enrolled), compared with the first pass above:\n\n",
            pre.users_loaded, pre.fill_seconds, pre.users_before
        ));
        s.push_str("| scenario | c | ops/s | ops/s vs first pass | p50 ms | p50 vs first pass | p99 ms | p99 vs first pass | errors | shed (503) |\n");
        s.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
        for p in &pre.phases {
            let first = find(&run.ghostkey, &p.scenario, p.concurrency);
            s.push_str(&format!(
                "| {} | {} | {:.0} | {} | {:.2} | {} | {:.2} | {} | {} | {} |\n",
                p.scenario,
                p.concurrency,
                p.ops_per_sec,
                ratio(p.ops_per_sec, first.map_or(0.0, |f| f.ops_per_sec)),
                p.operation.p50_ms,
                ratio(
                    p.operation.p50_ms,
                    first.map_or(0.0, |f| f.operation.p50_ms)
                ),
                p.operation.p99_ms,
                ratio(
                    p.operation.p99_ms,
                    first.map_or(0.0, |f| f.operation.p99_ms)
                ),
                p.errors,
                p.shed
            ));
        }
        if let Some(a) = &pre.attack {
            s.push_str("\n**Under attack, after the bulk load.** ");
            s.push_str(&attack_tables(a));
        }
    }
    s.push_str(&format!(
        "\nPeak resident memory: Ghostkey {}, baseline {}. Database: {} bytes for {} users, {:.0} bytes per enrolled user.\n",
        run.ghostkey_peak_mib.map_or("n/a".into(), |m| format!("{m:.1} MiB")),
        run.baseline_peak_mib.map_or("n/a".into(), |m| format!("{m:.1} MiB")),
        run.database.bytes,
        run.database.users,
        run.database.bytes_per_user,
    ));
    s
}

/// Replaces the section between `<!-- bench:<label>:begin -->` and `<!-- bench:<label>:end -->`
/// in `doc` (appending the markers if they are missing).
pub fn splice(doc: &str, label: &str, section: &str) -> String {
    let begin = format!("<!-- bench:{label}:begin -->");
    let end = format!("<!-- bench:{label}:end -->");
    let block = format!("{begin}\n{section}{end}");
    match (doc.find(&begin), doc.find(&end)) {
        (Some(b), Some(e)) if e > b => {
            format!("{}{}{}", &doc[..b], block, &doc[e + end.len()..])
        }
        _ => format!("{doc}\n{block}\n"),
    }
}

/// Writes the JSON beside the Markdown and splices the table into the Markdown.
pub fn write(run: &RunResult, json: &Path, markdown_path: &Path) -> Result<(), String> {
    let text = serde_json::to_string_pretty(run).map_err(|e| e.to_string())?;
    std::fs::write(json, text + "\n").map_err(|e| format!("{}: {e}", json.display()))?;
    let doc = std::fs::read_to_string(markdown_path).unwrap_or_default();
    let updated = splice(&doc, &run.label, &markdown(run));
    std::fs::write(markdown_path, updated).map_err(|e| format!("{}: {e}", markdown_path.display()))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::{attack_tables, splice};
    use crate::attack::{AnswerCount, AttackScenario, AttackTraffic};
    use crate::load::{Latency, PhaseResult};

    fn latency(p50_ms: f64, p99_ms: f64) -> Latency {
        Latency {
            count: 100,
            p50_ms,
            p99_ms,
            max_ms: p99_ms,
        }
    }

    fn phase(ops_per_sec: f64, p50_ms: f64, p99_ms: f64) -> PhaseResult {
        PhaseResult {
            scenario: "complete TOTP recovery".into(),
            concurrency: 16,
            operations: 100,
            errors: 0,
            error_samples: Vec::new(),
            shed: 0,
            seconds: 100.0 / ops_per_sec,
            ops_per_sec,
            operation: latency(p50_ms, p99_ms),
            endpoints: BTreeMap::from([
                (
                    "POST /v1/recoveries".to_owned(),
                    latency(p50_ms / 2.0, p99_ms / 2.0),
                ),
                (
                    "POST /v1/recoveries/{id}/verify".to_owned(),
                    latency(p50_ms / 2.0, p99_ms / 2.0),
                ),
            ]),
        }
    }

    #[test]
    fn the_attack_table_compares_both_phases_and_lists_every_answer() {
        let a = AttackScenario {
            concurrency: 16,
            attackers: 64,
            attacker_addresses: ["127.0.0.2".into(), "127.0.0.65".into()],
            victims: 64,
            alone: phase(1000.0, 10.0, 20.0),
            under_attack: phase(500.0, 15.0, 50.0),
            p50_ratio: 1.5,
            p99_ratio: 2.5,
            ops_ratio: 0.5,
            server_cpu: [Some(0.9), Some(0.95)],
            server_core_busy: [Some(0.99), None],
            generator_cpu: [Some(0.1), Some(0.2)],
            attack: AttackTraffic {
                requests: 4,
                seconds: 1.0,
                per_sec: 4.0,
                latency: latency(1.0, 2.0),
                answers: vec![
                    AnswerCount {
                        request: "wrong_code_open_recovery".into(),
                        status: 403,
                        code: "invalid_code".into(),
                        count: 1,
                        latency: latency(1.0, 2.0),
                    },
                    AnswerCount {
                        request: "unknown_recovery_id".into(),
                        status: 429,
                        code: "app_rate_limited".into(),
                        count: 3,
                        latency: latency(1.0, 2.0),
                    },
                ],
                transport_samples: Vec::new(),
            },
        };
        let md = attack_tables(&a);
        assert!(md.contains("| whole operation | 1000 | 500 | 10.00 | 15.00 | 1.50x | 20.00 | 50.00 | **2.50x** | 0 / 0 |"), "{md}");
        assert!(md.contains("| `POST /v1/recoveries/{id}/verify` | | | 5.00 | 7.50 | 1.50x | 10.00 | 25.00 | 2.50x | |"), "{md}");
        assert!(md.contains("2.50x (target: at most 2x, missed)"), "{md}");
        assert!(md.contains("its core busy 99 % / n/a"), "{md}");
        assert!(
            md.contains(
                "| wrong code, another user's open recovery | 403 | `invalid_code` | 1 | 25.0 % |"
            ),
            "{md}"
        );
        assert!(
            md.contains(
                "| code for an unknown recovery id | 429 | `app_rate_limited` | 3 | 75.0 % |"
            ),
            "{md}"
        );
        assert!(md.contains("| all | | | 4 | 100 % |"), "{md}");
    }

    #[test]
    fn splice_replaces_only_its_own_section() {
        let doc = "intro\n<!-- bench:a:begin -->\nold\n<!-- bench:a:end -->\nafter\n";
        let out = splice(doc, "a", "new\n");
        assert_eq!(
            out,
            "intro\n<!-- bench:a:begin -->\nnew\n<!-- bench:a:end -->\nafter\n"
        );
        let appended = splice(&out, "b", "bee\n");
        assert!(appended.starts_with(&out));
        assert!(appended.contains("<!-- bench:b:begin -->\nbee\n<!-- bench:b:end -->"));
    }
}
