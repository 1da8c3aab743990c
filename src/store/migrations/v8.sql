-- Schema version 7 to 8: cancel codes under the one-time-code MAC key, with the key id
-- recorded (issue 17). A cancel code written from now on is stored as HMAC-SHA256 under
-- the code MAC key of the data key `key_id` names, so `keys rotate` and a server start
-- know that a waiting recovery still needs a retired key. Codes written before have no
-- key id: their MAC is under the destination MAC key of the key that was current then,
-- and a cancel request still finds them (the server tries every key it holds).
ALTER TABLE cancel_codes ADD COLUMN key_id TEXT;
PRAGMA user_version = 8;
