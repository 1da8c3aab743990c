//! Every request body, as the JSON extractor and the checks behind it see it.
//!
//! A first byte from `a` to `k` picks a request type; the harness then builds that type's
//! JSON with its exact field names (from `ghostkey_proto::api`), so that fuzzing reaches the
//! checks on the values rather than stopping at "unknown field":
//!
//! - the second byte chooses structural changes: 1 drops a field, 2 adds an unknown
//!   field, 4 sends a number and 8 a `null` in place of a field (the field is number
//!   `byte >> 4` of the type's fields, in order);
//! - the rest gives the fields' values, one line each, in order (nested fields inline). A
//!   missing line takes a valid default (an optional field or object is then left out);
//!   `@` stands for a valid binary value the harness makes with fixed keys (a sealed
//!   blob, the virtual device's keys, an endorsed root block, a device-added block).
//!
//! Parsing must succeed exactly when the body is well formed (strict: no unknown field,
//! every required field, the right types, known enum values), and what parses must
//! serialise back to the same value. The checks behind it must hold their invariants
//! (normalised destinations and codes are fixed points, an accepted enrolment carries
//! exactly the values sent, a block accepted for appending encodes back to its bytes).
//! Any other first byte: the whole input is tried as every request type.
#![no_main]

use ed25519_dalek::Signer;
use ghostkey::domain::assertion::VerifiedAssertion;
use ghostkey::domain::chain::decode_for_append;
use ghostkey::domain::{cancel_code, enrollment, method};
use ghostkey_client::AppSigningKey;
use ghostkey_fuzz::{device, fields, tally, text};
use ghostkey_proto::api::*;
use ghostkey_proto::assertion::Purpose;
use ghostkey_proto::chain::{Author, Block, BlockBody, UnsignedBlock};
use ghostkey_proto::{b64, sealed, ErrorCode};
use libfuzzer_sys::fuzz_target;
use secrecy::ExposeSecret;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{Map, Value};

const APP: &str = "app_1";
const USER: &str = "user-1";

/// A field of a request: its path, whether it is required (given its parent), whether its
/// parent object is optional, and its default value.
struct Slot {
    path: &'static [&'static str],
    required: bool,
    default: &'static str,
}

const fn slot(path: &'static [&'static str], default: &'static str) -> Slot {
    Slot {
        path,
        required: true,
        default,
    }
}

/// A proof's `code` is optional in the JSON (a passkey's proof carries `webauthn`
/// instead); `parse_proof` requires exactly one of the two.
const PROOF: [Slot; 2] = [
    slot(&["proof", "challenge_id"], "ch_1"),
    Slot {
        path: &["proof", "code"],
        required: false,
        default: "123456",
    },
];

/// The fields of each request type, in the order the input gives them; the bool says
/// whether `proof` is optional.
fn slots(kind: u8) -> (Vec<Slot>, bool) {
    match kind {
        b'a' => (
            vec![
                slot(&["sealed_virtual_device"], "@"),
                slot(&["virtual_device", "signing_key"], "@"),
                slot(&["virtual_device", "encryption_key"], "@"),
                slot(&["root_block"], "@"),
            ],
            false,
        ),
        b'b' => {
            let mut s = vec![
                slot(&["kind"], "email"),
                Slot {
                    path: &["destination"],
                    required: false,
                    default: "jo@example.org",
                },
            ];
            s.extend(PROOF);
            (s, true)
        }
        b'c' => (
            vec![slot(&["method_id"], "m_1"), slot(&["purpose"], "proof")],
            false,
        ),
        // `code` or `webauthn`: neither is required by the JSON alone.
        b'd' => (
            vec![Slot {
                path: &["code"],
                required: false,
                default: "123456",
            }],
            false,
        ),
        b'e' => (PROOF.into(), false),
        b'f' | b'i' => (PROOF.into(), true),
        b'g' => (
            vec![slot(&["cancel_code"], "ABCD-EFGH-JKMN-PQRS-TVWX")],
            false,
        ),
        b'h' => (vec![slot(&["method_id"], "m_1")], false),
        b'j' => {
            let mut s = vec![slot(&["sealed_virtual_device"], "@")];
            s.extend(PROOF);
            (s, false)
        }
        _ => (vec![slot(&["block"], "@")], false),
    }
}

fn sealed_blob() -> Vec<u8> {
    let mut blob = vec![sealed::SEALED_FORMAT_V1];
    blob.resize(sealed::MIN_SEALED_LEN, 0);
    blob
}

fn root() -> &'static Block {
    static ROOT: std::sync::OnceLock<Block> = std::sync::OnceLock::new();
    ROOT.get_or_init(make_root)
}

