//! The shared ledger's journal in PostgreSQL ([`SharedJournal`]), for homes
//! whose servers are replicas: every replica appends here, and the
//! integrator lease lives here too (`migrations/postgres/0002`).
//!
//! - **Sequencing.** An append takes `LOCK TABLE ledger_journal IN SHARE
//!   ROW EXCLUSIVE MODE`, which one transaction at a time holds (readers
//!   are not blocked), reads the last two records, checks that the last
//!   one is sealed by this ledger's key, and inserts its records after it
//!   in one statement. The lock, not serializable isolation, because
//!   appends must not fail and retry under contention: they queue. Each
//!   replica already folds its waiting appends into one transaction, so
//!   the lock is taken once per group, not per entry.
//! - **Durability.** Acknowledged after `COMMIT` returns: with the server's
//!   default `synchronous_commit = on`, that is after its WAL fsync.
//! - **The lease.** One row, renewed by an upsert that succeeds only for
//!   its holder or once it has expired, on the database's clock.
//!
//! Its own connection pool, on I/O threads of its own: the ledger's
//! threads call it synchronously from outside any runtime.

use std::ops::Range;
use std::str::FromStr;
use std::time::Duration;

use custos_ledger::{JournalRecord, LedgerError, Sealer, SharedJournal};
use sqlx::Row;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

use crate::io_runtime::IoRuntime;

/// The journal and integrator lease in a home's PostgreSQL catalogue.
#[derive(Debug)]
pub struct PgJournal {
    pool: PgPool,
    io: IoRuntime,
}

fn journal_error(e: sqlx::Error) -> LedgerError {
    LedgerError::Journal(format!("PostgreSQL: {e}"))
}

impl PgJournal {
    /// Connects to the catalogue at `url` (whose migrations have run: open
    /// the home's catalogue first). The password comes from `PGPASSWORD`
    /// or `~/.pgpass`, as the catalogue's does.
    pub fn connect(url: &str) -> Result<Self, LedgerError> {
        let options = PgConnectOptions::from_str(url)
            .map_err(|_| LedgerError::Journal("the PostgreSQL URL is malformed".into()))?;
        let io = IoRuntime::start("custos-journal")
            .map_err(|e| LedgerError::Journal(format!("cannot start its I/O threads: {e}")))?;
        let pool = io
            .run(async move {
                PgPoolOptions::new()
                    .max_connections(4)
                    .acquire_timeout(Duration::from_secs(10))
                    .connect_with(options)
                    .await
            })
            .ok_or(LedgerError::Closed)?
            .map_err(journal_error)?;
        Ok(Self { pool, io })
    }

    fn run<T: Send + 'static>(
        &self,
        work: impl Future<Output = Result<T, LedgerError>> + Send + 'static,
    ) -> Result<T, LedgerError> {
        self.io.run(work).ok_or(LedgerError::Closed)?
    }
}

fn index_of(idx: i64) -> Result<u64, LedgerError> {
    u64::try_from(idx).map_err(|_| LedgerError::Damaged(format!("journal index {idx}")))
}

fn records_of(rows: &[sqlx::postgres::PgRow]) -> Result<Vec<JournalRecord>, LedgerError> {
    rows.iter().map(record_of).collect()
}

fn record_of(row: &sqlx::postgres::PgRow) -> Result<JournalRecord, LedgerError> {
    let idx: i64 = row.try_get("idx").map_err(journal_error)?;
    let entry: Vec<u8> = row.try_get("entry").map_err(journal_error)?;
    let tag: Vec<u8> = row.try_get("tag").map_err(journal_error)?;
    let index = index_of(idx)?;
    let tag: [u8; 32] = tag
        .try_into()
        .map_err(|_| LedgerError::Damaged(format!("journal record {index} has a malformed tag")))?;
    Ok(JournalRecord { index, entry, tag })
}

