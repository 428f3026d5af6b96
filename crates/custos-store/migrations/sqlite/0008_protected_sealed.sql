-- A protected subject's id, sealed under the master key, so that extracts
-- and matches can leave the person out (their subject key is computed per
-- dataset from it) without reading identities. Older rows have none.
ALTER TABLE protected_subjects ADD COLUMN subject_sealed BLOB;
