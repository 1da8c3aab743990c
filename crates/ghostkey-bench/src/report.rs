//! The result of a run: JSON for machines, a Markdown table for docs/BENCHMARKS.md.

use std::path::Path;

use serde::Serialize;

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
    /// Enrolled users in Ghostkey's database when the run began.
    pub users_before: i64,
    /// The baseline's phases.
    pub baseline: Vec<PhaseResult>,
    /// Ghostkey's phases.
    pub ghostkey: Vec<PhaseResult>,
    /// Untimed setup (method confirmations), for the record.
    pub setup: Vec<PhaseResult>,
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

/// The Markdown section for `run`.
pub fn markdown(run: &RunResult) -> String {
    let mut s = String::new();
    s.push_str(&format!(
        "Run `{}`: {} users enrolled before the run; {} ({} cores, {} MiB), Linux {}; {}.\n\n",
        run.label,
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
    use super::splice;

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
