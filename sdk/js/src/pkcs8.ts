// PKCS#8 (RFC 5208/5958) for Ed25519 keys (RFC 8410), in PEM. For Ed25519 the DER is a
// fixed prefix and the 32-byte seed (and, in the version-2 form, the public key after
// it), so it is read and written here rather than with DER code in the WebAssembly module.

import { GhostkeyError } from "./errors.js";

// SEQUENCE { INTEGER 0, SEQUENCE { OID 1.3.101.112 }, OCTET STRING { OCTET STRING (32) } }
const V1_PREFIX = [0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20];
// The same with INTEGER 1 and, after the seed, [1] { BIT STRING public key }.
const V2_PREFIX = [0x30, 0x51, 0x02, 0x01, 0x01, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20];
const V2_PUBLIC = [0x81, 0x21, 0x00];

const BEGIN = "-----BEGIN PRIVATE KEY-----";
const END = "-----END PRIVATE KEY-----";

function startsWith(bytes: Uint8Array, prefix: number[]): boolean {
  return prefix.every((b, i) => bytes[i] === b);
}

/** The 32-byte seed of an Ed25519 PKCS#8 PEM (version 1, as `openssl genpkey` writes, or
 *  version 2 with the public key, as the Rust kit writes). The caller wipes the result. */
export function seedFromPkcs8Pem(pem: string): Uint8Array {
  const text = pem.trim();
  if (!text.startsWith(BEGIN) || !text.endsWith(END)) {
    throw new GhostkeyError("bad_format", "not a PKCS#8 PEM private key (BEGIN PRIVATE KEY)");
  }
  const body = text.slice(BEGIN.length, text.length - END.length).replace(/\s+/g, "");
  let der: Uint8Array;
  try {
    const bin = atob(body);
    der = Uint8Array.from(bin, (c) => c.charCodeAt(0));
  } catch {
    throw new GhostkeyError("bad_format", "the PEM body is not base64");
  }
  try {
    const v1 = der.length === 48 && startsWith(der, V1_PREFIX);
    const v2 = der.length === 83 && startsWith(der, V2_PREFIX) && startsWith(der.subarray(48), V2_PUBLIC);
    if (!v1 && !v2) {
      throw new GhostkeyError("bad_format", "not an Ed25519 PKCS#8 private key");
    }
    return der.slice(16, 48);
  } finally {
    der.fill(0);
  }
}

/** The version-1 PKCS#8 PEM of an Ed25519 seed (what `openssl genpkey -algorithm ed25519`
 *  writes and `jose`'s `importPKCS8` reads). */
export function pkcs8PemFromSeed(seed: Uint8Array): string {
  const der = new Uint8Array(48);
  der.set(V1_PREFIX);
  der.set(seed, 16);
  let bin = "";
  for (const b of der) bin += String.fromCharCode(b);
  der.fill(0);
  const b64 = btoa(bin);
  const lines = b64.match(/.{1,64}/g) ?? [];
  return `${BEGIN}\n${lines.join("\n")}\n${END}\n`;
}
