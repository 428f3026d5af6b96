-- Privacy budgets: what each agreement has spent on each dataset (ε or ρ),
-- and every charge. A charge is made (and this row updated) before the
-- query's answer is computed; it is never refunded.
CREATE TABLE privacy_budgets (
    agreement_id  TEXT NOT NULL,
    dataset       TEXT NOT NULL,
    measure       TEXT NOT NULL CHECK (measure IN ('zcdp', 'pure')),
    spent         REAL NOT NULL CHECK (spent >= 0),
    PRIMARY KEY (agreement_id, dataset)
);

CREATE TABLE privacy_charges (
    id                 TEXT PRIMARY KEY NOT NULL,
    agreement_id       TEXT NOT NULL,
    agreement_version  INTEGER NOT NULL,
    dataset            TEXT NOT NULL,
    principal          TEXT NOT NULL,
    measure            TEXT NOT NULL,
    spend              REAL NOT NULL CHECK (spend > 0),
    query_sha256       TEXT NOT NULL,
    at                 TEXT NOT NULL,
    at_micros          INTEGER NOT NULL,
    ledger_index       INTEGER NOT NULL
);
CREATE INDEX privacy_charges_by_agreement ON privacy_charges (agreement_id, principal, at_micros);
