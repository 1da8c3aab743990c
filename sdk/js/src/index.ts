/**
 * @ghostkey/client: Ghostkey's client core (Rust, compiled to WebAssembly) with a
 * TypeScript API, for browsers and Node 20.
 *
 * Call {@link init} once, then use the classes. Secret-holding objects ({@link UserSecret},
 * {@link DeviceKeys}, {@link UserKeys}, {@link VirtualDevice}, {@link AppKey},
 * {@link Passphrase}, {@link PassphraseVerifier}) keep their
 * bytes in WebAssembly memory, never print them (`String(x)`, `JSON.stringify(x)`,
 * `util.inspect(x)` show a redacted form), give them out only through an explicit
 * `export…()` call, and wipe them when freed: call `free()` when done (a
 * FinalizationRegistry frees forgotten ones eventually, at the garbage collector's pace).
 *
 * Every failure is a {@link GhostkeyError}.
 */
import * as wasm from "./wasm/ghostkey_wasm.js";
import { GhostkeyError, guard, guardAsync } from "./errors.js";
import { pkcs8PemFromSeed, seedFromPkcs8Pem } from "./pkcs8.js";
import { fromBase64Url } from "./base64.js";
import { createPasskey, getPasskeyAssertion } from "./webauthn.js";
import type { WebAuthnCallOptions } from "./webauthn.js";
import type {
  AddMethodResponse,
  AnswerResponse,
  AuthenticationResponseJSON,
  PasskeyProof,
  PassphraseProof,
  RegistrationResponseJSON,
  AssertionClaims,
  AssertionSource,
  ChainDevice,
  ChallengeView,
  DevicePublicKeys,
  EnrollResponse,
  Health,
  MethodKind,
  MethodList,
  PinnedKeys,
  Proof,
  RecoveryResponse,
  UnlockResponse,
} from "./types.js";

export { GhostkeyError } from "./errors.js";
export { toBase64Url, fromBase64Url } from "./base64.js";
export type { LocalErrorCode } from "./errors.js";
export type * from "./types.js";
export { MemoryKeyStorage, IndexedDbKeyStorage } from "./storage.js";
export {
  createPasskey,
  getPasskeyAssertion,
  passkeyCreationOptions,
  passkeyRequestOptions,
  registrationResponseJSON,
  authenticationResponseJSON,
} from "./webauthn.js";
export type { WebAuthnCallOptions } from "./webauthn.js";
export type { KeyStorage } from "./storage.js";

// ---------------------------------------------------------------------------------------
// Loading

let ready: Promise<void> | undefined;

/** Where to find the .wasm file, for hosts that serve it elsewhere. */
export interface InitOptions {
  /** The module's bytes, a URL to fetch, or a compiled WebAssembly.Module. Default: the
   *  `wasm/ghostkey_wasm_bg.wasm` next to this module (fetched in browsers, read from disk
   *  in Node). */
  wasm?: BufferSource | URL | string | WebAssembly.Module;
}

/**
 * Loads the WebAssembly module. Idempotent: later calls return the first call's promise.
 * Every other function requires it to have resolved.
 */
export function init(options: InitOptions = {}): Promise<void> {
  if (ready === undefined) {
    ready = load(options).catch((e: unknown) => {
      ready = undefined; // let a later call try again (e.g. after a network failure)
      throw new GhostkeyError(
        "not_initialised",
        `cannot load the Ghostkey WebAssembly module: ${e instanceof Error ? e.message : String(e)}`,
      );
    });
  }
  return ready;
}

async function load(options: InitOptions): Promise<void> {
  let source = options.wasm;
  const url = new URL("./wasm/ghostkey_wasm_bg.wasm", import.meta.url);
  if (source === undefined && url.protocol === "file:") {
    // Node (or another runtime with files): fetch() cannot read file: URLs there.
    const fs = await import("node:fs/promises");
    source = await fs.readFile(url);
  }
  await wasm.default({ module_or_path: source ?? url });
}

// ---------------------------------------------------------------------------------------
// Redaction: what secret-holding objects show instead of their contents.

const inspectSymbol = Symbol.for("nodejs.util.inspect.custom");

abstract class Redacted {
  protected abstract readonly label: string;
  toString(): string {
    return `${this.label}([redacted])`;
  }
  toJSON(): string {
    return this.toString();
  }
  [inspectSymbol](): string {
    return this.toString();
  }
}

/** The wasm object inside a wrapper, or a `freed` error once the wrapper was freed. */
function live<T>(inner: T | undefined, label: string): T {
  if (inner === undefined) throw new GhostkeyError("freed", `${label} was freed`);
  return inner;
}

// ---------------------------------------------------------------------------------------
// Secrets and keys

/**
 * A user's 32-byte secret: the key that seals their virtual device. The app provider
 * generates it once per user, keeps it, and hands it to the user's device only once the
 * user is logged in.
 */
export class UserSecret extends Redacted {
  protected readonly label = "UserSecret";
  #inner: wasm.UserSecret | undefined;

  private constructor(inner: wasm.UserSecret) {
    super();
    this.#inner = inner;
  }

  /** A fresh random secret (the platform's CSPRNG). */
  static generate(): UserSecret {
    return new UserSecret(guard(() => wasm.UserSecret.generate()));
  }

  /** From base64url (43 characters, how the app provider hands it over). */
  static fromBase64(text: string): UserSecret {
    return new UserSecret(guard(() => wasm.UserSecret.fromBase64(text)));
  }

