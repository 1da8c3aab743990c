//! A closed-loop HTTP load generator: `concurrency` workers each take the next prepared
//! operation, run it (one or more HTTP requests), record how long each request and the
//! whole operation took, and take the next. Operations are prepared before the clock
//! starts, so the generator's own crypto (minting assertions, sealing blobs) is not in
//! the measured figures.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

/// How long each request of one operation took, by endpoint name.
pub type Steps = Vec<(&'static str, Duration)>;

/// Latency figures, in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    /// Requests (or operations) measured.
    pub count: usize,
    /// Median.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Slowest.
    pub max_ms: f64,
}

impl Latency {
    /// The figures of `samples`.
    pub fn of(mut samples: Vec<Duration>) -> Latency {
        samples.sort_unstable();
        let at = |q: f64| -> f64 {
            if samples.is_empty() {
                return 0.0;
            }
            // Nearest rank.
            let rank = ((q * samples.len() as f64).ceil() as usize).clamp(1, samples.len());
            samples[rank - 1].as_secs_f64() * 1000.0
        };
        Latency {
            count: samples.len(),
            p50_ms: at(0.50),
            p99_ms: at(0.99),
            max_ms: samples.last().map_or(0.0, |d| d.as_secs_f64() * 1000.0),
        }
    }
}

/// What one phase (one scenario at one concurrency) measured.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseResult {
    /// Scenario name.
    pub scenario: String,
    /// Workers.
    pub concurrency: usize,
    /// Operations completed successfully.
    pub operations: usize,
    /// Operations that failed (any error answer or transport error).
    pub errors: usize,
    /// The first few error messages, for the report.
    pub error_samples: Vec<String>,
    /// `503 unavailable` answers (Ghostkey's Argon2 line full), each waited out for its
    /// Retry-After and retried; not errors, and not hidden: counted here.
    pub shed: usize,
    /// Wall-clock time of the phase, in seconds.
    pub seconds: f64,
    /// Successful operations per second.
    pub ops_per_sec: f64,
    /// Latency of whole operations.
    pub operation: Latency,
    /// Latency of each endpoint inside the operations.
    pub endpoints: BTreeMap<String, Latency>,
}

/// Runs every operation in `ops` with `concurrency` workers; `run` performs one.
pub async fn closed_loop<T, F, Fut>(
    scenario: &str,
    ops: Vec<T>,
    concurrency: usize,
    run: F,
) -> PhaseResult
where
    T: Send + 'static,
    F: Fn(T) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<Steps, String>> + Send,
{
    let queue = Arc::new(Mutex::new(ops.into_iter()));
    let started = Instant::now();
    let mut workers = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        let queue = Arc::clone(&queue);
        let run = run.clone();
        workers.push(tokio::spawn(async move {
            let mut whole = Vec::new();
            let mut steps: Vec<(&'static str, Duration)> = Vec::new();
            let mut errors = Vec::new();
            loop {
                let next = match queue.lock() {
                    Ok(mut q) => q.next(),
                    Err(_) => None,
                };
                let Some(op) = next else { break };
                let t0 = Instant::now();
                match run(op).await {
                    Ok(s) => {
                        whole.push(t0.elapsed());
                        steps.extend(s);
                    }
                    Err(e) => errors.push(e),
                }
            }
            (whole, steps, errors)
        }));
    }
    let mut whole = Vec::new();
    let mut by_endpoint: BTreeMap<String, Vec<Duration>> = BTreeMap::new();
    let mut errors = Vec::new();
    for w in workers {
        match w.await {
            Ok((wh, st, er)) => {
                whole.extend(wh);
                for (name, d) in st {
                    by_endpoint.entry(name.to_owned()).or_default().push(d);
                }
                errors.extend(er);
            }
            Err(e) => errors.push(format!("worker panicked: {e}")),
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let operations = whole.len();
    PhaseResult {
        scenario: scenario.to_owned(),
        concurrency,
        operations,
        errors: errors.len(),
        error_samples: errors.into_iter().take(5).collect(),
        shed: 0,
        seconds,
        ops_per_sec: operations as f64 / seconds.max(1e-9),
        operation: Latency::of(whole),
        endpoints: by_endpoint
            .into_iter()
            .map(|(k, v)| (k, Latency::of(v)))
            .collect(),
    }
}

/// Times one request.
pub async fn timed<T, E: std::fmt::Display>(
    steps: &mut Steps,
    name: &'static str,
    request: impl Future<Output = Result<T, E>>,
) -> Result<T, String> {
    let t0 = Instant::now();
    let answer = request.await;
    let took = t0.elapsed();
    match answer {
        Ok(v) => {
            steps.push((name, took));
            Ok(v)
        }
        Err(e) => Err(format!("{name}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let samples = (1..=100).map(Duration::from_millis).collect();
        let l = Latency::of(samples);
        assert_eq!(l.count, 100);
        assert_eq!(l.p50_ms, 50.0);
        assert_eq!(l.p99_ms, 99.0);
        assert_eq!(l.max_ms, 100.0);
    }

    #[tokio::test]
    async fn every_operation_runs_once_and_errors_are_counted() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = Arc::clone(&seen);
        let result = closed_loop("t", (0..50).collect(), 8, move |i: u32| {
            let s = Arc::clone(&s);
            async move {
                s.lock().map_err(|e| e.to_string())?.push(i);
                if i.is_multiple_of(10) {
                    return Err(format!("op {i} failed"));
                }
                Ok(vec![("step", Duration::from_micros(5))])
            }
        })
        .await;
        let mut seen = seen.lock().unwrap().clone();
        seen.sort_unstable();
        assert_eq!(seen, (0..50).collect::<Vec<_>>());
        assert_eq!(result.operations, 45);
        assert_eq!(result.errors, 5);
        assert_eq!(result.endpoints["step"].count, 45);
    }
}
