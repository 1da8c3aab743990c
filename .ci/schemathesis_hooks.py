"""Schemathesis hooks for the API conformance stage of .ci/run.

Two roles in one file:

- `python schemathesis_hooks.py seed OUT.json`: before the run, enrols one user with a
  confirmed TOTP method through `ghostkey client enroll --totp` (computing the TOTP code
  here), and writes what the hooks need to know about that user to OUT.json;
- loaded by schemathesis (SCHEMATHESIS_HOOKS=this file): gives every request a fresh,
  valid, single-use app assertion (EdDSA JWT) with the purpose its route needs, and, in
  positive test cases only, sometimes swaps generated ids and codes for live ones (the
  seeded user, its method, challenges and recoveries seen in earlier responses, the
  current TOTP code) so that the tests reach the endpoints' success answers and not
  only their 404s.

Configuration comes from the environment, set by .ci/run:
GK_BASE_URL, GK_SERVICE_ID, GK_APP_ID, GK_KEY_ID, GK_KEY_FILE (the app's PKCS#8 PEM
signing key), GK_SEED_FILE (the seed step's output), GK_BIN (the ghostkey binary) and
GK_CONFIG (the server's configuration file: the seed step and the operator's unlock use
them).

Nothing here prints a code, a key or a token.
"""

import base64
import hashlib
import hmac
import json
import os
import random
import secrets
import struct
import subprocess
import sys
import threading
import time
import urllib.parse

SEEDED_USER = "conformance-user"
LIFETIME_SECS = 120


def _env(name):
    value = os.environ.get(name)
    if not value:
        raise RuntimeError(f"{name} is not set")
    return value


# --- TOTP (RFC 6238), for the seeded user's method and any TOTP method a test adds ---


def totp_secret_from_uri(uri):
    """The otpauth:// URI's parameters: (secret bytes, digits, period, hash name)."""
    query = urllib.parse.parse_qs(urllib.parse.urlparse(uri).query)
    secret = query["secret"][0].upper()
    secret += "=" * (-len(secret) % 8)
    return {
        "secret": base64.b32encode(base64.b32decode(secret)).decode(),
        "digits": int(query.get("digits", ["6"])[0]),
        "period": int(query.get("period", ["30"])[0]),
        "algorithm": query.get("algorithm", ["SHA1"])[0].lower(),
    }


