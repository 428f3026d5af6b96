-- Private matching jobs, on either side of a match. A job id is claimed
-- once per home: a replayed id is refused. The requesting side keeps the
-- matched subjects' per-agreement tokens until a custodian confirms them.
CREATE TABLE match_jobs (
    job_id            TEXT PRIMARY KEY,
    side              TEXT NOT NULL CHECK (side IN ('requester', 'responder')),
    agreement_id      TEXT NOT NULL,
    agreement_version INTEGER NOT NULL,
    dataset           TEXT NOT NULL,
    principal         TEXT NOT NULL,
    peer              TEXT NOT NULL,
    reveal            TEXT NOT NULL CHECK (reveal IN ('matches', 'count')),
    state             TEXT NOT NULL CHECK (state IN ('running', 'unverified', 'confirmed', 'failed')),
    match_count       INTEGER,
    created_at        TEXT NOT NULL,
    confirmed_by      TEXT,
    confirmed_at      TEXT
);
CREATE TABLE match_results (
    job_id TEXT NOT NULL REFERENCES match_jobs (job_id),
    token  TEXT NOT NULL,
    PRIMARY KEY (job_id, token)
);
