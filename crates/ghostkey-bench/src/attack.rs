//! The attack scenario (issue 17): legitimate complete TOTP recoveries at one concurrency,
//! measured alone and then while attacker workers, each sending from its own loopback
//! address, send as fast as they are answered (a) wrong codes to other users' open
//! recoveries and (b) codes to recovery ids that do not exist. The legitimate figures of
//! the two phases are compared; the attackers' answers are counted by status and code.
//!
//! Ghostkey's limits are per app: the per-address limit counts (app, address) and the
//! ceiling on code checks counts the app. The bench app raises both out of the way (the
//! legitimate load comes from one address), so the victims are users of an app of their
//! own that keeps the **default** policy (60 requests per address per minute, 600 code
//! checks a minute), and an unknown recovery id is counted under no app, with the default
//! policy too: the attackers meet the limits an operator would have.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ghostkey_client::{Client, ClientError};
use serde::Serialize;

use crate::load::{closed_loop, Latency, PhaseResult};
use crate::scenarios::{self, Target, TotpUser, Victim};
use crate::{check_clean, print_phase, procs, setup_phase, with_shed};

/// The first attacker's address; attacker `i` sends from the `i`-th one after it (all of
/// 127.0.0.0/8 is loopback on Linux). Ghostkey's client address is the peer's (the bench
/// configures no trusted proxy), so each attacker is a client of its own.
const FIRST_ATTACKER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
/// The first address the victims are set up from (none of the attackers').
const FIRST_SETUP: Ipv4Addr = Ipv4Addr::new(127, 1, 0, 1);
/// Victims set up from one address: each costs 4 requests (enrol, add, confirm, start),
/// 32 in all, under the victims' app's default 60 per address per minute.
const VICTIMS_PER_SETUP_ADDRESS: usize = 8;
/// The victims' confirmations are code checks under their app's default ceiling of 600 a
/// minute: at most this many victims, so that setting them up is never refused.
const MAX_VICTIMS: usize = 400;
/// Legitimate recoveries per worker in each of the two phases (times `--scale`).
const LEGIT_PER_WORKER: usize = 150;

/// The attackers' two kinds of request, as the JSON names them.
const WRONG_CODE: &str = "wrong_code_open_recovery";
const UNKNOWN_ID: &str = "unknown_recovery_id";

/// The `n`-th address from `first`.
fn nth(first: Ipv4Addr, n: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(u32::from(first) + n as u32))
}

/// A client whose connections leave from `address`.
fn client_from(url: &str, address: IpAddr) -> Result<Client, String> {
    let http = reqwest::Client::builder()
        .local_address(address)
        .pool_max_idle_per_host(8)
        .timeout(Duration::from_secs(60))
        .pool_idle_timeout(crate::POOL_IDLE)
        .build()
        .map_err(|e| e.to_string())?;
    Client::with_http(url, http).map_err(|e| e.to_string())
}

/// What the scenario runs against.
pub struct Plan {
    /// The victims' app (default policy), over the same server as the bench app.
    pub victims: Arc<Target>,
    /// The base URLs of Ghostkey's nodes (one unless `--nodes`); the attackers and the
    /// victims' setup addresses are spread over them in turn.
    pub urls: Vec<String>,
    /// Attacker workers, one address each.
    pub attackers: usize,
    /// Legitimate workers.
    pub concurrency: usize,
    /// The core Ghostkey is pinned to, if it is.
    pub server_core: Option<usize>,
}

/// The scenario's users, made before the TOTP wait (a step is accepted once per method,
/// so their recoveries come after it).
pub struct Prepared {
    alone: Vec<TotpUser>,
    attacked: Vec<TotpUser>,
    victims: Vec<(Client, TotpUser)>,
}

