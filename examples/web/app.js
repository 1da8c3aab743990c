// MedConnect's page: how a web app uses Ghostkey, end to end, with @ghostkey/client.
//
// Who does what:
//   - MedConnect's backend (server.mjs, under /api) logs the user in, keeps their user
//     secret, mints one assertion per Ghostkey request, endorses the chain root, and stores
//     documents it cannot read;
//   - this page (the user's device) talks to Ghostkey directly: its origin is allowed for
//     the app at Ghostkey (`ghostkey app origins add`), so the browser lets it;
//   - the device's keys stay in this browser's IndexedDB, through the SDK's KeyStorage;
//   - Ghostkey's own check of the user is an SMS or e-mail code, a TOTP app, a passphrase
//     (only a verifier derived from it here reaches Ghostkey) or a passkey (this browser's
//     WebAuthn, a passkey for Ghostkey alone).

import {
  init,
  GhostkeyClient,
  GhostkeyError,
  DeviceKeys,
  UserSecret,
  Passphrase,
  getPasskeyAssertion,
  openReleased,
  IndexedDbKeyStorage,
  sealEnvelope,
  openEnvelope,
  toBase64Url,
  fromBase64Url,
} from '@ghostkey/client';

const $ = (id) => document.getElementById(id);
const SECTIONS = ['login', 'account', 'enrol', 'confirm', 'recover', 'send', 'inbox', 'danger'];
const storage = new IndexedDbKeyStorage('medconnect-keys');
const deviceKeyName = (userId) => `device:${userId}`;

let config; // { ghostkeyUrl, appId, kid, appKeys } from the backend
let gk; // GhostkeyClient
let me; // { name, userId } once logged in
let device; // this browser's DeviceKeys for `me`, when it has some
let recovery; // the recovery in progress: { id, challenge }
let challenge; // the confirm challenge in progress

// ---------------------------------------------------------------------------------------
// The backend (the app provider). Its session token lives in sessionStorage: a demo.

async function backend(method, path, body) {
  const headers = {};
  const token = sessionStorage.getItem('medconnect-token');
  if (token) headers.authorization = `Bearer ${token}`;
  if (body !== undefined) headers['content-type'] = 'application/json';
  const res = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const json = await res.json().catch(() => ({}));
  if (!res.ok) throw Object.assign(new Error(json.detail ?? `backend answered ${res.status}`), { code: json.code ?? 'backend' });
  return json;
}

// A fresh assertion for each Ghostkey request: each jti is single use. This is the SDK's
// AssertionSource.
const assertions = async (purpose) => (await backend('POST', '/api/assertions', { purpose })).assertion;

// The user secret, fetched when needed and freed right after (it opens the sealed
// virtual device; never keep it around, never log it).
async function userSecret() {
  return UserSecret.fromBase64((await backend('GET', '/api/secret')).userSecret);
}

// ---------------------------------------------------------------------------------------
// Showing things

function show(...visible) {
  for (const id of SECTIONS) $(id).hidden = !visible.includes(id);
}

function say(text) {
  $('status').textContent = text;
}

// Errors are shown with their stable code: GhostkeyError.code from the SDK (Ghostkey's
// problem code such as invalid_code, or a local one such as transport), or the backend's.
function showError(e) {
  $('error').hidden = false;
  $('error-code').textContent = e?.code ?? 'unexpected';
  // retryAfter: Ghostkey's Retry-After (limits, release_pending), in seconds.
  const retry = e?.retryAfter ? ` (try again in ${e.retryAfter} s)` : '';
  $('error-message').textContent = (e?.message ?? String(e)) + retry;
  if (!(e instanceof GhostkeyError) && !e?.code) console.error(e);
}

// Runs a user action: clears the last error, shows the new one, keeps the button from
// being pressed twice.
function action(button, f) {
  return async (event) => {
    event?.preventDefault();
    $('error').hidden = true;
    button.disabled = true;
    try {
      await f();
    } catch (e) {
      showError(e);
    } finally {
      button.disabled = false;
    }
  };
}

// ---------------------------------------------------------------------------------------
// What to show: from the login, this browser's keys and what Ghostkey knows of the user.

