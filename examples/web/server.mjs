#!/usr/bin/env node
// The health platform's backend: the *app provider* in Ghostkey's terms.
//
// A DEMO, not a product: its login is a bare name (no password), its sessions and users
// live in memory (or in a JSON file with --data-file), and it serves the page itself.
// What it shows is the part every real app provider must do, and only that:
//   - keep one user secret per user (32 random bytes, base64url), made once, handed only
//     to that user once logged in;
//   - mint short-lived assertions (EdDSA JWT, header kid) for its logged-in user only;
//   - endorse the user's chain root at enrolment, after checking it is a root for this
//     app, this user and its own key;
//   - store encrypted documents (envelopes: opaque bytes to it) and list a user's inbox.
//
// Usage: node server.mjs [--ghostkey-url URL] [--app-id ID] [--key-file FILE] [--kid KID]
//                        [--service-id ID] [--port N] [--host H] [--data-file FILE]
// Each flag also reads from the environment (GHOSTKEY_URL, APP_ID, APP_KEY_FILE, APP_KID,
// GHOSTKEY_SERVICE_ID, PORT, HOST, DATA_FILE) and from config.json (written by setup.mjs).
// Port 0 picks a free port; the bound URL is printed as "listening on http://...".

import { createServer } from 'node:http';
import { createHash, createPrivateKey, createPublicKey, randomBytes } from 'node:crypto';
import { readFileSync, existsSync, writeFileSync, renameSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { dirname, join, extname, resolve, sep } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import { SignJWT, importPKCS8 } from 'jose';

const here = dirname(fileURLToPath(import.meta.url));

export function loadConfig(argv = process.argv.slice(2), env = process.env) {
  const { values } = parseArgs({
    args: argv,
    options: {
      'ghostkey-url': { type: 'string' },
      'app-id': { type: 'string' },
      'key-file': { type: 'string' },
      kid: { type: 'string' },
      'service-id': { type: 'string' },
      port: { type: 'string' },
      host: { type: 'string' },
      'data-file': { type: 'string' },
      config: { type: 'string' },
    },
  });
  const file = values.config ?? env.WEB_CONFIG ?? join(here, 'config.json');
  const saved = existsSync(file) ? JSON.parse(readFileSync(file, 'utf8')) : {};
  const pick = (flag, envName, key, fallback) =>
    values[flag] ?? env[envName] ?? saved[key] ?? fallback;
  const config = {
    ghostkeyUrl: pick('ghostkey-url', 'GHOSTKEY_URL', 'ghostkeyUrl', 'http://127.0.0.1:8080'),
    appId: pick('app-id', 'APP_ID', 'appId', undefined),
    keyFile: pick('key-file', 'APP_KEY_FILE', 'keyFile', join(here, 'app-key.pem')),
    kid: pick('kid', 'APP_KID', 'kid', 'k1'),
    // The audience of every assertion: the Ghostkey deployment's service_id.
    serviceId: pick('service-id', 'GHOSTKEY_SERVICE_ID', 'serviceId', 'ghostkey-dev'),
    port: Number(pick('port', 'PORT', 'port', 3000)),
    host: pick('host', 'HOST', 'host', '127.0.0.1'),
    dataFile: pick('data-file', 'DATA_FILE', 'dataFile', undefined),
  };
  if (!config.appId) throw new Error('no app id: run setup.mjs, or give --app-id / APP_ID');
  config.ghostkeyUrl = config.ghostkeyUrl.replace(/\/+$/, '');
  return config;
}

// ---------------------------------------------------------------------------------------
// The app key: one Ed25519 key, PKCS#8 PEM. It signs assertions and endorses chain roots.

async function loadAppKey(sdk, keyFile, kid) {
  const pem = readFileSync(keyFile, 'utf8');
  if (createPrivateKey(pem).asymmetricKeyType !== 'ed25519') throw new Error(`${keyFile}: not an Ed25519 key`);
  return {
    kid,
    // jose signs the assertions...
    signing: await importPKCS8(pem, 'EdDSA'),
    // ...and the SDK's AppKey endorses root blocks (it checks what it signs).
    endorser: sdk.AppKey.fromPkcs8Pem(kid, pem),
    // The raw 32-byte public key, base64url: what the operator registered and what the
    // page pins to verify device chains.
    publicKey: createPublicKey(pem).export({ format: 'jwk' }).x,
  };
}

const PURPOSES = new Set(['enroll', 'recover', 'manage']);

// PROTOCOL.md §2: exactly iss, sub, aud, iat, exp, jti, purpose; header alg EdDSA + kid.
export async function mintAssertion(config, key, userId, purpose) {
  const now = Math.floor(Date.now() / 1000);
  return new SignJWT({ purpose })
    .setProtectedHeader({ alg: 'EdDSA', kid: key.kid, typ: 'JWT' })
    .setIssuer(config.appId)
    .setSubject(userId)
    .setAudience(config.serviceId)
    .setIssuedAt(now)
    .setExpirationTime(now + 120) // at most 300 s; 120 leaves room for a slow user
    .setJti(randomBytes(16).toString('base64url'))
    .sign(key.signing);
}

// ---------------------------------------------------------------------------------------
// State: users, sessions, documents. In memory; written to --data-file when given.

function openState(dataFile) {
  const state = { users: {}, documents: [] };
  if (dataFile && existsSync(dataFile)) Object.assign(state, JSON.parse(readFileSync(dataFile, 'utf8')));
  const save = () => {
    if (!dataFile) return;
    const tmp = `${dataFile}.tmp`;
    writeFileSync(tmp, JSON.stringify(state), { mode: 0o600 }); // it holds user secrets
    renameSync(tmp, dataFile);
  };
  return { state, save };
}

const NAME = /^[a-z][a-z0-9-]{0,31}$/;

// ---------------------------------------------------------------------------------------
// HTTP

class HttpError extends Error {
  constructor(status, code, detail) {
    super(detail ?? code);
    this.status = status;
    this.code = code;
  }
}

const TYPES = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.mjs': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.wasm': 'application/wasm',
  '.json': 'application/json',
  '.map': 'application/json',
  '.d.ts': 'text/plain; charset=utf-8',
};

