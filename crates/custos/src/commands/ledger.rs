//! `custos ledger …`: checkpoints, entries, proofs and verification.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, Subcommand};
use custos_ledger::{
    ConsistencyProof, Entry, InclusionProof, LedgerReader, verify_consistency, verify_inclusion,
    verify_ledger,
};
use serde::Serialize;

use super::gateway::Client;
use super::mirror::{Mirror, Wanted, mirror};
use super::{open_custos, published_ledger};

/// Ledger commands.
#[derive(Debug, Subcommand)]
pub enum LedgerCommand {
    /// Sign a checkpoint of the ledger now and print it (a C2SP signed note).
    ///
    /// Keep printed checkpoints outside Custos (or give them to a witness):
    /// `custos ledger verify --checkpoint FILE` later proves that nothing
    /// they cover was changed, removed or reordered. With --server, prints
    /// the server's latest published checkpoint.
    Checkpoint,
    /// Print the checkpoint verifier key (`name+hash+base64`, as Go's
    /// sumdb/note reads it).
    PublicKey,
    /// List ledger entries (no personal data: subjects appear as commitments).
    Show {
        /// First entry index to show.
        #[arg(long, default_value_t = 0)]
        from: u64,
        /// The verifier key (`name+hash+base64`); needed with --server.
        #[arg(long, value_name = "VKEY")]
        key: Option<String>,
        /// Print JSON for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Prove that entry INDEX is in the ledger (an RFC 9162 inclusion proof).
    Prove {
        /// The entry's index.
        #[arg(long)]
        index: u64,
        /// Tree size to prove against (default: the latest checkpoint's).
        #[arg(long)]
        size: Option<u64>,
        /// The verifier key (`name+hash+base64`); needed with --server.
        #[arg(long, value_name = "VKEY")]
        key: Option<String>,
        /// Print JSON for scripts (includes the entry, base64).
        #[arg(long)]
        json: bool,
    },
    /// Prove that the ledger at size OLD is a prefix of the ledger at NEW.
    Consistency {
        /// The older size.
        #[arg(long)]
        old: u64,
        /// The newer size (default: the latest checkpoint's).
        #[arg(long)]
        new: Option<u64>,
        /// The verifier key (`name+hash+base64`); needed with --server.
        #[arg(long, value_name = "VKEY")]
        key: Option<String>,
        /// Print JSON for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Recompute every hash of the ledger and check it against its signed
    /// checkpoint and, with --checkpoint, against an older one you kept.
    Verify(VerifyArgs),
}

/// Arguments of `custos ledger verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// An older signed checkpoint (file) that the ledger must still be consistent with.
    #[arg(long, value_name = "FILE")]
    checkpoint: Option<PathBuf>,
    /// Verify a copy of a ledger directory instead of this home's (needs --key).
    #[arg(long, value_name = "DIR", requires = "key")]
    dir: Option<PathBuf>,
    /// The verifier key (`name+hash+base64`) when verifying a copy or a
    /// server's ledger (get it from the custodian, not from the server).
    #[arg(long, value_name = "VKEY")]
    key: Option<String>,
    /// Print JSON for scripts.
    #[arg(long)]
    json: bool,
}

/// `ledger prove --json`: the proof and the entry it proves.
#[derive(Debug, Serialize)]
struct ProveOutput<'a> {
    #[serde(flatten)]
    proof: &'a InclusionProof,
    /// The entry's encoding, base64 (its leaf hash is SHA-256(0x00 ‖ entry)).
    entry_base64: String,
}

fn base64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Where a ledger command reads: the home's ledger, or a verified copy of
/// a server's published one (kept until the command ends).
struct Source {
    reader: LedgerReader,
    key: String,
    /// What `verify` names in its report.
    label: String,
    _copy: Option<Mirror>,
}

