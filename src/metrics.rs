//! Prometheus metrics, kept in process memory (they are observations, not state) and
//! served on their own listener. Label values are route templates, methods, statuses,
//! channels and outcome names: never a user, an address, an app secret or a code.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Latency buckets, in seconds.
const BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

#[derive(Default)]
struct Histogram {
    buckets: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

/// A counter's name and labels.
type CounterKey = (&'static str, Vec<(&'static str, String)>);

/// Every series Ghostkey exports.
#[derive(Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(String, String, u16), Histogram>>,
    counters: Mutex<BTreeMap<CounterKey, u64>>,
    outbox_depth: AtomicU64,
    audit_unlinked: AtomicU64,
    audit_unlinked_age: AtomicU64,
    argon2_memory: AtomicU64,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

/// Names and help of the counters.
const COUNTERS: [(&str, &str); 10] = [
    (
        "ghostkey_challenges_started_total",
        "Challenges started, by purpose and method kind.",
    ),
    (
        "ghostkey_codes_total",
        "Codes checked, by result (accepted or refused) and purpose.",
    ),
    (
        "ghostkey_releases_total",
        "Sealed virtual devices released.",
    ),
    (
        "ghostkey_code_hashes_total",
        "Hashes of one-time codes and passphrases computed, new codes and checks, dummy ones included (HMAC-SHA256 for codes stored from schema version 7; Argon2id for passphrases and older codes).",
    ),
    (
        "ghostkey_locks_total",
        "Users locked after too many failures.",
    ),
    (
        "ghostkey_messages_total",
        "Messages handled by the outbox worker, by channel and result.",
    ),
    (
        "ghostkey_outbox_stale_finishes_total",
        "Sends whose result was not recorded because they outlasted their lease (the message was claimed again: it may be delivered twice).",
    ),
    (
        "ghostkey_shed_total",
        "Requests answered 503 at once because the line waiting for an Argon2 permit was full.",
    ),
    (
        "ghostkey_refused_client_requests_total",
        "Requests from a client address answered 429 within its Retry-After (at most a minute), by result: waited (for their turn in the line that serves such requests one at a time), shed (503: the address is over its own limit and the line was full or its turn late), went_ahead (refused by another limit, served unslowed as the line was full or its turn late).",
    ),
    (
        "ghostkey_chain_blocks_verified_total",
        "Chain blocks whose signature and rules were checked for appends (one per append when the verified state is cached).",
    ),
];

/// The label of an HTTP method: the methods the API knows, or `other`. A client chooses
/// the method string; a label set it could grow would grow the server's memory for good.
pub fn method_label(method: &str) -> &'static str {
    const KNOWN: &[&str] = &[
        "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT",
    ];
    KNOWN
        .iter()
        .find(|known| **known == method)
        .copied()
        .unwrap_or("other")
}

impl Metrics {
    /// Records one HTTP request (`method` is reduced to [`method_label`]; `route` must be
    /// a route template or a fixed name, never a raw path).
    pub fn observe_request(&self, method: &str, route: &str, status: u16, seconds: f64) {
        if let Ok(mut map) = self.requests.lock() {
            let h = map
                .entry((method_label(method).to_owned(), route.to_owned(), status))
                .or_default();
            for (i, bound) in BUCKETS.iter().enumerate() {
                if seconds <= *bound {
                    h.buckets[i] += 1;
                }
            }
            h.count += 1;
            h.sum += seconds;
        }
    }

