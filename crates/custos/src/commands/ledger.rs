//! `custos ledger …`: checkpoints, entries, proofs and verification.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::{Args, Subcommand};
use custos_ledger::{
    ConsistencyProof, Entry, InclusionProof, LedgerReader, verify_consistency, verify_inclusion,
    verify_published,
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
    /// checkpoint and, with --checkpoint, against an older one you kept;
    /// with --witness-policy, against the checkpoint its witnesses cosigned.
    Verify(VerifyArgs),
    /// Bring the newest checkpoint to the witnesses of HOME/witness-policy
    /// now, and publish it as witnessed once their quorum has cosigned.
    ///
    /// `custos serve` does this by itself at every checkpoint; run this
    /// when the home is used without a server (e.g. from cron). Fails if the
    /// quorum was not reached, naming each witness's answer.
    Witness,
    /// Install a witness policy in the home (Sigsum policy format: `witness
    /// NAME HEXKEY URL` lines, `group NAME K|all|any MEMBER...`, one
    /// `quorum NAME`). Admins only; the change is ledgered.
    WitnessPolicy {
        /// The policy file.
        file: PathBuf,
    },
    /// Replace the ledger signing key (admins; run on the custodian's
    /// machine with no server running).
    ///
    /// The ledger records the change in an entry signed by the old key; the
    /// next checkpoint is signed by both, later ones by the new key alone.
    /// `ledger verify --key OLD` follows the change. Give each witness the
    /// new key (`ledger public-key`) as another [[log]] in its witness.toml.
    RotateKey {
        /// Where to write the new key (default: NAME.<unix time>.key beside
        /// the current key file); must not exist and must be outside the
        /// home.
        #[arg(long, value_name = "FILE")]
        new_key_file: Option<PathBuf>,
    },
    /// Where the ledger stands: its size, the newest witnessed checkpoint,
    /// how far behind witnessing is, and each witness's last answer.
    Status {
        /// Print JSON for scripts.
        #[arg(long)]
        json: bool,
    },
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
    /// A witness policy (Sigsum format) to hold the ledger to: a quorum of
    /// its witnesses must have cosigned a checkpoint of this ledger, recently
    /// (--max-age), and the ledger must extend that checkpoint unchanged.
    #[arg(long, value_name = "FILE")]
    witness_policy: Option<PathBuf>,
    /// With --witness-policy: how old the quorum's cosignatures may be
    /// (e.g. 90s, 10m, 1d). A log that rewrote its history cannot get fresh
    /// ones, so an old witnessed checkpoint is no alibi.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration, value_name = "DURATION")]
    max_age: Duration,
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
pub(crate) struct Source {
    pub(crate) reader: LedgerReader,
    pub(crate) key: String,
    /// What `verify` names in its report.
    label: String,
    _copy: Option<Mirror>,
}

impl Source {
    pub(crate) async fn open(
        home_dir: &Path,
        server: Option<&str>,
        key: Option<String>,
        wanted: Wanted,
    ) -> anyhow::Result<Self> {
        let Some(url) = server else {
            let (reader, home_key) = reader_and_key(home_dir).await?;
            let label = reader.files().location();
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
            for (index, bytes) in source.reader.entries_checked(from.min(size), size)? {
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
                if custos_ledger::read::leaf_hash_hex(&bytes) != proof.leaf_hash {
                    anyhow::bail!(
                        "entry {index}'s published bytes do not hash to the proved leaf: its entry bundle was altered (run `custos ledger verify`)"
                    );
                }
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
            let policy = match &args.witness_policy {
                Some(path) => Some(read_policy(path)?),
                None => None,
            };
            let (files, key, label) = (
                std::sync::Arc::clone(source.reader.files()),
                source.key.clone(),
                source.label.clone(),
            );
            let verified_files = std::sync::Arc::clone(&files);
            let older = match &args.checkpoint {
                Some(path) => Some(
                    std::fs::read(path).with_context(|| format!("reading `{}`", path.display()))?,
                ),
                None => None,
            };
            let report = tokio::task::spawn_blocking(move || {
                verify_published(files, &key, older.as_deref())
            })
            .await??;
            let witnessed = match &policy {
                Some(policy) => Some(check_witnessed(
                    &verified_files,
                    &report.signing_key,
                    policy,
                    args.max_age,
                    report.size,
                )?),
                None => None,
            };
            // The copy of a server's ledger is removed only now.
            drop(source);
            if args.json {
                let mut value = serde_json::to_value(&report)?;
                if let Some(w) = &witnessed {
                    value["witnessed"] = serde_json::json!({
                        "size": w.checkpoint.size,
                        "signed_by": w.signed_by,
                    });
                }
                println!("{}", serde_json::to_string_pretty(&value)?);
            } else {
                println!("Ledger `{label}` verified:");
                println!(
                    "  {} entries re-hashed, {} hash tiles recomputed, root {}",
                    report.size, report.tiles_checked, report.root
                );
                println!("  signed checkpoint: signature valid, root matches");
                if report.key_changes > 0 {
                    println!(
                        "  signing key: changed {} time(s), each change signed by the key before; now {}",
                        report.key_changes, report.signing_key
                    );
                }
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
                if let Some(w) = &witnessed {
                    println!(
                        "  witnessed: a quorum cosigned size {} and the ledger extends it unchanged; signed by {}",
                        w.checkpoint.size,
                        signers(w)
                    );
                }
            }
        }
        LedgerCommand::Witness => {
            if server.is_some() {
                anyhow::bail!(
                    "`ledger witness` runs on the custodian's machine (a server collects cosignatures by itself)"
                );
            }
            let (files, key) = published_ledger(home_dir).await?;
            let dir = files.dir().ok_or_else(|| {
                anyhow::anyhow!(
                    "witnessing a replicated home's shared ledger is not offered yet (its ledger is published in object storage)"
                )
            })?;
            let policy = home_policy(home_dir).await?;
            let collector = custos_witness::Collector::new(dir, &key, policy)
                .map_err(|e| anyhow::anyhow!(e))?;
            let report = collector.round().await?;
            let now = now_seconds();
            for (name, t) in &report.cosigned {
                println!(
                    "  {name}: cosigned size {} ({} ago)",
                    report.size,
                    ago(now, *t)
                );
            }
            for (name, why) in &report.failed {
                println!("  {name}: did not cosign: {why}");
            }
            if !report.published {
                anyhow::bail!(
                    "the witness quorum did not cosign size {}; the witnessed checkpoint was not updated",
                    report.size
                );
            }
            println!(
                "Size {} is witnessed (published as witnessed-checkpoint).",
                report.size
            );
        }
        LedgerCommand::WitnessPolicy { file } => {
            if server.is_some() {
                anyhow::bail!(
                    "`ledger witness-policy` changes the home: run it on the custodian's machine"
                );
            }
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading `{}`", file.display()))?;
            let custos = open_custos(home_dir).await?;
            let actor = custos
                .actor(super::token_from_env().as_deref().map(|t| t.as_str()))
                .await?;
            let recorded = custos.set_witness_policy(&actor, &text).await;
            custos.close()?;
            let recorded = recorded?;
            let policy = read_policy(&file)?;
            println!(
                "Installed the witness policy ({} witnesses, quorum `{}`); ledger entry {recorded}.",
                policy.witnesses().count(),
                policy.quorum().unwrap_or("none")
            );
        }
        LedgerCommand::RotateKey { new_key_file } => {
            if server.is_some() {
                anyhow::bail!(
                    "`ledger rotate-key` changes the home: stop the server and run it on the custodian's machine"
                );
            }
            let mut custos = open_custos(home_dir).await?;
            let actor = custos
                .actor(super::token_from_env().as_deref().map(|t| t.as_str()))
                .await?;
            let rotated = custos
                .rotate_ledger_key(&actor, new_key_file.as_deref())
                .await;
            custos.close()?;
            let r = rotated?;
            println!("{}", r.new_key);
            eprintln!(
                "Rotated the ledger signing key (ledger entry {}): the old key `{}` signed the change.\n  new key file: {}\n  Give every witness and verifier the new key above (witnesses: then remove the old one).",
                r.entry,
                r.old_key,
                r.file.display()
            );
            if let Some(old) = &r.old_file {
                eprintln!(
                    "  The old key file {} no longer signs this ledger: destroy it, or archive it offline.",
                    old.display()
                );
            }
        }
        LedgerCommand::Status { json } => {
            if server.is_some() {
                anyhow::bail!("`ledger status` reads the home; run it on the custodian's machine");
            }
            let (files, key) = published_ledger(home_dir).await?;
            status(files, &key, home_dir, json).await?;
        }
    }
    Ok(())
}

pub(crate) fn now_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Who cosigned `w` and how long ago, for people: `name (12s ago), …`.
pub(crate) fn signers(w: &custos_ledger::WitnessedCheckpoint) -> String {
    let now = now_seconds();
    w.signed_by
        .iter()
        .map(|(name, t)| format!("{name} ({} ago)", ago(now, *t)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// "12s", "3m", "5h" or "2d" between `then` and `now` (seconds).
pub(crate) fn ago(now: u64, then: u64) -> String {
    humantime::format_duration(Duration::from_secs(now.saturating_sub(then)))
        .to_string()
        .split(' ')
        .next()
        .unwrap_or("0s")
        .to_owned()
}

pub(crate) fn read_policy(path: &Path) -> anyhow::Result<custos_ledger::WitnessPolicy> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading `{}`", path.display()))?;
    custos_ledger::WitnessPolicy::parse(&text).with_context(|| format!("`{}`", path.display()))
}

/// The home's witness policy, checked against the ledger entry that
/// installed it.
async fn home_policy(home_dir: &Path) -> anyhow::Result<custos_ledger::WitnessPolicy> {
    custos_broker::home_witness_policy(home_dir, super::keys::key_from_env(home_dir).await?)
        .await?
        .ok_or_else(|| {
            anyhow::anyhow!(
                "this home has no witness policy: install one with `custos ledger witness-policy FILE` (see docs/ledger.md)"
            )
        })
}

/// Checks the witnessed checkpoint in `dir` against `policy`: the quorum
/// cosigned it within `max_age`, and the verified ledger of `size` extends
/// it unchanged.
pub(crate) fn check_witnessed(
    files: &std::sync::Arc<dyn custos_ledger::PublishedFiles>,
    key: &str,
    policy: &custos_ledger::WitnessPolicy,
    max_age: Duration,
    size: u64,
) -> anyhow::Result<custos_ledger::WitnessedCheckpoint> {
    let note = files
        .read(custos_ledger::witnessed::WITNESSED_CHECKPOINT)
        .with_context(|| format!("reading the witnessed checkpoint in `{}`", files.location()))?
        .ok_or_else(|| {
        anyhow::anyhow!(
            "no witnessed checkpoint is published: no quorum of the policy's witnesses has cosigned this ledger"
        )
    })?;
    let w = custos_ledger::verify_witnessed(&note, key, policy)?;
    let now = now_seconds();
    // Fresh: no older than max_age, and not from the future (a clock more
    // than five minutes ahead could otherwise keep a cosignature young).
    let fresh: BTreeSet<String> = w
        .signed_by
        .iter()
        .filter(|(_, t)| now.saturating_sub(**t) <= max_age.as_secs() && **t <= now + 300)
        .map(|(name, _)| name.clone())
        .collect();
    if !policy.satisfied_by(&fresh) {
        anyhow::bail!(
            "the witnesses' cosignatures of size {} are older than {}: a quorum has not vouched for this ledger recently (a log whose history was rewritten cannot get new ones)",
            w.checkpoint.size,
            humantime::format_duration(max_age)
        );
    }
    if w.checkpoint.size > size {
        anyhow::bail!(
            "the witnesses cosigned size {}, but the ledger has only {size} entries: entries were removed",
            w.checkpoint.size
        );
    }
    if w.checkpoint.size > 0 {
        let proof = LedgerReader::over(std::sync::Arc::clone(files)).consistency_proof(
            w.checkpoint.size,
            size,
            size,
        )?;
        if proof.old_root != hex::encode(w.checkpoint.root) {
            anyhow::bail!(
                "the ledger's first {} entries are not the ones the witnesses cosigned: its history was rewritten",
                w.checkpoint.size
            );
        }
    }
    Ok(w)
}

/// `ledger status --json`.
#[derive(Debug, Serialize)]
struct Status {
    size: u64,
    witnessed: Option<u64>,
    behind: Option<u64>,
    oldest_unwitnessed_seconds: Option<u64>,
    /// The ledger does not extend what the witnesses cosigned.
    diverged: bool,
    quorum: Option<String>,
    witnesses: std::collections::BTreeMap<String, custos_ledger::witnessed::WitnessProgress>,
}

async fn status(
    files: std::sync::Arc<dyn custos_ledger::PublishedFiles>,
    key: &str,
    home_dir: &Path,
    json: bool,
) -> anyhow::Result<()> {
    let size = LedgerReader::over(std::sync::Arc::clone(&files))
        .latest(key)?
        .size;
    let policy_path = home_dir.join(custos_broker::WITNESS_POLICY_FILE);
    // Checked against the ledger entry that installed it (an edited file
    // is reported as such, not used).
    let policy = if policy_path.exists() {
        Some(home_policy(home_dir).await?)
    } else {
        None
    };
    let mut out = Status {
        size,
        witnessed: None,
        behind: None,
        oldest_unwitnessed_seconds: None,
        diverged: false,
        quorum: None,
        witnesses: match files.dir() {
            Some(dir) => custos_ledger::witnessed::read_state(dir)?,
            None => custos_ledger::witnessed::WitnessState::new(),
        },
    };
    if let Some(policy) = policy {
        let lag = custos_broker::witness_lag(files, key, &policy)?;
        out.witnessed = Some(lag.witnessed);
        out.behind = Some(lag.size.saturating_sub(lag.witnessed));
        out.oldest_unwitnessed_seconds = lag.oldest_unwitnessed.map(|d| d.as_secs());
        out.diverged = lag.diverged;
        out.quorum = Some(policy.quorum().unwrap_or("none").to_owned());
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!("Ledger: {size} entries in the newest checkpoint.");
    let (Some(witnessed), Some(quorum)) = (out.witnessed, &out.quorum) else {
        println!(
            "No witness policy: nobody outside the custodian cosigns this ledger (see `custos ledger witness-policy`)."
        );
        return Ok(());
    };
    if out.diverged {
        println!(
            "WARNING: this ledger does not extend the checkpoint of size {witnessed} its witnesses cosigned: it was rolled back or rewritten. Releases are refused under --max-unwitnessed."
        );
    }
    match out.oldest_unwitnessed_seconds {
        None if out.diverged => {}
        None => println!("Witnessed: all {witnessed} entries (quorum `{quorum}`)."),
        Some(age) => println!(
            "Witnessed up to {witnessed} (quorum `{quorum}`): {} entries behind, the oldest unwitnessed one {} old.",
            out.behind.unwrap_or(0),
            humantime::format_duration(Duration::from_secs(age))
        ),
    }
    let now = now_seconds();
    for (name, p) in &out.witnesses {
        let when = p.cosigned_at.map_or_else(
            || "never cosigned".to_owned(),
            |t| format!("cosigned {} ago", ago(now, t)),
        );
        match &p.last_error {
            None => println!("  {name}: size {}, {when}", p.size),
            Some(e) => println!(
                "  {name}: size {}, {when}; last attempt failed: {e}",
                p.size
            ),
        }
    }
    Ok(())
}

/// A reader over the home's ledger and its verifier key (from the home).
async fn reader_and_key(home_dir: &Path) -> anyhow::Result<(LedgerReader, String)> {
    let (files, key) = published_ledger(home_dir).await?;
    Ok((LedgerReader::over(files), key))
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
