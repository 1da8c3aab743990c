// An app with a waiting period: the right code does not release at once; a release asked
// too early shows release_pending with Ghostkey's Retry-After; after the period the page
// releases, opens the virtual device and admits the new device.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { startAll, openDevice } from './harness.mjs';
import * as flow from './flows.mjs';

const WAIT_SECS = 6;

let env;
before(async () => {
  env = await startAll();
  env.gk.cli(['app', 'policy', 'set', env.app.appId, '--waiting-period-secs', String(WAIT_SECS)]);
});
after(async () => {
  await env?.close();
});

test('with a waiting period: release_pending first, then the release admits the new device', async () => {
  const e164 = '+33644332211';
  const { page, context } = await openDevice(env.browser, env.backend.url);
  try {
    await flow.login(page, 'waiting');
    await flow.enrolSms(page, '+33 6 44 33 22 11', e164);
    await flow.sendDocument(page, 'waiting', 'Kept through a waiting period.');
    await flow.loseEveryDevice(page);
    await flow.login(page, 'waiting');

    const before = await flow.startRecovery(page, e164);
    const code = await flow.devCode(page, e164, before);
    await flow.typeRecoveryCode(page, code);
    await flow.waitVisible(page, '#recover-waiting');
    const verifiedAt = Date.now();

    // Too early: Ghostkey answers release_pending, and the page can read its Retry-After.
    await page.click('#recover-release');
    const message = await flow.expectError(page, 'release_pending');
    assert.ok(Date.now() - verifiedAt < WAIT_SECS * 1000, 'the release was asked within the period');
    assert.match(message, /try again in \d+ s/);

    await sleep(Math.max(0, verifiedAt + (WAIT_SECS + 1.5) * 1000 - Date.now()));
    await page.click('#recover-release');
    await flow.waitVisible(page, '#send');
    const docs = await flow.readDocuments(page);
    assert.ok(docs.some((d) => d.includes('Kept through a waiting period.')), docs.join('\n'));
  } finally {
    await context.close();
  }
});
