-- Ghostkey's canonical database schema (SQLite).
--
-- A fresh database is created by running this file as it is; a test checks that the
-- store creates exactly this schema. `PRAGMA user_version` records the schema version;
-- a later version adds a migration in src/store/migrations/ and bumps it here
-- (src/store/README.md).
PRAGMA user_version = 8;

-- App providers registered by the operator.
CREATE TABLE apps (
    id          TEXT    PRIMARY KEY,
    name        TEXT    NOT NULL,
    created_at  INTEGER NOT NULL,
    -- The per-app policy (DESIGN.md §5); see src/domain/policy.rs for meanings and bounds.
    allowed_methods                 TEXT    NOT NULL,
    code_digits                     INTEGER NOT NULL,
    totp_digits                     INTEGER NOT NULL,
    code_lifetime_secs              INTEGER NOT NULL,
    max_attempts_per_challenge      INTEGER NOT NULL,
    user_lock_threshold             INTEGER NOT NULL,
    user_backoff_base_secs          INTEGER NOT NULL,
    sends_per_destination_per_hour  INTEGER NOT NULL,
    sends_per_destination_per_day   INTEGER NOT NULL,
    app_daily_send_budget           INTEGER NOT NULL,
    requests_per_address_per_minute INTEGER NOT NULL,
    waiting_period_secs             INTEGER NOT NULL,
    -- Added in schema version 2.
    user_failures_per_day            INTEGER NOT NULL DEFAULT 10,
    recovery_starts_per_user_per_day INTEGER NOT NULL DEFAULT 5,
    code_checks_per_app_per_minute   INTEGER NOT NULL DEFAULT 600,
    -- Added in schema version 6: the WebAuthn relying-party id of the app's passkeys.
    passkey_rp_id                    TEXT
) STRICT;

-- Ed25519 public keys that sign an app's assertions (JWT header `kid`).
CREATE TABLE app_keys (
    app_id      TEXT    NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
    kid         TEXT    NOT NULL,
    public_key  BLOB    NOT NULL CHECK (length(public_key) = 32),
    created_at  INTEGER NOT NULL,
    revoked_at  INTEGER,
    PRIMARY KEY (app_id, kid)
) STRICT, WITHOUT ROWID;

-- Web origins an app allows to call the API from a browser (schema version 4): a page at
-- one of them gets CORS headers on requests about this app; any other origin is refused
-- (`origin_not_allowed`). Normalised: lowercase `scheme://host[:port]`, no default port.
CREATE TABLE app_origins (
    app_id      TEXT    NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
    origin      TEXT    NOT NULL,
    added_at    INTEGER NOT NULL,
    PRIMARY KEY (app_id, origin)
) STRICT, WITHOUT ROWID;
CREATE INDEX app_origins_by_origin ON app_origins (origin);

-- Single use of assertion ids: a `jti` is remembered until its assertion can no longer
-- be accepted anyway.
CREATE TABLE assertion_jtis (
    app_id      TEXT    NOT NULL,
    jti         TEXT    NOT NULL,
    expires_at  INTEGER NOT NULL,
    PRIMARY KEY (app_id, jti)
) STRICT, WITHOUT ROWID;
CREATE INDEX assertion_jtis_by_expiry ON assertion_jtis (expires_at);

-- Enrolled users: the sealed virtual device (ciphertext Ghostkey cannot open) and the
-- virtual device's public keys.
CREATE TABLE users (
    app_id                 TEXT    NOT NULL REFERENCES apps(id),
    user_id                TEXT    NOT NULL,
    state                  TEXT    NOT NULL CHECK (state IN ('pending', 'active')),
    sealed_virtual_device  BLOB    NOT NULL,
    vd_signing_key         BLOB    NOT NULL CHECK (length(vd_signing_key) = 32),
    vd_encryption_key      BLOB    NOT NULL CHECK (length(vd_encryption_key) = 32),
    -- A random name for the user in the audit log: erasing the user deletes the only link
    -- between it and the user id, so the events stay (and still verify) but name no one.
    audit_pseudonym        TEXT    NOT NULL,
    created_at             INTEGER NOT NULL,
    updated_at             INTEGER NOT NULL,
    PRIMARY KEY (app_id, user_id)
) STRICT, WITHOUT ROWID;

-- Each user's device chain (DESIGN.md §4): blocks as their clients encoded them, the
-- root written at enrolment, each later block checked against the whole chain first.
CREATE TABLE chain_blocks (
    app_id   TEXT    NOT NULL,
    user_id  TEXT    NOT NULL,
    idx      INTEGER NOT NULL,
    hash     BLOB    NOT NULL CHECK (length(hash) = 32),
    block    BLOB    NOT NULL,
    added_at INTEGER NOT NULL,
    PRIMARY KEY (app_id, user_id, idx),
    FOREIGN KEY (app_id, user_id) REFERENCES users(app_id, user_id) ON DELETE CASCADE
) STRICT, WITHOUT ROWID;

