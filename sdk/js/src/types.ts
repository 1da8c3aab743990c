// Wire types of Ghostkey's /v1 API (docs/PROTOCOL.md §6), exactly as they travel: field
// names stay snake_case so that they match the protocol document and the server's
// OpenAPI description. Times are Unix seconds.

import type { PassphraseVerifier } from "./index.js";

/** A kind of verification method. `passphrase` (docs/PROTOCOL.md §5.6) and `passkey`
 *  have their own calls to add them (`addPassphrase`, `addPasskey`). */
export type MethodKind = "sms" | "email" | "totp" | "passphrase" | "passkey";

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

/**
 * A proof through a confirmed method: a `proof` challenge and its answer, which is one of
 * - the code the user typed (SMS, e-mail, TOTP): `{ challenge_id, code }`;
 * - a passkey's assertion: `{ challenge_id, webauthn }` (`GhostkeyClient.proofWithPasskey`);
 * - a passphrase's verifier: `{ challenge_id, verifier }` (`GhostkeyClient.proofWithPassphrase`),
 *   which travels as the `code` without ever being a JavaScript string.
 */
export type Proof = CodeProof | PasskeyProof | PassphraseProof;

/** A proof answered with a typed code. */
export interface CodeProof {
  challenge_id: string;
  code: string;
}

/** A proof answered with a passkey's assertion (made from the proof challenge's options). */
export interface PasskeyProof {
  challenge_id: string;
  webauthn: AuthenticationResponseJSON;
}

/** A proof answered with a passphrase verifier (derived with the proof challenge's
 *  parameters). Free the verifier after the request. */
export interface PassphraseProof {
  challenge_id: string;
  verifier: PassphraseVerifier;
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
  /** For a passphrase method: the parameters to derive the verifier with (checked against
   *  this package's own table before any derivation). */
  passphrase?: PassphraseParams;
  /** For a passkey method: the WebAuthn options, binary members in base64url. Creation
   *  options for a `confirm` challenge, request options for `proof` and `recover`. */
  webauthn?: WebAuthnCreationOptionsJSON | WebAuthnRequestOptionsJSON;
}

/** A passphrase challenge's derivation parameters (docs/PROTOCOL.md §5.6). */
export interface PassphraseParams {
  version: number;
  memory_kib: number;
  iterations: number;
  parallelism: number;
}

/** A credential descriptor with its id in base64url. */
export interface WebAuthnCredentialDescriptorJSON {
  type: "public-key";
  id: string;
  transports?: string[];
}

/** `PublicKeyCredentialCreationOptions` as Ghostkey sends them (webauthn-rs's
 *  `CreationChallengeResponse`): binary members in base64url. */
export interface WebAuthnCreationOptionsJSON {
  publicKey: {
    rp: { id?: string; name: string };
    user: { id: string; name: string; displayName: string };
    challenge: string;
    pubKeyCredParams: { type: "public-key"; alg: number }[];
    timeout?: number;
    excludeCredentials?: WebAuthnCredentialDescriptorJSON[];
    authenticatorSelection?: {
      authenticatorAttachment?: string;
      residentKey?: string;
      requireResidentKey?: boolean;
      userVerification?: string;
    };
    attestation?: string;
    attestationFormats?: string[];
    hints?: string[];
    extensions?: Record<string, unknown>;
  };
}

/** `PublicKeyCredentialRequestOptions` as Ghostkey sends them (webauthn-rs's
 *  `RequestChallengeResponse`): binary members in base64url. */
export interface WebAuthnRequestOptionsJSON {
  publicKey: {
    challenge: string;
    timeout?: number;
    rpId?: string;
    allowCredentials?: WebAuthnCredentialDescriptorJSON[];
    userVerification?: string;
    hints?: string[];
    extensions?: Record<string, unknown>;
  };
  mediation?: string;
}

/** A new passkey, serialised as WebAuthn Level 3's `toJSON()` does (binary members in
 *  base64url): the `webauthn` answer to a passkey's `confirm` challenge. */
export interface RegistrationResponseJSON {
  id: string;
  rawId: string;
  type: "public-key";
  response: {
    clientDataJSON: string;
    attestationObject: string;
    transports?: string[];
  };
  clientExtensionResults: Record<string, unknown>;
}

/** A passkey's assertion, serialised as WebAuthn Level 3's `toJSON()` does: the
 *  `webauthn` answer to a passkey's `proof` or `recover` challenge. */
export interface AuthenticationResponseJSON {
  id: string;
  rawId: string;
  type: "public-key";
  response: {
    clientDataJSON: string;
    authenticatorData: string;
    signature: string;
    userHandle?: string;
  };
  clientExtensionResults: Record<string, unknown>;
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
