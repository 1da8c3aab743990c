-- Schema version 3 to 4: the web origins each app allows to call the API from a browser
-- (CORS, docs/PROTOCOL.md §6.10).
CREATE TABLE app_origins (
    app_id      TEXT    NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
    origin      TEXT    NOT NULL,
    added_at    INTEGER NOT NULL,
    PRIMARY KEY (app_id, origin)
) STRICT, WITHOUT ROWID;
CREATE INDEX app_origins_by_origin ON app_origins (origin);
PRAGMA user_version = 4;