fn make_root() -> Block {
    let vd = device(0);
    let unsigned = UnsignedBlock {
        index: 0,
        prev_hash: [0; 32],
        app_id: APP.into(),
        user_id: USER.into(),
        body: BlockBody::Root {
            vd_signing: vd.signing,
            vd_encryption: vd.encryption,
            user_public: [9; 32],
            user_key_for_vd: vec![7; 48],
        },
        author: Author::App("k1".into()),
    };
    AppSigningKey::from_seed("k1", &[0x11; 32])
        .endorse_root(&unsigned, APP, USER)
        .expect("a root for this app and user")
}

fn device_added() -> &'static Block {
    static ADDED: std::sync::OnceLock<Block> = std::sync::OnceLock::new();
    ADDED.get_or_init(make_device_added)
}

fn make_device_added() -> Block {
    let (vd, new) = (device(0), device(1));
    let unsigned = UnsignedBlock {
        index: 1,
        prev_hash: root().hash(),
        app_id: APP.into(),
        user_id: USER.into(),
        body: BlockBody::DeviceAdded {
            signing: new.signing,
            encryption: new.encryption,
            user_key_for_device: vec![8; 48],
        },
        author: Author::Device(vd.signing),
    };
    let signature = vd
        .keys
        .signing_key()
        .sign(&unsigned.signing_input())
        .to_bytes();
    Block {
        unsigned,
        signature,
    }
}

/// The valid binary value `@` stands for in the field at `path`.
fn material(path: &[&str]) -> String {
    match path.last().copied() {
        Some("sealed_virtual_device") => b64::encode(sealed_blob()),
        Some("signing_key") => b64::encode(device(0).signing),
        Some("encryption_key") => b64::encode(device(0).encryption),
        Some("root_block") => b64::encode(root().encode()),
        Some("block") => b64::encode(device_added().encode()),
        _ => "@".into(),
    }
}

fn set(object: &mut Map<String, Value>, path: &[&str], value: Value) {
    match path {
        [leaf] => {
            object.insert((*leaf).into(), value);
        }
        [parent, rest @ ..] => {
            let child = object
                .entry(*parent)
                .or_insert_with(|| Value::Object(Map::new()));
            if let Value::Object(child) = child {
                set(child, rest, value);
            }
        }
        [] => {}
    }
}

fn remove(object: &mut Map<String, Value>, path: &[&str]) {
    match path {
        [leaf] => {
            object.remove(*leaf);
        }
        [parent, rest @ ..] => {
            if let Some(Value::Object(child)) = object.get_mut(*parent) {
                remove(child, rest);
            }
        }
        [] => {}
    }
}

/// Parses `bytes` as `T`; what parses must serialise to a value that parses back equal.
fn parse<T: DeserializeOwned + Serialize + PartialEq + std::fmt::Debug>(bytes: &[u8]) -> Option<T> {
    let body: T = serde_json::from_slice(bytes).ok()?;
    let again = serde_json::to_vec(&body).expect("a request serialises");
    assert_eq!(
        serde_json::from_slice::<T>(&again).ok().as_ref(),
        Some(&body),
        "round trip"
    );
    Some(body)
}

fn check_code(code: &str) {
    if let Ok(parsed) = ghostkey::service::parse_code(code) {
        let parsed = parsed.expose_secret();
        assert_eq!(parsed, code.trim());
        // Digits, or a passphrase verifier: 32 bytes of base64url (43 characters).
        let digits =
            (4..=10).contains(&parsed.len()) && parsed.bytes().all(|b| b.is_ascii_digit());
        let verifier = ghostkey::domain::passphrase::well_formed(parsed)
            && ghostkey_proto::b64::decode(parsed).is_ok_and(|v| v.len() == 32);
        assert!(digits || verifier, "{parsed}");
    }
}

/// An answer (or a proof's): exactly one of a well-formed code and a JSON object (a
/// passkey's response) is accepted, unchanged.
fn check_answer(code: Option<&str>, webauthn: Option<&serde_json::Value>, field: &str) {
    if let Some(code) = code {
        check_code(code);
    }
    match ghostkey::service::parse_answer(code, webauthn, field) {
        Ok(ghostkey::service::Answer::Code(parsed)) => {
            tally("answer:code");
            assert!(webauthn.is_none());
            assert_eq!(Some(parsed.expose_secret()), code.map(str::trim));
        }
        Ok(ghostkey::service::Answer::WebAuthn(response)) => {
            tally("answer:webauthn");
            assert!(code.is_none());
            assert!(response.is_object());
            assert_eq!(Some(&response), webauthn);
        }
        Err(e) => {
            tally("answer:invalid");
            assert_eq!(e.code, ErrorCode::InvalidField);
        }
    }
}

