// Passkeys as Ghostkey's own check of the user, in a real browser with a virtual
// authenticator (the DevTools protocol's WebAuthn domain): a nurse enrols with a passkey
// on the reference page, keeps a prescription, loses the device (its browser storage
// gone), and on a new device whose authenticator holds the same passkey (exported from the
// old one and added to the new: a passkey synced by a password manager) recovers with it
// and reads the prescription. Then the refusals: a copy of the passkey whose signature
// counter went backwards (authenticator_cloned), and a user who fails the authenticator's
// verification (webauthn_cancelled).

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startAll, openDevice, virtualAuthenticator } from './harness.mjs';
import * as flow from './flows.mjs';

const PRESCRIPTION = 'Rx: salbutamol inhaler, 2 puffs as needed. Dr. Okafor.';

let env;
before(async () => {
  env = await startAll();
});
after(async () => {
  await env?.close();
});

/** A new device whose authenticator holds `credentials` (none: a device of its own). */
async function deviceWith(credentials = []) {
  const device = await openDevice(env.browser, env.backend.url);
  const authenticator = await virtualAuthenticator(device.page);
  for (const c of credentials) await authenticator.add(c);
  return { ...device, authenticator };
}

/** Logs in as `name` on a device without keys and recovers with the passkey method. */
async function recoverWithPasskey(page, name) {
  await flow.login(page, name);
  assert.match(await page.locator('#device-state').textContent(), /no keys/);
  assert.match(await page.locator('#recover-method option').first().textContent(), /^passkey “/);
  await flow.startRecovery(page);
  assert.equal(await page.locator('#recover-verify').textContent(), 'Use my passkey');
  assert.ok(!(await page.locator('#recover-code').isVisible()), 'a passkey recovery asks for no code');
  await page.click('#recover-verify');
}

test('enrol with a passkey, lose the device, recover with the synced passkey on a new one, read the prescription', async () => {
  assert.equal(new URL(env.backend.url).hostname, 'localhost', 'passkeys need the page on localhost');
  const first = await deviceWith();
  let synced;
  try {
    await flow.login(first.page, 'nurse');
    await flow.enrolPasskey(first.page, 'Ward laptop');
    await flow.sendDocument(first.page, 'nurse', PRESCRIPTION);

    // The authenticator made one credential, for Ghostkey's RP id.
    const made = await first.authenticator.credentials();
    assert.equal(made.length, 1);
    assert.equal(made[0].rpId, 'localhost');
    synced = made;
  } finally {
    await first.context.close(); // the device is lost: its IndexedDB, its keys, its login
  }

  const second = await deviceWith(synced);
  try {
    const left = await second.page.evaluate(async () => (await indexedDB.databases()).map((d) => d.name));
    assert.deepEqual(left, [], 'the new device starts with no keys');
    await recoverWithPasskey(second.page, 'nurse');
    await flow.waitVisible(second.page, '#send');
    const docs = await flow.readDocuments(second.page);
    assert.ok(docs.some((d) => d.includes(PRESCRIPTION)), docs.join('\n'));
    // The authenticator signed once more: its counter moved on.
    const [after] = await second.authenticator.credentials();
    assert.ok(after.signCount > synced[0].signCount, `signCount ${synced[0].signCount} -> ${after.signCount}`);

    // Lose this device too, and this time recover with a stale copy of the passkey: the
    // one exported before the last use, whose counter is behind what Ghostkey accepted.
    // Ghostkey takes it for a cloned authenticator and refuses it.
    const third = await deviceWith(synced);
    try {
      await recoverWithPasskey(third.page, 'nurse');
      await flow.expectError(third.page, 'authenticator_cloned');
      await third.page.reload();
      await flow.ready(third.page);
      await flow.waitVisible(third.page, '#recover');
      assert.match(await third.page.locator('#device-state').textContent(), /no keys/);
    } finally {
      await third.context.close();
    }
  } finally {
    await second.context.close();
  }
});

test('a user who fails the authenticator\'s verification: webauthn_cancelled, and nothing is released', async () => {
  const first = await deviceWith();
  let synced;
  try {
    await flow.login(first.page, 'porter');
    await flow.enrolPasskey(first.page); // no name: Ghostkey shows the authenticator's model
    synced = await first.authenticator.credentials();
  } finally {
    await first.context.close();
  }
  const second = await deviceWith(synced);
  try {
    await flow.login(second.page, 'porter');
    // The authenticator's model (by name when Ghostkey knows its AAGUID), shown as it is.
    assert.match(await second.page.locator('#recover-method option').first().textContent(), /^passkey \(.+\)$/);
    await second.authenticator.setUserVerified(false);
    await flow.startRecovery(second.page);
    await second.page.click('#recover-verify');
    const message = await flow.expectError(second.page, 'webauthn_cancelled');
    assert.match(message, /NotAllowedError/);
    // The right user this time: the same recovery goes through.
    await second.authenticator.setUserVerified(true);
    await second.page.click('#recover-verify');
    await flow.waitVisible(second.page, '#send');
    assert.equal(await flow.errorCode(second.page), null);
  } finally {
    await second.context.close();
  }
});
