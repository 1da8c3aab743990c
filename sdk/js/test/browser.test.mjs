// The package in headless Chromium (npm run test:browser): init() fetching the .wasm next
// to the module through import.meta.url, IndexedDbKeyStorage keeping device keys across a
// reload, and sealing and chains as in Node. Chromium: $CHROMIUM, default /usr/bin/chromium.

import assert from "node:assert/strict";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { createServer } from "node:http";
import { tmpdir } from "node:os";
import { extname, join, normalize } from "node:path";
import { after, before, test } from "node:test";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const dist = fileURLToPath(new URL("../dist/", import.meta.url));
const executablePath = process.env.CHROMIUM ?? "/usr/bin/chromium";
const types = { ".js": "text/javascript", ".wasm": "application/wasm" };

let server;
let context;
let profile;
let origin;

before(async () => {
  if (!existsSync(join(dist, "index.js"))) throw new Error("sdk/js/dist is missing: run `npm run build` first");
  if (!existsSync(executablePath)) {
    throw new Error(`no Chromium at ${executablePath}: install it (apt-get install chromium) or set CHROMIUM`);
  }
  // The page and the package from one origin, as a web app would serve them.
  server = createServer((req, res) => {
    const path = new URL(req.url, "http://x").pathname;
    if (path === "/") return res.writeHead(200, { "content-type": "text/html" }).end("<!doctype html><title>sdk</title>");
    const file = normalize(join(dist, path.replace(/^\/dist\//, "")));
    if (!path.startsWith("/dist/") || !file.startsWith(dist) || !existsSync(file)) return res.writeHead(404).end();
    res.writeHead(200, { "content-type": types[extname(file)] ?? "application/octet-stream" }).end(readFileSync(file));
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  origin = `http://127.0.0.1:${server.address().port}`;
  profile = mkdtempSync(join(tmpdir(), "ghostkey-sdk-chromium-"));
  context = await chromium.launchPersistentContext(profile, {
    executablePath,
    headless: true,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
});

after(async () => {
  await context?.close();
  server?.close();
  if (profile) rmSync(profile, { recursive: true, force: true });
});

/** Runs `body` (source of an async function of the package module) in a fresh page. */
async function inPage(body) {
  const page = await context.newPage();
  try {
    await page.goto(`${origin}/`);
    return await page.evaluate(
      async ([src]) => {
        const gk = await import("/dist/index.js");
        await gk.init();
        return await new Function("gk", `return (async () => { ${src} })()`)(gk);
      },
      [body],
    );
  } finally {
    await page.close();
  }
}

test("init() loads the module next to index.js; keys survive a reload in IndexedDB", async () => {
  const stored = await inPage(`
    const device = gk.DeviceKeys.generate();
    const storage = new gk.IndexedDbKeyStorage("ghostkey-test");
    const bytes = device.exportBytes();
    await storage.set("device", bytes);
    bytes.fill(0);
    return device.signingKey;
  `);
  const reloaded = await inPage(`
    const storage = new gk.IndexedDbKeyStorage("ghostkey-test");
    const bytes = await storage.get("device");
    const device = gk.DeviceKeys.fromBytes(bytes);
    bytes.fill(0);
    await storage.delete("device");
    return { key: device.signingKey, gone: (await storage.get("device")) === undefined };
  `);
  assert.deepEqual(reloaded, { key: stored, gone: true });
});

test("sealing, chains and envelopes work in the browser as in Node", async () => {
  const result = await inPage(`
    const app = gk.AppKey.generate("k1");
    const secret = gk.UserSecret.generate();
    const p = gk.prepareEnrolment("app_1", "u1", "k1");
    const sealed = p.virtualDevice.seal(secret);
    const opened = gk.VirtualDevice.open(sealed, secret, { appId: "app_1", userId: "u1" });
    const c0 = gk.Chain.verify([app.endorseRoot(p.unsignedRoot, "app_1", "u1")], { k1: app.publicKey });
    const device = gk.DeviceKeys.generate();
    const chain = c0.apply(c0.admitDevice(opened.keys(), device, p.userKeys));
    const env = gk.sealEnvelope({ userId: "u1", device }, [chain], new TextEncoder().encode("hello"));
    const text = new TextDecoder().decode(gk.openEnvelope(env, { userId: "u1", userKeys: chain.userKeys(device) }, chain));
    let code;
    try { gk.VirtualDevice.open(sealed, gk.UserSecret.generate(), { appId: "app_1", userId: "u1" }); } catch (e) { code = e.code; }
    return { length: chain.length, text, code, shown: String(secret) + JSON.stringify({ secret }) };
  `);
  assert.deepEqual(result, {
    length: 2,
    text: "hello",
    code: "wrong_secret",
    shown: 'UserSecret([redacted]){"secret":"UserSecret([redacted])"}',
  });
});
