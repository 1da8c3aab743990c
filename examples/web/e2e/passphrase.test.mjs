// A passphrase as Ghostkey's own check of the user, on the reference page: a weak one is
// refused on the page before anything reaches Ghostkey; a good one is typed twice (the
// second time confirms it); after every device is lost, a wrong passphrase shows
// Ghostkey's invalid_code, and the right one recovers and the prescription opens again.
// Neither the passphrase nor its verifier ever shows in a console or the backend's output.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { startAll, openDevice } from './harness.mjs';
import * as flow from './flows.mjs';

const PASSPHRASE = 'Blue heron at dawn, 6 frogs & 1 pike';
const PRESCRIPTION = 'Rx: ibuprofen 400 mg, twice a day for 5 days. Dr. Lindqvist.';

let env;
before(async () => {
  env = await startAll();
});
after(async () => {
  await env?.close();
});

/** What Ghostkey holds for the logged-in user of `page` (methods, by a `recover` assertion). */
async function methodsAtGhostkey(page) {
  return page.evaluate(async (ghostkeyUrl) => {
    const token = sessionStorage.getItem('medconnect-token');
    const r = await fetch('/api/assertions', {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${token}` },
      body: JSON.stringify({ purpose: 'recover' }),
    });
    const { assertion } = await r.json();
    const res = await fetch(`${ghostkeyUrl}/v1/methods`, { headers: { authorization: `Bearer ${assertion}` } });
    return { status: res.status, body: await res.json() };
  }, env.gk.url);
}

test('a passphrase: a weak one refused on the page, enrol, lose every device, a wrong one refused, recover', async () => {
  const device = await openDevice(env.browser, env.backend.url);
  const { page } = device;
  try {
    await flow.login(page, 'pharmacist');

    // Weak: the strength meter says so as it is typed, and Enrol stops on the page.
    await flow.startPassphraseEnrolment(page, 'abcabcabcabcabc');
    assert.match(await page.locator('#passphrase-strength').textContent(), /too weak/);
    const weak = await flow.expectError(page, 'passphrase_too_weak');
    assert.match(weak, /at least 50/);
    assert.ok(await page.locator('#enrol').isVisible(), 'the page still offers the enrolment');
    // Nothing reached Ghostkey: the user is not even enrolled there.
    assert.equal((await methodsAtGhostkey(page)).body.code, 'not_enrolled');

    await page.fill('#passphrase', PASSPHRASE);
    assert.match(await page.locator('#passphrase-strength').textContent(), /strong enough/);
    await flow.enrolPassphrase(page, PASSPHRASE);
    const held = await methodsAtGhostkey(page);
    assert.deepEqual(held.body.methods.map((m) => [m.kind, m.state, m.masked]), [['passphrase', 'confirmed', undefined]]);
    await flow.sendDocument(page, 'pharmacist', PRESCRIPTION);

    await flow.loseEveryDevice(page);
    await flow.login(page, 'pharmacist');
    assert.match(await page.locator('#recover-method option').first().textContent(), /^passphrase$/);
    await flow.startRecovery(page);
    assert.equal(await page.locator('#recover-prompt').textContent(), 'type your passphrase');
    assert.ok(!(await page.locator('#recover-code').isVisible()));

    // A wrong passphrase: Ghostkey's refusal, with its code, as for a wrong code.
    await flow.typeRecoveryPassphrase(page, 'Blue heron at dusk, 6 frogs & 1 pike');
    await flow.expectError(page, 'invalid_code');
    assert.equal(await page.locator('#recover-passphrase').inputValue(), '', 'the page keeps no passphrase');
    await sleep(2_500); // the user's back-off after a failure
    await flow.typeRecoveryPassphrase(page, PASSPHRASE);
    await flow.waitVisible(page, '#send');
    assert.equal(await flow.errorCode(page), null);
    const docs = await flow.readDocuments(page);
    assert.ok(docs.some((d) => d.includes(PRESCRIPTION)), docs.join('\n'));

    for (const line of [...device.console, env.backend.log()]) {
      assert.ok(!line.includes(PASSPHRASE) && !line.includes('Blue heron'), `the passphrase in the output: ${line}`);
    }
  } finally {
    await device.context.close();
  }
});
