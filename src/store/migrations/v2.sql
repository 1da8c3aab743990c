-- Schema version 1 to 2 (hostile-provider hardening): the rolling per-user failure budget,
-- the per-user limit on recovery starts, recovery cancel codes, coalesced notices, farewell
-- notices, and proofs bound to their purpose.
ALTER TABLE apps ADD COLUMN user_failures_per_day            INTEGER NOT NULL DEFAULT 10;
ALTER TABLE apps ADD COLUMN recovery_starts_per_user_per_day INTEGER NOT NULL DEFAULT 5;
ALTER TABLE apps ADD COLUMN code_checks_per_app_per_minute   INTEGER NOT NULL DEFAULT 600;
CREATE TABLE user_failures (
    app_id   TEXT    NOT NULL,
    user_id  TEXT    NOT NULL,
    at       INTEGER NOT NULL
) STRICT;
CREATE INDEX user_failures_by_user ON user_failures (app_id, user_id, at);
-- Cancel codes of recoveries, as a MAC keyed from the data key: each notice about a started
-- or waiting recovery carries one, and it cancels that recovery with no assertion
-- (schema version 2).
CREATE TABLE cancel_codes (
    mac          BLOB    PRIMARY KEY CHECK (length(mac) = 32),
    challenge_id TEXT    NOT NULL REFERENCES recoveries(challenge_id) ON DELETE CASCADE,
    created_at   INTEGER NOT NULL
) STRICT, WITHOUT ROWID;
CREATE INDEX cancel_codes_by_recovery ON cancel_codes (challenge_id);
-- The outbox is rebuilt: a farewell notice has no method (a column's NOT NULL cannot be
-- dropped in place).
CREATE TABLE outbox_v2 (
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
INSERT INTO outbox_v2 (id, app_id, method_id, kind, key_id, body, state, attempts,
                       next_attempt_at, leased_until, last_error, created_at, finished_at)
    SELECT id, app_id, method_id, kind, key_id, body, state, attempts,
           next_attempt_at, leased_until, last_error, created_at, finished_at FROM outbox;
DROP TABLE outbox;
ALTER TABLE outbox_v2 RENAME TO outbox;
CREATE INDEX outbox_due ON outbox (state, next_attempt_at);
CREATE INDEX outbox_by_notice ON outbox (method_id, notice_kind, created_at);
ALTER TABLE challenges ADD COLUMN opened_by TEXT;
PRAGMA user_version = 2;
