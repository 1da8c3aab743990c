//! The test vectors of `docs/PROTOCOL.md` (§11.1 sealed virtual device, §11.2 assertion, §11.5 passphrase verifier,
//! §11.3 device chain), read from the document at run time and recomputed with this crate's code, byte for
//! byte. A change to the document or to the code that breaks one fails here.

use std::collections::BTreeMap;

use crypto_secretbox::aead::{AeadInPlace, KeyInit};
use crypto_secretbox::{Nonce, XSalsa20Poly1305};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use ghostkey_client::chain::{open_sealed, user_keys};
use ghostkey_client::proto::assertion::{AssertionClaims, Purpose};
use ghostkey_client::proto::b64;
use ghostkey_client::proto::chain::{
    verify_chain, Author, Block, BlockBody, ChainError, ChainFault, UnsignedBlock,
};
use ghostkey_client::proto::sealed::{SealedFormatError, SEALED_FORMAT_V1};
use ghostkey_client::sealed::SealError;
use ghostkey_client::{AppSigningKey, DeviceKeys, UserKeys, UserSecret, VirtualDevice};
use sha2::{Digest, Sha256};

const DOC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/PROTOCOL.md");

/// The `key: value` lines of the block opened by ```` ```vector name="<name>" ````, which
/// must appear exactly once and hold exactly the keys `expected`.
fn vector(name: &str, expected: &[&str]) -> BTreeMap<String, String> {
    let doc = std::fs::read_to_string(DOC).unwrap_or_else(|e| panic!("cannot read {DOC}: {e}"));
    let opening = format!("```vector name=\"{name}\"");
    let mut blocks = Vec::new();
    let mut lines = doc.lines();
    while let Some(line) = lines.next() {
        if line.trim_end() != opening {
            continue;
        }
        let mut block = BTreeMap::new();
        for line in lines.by_ref() {
            if line.trim_end() == "```" {
                break;
            }
            let (key, value) = line
                .split_once(": ")
                .unwrap_or_else(|| panic!("vector {name}: `{line}` is not `key: value`"));
            let previous = block.insert(key.trim().to_owned(), value.trim_end().to_owned());
            assert!(previous.is_none(), "vector {name}: `{key}` appears twice");
        }
        blocks.push(block);
    }
    assert_eq!(
        blocks.len(),
        1,
        "vector {name} must appear exactly once in {DOC}"
    );
    let block = blocks.pop().unwrap_or_default();
    let keys: Vec<&str> = block.keys().map(String::as_str).collect();
    let mut wanted = expected.to_vec();
    wanted.sort_unstable();
    assert_eq!(keys, wanted, "vector {name}: keys");
    block
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Vec<u8> {
    assert!(
        text.len().is_multiple_of(2) && text.bytes().all(|b| b.is_ascii_hexdigit()),
        "not hex: {text}"
    );
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

fn array<const N: usize>(text: &str) -> [u8; N] {
    unhex(text)
        .try_into()
        .unwrap_or_else(|v: Vec<u8>| panic!("expected {N} bytes, got {}", v.len()))
}

#[test]
fn sealed_virtual_device_vector_matches_the_code() {
    let v = vector(
        "sealed-v1",
        &[
            "user_secret",
            "nonce",
            "app_id",
            "user_id",
            "version",
            "signing_seed",
            "encryption_secret",
            "plaintext",
            "sealed",
            "sealed_b64",
            "signing_key",
            "encryption_key",
        ],
    );
    let secret_bytes: [u8; 32] = array(&v["user_secret"]);
    let nonce: [u8; 24] = array(&v["nonce"]);
    let seed: [u8; 32] = array(&v["signing_seed"]);
    let x_secret: [u8; 32] = array(&v["encryption_secret"]);
    let (app_id, user_id) = (v["app_id"].as_str(), v["user_id"].as_str());
    let version: u64 = v["version"].parse().unwrap();
    let secret = UserSecret::from_bytes(secret_bytes);

    let device = VirtualDevice::from_keys(
        app_id,
        user_id,
        version,
        DeviceKeys::from_bytes(&seed, &x_secret),
    );

    // The plaintext, as the code lays it out...
    let plaintext = device.to_plaintext().unwrap();
    assert_eq!(hex(&plaintext), v["plaintext"], "plaintext");
    // ... and read back by the layout the document describes (§3.2).
    let p = unhex(&v["plaintext"]);
    let (a, u) = (app_id.len(), user_id.len());
    assert_eq!(p.len(), 79 + a + u, "plaintext length is 79 + a + u");
    assert_eq!(&p[0..4], b"GKVD");
    assert_eq!(p[4], 1, "layout version");
    assert_eq!(u64::from_be_bytes(p[5..13].try_into().unwrap()), version);
    assert_eq!(usize::from(p[13]), a);
    assert_eq!(&p[14..14 + a], app_id.as_bytes());
    assert_eq!(usize::from(p[14 + a]), u);
    assert_eq!(&p[15 + a..15 + a + u], user_id.as_bytes());
    assert_eq!(&p[15 + a + u..47 + a + u], &seed);
    assert_eq!(&p[47 + a + u..], &x_secret);
    assert_eq!(
        VirtualDevice::from_plaintext(&p).unwrap(),
        device,
        "the plaintext parses back"
    );

    // The sealed blob, in hex and base64url.
    let sealed = device.seal_with_nonce(&secret, &nonce).unwrap();
    assert_eq!(hex(&sealed), v["sealed"], "sealed");
    assert_eq!(b64::encode(&sealed), v["sealed_b64"], "sealed_b64");
    assert_eq!(b64::decode(&v["sealed_b64"]).unwrap(), unhex(&v["sealed"]));

    // The outer format of §3.1: version byte, nonce, then libsodium's combined
    // crypto_secretbox output, tag first.
    let blob = unhex(&v["sealed"]);
    assert_eq!(blob[0], SEALED_FORMAT_V1);
    assert_eq!(&blob[1..25], &nonce);
    assert_eq!(blob.len(), 41 + p.len());
    let mut ciphertext = p.clone();
    let tag = XSalsa20Poly1305::new(&secret_bytes.into())
        .encrypt_in_place_detached(Nonce::from_slice(&nonce), b"", &mut ciphertext)
        .unwrap();
    assert_eq!(&blob[25..41], tag.as_slice(), "the tag comes first");
    assert_eq!(&blob[41..], ciphertext.as_slice(), "then the ciphertext");

    // The public keys, as sent at enrolment.
    let public = device.keys().public();
    assert_eq!(public.signing_key, v["signing_key"], "signing_key");
    assert_eq!(public.encryption_key, v["encryption_key"], "encryption_key");

    // Opening it back, and the checks a client makes after opening (§3.3).
    let opened = VirtualDevice::open(&blob, &secret, app_id, user_id, version).unwrap();
    assert_eq!(opened, device);
    assert_eq!(
        (opened.app_id(), opened.user_id(), opened.version()),
        (app_id, user_id, version)
    );
    assert_eq!(opened.keys().signing_key().to_bytes(), seed);
    assert_eq!(opened.keys().encryption_secret().to_bytes(), x_secret);
    assert_eq!(
        VirtualDevice::open(&blob, &secret, "app_000000000000000000000000", user_id, 1),
        Err(SealError::WrongBinding("app"))
    );
    assert_eq!(
        VirtualDevice::open(&blob, &secret, app_id, "u-someone-else", 1),
        Err(SealError::WrongBinding("user"))
    );
    assert_eq!(
        VirtualDevice::open(&blob, &secret, app_id, user_id, version + 1),
        Err(SealError::RolledBack {
            found: version,
            expected: version + 1
        })
    );
    let mut other_secret = secret_bytes;
    other_secret[0] ^= 1;
    assert_eq!(
        VirtualDevice::open(
            &blob,
            &UserSecret::from_bytes(other_secret),
            app_id,
            user_id,
            1
        ),
        Err(SealError::Decrypt)
    );
    let mut tampered = blob.clone();
    *tampered.last_mut().unwrap() ^= 1;
    assert_eq!(
        VirtualDevice::open(&tampered, &secret, app_id, user_id, 1),
        Err(SealError::Decrypt)
    );
    let mut v2 = blob.clone();
    v2[0] = 2;
    assert_eq!(
        VirtualDevice::open(&v2, &secret, app_id, user_id, 1),
        Err(SealError::Format(SealedFormatError::UnsupportedVersion(2)))
    );
}

#[test]
fn assertion_vector_matches_the_code() {
    let v = vector(
        "assertion-eddsa",
        &[
            "app_key_seed",
            "app_public_key",
            "kid",
            "iss",
            "sub",
            "aud",
            "iat",
            "exp",
            "jti",
            "purpose",
            "header_json",
            "payload_json",
            "signature",
            "token",
        ],
    );
    let key = AppSigningKey::from_seed(&v["kid"], &array(&v["app_key_seed"]));
    assert_eq!(key.kid(), v["kid"]);
    assert_eq!(key.public_key_b64(), v["app_public_key"], "app_public_key");

    let purpose: Purpose = serde_json::from_value(serde_json::json!(v["purpose"])).unwrap();
    let claims = AssertionClaims {
        iss: v["iss"].clone(),
        sub: v["sub"].clone(),
        aud: v["aud"].clone(),
        iat: v["iat"].parse().unwrap(),
        exp: v["exp"].parse().unwrap(),
        jti: v["jti"].clone(),
        purpose,
    };
    let token = key.mint_claims(&claims).unwrap();
    assert_eq!(token, v["token"], "token");

    // The exact bytes signed: base64url(header_json) "." base64url(payload_json).
    let parts: Vec<&str> = v["token"].split('.').collect();
    assert_eq!(parts.len(), 3, "a compact JWS has three parts");
    assert_eq!(
        b64::decode(parts[0]).unwrap(),
        v["header_json"].as_bytes(),
        "header_json"
    );
    assert_eq!(
        b64::decode(parts[1]).unwrap(),
        v["payload_json"].as_bytes(),
        "payload_json"
    );
    assert_eq!(parts[2], v["signature"], "signature");
    assert_eq!(
        serde_json::from_str::<AssertionClaims>(&v["payload_json"]).unwrap(),
        claims,
        "payload_json holds exactly the vector's claims"
    );
    let header: serde_json::Value = serde_json::from_str(&v["header_json"]).unwrap();
    assert_eq!(header["alg"], "EdDSA");
    assert_eq!(header["kid"], v["kid"].as_str());

    // The signature is a plain Ed25519 signature of the signing input.
    let public =
        VerifyingKey::from_bytes(&b64::decode_array(&v["app_public_key"]).unwrap()).unwrap();
    let signature = Signature::from_bytes(&b64::decode_array(&v["signature"]).unwrap());
    let signing_input = format!("{}.{}", parts[0], parts[1]);
    public
        .verify_strict(signing_input.as_bytes(), &signature)
        .expect("the signature verifies with the app's public key");
    let mut altered = signing_input.into_bytes();
    altered[0] ^= 1;
    assert!(public.verify_strict(&altered, &signature).is_err());
}

/// Signs an unsigned block with a device's Ed25519 key, as §4.1 says.
fn signed_by(seed: &[u8; 32], unsigned: UnsignedBlock) -> Block {
    Block {
        signature: SigningKey::from_bytes(seed)
            .sign(&unsigned.signing_input())
            .to_bytes(),
        unsigned,
    }
}

#[test]
fn device_chain_vector_matches_the_code() {
    let v = vector(
        "chain-v1",
        &[
            "app_key_seed",
            "kid",
            "app_id",
            "user_id",
            "vd_signing_seed",
            "vd_encryption_secret",
            "user_secret_key",
            "device_signing_seed",
            "device_encryption_secret",
            "user_public",
            "user_key_for_vd",
            "user_key_for_device",
            "root_block",
            "root_hash",
            "device_added_block",
            "device_added_hash",
            "device_revoked_block",
            "device_revoked_hash",
        ],
    );
    let (app_id, user_id, kid) = (
        v["app_id"].as_str(),
        v["user_id"].as_str(),
        v["kid"].as_str(),
    );
    let app = AppSigningKey::from_seed(kid, &array(&v["app_key_seed"]));
    let vd_seed: [u8; 32] = array(&v["vd_signing_seed"]);
    let vd_secret: [u8; 32] = array(&v["vd_encryption_secret"]);
    let device_seed: [u8; 32] = array(&v["device_signing_seed"]);
    let device_secret: [u8; 32] = array(&v["device_encryption_secret"]);
    let user_secret: [u8; 32] = array(&v["user_secret_key"]);
    let vd = DeviceKeys::from_bytes(&vd_seed, &vd_secret);
    let device = DeviceKeys::from_bytes(&device_seed, &device_secret);
    let user = UserKeys::from_bytes(&user_secret);
    assert_eq!(hex(&user.public()), v["user_public"], "user_public");

    // The sealed user keys open with each recipient's X25519 secret (libsodium sealed box).
    let for_vd = unhex(&v["user_key_for_vd"]);
    let for_device = unhex(&v["user_key_for_device"]);
    assert_eq!(for_vd.len(), 80);
    assert_eq!(
        open_sealed(&vd_secret, &for_vd).unwrap().as_slice(),
        &user_secret
    );
    assert_eq!(
        open_sealed(&device_secret, &for_device).unwrap().as_slice(),
        &user_secret
    );
    assert!(open_sealed(&device_secret, &for_vd).is_none());

    // The root, endorsed by the app key.
    let root = app
        .endorse_root(
            &UnsignedBlock {
                index: 0,
                prev_hash: [0; 32],
                app_id: app_id.into(),
                user_id: user_id.into(),
                body: BlockBody::Root {
                    vd_signing: vd.signing_public(),
                    vd_encryption: vd.encryption_public(),
                    user_public: user.public(),
                    user_key_for_vd: for_vd.clone(),
                },
                author: Author::App(kid.into()),
            },
            app_id,
            user_id,
        )
        .unwrap();
    assert_eq!(hex(&root.encode()), v["root_block"], "root_block");
    assert_eq!(hex(&root.hash()), v["root_hash"], "root_hash");

    // A device added by the virtual device, then revoking itself.
    let added = signed_by(
        &vd_seed,
        UnsignedBlock {
            index: 1,
            prev_hash: root.hash(),
            app_id: app_id.into(),
            user_id: user_id.into(),
            body: BlockBody::DeviceAdded {
                signing: device.signing_public(),
                encryption: device.encryption_public(),
                user_key_for_device: for_device.clone(),
            },
            author: Author::Device(vd.signing_public()),
        },
    );
    assert_eq!(
        hex(&added.encode()),
        v["device_added_block"],
        "device_added_block"
    );
    assert_eq!(
        hex(&added.hash()),
        v["device_added_hash"],
        "device_added_hash"
    );
    let revoked = signed_by(
        &device_seed,
        UnsignedBlock {
            index: 2,
            prev_hash: added.hash(),
            app_id: app_id.into(),
            user_id: user_id.into(),
            body: BlockBody::DeviceRevoked {
                revoked: device.signing_public(),
            },
            author: Author::Device(device.signing_public()),
        },
    );
    assert_eq!(
        hex(&revoked.encode()),
        v["device_revoked_block"],
        "device_revoked_block"
    );
    assert_eq!(
        hex(&revoked.hash()),
        v["device_revoked_hash"],
        "device_revoked_hash"
    );

    // What §4.1 says of every block: the hash is SHA-256 of the whole encoding, the
    // signature Ed25519 over the domain separator and every byte before it, and decoding
    // then encoding gives the same bytes.
    let blocks: Vec<Vec<u8>> = ["root_block", "device_added_block", "device_revoked_block"]
        .iter()
        .map(|k| unhex(&v[*k]))
        .collect();
    let signers = [
        app.public_key(),
        vd.signing_public(),
        device.signing_public(),
    ];
    for (i, (bytes, kind)) in blocks
        .iter()
        .zip(["root", "device-added", "device-revoked"])
        .enumerate()
    {
        let hash_key = ["root_hash", "device_added_hash", "device_revoked_hash"][i];
        assert_eq!(hex(&Sha256::digest(bytes)), v[hash_key]);
        assert_eq!(bytes[0], 1, "format version");
        assert_eq!(usize::from(bytes[1]), i + 1, "kind");
        assert_eq!(
            u64::from_be_bytes(bytes[2..10].try_into().unwrap()),
            i as u64
        );
        let (body, signature) = bytes.split_at(bytes.len() - 64);
        let mut signing_input = format!("ghostkey/chain/v1/{kind}\0").into_bytes();
        signing_input.extend_from_slice(body);
        VerifyingKey::from_bytes(&signers[i])
            .unwrap()
            .verify_strict(
                &signing_input,
                &Signature::from_bytes(signature.try_into().unwrap()),
            )
            .unwrap_or_else(|_| panic!("block {i}: signature"));
        assert_eq!(&Block::decode(bytes).unwrap().encode(), bytes);
    }
    // The root's fields at the offsets §4.1 gives.
    let r = &blocks[0];
    assert_eq!(&r[10..42], &[0u8; 32], "the root's prev_hash is zero");
    assert_eq!(u16::from_be_bytes([r[42], r[43]]) as usize, app_id.len());
    assert_eq!(&r[44..44 + app_id.len()], app_id.as_bytes());

    // The chain verifies from the pinned app key, and says what it should.
    let pinned = |k: &str| (k == kid).then(|| app.public_key());
    let state = verify_chain(&blocks, &pinned).unwrap();
    assert_eq!(
        (state.app_id.as_str(), state.user_id.as_str()),
        (app_id, user_id)
    );
    assert_eq!(state.user_public, user.public());
    assert_eq!(state.len, 3);
    assert_eq!(hex(&state.head), v["device_revoked_hash"]);
    assert_eq!(state.devices.len(), 2);
    assert!(state.devices[0].is_virtual && state.devices[0].revoked_at.is_none());
    assert_eq!(state.devices[1].signing, device.signing_public());
    assert_eq!(state.devices[1].revoked_at, Some(2));
    assert_eq!(user_keys(&state, &vd).unwrap().public(), user.public());
    let before_revocation = verify_chain(&blocks[..2], &pinned).unwrap();
    assert_eq!(
        user_keys(&before_revocation, &device).unwrap().public(),
        user.public()
    );

    // And fails with the documented fault when it should not verify.
    let other_app = AppSigningKey::from_seed(kid, &[7; 32]);
    assert_eq!(
        verify_chain(&blocks, &|k: &str| (k == kid)
            .then(|| other_app.public_key())),
        Err(ChainError {
            index: 0,
            fault: ChainFault::RootNotSignedByApp
        })
    );
    let mut tampered = blocks.clone();
    let last = tampered[1].len() - 1;
    tampered[1][last] ^= 1;
    assert_eq!(
        verify_chain(&tampered, &pinned),
        Err(ChainError {
            index: 1,
            fault: ChainFault::BadSignature
        })
    );
    assert_eq!(
        verify_chain(&[blocks[0].clone(), blocks[2].clone()], &pinned),
        Err(ChainError {
            index: 1,
            fault: ChainFault::WrongIndex
        })
    );
}

#[test]
fn passphrase_verifier_v1() {
    use ghostkey_client::passphrase;
    use secrecy::{ExposeSecret, SecretString};
    let v = vector(
        "passphrase-v1",
        &[
            "app_id",
            "user_id",
            "version",
            "passphrase_utf8",
            "nfc_utf8",
            "salt",
            "verifier",
        ],
    );
    let typed = String::from_utf8(unhex(&v["passphrase_utf8"])).unwrap();
    let nfc = String::from_utf8(unhex(&v["nfc_utf8"])).unwrap();
    assert_ne!(typed, nfc, "the vector types a decomposed form");
    assert_eq!(
        hex(&passphrase::salt(&v["app_id"], &v["user_id"])),
        v["salt"]
    );
    // The salt by hand: SHA-256 of the context and the length-prefixed ids, first 16 bytes.
    let mut h = Sha256::new();
    h.update(b"ghostkey passphrase v1");
    for id in [&v["app_id"], &v["user_id"]] {
        h.update((id.len() as u32).to_be_bytes());
        h.update(id.as_bytes());
    }
    assert_eq!(hex(&h.finalize()[..16]), v["salt"]);
    let version: u32 = v["version"].parse().unwrap();
    for spelling in [typed, nfc] {
        let got = passphrase::derive_verifier(
            &SecretString::from(spelling),
            &v["app_id"],
            &v["user_id"],
            version,
        )
        .unwrap();
        assert_eq!(got.expose_secret(), &v["verifier"]);
    }
}