async function refresh() {
  me = sessionStorage.getItem('medconnect-token') ? await backend('GET', '/api/me').catch(() => null) : null;
  if (!me) return show('login');
  $('who').textContent = me.name;
  $('user-id').textContent = me.userId;
  const stored = await storage.get(deviceKeyName(me.userId));
  device?.free();
  device = stored ? DeviceKeys.fromBytes(stored) : undefined;
  stored?.fill(0);

  let methods;
  try {
    methods = (await gk.listMethods(await assertions(device ? 'manage' : 'recover'))).methods;
  } catch (e) {
    if (e.code !== 'not_enrolled') throw e;
  }
  if (!methods && device) {
    // Keys of an enrolment Ghostkey no longer has (the user was erased): useless.
    await storage.delete(deviceKeyName(me.userId));
    device.free();
    device = undefined;
  }
  const confirmed = methods?.filter((m) => m.state === 'confirmed') ?? [];
  if (device && confirmed.length) {
    $('device-state').textContent = `a device of yours (${device.signingKey.slice(0, 12)}…)`;
    show('account', 'send', 'inbox', 'danger');
    return loadInbox();
  }
  if (!device && confirmed.length) {
    $('device-state').textContent = 'no keys: a new device';
    $('recover-method').replaceChildren(
      // A passkey's masked form names it already: passkey “My laptop”.
      ...confirmed.map((m) => new Option(m.kind === 'passkey' ? m.masked : `${m.kind} ${m.masked ?? ''}`.trim(), m.id)),
    );
    $('recover-verify-form').hidden = true;
    $('recover-waiting').hidden = true;
    $('recover-start-form').hidden = false;
    return show('account', 'recover', 'danger');
  }
  if (!device && methods) {
    // Enrolled, but no method was confirmed and the keys are gone: nothing can recover it.
    $('device-state').textContent = 'no keys, and the enrolment was never completed';
    return show('account', 'danger');
  }
  // Not enrolled yet (or enrolled on this device, no method confirmed): enrol.
  $('device-state').textContent = device ? 'enrolled here; confirm a method' : 'not enrolled';
  show('account', 'enrol', 'danger');
}

// ---------------------------------------------------------------------------------------
// Log in (the platform's own login; Ghostkey plays no part in it)

async function login() {
  const { token } = await backend('POST', '/api/login', { name: $('name').value });
  sessionStorage.setItem('medconnect-token', token);
  await refresh();
}

// ---------------------------------------------------------------------------------------
// Enrolment: keys, the sealed virtual device at Ghostkey, this device admitted to the
// chain, then a method to confirm.

async function enrol() {
  const kind = document.querySelector('input[name=kind]:checked').value;
  const destination = kind === 'sms' ? $('phone').value : kind === 'email' ? $('email').value : undefined;
  // A passphrase: checked (length, strength) and turned into its verifier here, before
  // anything else happens; a weak one stops here, and Ghostkey never sees the passphrase.
  let verifier;
  if (kind === 'passphrase') {
    const passphrase = Passphrase.from($('passphrase').value);
    try {
      say('Deriving your passphrase verifier…');
      verifier = passphrase.setup(config.appId, me.userId);
    } finally {
      passphrase.free();
    }
    $('passphrase').value = '';
    $('passphrase-strength').textContent = '';
  }
  try {
    await enrolWith(kind, destination, verifier);
  } finally {
    verifier?.free();
  }
}

