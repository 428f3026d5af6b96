-- The ledger index of the `agreement.apply` entry that recorded each
-- version's text hash: decisions hold the stored text to that entry.
ALTER TABLE agreement_versions ADD COLUMN ledger_entry INTEGER;
