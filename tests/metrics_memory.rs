//! Attack 6, the memory side, in a test binary of its own so that no other test allocates
//! while the server's resident memory is measured.

mod common;

use common::TestServer;

fn resident_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status")
}

/// Attack 6, the memory side: 100 KB junk methods used to stay in the metrics for good
/// (800 of them grew the server by 80 MiB). The server runs in this process, alone in
/// this test binary (no other test allocates meanwhile): its resident memory must not grow
/// with the junk.
#[tokio::test]
async fn junk_methods_of_100_kb_do_not_grow_the_server() {
    let server = TestServer::start_with(|c| {
        c.metrics.listen = Some("127.0.0.1:0".parse().unwrap());
    });
    let http = reqwest::Client::new();
    let junk = |i: usize| {
        reqwest::Method::from_bytes(format!("J{i}{}", "X".repeat(100 * 1024)).as_bytes()).unwrap()
    };
    let mut statuses = std::collections::BTreeSet::new();
    // Warm up: buffers and connections of this size exist once.
    for i in 0..20 {
        let res = http
            .request(junk(i), format!("{}/v1/methods", server.base_url))
            .send()
            .await
            .unwrap();
        statuses.insert(res.status().as_u16());
    }
    let before = resident_kib();
    for i in 20..620 {
        let res = http
            .request(junk(i), format!("{}/v1/methods", server.base_url))
            .send()
            .await
            .unwrap();
        statuses.insert(res.status().as_u16());
    }
    let grown = resident_kib().saturating_sub(before);
    eprintln!("600 junk methods of 100 KB: answers {statuses:?}, resident memory +{grown} KiB");
    // 600 × 100 KB kept would be 60 MiB.
    assert!(grown < 16 * 1024, "grew by {grown} KiB");
}
