// What a user does on the page, step by step, as the tests drive it. Each helper clicks
// and types like a person would and waits for what the page shows next.

import { totp } from './totp.mjs';

const TIMEOUT = 20_000;

/** Waits until the page's script has loaded the SDK and settled. */
export async function ready(page) {
  await page.waitForSelector('body[data-ready="true"]', { timeout: TIMEOUT });
}

/** The error the page shows (its stable code), or null when none is visible. */
export async function errorCode(page) {
  if (!(await page.locator('#error').isVisible())) return null;
  return page.locator('#error-code').textContent();
}

/** Waits for the page to show the error `code`; returns its message. */
export async function expectError(page, code) {
  await page.locator('#error').waitFor({ state: 'visible', timeout: TIMEOUT });
  await page.waitForFunction(
    (c) => document.getElementById('error-code').textContent === c,
    code,
    { timeout: TIMEOUT },
  ).catch(async () => {
    throw new Error(`expected error ${code}, the page shows ${await page.locator('#error').textContent()}`);
  });
  return page.locator('#error-message').textContent();
}

/** Fails with the page's error when one shows up before `selector` is visible. */
export async function waitVisible(page, selector) {
  const shown = page.locator(selector).waitFor({ state: 'visible', timeout: TIMEOUT }).then(() => null);
  const failed = page.locator('#error').waitFor({ state: 'visible', timeout: TIMEOUT }).then(async () =>
    page.locator('#error').textContent());
  const error = await Promise.race([shown, failed]);
  if (error) throw new Error(`waiting for ${selector}, the page shows: ${error}`);
}

export async function login(page, name) {
  await ready(page);
  await page.fill('#name', name);
  await page.click('#login-button');
  await waitVisible(page, '#account');
  await page.waitForFunction(() => document.getElementById('device-state').textContent !== '…');
}

/** Number of development messages the page shows for `to`. */
export async function devCount(page, to) {
  return page.locator(`#dev-messages li[data-to="${to}"]`).count();
}

/**
 * The code of the newest development message to `to`, once there are more than `before`
 * messages to it (read from the page's development view, as a developer would).
 */
export async function devCode(page, to, before) {
  const li = page.locator(`#dev-messages li[data-to="${to}"]`);
  await page.waitForFunction(
    ([sel, n]) => document.querySelectorAll(sel).length > n,
    [`#dev-messages li[data-to="${to}"]`, before],
    { timeout: TIMEOUT },
  );
  const text = await li.first().textContent();
  const m = /: (\d{4,10}) is your .* verification code/.exec(text);
  if (!m) throw new Error(`no code in the newest message to ${to}: ${text}`);
  return m[1];
}

/** Enrols the logged-in user with an SMS method and confirms it with the code. */
export async function enrolSms(page, phone, e164) {
  return enrolWithCode(page, 'sms', '#phone', phone, e164);
}

/** Enrols the logged-in user with an e-mail method and confirms it with the code. */
export async function enrolEmail(page, address) {
  return enrolWithCode(page, 'email', '#email', address, address);
}

// `to`: the destination as Ghostkey normalised it, as the development view shows it.
async function enrolWithCode(page, kind, field, destination, to) {
  await waitVisible(page, '#enrol');
  const before = await devCount(page, to);
  await page.check(`input[name=kind][value=${kind}]`);
  await page.fill(field, destination);
  await page.click('#enrol-button');
  await waitVisible(page, '#confirm');
  const code = await devCode(page, to, before);
  await page.fill('#confirm-code', code);
  await page.click('#confirm-button');
  await waitVisible(page, '#send');
}

/** Enrols with TOTP: reads the otpauth URI under the QR code and plays the authenticator. */
export async function enrolTotp(page) {
  await waitVisible(page, '#enrol');
  await page.check('input[name=kind][value=totp]');
  await page.click('#enrol-button');
  await waitVisible(page, '#totp');
  const qr = await page.locator('#totp-qr').evaluate((img) => img.decode().then(() => [img.naturalWidth, img.naturalHeight]));
  if (!(qr[0] > 0 && qr[1] > 0)) throw new Error('the TOTP QR code does not show');
  const uri = await page.locator('#totp-uri').textContent();
  await page.fill('#confirm-code', totp(uri));
  await page.click('#confirm-button');
  await waitVisible(page, '#send');
  return uri;
}

/** Enrols with a passphrase: typed once (checked and derived on the page), then typed
 *  again to confirm it (`confirmWith`, the same by default). */
export async function enrolPassphrase(page, passphrase, confirmWith = passphrase) {
  await startPassphraseEnrolment(page, passphrase);
  await waitVisible(page, '#confirm');
  await page.fill('#confirm-passphrase', confirmWith);
  await page.click('#confirm-button');
  await waitVisible(page, '#send');
}

/** Picks the passphrase method, types it and presses Enrol (no waiting). */
export async function startPassphraseEnrolment(page, passphrase) {
  await waitVisible(page, '#enrol');
  await page.check('input[name=kind][value=passphrase]');
  await page.fill('#passphrase', passphrase);
  await page.click('#enrol-button');
}

/** Enrols with a passkey named `name`: Enrol, then "Create the passkey" (the browser's
 *  WebAuthn; a test gives the tab a virtual authenticator first). */
export async function enrolPasskey(page, name) {
  await waitVisible(page, '#enrol');
  await page.check('input[name=kind][value=passkey]');
  if (name) await page.fill('#passkey-name', name);
  await page.click('#enrol-button');
  await waitVisible(page, '#confirm');
  await page.click('#confirm-button');
  await waitVisible(page, '#send');
}

/** Types the passphrase into the recovery form and presses Recover. */
export async function typeRecoveryPassphrase(page, passphrase) {
  await page.fill('#recover-passphrase', passphrase);
  await page.click('#recover-verify');
}

export async function sendDocument(page, to, text) {
  await page.fill('#to', to);
  await page.fill('#text', text);
  await page.click('#send-button');
  await page.waitForFunction(
    (t) => [...document.querySelectorAll('#documents .plaintext')].some((e) => e.textContent === t),
    text,
    { timeout: TIMEOUT },
  );
}

/** The plaintexts the page shows in its document list, after a refresh. */
export async function readDocuments(page) {
  await page.click('#refresh');
  await page.waitForFunction(() => !document.getElementById('refresh').disabled);
  return page.locator('#documents li').allTextContents();
}

/** Presses "Lose every device" and waits for the page to come back, logged out. */
export async function loseEveryDevice(page) {
  await Promise.all([page.waitForEvent('load'), page.click('#lose')]);
  await ready(page);
  await waitVisible(page, '#login');
}

/** Starts a recovery on the logged-in page; returns the number of messages before. */
export async function startRecovery(page, e164) {
  await waitVisible(page, '#recover');
  const before = e164 ? await devCount(page, e164) : 0;
  await page.click('#recover-start');
  await waitVisible(page, '#recover-verify-form');
  return before;
}

export async function typeRecoveryCode(page, code) {
  await page.fill('#recover-code', code);
  await page.click('#recover-verify');
}
