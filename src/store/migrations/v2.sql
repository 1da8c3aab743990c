-- Schema version 1 to 2: the rolling per-user failure budget and the per-user limit on
-- recovery starts (hostile-provider hardening).
ALTER TABLE apps ADD COLUMN user_failures_per_day            INTEGER NOT NULL DEFAULT 10;
ALTER TABLE apps ADD COLUMN recovery_starts_per_user_per_day INTEGER NOT NULL DEFAULT 5;
CREATE TABLE user_failures (
    app_id   TEXT    NOT NULL,
    user_id  TEXT    NOT NULL,
    at       INTEGER NOT NULL
) STRICT;
CREATE INDEX user_failures_by_user ON user_failures (app_id, user_id, at);
PRAGMA user_version = 2;
