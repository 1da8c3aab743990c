-- Ghostkey's canonical database schema (PostgreSQL), beside schema.sql (SQLite).
--
-- The same tables as the SQLite schema, with PostgreSQL's types (bigint, bytea), plus
-- `audit_pending`: audit events committed with their transaction and linked into the hash
-- chain shortly after by any node (src/store/postgres/audit.rs). `ghostkey db migrate`
-- creates or upgrades it by running src/store/migrations/postgres/v1.sql ... vN.sql in
-- order; a test checks that a fresh migration gives exactly this schema. The version is
-- in `ghostkey_schema`; a later version adds a migration and bumps it here
-- (src/store/README.md). PostgreSQL versions are numbered apart from SQLite's.

CREATE TABLE ghostkey_schema (
    id       integer PRIMARY KEY CHECK (id = 1),
    version  integer NOT NULL
);
INSERT INTO ghostkey_schema (id, version) VALUES (1, 1);

CREATE TABLE apps (
    id          text    PRIMARY KEY,
    name        text    NOT NULL,
    created_at  bigint  NOT NULL,
    allowed_methods                  text    NOT NULL,
    code_digits                      bigint  NOT NULL,
    totp_digits                      bigint  NOT NULL,
    code_lifetime_secs               bigint  NOT NULL,
    max_attempts_per_challenge       bigint  NOT NULL,
    user_lock_threshold              bigint  NOT NULL,
    user_backoff_base_secs           bigint  NOT NULL,
    sends_per_destination_per_hour   bigint  NOT NULL,
    sends_per_destination_per_day    bigint  NOT NULL,
    app_daily_send_budget            bigint  NOT NULL,
    requests_per_address_per_minute  bigint  NOT NULL,
    waiting_period_secs              bigint  NOT NULL,
    user_failures_per_day            bigint  NOT NULL DEFAULT 10,
    recovery_starts_per_user_per_day bigint  NOT NULL DEFAULT 5,
    code_checks_per_app_per_minute   bigint  NOT NULL DEFAULT 600,
    passkey_rp_id                    text
);

CREATE TABLE app_keys (
    app_id      text    NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
    kid         text    NOT NULL,
    public_key  bytea   NOT NULL CHECK (octet_length(public_key) = 32),
    created_at  bigint  NOT NULL,
    revoked_at  bigint,
    PRIMARY KEY (app_id, kid)
);

CREATE TABLE app_origins (
    app_id      text    NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
    origin      text    NOT NULL,
    added_at    bigint  NOT NULL,
    PRIMARY KEY (app_id, origin)
);
CREATE INDEX app_origins_by_origin ON app_origins (origin);

CREATE TABLE assertion_jtis (
    app_id      text    NOT NULL,
    jti         text    NOT NULL,
    expires_at  bigint  NOT NULL,
    PRIMARY KEY (app_id, jti)
);
CREATE INDEX assertion_jtis_by_expiry ON assertion_jtis (expires_at);

-- Every write about a user locks this row first (`SELECT ... FOR UPDATE`).
CREATE TABLE users (
    app_id                 text    NOT NULL REFERENCES apps(id),
    user_id                text    NOT NULL,
    state                  text    NOT NULL CHECK (state IN ('pending', 'active')),
    sealed_virtual_device  bytea   NOT NULL,
    vd_signing_key         bytea   NOT NULL CHECK (octet_length(vd_signing_key) = 32),
    vd_encryption_key      bytea   NOT NULL CHECK (octet_length(vd_encryption_key) = 32),
    audit_pseudonym        text    NOT NULL,
    created_at             bigint  NOT NULL,
    updated_at             bigint  NOT NULL,
    PRIMARY KEY (app_id, user_id)
);

CREATE TABLE chain_blocks (
    app_id   text    NOT NULL,
    user_id  text    NOT NULL,
    idx      bigint  NOT NULL,
    hash     bytea   NOT NULL CHECK (octet_length(hash) = 32),
    block    bytea   NOT NULL,
    added_at bigint  NOT NULL,
    PRIMARY KEY (app_id, user_id, idx),
    FOREIGN KEY (app_id, user_id) REFERENCES users(app_id, user_id) ON DELETE CASCADE
);

CREATE TABLE user_guards (
    app_id         text    NOT NULL,
    user_id        text    NOT NULL,
    failures       bigint  NOT NULL DEFAULT 0,
    backoff_until  bigint  NOT NULL DEFAULT 0,
    locked_at      bigint,
    PRIMARY KEY (app_id, user_id),
    FOREIGN KEY (app_id, user_id) REFERENCES users(app_id, user_id) ON DELETE CASCADE
);

CREATE TABLE user_failures (
    app_id   text    NOT NULL,
    user_id  text    NOT NULL,
    at       bigint  NOT NULL
);
CREATE INDEX user_failures_by_user ON user_failures (app_id, user_id, at);
CREATE INDEX user_failures_by_time ON user_failures (at);

CREATE TABLE methods (
    id               text    PRIMARY KEY,
    app_id           text    NOT NULL,
    user_id          text    NOT NULL,
    kind             text    NOT NULL CHECK (kind IN ('totp', 'sms', 'email', 'passphrase', 'passkey')),
    state            text    NOT NULL CHECK (state IN ('pending', 'confirmed')),
    key_id           text    NOT NULL,
    secret           bytea   NOT NULL,
    destination_mac  bytea,
    totp_last_step   bigint,
    created_at       bigint  NOT NULL,
    confirmed_at     bigint,
    credential_hash  bytea,
    FOREIGN KEY (app_id, user_id) REFERENCES users(app_id, user_id) ON DELETE CASCADE
);
CREATE INDEX methods_by_user ON methods (app_id, user_id);
CREATE UNIQUE INDEX methods_by_credential ON methods (credential_hash);