impl Source {
    async fn open(
        home_dir: &Path,
        server: Option<&str>,
        key: Option<String>,
        wanted: Wanted,
    ) -> anyhow::Result<Self> {
        let Some(url) = server else {
            let (reader, home_key) = reader_and_key(home_dir).await?;
            let label = reader.dir().display().to_string();
            return Ok(Self {
                reader,
                key: key.unwrap_or(home_key),
                label,
                _copy: None,
            });
        };
        let key = key.ok_or_else(|| {
            anyhow::anyhow!(
                "with --server, give --key VKEY: the verifier key you got from the custodian (a key read from the server itself would prove nothing)"
            )
        })?;
        let copy = mirror(&Client::new(url, None)?, &key, &wanted).await?;
        Ok(Self {
            reader: LedgerReader::new(copy.dir.path()),
            key,
            label: url.to_owned(),
            _copy: Some(copy),
        })
    }
}

/// Runs a ledger command on the home, or with `server` on the ledger that
/// server publishes (read through its public tile paths).
pub async fn run(home_dir: &Path, server: Option<&str>, cmd: LedgerCommand) -> anyhow::Result<()> {
    let hashes = |entries| Wanted {
        entries,
        hashes: true,
    };
    match cmd {
        LedgerCommand::Checkpoint => {
            let note = match server {
                Some(url) => Client::new(url, None)?
                    .get_public("/checkpoint")
                    .await?
                    .ok_or_else(|| anyhow::anyhow!("the server publishes no /checkpoint"))?,
                None => {
                    let custos = open_custos(home_dir).await?;
                    let cp = custos.checkpoint()?;
                    custos.close()?;
                    cp.note
                }
            };
            print!("{}", String::from_utf8_lossy(&note));
        }
        LedgerCommand::PublicKey => {
            if server.is_some() {
                anyhow::bail!(
                    "the verifier key must come from the custodian, not from the server it verifies; run `custos ledger public-key` on the custodian's machine"
                );
            }
            let (_, key) = published_ledger(home_dir).await?;
            println!("{key}");
        }
        LedgerCommand::Show { from, key, json } => {
            let wanted = Wanted {
                entries: from..u64::MAX,
                hashes: false,
            };
            let source = Source::open(home_dir, server, key, wanted).await?;
            let size = source.reader.latest(&source.key)?.size;
            let mut rows = Vec::new();
            for (index, bytes) in source.reader.entries(from.min(size), size)? {
                rows.push((
                    index,
                    Entry::decode(&bytes).with_context(|| format!("entry {index}"))?,
                ));
            }
            if json {
                let list: Vec<serde_json::Value> = rows
                    .iter()
                    .map(|(i, e)| {
                        let mut v = serde_json::to_value(e).unwrap_or_default();
                        v["index"] = serde_json::json!(i);
                        v
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                println!("{size} entries in the ledger; showing from {from}");
                for (i, e) in &rows {
                    print_entry(*i, e);
                }
            }
        }
        LedgerCommand::Prove {
            index,
            size,
            key,
            json,
        } => {
            let source = Source::open(home_dir, server, key, hashes(index..index + 1)).await?;
            let reader = &source.reader;
            let published = reader.latest(&source.key)?.size;
            let proof = reader.inclusion_proof(index, size.unwrap_or(published), published)?;
            verify_inclusion(&proof).context("the proof does not verify")?;
            if json {
                let entry = reader.entries(index, index + 1)?;
                let bytes = entry.first().map(|(_, e)| e.clone()).unwrap_or_default();
                let out = ProveOutput {
                    proof: &proof,
                    entry_base64: base64(&bytes),
                };
                println!("{}", serde_json::to_string_pretty(&out)?);
            } else {
                print_inclusion(&proof);
            }
        }
        LedgerCommand::Consistency {
            old,
            new,
            key,
            json,
        } => {
            let source = Source::open(home_dir, server, key, hashes(0..0)).await?;
            let published = source.reader.latest(&source.key)?.size;
            let proof =
                source
                    .reader
                    .consistency_proof(old, new.unwrap_or(published), published)?;
            verify_consistency(&proof).context("the proof does not verify")?;
            if json {
                println!("{}", serde_json::to_string_pretty(&proof)?);
            } else {
                print_consistency(&proof);
            }
        }
        LedgerCommand::Verify(args) => {
            let source = match (args.dir, server) {
                (Some(_), Some(_)) => anyhow::bail!("give --dir or --server, not both"),
                (Some(dir), None) => Source {
                    label: dir.display().to_string(),
                    reader: LedgerReader::new(&dir),
                    key: args
                        .key
                        .ok_or_else(|| anyhow::anyhow!("--dir needs --key"))?,
                    _copy: None,
                },
                (None, _) => Source::open(home_dir, server, args.key, hashes(0..u64::MAX)).await?,
            };
            let (dir, key, label) = (
                source.reader.dir().to_owned(),
                source.key.clone(),
                source.label.clone(),
            );
            let older = match &args.checkpoint {
                Some(path) => Some(
                    std::fs::read(path).with_context(|| format!("reading `{}`", path.display()))?,
                ),
                None => None,
            };
            let report =
                tokio::task::spawn_blocking(move || verify_ledger(&dir, &key, older.as_deref()))
                    .await??;
            // The copy of a server's ledger is removed only now.
            drop(source);
            if args.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!("Ledger `{label}` verified:");
                println!(
                    "  {} entries re-hashed, {} hash tiles recomputed, root {}",
                    report.size, report.tiles_checked, report.root
                );
                println!("  signed checkpoint: signature valid, root matches");
                if let Some(old) = report.consistent_with {
                    println!(
                        "  consistent with the older checkpoint of size {old}: nothing it covers was changed"
                    );
                }
                if report.journal_checked > 0 {
                    println!(
                        "  journal: {} records match the published entries",
                        report.journal_checked
                    );
                }
            }
        }
    }
    Ok(())
}

/// A reader over the home's ledger and its verifier key (from the home).
async fn reader_and_key(home_dir: &Path) -> anyhow::Result<(LedgerReader, String)> {
    let (dir, key) = published_ledger(home_dir).await?;
    Ok((LedgerReader::new(&dir), key))
}

fn print_entry(index: u64, e: &Entry) {
    let time = chrono_time(e.time_micros);
    let agreement = e
        .agreement_id
        .as_ref()
        .map(|a| format!(" agreement={a}@{}", e.agreement_version))
        .unwrap_or_default();
    let counts: Vec<String> = e.counts.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let attrs: Vec<String> = e
        .attributes
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    println!(
        "#{index:<6} {time} {:<11} {:<16} {:?}{agreement} {} {}{}",
        e.actor,
        e.action,
        e.decision,
        attrs.join(" "),
        counts.join(" "),
        if e.subjects.is_empty() {
            String::new()
        } else {
            format!(" subjects={}", e.subjects.len())
        }
    );
    for r in &e.reasons {
        println!("         reason: {r}");
    }
}

fn chrono_time(micros: i64) -> String {
    chrono::DateTime::from_timestamp_micros(micros).map_or_else(
        || format!("{micros}µs"),
        |t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
    )
}

fn print_inclusion(p: &InclusionProof) {
    println!(
        "Entry {} is in the ledger of size {} (root {}).",
        p.index, p.size, p.root
    );
    println!("  leaf hash {}", p.leaf_hash);
    println!("  proof ({} hashes, verified):", p.proof.len());
    for h in &p.proof {
        println!("    {h}");
    }
}

fn print_consistency(p: &ConsistencyProof) {
    println!(
        "The ledger of size {} (root {}) is a prefix of the ledger of size {} (root {}).",
        p.old_size, p.old_root, p.new_size, p.new_root
    );
    println!("  proof ({} hashes, verified):", p.proof.len());
    for h in &p.proof {
        println!("    {h}");
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (input, out) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(super::base64(input.as_bytes()), out);
        }
    }
}