def totp_now(params, now=None):
    key = base64.b32decode(params["secret"])
    counter = int((time.time() if now is None else now) // params["period"])
    digest = hmac.new(key, struct.pack(">Q", counter), params["algorithm"]).digest()
    offset = digest[-1] & 0x0F
    value = struct.unpack(">I", digest[offset : offset + 4])[0] & 0x7FFFFFFF
    return str(value % (10 ** params["digits"])).zfill(params["digits"])


# --- The seed step (run with the venv's python, before schemathesis) ---


def seed(out_path):
    """Enrols SEEDED_USER with a confirmed TOTP method through the Rust command-line client."""
    work = os.path.dirname(os.path.abspath(out_path))
    args = [
        _env("GK_BIN"),
        "client",
        "enroll",
        "--server",
        _env("GK_BASE_URL"),
        "--service-id",
        _env("GK_SERVICE_ID"),
        "--app-id",
        _env("GK_APP_ID"),
        "--key-file",
        _env("GK_KEY_FILE"),
        "--key-id",
        _env("GK_KEY_ID"),
        "--user",
        SEEDED_USER,
        "--secret-file",
        os.path.join(work, "seeded-user.secret"),
        "--totp",
    ]
    proc = subprocess.Popen(
        args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    params = None
    # The URI comes on a line of its own, then the prompt "code: " without a newline:
    # answer as soon as the URI is read.
    for line in proc.stderr:
        if line.strip().startswith("otpauth://"):
            params = totp_secret_from_uri(line.strip())
            break
    if params is None:
        proc.kill()
        raise RuntimeError("ghostkey client enroll printed no otpauth:// URI")
    # A code from a step that is about to end could expire on its way; wait for a fresh step.
    if params["period"] - time.time() % params["period"] < 3:
        time.sleep(3)
    out, err = proc.communicate(totp_now(params) + "\n", timeout=60)
    if proc.returncode != 0:
        raise RuntimeError(f"ghostkey client enroll failed: {err.strip()}")
    # "enrolled: user U of app A, state Active, method m_... confirmed"
    words = out.split()
    method_id = words[words.index("method") + 1]
    with open(out_path, "w", encoding="utf-8") as f:
        json.dump({"user_id": SEEDED_USER, "method_id": method_id, "totp": params}, f)
    os.chmod(out_path, 0o600)
    print(f"seeded user {SEEDED_USER} with confirmed TOTP method {method_id}")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "seed":
        seed(sys.argv[2])
        sys.exit(0)
    sys.exit("usage: schemathesis_hooks.py seed OUT.json")


# --- The hooks (loaded by schemathesis) ---

import jwt  # noqa: E402  (PyJWT; only the hooks need it)
import requests  # noqa: E402
import schemathesis  # noqa: E402
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402
from cryptography.hazmat.primitives.serialization import load_pem_private_key  # noqa: E402
from schemathesis.core.parameters import ParameterLocation  # noqa: E402

BASE_URL = _env("GK_BASE_URL")
SERVICE_ID = _env("GK_SERVICE_ID")
APP_ID = _env("GK_APP_ID")
KEY_ID = _env("GK_KEY_ID")


def load_signing_key(path):
    """The app's Ed25519 key from `ghostkey client keygen`'s PKCS#8 file.

    That file is a PKCS#8 v2 (RFC 5958) key that carries its public key too, which
    `cryptography`'s PEM loader refuses ("extra data"): read the 32-byte seed from the
    privateKey field (RFC 8410: an OCTET STRING wrapping an OCTET STRING) ourselves.
    """
    with open(path, "rb") as f:
        pem = f.read()
    try:
        return load_pem_private_key(pem, password=None)
    except ValueError:
        pass
    body = b"".join(line for line in pem.splitlines() if line and not line.startswith(b"-----"))
    der = base64.b64decode(body)
    ed25519_oid = bytes.fromhex("06032b6570")
    at = der.find(ed25519_oid)
    seed_at = der.find(bytes.fromhex("04220420"), at)
    if at < 0 or seed_at < 0 or len(der) < seed_at + 4 + 32:
        raise RuntimeError(f"{path} is not an Ed25519 PKCS#8 key")
    return Ed25519PrivateKey.from_private_bytes(der[seed_at + 4 : seed_at + 4 + 32])


SIGNING_KEY = load_signing_key(_env("GK_KEY_FILE"))
with open(_env("GK_SEED_FILE"), encoding="utf-8") as _f:
    SEED = json.load(_f)

# What earlier responses taught us, shared between schemathesis' workers.
_lock = threading.Lock()
_totp_by_method = {SEED["method_id"]: SEED["totp"]}  # method id -> TOTP parameters
_method_of_challenge = {}  # challenge id -> method id
_proof_challenges = []  # ids of proof challenges of the seeded user
_recoveries = []  # recovery ids of the seeded user
_pending_challenges = []  # confirm challenges of methods the tests added
_minted = {}  # token -> (sub, purpose), to re-mint it fresh on every send
_rng = random.Random(0x6B)


def mint(sub, purpose):
    now = int(time.time())
    claims = {
        "iss": APP_ID,
        "sub": sub,
        "aud": SERVICE_ID,
        "iat": now,
        "exp": now + LIFETIME_SECS,
        "jti": base64.urlsafe_b64encode(secrets.token_bytes(16)).rstrip(b"=").decode(),
        "purpose": purpose,
    }
    token = jwt.encode(claims, SIGNING_KEY, algorithm="EdDSA", headers={"kid": KEY_ID})
    with _lock:
        if len(_minted) > 50_000:
            _minted.clear()
        _minted[token] = (sub, purpose)
    return token


def fresh_user():
    return "conf-" + secrets.token_hex(8)


# The purposes each operation accepts (docs/PROTOCOL.md §2.3), and whose assertion it
# gets: the seeded user, except where the request would spend that user (enrolment of a
# new user, erasure), where it is a fresh random user.
ROUTES = {
    ("POST", "/v1/enrollments"): (["enroll"], "fresh"),
    ("POST", "/v1/methods"): (["enroll", "manage"], "seeded"),
    ("GET", "/v1/methods"): (["manage", "recover"], "seeded"),
    ("POST", "/v1/methods/{method_id}/remove"): (["manage"], "seeded"),
    ("POST", "/v1/challenges"): (["manage", "recover"], "seeded"),
    ("POST", "/v1/users/unlock"): (["manage"], "seeded"),
    ("POST", "/v1/recoveries"): (["recover"], "seeded"),
    ("POST", "/v1/recoveries/{recovery_id}/release"): (["recover"], "seeded"),
    ("POST", "/v1/recoveries/{recovery_id}/cancel"): (["manage", "recover"], "seeded"),
    ("POST", "/v1/virtual-device/replace"): (["manage"], "seeded"),
    ("POST", "/v1/users/erase"): (["manage"], "fresh"),
    ("POST", "/v1/chain/blocks"): (["manage", "recover"], "seeded"),
    ("GET", "/v1/chains/{user_id}"): (["enroll", "manage", "recover"], "seeded"),
}


def _route(case):
    return (case.operation.method.upper(), case.operation.path)


@schemathesis.auth(refresh_interval=None)
class Assertion:
    """A valid assertion for every operation that declares the `assertion` scheme."""

    def get(self, case, ctx):
        route = ROUTES.get(_route(case))
        if route is None:
            return None
        purposes, who = route
        sub = SEED["user_id"] if who == "seeded" else fresh_user()
        return (sub, _rng.choice(purposes))

    def set(self, case, data, ctx):
        case.headers = case.headers or {}
        case.headers["Authorization"] = "Bearer " + mint(*data)


def _positive(case, location):
    meta = case.meta
    return meta is None or not meta.is_negative_at(location)


def _maybe(p=0.5):
    with _lock:
        return _rng.random() < p


def _pick(items):
    with _lock:
        return _rng.choice(items) if items else None


def _code_for(challenge_id):
    with _lock:
        params = _totp_by_method.get(_method_of_challenge.get(challenge_id))
    return totp_now(params) if params else None


@schemathesis.hook
def before_call(context, case, kwargs):
    # A fresh assertion for every send: they are single use, and hypothesis may send a
    # case more than once (shrinking, replays).
    headers = case.headers or {}
    value = headers.get("Authorization", "")
    if value.startswith("Bearer "):
        with _lock:
            spec = _minted.get(value[len("Bearer ") :])
        if spec is not None:
            headers["Authorization"] = "Bearer " + mint(*spec)

    route = _route(case)
    path = case.path_parameters
    if path and _positive(case, ParameterLocation.PATH):
        if "method_id" in path and _maybe():
            path["method_id"] = SEED["method_id"]
        if "user_id" in path and _maybe():
            path["user_id"] = SEED["user_id"]
        if "recovery_id" in path and _maybe():
            path["recovery_id"] = _pick(_recoveries) or path["recovery_id"]
        if "challenge_id" in path and _maybe():
            path["challenge_id"] = _pick(_pending_challenges) or path["challenge_id"]

    body = case.body
    if isinstance(body, dict) and _positive(case, ParameterLocation.BODY):
        if isinstance(body.get("method_id"), str) and _maybe():
            body["method_id"] = SEED["method_id"]
        # A right code for the challenge in the path (answer, verify).
        if isinstance(body.get("code"), str) and path and _maybe():
            handle = path.get("challenge_id") or path.get("recovery_id")
            body["code"] = _code_for(handle) or body["code"]
        # A live proof with its right code.
        proof = body.get("proof")
        if isinstance(proof, dict) and _maybe():
            challenge = _pick(_proof_challenges)
            if challenge is not None:
                proof["challenge_id"] = challenge
                proof["code"] = _code_for(challenge) or proof.get("code", "")
        if route == ("POST", "/v1/methods") and body.get("kind") == "totp":
            body.pop("destination", None)


@schemathesis.hook
def after_call(context, case, response):
    if response.status_code not in (200, 201):
        text = response.text.replace(" ", "")
        if '"code":"locked"' in text or '"code":"failure_budget_exhausted"' in text:
            unlock()
        return
    try:
        answer = response.json()
    except ValueError:
        return
    route = _route(case)
    with _lock:
        if route == ("POST", "/v1/methods"):
            method = answer.get("method", {}).get("id")
            challenge = answer.get("challenge", {}).get("id")
            totp = (answer.get("totp") or {}).get("otpauth_uri")
            if method and challenge:
                _method_of_challenge[challenge] = method
                _pending_challenges.append(challenge)
                if totp:
                    _totp_by_method[method] = totp_secret_from_uri(totp)
        elif route in (("POST", "/v1/challenges"), ("POST", "/v1/recoveries")):
            challenge, method = answer.get("id"), answer.get("method_id")
            if challenge and method:
                _method_of_challenge[challenge] = method
                if answer.get("purpose") == "proof":
                    _proof_challenges.append(challenge)
                elif answer.get("purpose") == "recover":
                    _recoveries.append(challenge)
                else:
                    _pending_challenges.append(challenge)
        for ids in (_proof_challenges, _recoveries, _pending_challenges):
            del ids[:-50]


def unlock():
    """Wrong codes are part of the tests and lock the seeded user, and spend their failure
    budget, which only the user's own proof or an operator lifts: lift both as the
    operator (`ghostkey user unlock`)."""
    subprocess.run(
        [_env("GK_BIN"), "--config", _env("GK_CONFIG"), "user", "unlock", APP_ID, SEED["user_id"]],
        check=False,
        capture_output=True,
        timeout=30,
    )