fn check_proof(proof: &Proof) {
    check_answer(proof.code.as_deref(), proof.webauthn.as_ref(), "proof.");
    if ghostkey::service::parse_proof(proof).is_ok() {
        let id = &proof.challenge_id;
        assert!((1..=64).contains(&id.len()));
        assert!(id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'));
    }
}

fn check_destination(kind: MethodKind, destination: &str) {
    let normalised = match kind {
        MethodKind::Sms => method::normalise_phone(destination),
        MethodKind::Email => method::normalise_email(destination),
        MethodKind::Totp | MethodKind::Passphrase | MethodKind::Passkey => return,
    };
    tally(match (kind, normalised.is_ok()) {
        (MethodKind::Sms, true) => "phone:valid",
        (MethodKind::Sms, false) => "phone:invalid",
        (_, true) => "email:valid",
        (_, false) => "email:invalid",
    });
    let Ok(normalised) = normalised else { return };
    let n = normalised.expose_secret();
    match kind {
        MethodKind::Sms => {
            assert!(
                n.starts_with('+') && n.len() <= 16 && n[1..].bytes().all(|b| b.is_ascii_digit()),
                "{n}"
            );
            let again = method::normalise_phone(n).expect("a normalised number is valid");
            assert_eq!(again.expose_secret(), n, "normalising is idempotent");
            method::mask_phone(&normalised);
        }
        _ => {
            let (_, domain) = n.rsplit_once('@').expect("an address has an @");
            assert_eq!(domain, domain.to_ascii_lowercase());
            let again = method::normalise_email(n).expect("a normalised address is valid");
            assert_eq!(again.expose_secret(), n, "normalising is idempotent");
            method::mask_email(&normalised);
        }
    }
    let form = method::rate_limit_form(kind, n);
    assert_eq!(
        method::rate_limit_form(kind, &form),
        form,
        "the rate-limit form is a fixed point"
    );
}

fn check_sealed(text: &str) {
    if let Ok(blob) = b64::decode(text) {
        if sealed::parse(&blob).is_ok() {
            assert_eq!(blob[0], sealed::SEALED_FORMAT_V1);
            assert!((sealed::MIN_SEALED_LEN..=sealed::MAX_SEALED_LEN).contains(&blob.len()));
        }
    }
}

/// Tries `bytes` as the request type `kind` (or all of them) and checks what parses.
fn check_bytes(bytes: &[u8], only: Option<u8>) -> bool {
    let wants = |k: u8| only.is_none_or(|o| o == k);
    let mut parsed = false;
    if wants(b'a') {
        if let Some(body) = parse::<EnrollRequest>(bytes) {
            parsed = true;
            let assertion = VerifiedAssertion {
                app_id: APP.into(),
                user_id: USER.into(),
                jti: "j".repeat(16),
                remember_jti_until: 0,
                purpose: Purpose::Enroll,
            };
            let enrolled = enrollment::new_enrollment(&assertion, &body, 7);
            tally(match &enrolled {
                Ok(_) => "enrollment:accepted",
                Err(e) => e.code.as_str(),
            });
            if let Ok(e) = enrolled {
                assert_eq!(
                    Ok(&e.sealed_virtual_device),
                    b64::decode(&body.sealed_virtual_device).as_ref()
                );
                assert!(sealed::parse(&e.sealed_virtual_device).is_ok());
                assert_eq!(
                    Some(e.signing_key),
                    b64::decode_array(&body.virtual_device.signing_key)
                );
                assert_eq!(
                    Some(e.encryption_key),
                    b64::decode_array(&body.virtual_device.encryption_key)
                );
                assert_eq!(Ok(&e.root_block), b64::decode(&body.root_block).as_ref());
                let root = Block::decode(&e.root_block).expect("an accepted root decodes");
                assert_eq!(
                    (
                        root.unsigned.app_id.as_str(),
                        root.unsigned.user_id.as_str()
                    ),
                    (APP, USER)
                );
                assert!(matches!(
                    root.unsigned.body,
                    BlockBody::Root { vd_signing, vd_encryption, .. }
                        if vd_signing == e.signing_key && vd_encryption == e.encryption_key
                ));
                assert_eq!(
                    (e.app_id.as_str(), e.user_id.as_str(), e.created_at),
                    (APP, USER, 7)
                );
            }
        }
    }
    if wants(b'b') {
        if let Some(body) = parse::<AddMethodRequest>(bytes) {
            parsed = true;
            if let Some(destination) = &body.destination {
                check_destination(body.kind, destination);
            }
            if let Some(proof) = &body.proof {
                check_proof(proof);
            }
        }
    }
    if wants(b'c') {
        parsed |= parse::<StartChallengeRequest>(bytes).is_some();
    }
    if wants(b'd') {
        if let Some(body) = parse::<AnswerRequest>(bytes) {
            parsed = true;
            check_answer(body.code.as_deref(), body.webauthn.as_ref(), "");
        }
    }
    if wants(b'e') {
        if let Some(body) = parse::<RemoveMethodRequest>(bytes) {
            parsed = true;
            check_proof(&body.proof);
        }
    }
    if wants(b'f') {
        if let Some(body) = parse::<UnlockRequest>(bytes) {
            parsed = true;
            body.proof.as_ref().map(check_proof);
        }
    }
    if wants(b'g') {
        if let Some(body) = parse::<CancelWithCodeRequest>(bytes) {
            parsed = true;
            let parsed_code = cancel_code::parse(&body.cancel_code);
            tally(if parsed_code.is_ok() {
                "cancel_code:valid"
            } else {
                "cancel_code:invalid"
            });
            if let Ok(code) = parsed_code {
                let code = code.expose_secret();
                assert_eq!(code.len(), cancel_code::SYMBOLS);
                let again = cancel_code::parse(code).expect("a canonical code parses");
                assert_eq!(
                    again.expose_secret(),
                    code,
                    "canonical form is a fixed point"
                );
                let lower = code.to_ascii_lowercase();
                let spelled = cancel_code::parse(&lower).expect("case does not matter");
                assert_eq!(spelled.expose_secret(), code);
            }
        }
    }
    if wants(b'h') {
        parsed |= parse::<StartRecoveryRequest>(bytes).is_some();
    }
    if wants(b'i') {
        if let Some(body) = parse::<CancelRecoveryRequest>(bytes) {
            parsed = true;
            body.proof.as_ref().map(check_proof);
        }
    }
    if wants(b'j') {
        if let Some(body) = parse::<ReplaceVirtualDeviceRequest>(bytes) {
            parsed = true;
            check_sealed(&body.sealed_virtual_device);
            check_proof(&body.proof);
        }
    }
    if wants(b'k') {
        if let Some(body) = parse::<AppendBlockRequest>(bytes) {
            parsed = true;
            if let Ok(block) = b64::decode(&body.block) {
                for purpose in [Purpose::Recover, Purpose::Manage] {
                    let decoded = decode_for_append(&block, purpose);
                    tally(if decoded.is_ok() {
                        "block:decoded"
                    } else {
                        "block:refused"
                    });
                    match decoded {
                        Ok(decoded) => assert_eq!(decoded.encode(), block),
                        Err(e) => assert!(matches!(
                            e.code,
                            ErrorCode::InvalidBlock | ErrorCode::AssertionWrongPurpose
                        )),
                    }
                }
            }
        }
    }
    parsed
}

fn fuzz_structured(kind: u8, flags: u8, values: &[u8]) {
    let (slots, proof_optional) = slots(kind);
    let lines = fields(values, slots.len());
    let mut object = Map::new();
    let mut enums_valid = true;
    let proof_present = !proof_optional
        || lines[slots.iter().position(|s| s.path[0] == "proof").unwrap_or(0)].is_some();
    let mut present = Vec::new();
    for (s, line) in slots.iter().zip(&lines) {
        let in_optional_proof = proof_optional && s.path[0] == "proof";
        let value = match text(*line) {
            Some(v) => v,
            None if !s.required => continue,
            None if in_optional_proof && !proof_present => continue,
            None => s.default.to_owned(),
        };
        let value = if value == "@" {
            material(s.path)
        } else {
            value
        };
        let valid_enum = match s.path {
            ["kind"] => MethodKind::parse(&value).is_some(),
            ["purpose"] => matches!(value.as_str(), "confirm" | "proof" | "recover"),
            _ => true,
        };
        enums_valid &= valid_enum;
        set(&mut object, s.path, Value::from(value));
        present.push(s);
    }
    let mut should_parse = enums_valid;
    // One change to the chosen field: `null` over a number over leaving it out.
    if let Some(target) = present.get(usize::from(flags >> 4) % present.len().max(1)) {
        if flags & 8 != 0 {
            set(&mut object, target.path, Value::Null);
            should_parse &= !target.required;
        } else if flags & 4 != 0 {
            set(&mut object, target.path, Value::from(7));
            should_parse = false;
        } else if flags & 1 != 0 {
            remove(&mut object, target.path);
            should_parse &= !target.required;
        }
    }
    if flags & 2 != 0 {
        object.insert("unexpected".into(), Value::from("x"));
        should_parse = false;
    }
    let bytes = serde_json::to_vec(&Value::Object(object)).expect("JSON serialises");
    let parsed = check_bytes(&bytes, Some(kind));
    tally(&format!(
        "{}:{}",
        char::from(kind),
        if parsed { "parsed" } else { "refused" }
    ));
    assert_eq!(parsed, should_parse, "{}", String::from_utf8_lossy(&bytes));
}

fuzz_target!(|data: &[u8]| {
    match data {
        [kind @ b'a'..=b'k', flags, values @ ..] => fuzz_structured(*kind, *flags, values),
        _ => {
            check_bytes(data, None);
        }
    }
});