async function readJson(req, limit = 256 * 1024) {
  if (!/^application\/json\b/.test(req.headers['content-type'] ?? '')) {
    throw new HttpError(415, 'unsupported_media_type');
  }
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > limit) throw new HttpError(413, 'body_too_large');
    chunks.push(chunk);
  }
  try {
    const body = JSON.parse(Buffer.concat(chunks).toString('utf8'));
    if (body === null || typeof body !== 'object' || Array.isArray(body)) throw new Error();
    return body;
  } catch {
    throw new HttpError(400, 'malformed_body');
  }
}

function send(res, status, body, headers = {}) {
  const text = body === undefined ? '' : JSON.stringify(body);
  res.writeHead(status, {
    'content-type': 'application/json',
    'cache-control': 'no-store',
    ...headers,
  });
  res.end(text);
}

function isB64url(s, max = 1 << 20) {
  return typeof s === 'string' && s.length > 0 && s.length <= max && /^[A-Za-z0-9_-]+$/.test(s);
}

export async function start(config, { log = console.log } = {}) {
  // The SDK (built WebAssembly + ESM): used here to endorse roots, and served to the page
  // from its package's dist/.
  const sdkDir = join(here, 'node_modules', '@ghostkey', 'client', 'dist');
  if (!existsSync(join(sdkDir, 'index.js'))) {
    throw new Error(
      `${sdkDir} is missing: build the SDK (cd sdk/js && npm ci && npm run build), then npm ci here`,
    );
  }
  const sdk = await import(pathToFileURL(join(sdkDir, 'index.js')).href);
  await sdk.init();
  const key = await loadAppKey(sdk, config.keyFile, config.kid);
  const { state, save } = openState(config.dataFile);
  const sessions = new Map(); // token -> user name; gone when the backend restarts

  const session = (req) => {
    const m = /^Bearer (\S+)$/.exec(req.headers.authorization ?? '');
    const name = m && sessions.get(m[1]);
    if (!name) throw new HttpError(401, 'not_logged_in', 'log in first');
    return state.users[name];
  };

  const routes = {
    'GET /api/config': async () => ({
      ghostkeyUrl: config.ghostkeyUrl,
      appId: config.appId,
      kid: key.kid, // the key that endorses roots
      // The keys the page pins to verify device chains (every key the app ever had).
      appKeys: { [key.kid]: key.publicKey },
    }),

    // Demo login: a name is enough. A real app authenticates its users its own way.
    'POST /api/login': async (req) => {
      const body = await readJson(req);
      const name = String(body.name ?? '').trim().toLowerCase();
      if (!NAME.test(name)) throw new HttpError(422, 'invalid_name', 'a-z, 0-9 and -, up to 32');
      if (!state.users[name]) {
        state.users[name] = {
          name,
          // Pseudonymous: Ghostkey never learns the name.
          userId: `u-${randomBytes(8).toString('hex')}`,
          // The user secret, made once per user and kept here. Ghostkey never sees it.
          userSecret: randomBytes(32).toString('base64url'),
          createdAt: Math.floor(Date.now() / 1000),
        };
        save();
      }
      const token = randomBytes(32).toString('base64url');
      sessions.set(token, name);
      return { token, name, userId: state.users[name].userId };
    },

    'GET /api/me': async (req) => {
      const user = session(req);
      return { name: user.name, userId: user.userId };
    },

    // The user secret, to the logged-in user only: it opens their sealed virtual device.
    'GET /api/secret': async (req) => ({ userSecret: session(req).userSecret }),

    // One assertion per Ghostkey request (each jti is single use).
    'POST /api/assertions': async (req) => {
      const user = session(req);
      const { purpose } = await readJson(req);
      if (!PURPOSES.has(purpose)) throw new HttpError(422, 'invalid_purpose');
      return { assertion: await mintAssertion(config, key, user.userId, purpose) };
    },

    // Enrolment: sign the user's root block. The SDK's helper refuses anything but a root
    // for this app, this user and this key: the backend signs no other user's chain.
    'POST /api/endorse-root': async (req) => {
      const user = session(req);
      const { root_block: root } = await readJson(req);
      if (!isB64url(root, 4096)) throw new HttpError(422, 'invalid_field', 'root_block');
      try {
        const signed = key.endorser.endorseRoot(Buffer.from(root, 'base64url'), config.appId, user.userId);
        return { root_block: Buffer.from(signed).toString('base64url') };
      } catch (e) {
        // endorse_refused: not a root for this app, this user and this key.
        throw new HttpError(422, e.code ?? 'endorse_refused', e.message);
      }
    },

    // Who is this name? The sender needs the recipient's user id to fetch their chain.
    'GET /api/users': async (req, url) => {
      session(req);
      const user = state.users[String(url.searchParams.get('name') ?? '').toLowerCase()];
      if (!user) throw new HttpError(404, 'unknown_user');
      return { name: user.name, userId: user.userId };
    },

    // Documents are envelopes: the backend stores bytes it cannot read.
    'POST /api/documents': async (req) => {
      const from = session(req);
      const body = await readJson(req);
      const to = state.users[String(body.to ?? '').toLowerCase()];
      if (!to) throw new HttpError(404, 'unknown_user');
      if (!isB64url(body.envelope, 200_000)) throw new HttpError(422, 'invalid_field', 'envelope');
      const doc = {
        id: `d-${randomBytes(8).toString('hex')}`,
        from: from.name,
        fromUserId: from.userId,
        to: to.name,
        toUserId: to.userId,
        envelope: body.envelope,
        sentAt: Math.floor(Date.now() / 1000),
      };
      state.documents.push(doc);
      save();
      return { id: doc.id };
    },

    'GET /api/documents': async (req) => {
      const me = session(req);
      return {
        documents: state.documents.filter((d) => d.to === me.name || d.from === me.name),
      };
    },
  };

  // A strict Content-Security-Policy: device keys sit in IndexedDB, readable by any script
  // of this origin, so only this origin's own scripts may run. Scripts: ours, the inline
  // import map by its hash, and WebAssembly compilation ('wasm-unsafe-eval'). Connections:
  // this backend and Ghostkey. Images: the TOTP QR code arrives as a data: URL.
  const html = readFileSync(join(here, 'index.html'), 'utf8');
  const importMap = /<script type="importmap">([\s\S]*?)<\/script>/.exec(html)[1];
  const csp = [
    "default-src 'none'",
    `script-src 'self' 'wasm-unsafe-eval' 'sha256-${createHash('sha256').update(importMap).digest('base64')}'`,
    "style-src 'self'",
    "img-src 'self' data:",
    `connect-src 'self' ${new URL(config.ghostkeyUrl).origin}`,
    "base-uri 'none'",
    "form-action 'self'",
    "frame-ancestors 'none'",
  ].join('; ');

  const serveFile = async (res, file) => {
    try {
      const body = await readFile(file);
      const ext = file.endsWith('.d.ts') ? '.d.ts' : extname(file);
      res.writeHead(200, {
        'content-type': TYPES[ext] ?? 'application/octet-stream',
        'cache-control': 'no-store',
        'x-content-type-options': 'nosniff',
        ...(ext === '.html' ? { 'content-security-policy': csp, 'referrer-policy': 'no-referrer' } : {}),
      });
      res.end(body);
    } catch {
      send(res, 404, { code: 'not_found' });
    }
  };

  const PAGE = new Set(['/index.html', '/app.js', '/style.css']);
  const server = createServer(async (req, res) => {
    const url = new URL(req.url, 'http://localhost');
    const route = routes[`${req.method} ${url.pathname}`];
    try {
      if (route) return send(res, 200, await route(req, url));
      if (req.method !== 'GET') throw new HttpError(404, 'not_found');
      if (url.pathname === '/') return serveFile(res, join(here, 'index.html'));
      if (PAGE.has(url.pathname)) return serveFile(res, join(here, url.pathname));
      if (url.pathname.startsWith('/sdk/')) {
        const file = resolve(sdkDir, `.${url.pathname.slice(4)}`);
        if (!file.startsWith(sdkDir + sep)) throw new HttpError(404, 'not_found');
        return serveFile(res, file);
      }
      throw new HttpError(404, 'not_found');
    } catch (e) {
      if (!(e instanceof HttpError)) {
        log(`error on ${req.method} ${url.pathname}: ${e.message}`); // never a body: secrets
        e = new HttpError(500, 'internal');
      }
      send(res, e.status, { code: e.code, detail: e.message === e.code ? undefined : e.message });
    }
  });
  await new Promise((ok, fail) => {
    server.once('error', fail);
    server.listen(config.port, config.host, ok);
  });
  const { port } = server.address();
  // On a loopback address the page is opened as http://localhost:PORT: passkeys need a
  // domain name for their relying party (localhost), never an IP address.
  const loopback = ['127.0.0.1', '::1', 'localhost'].includes(config.host);
  const url = `http://${loopback ? 'localhost' : config.host}:${port}`;
  return { server, url, close: () => new Promise((ok) => server.close(ok)) };
}

if (import.meta.url === pathToFileURL(process.argv[1]).href) {
  try {
    const config = loadConfig();
    const { url } = await start(config);
    console.log(`listening on ${url}`);
    console.log(`  app ${config.appId}, Ghostkey ${config.ghostkeyUrl} (service id ${config.serviceId})`);
    console.log(`  this origin must be allowed: ghostkey app origins add ${config.appId} ${url}`);
  } catch (e) {
    console.error(`server.mjs: ${e.message}`);
    process.exit(1);
  }
}
