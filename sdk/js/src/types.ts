// Wire types of Ghostkey's /v1 API (docs/PROTOCOL.md §6), exactly as they travel: field
// names stay snake_case so that they match the protocol document and the server's
// OpenAPI description. Times are Unix seconds.

/** A kind of verification method. (`passphrase` methods, docs/PROTOCOL.md §5.6, may
 *  appear in results; this package cannot add or answer them yet.) */
export type MethodKind = "sms" | "email" | "totp" | "passphrase";

/** What an assertion allows (docs/PROTOCOL.md §2.3). */
export type Purpose = "enroll" | "manage" | "recover";

/** RFC 9457 problem document with Ghostkey's stable `code` (docs/PROTOCOL.md §8). */
export interface Problem {
  type: string;
  title: string;
  status: number;
  code: string;
  detail?: string;
  retry_after?: number;
  available_at?: number;
}

/** A proof through a confirmed method: a `proof` challenge and the code the user typed. */
export interface Proof {
  challenge_id: string;
  code: string;
}

export interface DevicePublicKeys {
  /** Ed25519 public key, base64url. */
  signing_key: string;
  /** X25519 public key, base64url. */
  encryption_key: string;
}

export interface EnrollResponse {
  app_id: string;
  user_id: string;
  state: "pending" | "active";
  created_at: number;
}

export interface Health {
  status: string;
}

export interface MethodView {
  id: string;
  kind: MethodKind;
  state: "pending" | "confirmed";
  masked?: string;
  created_at: number;
  confirmed_at?: number;
}

export interface ChallengeView {
  id: string;
  purpose: "confirm" | "proof" | "recover";
  method_id: string;
  kind: MethodKind;
  masked?: string;
  expires_at: number;
  max_attempts: number;
  /** For a passphrase method: the parameters of its verifier derivation. */
  passphrase?: { version: number; memory_kib: number; iterations: number; parallelism: number };
}

export interface AddMethodResponse {
  method: MethodView;
  challenge: ChallengeView;
  /** For TOTP: the provisioning URI to show as a QR code. */
  totp?: { otpauth_uri: string };
}

export interface AnswerResponse {
  challenge_id: string;
  purpose: "confirm" | "proof" | "recover";
  method: MethodView;
  enrollment_state: "pending" | "active";
}

export interface MethodList {
  methods: MethodView[];
}

export interface UnlockResponse {
  was_locked: boolean;
}

export interface RecoveryResponse {
  recovery_id: string;
  state: "started" | "waiting" | "released" | "cancelled";
  available_at?: number;
  /** base64url, when `state` is `released`. */
  sealed_virtual_device?: string;
}

/** A device as a verified chain lists it. */
export interface ChainDevice {
  /** Ed25519 public key, base64url: the device's identity in the chain. */
  signing_key: string;
  /** X25519 public key, base64url. */
  encryption_key: string;
  /** True for the virtual device named by the root. */
  is_virtual: boolean;
  /** Index of the block that revoked it, if any. */
  revoked_at?: number;
}

/** The app's pinned Ed25519 public keys: key id (`kid`) to base64url public key. Pin
 *  every key the app has had, revoked ones included, so that old roots stay valid. */
export type PinnedKeys = Record<string, string>;

/** Returns a fresh assertion (single use) from the app provider's backend for the
 *  logged-in user. */
export type AssertionSource = (purpose: Purpose) => Promise<string>;

/** The claims of an assertion (docs/PROTOCOL.md §2.2), in this order. */
export interface AssertionClaims {
  /** The app id. */
  iss: string;
  /** The user id (pseudonymous). */
  sub: string;
  /** The deployment's service id. */
  aud: string;
  /** Issued at, Unix seconds. */
  iat: number;
  /** Expires at, Unix seconds. */
  exp: number;
  /** A fresh random id (single use), base64url of 16+ bytes. */
  jti: string;
  purpose: Purpose;
}
