-- Schema version 2 to 3: the audit log's head, so that deleting its last events (or all of
-- them) is detected (it starts at the log's current last event); and the clock floor.
CREATE TABLE audit_head (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    seq        INTEGER NOT NULL,
    hash       BLOB    NOT NULL CHECK (length(hash) = 32)
) STRICT;
INSERT INTO audit_head (id, seq, hash)
    SELECT 1, coalesce(max(seq), 0), coalesce((SELECT hash FROM audit_events ORDER BY seq DESC LIMIT 1), zeroblob(32))
    FROM audit_events;
-- The latest time a purge relied on: a clock stepped backwards must not bring forgotten
-- replay-cache entries, rate windows or failures back to life. It starts at the last
-- audit event's time.
CREATE TABLE clock_floor (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    at         INTEGER NOT NULL
) STRICT;
INSERT INTO clock_floor (id, at)
    SELECT 1, coalesce((SELECT at FROM audit_events ORDER BY seq DESC LIMIT 1), 0);
PRAGMA user_version = 3;