impl SharedJournal for PgJournal {
    fn append(
        &self,
        entries: &[Vec<u8>],
        sealer: &Sealer,
        min_start: u64,
    ) -> Result<Range<u64>, LedgerError> {
        let pool = self.pool.clone();
        let entries = entries.to_vec();
        let sealer = sealer.clone();
        self.run(async move {
            let mut tx = pool.begin().await.map_err(journal_error)?;
            // Acknowledged only once the commit is durable, whatever the
            // database's or the role's default says.
            sqlx::query("SET LOCAL synchronous_commit = on")
                .execute(&mut *tx)
                .await
                .map_err(journal_error)?;
            sqlx::query("LOCK TABLE ledger_journal IN SHARE ROW EXCLUSIVE MODE")
                .execute(&mut *tx)
                .await
                .map_err(journal_error)?;
            let last = records_of(
                &sqlx::query(
                    "SELECT idx, entry, tag FROM ledger_journal ORDER BY idx DESC LIMIT 2",
                )
                .fetch_all(&mut *tx)
                .await
                .map_err(journal_error)?,
            )?;
            let (start, mut previous) = match last.as_slice() {
                [] => (0, [0u8; 32]),
                [last, rest @ ..] => {
                    let before = match rest.first() {
                        Some(r) if r.index + 1 == last.index => r.tag,
                        None if last.index == 0 => [0u8; 32],
                        _ => {
                            return Err(LedgerError::Damaged(format!(
                                "journal record {} does not follow the one before it",
                                last.index
                            )));
                        }
                    };
                    if !sealer.check(last, &before) {
                        return Err(LedgerError::Damaged(format!(
                            "journal record {} is not authentic: it was altered, or written without the ledger key; nothing is appended after it",
                            last.index
                        )));
                    }
                    (last.index + 1, last.tag)
                }
            };
            if start < min_start {
                return Err(LedgerError::Damaged(format!(
                    "the journal ends at {start} but a published checkpoint covers {min_start} entries: acknowledged records were removed; nothing is appended"
                )));
            }
            let mut indexes = Vec::with_capacity(entries.len());
            let mut tags = Vec::with_capacity(entries.len());
            for (i, entry) in entries.iter().enumerate() {
                let index = start + i as u64;
                let tag = sealer.seal(index, &previous, entry);
                indexes.push(
                    i64::try_from(index)
                        .map_err(|_| LedgerError::Damaged("the journal is full".into()))?,
                );
                tags.push(tag.to_vec());
                previous = tag;
            }
            // Every row as written, read back: a trigger or rule that drops
            // or rewrites rows is refused, not acknowledged.
            let mut stored = records_of(
                &sqlx::query(
                    "INSERT INTO ledger_journal (idx, entry, tag) \
                     SELECT * FROM UNNEST($1::BIGINT[], $2::BYTEA[], $3::BYTEA[]) \
                     RETURNING idx, entry, tag",
                )
                .bind(&indexes)
                .bind(&entries)
                .bind(&tags)
                .fetch_all(&mut *tx)
                .await
                .map_err(journal_error)?,
            )?;
            stored.sort_by_key(|r| r.index);
            let intact = stored.len() == entries.len()
                && stored.iter().zip(&indexes).zip(&entries).zip(&tags).all(
                    |(((r, &i), e), t)| {
                        i64::try_from(r.index) == Ok(i) && &r.entry == e && r.tag.as_slice() == t
                    },
                );
            if !intact {
                return Err(LedgerError::Damaged(
                    "the database did not store the journal records as written (a trigger or rule on ledger_journal?): nothing is acknowledged".into(),
                ));
            }
            tx.commit().await.map_err(journal_error)?;
            Ok(start..start + entries.len() as u64)
        })
    }

    fn read(&self, from: u64, limit: usize) -> Result<Vec<JournalRecord>, LedgerError> {
        let pool = self.pool.clone();
        let from = i64::try_from(from).map_err(|_| LedgerError::Damaged("index".into()))?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.run(async move {
            records_of(
                &sqlx::query(
                    "SELECT idx, entry, tag FROM ledger_journal WHERE idx >= $1 ORDER BY idx LIMIT $2",
                )
                .bind(from)
                .bind(limit)
                .fetch_all(&pool)
                .await
                .map_err(journal_error)?,
            )
        })
    }

    fn size(&self) -> Result<u64, LedgerError> {
        let pool = self.pool.clone();
        self.run(async move {
            let next: i64 =
                sqlx::query_scalar("SELECT COALESCE(MAX(idx) + 1, 0) FROM ledger_journal")
                    .fetch_one(&pool)
                    .await
                    .map_err(journal_error)?;
            index_of(next)
        })
    }

    fn hold_integrator(&self, holder: &str, ttl: Duration) -> Result<bool, LedgerError> {
        let pool = self.pool.clone();
        let holder = holder.to_owned();
        let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
        self.run(async move {
            let held: Option<String> = sqlx::query_scalar(
                "INSERT INTO ledger_integrator (id, holder, expires_at) \
                 VALUES (1, $1, clock_timestamp() + $2 * INTERVAL '1 millisecond') \
                 ON CONFLICT (id) DO UPDATE SET holder = EXCLUDED.holder, expires_at = EXCLUDED.expires_at \
                 WHERE ledger_integrator.holder = EXCLUDED.holder \
                    OR ledger_integrator.expires_at < clock_timestamp() \
                 RETURNING holder",
            )
            .bind(&holder)
            .bind(ttl_ms)
            .fetch_optional(&pool)
            .await
            .map_err(journal_error)?;
            Ok(held.is_some())
        })
    }

    fn release_integrator(&self, holder: &str) -> Result<(), LedgerError> {
        let pool = self.pool.clone();
        let holder = holder.to_owned();
        self.run(async move {
            sqlx::query(
                "UPDATE ledger_integrator SET expires_at = clock_timestamp() - INTERVAL '1 second' \
                 WHERE id = 1 AND holder = $1",
            )
            .bind(&holder)
            .execute(&pool)
            .await
            .map_err(journal_error)?;
            Ok(())
        })
    }
}
