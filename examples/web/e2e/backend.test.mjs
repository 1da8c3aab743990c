// The demo backend's duties as an app provider, from Node (no browser): assertions only
// for its logged-in user, with exactly the claims of PROTOCOL.md §2; the user secret only
// to that user; a root endorsed only when it is this user's.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { checkPrerequisites, startGhostkey, registerDemoApp, startBackend } from './harness.mjs';

let gk;
let backend;
let sdk;
before(async () => {
  checkPrerequisites();
  gk = await startGhostkey();
  backend = await startBackend(gk, registerDemoApp(gk));
  sdk = await import('@ghostkey/client');
  await sdk.init();
});
after(async () => {
  await backend?.close();
  await gk?.close();
});

async function call(method, path, { token, body } = {}) {
  const headers = {};
  if (token) headers.authorization = `Bearer ${token}`;
  if (body) headers['content-type'] = 'application/json';
  const res = await fetch(`${backend.url}${path}`, { method, headers, body: body && JSON.stringify(body) });
  return { status: res.status, json: await res.json() };
}

const login = async (name) => (await call('POST', '/api/login', { body: { name } })).json;

test('assertions: only for the logged-in user, exactly the claims Ghostkey requires', async () => {
  assert.equal((await call('POST', '/api/assertions', { body: { purpose: 'enroll' } })).json.code, 'not_logged_in');
  const alice = await login('alice');
  assert.equal((await call('POST', '/api/assertions', { token: alice.token, body: { purpose: 'admin' } })).json.code, 'invalid_purpose');
  const config = (await call('GET', '/api/config')).json;
  const jtis = new Set();
  for (const purpose of ['enroll', 'recover', 'manage']) {
    const { assertion } = (await call('POST', '/api/assertions', { token: alice.token, body: { purpose } })).json;
    const [header, claims] = assertion.split('.').slice(0, 2).map((p) => JSON.parse(Buffer.from(p, 'base64url')));
    assert.deepEqual(header, { alg: 'EdDSA', kid: 'k1', typ: 'JWT' });
    assert.deepEqual(Object.keys(claims).sort(), ['aud', 'exp', 'iat', 'iss', 'jti', 'purpose', 'sub']);
    assert.equal(claims.iss, config.appId);
    assert.equal(claims.sub, alice.userId);
    assert.equal(claims.aud, 'ghostkey-dev');
    assert.equal(claims.purpose, purpose);
    assert.ok(claims.exp > claims.iat && claims.exp - claims.iat <= 300);
    assert.ok(Buffer.from(claims.jti, 'base64url').length >= 12);
    jtis.add(claims.jti);
  }
  assert.equal(jtis.size, 3);
  // Ghostkey accepts them: the user is simply not enrolled yet.
  const { assertion } = (await call('POST', '/api/assertions', { token: alice.token, body: { purpose: 'manage' } })).json;
  const res = await fetch(`${gk.url}/v1/methods`, { headers: { authorization: `Bearer ${assertion}` } });
  assert.equal((await res.json()).code, 'not_enrolled');
});

test('the user secret goes to its own user only, and stays the same', async () => {
  assert.equal((await call('GET', '/api/secret')).status, 401);
  const bob = await login('bob');
  const again = await login('Bob'); // names are case-insensitive: the same user
  assert.equal(again.userId, bob.userId);
  const first = (await call('GET', '/api/secret', { token: bob.token })).json.userSecret;
  const second = (await call('GET', '/api/secret', { token: again.token })).json.userSecret;
  assert.equal(first, second);
  assert.equal(Buffer.from(first, 'base64url').length, 32);
  const carol = await login('carol');
  assert.notEqual((await call('GET', '/api/secret', { token: carol.token })).json.userSecret, first);
  assert.doesNotMatch(bob.userId, /bob/i, 'the user id is pseudonymous');
});

test("the root is endorsed for the logged-in user only", async () => {
  const config = (await call('GET', '/api/config')).json;
  const dave = await login('dave');
  const erin = await login('erin');
  const endorse = (token, root) =>
    call('POST', '/api/endorse-root', { token, body: { root_block: sdk.toBase64Url(root) } });

  const mine = sdk.prepareEnrolment(config.appId, dave.userId, 'k1');
  const signed = await endorse(dave.token, mine.unsignedRoot);
  assert.equal(signed.status, 200);
  const chain = sdk.Chain.verify([sdk.fromBase64Url(signed.json.root_block)], config.appKeys, {
    appId: config.appId,
    userId: dave.userId,
  });
  assert.equal(chain.length, 1);

  // Erin asks for Dave's root, or for a root of another app or key: refused.
  assert.equal((await endorse(erin.token, mine.unsignedRoot)).json.code, 'endorse_refused');
  const otherApp = sdk.prepareEnrolment('app_000000000000000000000000', erin.userId, 'k1');
  assert.equal((await endorse(erin.token, otherApp.unsignedRoot)).json.code, 'endorse_refused');
  const otherKey = sdk.prepareEnrolment(config.appId, erin.userId, 'k2');
  assert.equal((await endorse(erin.token, otherKey.unsignedRoot)).json.code, 'endorse_refused');
  assert.equal((await endorse(undefined, mine.unsignedRoot)).json.code, 'not_logged_in');
  for (const p of [mine, otherApp, otherKey]) {
    p.virtualDevice.free();
    p.userKeys.free();
  }
});
