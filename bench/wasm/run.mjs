// Benchmarks of @ghostkey/client's WebAssembly core, printed (not asserted):
//
// - the gzipped size of the .wasm (target: at most 300 KiB);
// - sealing and opening a virtual device per second, in Node;
// - deriving a passphrase verifier (Argon2id, version 1: 19 MiB, 2 passes), in Node and
//   Chromium, in milliseconds;
// - verifying the same 1,000-block device chain natively (Rust, release) and in
//   WebAssembly, in Node and in headless Chromium, as a ratio to native (target: at most 3x).
//
// Run from the repository root, after building the package:
//
//   (cd sdk/js && npm ci && npm run build)
//   (cd bench/wasm && npm ci)            # playwright-core, for the Chromium figure
//   node bench/wasm/run.mjs              # --no-browser: Node only
//
// Chromium: $CHROMIUM, default /usr/bin/chromium, with a fresh profile directory.

import { spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync } from "node:fs";
import { createServer } from "node:http";
import { tmpdir } from "node:os";
import { extname, join, normalize } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { gzipSync } from "node:zlib";

const repo = fileURLToPath(new URL("../../", import.meta.url));
const dist = join(repo, "sdk/js/dist");
const wasmFile = join(dist, "wasm/ghostkey_wasm_bg.wasm");
const BLOCKS = 1000;
const withBrowser = !process.argv.includes("--no-browser");

function fail(message) {
  console.error(`bench/wasm: ${message}`);
  process.exit(1);
}

if (!existsSync(wasmFile)) fail("sdk/js/dist is missing: run (cd sdk/js && npm ci && npm run build) first");

/** Runs `f` for at least `minMs` and 3 times; the mean milliseconds per run. */
async function msPerRun(f, minMs = 1000) {
  await f();
  let runs = 0;
  const start = performance.now();
  while (performance.now() - start < minMs || runs < 3) {
    await f();
    runs++;
  }
  return (performance.now() - start) / runs;
}

// 1. Size.
const raw = statSync(wasmFile).size;
const gzipped = gzipSync(readFileSync(wasmFile), { level: 9 }).length;
// GNU gzip's deflate packs this module about 5 KiB tighter than Node's zlib: show both.
const gnu = spawnSync("sh", ["-c", 'gzip -9c "$0" | wc -c', wasmFile], { encoding: "utf8" });
const gnuGzipped = gnu.status === 0 ? Number(gnu.stdout.trim()) : undefined;

// 2. Sealing, in Node.
const gk = await import(pathToFileURL(join(dist, "index.js")).href);
await gk.init();
const secret = gk.UserSecret.generate();
const vd = gk.VirtualDevice.generate("app_bench", "user", 1);
const sealed = vd.seal(secret);
const sealMs = await msPerRun(() => vd.seal(secret));
const openMs = await msPerRun(() => gk.VirtualDevice.open(sealed, secret, { appId: "app_bench", userId: "user" }).free());
const passphrase = gk.Passphrase.from("correct horse battery staple");
const deriveMs = await msPerRun(() => passphrase.deriveVerifier("app_bench", "user", 1).free(), 3000);
passphrase.free();

// 3. The chain: made and timed natively, then verified here.
const work = mkdtempSync(join(tmpdir(), "ghostkey-bench-wasm-"));
const chainFile = join(work, "chain.json");
const native = spawnSync(
  "cargo",
  ["run", "-q", "--release", "--locked", "-p", "ghostkey-client", "--example", "chain_fixture", "--", String(BLOCKS), chainFile],
  { cwd: repo, encoding: "utf8" },
);
if (native.error?.code === "ENOENT") fail("cargo is not installed: get Rust from https://rustup.rs");
if (native.status !== 0) fail(`chain_fixture failed: ${native.stderr}`);
const nativeMs = JSON.parse(native.stdout).native_ms_per_verify;
const fixture = JSON.parse(readFileSync(chainFile, "utf8"));
const blocks = fixture.blocks.map((b) => gk.fromBase64Url(b));
const pinned = { [fixture.kid]: fixture.app_public_key };
const nodeMs = await msPerRun(() => gk.Chain.verify(blocks, pinned).free());

// 4. The same in headless Chromium.
let browser;
if (withBrowser) browser = await inChromium().catch((e) => fail(String(e?.stack ?? e)));
rmSync(work, { recursive: true, force: true });

