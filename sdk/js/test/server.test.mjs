// The API client in Node against a real `ghostkey serve` (development mode, started here):
// the story of src/demo.rs. A doctor and a patient enrol, each confirming a phone number
// with the code the development SMS sink keeps (GET /dev/messages); the patient seals a
// prescription for the doctor; the doctor loses their device, recovers with the user
// secret and a new code, admits a new device and reads the prescription. Along the way: a
// wrong code, a back-off with Retry-After, and no secret in any printed form.

import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import util from "node:util";
import { after, before, test } from "node:test";
import { b64, sdk, startServer } from "./support.mjs";

const gk = await sdk();
const SERVICE_ID = "ghostkey-dev"; // the development server's service id (its `aud`)
const PRESCRIPTION = "Rx: amoxicillin 500 mg, 3 times a day for 7 days. Dr. Martin.";

let server;
before(async () => {
  server = await startServer();
});
after(async () => {
  await server?.stop();
});

/** The app provider's backend: its key, its app id, assertions for its users. */
function platform() {
  const key = gk.AppKey.generate("k1");
  const appId = server.addApp("MedConnect", "k1", key.publicKey);
  const assertions = (userId) => async (purpose) => {
    const now = Math.floor(Date.now() / 1000);
    return key.mintAssertion({
      iss: appId,
      sub: userId,
      aud: SERVICE_ID,
      iat: now,
      exp: now + 60,
      jti: b64(randomBytes(16)),
      purpose,
    });
  };
  return { key, appId, pinned: { k1: key.publicKey }, assertions };
}

