"""Schemathesis hooks for the API conformance stage of .ci/run (.ci/conformance.sh).

Two roles in one file:

- `python schemathesis_hooks.py seed OUT.json`, before the run: enrols one user with a
  confirmed TOTP method through the Rust command-line client (`ghostkey client enroll
  --totp`, computing the TOTP code here), then prepares, through the API as a client
  would, the *fixtures* the run needs to reach every operation's success answer: users
  enrolled (a root block signed with the app key, as an app backend would), e-mail methods
  confirmed, proofs, started and waiting recoveries, cancel codes. The one-time codes and
  the cancel codes are read where an operator of this development instance reads them:
  the server's log, where its development message sink (`dev-log`, the default outside
  production) writes every message. Writes what the hooks need to OUT.json.
- loaded by schemathesis (SCHEMATHESIS_HOOKS=this file): gives every request a fresh,
  valid, single-use app assertion (EdDSA JWT) with the purpose its route needs; in
  positive test cases only, sometimes swaps generated ids and codes for live ones (the
  seeded user, its method, challenges and recoveries seen in earlier responses, the
  current TOTP code), and sometimes uses one of the seed step's fixtures whole (its user's
  assertion, ids, codes, a block or enrolment built for it) so that every operation
  reaches its success answer and not only its refusals. The hooks send no request of
  their own during the run: every request the server logs after the seed step is one
  schemathesis sent (.ci/conformance_tally.py counts them).

Configuration comes from the environment, set by .ci/conformance.sh:
GK_BASE_URL, GK_SERVICE_ID, GK_APP_ID, GK_KEY_ID, GK_KEY_FILE (the app's PKCS#8 PEM
signing key), GK_SEED_FILE (the seed step's output), GK_BIN (the ghostkey binary),
GK_CONFIG (the server's configuration file: the seed step and the operator's unlock use
them), GK_SERVER_LOG (the server's log, where `dev-log` writes messages), GK_FIXTURES
(fixtures per operation, default 4) and GK_FIXTURE_REPORT (where the hooks write, at the
end of the run, what status each fixture was answered with).

Nothing here prints a code, a key or a token.
"""

import atexit
import base64
import collections
import hashlib
import hmac
import json
import os
import random
import re
import secrets
import struct
import subprocess
import sys
import threading
import time
import urllib.parse

import jwt  # PyJWT
import requests
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_pem_private_key,
)

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


# --- What both roles share: the app's key, assertions, blocks, enrolments ---

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

_lock = threading.Lock()
_minted = {}  # token -> (sub, purpose), to re-mint it fresh on every send


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


