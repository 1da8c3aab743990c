// Passphrase methods (docs/PROTOCOL.md §5.6) and the Node side of passkey methods, against
// a real `ghostkey serve`: a user enrols with a passphrase (the strength check, the
// verifier derived in WebAssembly, the confirmation with the passphrase typed again),
// recovers with it on a new device, and proves with it to add a second method. A weak
// passphrase is refused before anything is sent. Passkeys need a browser's WebAuthn: here
// only what Node can do (the options Ghostkey sends, decoded; the refusal of a response
// that does not verify); the ceremonies themselves run in Chromium (browser.test.mjs and
// examples/web/e2e/passkey.test.mjs).

import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import util from "node:util";
import { after, before, test } from "node:test";
import { b64, sdk, startServer } from "./support.mjs";

const gk = await sdk();
const SERVICE_ID = "ghostkey-dev";
const PASSPHRASE = "Ceci n'est pas une pipe, 1929!";

let server;
before(async () => {
  server = await startServer();
});
after(async () => {
  await server?.stop();
});

/** An app that allows every kind of method, with its key and assertions. */
function platform() {
  const key = gk.AppKey.generate("k1");
  const appId = server.addApp("Passphrases", "k1", key.publicKey);
  server.cli(["app", "policy", "set", appId, "--allowed-methods", "totp,sms,email,passphrase,passkey"]);
  const assertions = (userId) => async (purpose) => {
    const now = Math.floor(Date.now() / 1000);
    return key.mintAssertion({ iss: appId, sub: userId, aud: SERVICE_ID, iat: now, exp: now + 60, jti: b64(randomBytes(16)), purpose });
  };
  return { key, appId, pinned: { k1: key.publicKey }, assertions };
}

async function enrolled(p, client, userId) {
  const assertions = p.assertions(userId);
  const secret = gk.UserSecret.generate();
  const e = await client.enrol({
    appId: p.appId,
    userId,
    kid: "k1",
    secret,
    pinned: p.pinned,
    assertions,
    endorse: async (root) => p.key.endorseRoot(root, p.appId, userId),
  });
  return { ...e, secret, assertions, userId };
}

/** Counts the requests the package sends through the host's fetch while `f` runs. */
async function requestsDuring(f) {
  const original = globalThis.fetch;
  let count = 0;
  globalThis.fetch = (...args) => {
    count++;
    return original(...args);
  };
  try {
    return { result: await f().then((v) => ({ value: v }), (e) => ({ error: e })), count };
  } finally {
    globalThis.fetch = original;
  }
}

function printed(x) {
  return [String(x), JSON.stringify(x) ?? "", util.inspect(x, { depth: 5, showHidden: true }), `${x?.message ?? ""}`].join("\n");
}

test("a weak passphrase is refused with a clear error, before anything is derived or sent", async () => {
  const p = platform();
  const client = new gk.GhostkeyClient(server.url);
  const user = await enrolled(p, client, "weak-1");
  const cases = [
    ["Tr0ub4dor&3", "passphrase_too_short", /too short: 11 characters, at least 12/],
    ["aaaaaaaaaaaaaaaa", "passphrase_too_weak", /too weak: about \d+ bits, at least 50/],
    ["abcabcabcabcabc", "passphrase_too_weak", /too weak/],
  ];
  for (const [text, code, message] of cases) {
    const passphrase = gk.Passphrase.from(text);
    assert.throws(() => passphrase.checkStrength(), (e) => e instanceof gk.GhostkeyError && e.code === code);
    const strength = passphrase.strength();
    assert.equal(strength.ok, false);
    assert.equal(strength.code, code);
    assert.deepEqual([strength.minBits, strength.minChars], [50, 12]);
    // The whole enrolment step as an app writes it: setup, then add. Nothing reaches fetch.
    const { result, count } = await requestsDuring(async () =>
      client.addPassphrase(await user.assertions("enroll"), passphrase.setup(p.appId, user.userId)),
    );
    assert.equal(count, 0, "a request was sent for a weak passphrase");
    assert.ok(result.error instanceof gk.GhostkeyError, String(result.error));
    assert.equal(result.error.code, code);
    assert.match(result.error.message, message);
    assert.equal(result.error.status, undefined);
    assert.ok(!printed(result.error).includes(text), "the error shows the passphrase");
    passphrase.free();
  }
  // Ghostkey holds no method for the user; and the count above does see requests.
  const listed = await requestsDuring(async () => client.listMethods(await user.assertions("manage")));
  assert.equal(listed.count, 1);
  assert.deepEqual(listed.result.value.methods, []);
  const good = gk.Passphrase.from("correct horse battery staple");
  assert.equal(good.strength().ok, true);
  assert.ok(good.strength().bits >= 50);
  good.checkStrength();
  good.free();
});