/** The newest code sent to `to` after `seen` messages, from the development sink. */
async function codeFor(to, seen) {
  const deadline = Date.now() + 10_000;
  for (;;) {
    const res = await fetch(`${server.url}/dev/messages?to=${encodeURIComponent(to)}`);
    if (res.status === 404) {
      throw new Error(`${server.url} has no GET /dev/messages: rebuild the binary (cargo build --release)`);
    }
    const { messages } = await res.json();
    const fresh = messages.slice(seen).map((m) => /\b(\d{8})\b/.exec(m.body)?.[1]).filter(Boolean);
    if (fresh.length > 0) return { code: fresh.at(-1), seen: messages.length };
    if (Date.now() > deadline) throw new Error(`no code sent to ${to}:\n${server.log()}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

async function messageCount(to) {
  const res = await fetch(`${server.url}/dev/messages?to=${encodeURIComponent(to)}`);
  return (await res.json()).messages.length;
}

/** Everything an object shows of itself when printed or serialised. */
function printed(x) {
  return [String(x), JSON.stringify(x) ?? "", util.inspect(x, { depth: 5, showHidden: true }), `${x?.message ?? ""}`].join("\n");
}

test("enrol, confirm by SMS, seal for a doctor, lose the device, recover, admit a new device, read", async () => {
  const p = platform();
  const client = new gk.GhostkeyClient(server.url);
  assert.deepEqual(await client.health(), { status: "ok" });
  const errors = [];

  async function enrol(userId, phone) {
    const secret = gk.UserSecret.generate(); // kept by the app provider
    const assertions = p.assertions(userId);
    const enrolled = await client.enrol({
      appId: p.appId,
      userId,
      kid: "k1",
      secret,
      pinned: p.pinned,
      assertions,
      endorse: async (unsignedRoot) => p.key.endorseRoot(unsignedRoot, p.appId, userId),
    });
    assert.equal(enrolled.answer.state, "pending");
    assert.equal(enrolled.chain.length, 2);
    assert.ok(enrolled.chain.isValidDevice(enrolled.device.signingKey));
    const seen = await messageCount(phone);
    const added = await client.addMethod(await assertions("enroll"), "sms", phone);
    assert.equal(added.method.state, "pending");
    const { code } = await codeFor(phone, seen);
    return { userId, phone, secret, assertions, challenge: added.challenge.id, code, ...enrolled };
  }

  const doctor = await enrol("doctor-0917", "+33698765432");
  // A wrong code: invalid_code (403), with the problem document.
  const wrong = doctor.code === "00000000" ? "11111111" : "00000000";
  const refusal = await client.answer(doctor.challenge, wrong).then(
    () => assert.fail("a wrong code was accepted"),
    (e) => e,
  );
  errors.push(refusal);
  assert.ok(refusal instanceof gk.GhostkeyError);
  assert.equal(refusal.code, "invalid_code");
  assert.equal(refusal.status, 403);
  assert.equal(refusal.problem.code, "invalid_code");
  // Straight after a failure the user is backed off: 429 with Retry-After.
  const backoff = await client.answer(doctor.challenge, wrong).then(
    () => assert.fail("a second wrong code was checked during the back-off"),
    (e) => e,
  );
  errors.push(backoff);
  assert.equal(backoff.code, "user_backoff");
  assert.equal(backoff.status, 429);
  assert.ok(backoff.retryAfter >= 1, `retryAfter ${backoff.retryAfter}`);
  assert.equal(backoff.retryAfter, backoff.problem.retry_after);
  await new Promise((r) => setTimeout(r, backoff.retryAfter * 1000 + 200));
  assert.equal((await client.answer(doctor.challenge, doctor.code)).enrollment_state, "active");

  const patient = await enrol("patient-4821", "+33612345678");
  assert.equal((await client.answer(patient.challenge, patient.code)).enrollment_state, "active");

  // The patient seals a prescription for the doctor (and themself), from verified chains.
  const doctorChain = await client.verifiedChain(await patient.assertions("manage"), doctor.userId, p.pinned, p.appId);
  const envelope = gk.sealEnvelope(
    { userId: patient.userId, device: patient.device },
    [doctorChain, patient.chain],
    new TextEncoder().encode(PRESCRIPTION),
  );

  // The doctor loses their only device.
  const secretText = doctor.secret.exportBase64(); // what the app provider keeps
  const lostDevice = doctor.device.signingKey;
  for (const o of [doctor.device, doctor.userKeys, doctor.chain, doctor.secret]) o.free();

  // New device: the doctor logs in; the platform hands over the secret and assertions.
  const secret = gk.UserSecret.fromBase64(secretText);
  const methods = await client.listMethods(await doctor.assertions("recover"));
  assert.equal(methods.methods.length, 1);
  assert.equal(methods.methods[0].state, "confirmed");
  const seen = await messageCount(doctor.phone);
  const started = await client.startRecovery(await doctor.assertions("recover"), methods.methods[0].id);
  const { code } = await codeFor(doctor.phone, seen);
  const admitted = await client.recover({
    recoveryId: started.id,
    code,
    secret,
    appId: p.appId,
    userId: doctor.userId,
    pinned: p.pinned,
    assertions: doctor.assertions,
  });
  assert.equal(admitted.chain.length, 3);
  assert.ok(admitted.chain.isValidDevice(admitted.device.signingKey));
  assert.ok(admitted.chain.isValidDevice(lostDevice), "nothing revoked the lost device yet");

  // The new device reads the prescription, checking the patient's chain.
  const patientChain = await client.verifiedChain(await doctor.assertions("manage"), patient.userId, p.pinned, p.appId);
  const text = gk.openEnvelope(envelope, { userId: doctor.userId, userKeys: admitted.userKeys }, patientChain);
  assert.equal(new TextDecoder().decode(text), PRESCRIPTION);

  // The new device revokes the lost one.
  await client.appendBlock(await doctor.assertions("manage"), admitted.chain.revokeDevice(admitted.device, lostDevice));
  const after = await client.verifiedChain(await doctor.assertions("manage"), doctor.userId, p.pinned, p.appId);
  assert.equal(after.length, 4);
  assert.ok(!after.isValidDevice(lostDevice));

  // The recovery's code is spent: a second verify is refused with Ghostkey's code.
  const again = await client.verifyRecovery(started.id, code).catch((e) => e);
  errors.push(again);
  assert.ok(again instanceof gk.GhostkeyError, String(again));
  assert.equal(again.code, "code_already_used");
  assert.equal(again.status, 409);

  // No secret in any printed form of the objects that hold one, or of any error.
  const secrets = [
    secretText,
    b64(admitted.device.exportBytes()),
    b64(admitted.userKeys.exportBytes()),
    b64(patient.device.exportBytes()),
    p.key.exportPkcs8Pem().split("\n")[1],
  ];
  const holders = [secret, admitted.device, admitted.userKeys, patient.device, patient.userKeys, p.key, admitted.chain];
  for (const shown of [...holders, ...errors].map(printed)) {
    for (const s of secrets) assert.ok(!shown.includes(s), `a secret is printed in: ${shown.slice(0, 200)}`);
  }
  assert.equal(String(secret), "UserSecret([redacted])");
  assert.equal(JSON.stringify({ secret }), '{"secret":"UserSecret([redacted])"}');
  assert.equal(util.inspect(secret), "UserSecret([redacted])");

  // Freed objects refuse to work (their keys are wiped).
  secret.free();
  assert.throws(() => secret.exportBase64(), (e) => e.code === "freed");
  client.free();
});

test("transport failures and bad input have their own codes", async () => {
  // A port nothing listens on: the request fails before any answer.
  const closed = new gk.GhostkeyClient("http://127.0.0.1:9");
  await assert.rejects(closed.health(), (e) => e instanceof gk.GhostkeyError && e.code === "transport" && e.status === undefined);
  assert.throws(() => new gk.GhostkeyClient("ftp://example.org"), (e) => e.code === "bad_url");
  const client = new gk.GhostkeyClient(server.url);
  await assert.rejects(client.answer("../../etc", "12345678"), (e) => e.code === "bad_url");
  assert.throws(() => gk.UserSecret.fromBase64("not a secret"), (e) => e.code === "bad_format" && !e.message.includes("not a secret"));
  assert.throws(() => gk.DeviceKeys.fromBytes(new Uint8Array(63)), (e) => e.code === "bad_format");
  // Ghostkey's own refusals keep their code: an assertion for an unknown app.
  const stranger = gk.AppKey.generate("k1");
  const now = Math.floor(Date.now() / 1000);
  const assertion = stranger.mintAssertion({
    iss: "app_unknown",
    sub: "u1",
    aud: SERVICE_ID,
    iat: now,
    exp: now + 60,
    jti: b64(randomBytes(16)),
    purpose: "manage",
  });
  await assert.rejects(client.listMethods(assertion), (e) => e.code === "assertion_unknown_issuer" && e.status === 401);
});

test("retryAfter comes from the Retry-After header, even when the problem document has none", async () => {
  // A stand-in for a proxy or an older Ghostkey: the header only.
  const { createServer } = await import("node:http");
  const stub = createServer((req, res) => {
    res.writeHead(429, { "content-type": "application/problem+json", "retry-after": "7" });
    res.end(JSON.stringify({ type: "urn:ghostkey:error:address_rate_limited", title: "Too many requests from this address", status: 429, code: "address_rate_limited" }));
  });
  await new Promise((r) => stub.listen(0, "127.0.0.1", r));
  try {
    const client = new gk.GhostkeyClient(`http://127.0.0.1:${stub.address().port}`);
    await assert.rejects(client.answer("ch_1", "12345678"), (e) => {
      assert.equal(e.code, "address_rate_limited");
      assert.equal(e.status, 429);
      assert.equal(e.retryAfter, 7);
      assert.equal(e.problem.retry_after, undefined);
      return true;
    });
  } finally {
    stub.close();
  }
});
