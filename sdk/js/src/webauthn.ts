// Passkeys: the browser's WebAuthn calls for a passkey method's challenges.
//
// Ghostkey sends the options as JSON with binary members in base64url (webauthn-rs's
// `CreationChallengeResponse` / `RequestChallengeResponse`); the browser wants
// ArrayBuffers. The credential comes back as objects holding ArrayBuffers; Ghostkey wants
// WebAuthn Level 3's JSON form. Both conversions are done here, by hand: neither
// `PublicKeyCredential.parse*OptionsFromJSON` nor `PublicKeyCredential.prototype.toJSON`
// exists in every browser this package supports.

import { fromBase64Url, toBase64Url } from "./base64.js";
import { GhostkeyError } from "./errors.js";
import type {
  AuthenticationResponseJSON,
  ChallengeView,
  RegistrationResponseJSON,
  WebAuthnCreationOptionsJSON,
  WebAuthnCredentialDescriptorJSON,
  WebAuthnRequestOptionsJSON,
} from "./types.js";

/** Where and how to run a WebAuthn ceremony. */
export interface WebAuthnCallOptions {
  /** The credentials container (default: `navigator.credentials`). */
  credentials?: CredentialsContainer;
  /** Aborts the ceremony (the browser's own UI included). */
  signal?: AbortSignal;
}

function buffer(text: string, what: string): ArrayBuffer {
  let bytes: Uint8Array;
  try {
    bytes = fromBase64Url(text);
  } catch {
    throw new GhostkeyError("bad_format", `the WebAuthn options' ${what} is not base64url`);
  }
  const out = new ArrayBuffer(bytes.length);
  new Uint8Array(out).set(bytes);
  return out;
}

function b64(data: ArrayBuffer | ArrayBufferView): string {
  const bytes =
    data instanceof ArrayBuffer ? new Uint8Array(data) : new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  return toBase64Url(bytes);
}

/** A copy of `o` without its null and undefined members (webauthn-rs may send `null`
 *  for an absent option; WebIDL dictionaries refuse `null` for most members). */
function defined<T extends object>(o: T): T {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== null && v !== undefined)) as T;
}

function descriptors(list: WebAuthnCredentialDescriptorJSON[] | undefined, what: string): PublicKeyCredentialDescriptor[] | undefined {
  return list?.map((d) => ({ ...defined(d), id: buffer(d.id, what) }) as PublicKeyCredentialDescriptor);
}

function webauthnOf(challenge: ChallengeView, purposes: ChallengeView["purpose"][], use: string): object {
  if (challenge.kind !== "passkey" || challenge.webauthn === undefined || challenge.webauthn === null) {
    throw new GhostkeyError("wrong_method_kind", `challenge ${challenge.id} is not for a passkey method (it carries no WebAuthn options)`);
  }
  if (!purposes.includes(challenge.purpose)) {
    throw new GhostkeyError("bad_format", `a ${challenge.purpose} challenge's options are not for ${use}`);
  }
  return challenge.webauthn;
}

/**
 * The options for `navigator.credentials.create()` from a passkey method's `confirm`
 * challenge: `challenge`, `user.id` and `excludeCredentials[].id` decoded to ArrayBuffers.
 */
export function passkeyCreationOptions(challenge: ChallengeView): CredentialCreationOptions {
  const json = webauthnOf(challenge, ["confirm"], "navigator.credentials.create") as WebAuthnCreationOptionsJSON;
  const pk = json.publicKey;
  if (pk === undefined || typeof pk.challenge !== "string" || typeof pk.user?.id !== "string") {
    throw new GhostkeyError("bad_format", "the WebAuthn creation options lack publicKey.challenge or publicKey.user.id");
  }
  const publicKey = {
    ...defined(pk),
    user: { ...defined(pk.user), id: buffer(pk.user.id, "user.id") },
    challenge: buffer(pk.challenge, "challenge"),
  } as unknown as PublicKeyCredentialCreationOptions;
  const exclude = descriptors(pk.excludeCredentials ?? undefined, "excludeCredentials[].id");
  if (exclude !== undefined) publicKey.excludeCredentials = exclude;
  return { publicKey };
}

/**
 * The options for `navigator.credentials.get()` from a passkey method's `proof` or
 * `recover` challenge: `challenge` and `allowCredentials[].id` decoded to ArrayBuffers.
 */
export function passkeyRequestOptions(challenge: ChallengeView): CredentialRequestOptions {
  const json = webauthnOf(challenge, ["proof", "recover"], "navigator.credentials.get") as WebAuthnRequestOptionsJSON;
  const pk = json.publicKey;
  if (pk === undefined || typeof pk.challenge !== "string") {
    throw new GhostkeyError("bad_format", "the WebAuthn request options lack publicKey.challenge");
  }
  const publicKey = {
    ...defined(pk),
    challenge: buffer(pk.challenge, "challenge"),
  } as unknown as PublicKeyCredentialRequestOptions;
  const allow = descriptors(pk.allowCredentials ?? undefined, "allowCredentials[].id");
  if (allow !== undefined) publicKey.allowCredentials = allow;
  const options: CredentialRequestOptions = { publicKey };
  if (typeof json.mediation === "string") options.mediation = json.mediation as CredentialMediationRequirement;
  return options;
}

/** Extension outputs in JSON form: binary values in base64url, recursively. */
function extensionResults(value: unknown): unknown {
  if (value instanceof ArrayBuffer || ArrayBuffer.isView(value)) return b64(value as ArrayBuffer | ArrayBufferView);
  if (Array.isArray(value)) return value.map(extensionResults);
  if (value !== null && typeof value === "object") {
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, extensionResults(v)]));
  }
  return value;
}

