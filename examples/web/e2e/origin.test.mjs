// A page whose origin is not allowed for the app: the browser refuses Ghostkey's answers
// (no CORS headers), so the SDK sees a transport error, and nothing changes at Ghostkey.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startAll, startBackend, openDevice } from './harness.mjs';
import * as flow from './flows.mjs';

let env;
let stranger; // a second instance of the backend, on another port: another origin
before(async () => {
  env = await startAll();
  stranger = await startBackend(env.gk, env.app, { allow: false });
});
after(async () => {
  await stranger?.close();
  await env?.close();
});

async function loginFromNode(url, name) {
  const res = await fetch(`${url}/api/login`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ name }),
  });
  const { token } = await res.json();
  return async (purpose) => {
    const r = await fetch(`${url}/api/assertions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${token}` },
      body: JSON.stringify({ purpose }),
    });
    return (await r.json()).assertion;
  };
}

test('an origin not allowed for the app: the SDK fails with transport, Ghostkey is unchanged', async () => {
  assert.notEqual(new URL(stranger.url).origin, new URL(env.backend.url).origin);
  const { page, context } = await openDevice(env.browser, stranger.url);
  try {
    // The page's first Ghostkey call, right after the login, is refused by the browser.
    await flow.ready(page);
    await page.fill('#name', 'mallory');
    await page.click('#login-button');
    await flow.expectError(page, 'transport');

    // A whole enrolment attempted through the SDK in this page, with real assertions.
    const outcome = await page.evaluate(async ({ config }) => {
      const sdk = await import('/sdk/index.js');
      await sdk.init();
      const token = sessionStorage.getItem('medconnect-token');
      const call = async (method, path, body) => {
        const res = await fetch(path, {
          method,
          headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
          body: body && JSON.stringify(body),
        });
        return res.json();
      };
      const me = await call('GET', '/api/me');
      const secret = sdk.UserSecret.fromBase64((await call('GET', '/api/secret')).userSecret);
      const gk = new sdk.GhostkeyClient(config.ghostkeyUrl);
      try {
        await gk.enrol({
          appId: config.appId,
          userId: me.userId,
          kid: config.kid,
          secret,
          pinned: config.appKeys,
          assertions: async (purpose) => (await call('POST', '/api/assertions', { purpose })).assertion,
          endorse: async (root) =>
            sdk.fromBase64Url((await call('POST', '/api/endorse-root', { root_block: sdk.toBase64Url(root) })).root_block),
        });
        return { ok: true };
      } catch (e) {
        return { ok: false, code: e.code, isGhostkeyError: e instanceof sdk.GhostkeyError };
      } finally {
        secret.free();
      }
    }, { config: await (await fetch(`${stranger.url}/api/config`)).json() });
    assert.deepEqual(outcome, { ok: false, code: 'transport', isGhostkeyError: true });

    // Ghostkey has nothing for mallory (asked from Node, which sends no Origin).
    const assertion = await loginFromNode(stranger.url, 'mallory');
    const methods = await fetch(`${env.gk.url}/v1/methods`, {
      headers: { authorization: `Bearer ${await assertion('manage')}` },
    });
    assert.equal(methods.status, 404);
    assert.equal((await methods.json()).code, 'not_enrolled');

    // Why the browser refused: the same request with this page's Origin is answered 403
    // origin_not_allowed, without any CORS header.
    const refused = await fetch(`${env.gk.url}/v1/methods`, {
      headers: { authorization: `Bearer ${await assertion('manage')}`, origin: new URL(stranger.url).origin },
    });
    assert.equal(refused.status, 403);
    assert.equal((await refused.json()).code, 'origin_not_allowed');
    assert.equal(refused.headers.get('access-control-allow-origin'), null);
  } finally {
    await context.close();
  }
});

test('the allowed origin gets CORS answers (preflight included)', async () => {
  const origin = new URL(env.backend.url).origin;
  const preflight = await fetch(`${env.gk.url}/v1/enrollments`, {
    method: 'OPTIONS',
    headers: {
      origin,
      'access-control-request-method': 'POST',
      'access-control-request-headers': 'authorization, content-type',
    },
  });
  assert.ok(preflight.ok, `preflight answered ${preflight.status}`);
  assert.equal(preflight.headers.get('access-control-allow-origin'), origin);
  const allowed = (preflight.headers.get('access-control-allow-headers') ?? '').toLowerCase();
  assert.match(allowed, /authorization/);
  assert.match(allowed, /content-type/);
});
