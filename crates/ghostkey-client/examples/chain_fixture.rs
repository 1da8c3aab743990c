//! Writes a device chain of N blocks for other implementations to verify, and times this
//! crate verifying it, so both run on the same blocks (bench/wasm compares WebAssembly in
//! Node and Chromium with this native figure).
//!
//! ```text
//! cargo run -q --release -p ghostkey-client --example chain_fixture -- <blocks> <out.json>
//! ```
//!
//! `out.json`: `{ "kid", "app_public_key", "blocks": [base64url, ...] }`. Stdout: one JSON
//! line, `{ "blocks": N, "native_ms_per_verify": t, "runs": r }`, the mean over at least
//! one second and three runs of verifying the whole chain from the app key.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use ghostkey_client::chain::{add_device, revoke_device, root_block};
use ghostkey_client::proto::b64;
use ghostkey_client::proto::chain::verify_chain;
use ghostkey_client::{AppSigningKey, DeviceKeys, UserKeys, VirtualDevice};
use serde_json::json;

/// The root, then each new device admitted by the one before; every fifth block, the
/// virtual device revokes the newest device (so verification meets both kinds).
fn chain(len: usize, app: &AppSigningKey) -> Result<Vec<Vec<u8>>, String> {
    let e = |e: &dyn std::fmt::Display| e.to_string();
    let vd = VirtualDevice::generate("app_bench", "user", 1);
    let user = UserKeys::generate();
    let unsigned = root_block(&vd, &user, app.kid()).map_err(|x| e(&x))?;
    let root = app
        .endorse_root(&unsigned, "app_bench", "user")
        .map_err(|x| e(&x))?;
    let pinned = |kid: &str| (kid == app.kid()).then(|| app.public_key());
    let mut blocks = vec![root.encode()];
    let mut state = verify_chain(&blocks, &pinned).map_err(|x| e(&x))?;
    let mut newest = vd.keys().clone();
    while blocks.len() < len {
        let block = if blocks.len() % 5 == 4 && newest != *vd.keys() {
            let b =
                revoke_device(&state, vd.keys(), &newest.signing_public()).map_err(|x| e(&x))?;
            newest = vd.keys().clone();
            b
        } else {
            let next = DeviceKeys::generate();
            let b = add_device(&state, &newest, &next, &user).map_err(|x| e(&x))?;
            newest = next;
            b
        };
        state.apply(&block).map_err(|x| e(&x))?;
        blocks.push(block.encode());
    }
    Ok(blocks)
}

fn run(len: usize, out: &str) -> Result<(), String> {
    let app = AppSigningKey::generate("k1");
    let blocks = chain(len, &app)?;
    let fixture = json!({
        "kid": app.kid(),
        "app_public_key": app.public_key_b64(),
        "blocks": blocks.iter().map(b64::encode).collect::<Vec<_>>(),
    });
    std::fs::write(out, fixture.to_string()).map_err(|e| format!("{out}: {e}"))?;

    let pinned = |kid: &str| (kid == app.kid()).then(|| app.public_key());
    let verify = || verify_chain(&blocks, &pinned).map(|s| s.len);
    if verify().map_err(|e| e.to_string())? != len {
        return Err("the chain does not verify to its length".into());
    }
    let start = Instant::now();
    let mut runs = 0u32;
    while start.elapsed() < Duration::from_secs(1) || runs < 3 {
        verify().map_err(|e| e.to_string())?;
        runs += 1;
    }
    let ms = start.elapsed().as_secs_f64() * 1e3 / f64::from(runs);
    println!(
        "{}",
        json!({ "blocks": len, "native_ms_per_verify": ms, "runs": runs })
    );
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.as_slice() {
        [n, out] => n
            .parse::<usize>()
            .map_err(|_| format!("`{n}` is not a number of blocks"))
            .and_then(|n| run(n.max(1), out)),
        _ => Err("usage: chain_fixture <blocks> <out.json>".into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("chain_fixture: {e}");
            ExitCode::FAILURE
        }
    }
}