  /** The secret as base64url: for the app provider's storage only. */
  exportBase64(): string {
    return guard(() => live(this.#inner, this.label).exportBase64());
  }

  /** @internal */
  get _inner(): wasm.UserSecret {
    return live(this.#inner, this.label);
  }

  /** Wipes the secret from WebAssembly memory. Idempotent. */
  free(): void {
    this.#inner?.free();
    this.#inner = undefined;
  }
}

/** A device's private keys: Ed25519 (signing) and X25519 (encryption). */
export class DeviceKeys extends Redacted {
  protected readonly label = "DeviceKeys";
  #inner: wasm.DeviceKeys | undefined;

  /** @internal */
  constructor(inner: wasm.DeviceKeys) {
    super();
    this.#inner = inner;
  }

  /** Fresh random keys. */
  static generate(): DeviceKeys {
    return new DeviceKeys(guard(() => wasm.DeviceKeys.generate()));
  }

  /** From the 64 bytes {@link exportBytes} gave (Ed25519 seed, then X25519 secret). */
  static fromBytes(bytes: Uint8Array): DeviceKeys {
    return new DeviceKeys(guard(() => wasm.DeviceKeys.fromBytes(bytes)));
  }

  /** The 64 private bytes, for a {@link KeyStorage}. Wipe the copy (`fill(0)`) after use. */
  exportBytes(): Uint8Array {
    return guard(() => live(this.#inner, this.label).exportBytes());
  }

  /** Ed25519 public key, base64url: the device's identity in a chain. */
  get signingKey(): string {
    return guard(() => live(this.#inner, this.label).signingKey);
  }

  /** X25519 public key, base64url. */
  get encryptionKey(): string {
    return guard(() => live(this.#inner, this.label).encryptionKey);
  }

  /** Both public keys in wire form. */
  get publicKeys(): DevicePublicKeys {
    return { signing_key: this.signingKey, encryption_key: this.encryptionKey };
  }

  /** @internal */
  get _inner(): wasm.DeviceKeys {
    return live(this.#inner, this.label);
  }

  /** Wipes the keys from WebAssembly memory. Idempotent. */
  free(): void {
    this.#inner?.free();
    this.#inner = undefined;
  }

  override toString(): string {
    return this.#inner === undefined ? "DeviceKeys(freed)" : `DeviceKeys(${this.signingKey})`;
  }
}

/** The user key pair (X25519): documents for the user are sealed to its public half. */
export class UserKeys extends Redacted {
  protected readonly label = "UserKeys";
  #inner: wasm.UserKeys | undefined;

  /** @internal */
  constructor(inner: wasm.UserKeys) {
    super();
    this.#inner = inner;
  }

  /** From the 32 bytes {@link exportBytes} gave. */
  static fromBytes(bytes: Uint8Array): UserKeys {
    return new UserKeys(guard(() => wasm.UserKeys.fromBytes(bytes)));
  }

  /** The 32-byte private key, for a {@link KeyStorage}. (A device can also get it back
   *  from its verified chain with {@link Chain.userKeys}.) */
  exportBytes(): Uint8Array {
    return guard(() => live(this.#inner, this.label).exportBytes());
  }

  /** X25519 public key, base64url. */
  get publicKey(): string {
    return guard(() => live(this.#inner, this.label).publicKey);
  }

  /** @internal */
  get _inner(): wasm.UserKeys {
    return live(this.#inner, this.label);
  }

  /** Wipes the key from WebAssembly memory. Idempotent. */
  free(): void {
    this.#inner?.free();
    this.#inner = undefined;
  }
}

/** What a sealed virtual device must belong to (docs/PROTOCOL.md §3.3). */
export interface Binding {
  appId: string;
  userId: string;
  /** Refuse a blob older than this version (a rollback). Default 1. */
  minVersion?: number;
}

/**
 * A virtual device: keys whose private halves live only sealed under the user secret at
 * Ghostkey, bound to an app, a user and a version counter.
 */
export class VirtualDevice extends Redacted {
  protected readonly label = "VirtualDevice";
  #inner: wasm.VirtualDevice | undefined;

  /** @internal */
  constructor(inner: wasm.VirtualDevice) {
    super();
    this.#inner = inner;
  }

  /** A new virtual device with fresh keys (version 1 at enrolment). */
  static generate(appId: string, userId: string, version = 1): VirtualDevice {
    return new VirtualDevice(guard(() => wasm.VirtualDevice.generate(appId, userId, version)));
  }

  /** A virtual device from existing keys: to seal the same keys with a higher version
   *  when replacing the blob ({@link GhostkeyClient.replaceVirtualDevice}). */
  static fromKeys(appId: string, userId: string, version: number, keys: DeviceKeys): VirtualDevice {
    return new VirtualDevice(guard(() => wasm.VirtualDevice.fromKeys(appId, userId, version, keys._inner)));
  }

  /** Opens a sealed blob with the user secret and checks app, user and version.
   *  Throws `wrong_secret`, `wrong_binding`, `rolled_back` or `bad_format`. */
  static open(sealed: Uint8Array, secret: UserSecret, binding: Binding): VirtualDevice {
    return new VirtualDevice(
      guard(() =>
        wasm.VirtualDevice.open(
          sealed,
          secret._inner,
          binding.appId,
          binding.userId,
          binding.minVersion ?? 1,
        ),
      ),
    );
  }

  /** Seals under the user secret with a fresh random nonce (docs/PROTOCOL.md §3.1). */
  seal(secret: UserSecret): Uint8Array {
    return guard(() => live(this.#inner, this.label).seal(secret._inner));
  }

  /** Seals with a given 24-byte nonce. For test vectors only: a nonce must never repeat
   *  under one user secret. */
  sealWithNonce(secret: UserSecret, nonce: Uint8Array): Uint8Array {
    return guard(() => live(this.#inner, this.label).sealWithNonce(secret._inner, nonce));
  }

  get appId(): string {
    return guard(() => live(this.#inner, this.label).appId);
  }

  get userId(): string {
    return guard(() => live(this.#inner, this.label).userId);
  }

  get version(): number {
    return guard(() => live(this.#inner, this.label).version);
  }

  /** A copy of its keys (free it too). */
  keys(): DeviceKeys {
    return new DeviceKeys(guard(() => live(this.#inner, this.label).keys()));
  }

  /** Its public keys, as sent at enrolment. */
  get publicKeys(): DevicePublicKeys {
    const k = this.keys();
    try {
      return k.publicKeys;
    } finally {
      k.free();
    }
  }

  /** Wipes the keys from WebAssembly memory. Idempotent. */
  free(): void {
    this.#inner?.free();
    this.#inner = undefined;
  }
}

// ---------------------------------------------------------------------------------------
// Passphrases (docs/PROTOCOL.md §5.6)

/** The strength of a new passphrase, as {@link Passphrase.strength} reports it. */
export interface PassphraseStrength {
  /** Whether it passes the minimum ({@link Passphrase.checkStrength} does not throw). */
  ok: boolean;
  /** The estimate, in bits (length, at most twice the distinct characters, times log2 of
   *  the character classes' sizes). A floor against the obvious, not a real measure. */
  bits: number;
  /** The minimum estimate (50). */
  minBits: number;
  /** The minimum length in characters after NFC (12). */
  minChars: number;
  /** Why it fails: `passphrase_too_short` or `passphrase_too_weak`. */
  code?: "passphrase_too_short" | "passphrase_too_weak";
  /** A sentence for the user (no part of the passphrase). */
  message?: string;
}

/**
 * A passphrase the user typed. It never leaves the device: Ghostkey receives a
 * {@link PassphraseVerifier} derived from it (Argon2id of its NFC form, salted with the
 * app id and the user id), computed here by the same Rust code as the native client.
 *
 * The text is copied into WebAssembly memory and wiped from there by `free()`; the
 * JavaScript string it came from (an input field's value) is out of this package's reach,
 * so clear the field once done.
 */
export class Passphrase extends Redacted {
  protected readonly label = "Passphrase";
  #inner: wasm.Passphrase | undefined;

  private constructor(inner: wasm.Passphrase) {
    super();
    this.#inner = inner;
  }

  /** From the text the user typed (any Unicode; NFC and NFD spellings are the same). */
  static from(text: string): Passphrase {
    if (typeof text !== "string") throw new GhostkeyError("bad_format", "a passphrase is a string");
    return new Passphrase(guard(() => wasm.Passphrase.fromString(text)));
  }

  /** The minimum strength of a new passphrase: at least 12 characters and an estimate of
   *  50 bits. Throws `passphrase_too_short` or `passphrase_too_weak`. */
  checkStrength(): void {
    guard(() => live(this.#inner, this.label).checkStrength());
  }

  /** The same check as a report, for a strength meter. */
  strength(): PassphraseStrength {
    return guard(() => JSON.parse(live(this.#inner, this.label).strength()) as PassphraseStrength);
  }

  /**
   * What adding a passphrase method sends ({@link GhostkeyClient.addPassphrase}): checks the
   * strength first (`passphrase_too_short`, `passphrase_too_weak`, before deriving
   * anything), then derives the verifier with the newest parameters. About 19 MiB and two
   * Argon2id passes: a fraction of a second, synchronously.
   */
  setup(appId: string, userId: string): PassphraseVerifier {
    return new PassphraseVerifier(guard(() => live(this.#inner, this.label).setup(appId, userId)));
  }

  /**
   * The answer to a passphrase method's challenge (`confirm`, `proof` or `recover`): the
   * verifier derived with the parameters the challenge shows, once they are checked
   * against this package's own table (`passphrase_unknown_version`,
   * `passphrase_params_refused`: a server cannot talk the client into a cheaper
   * derivation; `wrong_method_kind` for a challenge of another kind). No strength check:
   * the passphrase is the one already set.
   */
  answer(challenge: ChallengeView, appId: string, userId: string): PassphraseVerifier {
    if (challenge.kind !== "passphrase") {
      throw new GhostkeyError("wrong_method_kind", `challenge ${challenge.id} is for a ${challenge.kind} method, not a passphrase`);
    }
    const params = challenge.passphrase === undefined || challenge.passphrase === null ? undefined : JSON.stringify(challenge.passphrase);
    return new PassphraseVerifier(guard(() => live(this.#inner, this.label).answer(appId, userId, params)));
  }

  /** The verifier with the parameters of `version` (no strength check, no challenge): for
   *  test vectors. */
  deriveVerifier(appId: string, userId: string, version = 1): PassphraseVerifier {
    return new PassphraseVerifier(guard(() => live(this.#inner, this.label).deriveVerifier(appId, userId, version)));
  }

  /** Wipes the passphrase from WebAssembly memory. Idempotent. */
  free(): void {
    this.#inner?.free();
    this.#inner = undefined;
  }
}

/**
 * A passphrase verifier: what Ghostkey checks, where a code would go. Whoever holds it can
 * answer the user's passphrase challenges, so it is a secret like the passphrase: it
 * stays in WebAssembly memory, goes out only inside a request
 * ({@link GhostkeyClient.addPassphrase}, {@link GhostkeyClient.answer},
 * {@link GhostkeyClient.verifyRecovery}, a {@link PassphraseProof}) or through
 * {@link exportBase64}, and prints redacted.
 */
export class PassphraseVerifier extends Redacted {
  protected readonly label = "PassphraseVerifier";
  #inner: wasm.Verifier | undefined;

  /** @internal */
  constructor(inner: wasm.Verifier) {
    super();
    this.#inner = inner;
  }

  /** The parameter version it was derived with. */
  get version(): number {
    return guard(() => live(this.#inner, this.label).version);
  }

  /** The verifier as base64url (43 characters), on explicit request only (test vectors). */
  exportBase64(): string {
    return guard(() => live(this.#inner, this.label).exportBase64());
  }

  /** @internal */
  get _inner(): wasm.Verifier {
    return live(this.#inner, this.label);
  }

  /** Wipes the verifier from WebAssembly memory. Idempotent. */
  free(): void {
    this.#inner?.free();
    this.#inner = undefined;
  }
}

/** The WebAssembly form of a proof, for one call. */
function proofInput(proof: Proof): wasm.ProofInput {
  if ("verifier" in proof && proof.verifier instanceof PassphraseVerifier) {
    return wasm.ProofInput.withVerifier(proof.challenge_id, proof.verifier._inner);
  }
  return wasm.ProofInput.fromJson(JSON.stringify(proof));
}

function optionalProof(proof: Proof | undefined): wasm.ProofInput | undefined {
  return proof === undefined ? undefined : proofInput(proof);
}

// ---------------------------------------------------------------------------------------
// Device chain

/**
 * A user's device chain, verified from the app's pinned keys (docs/PROTOCOL.md §4.3).
 * Only {@link Chain.verify} and {@link Chain.apply} make one, so holding a Chain means
 * holding a verified chain. Holds public data only.
 */
export class Chain {
  #inner: wasm.Chain | undefined;

  private constructor(inner: wasm.Chain) {
    this.#inner = inner;
  }

  /**
   * Verifies `blocks` (as served by Ghostkey) from the app's pinned keys and, when given,
   * checks the chain belongs to `expect`. Throws `chain_invalid` (the message names the
   * index and fault) or `chain_mismatch`.
   */
  static verify(
    blocks: Uint8Array[],
    pinned: PinnedKeys,
    expect?: { appId?: string; userId?: string },
  ): Chain {
    const chain = new Chain(guard(() => wasm.Chain.verify(blocks, JSON.stringify(pinned))));
    if (
      (expect?.appId !== undefined && chain.appId !== expect.appId) ||
      (expect?.userId !== undefined && chain.userId !== expect.userId)
    ) {
      chain.free();
      throw new GhostkeyError("chain_mismatch", "the chain belongs to another app or user");
    }
    return chain;
  }

  #c(): wasm.Chain {
    return live(this.#inner, "Chain");
  }

  get appId(): string {
    return guard(() => this.#c().appId);
  }

  get userId(): string {
    return guard(() => this.#c().userId);
  }

  /** The user's X25519 public key, base64url: what envelopes for this user are sealed to. */
  get userPublicKey(): string {
    return guard(() => this.#c().userPublicKey);
  }

  /** Number of blocks. */
  get length(): number {
    return guard(() => this.#c().length);
  }

  /** SHA-256 of the last block, base64url: what the next block links to. */
  get head(): string {
    return guard(() => this.#c().head);
  }

  /** Every device the chain admitted, the virtual device first. */
  get devices(): ChainDevice[] {
    return guard(() => JSON.parse(this.#c().devicesJson()) as ChainDevice[]);
  }

  /** Whether the device with this Ed25519 key (base64url) is admitted and not revoked. */
  isValidDevice(signingKey: string): boolean {
    return guard(() => this.#c().isValidDevice(signingKey));
  }

  /** The chain with one more block, checked by the same rules (a new Chain; this one is
   *  unchanged). Use it after appending a block you made. */
  apply(block: Uint8Array): Chain {
    return new Chain(guard(() => this.#c().apply(block)));
  }

  /** The next block, admitting `newDevice`, signed by `author` (a valid device of the
   *  chain, the recovered virtual device included); the user key is sealed to the new
   *  device. Throws `not_a_device` if `author` is not valid. Append it with
   *  {@link GhostkeyClient.appendBlock}. */
  admitDevice(author: DeviceKeys, newDevice: DeviceKeys, userKeys: UserKeys): Uint8Array {
    return guard(() => this.#c().admitDevice(author._inner, newDevice._inner, userKeys._inner));
  }

  /** The next block, revoking the device with Ed25519 key `revoked` (base64url), signed
   *  by `author`. */
  revokeDevice(author: DeviceKeys, revoked: string): Uint8Array {
    return guard(() => this.#c().revokeDevice(author._inner, revoked));
  }

  /** The user key pair, unsealed with one of the user's valid devices. Throws
   *  `not_a_device` or `user_key`. */
  userKeys(device: DeviceKeys): UserKeys {
    return new UserKeys(guard(() => this.#c().userKeys(device._inner)));
  }

  /** @internal */
  get _inner(): wasm.Chain {
    return this.#c();
  }

  /** Releases the WebAssembly memory. Idempotent. */
  free(): void {
    this.#inner?.free();
    this.#inner = undefined;
  }

  toJSON(): object {
    return { appId: this.appId, userId: this.userId, length: this.length, head: this.head };
  }
}

/** The first half of an enrolment, on the user's device (docs/PROTOCOL.md §4.4). */
export interface PreparedEnrolment {
  /** The new virtual device (free it once the enrolment is complete). */
  virtualDevice: VirtualDevice;
  /** The new user key pair. */
  userKeys: UserKeys;
  /** The root block without its signature: send it to the app provider's backend, which
   *  endorses it with {@link AppKey.endorseRoot}. Public data only. */
  unsignedRoot: Uint8Array;
}

/** Prepares an enrolment for `userId` of `appId`; `kid` names the app key that will
 *  endorse the root. */
export function prepareEnrolment(appId: string, userId: string, kid: string): PreparedEnrolment {
  const p = guard(() => wasm.prepareEnrolment(appId, userId, kid));
  try {
    return {
      virtualDevice: new VirtualDevice(p.virtualDevice()),
      userKeys: new UserKeys(p.userKeys()),
      unsignedRoot: p.unsignedRoot(),
    };
  } finally {
    p.free();
  }
}

// ---------------------------------------------------------------------------------------
// App provider side (Node backends)

/**
 * The app provider's Ed25519 key (the one registered at Ghostkey with
 * `ghostkey app add --key-id <kid> --public-key <publicKey>`). The backend uses it to
 * endorse users' root blocks. (Assertions are JWTs the backend mints with its usual JWT
 * library; see the README for the claims.)
 */
export class AppKey extends Redacted {
  protected readonly label = "AppKey";
  #inner: wasm.AppKey | undefined;

  private constructor(inner: wasm.AppKey) {
    super();
    this.#inner = inner;
  }

  /** A fresh key with key id `kid`. */
  static generate(kid: string): AppKey {
    return new AppKey(guard(() => wasm.AppKey.generate(kid)));
  }

  /** From a 32-byte Ed25519 seed. */
  static fromSeed(kid: string, seed: Uint8Array): AppKey {
    return new AppKey(guard(() => wasm.AppKey.fromSeed(kid, seed)));
  }

  /** From a PKCS#8 PEM private key (`openssl genpkey -algorithm ed25519`). */
  static fromPkcs8Pem(kid: string, pem: string): AppKey {
    const seed = seedFromPkcs8Pem(pem);
    try {
      return AppKey.fromSeed(kid, seed);
    } finally {
      seed.fill(0);
    }
  }

  /** The private key as PKCS#8 PEM, for the backend's secret storage (also what `jose`'s
   *  `importPKCS8(pem, "EdDSA")` reads to mint assertions). */
  exportPkcs8Pem(): string {
    const seed = guard(() => live(this.#inner, this.label).exportSeed());
    try {
      return pkcs8PemFromSeed(seed);
    } finally {
      seed.fill(0);
    }
  }

  /** The key id. */
  get kid(): string {
    return guard(() => live(this.#inner, this.label).kid);
  }

  /** The Ed25519 public key, base64url: what the operator registers and apps pin. */
  get publicKey(): string {
    return guard(() => live(this.#inner, this.label).publicKey);
  }

  /** Endorses a user's unsigned root block after checking it is a root for `appId`, the
   *  logged-in `userId` and this key's kid (throws `endorse_refused` otherwise). Returns
   *  the signed root block. */
  endorseRoot(unsignedRoot: Uint8Array, appId: string, userId: string): Uint8Array {
    return guard(() => live(this.#inner, this.label).endorseRoot(unsignedRoot, appId, userId));
  }

  /**
   * Mints an assertion (a compact JWS, EdDSA, header `{"typ":"JWT","alg":"EdDSA","kid"}`)
   * with exactly these claims (docs/PROTOCOL.md §2.2). `jti` must be fresh and random
   * (16+ bytes, base64url); `exp - iat` at most the deployment's maximum (300 s by
   * default). Any JWT library that signs EdDSA with this key does the same.
   */
  mintAssertion(claims: AssertionClaims): string {
    return guard(() => live(this.#inner, this.label).mintAssertion(JSON.stringify(claims)));
  }

  /** Wipes the key from WebAssembly memory. Idempotent. */
  free(): void {
    this.#inner?.free();
    this.#inner = undefined;
  }

  override toString(): string {
    return this.#inner === undefined ? "AppKey(freed)" : `AppKey(${this.kid}, ${this.publicKey})`;
  }
}

// ---------------------------------------------------------------------------------------
// Envelopes

/**
 * Encrypts `document` for the users of `recipients` (verified chains; include the author's
 * own to read it back), signed by the author's device.
 */
export function sealEnvelope(
  author: { userId: string; device: DeviceKeys },
  recipients: Chain[],
  document: Uint8Array,
): Uint8Array {
  return guard(() => {
    const sealer = new wasm.EnvelopeSealer();
    try {
      for (const r of recipients) sealer.addRecipient(r._inner);
      return sealer.seal(author.userId, author.device._inner, document);
    } finally {
      sealer.free();
    }
  });
}

/** Who signed an envelope (unverified until {@link openEnvelope} checks it against the
 *  author's chain): fetch and verify that user's chain, then open. */
export function envelopeAuthor(envelope: Uint8Array): { userId: string; deviceKey: string } {
  return guard(() => JSON.parse(wasm.envelopeAuthor(envelope)) as { userId: string; deviceKey: string });
}

/**
 * Opens an envelope as `reader`, after checking its author device is a valid device of
 * `authorChain` and its signature holds. Throws `unknown_author`, `bad_signature`,
 * `not_a_recipient`, `decrypt` or `bad_format`.
 */
export function openEnvelope(
  envelope: Uint8Array,
  reader: { userId: string; userKeys: UserKeys },
  authorChain: Chain,
): Uint8Array {
  return guard(() => wasm.openEnvelope(envelope, reader.userId, reader.userKeys._inner, authorChain._inner));
}

// ---------------------------------------------------------------------------------------
// The API client

/** What an enrolment leaves on the user's first device. */
export interface Enrolled {
  /** The first physical device, admitted to the chain: store it ({@link DeviceKeys.exportBytes}). */
  device: DeviceKeys;
  /** The user key pair. */
  userKeys: UserKeys;
  /** The verified chain, with the device in it. */
  chain: Chain;
  /** Ghostkey's answer (the enrolment stays `pending` until a method is confirmed). */
  answer: EnrollResponse;
}

/** What a recovery leaves on the new device once admitted. */
export interface Admitted {
  /** The new device's keys (store them). */
  device: DeviceKeys;
  /** The user key pair, unsealed from the chain. */
  userKeys: UserKeys;
  /** The verified chain, with the new device in it. */
  chain: Chain;
}

/** What {@link GhostkeyClient.recover} needs: the recovery, the user's answer (exactly one
 *  of `code` and `webauthn`), and what opening and admitting take. */
export interface RecoverOptions {
  recoveryId: string;
  /** The code the user typed, or a passphrase method's verifier. */
  code?: string | PassphraseVerifier;
  /** A passkey's assertion over the recovery's challenge. */
  webauthn?: AuthenticationResponseJSON;
  secret: UserSecret;
  appId: string;
  userId: string;
  pinned: PinnedKeys;
  assertions: AssertionSource;
  minVersion?: number;
  device?: DeviceKeys;
}

/** A typed client for Ghostkey's /v1 API, over the host's `fetch`. */
export class GhostkeyClient {
  #inner: wasm.Client;

  /** @param baseUrl the deployment, such as `https://gk.example.org` (http or https). */
  constructor(baseUrl: string) {
    this.#inner = guard(() => new wasm.Client(baseUrl));
  }

  /** `GET /healthz`. */
  health(): Promise<Health> {
    return guardAsync(async () => JSON.parse(await this.#inner.health()) as Health);
  }

  // --- Enrolment -------------------------------------------------------------------------

  /**
   * The whole enrolment on the user's first device: prepares the virtual device and the
   * root, has the app backend endorse the root (`endorse`), seals the virtual device under
   * `secret` and stores it (`enroll` assertion), then admits a fresh physical device to the
   * chain with the virtual device while it is at hand (`manage` assertion), and wipes the
   * virtual device. Next: {@link addMethod} and {@link answer} to confirm a method.
   */
  async enrol(options: {
    appId: string;
    userId: string;
    kid: string;
    secret: UserSecret;
    pinned: PinnedKeys;
    assertions: AssertionSource;
    /** Sends the unsigned root to the app backend and returns the endorsed root block. */
    endorse: (unsignedRoot: Uint8Array) => Promise<Uint8Array>;
    /** The device to admit (default: fresh keys). */
    device?: DeviceKeys;
  }): Promise<Enrolled> {
    const prepared = prepareEnrolment(options.appId, options.userId, options.kid);
    try {
      const endorsed = await options.endorse(prepared.unsignedRoot);
      const answer = await this.completeEnrolment(
        await options.assertions("enroll"),
        options.secret,
        prepared,
        endorsed,
      );
      const admitted = await this.admitDevice({
        appId: options.appId,
        userId: options.userId,
        pinned: options.pinned,
        author: prepared.virtualDevice,
        userKeys: prepared.userKeys,
        assertions: options.assertions,
        purpose: "manage",
        ...(options.device !== undefined ? { device: options.device } : {}),
      });
      return { device: admitted.device, userKeys: prepared.userKeys, chain: admitted.chain, answer };
    } catch (e) {
      prepared.userKeys.free();
      throw e;
    } finally {
      prepared.virtualDevice.free();
    }
  }

  /** Second half of an enrolment: seals the virtual device (version 1) under `secret` and
   *  stores it at Ghostkey with the endorsed root (`POST /v1/enrollments`). */
  completeEnrolment(
    assertion: string,
    secret: UserSecret,
    prepared: PreparedEnrolment,
    endorsedRoot: Uint8Array,
  ): Promise<EnrollResponse> {
    return guardAsync(async () => {
      const sealed = prepared.virtualDevice.seal(secret);
      const keys = prepared.virtualDevice.publicKeys;
      const json = await this.#inner.enroll(
        assertion,
        sealed,
        keys.signing_key,
        keys.encryption_key,
        endorsedRoot,
      );
      return JSON.parse(json) as EnrollResponse;
    });
  }

  /**
   * Admits a device to the user's chain: fetches and verifies the chain from `pinned`,
   * unseals the user key with `author` (the virtual device at enrolment or after a
   * recovery, or any valid device), appends a `device added` block signed by it.
   * `purpose` is the assertion's: `recover` during a recovery, `manage` otherwise.
   */
  async admitDevice(options: {
    appId: string;
    userId: string;
    pinned: PinnedKeys;
    author: VirtualDevice | DeviceKeys;
    assertions: AssertionSource;
    purpose: "manage" | "recover";
    /** Known user keys (skips unsealing them from the chain). */
    userKeys?: UserKeys;
    device?: DeviceKeys;
  }): Promise<Admitted> {
    const chain = await this.verifiedChain(
      await options.assertions(options.purpose),
      options.userId,
      options.pinned,
      options.appId,
    );
    const author = options.author instanceof VirtualDevice ? options.author.keys() : options.author;
    const device = options.device ?? DeviceKeys.generate();
    try {
      const userKeys = options.userKeys ?? chain.userKeys(author);
      const block = chain.admitDevice(author, device, userKeys);
      await this.appendBlock(await options.assertions(options.purpose), block);
      const updated = chain.apply(block);
      return { device, userKeys, chain: updated };
    } finally {
      chain.free();
      if (options.author instanceof VirtualDevice) author.free();
    }
  }

  // --- Methods and challenges ------------------------------------------------------------

  /** `POST /v1/methods` for an SMS, e-mail or TOTP method. With no confirmed method yet:
   *  an `enroll` assertion and no proof; afterwards a `manage` assertion and a proof.
   *  `destination`: phone number or e-mail address; omit for TOTP. (Passphrases and
   *  passkeys: {@link addPassphrase}, {@link addPasskey}.) */
  addMethod(
    assertion: string,
    kind: Exclude<MethodKind, "passphrase" | "passkey">,
    destination?: string,
    proof?: Proof,
  ): Promise<AddMethodResponse> {
    return this.#json(() => this.#inner.addMethod(assertion, kind, destination, optionalProof(proof)));
  }

  /**
   * `POST /v1/methods` for a passphrase method, with the verifier from
   * {@link Passphrase.setup} (which has checked the strength: a weak passphrase never gets
   * this far). Assertion and proof as for {@link addMethod}. Confirm it with
   * {@link answer} and the verifier of the passphrase typed a second time
   * (`Passphrase.answer(added.challenge, ...)`). The app's policy must allow `passphrase`.
   */
  addPassphrase(assertion: string, verifier: PassphraseVerifier, proof?: Proof): Promise<AddMethodResponse> {
    return this.#json(() => this.#inner.addPassphrase(assertion, verifier._inner, optionalProof(proof)));
  }

  /**
   * `POST /v1/methods` for a passkey method, with the name the user gives it (1 to 64
   * characters; shown in method lists instead of the authenticator's model). Assertion and
   * proof as for {@link addMethod}. The answer's challenge carries the WebAuthn creation
   * options: make the passkey and confirm with {@link confirmPasskey} (or
   * {@link createPasskey} and {@link answerWebAuthn}). The app needs a relying-party id
   * (`ghostkey app passkey set`) and a policy that allows `passkey`.
   */
  addPasskey(assertion: string, name?: string, proof?: Proof): Promise<AddMethodResponse> {
    return this.#json(() => this.#inner.addPasskey(assertion, name, optionalProof(proof)));
  }

  /** `GET /v1/methods`: the user's methods, masked (`manage` or `recover` assertion). */
  listMethods(assertion: string): Promise<MethodList> {
    return this.#json(() => this.#inner.listMethods(assertion));
  }

  /** `POST /v1/methods/{id}/remove` (`manage` assertion and a proof). */
  removeMethod(assertion: string, methodId: string, proof: Proof): Promise<void> {
    return guardAsync(() => this.#inner.removeMethod(assertion, methodId, proofInput(proof)));
  }

  /** `POST /v1/challenges`: a new code for a pending method (`confirm`) or a proof
   *  challenge on a confirmed one (`proof`). */
  startChallenge(assertion: string, methodId: string, purpose: "confirm" | "proof"): Promise<ChallengeView> {
    return this.#json(() => this.#inner.startChallenge(assertion, methodId, purpose));
  }

  /** `POST /v1/challenges/{id}/answer`: the code the user typed, or for a passphrase
   *  method the verifier ({@link Passphrase.answer}). A wrong one throws `invalid_code`. */
  answer(challengeId: string, code: string | PassphraseVerifier): Promise<AnswerResponse> {
    return this.#json(() =>
      code instanceof PassphraseVerifier
        ? this.#inner.answerVerifier(challengeId, code._inner)
        : this.#inner.answer(challengeId, code),
    );
  }

  /** `POST /v1/challenges/{id}/answer` for a passkey method: the new passkey
   *  ({@link createPasskey}) as `webauthn`. A response that does not verify throws
   *  `passkey_rejected` (counted like a wrong code). */
  answerWebAuthn(challengeId: string, credential: RegistrationResponseJSON): Promise<AnswerResponse> {
    return this.#json(() => this.#inner.answerWebauthn(challengeId, JSON.stringify(credential)));
  }

  /** Confirms a passkey method: makes the passkey from its `confirm` challenge's options
   *  with the browser's WebAuthn ({@link createPasskey}) and answers with it. */
  async confirmPasskey(challenge: ChallengeView, options: WebAuthnCallOptions = {}): Promise<AnswerResponse> {
    const credential = await createPasskey(challenge, options);
    return this.answerWebAuthn(challenge.id, credential);
  }

  /**
   * A proof through a confirmed passkey method: starts a `proof` challenge on it (with
   * `assertion`, of the purpose of the request the proof is for), signs it with the
   * browser's WebAuthn, and returns the proof to pass to that request.
   */
  async proofWithPasskey(assertion: string, methodId: string, options: WebAuthnCallOptions = {}): Promise<PasskeyProof> {
    const challenge = await this.startChallenge(assertion, methodId, "proof");
    return { challenge_id: challenge.id, webauthn: await getPasskeyAssertion(challenge, options) };
  }

  /**
   * A proof through a confirmed passphrase method: starts a `proof` challenge on it (with
   * `assertion`, of the purpose of the request the proof is for) and derives the verifier
   * with the parameters it shows ({@link Passphrase.answer}). Free `proof.verifier` after
   * the request.
   */
  async proofWithPassphrase(
    assertion: string,
    methodId: string,
    passphrase: Passphrase,
    appId: string,
    userId: string,
  ): Promise<PassphraseProof> {
    const challenge = await this.startChallenge(assertion, methodId, "proof");
    return { challenge_id: challenge.id, verifier: passphrase.answer(challenge, appId, userId) };
  }

  /** `POST /v1/users/unlock` (`manage` assertion; a proof once the user has a method). */
  unlock(assertion: string, proof?: Proof): Promise<UnlockResponse> {
    return this.#json(() => this.#inner.unlock(assertion, optionalProof(proof)));
  }

  // --- Recovery --------------------------------------------------------------------------

  /** `POST /v1/recoveries` with a confirmed method (`recover` assertion). */
  startRecovery(assertion: string, methodId: string): Promise<ChallengeView> {
    return this.#json(() => this.#inner.startRecovery(assertion, methodId));
  }

  /** `POST /v1/recoveries/{id}/verify`: the code the user typed, or for a passphrase
   *  method the verifier ({@link Passphrase.answer} of the recovery's challenge).
   *  `released` at once, or `waiting` until `available_at`. Open a release with
   *  {@link openReleased}. */
  verifyRecovery(recoveryId: string, code: string | PassphraseVerifier): Promise<RecoveryResponse> {
    return this.#json(() =>
      code instanceof PassphraseVerifier
        ? this.#inner.verifyRecoveryVerifier(recoveryId, code._inner)
        : this.#inner.verifyRecovery(recoveryId, code),
    );
  }

  /** `POST /v1/recoveries/{id}/verify` for a passkey method: the assertion
   *  ({@link getPasskeyAssertion} of the recovery's challenge) as `webauthn`. Refusals:
   *  `passkey_rejected`, `authenticator_cloned`, and the code errors. */
  verifyRecoveryWebAuthn(recoveryId: string, assertion: AuthenticationResponseJSON): Promise<RecoveryResponse> {
    return this.#json(() => this.#inner.verifyRecoveryWebauthn(recoveryId, JSON.stringify(assertion)));
  }

  /** `POST /v1/recoveries/{id}/release` after the waiting period (`recover` assertion). */
  releaseRecovery(assertion: string, recoveryId: string): Promise<RecoveryResponse> {
    return this.#json(() => this.#inner.releaseRecovery(assertion, recoveryId));
  }

  /** `POST /v1/recoveries/{id}/cancel`: a `manage` assertion alone, or `recover` with a proof. */
  cancelRecovery(assertion: string, recoveryId: string, proof?: Proof): Promise<RecoveryResponse> {
    return this.#json(() => this.#inner.cancelRecovery(assertion, recoveryId, optionalProof(proof)));
  }

  /** `POST /v1/recoveries/cancel` with the cancel code of a notice (no assertion). */
  cancelRecoveryWithCode(cancelCode: string): Promise<RecoveryResponse> {
    return this.#json(() => this.#inner.cancelRecoveryWithCode(cancelCode));
  }

  /**
   * Submits the user's answer and, once released, opens the virtual device with `secret`
   * and admits a fresh device to the chain with it (`recover` assertions): from "all
   * devices lost" to "new device admitted" in one call. The answer is exactly one of
   * `code` (a typed code, or a passphrase method's {@link PassphraseVerifier}) and
   * `webauthn` (a passkey's assertion, {@link getPasskeyAssertion}). Throws
   * `recovery_waiting` (with `retryAfter`) when the app has a waiting period: call
   * {@link releaseRecovery} later, then {@link openReleased} and {@link admitDevice}.
   */
  async recover(options: RecoverOptions): Promise<Admitted> {
    if ((options.code === undefined) === (options.webauthn === undefined)) {
      throw new GhostkeyError("bad_format", "recover takes exactly one of code and webauthn");
    }
    const answer =
      options.webauthn !== undefined
        ? await this.verifyRecoveryWebAuthn(options.recoveryId, options.webauthn)
        : await this.verifyRecovery(options.recoveryId, options.code as string | PassphraseVerifier);
    const vd = openReleased(answer, options.secret, options);
    try {
      return await this.admitDevice({
        appId: options.appId,
        userId: options.userId,
        pinned: options.pinned,
        author: vd,
        assertions: options.assertions,
        purpose: "recover",
        ...(options.device !== undefined ? { device: options.device } : {}),
      });
    } finally {
      vd.free();
    }
  }

  // --- Chain -----------------------------------------------------------------------------

  /** `GET /v1/chains/{userId}`: the blocks as stored (unverified; see {@link verifiedChain}). */
  chain(assertion: string, userId: string): Promise<Uint8Array[]> {
    return guardAsync(async () => (await this.#inner.chain(assertion, userId)) as Uint8Array[]);
  }

  /** A user's chain, fetched and verified from the app's pinned keys; checks it is
   *  `userId`'s (and `appId`'s when given). */
  async verifiedChain(assertion: string, userId: string, pinned: PinnedKeys, appId?: string): Promise<Chain> {
    const blocks = await this.chain(assertion, userId);
    return Chain.verify(blocks, pinned, appId === undefined ? { userId } : { appId, userId });
  }

  /** `POST /v1/chain/blocks`: appends a block to the assertion user's chain. */
  appendBlock(assertion: string, block: Uint8Array): Promise<void> {
    return guardAsync(() => this.#inner.appendBlock(assertion, block));
  }

  // --- Other -----------------------------------------------------------------------------

  /** `POST /v1/virtual-device/replace`: the virtual device sealed under a new secret or
   *  with a higher version (`manage` assertion and a proof). */
  replaceVirtualDevice(assertion: string, sealed: Uint8Array, proof: Proof): Promise<void> {
    return guardAsync(() => this.#inner.replaceVirtualDevice(assertion, sealed, proofInput(proof)));
  }

  /** `POST /v1/users/erase`: deletes everything Ghostkey holds for the user (`manage`). */
  eraseUser(assertion: string): Promise<void> {
    return guardAsync(() => this.#inner.eraseUser(assertion));
  }

  /** Releases the WebAssembly memory. */
  free(): void {
    this.#inner.free();
  }

  #json<T>(call: () => Promise<string>): Promise<T> {
    return guardAsync(async () => JSON.parse(await call()) as T);
  }
}

/**
 * Opens the sealed virtual device of a `released` recovery answer with the user secret,
 * checking app, user and version. Throws `recovery_waiting` (with `retryAfter`) for a
 * `waiting` answer, and `wrong_secret`, `wrong_binding` or `rolled_back` as
 * {@link VirtualDevice.open}.
 */
export function openReleased(answer: RecoveryResponse, secret: UserSecret, binding: Binding): VirtualDevice {
  if (answer.state === "released" && answer.sealed_virtual_device !== undefined) {
    return VirtualDevice.open(fromBase64Url(answer.sealed_virtual_device), secret, binding);
  }
  if (answer.state === "waiting" && answer.available_at !== undefined) {
    const wait = Math.max(1, answer.available_at - Math.floor(Date.now() / 1000));
    throw new GhostkeyError("recovery_waiting", `released after ${answer.available_at} (Unix seconds)`, {
      retryAfter: wait,
    });
  }
  throw new GhostkeyError("unexpected", `unexpected recovery answer in state ${answer.state}`);
}
