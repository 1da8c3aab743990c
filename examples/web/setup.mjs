#!/usr/bin/env node
// One-time setup of the demo app provider against a local development Ghostkey:
//   1. generate the app's Ed25519 key (app-key.pem, PKCS#8, mode 0600) unless it exists;
//   2. register the app with Ghostkey:  ghostkey app add --name ... --key-id k1 --public-key <raw, base64url>
//   3. allow the page's origin:         ghostkey app origins add APP_ID ORIGIN
//   4. allow every kind of method:      ghostkey app policy set APP_ID --allowed-methods totp,sms,email,passphrase,passkey
//   5. the passkeys' relying party:     ghostkey app passkey set APP_ID --rp-id localhost
//      (the origin's host; a passkey's RP id is a domain name, never an IP address, which
//      is why the page is opened as http://localhost:3000 and not http://127.0.0.1:3000)
//   6. write config.json for server.mjs (app id, key file, kid, Ghostkey URL).
//
// The ghostkey commands act on the database of the configuration they run with, so they
// run in the directory where `ghostkey serve` runs (by default the repository root, where
// `cargo run --release -- serve` puts ./ghostkey.db).
//
// Usage: node setup.mjs [--ghostkey BIN] [--ghostkey-cwd DIR] [--ghostkey-url URL]
//                       [--origin http://localhost:3000] [--name "MedConnect (web demo)"]

import { generateKeyPairSync, createPublicKey } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';

const here = dirname(fileURLToPath(import.meta.url));
export const repoRoot = resolve(here, '..', '..');
export const defaultBin = join(repoRoot, 'target', 'release', 'ghostkey');

/** Writes a fresh Ed25519 key as PKCS#8 PEM (mode 0600); returns its raw public key, base64url. */
export function generateKey(file) {
  const { privateKey } = generateKeyPairSync('ed25519');
  writeFileSync(file, privateKey.export({ format: 'pem', type: 'pkcs8' }), { mode: 0o600 });
  return publicKeyOf(file);
}

/** The raw 32-byte Ed25519 public key of a PKCS#8 PEM file, base64url: what `app add` takes. */
export function publicKeyOf(file) {
  return createPublicKey(readFileSync(file, 'utf8')).export({ format: 'jwk' }).x;
}

/** Runs the ghostkey CLI in cwd (so that it finds the same database as the server). */
export function ghostkey(bin, cwd, args, env = process.env) {
  if (!existsSync(bin)) {
    throw new Error(`${bin} is missing: cd ${repoRoot} && cargo build --release --bin ghostkey`);
  }
  return execFileSync(bin, args, { cwd, env, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] }).trim();
}

/** Registers the app with its key k1; returns the app id Ghostkey printed. */
export function registerApp(bin, cwd, { name, kid, publicKey }, env) {
  // `--public-key=...`: a base64url key may start with '-'.
  const out = ghostkey(bin, cwd, ['app', 'add', '--name', name, '--key-id', kid, `--public-key=${publicKey}`], env);
  const id = /app_[0-9a-f]{24}/.exec(out);
  if (!id) throw new Error(`ghostkey app add printed no app id: ${out}`);
  return id[0];
}

/**
 * On a local demo every browser (every user) comes from 127.0.0.1, one client address:
 * the default 60 requests per address per minute would soon answer address_rate_limited.
 */
export function raiseAddressLimit(bin, cwd, appId, env) {
  return ghostkey(bin, cwd, ['app', 'policy', 'set', appId, '--requests-per-address-per-minute', '1000'], env);
}

/** Whether this Ghostkey database knows the app (a fresh database does not). */
export function appKnown(bin, cwd, appId, env) {
  try {
    ghostkey(bin, cwd, ['app', 'show', appId], env);
    return true;
  } catch {
    return false;
  }
}