/// Enrols and confirms TOTP for the legitimate users of both phases (bench app, from the
/// load generator's usual address) and for the victims (their app, from a few setup
/// addresses); the setup phases go to `setups`.
pub async fn prepare(
    t: &Arc<Target>,
    plan: &Plan,
    scale: f64,
    pass: &str,
    setups: &mut Vec<PhaseResult>,
) -> Result<Prepared, String> {
    let n = ((LEGIT_PER_WORKER * plan.concurrency) as f64 * scale).ceil() as usize;
    let ids: Vec<String> = (0..2 * n)
        .map(|i| format!("attack-legit-{pass}-{i}"))
        .collect();
    let tt = Arc::clone(t);
    let mut legit = setup_phase(
        t,
        setups,
        "setup: enrol, confirm TOTP (attack scenario, legitimate)",
        "setup",
        ids,
        move |id| {
            let client = tt.client().clone();
            scenarios::setup_totp_user(Arc::clone(&tt), client, id)
        },
    )
    .await?;
    let attacked = legit.split_off(n);

    let victims = plan
        .attackers
        .max((256.0 * scale).ceil() as usize)
        .min(MAX_VICTIMS);
    let setup_clients = (0..victims.div_ceil(VICTIMS_PER_SETUP_ADDRESS))
        .map(|i| client_from(&plan.urls[i % plan.urls.len()], nth(FIRST_SETUP, i)))
        .collect::<Result<Vec<_>, _>>()?;
    let jobs: Vec<(Client, String)> = (0..victims)
        .map(|i| {
            (
                setup_clients[i / VICTIMS_PER_SETUP_ADDRESS].clone(),
                format!("attack-victim-{pass}-{i}"),
            )
        })
        .collect();
    let vt = Arc::clone(&plan.victims);
    let victims = setup_phase(
        t,
        setups,
        "setup: enrol, confirm TOTP (attack scenario, victims)",
        "setup",
        jobs,
        move |(client, id): (Client, String)| {
            let vt = Arc::clone(&vt);
            async move {
                let user = scenarios::setup_totp_user(vt, client.clone(), id).await?;
                Ok((client, user))
            }
        },
    )
    .await?;
    Ok(Prepared {
        alone: legit,
        attacked,
        victims,
    })
}

/// What the attack scenario measured.
#[derive(Debug, Clone, Serialize)]
pub struct AttackScenario {
    /// Legitimate workers.
    pub concurrency: usize,
    /// Attacker workers, each from its own address.
    pub attackers: usize,
    /// The first and the last attacker's address.
    pub attacker_addresses: [String; 2],
    /// Users of the victims' app (default policy) whose open recoveries got the wrong codes.
    pub victims: usize,
    /// Legitimate complete TOTP recoveries, nothing else running.
    pub alone: PhaseResult,
    /// The same, while the attackers ran.
    pub under_attack: PhaseResult,
    /// Under attack / alone: p50, p99 and operations per second of the whole recovery.
    pub p50_ratio: f64,
    /// See `p50_ratio`.
    pub p99_ratio: f64,
    /// See `p50_ratio`.
    pub ops_ratio: f64,
    /// Ghostkey's CPU time over each phase's wall time (1.0: one core busy throughout).
    pub server_cpu: [Option<f64>; 2],
    /// How busy Ghostkey's core was over each phase, whatever ran on it (when pinned): on
    /// a shared machine, what Ghostkey did not get of it went to other processes.
    pub server_core_busy: [Option<f64>; 2],
    /// The same for the load generator (legitimate workers and attackers together).
    pub generator_cpu: [Option<f64>; 2],
    /// What the attackers sent and got.
    pub attack: AttackTraffic,
}

/// The attackers' requests and the answers they got.
#[derive(Debug, Clone, Serialize)]
pub struct AttackTraffic {
    /// Answers received (transport failures included).
    pub requests: usize,
    /// From the attackers' start to the last one's stop, in seconds.
    pub seconds: f64,
    /// Answers per second.
    pub per_sec: f64,
    /// Time to each answer.
    pub latency: Latency,
    /// Answers by request kind, HTTP status and error code (status 0: no answer).
    pub answers: Vec<AnswerCount>,
    /// The first few transport failures.
    pub transport_samples: Vec<String>,
}

