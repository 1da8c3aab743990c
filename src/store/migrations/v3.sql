-- Schema version 2 to 3: the audit log's head, so that deleting its last events (or all of
-- them) is detected. It starts at the log's current last event.
CREATE TABLE audit_head (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    seq        INTEGER NOT NULL,
    hash       BLOB    NOT NULL CHECK (length(hash) = 32)
) STRICT;
INSERT INTO audit_head (id, seq, hash)
    SELECT 1, coalesce(max(seq), 0), coalesce((SELECT hash FROM audit_events ORDER BY seq DESC LIMIT 1), zeroblob(32))
    FROM audit_events;
PRAGMA user_version = 3;
