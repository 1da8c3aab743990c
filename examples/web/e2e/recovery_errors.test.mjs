// Recovery refusals as the page shows them: each with Ghostkey's stable code.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { startAll, openDevice } from './harness.mjs';
import * as flow from './flows.mjs';

let env;
before(async () => {
  env = await startAll();
});
after(async () => {
  await env?.close();
});

/** A user enrolled by SMS or e-mail who has just lost every device and logged in again. */
async function lostUser(name, enrol) {
  const device = await openDevice(env.browser, env.backend.url);
  await flow.login(device.page, name);
  await enrol(device.page);
  await flow.loseEveryDevice(device.page);
  await flow.login(device.page, name);
  return device;
}

test('a wrong recovery code shows invalid_code; the right one then recovers', async () => {
  const e164 = '+33611223344';
  const { page, context } = await lostUser('wrong-code', (p) => flow.enrolSms(p, '+33 6 11 22 33 44', e164));
  try {
    const before = await flow.startRecovery(page, e164);
    const code = await flow.devCode(page, e164, before);
    const wrong = code === '00000000' ? '11111111' : '00000000';
    await flow.typeRecoveryCode(page, wrong);
    await flow.expectError(page, 'invalid_code');
    assert.ok(await page.locator('#recover-verify-form').isVisible(), 'the page still asks for the code');
    // After a failure Ghostkey checks no code of this user for 2 s (back-off).
    await sleep(2_500);
    await flow.typeRecoveryCode(page, code);
    await flow.waitVisible(page, '#send');
    assert.equal(await flow.errorCode(page), null);
  } finally {
    await context.close();
  }
});

test('a cancelled recovery never releases: the right code then shows recovery_cancelled', async () => {
  const address = 'cancelled@example.org'; // this one by e-mail
  const { page, context } = await lostUser('cancelled', (p) => flow.enrolEmail(p, address));
  try {
    const before = await flow.startRecovery(page, address);
    assert.match(await page.locator('#recover-masked').textContent(), /@/);
    const code = await flow.devCode(page, address, before);
    await page.click('#recover-cancel');
    await page.waitForFunction(() => /cancelled/.test(document.getElementById('status').textContent));
    await flow.typeRecoveryCode(page, code);
    await flow.expectError(page, 'recovery_cancelled');
    // Nothing was released: this device still has no keys, even after a reload.
    await page.reload();
    await flow.ready(page);
    await flow.waitVisible(page, '#recover');
    assert.match(await page.locator('#device-state').textContent(), /no keys/);
  } finally {
    await context.close();
  }
});