/// How many answers of one kind the attackers got.
#[derive(Debug, Clone, Serialize)]
pub struct AnswerCount {
    /// `wrong_code_open_recovery` or `unknown_recovery_id`.
    pub request: String,
    /// The HTTP status (0: the request got no answer).
    pub status: u16,
    /// The problem's code (`released` or another state for a 200).
    pub code: String,
    /// Answers.
    pub count: usize,
    /// Their latency.
    pub latency: Latency,
}

/// CPU use over a phase: a process's, or a core's.
struct CpuMeter {
    read: Box<dyn Fn() -> Option<f64> + Send>,
    at: Instant,
    cpu: Option<f64>,
}

impl CpuMeter {
    fn process(pid: u32) -> CpuMeter {
        CpuMeter::start(Box::new(move || procs::cpu_seconds(pid)))
    }

    fn core(core: Option<usize>) -> CpuMeter {
        CpuMeter::start(Box::new(move || procs::core_busy_seconds(core?)))
    }

    fn start(read: Box<dyn Fn() -> Option<f64> + Send>) -> CpuMeter {
        CpuMeter {
            cpu: read(),
            at: Instant::now(),
            read,
        }
    }

    /// CPU seconds per wall second since the start.
    fn share(&self) -> Option<f64> {
        let used = (self.read)()? - self.cpu?;
        Some(used / self.at.elapsed().as_secs_f64().max(1e-9))
    }
}

/// A legitimate phase and the CPU figures around it.
struct Measured {
    phase: PhaseResult,
    server: Option<f64>,
    core: Option<f64>,
    generator: Option<f64>,
}

/// One phase of legitimate complete TOTP recoveries (exactly the `complete TOTP recovery`
/// scenario), with the server's, its core's and the generator's CPU share.
async fn legitimate(
    t: &Arc<Target>,
    plan: &Plan,
    name: &str,
    users: Vec<TotpUser>,
    server_pid: u32,
) -> Result<Measured, String> {
    let prepared = users
        .into_iter()
        .map(|u| scenarios::prepare_totp_recovery(t, u))
        .collect::<Result<Vec<_>, _>>()?;
    let tt = Arc::clone(t);
    let (server, core, generator) = (
        CpuMeter::process(server_pid),
        CpuMeter::core(plan.server_core),
        CpuMeter::process(std::process::id()),
    );
    let p = closed_loop(name, prepared, plan.concurrency, move |r| {
        scenarios::totp_recovery(Arc::clone(&tt), r)
    })
    .await;
    Ok(Measured {
        server: server.share(),
        core: core.share(),
        generator: generator.share(),
        phase: with_shed(t, p),
    })
}

