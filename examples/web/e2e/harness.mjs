// What the browser tests stand on: a real `ghostkey serve` (fresh development database in a
// temporary directory, free loopback port), the app registered with the real CLI, the demo
// backend (server.mjs) as a child process, and Debian's Chromium driven by playwright-core.
// Everything listens on 127.0.0.1 only. A missing prerequisite fails the test with what to
// do: these tests never skip.

import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, createWriteStream } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import {
  generateKey,
  registerApp,
  allowOrigin,
  allowMethods,
  setPasskeyRpId,
  raiseAddressLimit,
  ghostkey,
  defaultBin,
  repoRoot,
} from '../setup.mjs';

const here = dirname(fileURLToPath(import.meta.url));
export const webDir = join(here, '..');
export const ghostkeyBin = process.env.GHOSTKEY_BIN ?? defaultBin;
export const chromiumPath = process.env.CHROMIUM ?? '/usr/bin/chromium';
export { repoRoot };

/** Throws, saying what to do, when Chromium, the server binary or the SDK build is missing. */
export function checkPrerequisites() {
  const missing = [];
  if (!existsSync(chromiumPath)) {
    missing.push(`Chromium is missing at ${chromiumPath} (apt-get install chromium, or set CHROMIUM)`);
  }
  if (!existsSync(ghostkeyBin)) {
    missing.push(
      `the ghostkey binary is missing at ${ghostkeyBin} (cd ${repoRoot} && cargo build --release --bin ghostkey, or set GHOSTKEY_BIN)`,
    );
  }
  const sdk = join(webDir, 'node_modules', '@ghostkey', 'client', 'dist', 'index.js');
  if (!existsSync(sdk)) {
    missing.push(
      `the SDK build is missing at ${sdk} (cd ${join(repoRoot, 'sdk', 'js')} && npm ci && npm run build; then npm ci in examples/web)`,
    );
  }
  if (missing.length) throw new Error(`cannot run the browser tests:\n  - ${missing.join('\n  - ')}`);
}

// The server binary must not see the caller's GHOSTKEY_* variables (a GHOSTKEY_CONFIG of the
// developer's would point it at another database).
function cleanEnv(extra = {}) {
  const env = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('GHOSTKEY_')) env[k] = v;
  return { ...env, ...extra };
}

/** Resolves with the first match of `re` in the stream's lines; rejects on exit or timeout. */
function waitForLine(child, stream, re, what, timeoutMs = 30_000) {
  return new Promise((resolve, reject) => {
    let buffered = '';
    let seen = '';
    const timer = setTimeout(() => done(new Error(`${what}: no line matching ${re} in ${timeoutMs} ms:\n${seen}`)), timeoutMs);
    const onData = (chunk) => {
      buffered += chunk.toString();
      let nl;
      while ((nl = buffered.indexOf('\n')) >= 0) {
        const line = buffered.slice(0, nl);
        buffered = buffered.slice(nl + 1);
        seen += `${line}\n`;
        const m = re.exec(line);
        if (m) return done(null, m);
      }
    };
    const onExit = (code) => done(new Error(`${what} exited (${code}) before it was ready:\n${seen}`));
    function done(err, m) {
      clearTimeout(timer);
      stream.off('data', onData);
      child.off('exit', onExit);
      err ? reject(err) : resolve(m);
    }
    stream.on('data', onData);
    child.on('exit', onExit);
  });
}

function stop(child) {
  if (!child || child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
    child.once('exit', () => {
      clearTimeout(timer);
      resolve();
    });
    child.kill('SIGTERM');
  });
}

/**
 * A fresh Ghostkey (development mode) in a temporary directory; `cli(args)` runs the admin
 * CLI on the same database.
 */