def b64u(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64u_decode(text):
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def raw_public(private_key):
    return private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def _bytes(data):
    """`bytes` of the block encoding: a u16 length, then the bytes."""
    return struct.pack(">H", len(data)) + data


def block(kind, index, prev_hash, user_id, body, author, sign):
    """A signed block of the device chain, encoding version 1 (docs/PROTOCOL.md §4.1)."""
    name = {1: "root", 2: "device-added", 3: "device-revoked"}[kind]
    unsigned = (
        bytes([1, kind])
        + struct.pack(">Q", index)
        + prev_hash
        + _bytes(APP_ID.encode())
        + _bytes(user_id.encode())
        + body
        + author
    )
    return unsigned + sign(f"ghostkey/chain/v1/{name}\0".encode() + unsigned)


def sealed_blob():
    """A blob of the sealed virtual device's outer format (version 1, nonce, ciphertext
    and tag of a 64-byte plaintext): the server checks that format and nothing more (it
    cannot open the blob)."""
    return bytes([1]) + secrets.token_bytes(24 + 16 + 64)


def enrolment(user_id):
    """An enrolment request for `user_id` as an app backend builds it: a new virtual
    device, and the root of the user's chain signed with the app key. Returns the request
    body and what appending to that chain needs (the virtual device's signing key and the
    chain's head)."""
    vd = Ed25519PrivateKey.generate()
    vd_encryption = raw_public(X25519PrivateKey.generate())
    user_public = raw_public(X25519PrivateKey.generate())
    # The user private key sealed to the virtual device (a sealed box, 80 bytes): the
    # server never opens it.
    body = raw_public(vd) + vd_encryption + user_public + _bytes(secrets.token_bytes(80))
    root = block(1, 0, bytes(32), user_id, body, _bytes(KEY_ID.encode()), SIGNING_KEY.sign)
    request = {
        "sealed_virtual_device": b64u(sealed_blob()),
        "virtual_device": {"signing_key": b64u(raw_public(vd)), "encryption_key": b64u(vd_encryption)},
        "root_block": b64u(root),
    }
    chain = {
        "user_id": user_id,
        "vd_seed": b64u(vd.private_bytes_raw()),
        "len": 1,
        "head": b64u(hashlib.sha256(root).digest()),
    }
    return request, chain


def device_added(chain):
    """The next block of `chain`: a new device admitted, signed by the virtual device."""
    vd = Ed25519PrivateKey.from_private_bytes(b64u_decode(chain["vd_seed"]))
    body = (
        raw_public(Ed25519PrivateKey.generate())
        + raw_public(X25519PrivateKey.generate())
        + _bytes(secrets.token_bytes(80))
    )
    return block(2, chain["len"], b64u_decode(chain["head"]), chain["user_id"], body, raw_public(vd), vd.sign)


# --- The seed step (run with the venv's python, before schemathesis) ---

CODE_RE = re.compile(r"^(\d{4,10}) is your ")
CANCEL_RE = re.compile(r"cancel code ([0-9A-Z]{4}(?:-[0-9A-Z]{4}){4})")


class Mailbox:
    """The messages the development sink `dev-log` wrote to the server's log."""

    DELIVERY = re.compile(r'dev-log delivery .* to="([^"]*)" .*body="(.*)"\s*$')

    def __init__(self, path):
        self.path = path
        self.position = 0
        self.messages = []  # (destination, body), in the order they were sent

    def _read(self):
        with open(self.path, "rb") as f:
            f.seek(self.position)
            data = f.read()
        end = data.rfind(b"\n")
        if end < 0:
            return
        self.position += end + 1
        for line in data[: end + 1].decode("utf-8", "replace").splitlines():
            m = self.DELIVERY.search(line)
            if m:
                self.messages.append((m.group(1), m.group(2)))

    def mark(self):
        """Where the mailbox stands: `wait` looks only at messages after it."""
        self._read()
        return len(self.messages)

    def wait(self, to, pattern, after, timeout=20):
        """The first match of `pattern` in a message to `to` after the mark `after`."""
        deadline = time.monotonic() + timeout
        while True:
            self._read()
            for destination, body in self.messages[after:]:
                m = pattern.search(body) if destination == to else None
                if m:
                    return m.group(1)
            if time.monotonic() > deadline:
                raise RuntimeError(f"seed: no matching message to {to} in the log within {timeout} s")
            time.sleep(0.02)


def call(method, path, purpose=None, user=None, body=None, expect=(200, 201, 204)):
    """One request of the seed step; anything but an expected status stops it."""
    headers = {"Authorization": "Bearer " + mint(user, purpose)} if purpose else {}
    response = requests.request(method, BASE_URL + path, json=body, headers=headers, timeout=30)
    if response.status_code not in expect:
        try:
            code = response.json().get("code")
        except ValueError:
            code = None
        raise RuntimeError(f"seed: {method} {path} answered {response.status_code} ({code})")
    return response.json() if response.content else None


def enrolled(prefix):
    """A new user, enrolled (pending: no method yet)."""
    user = f"{prefix}-{secrets.token_hex(6)}"
    call("POST", "/v1/enrollments", "enroll", user, enrolment(user)[0], expect=(201,))
    return user


def pending_email(mailbox, user):
    """Adds an e-mail method to `user` (no confirmed method yet): its id, its confirm
    challenge, the code sent, and the address."""
    address = f"{user}@example.org"
    mark = mailbox.mark()
    added = call("POST", "/v1/methods", "enroll", user, {"kind": "email", "destination": address}, expect=(201,))
    code = mailbox.wait(address, CODE_RE, mark)
    return added["method"]["id"], added["challenge"]["id"], code, address


def email_user(mailbox, prefix):
    """A new user with a confirmed e-mail method (an active enrolment)."""
    user = enrolled(prefix)
    method, challenge, code, address = pending_email(mailbox, user)
    call("POST", f"/v1/challenges/{challenge}/answer", body={"code": code}, expect=(200,))
    return {"user_id": user, "method_id": method, "address": address}


def proof(mailbox, u, purpose="manage"):
    """A proof through `u`'s e-mail method, opened with `purpose`: `manage` for a change,
    `recover` for a cancellation by the user."""
    mark = mailbox.mark()
    challenge = call(
        "POST", "/v1/challenges", purpose, u["user_id"], {"method_id": u["method_id"], "purpose": "proof"}, expect=(201,)
    )
    return {"challenge_id": challenge["id"], "code": mailbox.wait(u["address"], CODE_RE, mark)}


def started_recovery(mailbox, u):
    mark = mailbox.mark()
    recovery = call("POST", "/v1/recoveries", "recover", u["user_id"], {"method_id": u["method_id"]}, expect=(201,))
    return recovery["id"], mailbox.wait(u["address"], CODE_RE, mark)


def waiting_recovery(mailbox, u):
    """A recovery whose code was right: waiting out the app's waiting period (1 s here).
    Returns its id, when it can be released, and the cancel code the notice carried."""
    recovery, code = started_recovery(mailbox, u)
    mark = mailbox.mark()
    answer = call("POST", f"/v1/recoveries/{recovery}/verify", body={"code": code}, expect=(200,))
    if answer.get("state") != "waiting":
        raise RuntimeError(f"seed: a verified recovery is {answer.get('state')}, not waiting")
    return recovery, answer["available_at"], mark


def fixtures(mailbox, n):
    """`n` fixtures for each operation the seeded user's swaps cannot bring to success."""
    names = ("add_method", "answer", "unlock", "replace", "remove", "verify", "release", "cancel", "cancel_code", "erase")
    f = {name: [] for name in names}
    general = [email_user(mailbox, "conf-fixture") for _ in range(3)]
    for i in range(n):
        u = general[i % len(general)]
        f["unlock"].append({"user_id": u["user_id"], "proof": proof(mailbox, u)})
        f["replace"].append({"user_id": u["user_id"], "proof": proof(mailbox, u)})
        # A pending method (added with one proof), to remove with another.
        added = call("POST", "/v1/methods", "manage", u["user_id"], {"kind": "totp", "proof": proof(mailbox, u)}, expect=(201,))
        f["remove"].append({"user_id": u["user_id"], "method_id": added["method"]["id"], "proof": proof(mailbox, u)})
        recovery, code = started_recovery(mailbox, u)
        f["verify"].append({"recovery_id": recovery, "code": code})
        recovery, available_at, _ = waiting_recovery(mailbox, u)
        f["release"].append({"user_id": u["user_id"], "recovery_id": recovery, "available_at": available_at})
        # Cancelled by the app provider (`manage`, no proof), or by the user (`recover` and
        # a proof opened for it).
        recovery, _ = started_recovery(mailbox, u)
        if i % 2:
            cancel = {"purpose": "recover", "body": {"proof": proof(mailbox, u, "recover")}}
        else:
            cancel = {"purpose": "manage", "body": {}}
        f["cancel"].append({"user_id": u["user_id"], "recovery_id": recovery, **cancel})
        # A user of its own: a cancel code cancels every open recovery of its user.
        c = email_user(mailbox, "conf-cancel")
        _, _, mark = waiting_recovery(mailbox, c)
        f["cancel_code"].append({"cancel_code": mailbox.wait(c["address"], CANCEL_RE, mark)})
        _, challenge, code, _ = pending_email(mailbox, enrolled("conf-pending"))
        f["answer"].append({"challenge_id": challenge, "code": code})
        f["add_method"].append({"user_id": enrolled("conf-adding")})
        f["erase"].append({"user_id": enrolled("conf-erased")})
    chains = []
    for _ in range(2):
        user = f"conf-chain-{secrets.token_hex(6)}"
        request, chain = enrolment(user)
        call("POST", "/v1/enrollments", "enroll", user, request, expect=(201,))
        chains.append(chain)
    f["chains"] = chains
    return f


def seed_totp_user():
    """Enrols SEEDED_USER with a confirmed TOTP method through the Rust command-line client."""
    work = os.path.dirname(os.path.abspath(_env("GK_SEED_FILE")))
    args = [
        _env("GK_BIN"),
        "client",
        "enroll",
        "--server",
        BASE_URL,
        "--service-id",
        SERVICE_ID,
        "--app-id",
        APP_ID,
        "--key-file",
        _env("GK_KEY_FILE"),
        "--key-id",
        KEY_ID,
        "--user",
        SEEDED_USER,
        "--secret-file",
        os.path.join(work, "seeded-user.secret"),
        "--totp",
    ]
    proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
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
    return words[words.index("method") + 1], params


def seed(out_path):
    started = time.monotonic()
    method_id, params = seed_totp_user()
    print(f"seeded user {SEEDED_USER} with confirmed TOTP method {method_id}")
    n = int(os.environ.get("GK_FIXTURES", "4"))
    f = fixtures(Mailbox(_env("GK_SERVER_LOG")), n)
    with open(out_path, "w", encoding="utf-8") as out:
        json.dump({"user_id": SEEDED_USER, "method_id": method_id, "totp": params, "fixtures": f}, out)
    os.chmod(out_path, 0o600)
    print(f"seeded {n} fixtures per operation in {time.monotonic() - started:.1f} s")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "seed":
        seed(sys.argv[2])
        sys.exit(0)
    sys.exit("usage: schemathesis_hooks.py seed OUT.json")


# --- The hooks (loaded by schemathesis) ---

import schemathesis  # noqa: E402
from schemathesis.core.parameters import ParameterLocation  # noqa: E402

with open(_env("GK_SEED_FILE"), encoding="utf-8") as _f:
    SEED = json.load(_f)
FIXTURES = SEED["fixtures"]
# Enrolments and blocks are built during the run, as many as the other fixtures.
FIXTURES["enroll"] = [None] * len(FIXTURES["erase"])
FIXTURES["append_block"] = [None] * len(FIXTURES["erase"])
# How often a positive case of an operation takes one of its fixtures while they last.
FIXTURE_CHANCE = 0.5

# What earlier responses taught us, shared between schemathesis' workers.
_totp_by_method = {SEED["method_id"]: SEED["totp"]}  # method id -> TOTP parameters
_method_of_challenge = {}  # challenge id -> method id
_proof_challenges = []  # ids of proof challenges of the seeded user
_recoveries = []  # recovery ids of the seeded user
_pending_challenges = []  # confirm challenges of methods the tests added
_chains = list(FIXTURES.pop("chains"))  # chains whose virtual device key we hold
_blocks_sent = {}  # block sent -> its chain, to move the chain's head once appended
_enrolments_sent = {}  # root block sent -> its chain, to append to once enrolled
_fixture_cases = {}  # id of a case sent as a fixture -> the fixture's name
_fixture_answers = collections.Counter()  # (fixture, status) -> count
_rng = random.Random(0x6B)


@atexit.register
def _report_fixtures():
    """What the fixtures got, for .ci/conformance.sh to show (GK_FIXTURE_REPORT)."""
    path = os.environ.get("GK_FIXTURE_REPORT")
    if path:
        with open(path, "w", encoding="utf-8") as f:
            for (name, status), n in sorted(_fixture_answers.items()):
                f.write(f"{name} {status} {n}\n")


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

# The fixture each operation takes, by route.
FIXTURE_OF = {
    ("POST", "/v1/enrollments"): "enroll",
    ("POST", "/v1/methods"): "add_method",
    ("POST", "/v1/challenges/{challenge_id}/answer"): "answer",
    ("POST", "/v1/methods/{method_id}/remove"): "remove",
    ("POST", "/v1/users/unlock"): "unlock",
    ("POST", "/v1/recoveries/{recovery_id}/verify"): "verify",
    ("POST", "/v1/recoveries/{recovery_id}/release"): "release",
    ("POST", "/v1/recoveries/{recovery_id}/cancel"): "cancel",
    ("POST", "/v1/recoveries/cancel"): "cancel_code",
    ("POST", "/v1/virtual-device/replace"): "replace",
    ("POST", "/v1/users/erase"): "erase",
    ("POST", "/v1/chain/blocks"): "append_block",
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


def _all_positive(case):
    return all(_positive(case, location) for location in ParameterLocation if location.value)


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


def _our_assertion(case):
    """The request carries an assertion these hooks minted (not a test of a missing or
    broken one)."""
    value = (case.headers or {}).get("Authorization", "")
    with _lock:
        return value.startswith("Bearer ") and value[len("Bearer ") :] in _minted


def _take_fixture(case):
    """One of the operation's fixtures, now and then, in positive cases only."""
    name = FIXTURE_OF.get(_route(case))
    if name is None or not _all_positive(case):
        return None, None
    # Not the coverage phase's probes of other HTTP methods (they answer 405).
    if str(case.method).upper() != case.operation.method.upper():
        return None, None
    if _route(case) in ROUTES and not _our_assertion(case):
        return None, None
    with _lock:
        queue = FIXTURES.get(name)
        if not queue or _rng.random() >= FIXTURE_CHANCE:
            return None, None
        if name == "release" and queue[0]["available_at"] > time.time():
            return None, None
        return name, queue.pop(0)


def _as(case, user, purpose):
    case.headers["Authorization"] = "Bearer " + mint(user, purpose)


def use_fixture(case):
    """Makes the case the success of its operation, from a fixture: the fixture's name, or
    None if none was taken."""
    name, fixture = _take_fixture(case)
    if name is None:
        return None
    if name == "enroll":
        user = fresh_user()
        case.body, chain = enrolment(user)
        with _lock:
            _enrolments_sent[case.body["root_block"]] = chain
        _as(case, user, "enroll")
    elif name == "add_method":
        case.body = {"kind": "totp"}
        _as(case, fixture["user_id"], "enroll")
    elif name == "answer":
        case.path_parameters = {"challenge_id": fixture["challenge_id"]}
        case.body = {"code": fixture["code"]}
    elif name == "remove":
        case.path_parameters = {"method_id": fixture["method_id"]}
        case.body = {"proof": fixture["proof"]}
        _as(case, fixture["user_id"], "manage")
    elif name == "unlock":
        case.body = {"proof": fixture["proof"]}
        _as(case, fixture["user_id"], "manage")
    elif name == "verify":
        case.path_parameters = {"recovery_id": fixture["recovery_id"]}
        case.body = {"code": fixture["code"]}
    elif name == "release":
        case.path_parameters = {"recovery_id": fixture["recovery_id"]}
        _as(case, fixture["user_id"], "recover")
    elif name == "cancel":
        case.path_parameters = {"recovery_id": fixture["recovery_id"]}
        case.body = fixture["body"]
        _as(case, fixture["user_id"], fixture["purpose"])
    elif name == "cancel_code":
        case.body = {"cancel_code": fixture["cancel_code"]}
    elif name == "replace":
        case.body = {"sealed_virtual_device": b64u(sealed_blob()), "proof": fixture["proof"]}
        _as(case, fixture["user_id"], "manage")
    elif name == "erase":
        _as(case, fixture["user_id"], "manage")
    elif name == "append_block":
        chain = _pick(_chains)
        if chain is None:
            return None
        encoded = b64u(device_added(chain))
        with _lock:
            _blocks_sent[encoded] = chain
        case.body = {"block": encoded}
        _as(case, chain["user_id"], _pick(["recover", "manage"]))
    return name


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

    name = use_fixture(case)
    if name:
        with _lock:
            _fixture_cases[id(case)] = name
        return

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
    with _lock:
        name = _fixture_cases.pop(id(case), None)
        if name is not None:
            _fixture_answers[(name, response.status_code)] += 1
    if response.status_code not in (200, 201, 204):
        text = response.text.replace(" ", "")
        if '"code":"locked"' in text or '"code":"failure_budget_exhausted"' in text:
            unlock()
        return
    route = _route(case)
    if route == ("POST", "/v1/chain/blocks"):
        encoded = (case.body or {}).get("block") if isinstance(case.body, dict) else None
        with _lock:
            chain = _blocks_sent.pop(encoded, None) if encoded else None
            if chain is not None:
                chain["len"] += 1
                chain["head"] = b64u(hashlib.sha256(b64u_decode(encoded)).digest())
        return
    try:
        answer = response.json()
    except ValueError:
        return
    with _lock:
        if route == ("POST", "/v1/enrollments") and isinstance(case.body, dict):
            # An enrolment built here: its chain can take blocks too.
            chain = _enrolments_sent.pop(case.body.get("root_block"), None)
            if chain is not None:
                _chains.append(chain)
        elif route == ("POST", "/v1/methods"):
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
