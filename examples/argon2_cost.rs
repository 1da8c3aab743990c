//! Measures the cost of one Argon2id check with Ghostkey's parameters (a passphrase check,
//! or a one-time code stored before schema version 7; newer codes are HMAC-SHA256) on
//! this machine, against a baseline measured in the same process: one Ed25519 signature
//! verification, the work every assertion costs.
//!
//! Run: `cargo run --release --example argon2_cost`

use std::time::{Duration, Instant};

use ed25519_dalek::{Signer, SigningKey, Verifier};
use ghostkey::domain::code;

fn time_per_op(mut op: impl FnMut(), min_total: Duration) -> Duration {
    op(); // warm-up
    let start = Instant::now();
    let mut n = 0u32;
    while start.elapsed() < min_total || n < 5 {
        op();
        n += 1;
    }
    start.elapsed() / n
}

fn main() {
    let pepper = [7u8; 32];
    let salt = code::new_salt();
    let key = SigningKey::from_bytes(&[9u8; 32]);
    let message = b"eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJ1In0";
    let signature = key.sign(message);
    let public = key.verifying_key();

    let mut memory = code::Argon2Memory::new().expect("argon2 parameters");
    let mut ratios = Vec::new();
    for round in 1..=3 {
        let baseline = time_per_op(
            || {
                let ok = public.verify(message, &signature).is_ok();
                assert!(ok);
            },
            Duration::from_millis(500),
        );
        let argon = time_per_op(
            || {
                let h = code::hash(&mut memory, &pepper, &salt, "12345678");
                assert!(h.is_ok());
            },
            Duration::from_secs(2),
        );
        let ratio = argon.as_secs_f64() / baseline.as_secs_f64();
        ratios.push(ratio);
        println!(
            "round {round}: argon2id (m={} KiB, t={}, p={}) {:.2} ms per check = {:.1} checks/s per core; \
             baseline ed25519 verify {:.1} µs; ratio {:.0}x",
            code::ARGON2_MEMORY_KIB,
            code::ARGON2_PASSES,
            code::ARGON2_LANES,
            argon.as_secs_f64() * 1000.0,
            1.0 / argon.as_secs_f64(),
            baseline.as_secs_f64() * 1e6,
            ratio
        );
    }
    ratios.sort_by(|a, b| a.total_cmp(b));
    println!("median ratio argon2id / ed25519-verify: {:.0}x", ratios[1]);
}
