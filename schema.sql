-- Ghostkey's canonical database schema (SQLite).
--
-- A fresh database is created by running this file as it is; a test checks that the
-- store creates exactly this schema. `PRAGMA user_version` records the schema version;
-- a later version adds a migration in src/store/sqlite.rs and bumps it here.
PRAGMA user_version = 1;

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
    waiting_period_secs             INTEGER NOT NULL
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
    created_at             INTEGER NOT NULL,
    updated_at             INTEGER NOT NULL,
    PRIMARY KEY (app_id, user_id)
) STRICT, WITHOUT ROWID;
