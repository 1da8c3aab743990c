// Every test vector of docs/PROTOCOL.md §11 that concerns a client, reproduced by this
// package, read from the document at run time: a change of format on either side fails.

import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { test } from "node:test";
import { b64, hex, protocolVectors, sdk, unb64, unhex } from "./support.mjs";

const gk = await sdk();
const vectors = protocolVectors();

test("the document's vectors are the ones this file knows", () => {
  // A new vector must be mirrored here (or listed as server-only) before this passes.
  assert.deepEqual(Object.keys(vectors).sort(), [
    "assertion-eddsa",
    "chain-v1",
    "constants",
    "passphrase-v1",
    "sealed-v1",
    // Server side only (how Ghostkey signs its SMS webhook calls): no client code.
    "webhook-signature",
    "webhook-signature-long-secret",
  ]);
});

test("sealed-v1: sealing with the vector's nonce gives the vector's blob, and opening checks the binding", () => {
  const v = vectors["sealed-v1"];
  const secret = gk.UserSecret.fromBase64(b64(unhex(v.user_secret)));
  const keys = gk.DeviceKeys.fromBytes(unhex(v.signing_seed + v.encryption_secret));
  const vd = gk.VirtualDevice.fromKeys(v.app_id, v.user_id, Number(v.version), keys);
  const sealed = vd.sealWithNonce(secret, unhex(v.nonce));
  assert.equal(hex(sealed), v.sealed);
  assert.equal(b64(sealed), v.sealed_b64);
  assert.deepEqual(vd.publicKeys, { signing_key: v.signing_key, encryption_key: v.encryption_key });

  // The plaintext is inside the ciphertext; its layout (§3.2) is what the inputs say, and
  // the blob is 41 bytes longer.
  const plain = unhex(v.plaintext);
  assert.equal(sealed.length, 41 + plain.length);
  const a = plain[13];
  const u = plain[14 + a];
  assert.equal(Buffer.from(plain.subarray(0, 5)).toString("latin1"), "GKVD\x01");
  assert.equal(Buffer.from(plain.subarray(5, 13)).readBigUInt64BE(), BigInt(v.version));
  assert.equal(Buffer.from(plain.subarray(14, 14 + a)).toString(), v.app_id);
  assert.equal(Buffer.from(plain.subarray(15 + a, 15 + a + u)).toString(), v.user_id);
  assert.equal(hex(plain.subarray(15 + a + u)), v.signing_seed + v.encryption_secret);

  // Opening the vector's blob gives back the same keys and version.
  const opened = gk.VirtualDevice.open(unhex(v.sealed), secret, { appId: v.app_id, userId: v.user_id, minVersion: 258 });
  assert.equal(opened.version, 258);
  assert.equal(hex(opened.keys().exportBytes()), v.signing_seed + v.encryption_secret);

  const refused = (binding, code) =>
    assert.throws(() => gk.VirtualDevice.open(unhex(v.sealed), secret, binding), (e) => e.code === code);
  refused({ appId: "app_other", userId: v.user_id }, "wrong_binding");
  refused({ appId: v.app_id, userId: "u-other" }, "wrong_binding");
  refused({ appId: v.app_id, userId: v.user_id, minVersion: 259 }, "rolled_back");
  const altered = unhex(v.sealed);
  altered[60] ^= 1;
  assert.throws(
    () => gk.VirtualDevice.open(altered, secret, { appId: v.app_id, userId: v.user_id }),
    (e) => e.code === "wrong_secret",
  );
  for (const o of [secret, keys, vd, opened]) o.free();
});

