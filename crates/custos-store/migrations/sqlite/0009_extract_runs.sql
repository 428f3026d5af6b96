-- Every extract that was decided and run (released or not), for the
-- grant's limit on extracts per hour under an agreement.
CREATE TABLE extract_runs (
    id           TEXT PRIMARY KEY NOT NULL,
    agreement_id TEXT NOT NULL,
    principal    TEXT NOT NULL,
    at_micros    INTEGER NOT NULL
);
CREATE INDEX extract_runs_by_agreement ON extract_runs (agreement_id, at_micros);