async function enrolWith(kind, destination, verifier) {
  if (!device) {
    say('Creating your keys…');
    const secret = await userSecret();
    try {
      const enrolled = await gk.enrol({
        appId: config.appId,
        userId: me.userId,
        kid: config.kid,
        secret,
        pinned: config.appKeys,
        assertions,
        // The backend checks the root is this user's and signs it with the app key.
        endorse: async (unsignedRoot) =>
          fromBase64Url((await backend('POST', '/api/endorse-root', { root_block: toBase64Url(unsignedRoot) })).root_block),
      });
      device = enrolled.device;
      const bytes = device.exportBytes();
      await storage.set(deviceKeyName(me.userId), bytes);
      bytes.fill(0);
      enrolled.userKeys.free();
      enrolled.chain.free();
    } finally {
      secret.free();
    }
  }
  // The first method goes with an `enroll` assertion (no method is confirmed yet).
  const enroll = await assertions('enroll');
  const added =
    kind === 'passphrase'
      ? await gk.addPassphrase(enroll, verifier)
      : kind === 'passkey'
        ? await gk.addPasskey(enroll, $('passkey-name').value.trim() || undefined)
        : await gk.addMethod(enroll, kind, destination);
  challenge = added.challenge;
  $('totp').hidden = !added.totp;
  $('confirm-sent').hidden = kind !== 'sms' && kind !== 'email';
  $('confirm-passphrase-hint').hidden = kind !== 'passphrase';
  $('confirm-passkey-hint').hidden = kind !== 'passkey';
  if (added.totp) {
    // Shown once: Ghostkey keeps only the seed, never shows it again.
    $('totp-qr').src = `data:image/png;base64,${added.totp.qr_png_base64}`;
    $('totp-uri').textContent = added.totp.otpauth_uri;
  } else {
    $('confirm-masked').textContent = challenge.masked ?? '';
  }
  // What the confirmation takes: a code, the passphrase again, or the passkey's creation.
  const typesCode = kind !== 'passphrase' && kind !== 'passkey';
  $('confirm-code-label').hidden = !typesCode;
  $('confirm-code').required = typesCode;
  $('confirm-passphrase-label').hidden = kind !== 'passphrase';
  $('confirm-passphrase').required = kind === 'passphrase';
  $('confirm-button').textContent = kind === 'passkey' ? 'Create the passkey' : 'Confirm';
  $('confirm-code').value = '';
  $('confirm-passphrase').value = '';
  $('device-state').textContent = 'enrolled here; confirm a method';
  say('');
  show('account', 'confirm', 'danger');
}

async function confirm() {
  if (challenge.kind === 'passkey') {
    // The browser makes the passkey (navigator.credentials.create) from Ghostkey's options;
    // Ghostkey checks the new credential and keeps its public key.
    await gk.confirmPasskey(challenge);
  } else if (challenge.kind === 'passphrase') {
    // Typed a second time: the verifier derived with the parameters the challenge shows.
    const passphrase = Passphrase.from($('confirm-passphrase').value);
    let verifier;
    try {
      verifier = passphrase.answer(challenge, config.appId, me.userId);
    } finally {
      passphrase.free();
    }
    try {
      await gk.answer(challenge.id, verifier);
    } finally {
      verifier.free();
    }
    $('confirm-passphrase').value = '';
  } else {
    await gk.answer(challenge.id, $('confirm-code').value);
  }
  challenge = undefined;
  say('Your method is confirmed: Ghostkey can now recover your account.');
  await refresh();
}

// ---------------------------------------------------------------------------------------
// Recovery on a new device: the platform's login (factor 1, with the user secret and
// `recover` assertions), Ghostkey's own code (factor 2), then the released virtual device
// admits this device.

async function startRecovery() {
  const started = await gk.startRecovery(await assertions('recover'), $('recover-method').value);
  recovery = { id: started.id, challenge: started };
  const [prompt, masked] = {
    passphrase: ['type your passphrase', ''],
    passkey: ['unlock your passkey', started.masked],
    totp: ['enter the code of', 'your authenticator app'],
  }[started.kind] ?? ['enter the code for', started.masked];
  $('recover-prompt').textContent = masked ? `${prompt} ` : prompt;
  $('recover-masked').textContent = masked;
  const typesCode = started.kind !== 'passphrase' && started.kind !== 'passkey';
  $('recover-code-label').hidden = !typesCode;
  $('recover-code').required = typesCode;
  $('recover-passphrase-label').hidden = started.kind !== 'passphrase';
  $('recover-passphrase').required = started.kind === 'passphrase';
  $('recover-verify').textContent = started.kind === 'passkey' ? 'Use my passkey' : 'Recover';
  $('recover-code').value = '';
  $('recover-passphrase').value = '';
  $('recover-start-form').hidden = true;
  $('recover-verify-form').hidden = false;
}

