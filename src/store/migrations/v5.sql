-- Schema version 4 to 5: passphrase methods (docs/PROTOCOL.md §5.6). SQLite cannot change
-- a CHECK constraint in place, so the methods table is rebuilt (SQLite's documented
-- procedure: the store runs migrations with foreign keys off, then checks them before it
-- commits). The secret of a passphrase method is Argon2id(verifier; salt, pepper), itself
-- encrypted at rest like every method secret; no new column.
CREATE TABLE methods_v5 (
    id               TEXT    PRIMARY KEY,
    app_id           TEXT    NOT NULL,
    user_id          TEXT    NOT NULL,
    kind             TEXT    NOT NULL CHECK (kind IN ('totp', 'sms', 'email', 'passphrase')),
    state            TEXT    NOT NULL CHECK (state IN ('pending', 'confirmed')),
    key_id           TEXT    NOT NULL,
    secret           BLOB    NOT NULL,
    destination_mac  BLOB,
    totp_last_step   INTEGER,
    created_at       INTEGER NOT NULL,
    confirmed_at     INTEGER,
    FOREIGN KEY (app_id, user_id) REFERENCES users(app_id, user_id) ON DELETE CASCADE
) STRICT;
INSERT INTO methods_v5 SELECT id, app_id, user_id, kind, state, key_id, secret,
    destination_mac, totp_last_step, created_at, confirmed_at FROM methods;
DROP TABLE methods;
ALTER TABLE methods_v5 RENAME TO methods;
CREATE INDEX methods_by_user ON methods (app_id, user_id);
PRAGMA user_version = 5;
