-- Schema version 6 to 7: one-time codes under a keyed MAC (issue 17). A challenge records
-- how its code is stored: code_scheme 'hmac-sha256' for the challenges written from now
-- on (code_hash is HMAC-SHA256 under the MAC key derived from the pepper of the data key
-- code_key_id names, over a label, code_salt and the code); NULL for those written
-- before, whose code_hash stays the Argon2id hash under that pepper and is checked that
-- way until they expire (code_lifetime_secs, an hour at most). Nothing is rewritten: a
-- hash cannot become a MAC without the code, which Ghostkey does not keep.
ALTER TABLE challenges ADD COLUMN code_scheme TEXT CHECK (code_scheme IN ('hmac-sha256'));
PRAGMA user_version = 7;