export async function startGhostkey() {
  const dir = mkdtempSync(join(tmpdir(), 'ghostkey-web-'));
  const env = cleanEnv({ GHOSTKEY_SERVER__LISTEN: '127.0.0.1:0', RUST_LOG: 'info' });
  const child = spawn(ghostkeyBin, ['serve'], { cwd: dir, env, stdio: ['ignore', 'ignore', 'pipe'] });
  // Keep the whole log next to the database, for a failed test's post-mortem.
  child.stderr.pipe(createWriteStream(join(dir, 'ghostkey.log')));
  const m = await waitForLine(child, child.stderr, /ghostkey::server: listening addr=(\S+)/, 'ghostkey serve');
  const url = `http://${m[1]}`;
  return {
    url,
    dir,
    env,
    cli: (args) => ghostkey(ghostkeyBin, dir, args, env),
    async close() {
      await stop(child);
      if (!process.env.KEEP_TEST_DIRS) rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** Registers the demo app (fresh key) with a Ghostkey from startGhostkey(). */
export function registerDemoApp(gk) {
  const keyFile = join(gk.dir, 'app-key.pem');
  const publicKey = generateKey(keyFile);
  const appId = registerApp(ghostkeyBin, gk.dir, { name: 'MedConnect (browser tests)', kid: 'k1', publicKey }, gk.env);
  // Every browser of the tests comes from 127.0.0.1: one address for all the users.
  raiseAddressLimit(ghostkeyBin, gk.dir, appId, gk.env);
  // Passphrases and passkeys too, as setup.mjs does; the page is opened on localhost.
  allowMethods(ghostkeyBin, gk.dir, appId, gk.env);
  setPasskeyRpId(ghostkeyBin, gk.dir, appId, 'localhost', gk.env);
  return { appId, keyFile, publicKey };
}

/** Starts server.mjs on a free port (its page on http://localhost:PORT, the origin passkeys
 *  need); `allow` registers that origin with Ghostkey. */
export async function startBackend(gk, app, { allow = true } = {}) {
  const child = spawn(
    process.execPath,
    [join(webDir, 'server.mjs'), '--port', '0', '--host', '127.0.0.1', '--ghostkey-url', gk.url,
      '--app-id', app.appId, '--key-file', app.keyFile, '--kid', 'k1', '--config', '/nonexistent'],
    { cwd: webDir, stdio: ['ignore', 'pipe', 'pipe'] },
  );
  let log = '';
  child.stdout.on('data', (c) => (log += c));
  child.stderr.on('data', (c) => (log += c));
  const m = await waitForLine(child, child.stdout, /^listening on (http:\/\/\S+)/, 'server.mjs');
  const url = m[1];
  if (allow) allowOrigin(ghostkeyBin, gk.dir, app.appId, url, gk.env);
  return { url, log: () => log, close: () => stop(child) };
}

/** Chromium, headless, with a fresh temporary profile (Playwright makes and removes it). */
export async function launchBrowser() {
  return chromium.launch({
    executablePath: chromiumPath,
    headless: true,
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
}

/**
 * A new browser context (its own storage: one "device") on the page. Console errors of the
 * page are collected, so that a test can show them when it fails.
 */
export async function openDevice(browser, url) {
  const context = await browser.newContext();
  const page = await context.newPage();
  const console_ = [];
  page.on('console', (m) => console_.push(`${m.type()}: ${m.text()}`));
  page.on('pageerror', (e) => console_.push(`pageerror: ${e.message}`));
  await page.goto(url);
  return { context, page, console: console_ };
}

/** Everything a test file needs, started once; `close()` stops it all. */
export async function startAll() {
  checkPrerequisites();
  const gk = await startGhostkey();
  const app = registerDemoApp(gk);
  const backend = await startBackend(gk, app);
  const browser = await launchBrowser();
  return {
    gk,
    app,
    backend,
    browser,
    async close() {
      await browser.close().catch(() => {});
      await backend.close();
      await gk.close();
    },
  };
}

/**
 * A virtual WebAuthn authenticator in `page`'s tab, through the DevTools protocol: a
 * platform authenticator (CTAP2, internal) with resident keys and user verification that
 * succeeds (the user's fingerprint, face or PIN), presence given automatically. Its
 * credentials can be read (`credentials()`) and added (`add(credential)`): exporting one
 * from a lost device's authenticator and adding it to a new device's models a passkey
 * synced by a password manager.
 */
export async function virtualAuthenticator(page) {
  const cdp = await page.context().newCDPSession(page);
  await cdp.send('WebAuthn.enable', { enableUI: false });
  const { authenticatorId } = await cdp.send('WebAuthn.addVirtualAuthenticator', {
    options: {
      protocol: 'ctap2',
      transport: 'internal',
      hasResidentKey: true,
      hasUserVerification: true,
      isUserVerified: true,
      automaticPresenceSimulation: true,
    },
  });
  return {
    id: authenticatorId,
    async credentials() {
      return (await cdp.send('WebAuthn.getCredentials', { authenticatorId })).credentials;
    },
    add: (credential) => cdp.send('WebAuthn.addCredential', { authenticatorId, credential }),
    /** Whether the user passes verification (false: the fingerprint is not recognised). */
    setUserVerified: (isUserVerified) => cdp.send('WebAuthn.setUserVerified', { authenticatorId, isUserVerified }),
  };
}