function clientExtensionResults(credential: PublicKeyCredential): Record<string, unknown> {
  const results = typeof credential.getClientExtensionResults === "function" ? credential.getClientExtensionResults() : {};
  return extensionResults(results ?? {}) as Record<string, unknown>;
}

/** A new credential (`navigator.credentials.create()`'s result) in WebAuthn Level 3's
 *  JSON form, as Ghostkey takes it. */
export function registrationResponseJSON(credential: PublicKeyCredential): RegistrationResponseJSON {
  const response = credential.response as AuthenticatorAttestationResponse;
  if (!(response?.attestationObject instanceof ArrayBuffer) || !(response.clientDataJSON instanceof ArrayBuffer)) {
    throw new GhostkeyError("bad_format", "not a new credential: its response has no attestationObject");
  }
  const out: RegistrationResponseJSON = {
    id: credential.id,
    rawId: b64(credential.rawId),
    type: "public-key",
    response: {
      clientDataJSON: b64(response.clientDataJSON),
      attestationObject: b64(response.attestationObject),
    },
    clientExtensionResults: clientExtensionResults(credential),
  };
  if (typeof response.getTransports === "function") out.response.transports = response.getTransports();
  return out;
}

/** An assertion (`navigator.credentials.get()`'s result) in WebAuthn Level 3's JSON form,
 *  as Ghostkey takes it. */
export function authenticationResponseJSON(credential: PublicKeyCredential): AuthenticationResponseJSON {
  const response = credential.response as AuthenticatorAssertionResponse;
  if (!(response?.authenticatorData instanceof ArrayBuffer) || !(response.signature instanceof ArrayBuffer)) {
    throw new GhostkeyError("bad_format", "not an assertion: its response has no authenticatorData or signature");
  }
  const out: AuthenticationResponseJSON = {
    id: credential.id,
    rawId: b64(credential.rawId),
    type: "public-key",
    response: {
      clientDataJSON: b64(response.clientDataJSON),
      authenticatorData: b64(response.authenticatorData),
      signature: b64(response.signature),
    },
    clientExtensionResults: clientExtensionResults(credential),
  };
  if (response.userHandle instanceof ArrayBuffer) out.response.userHandle = b64(response.userHandle);
  return out;
}

function container(options: WebAuthnCallOptions): CredentialsContainer {
  const credentials = options.credentials ?? (globalThis as { navigator?: Navigator }).navigator?.credentials;
  if (credentials === undefined || (options.credentials === undefined && typeof globalThis.PublicKeyCredential !== "function")) {
    throw new GhostkeyError("webauthn_unavailable", "this host has no WebAuthn (navigator.credentials): passkeys need a browser");
  }
  return credentials;
}

/** The browser's refusals as GhostkeyErrors: `webauthn_cancelled` for the user's (or a
 *  timeout's, or the signal's) `NotAllowedError`/`AbortError`, `webauthn_failed` with the
 *  DOMException's name otherwise (`InvalidStateError`: this authenticator already holds a
 *  passkey of this user; `SecurityError`: the page's origin does not fit the RP id). */
function refused(e: unknown): GhostkeyError {
  if (e instanceof GhostkeyError) return e;
  const name = (e as { name?: unknown } | null)?.name;
  const message = (e as { message?: unknown } | null)?.message;
  const text = `${typeof name === "string" ? name : "Error"}: ${typeof message === "string" ? message : String(e)}`;
  if (name === "NotAllowedError" || name === "AbortError") {
    return new GhostkeyError("webauthn_cancelled", `the passkey ceremony did not complete (${text})`);
  }
  return new GhostkeyError("webauthn_failed", `the browser refused the passkey ceremony (${text})`);
}

/**
 * Makes the passkey of a passkey method's `confirm` challenge with
 * `navigator.credentials.create()` and returns it in the JSON form Ghostkey takes
 * ({@link GhostkeyClient.answerWebAuthn}). Throws `webauthn_unavailable`,
 * `webauthn_cancelled`, `webauthn_failed`, `wrong_method_kind`.
 */
export async function createPasskey(challenge: ChallengeView, options: WebAuthnCallOptions = {}): Promise<RegistrationResponseJSON> {
  const request = passkeyCreationOptions(challenge);
  const credentials = container(options);
  if (options.signal !== undefined) request.signal = options.signal;
  let credential: Credential | null;
  try {
    credential = await credentials.create(request);
  } catch (e) {
    throw refused(e);
  }
  if (credential === null) throw new GhostkeyError("webauthn_cancelled", "no passkey was made");
  return registrationResponseJSON(credential as PublicKeyCredential);
}

/**
 * Signs a passkey method's `proof` or `recover` challenge with
 * `navigator.credentials.get()` and returns the assertion in the JSON form Ghostkey takes
 * ({@link GhostkeyClient.verifyRecoveryWebAuthn}, a proof's `webauthn`). Throws
 * `webauthn_unavailable`, `webauthn_cancelled`, `webauthn_failed`, `wrong_method_kind`.
 */
export async function getPasskeyAssertion(
  challenge: ChallengeView,
  options: WebAuthnCallOptions = {},
): Promise<AuthenticationResponseJSON> {
  const request = passkeyRequestOptions(challenge);
  const credentials = container(options);
  if (options.signal !== undefined) request.signal = options.signal;
  let credential: Credential | null;
  try {
    credential = await credentials.get(request);
  } catch (e) {
    throw refused(e);
  }
  if (credential === null) throw new GhostkeyError("webauthn_cancelled", "no passkey answered");
  return authenticationResponseJSON(credential as PublicKeyCredential);
}