/** Allows the page's origin to call Ghostkey for this app (CORS). */
export function allowOrigin(bin, cwd, appId, origin, env) {
  return ghostkey(bin, cwd, ['app', 'origins', 'add', appId, origin], env);
}

/** The method kinds the page offers. Passphrases and passkeys are off by default: the
 *  operator allows them per app. */
export const METHODS = 'totp,sms,email,passphrase,passkey';

export function allowMethods(bin, cwd, appId, env) {
  return ghostkey(bin, cwd, ['app', 'policy', 'set', appId, '--allowed-methods', METHODS], env);
}

/**
 * The relying-party id of the app's passkeys: a domain name (never an IP address) that the
 * page's host is, or is a subdomain of. Passkeys are made and used only from the allowed
 * origins under it.
 */
export function setPasskeyRpId(bin, cwd, appId, rpId, env) {
  return ghostkey(bin, cwd, ['app', 'passkey', 'set', appId, '--rp-id', rpId], env);
}

/** Whether a host can be a passkey relying-party id (a domain name, not an IP address). */
export function isDomainName(host) {
  return /^[a-z0-9-]+(\.[a-z0-9-]+)*$/i.test(host) && !/^[0-9.]+$/.test(host);
}

if (import.meta.url === pathToFileURL(process.argv[1]).href) {
  const { values } = parseArgs({
    options: {
      ghostkey: { type: 'string', default: process.env.GHOSTKEY_BIN ?? defaultBin },
      'ghostkey-cwd': { type: 'string', default: repoRoot },
      'ghostkey-url': { type: 'string', default: 'http://127.0.0.1:8080' },
      origin: { type: 'string', default: 'http://localhost:3000' },
      name: { type: 'string', default: 'MedConnect (web demo)' },
      kid: { type: 'string', default: 'k1' },
    },
  });
  try {
    const keyFile = join(here, 'app-key.pem');
    const configFile = join(here, 'config.json');
    const saved = existsSync(configFile) ? JSON.parse(readFileSync(configFile, 'utf8')) : {};
    let publicKey;
    if (existsSync(keyFile)) {
      publicKey = publicKeyOf(keyFile);
      console.log(`app key: ${keyFile} (kept)`);
    } else {
      publicKey = generateKey(keyFile);
      console.log(`app key: ${keyFile} (new)`);
    }
    let appId = saved.appId;
    if (appId && saved.publicKey === publicKey && appKnown(values.ghostkey, values['ghostkey-cwd'], appId)) {
      console.log(`app: ${appId} (already registered by an earlier run)`);
    } else {
      appId = registerApp(values.ghostkey, values['ghostkey-cwd'], { name: values.name, kid: values.kid, publicKey });
      console.log(`app: ${appId} (registered)`);
      raiseAddressLimit(values.ghostkey, values['ghostkey-cwd'], appId);
    }
    allowOrigin(values.ghostkey, values['ghostkey-cwd'], appId, values.origin);
    console.log(`allowed origin: ${values.origin}`);
    allowMethods(values.ghostkey, values['ghostkey-cwd'], appId);
    console.log(`allowed methods: ${METHODS}`);
    const host = new URL(values.origin).hostname;
    if (isDomainName(host)) {
      setPasskeyRpId(values.ghostkey, values['ghostkey-cwd'], appId, host);
      console.log(`passkeys: relying-party id ${host}`);
    } else {
      console.log(`passkeys: not set up, ${host} is not a domain name (open the page as http://localhost:PORT)`);
    }
    const port = Number(new URL(values.origin).port || 80);
    writeFileSync(
      configFile,
      `${JSON.stringify({ appId, keyFile, kid: values.kid, publicKey, ghostkeyUrl: values['ghostkey-url'], port }, null, 2)}\n`,
    );
    console.log(`wrote ${configFile}; now: node server.mjs, and open ${values.origin}`);
  } catch (e) {
    console.error(`setup.mjs: ${e.stderr?.toString().trim() || e.message}`);
    process.exit(1);
  }
}