// The user's answer to the recovery's challenge: a code, a passphrase's verifier (derived
// with the parameters the challenge shows, checked against the SDK's own table), or a
// passkey's assertion (navigator.credentials.get over Ghostkey's options).
async function recoveryAnswer(started) {
  if (started.kind === 'passkey') return { webauthn: await getPasskeyAssertion(started) };
  if (started.kind === 'passphrase') {
    const passphrase = Passphrase.from($('recover-passphrase').value);
    try {
      return { code: passphrase.answer(started, config.appId, me.userId) };
    } finally {
      passphrase.free();
      $('recover-passphrase').value = '';
    }
  }
  return { code: $('recover-code').value };
}

async function verifyRecovery() {
  const answer = await recoveryAnswer(recovery.challenge);
  const secret = await userSecret();
  try {
    // The answer; once released, the virtual device opens with the user secret and admits
    // this device (recover assertions).
    await keep(
      await gk.recover({
        recoveryId: recovery.id,
        ...answer,
        secret,
        appId: config.appId,
        userId: me.userId,
        pinned: config.appKeys,
        assertions,
      }),
    );
  } catch (e) {
    if (e.code !== 'recovery_waiting') throw e;
    // The app has a waiting period: the release comes later (releaseRecovery).
    $('recover-verify-form').hidden = true;
    $('recover-waiting').hidden = false;
    $('recover-available').textContent = new Date(Date.now() + e.retryAfter * 1000).toLocaleTimeString();
  } finally {
    secret.free();
    if (typeof answer.code === 'object') answer.code.free(); // a passphrase verifier
  }
}

// After the waiting period. Too early: release_pending, with retryAfter.
async function releaseRecovery() {
  const answer = await gk.releaseRecovery(await assertions('recover'), recovery.id);
  const secret = await userSecret();
  const vd = openReleased(answer, secret, { appId: config.appId, userId: me.userId });
  try {
    await keep(
      await gk.admitDevice({
        appId: config.appId,
        userId: me.userId,
        pinned: config.appKeys,
        author: vd,
        assertions,
        purpose: 'recover',
      }),
    );
  } finally {
    vd.free();
    secret.free();
  }
}

// The new device is admitted: keep its keys, and forget the rest.
async function keep(admitted) {
  const bytes = admitted.device.exportBytes();
  await storage.set(deviceKeyName(me.userId), bytes);
  bytes.fill(0);
  admitted.userKeys.free();
  admitted.chain.free();
  admitted.device.free();
  recovery = undefined;
  $('recover-waiting').hidden = true;
  say('Recovered: this device is now one of yours.');
  await refresh();
}

// The app provider may cancel a recovery with a `manage` assertion alone (here on the
// logged-in user's request; a user without the app uses a notice's cancel code).
async function cancelRecovery() {
  await gk.cancelRecovery(await assertions('manage'), recovery.id);
  say('Recovery cancelled: it will never release, whatever code is sent.');
}

// ---------------------------------------------------------------------------------------
// Documents: sealed for the recipient's and the author's own verified chains; the backend
// stores the envelope, bytes it cannot read.

const verifiedChain = async (userId) => gk.verifiedChain(await assertions('manage'), userId, config.appKeys, config.appId);

async function send() {
  const to = await backend('GET', `/api/users?name=${encodeURIComponent($('to').value)}`);
  const theirs = await verifiedChain(to.userId);
  const mine = to.userId === me.userId ? undefined : await verifiedChain(me.userId);
  try {
    const envelope = sealEnvelope(
      { userId: me.userId, device },
      mine ? [theirs, mine] : [theirs], // our own chain too, to read it back later
      new TextEncoder().encode($('text').value),
    );
    await backend('POST', '/api/documents', { to: to.name, envelope: toBase64Url(envelope) });
  } finally {
    theirs.free();
    mine?.free();
  }
  $('text').value = '';
  say(`Sent to ${to.name}, encrypted: MedConnect and Ghostkey cannot read it.`);
  await loadInbox();
}

