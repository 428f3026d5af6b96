-- What each dataset contained at ingest: one `name sha256hex` line per
-- file, and the ledger index of the ingest entry that records the same
-- digests (the broker holds the catalogue to the ledger before any read).
ALTER TABLE datasets ADD COLUMN file_digests TEXT NOT NULL DEFAULT '';
ALTER TABLE datasets ADD COLUMN ingest_entry INTEGER;