CREATE TABLE challenges (
    id            text    PRIMARY KEY,
    app_id        text    NOT NULL,
    user_id       text    NOT NULL,
    method_id     text    NOT NULL REFERENCES methods(id) ON DELETE CASCADE,
    purpose       text    NOT NULL CHECK (purpose IN ('confirm', 'proof', 'recover')),
    code_salt     bytea,
    code_hash     bytea,
    code_key_id   text,
    attempts      bigint  NOT NULL DEFAULT 0,
    max_attempts  bigint  NOT NULL,
    state         text    NOT NULL CHECK (state IN ('open', 'used', 'dead')),
    created_at    bigint  NOT NULL,
    expires_at    bigint  NOT NULL,
    opened_by     text,
    ceremony      bytea,
    code_scheme   text    CHECK (code_scheme IN ('hmac-sha256')),
    FOREIGN KEY (app_id, user_id) REFERENCES users(app_id, user_id) ON DELETE CASCADE
);
CREATE INDEX challenges_by_user ON challenges (app_id, user_id);
CREATE INDEX challenges_by_method ON challenges (method_id);

CREATE TABLE recoveries (
    challenge_id  text    PRIMARY KEY REFERENCES challenges(id) ON DELETE CASCADE,
    app_id        text    NOT NULL,
    user_id       text    NOT NULL,
    method_id     text    NOT NULL,
    state         text    NOT NULL CHECK (state IN ('started', 'waiting', 'released', 'cancelled')),
    available_at  bigint,
    released_at   bigint,
    cancelled_at  bigint,
    created_at    bigint  NOT NULL,
    FOREIGN KEY (app_id, user_id) REFERENCES users(app_id, user_id) ON DELETE CASCADE
);
CREATE INDEX recoveries_by_user ON recoveries (app_id, user_id);

CREATE TABLE cancel_codes (
    mac          bytea   PRIMARY KEY CHECK (octet_length(mac) = 32),
    challenge_id text    NOT NULL REFERENCES recoveries(challenge_id) ON DELETE CASCADE,
    created_at   bigint  NOT NULL,
    key_id       text
);
CREATE INDEX cancel_codes_by_recovery ON cancel_codes (challenge_id);

CREATE TABLE rate_counters (
    scope         text    NOT NULL,
    subject       bytea   NOT NULL,
    window_start  bigint  NOT NULL,
    count         bigint  NOT NULL,
    expires_at    bigint  NOT NULL,
    PRIMARY KEY (scope, subject, window_start)
);
CREATE INDEX rate_counters_by_expiry ON rate_counters (expires_at);

CREATE TABLE outbox (
    id               bigint  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    app_id           text    NOT NULL,
    method_id        text    REFERENCES methods(id) ON DELETE CASCADE,
    kind             text    NOT NULL CHECK (kind IN ('code', 'notice')),
    key_id           text    NOT NULL,
    body             bytea   NOT NULL,
    state            text    NOT NULL CHECK (state IN ('pending', 'sent', 'failed')),
    attempts         bigint  NOT NULL DEFAULT 0,
    next_attempt_at  bigint  NOT NULL,
    leased_until     bigint  NOT NULL DEFAULT 0,
    last_error       text,
    created_at       bigint  NOT NULL,
    finished_at      bigint,
    notice_kind      text,
    events           bigint  NOT NULL DEFAULT 1,
    channel            text CHECK (channel IN ('sms', 'email')),
    destination_key_id text,
    destination        bytea,
    CHECK (method_id IS NOT NULL OR (channel IS NOT NULL AND destination_key_id IS NOT NULL))
);
CREATE INDEX outbox_due ON outbox (state, next_attempt_at);
CREATE INDEX outbox_by_notice ON outbox (method_id, notice_kind, created_at);

-- The linked audit log: the same hash chain as SQLite's.
CREATE TABLE audit_events (
    seq        bigint  PRIMARY KEY,
    at         bigint  NOT NULL,
    kind       text    NOT NULL,
    app_id     text    NOT NULL,
    subject    text    NOT NULL,
    detail     text    NOT NULL,
    hash       bytea   NOT NULL CHECK (octet_length(hash) = 32)
);

-- Events committed with the transaction that caused them, waiting to be linked (in `id`
-- order, by whichever node links first) into audit_events. Nothing here is ever updated.
CREATE TABLE audit_pending (
    id         bigint  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at         bigint  NOT NULL,
    kind       text    NOT NULL,
    app_id     text    NOT NULL,
    subject    text    NOT NULL,
    detail     text    NOT NULL
);

-- The chain's head; its row lock serialises the linking (never a request's commit).
CREATE TABLE audit_head (
    id         integer PRIMARY KEY CHECK (id = 1),
    seq        bigint  NOT NULL,
    hash       bytea   NOT NULL CHECK (octet_length(hash) = 32)
);
INSERT INTO audit_head (id, seq, hash) VALUES (1, 0, decode(repeat('00', 32), 'hex'));

CREATE TABLE clock_floor (
    id         integer PRIMARY KEY CHECK (id = 1),
    at         bigint  NOT NULL
);
INSERT INTO clock_floor (id, at) VALUES (1, 0);
