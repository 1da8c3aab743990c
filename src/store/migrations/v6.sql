-- Schema version 5 to 6: passkey methods (docs/PROTOCOL.md §5.7). The methods table is
-- rebuilt to widen its kind CHECK (as in version 5) and gains credential_hash, a hash of a
-- passkey's credential id, unique across every app and user (a credential is registered
-- once); the id itself stays inside the encrypted secret. A challenge of a passkey method
-- keeps its WebAuthn ceremony state, encrypted under the data key code_key_id names. An
-- app gains passkey_rp_id, its passkeys' WebAuthn relying-party id (none until set).
CREATE TABLE methods_v6 (
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
    credential_hash  BLOB,
    FOREIGN KEY (app_id, user_id) REFERENCES users(app_id, user_id) ON DELETE CASCADE
) STRICT;
INSERT INTO methods_v6 SELECT id, app_id, user_id, kind, state, key_id, secret,
    destination_mac, totp_last_step, created_at, confirmed_at, NULL FROM methods;
DROP TABLE methods;
ALTER TABLE methods_v6 RENAME TO methods;
CREATE INDEX methods_by_user ON methods (app_id, user_id);
CREATE UNIQUE INDEX methods_by_credential ON methods (credential_hash);
ALTER TABLE challenges ADD COLUMN ceremony BLOB;
ALTER TABLE apps ADD COLUMN passkey_rp_id TEXT;
PRAGMA user_version = 6;
