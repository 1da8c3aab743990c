import type { Problem } from "./types.js";

/**
 * Every failure of this package, local or from Ghostkey.
 *
 * - From Ghostkey: `code` is the problem document's stable code (docs/PROTOCOL.md §8, such
 *   as `invalid_code` or `release_pending`), `status` the HTTP status, `retryAfter` the
 *   seconds of `Retry-After` when the server sent it, `problem` the whole document.
 * - Local: `code` is one of {@link LocalErrorCode}; `status` is undefined.
 *
 * Match on `code`, never on `message`. No message ever contains a secret.
 */
export class GhostkeyError extends Error {
  /** Stable machine-readable code. */
  readonly code: string;
  /** HTTP status, for an answer from Ghostkey. */
  readonly status: number | undefined;
  /** Seconds to wait before trying again (`Retry-After`), when Ghostkey said so. */
  readonly retryAfter: number | undefined;
  /** Ghostkey's problem document, for an answer from Ghostkey. */
  readonly problem: Problem | undefined;

  constructor(
    code: string,
    message: string,
    extra: { status?: number | undefined; retryAfter?: number | undefined; problem?: Problem | undefined } = {},
  ) {
    super(message);
    this.name = "GhostkeyError";
    this.code = code;
    this.status = extra.status;
    this.retryAfter = extra.retryAfter;
    this.problem = extra.problem;
  }
}

/**
 * Codes of failures found on this side (no answer from Ghostkey, or an answer that does
 * not pass the client's checks).
 */
export type LocalErrorCode =
  /** The request did not reach Ghostkey or its answer did not arrive. */
  | "transport"
  /** Ghostkey answered something outside the protocol. */
  | "unexpected"
  /** The base URL or an id is unusable. */
  | "bad_url"
  /** Bytes or text that are not in the expected format (base64url, lengths, encodings). */
  | "bad_format"
  /** The user secret does not open the sealed virtual device (or the blob was altered). */
  | "wrong_secret"
  /** The sealed virtual device belongs to another app or user. */
  | "wrong_binding"
  /** The sealed virtual device is older than the version expected (a rollback). */
  | "rolled_back"
  /** A chain does not verify from the app's pinned keys (`message` names the index and fault). */
  | "chain_invalid"
  /** The chain belongs to another app or user than the one asked for. */
  | "chain_mismatch"
  /** This device is not a valid (admitted, unrevoked) device of the chain. */
  | "not_a_device"
  /** The user key sealed to this device does not open or does not match the chain. */
  | "user_key"
  /** The app key refuses to endorse a block that is not a root for this app, user and key. */
  | "endorse_refused"
  /** The reader is not a recipient of the envelope. */
  | "not_a_recipient"
  /** The envelope's author device is not a valid device of the author's chain. */
  | "unknown_author"
  /** The envelope's signature does not verify. */
  | "bad_signature"
  /** The envelope does not decrypt. */
  | "decrypt"
  /** The recovery is not released yet (`waiting`): call release after the waiting period. */
  | "recovery_waiting"
  /** `init()` has not been called, or the WebAssembly module could not be loaded. */
  | "not_initialised"
  /** An object was used after `free()`. */
  | "freed"
  /** A new passphrase has fewer than 12 characters (after NFC): nothing was derived or sent. */
  | "passphrase_too_short"
  /** A new passphrase's strength estimate is under 50 bits (repetitions, few kinds of
   *  characters): nothing was derived or sent. */
  | "passphrase_too_weak"
  /** A passphrase challenge names a parameter version this package does not know. */
  | "passphrase_unknown_version"
  /** A passphrase challenge's parameters differ from this package's table for its version
   *  (a server may not make a client derive more cheaply): nothing was derived or sent. */
  | "passphrase_params_refused"
  /** The challenge is for another kind of method (a passphrase's answer to a challenge
   *  without passphrase parameters, a passkey's to one without WebAuthn options). */
  | "wrong_method_kind"
  /** This host has no WebAuthn (`navigator.credentials`): passkeys need a browser. */
  | "webauthn_unavailable"
  /** The browser's passkey ceremony did not complete: the user cancelled, it timed out,
   *  or it was aborted (`NotAllowedError`, `AbortError`). */
  | "webauthn_cancelled"
  /** The browser refused the passkey ceremony otherwise; `message` names the DOMException
   *  (`InvalidStateError`: the authenticator already holds a passkey of this user;
   *  `SecurityError`: the page's origin does not fit the app's RP id). */
  | "webauthn_failed";

/** Turns whatever the WebAssembly layer threw into a GhostkeyError. */
export function toGhostkeyError(thrown: unknown): GhostkeyError {
  if (thrown instanceof GhostkeyError) return thrown;
  if (thrown !== null && typeof thrown === "object" && "code" in thrown) {
    // The shape ghostkey-wasm throws: { code, message, status?, retryAfter?, problem? }.
    const t = thrown as {
      code: string;
      message?: string;
      status?: number;
      retryAfter?: number;
      problem?: Problem;
    };
    return new GhostkeyError(String(t.code), String(t.message ?? t.code), {
      status: t.status ?? undefined,
      retryAfter: t.retryAfter ?? undefined,
      problem: t.problem ?? undefined,
    });
  }
  // A wasm-bindgen "null pointer passed to rust" means a freed object was used.
  const message = thrown instanceof Error ? thrown.message : String(thrown);
  if (/null pointer passed to rust|recursive use of an object/.test(message)) {
    return new GhostkeyError("freed", "this object was freed or is in use");
  }
  return new GhostkeyError("unexpected", message);
}

/** Runs `f`, turning anything it throws into a GhostkeyError. */
export function guard<T>(f: () => T): T {
  try {
    return f();
  } catch (e) {
    throw toGhostkeyError(e);
  }
}

/** Awaits `p`, turning anything it rejects with into a GhostkeyError. */
export async function guardAsync<T>(p: () => Promise<T>): Promise<T> {
  try {
    return await p();
  } catch (e) {
    throw toGhostkeyError(e);
  }
}
