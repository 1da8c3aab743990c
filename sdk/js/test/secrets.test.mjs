// Secret-holding objects: never printed, given out only on an explicit export, unusable
// once freed; key storage; init() idempotent.

import assert from "node:assert/strict";
import util from "node:util";
import { test } from "node:test";
import { b64, sdk } from "./support.mjs";

const gk = await sdk();

const shows = (x) => [String(x), `${x}`, JSON.stringify(x), JSON.stringify({ x }), util.inspect(x, { showHidden: true, depth: 9 })];

test("init() is idempotent", async () => {
  const first = gk.init();
  assert.equal(gk.init(), first);
  await first;
});

test("secrets and private keys never print; their public halves may", () => {
  const secret = gk.UserSecret.generate();
  const device = gk.DeviceKeys.generate();
  const vd = gk.VirtualDevice.generate("app_1", "u1");
  const prepared = gk.prepareEnrolment("app_1", "u1", "k1");
  const app = gk.AppKey.generate("k1");
  const passphrase = gk.Passphrase.from("correct horse battery staple");
  const verifier = passphrase.setup("app_1", "u1");
  const cases = [
    [passphrase, "correct horse battery staple"],
    [verifier, verifier.exportBase64()],
    [{ challenge_id: "ch_1", verifier }, verifier.exportBase64()],
    [secret, secret.exportBase64()],
    [device, b64(device.exportBytes())],
    [vd, b64(vd.keys().exportBytes())],
    [prepared.userKeys, b64(prepared.userKeys.exportBytes())],
    [app, app.exportPkcs8Pem().split("\n")[1]],
  ];
  for (const [holder, secretText] of cases) {
    for (const s of shows(holder)) {
      assert.ok(!s.includes(secretText), `${holder.constructor.name} printed its secret: ${s}`);
      // Nor any 16-character piece of it.
      for (let i = 0; i + 16 <= secretText.length; i += 8) assert.ok(!s.includes(secretText.slice(i, i + 16)));
    }
  }
  assert.equal(String(device), `DeviceKeys(${device.signingKey})`);
  assert.equal(util.inspect(vd), "VirtualDevice([redacted])");
  assert.match(String(app), /^AppKey\(k1, [A-Za-z0-9_-]{43}\)$/);
  assert.equal(String(passphrase), "Passphrase([redacted])");
  assert.equal(util.inspect(verifier), "PassphraseVerifier([redacted])");
  // The unsigned root holds only public keys and a sealed box.
  assert.ok(!Buffer.from(prepared.unsignedRoot).toString("base64url").includes(b64(prepared.userKeys.exportBytes())));
});

test("exports round-trip, and freed objects refuse to work", () => {
  const secret = gk.UserSecret.generate();
  const text = secret.exportBase64();
  assert.equal(text.length, 43);
  assert.equal(gk.UserSecret.fromBase64(text).exportBase64(), text);
  const device = gk.DeviceKeys.generate();
  const again = gk.DeviceKeys.fromBytes(device.exportBytes());
  assert.deepEqual(again.publicKeys, device.publicKeys);

  for (const o of [secret, device]) {
    o.free();
    o.free(); // idempotent
  }
  assert.throws(() => secret.exportBase64(), (e) => e instanceof gk.GhostkeyError && e.code === "freed");
  assert.throws(() => device.signingKey, (e) => e.code === "freed");
  assert.throws(() => gk.VirtualDevice.generate("a", "u").seal(secret), (e) => e.code === "freed");
  assert.equal(String(device), "DeviceKeys(freed)");
});

test("MemoryKeyStorage stores copies and wipes what it drops", async () => {
  const storage = new gk.MemoryKeyStorage();
  const device = gk.DeviceKeys.generate();
  const bytes = device.exportBytes();
  await storage.set("device", bytes);
  bytes.fill(0); // the caller wipes its copy; the stored one is separate
  const stored = await storage.get("device");
  assert.deepEqual(gk.DeviceKeys.fromBytes(stored).publicKeys, device.publicKeys);
  stored.fill(0);
  assert.deepEqual(gk.DeviceKeys.fromBytes(await storage.get("device")).publicKeys, device.publicKeys);
  await storage.delete("device");
  assert.equal(await storage.get("device"), undefined);
  await storage.delete("device");
  assert.equal(JSON.stringify(storage), '"MemoryKeyStorage"');
});

test("IndexedDbKeyStorage says what to use where there is no IndexedDB", async () => {
  const storage = new gk.IndexedDbKeyStorage("test");
  await assert.rejects(storage.get("x"), /IndexedDB is not available here; use MemoryKeyStorage/);
});

test("base64url helpers are strict", () => {
  assert.deepEqual(gk.fromBase64Url(gk.toBase64Url(new Uint8Array([251, 255, 0]))), new Uint8Array([251, 255, 0]));
  assert.equal(gk.toBase64Url(new Uint8Array([251, 255])), "-_8");
  for (const bad of ["a+b", "ab==", "a"]) assert.throws(() => gk.fromBase64Url(bad), (e) => e.code === "bad_format");
});
