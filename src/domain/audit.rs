//! The audit log's hash chain: each event's hash covers the previous hash and every field,
//! so editing, deleting or reordering any event breaks every later link.

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::clock::UnixTime;

/// One audit event as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditEvent {
    /// Position, from 1.
    pub seq: i64,
    /// When.
    pub at: UnixTime,
    /// What happened (`enrolled`, `code_refused`, `recovery_released`, `app_key_revoked`...).
    pub kind: String,
    /// The app (empty for operator events on no app).
    pub app_id: String,
    /// The user's audit pseudonym, or `operator`, or empty.
    pub subject: String,
    /// Non-personal details, as JSON.
    pub detail: String,
    /// The chain hash, hex in exports.
    #[serde(serialize_with = "hex_bytes")]
    pub hash: [u8; 32],
}

fn hex_bytes<S: serde::Serializer>(bytes: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&hex::encode(bytes))
}

/// Detail members that hold a handle an unauthenticated endpoint accepts (a challenge id
/// answers `POST /v1/challenges/{id}/answer`, a recovery id `.../verify`): the log, which
/// operators ship off-host, records a hash of them instead.
const HANDLES: [&str; 2] = ["challenge", "recovery"];

/// The form of a handle in the log: `h_` and the first 128 bits of its SHA-256, hex. The
/// ids are 128 random bits, so the hash cannot be searched back, and an operator given an
/// id can still find its events by hashing it (`ghostkey audit` prints nothing else).
pub fn handle_digest(id: &str) -> String {
    let digest = Sha256::digest(format!("ghostkey/audit-handle/v1\0{id}").as_bytes());
    format!("h_{}", hex::encode(&digest[..16]))
}

/// Replaces every handle in an event's detail by its digest.
pub fn without_handles(mut detail: serde_json::Value) -> serde_json::Value {
    if let Some(members) = detail.as_object_mut() {
        for key in HANDLES {
            if let Some(serde_json::Value::String(id)) = members.get(key) {
                let digest = handle_digest(id);
                members.insert(key.to_owned(), serde_json::Value::String(digest));
            }
        }
    }
    detail
}

fn field(h: &mut Sha256, bytes: &[u8]) {
    h.update((bytes.len() as u64).to_be_bytes());
    h.update(bytes);
}

/// The hash of an event given the previous one (zeros before the first).
pub fn chain_hash(
    prev: &[u8; 32],
    seq: i64,
    at: UnixTime,
    kind: &str,
    app_id: &str,
    subject: &str,
    detail: &str,
) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"ghostkey/audit/v1\0");
    h.update(prev);
    h.update(seq.to_be_bytes());
    h.update(at.to_be_bytes());
    for f in [kind, app_id, subject, detail] {
        field(&mut h, f.as_bytes());
    }
    h.finalize().into()
}

/// The first broken link: the sequence number where the chain stops holding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("audit chain broken at event {seq}")]
pub struct BrokenLink {
    /// The first event whose hash or position is wrong.
    pub seq: i64,
}

/// Recomputes the chain over `events` (in order, starting at `seq` 1, or after `prev`).
pub fn verify(
    events: &[AuditEvent],
    mut prev: [u8; 32],
    mut expected_seq: i64,
) -> Result<[u8; 32], BrokenLink> {
    for e in events {
        if e.seq != expected_seq {
            return Err(BrokenLink { seq: expected_seq });
        }
        let h = chain_hash(
            &prev, e.seq, e.at, &e.kind, &e.app_id, &e.subject, &e.detail,
        );
        if h != e.hash {
            return Err(BrokenLink { seq: e.seq });
        }
        prev = h;
        expected_seq += 1;
    }
    Ok(prev)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(n: i64) -> Vec<AuditEvent> {
        let mut prev = [0u8; 32];
        (1..=n)
            .map(|seq| {
                let hash = chain_hash(&prev, seq, 100 + seq, "k", "app", "s", "{}");
                prev = hash;
                AuditEvent {
                    seq,
                    at: 100 + seq,
                    kind: "k".into(),
                    app_id: "app".into(),
                    subject: "s".into(),
                    detail: "{}".into(),
                    hash,
                }
            })
            .collect()
    }

    #[test]
    fn edits_deletions_and_reorders_break_the_chain_where_they_happen() {
        let good = chain(5);
        assert!(verify(&good, [0; 32], 1).is_ok());
        let mut edited = good.clone();
        edited[2].detail = "{\"x\":1}".into();
        assert_eq!(verify(&edited, [0; 32], 1), Err(BrokenLink { seq: 3 }));
        let mut deleted = good.clone();
        deleted.remove(1);
        assert_eq!(verify(&deleted, [0; 32], 1), Err(BrokenLink { seq: 2 }));
        let mut swapped = good.clone();
        swapped.swap(3, 4);
        assert_eq!(verify(&swapped, [0; 32], 1), Err(BrokenLink { seq: 4 }));
        // Field boundaries are unambiguous.
        assert_ne!(
            chain_hash(&[0; 32], 1, 1, "ab", "c", "", ""),
            chain_hash(&[0; 32], 1, 1, "a", "bc", "", "")
        );
    }
}
