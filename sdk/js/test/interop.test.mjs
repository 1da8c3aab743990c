// Interoperability with the native Rust client, both ways, through the interop example
// (crates/ghostkey-client/examples/interop.rs documents the fixture).

import assert from "node:assert/strict";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, test } from "node:test";
import { b64, interop, sdk, tempDir, unb64 } from "./support.mjs";

const gk = await sdk();
const tmp = tempDir("ghostkey-interop-");
after(tmp.remove);

/** A fixture made with this package, in the interop program's format. */
function makeFixture() {
  const appId = "app_interop_js";
  const userId = "u-js-1";
  const document = "Made in JavaScript: ordonnance n° 43, ¾ comprimé.";
  const app = gk.AppKey.generate("k1");
  const secret = gk.UserSecret.generate();
  const prepared = gk.prepareEnrolment(appId, userId, app.kid);
  const root = app.endorseRoot(prepared.unsignedRoot, appId, userId);
  const pinned = { [app.kid]: app.publicKey };
  const chain1 = gk.Chain.verify([root], pinned);
  const device = gk.DeviceKeys.generate();
  const vdKeys = prepared.virtualDevice.keys();
  const added = chain1.admitDevice(vdKeys, device, prepared.userKeys);
  const chain = chain1.apply(added);
  const envelope = gk.sealEnvelope({ userId, device }, [chain], new TextEncoder().encode(document));
  return {
    app_id: appId,
    user_id: userId,
    kid: app.kid,
    app_public_key: app.publicKey,
    user_secret: secret.exportBase64(),
    sealed_virtual_device: b64(prepared.virtualDevice.seal(secret)),
    virtual_device_signing_key: vdKeys.signingKey,
    chain: [b64(root), b64(added)],
    device: b64(device.exportBytes()),
    envelope: b64(envelope),
    user_keys: b64(prepared.userKeys.exportBytes()),
    document,
  };
}

function rustChecks(fixture, name) {
  const file = join(tmp.dir, name);
  writeFileSync(file, JSON.stringify(fixture));
  return interop("check", file);
}

test("Rust opens, verifies and reads what JavaScript made", () => {
  const r = rustChecks(makeFixture(), "js.json");
  assert.equal(r.status, 0, r.stderr);
  assert.equal(r.stdout.trim(), "ok");
});

test("Rust refuses a JavaScript fixture with any part altered (the check can fail)", () => {
  const fixture = makeFixture();
  const flip = (text, at) => {
    const bytes = unb64(text);
    bytes[at] ^= 1;
    return b64(bytes);
  };
  const cases = {
    sealed_virtual_device: { ...fixture, sealed_virtual_device: flip(fixture.sealed_virtual_device, 50) },
    chain: { ...fixture, chain: [fixture.chain[0], flip(fixture.chain[1], 30)] },
    envelope: { ...fixture, envelope: flip(fixture.envelope, 20) },
    document: { ...fixture, document: "another document" },
  };
  for (const [part, altered] of Object.entries(cases)) {
    const r = rustChecks(altered, `altered-${part}.json`);
    assert.equal(r.status, 1, `${part}: ${r.stdout}`);
    assert.match(r.stderr, new RegExp(`interop: ${part === "document" ? "envelope" : part}`));
  }
});

test("JavaScript opens, verifies and reads what Rust made", () => {
  const file = join(tmp.dir, "rust.json");
  const made = interop("make", file);
  assert.equal(made.status, 0, made.stderr);
  const f = JSON.parse(readFileSync(file, "utf8"));
  const binding = { appId: f.app_id, userId: f.user_id };

  const secret = gk.UserSecret.fromBase64(f.user_secret);
  const vd = gk.VirtualDevice.open(unb64(f.sealed_virtual_device), secret, binding);
  assert.equal(vd.publicKeys.signing_key, f.virtual_device_signing_key);
  assert.equal(vd.version, 1);

  const chain = gk.Chain.verify(f.chain.map(unb64), { [f.kid]: f.app_public_key }, binding);
  assert.equal(chain.length, 2);
  assert.equal(chain.devices[0].signing_key, f.virtual_device_signing_key);
  const device = gk.DeviceKeys.fromBytes(unb64(f.device));
  assert.ok(chain.isValidDevice(device.signingKey));
  const userKeys = chain.userKeys(device);
  assert.equal(b64(userKeys.exportBytes()), f.user_keys);
  // The virtual device unseals the same user key from the root.
  assert.equal(chain.userKeys(vd.keys()).publicKey, chain.userPublicKey);

  const envelope = unb64(f.envelope);
  assert.deepEqual(gk.envelopeAuthor(envelope), { userId: f.user_id, deviceKey: device.signingKey });
  const document = gk.openEnvelope(envelope, { userId: f.user_id, userKeys }, chain);
  assert.equal(new TextDecoder().decode(document), f.document);

  // The same fixture goes back through Rust unchanged.
  const back = rustChecks(f, "rust-again.json");
  assert.equal(back.status, 0, back.stderr);
});

test("envelopes: only recipients read, only a valid author is accepted, any change is refused", () => {
  const app = gk.AppKey.generate("k1");
  const pinned = { k1: app.publicKey };
  const user = (id) => {
    const p = gk.prepareEnrolment("app_1", id, "k1");
    const c0 = gk.Chain.verify([app.endorseRoot(p.unsignedRoot, "app_1", id)], pinned);
    const device = gk.DeviceKeys.generate();
    const chain = c0.apply(c0.admitDevice(p.virtualDevice.keys(), device, p.userKeys));
    return { id, device, chain, userKeys: p.userKeys };
  };
  const [patient, doctor, other] = [user("patient"), user("doctor"), user("other")];
  const env = gk.sealEnvelope({ userId: patient.id, device: patient.device }, [doctor.chain, patient.chain], new TextEncoder().encode("Rx"));
  for (const reader of [doctor, patient]) {
    const text = gk.openEnvelope(env, { userId: reader.id, userKeys: reader.userKeys }, patient.chain);
    assert.equal(new TextDecoder().decode(text), "Rx");
  }
  const refused = (envelope, reader, authorChain, code) =>
    assert.throws(() => gk.openEnvelope(envelope, { userId: reader.id, userKeys: reader.userKeys }, authorChain), (e) => e.code === code);
  refused(env, other, patient.chain, "not_a_recipient");
  refused(env, doctor, doctor.chain, "unknown_author");
  const altered = env.slice();
  altered[altered.length - 70] ^= 1;
  refused(altered, doctor, patient.chain, "bad_signature");
  // Revoked author device: refused.
  const revoked = patient.chain.apply(patient.chain.revokeDevice(patient.device, patient.device.signingKey));
  refused(env, doctor, revoked, "unknown_author");
  refused(env.subarray(0, 10), doctor, patient.chain, "bad_format");
});