-- Abuse-limit state per user: failures back off exponentially, then lock the user until
-- a proof through a confirmed method or an operator lifts the lock.
CREATE TABLE user_guards (
    app_id         TEXT    NOT NULL,
    user_id        TEXT    NOT NULL,
    failures       INTEGER NOT NULL DEFAULT 0,
    backoff_until  INTEGER NOT NULL DEFAULT 0,
    locked_at      INTEGER,
    PRIMARY KEY (app_id, user_id),
    FOREIGN KEY (app_id, user_id) REFERENCES users(app_id, user_id) ON DELETE CASCADE
) STRICT, WITHOUT ROWID;

-- Every failed code check of a user, kept 24 hours: the rolling failure budget
-- (`user_failures_per_day`) counts them, and nothing the app provider does removes them
-- (schema version 2).
CREATE TABLE user_failures (
    app_id   TEXT    NOT NULL,
    user_id  TEXT    NOT NULL,
    at       INTEGER NOT NULL
) STRICT;
CREATE INDEX user_failures_by_user ON user_failures (app_id, user_id, at);

-- Verification methods. The secret part (TOTP seed, phone number, e-mail address, or for a
-- passphrase the Argon2id hash of the client's verifier) is encrypted with the server data
-- key named by `key_id`; `destination_mac` is an HMAC of
-- the normalised destination, the only form rate limits ever see.
CREATE TABLE methods (
    id               TEXT    PRIMARY KEY,
    app_id           TEXT    NOT NULL,
    user_id          TEXT    NOT NULL,
    kind             TEXT    NOT NULL CHECK (kind IN ('totp', 'sms', 'email', 'passphrase', 'passkey')),
    state            TEXT    NOT NULL CHECK (state IN ('pending', 'confirmed')),
    key_id           TEXT    NOT NULL,
    secret           BLOB    NOT NULL,
    destination_mac  BLOB,
    totp_last_step   INTEGER,
    created_at       INTEGER NOT NULL,
    confirmed_at     INTEGER,
    -- Added in schema version 6: for a registered passkey, SHA-256 of its credential id
    -- (domain-separated), unique across every app and user; the id stays encrypted.
    credential_hash  BLOB,
    FOREIGN KEY (app_id, user_id) REFERENCES users(app_id, user_id) ON DELETE CASCADE
) STRICT;
CREATE INDEX methods_by_user ON methods (app_id, user_id);
CREATE UNIQUE INDEX methods_by_credential ON methods (credential_hash);

-- One-time-code challenges. SMS and e-mail codes are kept only as an Argon2id hash keyed
-- with the server pepper; TOTP challenges have no code of their own.
CREATE TABLE challenges (
    id            TEXT    PRIMARY KEY,
    app_id        TEXT    NOT NULL,
    user_id       TEXT    NOT NULL,
    method_id     TEXT    NOT NULL REFERENCES methods(id) ON DELETE CASCADE,
    purpose       TEXT    NOT NULL CHECK (purpose IN ('confirm', 'proof', 'recover')),
    code_salt     BLOB,
    code_hash     BLOB,
    code_key_id   TEXT,
    attempts      INTEGER NOT NULL DEFAULT 0,
    max_attempts  INTEGER NOT NULL,
    state         TEXT    NOT NULL CHECK (state IN ('open', 'used', 'dead')),
    created_at    INTEGER NOT NULL,
    expires_at    INTEGER NOT NULL,
    -- Added in schema version 2: the purpose of the assertion that opened the challenge; a
    -- proof authorises only a request whose assertion has the same purpose.
    opened_by     TEXT,
    -- Added in schema version 6: a passkey method's WebAuthn ceremony state, encrypted
    -- under the data key code_key_id names.
    ceremony      BLOB,
    -- Added in schema version 7: how code_hash was computed. 'hmac-sha256': HMAC-SHA256
    -- under the MAC key derived from the pepper of the data key code_key_id names, over a
    -- label, code_salt and the code. NULL (challenges written before version 7): Argon2id
    -- of the code with code_salt and that pepper as its secret.
    code_scheme   TEXT    CHECK (code_scheme IN ('hmac-sha256')),
    FOREIGN KEY (app_id, user_id) REFERENCES users(app_id, user_id) ON DELETE CASCADE
) STRICT;
CREATE INDEX challenges_by_user ON challenges (app_id, user_id);

-- Recoveries: one per `recover` challenge. The sealed virtual device is released once,
-- after a correct code and the app's waiting period, unless someone cancelled.
CREATE TABLE recoveries (
    challenge_id  TEXT    PRIMARY KEY REFERENCES challenges(id) ON DELETE CASCADE,
    app_id        TEXT    NOT NULL,
    user_id       TEXT    NOT NULL,
    method_id     TEXT    NOT NULL,
    state         TEXT    NOT NULL CHECK (state IN ('started', 'waiting', 'released', 'cancelled')),
    available_at  INTEGER,
    released_at   INTEGER,
    cancelled_at  INTEGER,
    created_at    INTEGER NOT NULL,
    FOREIGN KEY (app_id, user_id) REFERENCES users(app_id, user_id) ON DELETE CASCADE
) STRICT;
CREATE INDEX recoveries_by_user ON recoveries (app_id, user_id);

-- Cancel codes of recoveries, as a MAC keyed from the data key: each notice about a started
-- or waiting recovery carries one, and it cancels that recovery with no assertion
-- (schema version 2). `key_id` names the data key whose one-time-code MAC key made `mac`
-- (schema version 8); NULL for codes written before, under that era's destination MAC key.
CREATE TABLE cancel_codes (
    mac          BLOB    PRIMARY KEY CHECK (length(mac) = 32),
    challenge_id TEXT    NOT NULL REFERENCES recoveries(challenge_id) ON DELETE CASCADE,
    created_at   INTEGER NOT NULL,
    key_id       TEXT
) STRICT, WITHOUT ROWID;
CREATE INDEX cancel_codes_by_recovery ON cancel_codes (challenge_id);

-- Fixed-window counters for rate limits and budgets; `subject` is an HMAC or an app id,
-- never a destination or an address in clear.
CREATE TABLE rate_counters (
    scope         TEXT    NOT NULL,
    subject       BLOB    NOT NULL,
    window_start  INTEGER NOT NULL,
    count         INTEGER NOT NULL,
    expires_at    INTEGER NOT NULL,
    PRIMARY KEY (scope, subject, window_start)
) STRICT, WITHOUT ROWID;
CREATE INDEX rate_counters_by_expiry ON rate_counters (expires_at);

-- Messages to send (codes and notices), written in the same transaction as what caused
-- them and sent by the delivery worker. The destination is the method's own (encrypted)
-- one, read at send time; the body is encrypted with the data key and wiped once sent.
CREATE TABLE outbox (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    app_id           TEXT    NOT NULL,
    -- The destination method; NULL for a farewell notice (an erasure's), which outlives
    -- the method and carries its own encrypted destination until it is sent.
    method_id        TEXT    REFERENCES methods(id) ON DELETE CASCADE,
    kind             TEXT    NOT NULL CHECK (kind IN ('code', 'notice')),
    key_id           TEXT    NOT NULL,
    body             BLOB    NOT NULL,
    state            TEXT    NOT NULL CHECK (state IN ('pending', 'sent', 'failed')),
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  INTEGER NOT NULL,
    leased_until     INTEGER NOT NULL DEFAULT 0,
    last_error       TEXT,
    created_at       INTEGER NOT NULL,
    finished_at      INTEGER,
    -- Security notices of one kind to one method are coalesced, at most one sent per hour,
    -- `events` saying how many events it stands for.
    notice_kind      TEXT,
    events           INTEGER NOT NULL DEFAULT 1,
    -- A farewell notice's own destination (wiped once sent or given up).
    channel            TEXT CHECK (channel IN ('sms', 'email')),
    destination_key_id TEXT,
    destination        BLOB,
    CHECK (method_id IS NOT NULL OR (channel IS NOT NULL AND destination_key_id IS NOT NULL))
) STRICT;
CREATE INDEX outbox_due ON outbox (state, next_attempt_at);
CREATE INDEX outbox_by_notice ON outbox (method_id, notice_kind, created_at);

-- The audit log: append-only, hash-chained events with no secret or personal value (users
-- appear under their audit pseudonym). `ghostkey audit verify` recomputes every link.
CREATE TABLE audit_events (
    seq        INTEGER PRIMARY KEY,
    at         INTEGER NOT NULL,
    kind       TEXT    NOT NULL,
    app_id     TEXT    NOT NULL,
    subject    TEXT    NOT NULL,
    detail     TEXT    NOT NULL,
    hash       BLOB    NOT NULL CHECK (length(hash) = 32)
) STRICT;

-- The audit log's head: the last event's position and hash, written in the same transaction
-- as each event (schema version 3). The chain alone cannot show that its last events were
-- deleted; `ghostkey audit verify` checks that the chain still reaches this head.
CREATE TABLE audit_head (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    seq        INTEGER NOT NULL,
    hash       BLOB    NOT NULL CHECK (length(hash) = 32)
) STRICT;
INSERT INTO audit_head (id, seq, hash) VALUES (1, 0, zeroblob(32));

-- The latest time a purge relied on (schema version 3): expired replay-cache entries, rate
-- windows and failures are forgotten as time passes, so the server's time must never go
-- back before it, even across a restart (it starts from this, or the last audit event).
CREATE TABLE clock_floor (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    at         INTEGER NOT NULL
) STRICT;
INSERT INTO clock_floor (id, at) VALUES (1, 0);