async function loadInbox() {
  const { documents } = await backend('GET', '/api/documents');
  if (!documents.length) return $('documents').replaceChildren(new Text('No documents yet.'));
  // The user key, unsealed from our own verified chain with this device's keys.
  const mine = await verifiedChain(me.userId);
  const userKeys = mine.userKeys(device);
  const chains = new Map([[me.userId, mine]]);
  try {
    const items = [];
    for (const d of documents) {
      const li = document.createElement('li');
      li.dataset.id = d.id;
      li.append(`${d.from === me.name ? `To ${d.to}` : `From ${d.from}`}, ${new Date(d.sentAt * 1000).toLocaleString()}: `);
      try {
        // The author's chain says which devices may sign for them.
        if (!chains.has(d.fromUserId)) chains.set(d.fromUserId, await verifiedChain(d.fromUserId));
        const text = openEnvelope(fromBase64Url(d.envelope), { userId: me.userId, userKeys }, chains.get(d.fromUserId));
        const p = document.createElement('span');
        p.className = 'plaintext';
        p.textContent = new TextDecoder().decode(text);
        li.append(p);
      } catch (e) {
        li.append(`cannot open (${e.code ?? 'unexpected'})`);
      }
      items.push(li);
    }
    $('documents').replaceChildren(...items);
  } finally {
    userKeys.free();
    for (const c of chains.values()) c.free();
  }
}

// A strength meter for a new passphrase: the SDK's own check (the one enrolment applies).
function showStrength() {
  const text = $('passphrase').value;
  if (!text) return ($('passphrase-strength').textContent = '');
  const passphrase = Passphrase.from(text);
  try {
    const s = passphrase.strength();
    $('passphrase-strength').textContent = s.ok ? `strong enough (about ${s.bits} bits)` : s.message;
  } finally {
    passphrase.free();
  }
}

// ---------------------------------------------------------------------------------------
// "Lose every device": forget all this origin keeps in the browser.

async function loseEverything() {
  if (me) await storage.delete(deviceKeyName(me.userId));
  device?.free();
  device = undefined;
  for (const db of (await indexedDB.databases?.()) ?? []) indexedDB.deleteDatabase(db.name);
  localStorage.clear();
  sessionStorage.clear();
  location.reload();
}

// ---------------------------------------------------------------------------------------
// Development only: Ghostkey in development mode keeps the SMS and e-mail it would send,
// and shows them at GET /dev/messages. A production Ghostkey has no such view: there the
// code arrives on the user's phone or in their mailbox.

let devTimer;
async function pollDevMessages() {
  try {
    const res = await fetch(`${config.ghostkeyUrl}/dev/messages`);
    if (!res.ok) {
      clearInterval(devTimer); // development_only (403): a production Ghostkey
      throw new Error(`${res.status}`);
    }
    const { messages } = await res.json();
    $('dev-messages').replaceChildren(
      ...messages.slice(-50).reverse().map((m) => {
        const li = document.createElement('li');
        li.dataset.to = m.to;
        li.textContent = `${m.channel} to ${m.to}: ${m.body}`;
        return li;
      }),
    );
  } catch {
    $('dev-messages').replaceChildren(new Text('(no development message view at this Ghostkey)'));
  }
}

// ---------------------------------------------------------------------------------------

async function main() {
  await init();
  config = await backend('GET', '/api/config');
  gk = new GhostkeyClient(config.ghostkeyUrl);
  $('login-form').addEventListener('submit', action($('login-button'), login));
  $('enrol-form').addEventListener('submit', action($('enrol-button'), enrol));
  $('confirm-form').addEventListener('submit', action($('confirm-button'), confirm));
  $('recover-start-form').addEventListener('submit', action($('recover-start'), startRecovery));
  $('recover-verify-form').addEventListener('submit', action($('recover-verify'), verifyRecovery));
  $('recover-cancel').addEventListener('click', action($('recover-cancel'), cancelRecovery));
  $('recover-release').addEventListener('click', action($('recover-release'), releaseRecovery));
  $('send-form').addEventListener('submit', action($('send-button'), send));
  $('refresh').addEventListener('click', action($('refresh'), loadInbox));
  $('lose').addEventListener('click', action($('lose'), loseEverything));
  $('passphrase').addEventListener('input', showStrength);
  pollDevMessages();
  devTimer = setInterval(pollDevMessages, 1000);
  await refresh();
  document.body.dataset.ready = 'true'; // for the tests: the page has settled
}

main().catch(showError);