    /// Adds one to a counter with these labels.
    pub fn inc(&self, name: &'static str, labels: &[(&'static str, &str)]) {
        self.add(name, labels, 1);
    }

    /// Adds `n` to a counter with these labels.
    pub fn add(&self, name: &'static str, labels: &[(&'static str, &str)], n: u64) {
        if let Ok(mut map) = self.counters.lock() {
            let key = (
                name,
                labels.iter().map(|(k, v)| (*k, (*v).to_owned())).collect(),
            );
            *map.entry(key).or_default() += n;
        }
    }

    /// Sets the audit events not yet linked into the chain and the age in seconds of the
    /// oldest (PostgreSQL links them shortly after their commit; SQLite inline: 0).
    pub fn set_audit_unlinked(&self, events: u64, oldest_age_secs: u64) {
        self.audit_unlinked.store(events, Ordering::Relaxed);
        self.audit_unlinked_age
            .store(oldest_age_secs, Ordering::Relaxed);
    }

    /// Sets the bytes held for Argon2id hashes.
    pub fn set_argon2_memory(&self, bytes: u64) {
        self.argon2_memory.store(bytes, Ordering::Relaxed);
    }

    /// Sets the outbox depth (pending messages).
    pub fn set_outbox_depth(&self, depth: u64) {
        self.outbox_depth.store(depth, Ordering::Relaxed);
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP ghostkey_http_requests_total HTTP requests by method, route and status."
        );
        let _ = writeln!(out, "# TYPE ghostkey_http_requests_total counter");
        let requests = self.requests.lock().map(|m| {
            m.iter()
                .map(|(k, h)| (k.clone(), h.buckets, h.count, h.sum))
                .collect::<Vec<_>>()
        });
        let requests = requests.unwrap_or_default();
        for ((method, route, status), _, count, _) in &requests {
            let _ = writeln!(
                out,
                "ghostkey_http_requests_total{{method=\"{method}\",route=\"{}\",status=\"{status}\"}} {count}",
                escape(route)
            );
        }
        let _ = writeln!(
            out,
            "# HELP ghostkey_http_request_duration_seconds HTTP request latency."
        );
        let _ = writeln!(
            out,
            "# TYPE ghostkey_http_request_duration_seconds histogram"
        );
        for ((method, route, status), buckets, count, sum) in &requests {
            let labels = format!(
                "method=\"{method}\",route=\"{}\",status=\"{status}\"",
                escape(route)
            );
            for (bound, n) in BUCKETS.iter().zip(buckets) {
                let _ = writeln!(
                    out,
                    "ghostkey_http_request_duration_seconds_bucket{{{labels},le=\"{bound}\"}} {n}"
                );
            }
            let _ = writeln!(
                out,
                "ghostkey_http_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {count}"
            );
            let _ = writeln!(
                out,
                "ghostkey_http_request_duration_seconds_sum{{{labels}}} {sum}"
            );
            let _ = writeln!(
                out,
                "ghostkey_http_request_duration_seconds_count{{{labels}}} {count}"
            );
        }
        let counters = self.counters.lock().map(|m| m.clone()).unwrap_or_default();
        for (name, help) in COUNTERS {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} counter");
            let mut any = false;
            for ((n, labels), value) in counters.iter().filter(|((n, _), _)| *n == name) {
                any = true;
                let labels: Vec<String> = labels
                    .iter()
                    .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
                    .collect();
                if labels.is_empty() {
                    let _ = writeln!(out, "{n} {value}");
                } else {
                    let _ = writeln!(out, "{n}{{{}}} {value}", labels.join(","));
                }
            }
            if !any {
                let _ = writeln!(out, "{name} 0");
            }
        }
        let _ = writeln!(
            out,
            "# HELP ghostkey_outbox_depth Messages waiting in the outbox."
        );
        let _ = writeln!(out, "# TYPE ghostkey_outbox_depth gauge");
        let _ = writeln!(
            out,
            "ghostkey_outbox_depth {}",
            self.outbox_depth.load(Ordering::Relaxed)
        );
        for (name, help, value) in [
            (
                "ghostkey_audit_unlinked_events",
                "Audit events committed but not yet linked into the hash chain (PostgreSQL).",
                &self.audit_unlinked,
            ),
            (
                "ghostkey_audit_unlinked_oldest_seconds",
                "Age of the oldest audit event not yet linked into the hash chain (PostgreSQL).",
                &self.audit_unlinked_age,
            ),
            (
                "ghostkey_argon2_memory_bytes",
                "Memory held for Argon2id hashes: 19 MiB per hash running or just run, given back once no hash has started for a second.",
                &self.argon2_memory,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} gauge");
            let _ = writeln!(out, "{name} {}", value.load(Ordering::Relaxed));
        }
        out
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_every_series_with_counts_and_buckets() {
        let m = Metrics::default();
        m.observe_request("POST", "/v1/enrollments", 201, 0.003);
        m.observe_request("POST", "/v1/enrollments", 201, 0.2);
        m.inc(
            "ghostkey_codes_total",
            &[("result", "refused"), ("purpose", "recover")],
        );
        m.set_outbox_depth(4);
        let text = m.render();
        assert!(text.contains("ghostkey_http_requests_total{method=\"POST\",route=\"/v1/enrollments\",status=\"201\"} 2"));
        assert!(text.contains("le=\"0.005\"} 1"));
        assert!(text.contains("le=\"0.25\"} 2"));
        assert!(text.contains("ghostkey_codes_total{result=\"refused\",purpose=\"recover\"} 1"));
        assert!(text.contains("ghostkey_releases_total 0"));
        assert!(text.contains("ghostkey_outbox_depth 4"));
    }
}