/// Starts the victims' recoveries, measures the legitimate recoveries alone, then again
/// with the attackers running. Legitimate errors abort; the attackers' answers are counted.
pub async fn measure(
    t: &Arc<Target>,
    plan: &Plan,
    prepared: Prepared,
    server_pid: u32,
    setups: &mut Vec<PhaseResult>,
) -> Result<AttackScenario, String> {
    let vt = Arc::clone(&plan.victims);
    let victims = setup_phase(
        t,
        setups,
        "setup: start the victims' recoveries",
        "start",
        prepared.victims,
        move |(client, user)| scenarios::start_victim_recovery(Arc::clone(&vt), client, user),
    )
    .await?;
    // The unknown ids must look like real ones, or they would be refused as malformed
    // before any lookup.
    let probe = ghostkey::domain::method::new_id("ch_");
    if let Some(v) = victims
        .iter()
        .find(|v| !v.recovery_id.starts_with("ch_") || v.recovery_id.len() != probe.len())
    {
        return Err(format!(
            "a recovery id no longer looks like {probe:?}: {:?}; update the attack scenario's unknown ids",
            v.recovery_id
        ));
    }
    let victims = Arc::new(victims);
    let clients = (0..plan.attackers)
        .map(|i| client_from(&plan.urls[i % plan.urls.len()], nth(FIRST_ATTACKER, i)))
        .collect::<Result<Vec<_>, _>>()?;

    let alone = legitimate(
        t,
        plan,
        "complete TOTP recovery, alone",
        prepared.alone,
        server_pid,
    )
    .await?;
    print_phase(&alone.phase);
    check_clean(&alone.phase)?;

    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let workers: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(i, client)| {
            tokio::spawn(attacker(
                i,
                plan.attackers,
                client,
                Arc::clone(&victims),
                Arc::clone(&stop),
            ))
        })
        .collect();
    let measured = legitimate(
        t,
        plan,
        "complete TOTP recovery, under attack",
        prepared.attacked,
        server_pid,
    )
    .await;
    // The attackers stop before anything else is decided, errors included.
    stop.store(true, Ordering::SeqCst);
    let mut tally = Tally::default();
    let mut panicked = None;
    for w in workers {
        match w.await {
            Ok(part) => tally.merge(part),
            Err(e) => panicked = Some(format!("an attacker panicked: {e}")),
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let attacked = measured?;
    print_phase(&attacked.phase);
    check_clean(&attacked.phase)?;
    if let Some(e) = panicked {
        return Err(e);
    }
    let attack = tally.traffic(seconds);
    for a in &attack.answers {
        eprintln!(
            "    attackers: {:<26} {:>3} {:<26} {:>7}",
            a.request, a.status, a.code, a.count
        );
    }
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
    let (x, y) = (&alone.phase, &attacked.phase);
    Ok(AttackScenario {
        concurrency: plan.concurrency,
        attackers: plan.attackers,
        attacker_addresses: [
            nth(FIRST_ATTACKER, 0).to_string(),
            nth(FIRST_ATTACKER, plan.attackers.saturating_sub(1)).to_string(),
        ],
        victims: victims.len(),
        p50_ratio: ratio(y.operation.p50_ms, x.operation.p50_ms),
        p99_ratio: ratio(y.operation.p99_ms, x.operation.p99_ms),
        ops_ratio: ratio(y.ops_per_sec, x.ops_per_sec),
        server_cpu: [alone.server, attacked.server],
        server_core_busy: [alone.core, attacked.core],
        generator_cpu: [alone.generator, attacked.generator],
        alone: alone.phase,
        under_attack: attacked.phase,
        attack,
    })
}

/// The attackers' answers, by (request kind, status, code), with their latencies.
#[derive(Default)]
struct Tally {
    answers: BTreeMap<(&'static str, u16, String), Vec<Duration>>,
    transport_samples: Vec<String>,
}

impl Tally {
    fn merge(&mut self, other: Tally) {
        for (k, v) in other.answers {
            self.answers.entry(k).or_default().extend(v);
        }
        for s in other.transport_samples {
            if self.transport_samples.len() < 5 {
                self.transport_samples.push(s);
            }
        }
    }

    fn traffic(self, seconds: f64) -> AttackTraffic {
        let all: Vec<Duration> = self.answers.values().flatten().copied().collect();
        let requests = all.len();
        let mut answers: Vec<AnswerCount> = self
            .answers
            .into_iter()
            .map(|((request, status, code), l)| AnswerCount {
                request: request.to_owned(),
                status,
                code,
                count: l.len(),
                latency: Latency::of(l),
            })
            .collect();
        answers.sort_by(|a, b| {
            a.request
                .cmp(&b.request)
                .reverse()
                .then(b.count.cmp(&a.count))
        });
        AttackTraffic {
            requests,
            seconds,
            per_sec: requests as f64 / seconds.max(1e-9),
            latency: Latency::of(all),
            answers,
            transport_samples: self.transport_samples,
        }
    }
}

/// A small pseudo-random sequence (SplitMix64) for the guessed codes.
struct Guesses(u64);

impl Guesses {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// One attacker: until `stop`, alternately a wrong code to a victim's open recovery
/// (attacker `index` takes every `attackers`-th victim from its own) and a code to a
/// fresh, well-formed recovery id that names nothing; each sent as soon as the last
/// answer came, whatever it was (a `Retry-After` is not waited for).
async fn attacker(
    index: usize,
    attackers: usize,
    client: Client,
    victims: Arc<Vec<Victim>>,
    stop: Arc<AtomicBool>,
) -> Tally {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut guesses = Guesses(seed ^ ((index as u64) << 32));
    let mut tally = Tally::default();
    let mut sent = 0usize;
    while !stop.load(Ordering::SeqCst) {
        let (kind, id, code) = if sent.is_multiple_of(2) {
            let v = &victims[(index + (sent / 2) * attackers) % victims.len()];
            (
                WRONG_CODE,
                v.recovery_id.clone(),
                v.wrong_code(guesses.next()),
            )
        } else {
            (
                UNKNOWN_ID,
                ghostkey::domain::method::new_id("ch_"),
                format!("{:06}", guesses.next() % 1_000_000),
            )
        };
        sent += 1;
        let t0 = Instant::now();
        let answer = client.verify_recovery(&id, &code).await;
        let took = t0.elapsed();
        let (status, code) = match answer {
            Ok(r) => (200, format!("{:?}", r.state).to_lowercase()),
            Err(ClientError::Api { problem, .. }) => (problem.status, problem.code),
            Err(ClientError::Unexpected { status, .. }) => (status, "unexpected".to_owned()),
            Err(e) => {
                if tally.transport_samples.len() < 5 {
                    tally.transport_samples.push(e.to_string());
                }
                (0, "no answer".to_owned())
            }
        };
        tally
            .answers
            .entry((kind, status, code))
            .or_default()
            .push(took);
        if status == 0 {
            // Not a busy loop on a refused connection.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    tally
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_count_on_from_the_first() {
        assert_eq!(nth(FIRST_ATTACKER, 0).to_string(), "127.0.0.2");
        assert_eq!(nth(FIRST_ATTACKER, 63).to_string(), "127.0.0.65");
        assert_eq!(nth(FIRST_ATTACKER, 254).to_string(), "127.0.1.0");
        assert_eq!(nth(FIRST_SETUP, 49).to_string(), "127.1.0.50");
    }

    #[test]
    fn the_tally_counts_every_answer_by_kind_status_and_code() {
        let ms = Duration::from_millis;
        let mut a = Tally::default();
        a.answers
            .insert((WRONG_CODE, 403, "invalid_code".into()), vec![ms(2); 3]);
        a.answers
            .insert((UNKNOWN_ID, 429, "app_rate_limited".into()), vec![ms(1); 5]);
        let mut b = Tally::default();
        b.answers
            .insert((WRONG_CODE, 429, "app_rate_limited".into()), vec![ms(1); 7]);
        b.answers
            .insert((WRONG_CODE, 403, "invalid_code".into()), vec![ms(4)]);
        b.transport_samples.push("refused".into());
        a.merge(b);
        let t = a.traffic(2.0);
        assert_eq!(t.requests, 16);
        assert_eq!(t.per_sec, 8.0);
        assert_eq!(t.transport_samples, vec!["refused".to_owned()]);
        let rows: Vec<(&str, u16, &str, usize)> = t
            .answers
            .iter()
            .map(|n| (n.request.as_str(), n.status, n.code.as_str(), n.count))
            .collect();
        // Wrong codes first, then unknown ids; the most frequent answer first in each.
        assert_eq!(
            rows,
            vec![
                (WRONG_CODE, 429, "app_rate_limited", 7),
                (WRONG_CODE, 403, "invalid_code", 4),
                (UNKNOWN_ID, 429, "app_rate_limited", 5),
            ]
        );
        assert_eq!(t.answers[1].latency.max_ms, 4.0);
    }
}