test("assertion-eddsa: the app key and the minted token are the vector's, byte for byte", () => {
  const v = vectors["assertion-eddsa"];
  const app = gk.AppKey.fromSeed(v.kid, unhex(v.app_key_seed));
  assert.equal(app.publicKey, v.app_public_key);
  const token = app.mintAssertion({
    iss: v.iss,
    sub: v.sub,
    aud: v.aud,
    iat: Number(v.iat),
    exp: Number(v.exp),
    jti: v.jti,
    purpose: v.purpose,
  });
  assert.equal(token, v.token);
  const [header, payload, signature] = token.split(".");
  assert.equal(Buffer.from(header, "base64url").toString(), v.header_json);
  assert.equal(Buffer.from(payload, "base64url").toString(), v.payload_json);
  assert.equal(signature, v.signature);
  // The PEM round trip keeps the key.
  assert.equal(gk.AppKey.fromPkcs8Pem(v.kid, app.exportPkcs8Pem()).publicKey, v.app_public_key);
  app.free();
});

test("chain-v1: the root endorsed and the revocation signed here are the vector's blocks; the chain verifies to its hashes", () => {
  const v = vectors["chain-v1"];
  const app = gk.AppKey.fromSeed(v.kid, unhex(v.app_key_seed));
  const pinned = { [v.kid]: app.publicKey };
  const root = unhex(v.root_block);
  const added = unhex(v.device_added_block);
  const revoked = unhex(v.device_revoked_block);

  // Ed25519 is deterministic: endorsing the unsigned root gives the vector's signature.
  assert.equal(hex(app.endorseRoot(root.subarray(0, root.length - 64), v.app_id, v.user_id)), v.root_block);
  assert.throws(
    () => app.endorseRoot(root.subarray(0, root.length - 64), v.app_id, "u-someone-else"),
    (e) => e.code === "endorse_refused",
  );

  const c1 = gk.Chain.verify([root], pinned, { appId: v.app_id, userId: v.user_id });
  assert.equal(hex(unb64(c1.head)), v.root_hash);
  assert.equal(hex(unb64(c1.userPublicKey)), v.user_public);
  const vd = gk.DeviceKeys.fromBytes(unhex(v.vd_signing_seed + v.vd_encryption_secret));
  assert.equal(hex(c1.userKeys(vd).exportBytes()), v.user_secret_key);

  const c2 = c1.apply(added);
  assert.equal(hex(unb64(c2.head)), v.device_added_hash);
  const device = gk.DeviceKeys.fromBytes(unhex(v.device_signing_seed + v.device_encryption_secret));
  assert.ok(c2.isValidDevice(device.signingKey));
  assert.equal(hex(c2.userKeys(device).exportBytes()), v.user_secret_key);
  assert.equal(hex(unb64(c2.devices[1].encryption_key)), hex(unb64(device.encryptionKey)));

  // The device revoking itself, signed here, is the vector's third block.
  assert.equal(hex(c2.revokeDevice(device, device.signingKey)), v.device_revoked_block);
  const c3 = gk.Chain.verify([root, added, revoked], pinned);
  assert.equal(hex(unb64(c3.head)), v.device_revoked_hash);
  assert.equal(c3.length, 3);
  assert.equal(c3.devices[1].revoked_at, 2);
  assert.ok(!c3.isValidDevice(device.signingKey));
  assert.throws(() => c3.userKeys(device), (e) => e.code === "not_a_device");

  // Any flipped bit, a missing link or another app key: refused with the fault's index.
  for (const i of [0, 10, 100, added.length - 1]) {
    const bad = added.slice();
    bad[i] ^= 1;
    assert.throws(() => gk.Chain.verify([root, bad], pinned), (e) => e.code === "chain_invalid" && /^block 1: /.test(e.message));
  }
  assert.throws(() => gk.Chain.verify([root, revoked], pinned), (e) => e.code === "chain_invalid");
  const other = gk.AppKey.generate(v.kid);
  assert.throws(
    () => gk.Chain.verify([root], { [v.kid]: other.publicKey }),
    (e) => e.code === "chain_invalid" && /root_not_signed_by_app/.test(e.message),
  );
  assert.throws(() => gk.Chain.verify([root], pinned, { userId: "u-other" }), (e) => e.code === "chain_mismatch");
});

