// The package in headless Chromium (npm run test:browser): init() fetching the .wasm next
// to the module through import.meta.url, IndexedDbKeyStorage keeping device keys across a
// reload, sealing and chains as in Node, passphrases derived in the browser, and passkeys
// through the browser's WebAuthn with a virtual authenticator (DevTools protocol) against a
// real `ghostkey serve`. Chromium: $CHROMIUM, default /usr/bin/chromium. The page is served
// on http://localhost:PORT: a passkey's relying party is a domain name.

import assert from "node:assert/strict";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { createServer } from "node:http";
import { tmpdir } from "node:os";
import { extname, join, normalize } from "node:path";
import { after, before, test } from "node:test";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";
import { randomBytes } from "node:crypto";
import { sdk, startServer } from "./support.mjs";

const dist = fileURLToPath(new URL("../dist/", import.meta.url));
const executablePath = process.env.CHROMIUM ?? "/usr/bin/chromium";
const types = { ".js": "text/javascript", ".wasm": "application/wasm" };

let server;
let context;
let profile;
let origin;
let ghostkey;

before(async () => {
  if (!existsSync(join(dist, "index.js"))) throw new Error("sdk/js/dist is missing: run `npm run build` first");
  if (!existsSync(executablePath)) {
    throw new Error(`no Chromium at ${executablePath}: install it (apt-get install chromium) or set CHROMIUM`);
  }
  // The page and the package from one origin, as a web app would serve them.
  server = createServer((req, res) => {
    const path = new URL(req.url, "http://x").pathname;
    if (path === "/") return res.writeHead(200, { "content-type": "text/html" }).end("<!doctype html><title>sdk</title>");
    const file = normalize(join(dist, path.replace(/^\/dist\//, "")));
    if (!path.startsWith("/dist/") || !file.startsWith(dist) || !existsSync(file)) return res.writeHead(404).end();
    res.writeHead(200, { "content-type": types[extname(file)] ?? "application/octet-stream" }).end(readFileSync(file));
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  origin = `http://localhost:${server.address().port}`;
  ghostkey = await startServer();
  profile = mkdtempSync(join(tmpdir(), "ghostkey-sdk-chromium-"));
  context = await chromium.launchPersistentContext(profile, {
    executablePath,
    headless: true,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
});

after(async () => {
  await context?.close();
  server?.close();
  await ghostkey?.stop();
  if (profile) rmSync(profile, { recursive: true, force: true });
});

/** Runs `body` (source of an async function of the package module and `args`) in a
 *  fresh page; `prepare(page)` runs first (a virtual authenticator). */
async function inPage(body, args = {}, prepare = async () => {}) {
  const page = await context.newPage();
  try {
    await page.goto(`${origin}/`);
    await prepare(page);
    return await page.evaluate(
      async ([src, a]) => {
        const gk = await import("/dist/index.js");
        await gk.init();
        return await new Function("gk", "args", `return (async () => { ${src} })()`)(gk, a);
      },
      [body, args],
    );
  } finally {
    await page.close();
  }
}

/** A virtual platform authenticator (resident keys, user verification) in the page's tab. */
async function virtualAuthenticator(page) {
  const cdp = await page.context().newCDPSession(page);
  await cdp.send("WebAuthn.enable", { enableUI: false });
  await cdp.send("WebAuthn.addVirtualAuthenticator", {
    options: {
      protocol: "ctap2",
      transport: "internal",
      hasResidentKey: true,
      hasUserVerification: true,
      isUserVerified: true,
      automaticPresenceSimulation: true,
    },
  });
}

/** An app at the test's Ghostkey that allows passphrases and passkeys from this page. */
async function app() {
  const gk = await sdk();
  const seed = randomBytes(32);
  const key = gk.AppKey.fromSeed("k1", seed);
  const appId = ghostkey.addApp("Browser SDK", "k1", key.publicKey);
  ghostkey.cli(["app", "policy", "set", appId, "--allowed-methods", "totp,sms,email,passphrase,passkey"]);
  ghostkey.cli(["app", "origins", "add", appId, origin]);
  ghostkey.cli(["app", "passkey", "set", appId, "--rp-id", "localhost"]);
  key.free();
  return { appId, seed: seed.toString("base64url"), ghostkeyUrl: ghostkey.url };
}

// In the page: the app provider's part (assertions, endorsement) played with the same key.
const PLATFORM = `
  const key = gk.AppKey.fromSeed("k1", gk.fromBase64Url(args.seed));
  const appId = args.appId;
  const userId = "u-" + gk.toBase64Url(crypto.getRandomValues(new Uint8Array(6)));
  const assertions = async (purpose) => {
    const now = Math.floor(Date.now() / 1000);
    const jti = gk.toBase64Url(crypto.getRandomValues(new Uint8Array(16)));
    return key.mintAssertion({ iss: appId, sub: userId, aud: "ghostkey-dev", iat: now, exp: now + 60, jti, purpose });
  };
  const pinned = { k1: key.publicKey };
  const client = new gk.GhostkeyClient(args.ghostkeyUrl);
  const secret = gk.UserSecret.generate();
  const enrolled = await client.enrol({
    appId, userId, kid: "k1", secret, pinned, assertions,
    endorse: async (root) => key.endorseRoot(root, appId, userId),
  });
  const failure = (p) => p.then(() => null, (e) => ({ code: e.code, status: e.status, isGhostkeyError: e instanceof gk.GhostkeyError }));
`;

test("init() loads the module next to index.js; keys survive a reload in IndexedDB", async () => {
  const stored = await inPage(`
    const device = gk.DeviceKeys.generate();
    const storage = new gk.IndexedDbKeyStorage("ghostkey-test");
    const bytes = device.exportBytes();
    await storage.set("device", bytes);
    bytes.fill(0);
    return device.signingKey;
  `);
  const reloaded = await inPage(`
    const storage = new gk.IndexedDbKeyStorage("ghostkey-test");
    const bytes = await storage.get("device");
    const device = gk.DeviceKeys.fromBytes(bytes);
    bytes.fill(0);
    await storage.delete("device");
    return { key: device.signingKey, gone: (await storage.get("device")) === undefined };
  `);
  assert.deepEqual(reloaded, { key: stored, gone: true });
});

test("sealing, chains and envelopes work in the browser as in Node", async () => {
  const result = await inPage(`
    const app = gk.AppKey.generate("k1");
    const secret = gk.UserSecret.generate();
    const p = gk.prepareEnrolment("app_1", "u1", "k1");
    const sealed = p.virtualDevice.seal(secret);
    const opened = gk.VirtualDevice.open(sealed, secret, { appId: "app_1", userId: "u1" });
    const c0 = gk.Chain.verify([app.endorseRoot(p.unsignedRoot, "app_1", "u1")], { k1: app.publicKey });
    const device = gk.DeviceKeys.generate();
    const chain = c0.apply(c0.admitDevice(opened.keys(), device, p.userKeys));
    const env = gk.sealEnvelope({ userId: "u1", device }, [chain], new TextEncoder().encode("hello"));
    const text = new TextDecoder().decode(gk.openEnvelope(env, { userId: "u1", userKeys: chain.userKeys(device) }, chain));
    let code;
    try { gk.VirtualDevice.open(sealed, gk.UserSecret.generate(), { appId: "app_1", userId: "u1" }); } catch (e) { code = e.code; }
    return { length: chain.length, text, code, shown: String(secret) + JSON.stringify({ secret }) };
  `);
  assert.deepEqual(result, {
    length: 2,
    text: "hello",
    code: "wrong_secret",
    shown: 'UserSecret([redacted]){"secret":"UserSecret([redacted])"}',
  });
});

test("a passkey in the browser: enrol, prove, a response to another challenge refused, recover", async () => {
  const result = await inPage(
    `${PLATFORM}
    const added = await client.addPasskey(await assertions("enroll"), "Test key");
    const confirmed = await client.confirmPasskey(added.challenge);
    // A proof through the passkey authorises adding a second method.
    const proof = await client.proofWithPasskey(await assertions("manage"), added.method.id);
    const email = await client.addMethod(await assertions("manage"), "email", "sdk@example.org", proof);
    const reused = await failure(client.addMethod(await assertions("manage"), "sms", "+33612345678", proof));
    // Recovery: an assertion signed over another challenge is Ghostkey's passkey_rejected.
    const started = await client.startRecovery(await assertions("recover"), added.method.id);
    const other = await client.startChallenge(await assertions("recover"), added.method.id, "proof");
    const rejected = await failure(client.verifyRecoveryWebAuthn(started.id, await gk.getPasskeyAssertion(other)));
    await new Promise((r) => setTimeout(r, 2200)); // the user's back-off after a failure
    const assertion = await gk.getPasskeyAssertion(started);
    const admitted = await client.recover({
      recoveryId: started.id, webauthn: assertion, secret, appId, userId, pinned, assertions,
    });
    const methods = (await client.listMethods(await assertions("manage"))).methods;
    return {
      confirmed: [confirmed.enrollment_state, confirmed.method.kind, confirmed.method.masked],
      createOptions: Object.keys(added.challenge.webauthn.publicKey).sort(),
      requestOptions: [started.webauthn.publicKey.rpId, started.webauthn.publicKey.userVerification],
      email: email.method.kind,
      reused,
      rejected,
      assertionShape: [Object.keys(assertion).sort(), Object.keys(assertion.response).sort()],
      admitted: [admitted.chain.length, admitted.chain.isValidDevice(admitted.device.signingKey)],
      methods: methods.map((m) => [m.kind, m.state, m.masked ?? null]),
    };`,
    await app(),
    virtualAuthenticator,
  );
  assert.deepEqual(result.confirmed, ["active", "passkey", "passkey “Test key”"]);
  for (const member of ["challenge", "rp", "user", "pubKeyCredParams", "authenticatorSelection"]) {
    assert.ok(result.createOptions.includes(member), `creation options lack ${member}`);
  }
  assert.deepEqual(result.requestOptions, ["localhost", "required"]);
  assert.equal(result.email, "email");
  assert.deepEqual(result.reused, { code: "code_already_used", status: 409, isGhostkeyError: true });
  assert.deepEqual(result.rejected, { code: "passkey_rejected", status: 403, isGhostkeyError: true });
  // userHandle only when the authenticator returns one (not for a credential named in
  // allowCredentials, as here).
  assert.deepEqual(result.assertionShape, [
    ["clientExtensionResults", "id", "rawId", "response", "type"],
    ["authenticatorData", "clientDataJSON", "signature"],
  ]);
  assert.deepEqual(result.admitted, [3, true]);
  // (Methods made in the same second are listed in the order of their ids: sorted here.)
  assert.deepEqual(result.methods.sort(), [
    ["email", "pending", "s***@e***.org"],
    ["passkey", "confirmed", "passkey “Test key”"],
  ]);
});

test("a passphrase in the browser: weak refused locally, enrol and recover", async (t) => {
  const result = await inPage(
    `${PLATFORM}
    const weak = gk.Passphrase.from("abcabcabcabcabc");
    let weakCode;
    try { weak.setup(appId, userId); } catch (e) { weakCode = e.code; }
    const passphrase = gk.Passphrase.from("Sieben Zwerge, 1 Apfel, kein Spiegel");
    const started0 = performance.now();
    const verifier = passphrase.setup(appId, userId);
    const deriveMs = performance.now() - started0;
    const added = await client.addPassphrase(await assertions("enroll"), verifier);
    const confirmed = await client.answer(added.challenge.id, passphrase.answer(added.challenge, appId, userId));
    const started = await client.startRecovery(await assertions("recover"), added.method.id);
    const admitted = await client.recover({
      recoveryId: started.id, code: passphrase.answer(started, appId, userId), secret, appId, userId, pinned, assertions,
    });
    return {
      weakCode,
      confirmed: confirmed.enrollment_state,
      admitted: admitted.chain.length,
      shown: String(passphrase) + JSON.stringify({ verifier }),
      deriveMs,
    };`,
    await app(),
  );
  assert.equal(result.weakCode, "passphrase_too_weak");
  assert.equal(result.confirmed, "active");
  assert.equal(result.admitted, 3);
  assert.equal(result.shown, 'Passphrase([redacted]){"verifier":"PassphraseVerifier([redacted])"}');
  t.diagnostic(`passphrase verifier derivation in Chromium: ${Math.round(result.deriveMs)} ms`);
});
