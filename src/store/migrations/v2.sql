-- Schema version 1 to 2 (hostile-provider hardening): the rolling per-user failure budget,
-- the per-user limit on recovery starts, recovery cancel codes, and coalesced notices.
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
ALTER TABLE outbox ADD COLUMN notice_kind TEXT;
ALTER TABLE outbox ADD COLUMN events INTEGER NOT NULL DEFAULT 1;
CREATE INDEX outbox_by_notice ON outbox (method_id, notice_kind, created_at);
ALTER TABLE challenges ADD COLUMN opened_by TEXT;
PRAGMA user_version = 2;
