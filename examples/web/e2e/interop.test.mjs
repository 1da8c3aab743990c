// The browser and the Rust client read each other's bytes, through the Rust interop
// program (crates/ghostkey-client/examples/interop.rs, `make` and `check` a fixture):
//   - Rust -> browser: a virtual device sealed in Rust opens in the page, its chain
//     verifies there, and an envelope sealed in Rust opens there;
//   - browser -> Rust: everything the page made for a user (the virtual device it sealed at
//     enrolment, as Ghostkey released it; the chain it built, as Ghostkey accepted and
//     serves it; an envelope it sealed) passes the Rust checks.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startAll, openDevice, repoRoot } from './harness.mjs';
import * as flow from './flows.mjs';

let env;
let dir;
let interop; // runs the Rust interop program
let sdk; // the SDK in Node, imported once the harness has checked it is built
before(async () => {
  env = await startAll();
  dir = mkdtempSync(join(tmpdir(), 'ghostkey-interop-'));
  // Built once here (cargo may wait for the shared target directory's lock), then run.
  // Release, like the SDK's own tests and the benchmark: one build for all of them.
  // Cargo writes to $CARGO_TARGET_DIR when set (as the SDK's tests assume too), else target/.
  const targetDir = process.env.CARGO_TARGET_DIR || join(repoRoot, 'target');
  const bin = process.env.GHOSTKEY_INTEROP_BIN ?? join(targetDir, 'release', 'examples', 'interop');
  if (!process.env.GHOSTKEY_INTEROP_BIN) {
    try {
      execFileSync('cargo', ['build', '-q', '--release', '--locked', '-p', 'ghostkey-client', '--example', 'interop'], {
        cwd: repoRoot,
        stdio: ['ignore', 'ignore', 'pipe'],
      });
    } catch (e) {
      throw new Error(`cannot build the Rust interop program (cargo build --release -p ghostkey-client --example interop): ${e.stderr ?? e.message}`);
    }
  }
  interop = (cmd, file) => execFileSync(bin, [cmd, file], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  sdk = await import('@ghostkey/client');
  await sdk.init();
});
after(async () => {
  await env?.close();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

test('Rust -> browser: a virtual device, a chain and an envelope made in Rust open in the page', async () => {
  const file = join(dir, 'from-rust.json');
  interop('make', file);
  const fixture = JSON.parse(readFileSync(file, 'utf8'));
  const { page, context } = await openDevice(env.browser, env.backend.url);
  try {
    await flow.ready(page);
    // The page's own copy of the SDK (WebAssembly in Chromium), as app.js loads it.
    const seen = await page.evaluate(async (f) => {
      const sdk = await import('/sdk/index.js');
      await sdk.init();
      const bytes = sdk.fromBase64Url;
      const secret = sdk.UserSecret.fromBase64(f.user_secret);
      const vd = sdk.VirtualDevice.open(bytes(f.sealed_virtual_device), secret, { appId: f.app_id, userId: f.user_id });
      const chain = sdk.Chain.verify(f.chain.map(bytes), { [f.kid]: f.app_public_key }, { appId: f.app_id, userId: f.user_id });
      const device = sdk.DeviceKeys.fromBytes(bytes(f.device));
      const fromChain = chain.userKeys(device); // the user key, unsealed by the device
      const given = sdk.UserKeys.fromBytes(bytes(f.user_keys));
      const open = (userKeys) =>
        new TextDecoder().decode(sdk.openEnvelope(bytes(f.envelope), { userId: f.user_id, userKeys }, chain));
      // A wrong secret must not open it.
      let wrongSecret;
      try {
        sdk.VirtualDevice.open(bytes(f.sealed_virtual_device), sdk.UserSecret.generate(), { appId: f.app_id, userId: f.user_id });
      } catch (e) {
        wrongSecret = e.code;
      }
      return {
        vdSigningKey: vd.publicKeys.signing_key,
        vdVersion: vd.version,
        chainLength: chain.length,
        deviceValid: chain.isValidDevice(device.signingKey),
        userPublic: [fromChain.publicKey, given.publicKey, chain.userPublicKey],
        documents: [open(fromChain), open(given)],
        wrongSecret,
      };
    }, fixture);
    assert.equal(seen.vdSigningKey, fixture.virtual_device_signing_key);
    assert.equal(seen.vdVersion, 1);
    assert.equal(seen.chainLength, 2);
    assert.equal(seen.deviceValid, true);
    assert.equal(new Set(seen.userPublic).size, 1);
    assert.deepEqual(seen.documents, [fixture.document, fixture.document]);
    assert.equal(seen.wrongSecret, 'wrong_secret');
  } finally {
    await context.close();
  }
});

test('browser -> Rust: what the page sealed and built, through Ghostkey, passes the Rust checks', async () => {
  const name = 'interop';
  const e164 = '+33699887766';
  const { page, context } = await openDevice(env.browser, env.backend.url);
  try {
    // Through the page: enrol (the virtual device sealed and the chain rooted here), send
    // oneself a document, lose every device, recover (Ghostkey releases the blob sealed at
    // enrolment) and admit the new device (a block built here).
    await flow.login(page, name);
    await flow.enrolSms(page, '+33 6 99 88 77 66', e164);
    await flow.sendDocument(page, name, 'Made in Chromium: Rx 7 days.');
    await flow.loseEveryDevice(page);
    await flow.login(page, name);
    const before = await flow.startRecovery(page, e164);
    const code = await flow.devCode(page, e164, before);
    const released = page.waitForResponse((r) => /\/v1\/recoveries\/[^/]+\/verify$/.test(r.url()));
    await flow.typeRecoveryCode(page, code);
    const sealed = (await (await released).json()).sealed_virtual_device;
    await flow.waitVisible(page, '#send');

    // The new device's keys, as the page stored them in IndexedDB.
    const userId = await page.locator('#user-id').textContent();
    const device = await page.evaluate(
      (key) =>
        new Promise((resolve, reject) => {
          const open = indexedDB.open('medconnect-keys');
          open.onerror = () => reject(open.error);
          open.onsuccess = () => {
            const get = open.result.transaction('keys').objectStore('keys').get(key);
            get.onsuccess = () => resolve(Array.from(get.result));
            get.onerror = () => reject(get.error);
          };
        }),
      `device:${userId}`,
    );

    // The rest from the backend (secret, envelope) and from Ghostkey (the chain it serves).
    const token = (await (await fetch(`${env.backend.url}/api/login`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ name }),
    })).json()).token;
    const api = async (path, init = {}) =>
      (await fetch(`${env.backend.url}${path}`, {
        ...init,
        headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
      })).json();
    const config = await api('/api/config');
    const { userSecret } = await api('/api/secret');
    const [doc] = (await api('/api/documents')).documents;
    const { assertion } = await api('/api/assertions', { method: 'POST', body: JSON.stringify({ purpose: 'manage' }) });
    const served = await (await fetch(`${env.gk.url}/v1/chains/${userId}`, {
      headers: { authorization: `Bearer ${assertion}` },
    })).json();
    assert.equal(served.blocks.length, 3, 'root, first device, new device');

    // The virtual device's key and the user key, read from the chain (Node's SDK).
    const chain = sdk.Chain.verify(served.blocks.map(sdk.fromBase64Url), config.appKeys, { appId: config.appId, userId });
    const keys = sdk.DeviceKeys.fromBytes(Uint8Array.from(device));
    const fixture = {
      app_id: config.appId,
      user_id: userId,
      kid: config.kid,
      app_public_key: config.appKeys[config.kid],
      user_secret: userSecret,
      sealed_virtual_device: sealed,
      virtual_device_signing_key: chain.devices[0].signing_key,
      chain: served.blocks,
      device: sdk.toBase64Url(Uint8Array.from(device)),
      envelope: doc.envelope,
      user_keys: sdk.toBase64Url(chain.userKeys(keys).exportBytes()),
      document: 'Made in Chromium: Rx 7 days.',
    };
    const file = join(dir, 'from-browser.json');
    writeFileSync(file, JSON.stringify(fixture));
    assert.equal(interop('check', file).trim(), 'ok');

    // And the Rust check is no rubber stamp: another document is refused.
    writeFileSync(file, JSON.stringify({ ...fixture, document: 'something else' }));
    assert.throws(() => interop('check', file), /opens to another document/);
  } finally {
    await context.close();
  }
});
