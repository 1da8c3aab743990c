//! Benchmark: verifying device chains of 10, 100 and 1,000 blocks on the client, against
//! a baseline measured in the same process (one Ed25519 signature verification).
//!
//! Run: `cargo run --release -p ghostkey-client --example chain_verify`

use std::time::{Duration, Instant};

use ed25519_dalek::{Signer, SigningKey, Verifier};
use ghostkey_client::chain::{add_device, revoke_device, root_block};
use ghostkey_client::{AppSigningKey, DeviceKeys, UserKeys, VirtualDevice};
use ghostkey_proto::chain::{verify_chain, Block};

/// A chain of `len` blocks: the root, then devices admitted one after another, every
/// fifth block revoking the device admitted before it.
fn chain(len: usize, app: &AppSigningKey) -> Vec<Vec<u8>> {
    let vd = VirtualDevice::generate("app_bench", "user", 1);
    let user = UserKeys::generate();
    let root = app
        .endorse_root(
            &root_block(&vd, &user, app.kid()).unwrap(),
            "app_bench",
            "user",
        )
        .unwrap();
    let pinned = |kid: &str| (kid == app.kid()).then(|| app.public_key());
    let mut blocks: Vec<Block> = vec![root];
    let mut state = verify_chain(&[blocks[0].encode()], &pinned).unwrap();
    let mut newest = vd.keys().clone();
    while blocks.len() < len {
        // The newest valid device admits the next; every fifth block, the virtual device
        // revokes the newest.
        let block =
            if blocks.len() % 5 == 4 && newest.signing_public() != vd.keys().signing_public() {
                let b = revoke_device(&state, vd.keys(), &newest.signing_public()).unwrap();
                newest = vd.keys().clone();
                b
            } else {
                let next = DeviceKeys::generate();
                let b = add_device(&state, &newest, &next, &user).unwrap();
                newest = next;
                b
            };
        state.apply(&block).unwrap();
        blocks.push(block);
    }
    blocks.iter().map(Block::encode).collect()
}

fn per_run(mut f: impl FnMut(), min: Duration) -> Duration {
    f();
    let start = Instant::now();
    let mut n = 0u32;
    while start.elapsed() < min || n < 3 {
        f();
        n += 1;
    }
    start.elapsed() / n
}

fn main() {
    let app = AppSigningKey::generate("k1");
    let pinned = |kid: &str| (kid == app.kid()).then(|| app.public_key());
    let key = SigningKey::from_bytes(&[5u8; 32]);
    let message = [7u8; 200];
    let signature = key.sign(&message);
    let verifying = key.verifying_key();
    let baseline = per_run(
        || assert!(verifying.verify(&message, &signature).is_ok()),
        Duration::from_millis(300),
    );
    println!(
        "baseline: one Ed25519 verification = {:.1} µs",
        baseline.as_secs_f64() * 1e6
    );
    println!("| blocks | verify whole chain | per block | per block / baseline |");
    println!("|---:|---:|---:|---:|");
    for len in [10usize, 100, 1000] {
        let blocks = chain(len, &app);
        let t = per_run(
            || assert_eq!(verify_chain(&blocks, &pinned).unwrap().len, len),
            Duration::from_millis(500),
        );
        let per_block = t / len as u32;
        println!(
            "| {len} | {:.2} ms | {:.1} µs | {:.2}x |",
            t.as_secs_f64() * 1e3,
            per_block.as_secs_f64() * 1e6,
            per_block.as_secs_f64() / baseline.as_secs_f64()
        );
    }
}