test("constants: the formats' versions and bounds a client enforces", () => {
  const c = vectors.constants;
  const v = vectors["sealed-v1"];
  const secret = gk.UserSecret.fromBase64(b64(unhex(v.user_secret)));
  const binding = { appId: v.app_id, userId: v.user_id };
  const sealed = unhex(v.sealed);
  assert.equal(sealed[0], Number(c.sealed_format_version));
  const refusedAsFormat = (blob) =>
    assert.throws(() => gk.VirtualDevice.open(blob, secret, binding), (e) => e.code === "bad_format");
  refusedAsFormat(sealed.subarray(0, Number(c.min_sealed_len) - 1));
  refusedAsFormat(new Uint8Array(Number(c.max_sealed_len) + 1).fill(Number(c.sealed_format_version)));
  const otherVersion = sealed.slice();
  otherVersion[0] = Number(c.sealed_format_version) + 1;
  refusedAsFormat(otherVersion);

  const chain = vectors["chain-v1"];
  const root = unhex(chain.root_block);
  assert.equal(root[0], Number(c.chain_format_version));
  const pinned = { [chain.kid]: gk.AppKey.fromSeed(chain.kid, unhex(chain.app_key_seed)).publicKey };
  const tooLong = new Uint8Array(Number(c.max_block_len) + 1);
  tooLong.set(root);
  assert.throws(() => gk.Chain.verify([tooLong], pinned), (e) => e.code === "chain_invalid" && /malformed/.test(e.message));
  const blocks = Array.from({ length: Number(c.max_chain_blocks) + 1 }, () => root);
  assert.throws(() => gk.Chain.verify(blocks, pinned), (e) => e.code === "chain_invalid" && /too_long/.test(e.message));
  secret.free();
});

test("passphrase-v1: the NFD passphrase and its NFC spelling derive the vector's verifier", () => {
  const v = vectors["passphrase-v1"];
  const typed = new TextDecoder().decode(unhex(v.passphrase_utf8));
  const nfc = new TextDecoder().decode(unhex(v.nfc_utf8));
  assert.notEqual(typed, nfc, "the vector's input is the decomposed spelling");
  assert.equal(typed.normalize("NFC"), nfc);
  // The salt of §5.6, recomputed from its definition: what the Rust core salts with.
  const len = (s) => {
    const b = Buffer.alloc(4);
    b.writeUInt32BE(Buffer.byteLength(s));
    return b;
  };
  const salt = createHash("sha256")
    .update("ghostkey passphrase v1")
    .update(len(v.app_id))
    .update(v.app_id)
    .update(len(v.user_id))
    .update(v.user_id)
    .digest()
    .subarray(0, 16);
  assert.equal(hex(salt), v.salt);

  for (const text of [typed, nfc]) {
    const passphrase = gk.Passphrase.from(text);
    const verifier = passphrase.deriveVerifier(v.app_id, v.user_id, Number(v.version));
    assert.equal(verifier.version, Number(v.version));
    assert.equal(verifier.exportBase64(), v.verifier);
    // The answer to a challenge that shows version 1's parameters is the same verifier.
    const challenge = {
      id: "ch_1",
      purpose: "recover",
      method_id: "m_1",
      kind: "passphrase",
      expires_at: 0,
      max_attempts: 3,
      passphrase: { version: 1, memory_kib: 19456, iterations: 2, parallelism: 1 },
    };
    assert.equal(passphrase.answer(challenge, v.app_id, v.user_id).exportBase64(), v.verifier);
    // Another user (or app) gets another verifier: the ids salt it.
    assert.notEqual(passphrase.deriveVerifier(v.app_id, "u-other", 1).exportBase64(), v.verifier);
    passphrase.free();
  }
  const unknown = gk.Passphrase.from(typed);
  assert.throws(() => unknown.deriveVerifier(v.app_id, v.user_id, 2), (e) => e.code === "passphrase_unknown_version");
});