const kib = (n) => (n / 1024).toFixed(1);
console.log("@ghostkey/client WebAssembly benchmark (printed, not asserted)");
console.log(
  `  module size            ${kib(raw)} KiB, gzipped ${kib(gzipped)} KiB (zlib -9)` +
    (gnuGzipped ? `, ${kib(gnuGzipped)} KiB (gzip -9)` : "") +
    " (target <= 300 KiB)",
);
console.log(`  seal virtual device    ${(1000 / sealMs).toFixed(0)} per second (Node ${process.version})`);
console.log(`  open virtual device    ${(1000 / openMs).toFixed(0)} per second (Node)`);
console.log(`  passphrase verifier    ${deriveMs.toFixed(0)} ms (Node)` + (browser ? `, ${browser.deriveMs.toFixed(0)} ms (Chromium)` : ""));
console.log(`  verify ${BLOCKS}-block chain (target <= 3x native):`);
console.log(`    native (Rust)        ${nativeMs.toFixed(1)} ms`);
console.log(`    wasm, Node           ${nodeMs.toFixed(1)} ms  (${(nodeMs / nativeMs).toFixed(2)}x)`);
if (browser) {
  console.log(`    wasm, Chromium       ${browser.verifyMs.toFixed(1)} ms  (${(browser.verifyMs / nativeMs).toFixed(2)}x; ${browser.userAgent})`);
  console.log(`  seal / open, Chromium  ${(1000 / browser.sealMs).toFixed(0)} / ${(1000 / browser.openMs).toFixed(0)} per second`);
}

/** Serves the package and the chain to a fresh headless Chromium and reads its timings. */
async function inChromium() {
  const playwright = join(repo, "bench/wasm/node_modules/playwright-core/index.mjs");
  if (!existsSync(playwright)) throw new Error("playwright-core is missing: run (cd bench/wasm && npm ci), or pass --no-browser");
  const executablePath = process.env.CHROMIUM ?? "/usr/bin/chromium";
  if (!existsSync(executablePath)) {
    throw new Error(`no Chromium at ${executablePath}: install it (apt-get install chromium) or set CHROMIUM, or pass --no-browser`);
  }
  const { chromium } = await import(pathToFileURL(playwright).href);
  const page = `<!doctype html><meta charset="utf-8"><script type="module">
    ${msPerRun.toString()}
    try {
      const gk = await import("/dist/index.js");
      await gk.init();
      const f = await (await fetch("/chain.json")).json();
      const blocks = f.blocks.map((b) => gk.fromBase64Url(b));
      const pinned = { [f.kid]: f.app_public_key };
      const verifyMs = await msPerRun(() => gk.Chain.verify(blocks, pinned).free());
      const secret = gk.UserSecret.generate();
      const vd = gk.VirtualDevice.generate("app_bench", "user", 1);
      const sealed = vd.seal(secret);
      const sealMs = await msPerRun(() => vd.seal(secret));
      const openMs = await msPerRun(() => gk.VirtualDevice.open(sealed, secret, { appId: "app_bench", userId: "user" }).free());
      const passphrase = gk.Passphrase.from("correct horse battery staple");
      const deriveMs = await msPerRun(() => passphrase.deriveVerifier("app_bench", "user", 1).free(), 3000);
      window.result = { verifyMs, sealMs, openMs, deriveMs, userAgent: navigator.userAgent.match(/(Headless)?Chrome\\/[\\d.]+/)?.[0] };
    } catch (e) {
      window.result = { error: String(e && e.stack || e) };
    }
  </script>`;
  const types = { ".js": "text/javascript", ".wasm": "application/wasm", ".json": "application/json" };
  const server = createServer((req, res) => {
    const path = new URL(req.url, "http://x").pathname;
    let file;
    if (path === "/") return res.writeHead(200, { "content-type": "text/html" }).end(page);
    if (path === "/chain.json") file = chainFile;
    else if (path.startsWith("/dist/")) file = normalize(join(dist, path.slice("/dist/".length)));
    if (!file || !file.startsWith(work) && !file.startsWith(dist) || !existsSync(file)) return res.writeHead(404).end();
    res.writeHead(200, { "content-type": types[extname(file)] ?? "application/octet-stream" }).end(readFileSync(file));
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  const profile = mkdtempSync(join(tmpdir(), "ghostkey-bench-chromium-"));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath,
    headless: true,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  try {
    const tab = await context.newPage();
    await tab.goto(`http://127.0.0.1:${server.address().port}/`);
    await tab.waitForFunction(() => window.result !== undefined, null, { timeout: 120_000 });
    const result = await tab.evaluate(() => window.result);
    if (result.error) throw new Error(`in Chromium: ${result.error}`);
    return result;
  } finally {
    await context.close();
    server.close();
    rmSync(profile, { recursive: true, force: true });
  }
}