test("enrol with a passphrase, recover with it on a new device, prove with it to add a method", async () => {
  const p = platform();
  const client = new gk.GhostkeyClient(server.url);
  const user = await enrolled(p, client, "alice-passphrase");

  // Enrolment: the passphrase once, checked and derived; Ghostkey gets the verifier.
  const typed = gk.Passphrase.from(PASSPHRASE);
  const verifier = typed.setup(p.appId, user.userId);
  assert.equal(verifier.version, 1);
  const added = await client.addPassphrase(await user.assertions("enroll"), verifier);
  assert.equal(added.method.kind, "passphrase");
  assert.equal(added.method.state, "pending");
  assert.equal(added.method.masked, undefined);
  assert.equal(added.challenge.kind, "passphrase");
  assert.deepEqual(added.challenge.passphrase, { version: 1, memory_kib: 19456, iterations: 2, parallelism: 1 });

  // Confirmation with the passphrase typed a second time: a typing mistake is a wrong code.
  const mistyped = gk.Passphrase.from(`${PASSPHRASE}.`);
  const wrong = await client.answer(added.challenge.id, mistyped.answer(added.challenge, p.appId, user.userId)).catch((e) => e);
  assert.ok(wrong instanceof gk.GhostkeyError, String(wrong));
  assert.deepEqual([wrong.code, wrong.status], ["invalid_code", 403]);
  await new Promise((r) => setTimeout(r, 2_200)); // the user's back-off after a failure
  const again = gk.Passphrase.from(PASSPHRASE.normalize("NFD")); // another keyboard, same passphrase
  const confirmed = await client.answer(added.challenge.id, again.answer(added.challenge, p.appId, user.userId));
  assert.equal(confirmed.enrollment_state, "active");
  assert.equal(confirmed.method.state, "confirmed");

  // Every device lost. The new device: the app hands over the secret; the user types the
  // passphrase; the recovery's challenge shows the parameters, checked against the table.
  const secretText = user.secret.exportBase64();
  for (const o of [user.device, user.userKeys, user.chain, user.secret]) o.free();
  const { methods } = await client.listMethods(await user.assertions("recover"));
  assert.deepEqual(methods.map((m) => [m.kind, m.state]), [["passphrase", "confirmed"]]);
  const started = await client.startRecovery(await user.assertions("recover"), methods[0].id);
  assert.equal(started.purpose, "recover");
  assert.deepEqual(started.passphrase, added.challenge.passphrase);
  // A server that shows cheaper parameters (or an unknown version) gets nothing derived.
  const cheap = { ...started, passphrase: { ...started.passphrase, memory_kib: 64, iterations: 1 } };
  assert.throws(() => typed.answer(cheap, p.appId, user.userId), (e) => e.code === "passphrase_params_refused");
  const future = { ...started, passphrase: { ...started.passphrase, version: 2 } };
  assert.throws(() => typed.answer(future, p.appId, user.userId), (e) => e.code === "passphrase_unknown_version");
  assert.throws(() => typed.answer({ ...started, kind: "sms", passphrase: undefined }, p.appId, user.userId), (e) => e.code === "wrong_method_kind");

  const secret = gk.UserSecret.fromBase64(secretText);
  const recoveryVerifier = typed.answer(started, p.appId, user.userId);
  const admitted = await client.recover({
    recoveryId: started.id,
    code: recoveryVerifier,
    secret,
    appId: p.appId,
    userId: user.userId,
    pinned: p.pinned,
    assertions: user.assertions,
  });
  assert.equal(admitted.chain.length, 3);
  assert.ok(admitted.chain.isValidDevice(admitted.device.signingKey));

  // A proof through the passphrase method authorises a change: adding an e-mail method.
  const proof = await client.proofWithPassphrase(await user.assertions("manage"), methods[0].id, typed, p.appId, user.userId);
  assert.match(JSON.stringify(proof), /"verifier":"PassphraseVerifier\(\[redacted\]\)"/);
  const email = await client.addMethod(await user.assertions("manage"), "email", "alice@example.org", proof);
  assert.equal(email.method.kind, "email");
  // The proof is spent: the same one again is refused by Ghostkey.
  const spent = await client.addMethod(await user.assertions("manage"), "sms", "+33612345678", proof).catch((e) => e);
  assert.equal(spent.code, "code_already_used");
  proof.verifier.free();

  // The passphrase and its verifiers never print.
  const verifierText = verifier.exportBase64();
  assert.equal(verifierText.length, 43);
  for (const o of [typed, verifier, recoveryVerifier, again, wrong, spent]) {
    const shown = printed(o);
    assert.ok(!shown.includes(PASSPHRASE) && !shown.includes(verifierText), shown);
  }
  assert.equal(String(typed), "Passphrase([redacted])");
  assert.equal(JSON.stringify({ verifier }), '{"verifier":"PassphraseVerifier([redacted])"}');
  assert.equal(util.inspect(verifier), "PassphraseVerifier([redacted])");
  for (const o of [typed, verifier, recoveryVerifier, again, mistyped, secret]) o.free();
  assert.throws(() => typed.checkStrength(), (e) => e.code === "freed");
  assert.throws(() => verifier.exportBase64(), (e) => e.code === "freed");
  client.free();
});

