// Shared by the tests: the package under test, the protocol document's vectors, the Rust
// interop program and a real `ghostkey serve`. A missing tool fails the test with how to
// get it; nothing is skipped.

import { spawn, spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";

export const repo = fileURLToPath(new URL("../../../", import.meta.url));

/** The built package, initialised. */
export async function sdk() {
  const entry = new URL("../dist/index.js", import.meta.url);
  if (!existsSync(entry)) {
    throw new Error("sdk/js/dist is missing: build it first with `npm run build` in sdk/js");
  }
  const gk = await import(entry.href);
  await gk.init();
  return gk;
}

export const hex = (bytes) => Buffer.from(bytes).toString("hex");
export const unhex = (text) => new Uint8Array(Buffer.from(text, "hex"));
export const b64 = (bytes) => Buffer.from(bytes).toString("base64url");
export const unb64 = (text) => new Uint8Array(Buffer.from(text, "base64url"));

/** Every ```vector name="..."``` block of docs/PROTOCOL.md, as { name: { key: value } }
 *  (the format of its §11: one `key: value` per line, the value after the first ": "). */
export function protocolVectors() {
  const doc = readFileSync(join(repo, "docs/PROTOCOL.md"), "utf8");
  const vectors = {};
  const lines = doc.split("\n");
  for (let i = 0; i < lines.length; i++) {
    const m = /^```vector name="([^"]+)"\s*$/.exec(lines[i]);
    if (!m) continue;
    if (m[1] in vectors) throw new Error(`vector ${m[1]} appears twice`);
    const block = {};
    for (i++; i < lines.length && lines[i].trimEnd() !== "```"; i++) {
      const at = lines[i].indexOf(": ");
      if (at < 0) throw new Error(`vector ${m[1]}: "${lines[i]}" is not key: value`);
      block[lines[i].slice(0, at).trim()] = lines[i].slice(at + 2).trimEnd();
    }
    vectors[m[1]] = block;
  }
  return vectors;
}

function cargoMissing(result) {
  if (result.error?.code === "ENOENT") {
    throw new Error("cargo is not installed: get Rust from https://rustup.rs (the tests run the interop example)");
  }
}

/** Runs the Rust interop program (crates/ghostkey-client/examples/interop.rs):
 *  `make <file>` or `check <file>`. Returns { status, stdout, stderr }. */
export function interop(command, file) {
  const result = spawnSync(
    "cargo",
    ["run", "-q", "--release", "--locked", "-p", "ghostkey-client", "--example", "interop", "--", command, file],
    { cwd: repo, encoding: "utf8" },
  );
  cargoMissing(result);
  return result;
}

/** Runs a native Rust example of ghostkey-client in release mode. */
export function rustExample(name, args) {
  const result = spawnSync(
    "cargo",
    ["run", "-q", "--release", "--locked", "-p", "ghostkey-client", "--example", name, "--", ...args],
    { cwd: repo, encoding: "utf8", maxBuffer: 64 << 20 },
  );
  cargoMissing(result);
  if (result.status !== 0) throw new Error(`example ${name} failed: ${result.stderr}`);
  return result.stdout;
}

/** A temporary directory, removed by the returned function. */
export function tempDir(prefix) {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  return { dir, remove: () => rmSync(dir, { recursive: true, force: true }) };
}

/** The environment without the caller's GHOSTKEY_* variables, plus `extra`. */
function cleanEnv(extra) {
  const env = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith("GHOSTKEY_")) env[k] = v;
  return { ...env, ...extra };
}

/**
 * Starts a development `ghostkey serve` on 127.0.0.1:0 in a fresh directory and waits for
 * its `listening` log line. Returns { url, log(), addApp(name, kid, publicKey), stop() }.
 * The binary: $GHOSTKEY_BIN, or <repo>/target/release/ghostkey.
 */
export async function startServer() {
  const bin = process.env.GHOSTKEY_BIN ?? join(repo, "target/release/ghostkey");
  if (!existsSync(bin)) {
    throw new Error(
      `the ghostkey binary is missing at ${bin}: build it with \`cargo build --release\` at the repository root, or set GHOSTKEY_BIN`,
    );
  }
  const { dir, remove } = tempDir("ghostkey-sdk-");
  const env = cleanEnv({ GHOSTKEY_SERVER__LISTEN: "127.0.0.1:0", NO_COLOR: "1" });
  const child = spawn(bin, ["serve"], { cwd: dir, env, stdio: ["ignore", "ignore", "pipe"] });
  let log = "";
  child.stderr.setEncoding("utf8");
  const url = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`ghostkey serve did not start in 15 s:\n${log}`)), 15_000);
    child.stderr.on("data", (chunk) => {
      log += chunk;
      // tracing's line: `INFO ghostkey::server: listening addr=127.0.0.1:PORT ...`
      const m = /listening addr=(\d+\.\d+\.\d+\.\d+:\d+)/.exec(log);
      if (m) {
        clearTimeout(timer);
        resolve(`http://${m[1]}`);
      }
    });
    child.on("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`ghostkey serve exited with ${code}:\n${log}`));
    });
  });
  return {
    url,
    log: () => log,
    /** `ghostkey app add`, with the server's directory and environment (same database). */
    addApp(name, kid, publicKey) {
      return this.cli(["app", "add", "--name", name, "--key-id", kid, `--public-key=${publicKey}`]);
    },
    /** Any `ghostkey` admin command on the server's database; its standard output. */
    cli(args) {
      const r = spawnSync(bin, args, { cwd: dir, env, encoding: "utf8" });
      if (r.status !== 0) throw new Error(`ghostkey ${args.slice(0, 3).join(" ")} failed: ${r.stderr}`);
      return r.stdout.trim();
    },
    async stop() {
      if (child.exitCode === null) {
        const exited = new Promise((resolve) => child.once("exit", resolve));
        child.kill("SIGTERM");
        await exited;
      }
      remove();
    },
  };
}
