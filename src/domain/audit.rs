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

/// A point the chain must still pass through: the head the store records with each event,
/// or one an operator noted earlier (`ghostkey audit verify --anchor SEQ:HASH`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditHead {
    /// The event's position (0 for an empty log).
    pub seq: i64,
    /// Its chain hash (zeros for an empty log).
    pub hash: [u8; 32],
}

impl AuditHead {
    /// `SEQ:HASH` (hash in hex), as `audit verify` prints it and `--anchor` reads it.
    pub fn to_text(&self) -> String {
        format!("{}:{}", self.seq, hex::encode(self.hash))
    }

    /// Reads `SEQ:HASH`.
    pub fn parse(text: &str) -> Result<AuditHead, String> {
        let bad = || {
            format!("`{text}` is not an audit anchor: expected SEQ:HASH, the hash as 64 hex digits")
        };
        let (seq, hash) = text.trim().split_once(':').ok_or_else(bad)?;
        let seq: i64 = seq.parse().map_err(|_| bad())?;
        let hash: [u8; 32] = hex::decode(hash)
            .ok()
            .and_then(|h| h.try_into().ok())
            .ok_or_else(bad)?;
        if seq < 0 {
            return Err(bad());
        }
        Ok(AuditHead { seq, hash })
    }
}

/// Where a chain that verifies link by link still does not match a point it must pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MissedHead {
    /// The chain ends before the point: its last events were deleted.
    #[error("the log ends at event {last} but reached event {expected} before: events after {last} were deleted")]
    Truncated {
        /// The chain's last event (0: empty).
        last: i64,
        /// The point's position.
        expected: i64,
    },
    /// The event at the point's position has another hash: the log was rewritten up to it.
    #[error("event {seq} does not have the hash recorded for it: the log was rewritten up to it")]
    Rewritten {
        /// The point's position.
        seq: i64,
    },
}

/// Checks that a verified chain (its `len` events, and the hash of the event at `point.seq`
/// if it has one) passes through `point`.
pub fn check_passes_through(
    point: &AuditHead,
    len: i64,
    hash_at_point: Option<[u8; 32]>,
) -> Result<(), MissedHead> {
    if point.seq > len {
        return Err(MissedHead::Truncated {
            last: len,
            expected: point.seq,
        });
    }
    let found = if point.seq == 0 {
        [0u8; 32]
    } else {
        hash_at_point.ok_or(MissedHead::Rewritten { seq: point.seq })?
    };
    if found != point.hash {
        return Err(MissedHead::Rewritten { seq: point.seq });
    }
    Ok(())
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
        // A chain that verifies link by link must still reach its recorded head.
        let head = AuditHead {
            seq: 5,
            hash: good[4].hash,
        };
        assert_eq!(check_passes_through(&head, 5, Some(good[4].hash)), Ok(()));
        assert_eq!(
            check_passes_through(&head, 3, None),
            Err(MissedHead::Truncated {
                last: 3,
                expected: 5
            })
        );
        assert_eq!(
            check_passes_through(&head, 5, Some(good[3].hash)),
            Err(MissedHead::Rewritten { seq: 5 })
        );
        let empty = AuditHead {
            seq: 0,
            hash: [0; 32],
        };
        assert_eq!(check_passes_through(&empty, 0, None), Ok(()));
        assert_eq!(AuditHead::parse(&head.to_text()), Ok(head));
        for bad in [
            "",
            "5",
            "x:00",
            "-1:00",
            "5:abcd",
            &format!("5:{}", "g".repeat(64)),
        ] {
            assert!(AuditHead::parse(bad).is_err(), "{bad}");
        }
        // Field boundaries are unambiguous.
        assert_ne!(
            chain_hash(&[0; 32], 1, 1, "ab", "c", "", ""),
            chain_hash(&[0; 32], 1, 1, "a", "bc", "", "")
        );
    }
}