test("passkeys from Node: the options Ghostkey sends decode, the ceremony needs a browser, a bad response is passkey_rejected", async () => {
  const p = platform();
  // The relying party: localhost, with the page origin under it.
  server.cli(["app", "origins", "add", p.appId, "http://localhost:5173"]);
  server.cli(["app", "passkey", "set", p.appId, "--rp-id", "localhost"]);
  const client = new gk.GhostkeyClient(server.url);
  const user = await enrolled(p, client, "bob-passkey");
  const added = await client.addPasskey(await user.assertions("enroll"), "Bob's laptop");
  assert.deepEqual([added.method.kind, added.method.state], ["passkey", "pending"]);
  assert.equal(added.challenge.kind, "passkey");
  const pk = added.challenge.webauthn.publicKey;
  assert.equal(pk.rp.id, "localhost");
  assert.equal(pk.authenticatorSelection.userVerification, "required");

  // Decoded for navigator.credentials.create(): the binary members are ArrayBuffers.
  const options = gk.passkeyCreationOptions(added.challenge);
  assert.ok(options.publicKey.challenge instanceof ArrayBuffer);
  assert.equal(b64(new Uint8Array(options.publicKey.challenge)), pk.challenge);
  assert.ok(options.publicKey.user.id instanceof ArrayBuffer);
  assert.equal(b64(new Uint8Array(options.publicKey.user.id)), pk.user.id);
  assert.deepEqual(options.publicKey.pubKeyCredParams, pk.pubKeyCredParams);
  assert.throws(() => gk.passkeyRequestOptions(added.challenge), (e) => e.code === "bad_format");
  assert.throws(() => gk.passkeyCreationOptions({ ...added.challenge, kind: "totp", webauthn: undefined }), (e) => e.code === "wrong_method_kind");

  // Node has no WebAuthn.
  await assert.rejects(client.confirmPasskey(added.challenge), (e) => e instanceof gk.GhostkeyError && e.code === "webauthn_unavailable");

  // A response that is not the authenticator's: Ghostkey refuses it, counted like a wrong code.
  const forged = {
    id: "AAAA",
    rawId: "AAAA",
    type: "public-key",
    response: { clientDataJSON: b64(Buffer.from("{}")), attestationObject: "oA" },
    clientExtensionResults: {},
  };
  const refused = await client.answerWebAuthn(added.challenge.id, forged).catch((e) => e);
  assert.ok(refused instanceof gk.GhostkeyError, String(refused));
  assert.deepEqual([refused.code, refused.status, refused.problem.code], ["passkey_rejected", 403, "passkey_rejected"]);
  const { methods } = await client.listMethods(await user.assertions("manage"));
  assert.deepEqual(methods.map((m) => [m.kind, m.state, m.masked]), [["passkey", "pending", "passkey “Bob's laptop”"]]);
  client.free();
});
