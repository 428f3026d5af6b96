//! `custos demo`: the whole story on synthetic data in a temporary home.
//! Every step acts as a principal through the broker, like any other
//! command; true values come from the demo's own synthetic files.

mod browsing;
mod console;
mod truth;
mod witness;

use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::Args;
use custos_broker::MasterKeySource;
use custos_broker::{Actor, Custos};
use custos_ledger::{LedgerReader, verify_inclusion, verify_ledger};
use custos_model::Role;

use super::dataset::{ingest_with_progress, print_description, print_ingest};
use super::generate::{GenerateArgs, generate_with_progress};
use super::human_count;

/// Arguments of `custos demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Number of synthetic tax returns.
    #[arg(long, default_value_t = 1_000_000, value_name = "N")]
    rows: u64,
    /// Seed for the synthetic data.
    #[arg(long, default_value_t = 2026)]
    seed: u64,
    /// Keep the demo's home and files in DIR (must not exist) instead of a
    /// temporary directory that is removed at the end.
    #[arg(long, value_name = "DIR")]
    keep: Option<PathBuf>,
    /// At the end, keep the web console running (until Ctrl-C) so you can
    /// sign in with the tokens it prints.
    #[arg(long)]
    serve: bool,
    /// Where the console listens at the end (loopback; port 0 picks a free one).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7441")]
    listen: std::net::SocketAddr,
}

/// The aggregate-mode example of docs/agreements.md.
const AGGREGATE_AGREEMENT: &str =
    include_str!("../../../../../docs/examples/agreement-aggregate.toml");

/// The matching example: the registry's copy and the requester's copy.
const MATCH_AGREEMENT: &str = include_str!("../../../../../docs/examples/agreement-match.toml");
const MATCH_AGREEMENT_REQUESTER: &str =
    include_str!("../../../../../docs/examples/agreement-match-requester.toml");

/// The identified-mode example of docs/agreements.md.
const IDENTIFIED_AGREEMENT: &str =
    include_str!("../../../../../docs/examples/agreement-identified.toml");

/// The pseudonymous-mode example of docs/agreements.md.
const PSEUDONYMOUS_AGREEMENT: &str =
    include_str!("../../../../../docs/examples/agreement-pseudonymous.toml");

fn step(n: u32, title: &str) {
    println!();
    println!("── Step {n}: {title}");
}

/// Runs the demo.
pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let temp;
    let base: PathBuf = match &args.keep {
        Some(dir) => {
            anyhow::ensure!(
                !dir.exists(),
                "`{}` already exists; --keep needs a new directory",
                dir.display()
            );
            std::fs::create_dir_all(dir)?;
            dir.clone()
        }
        None => {
            temp = tempfile::Builder::new().prefix("custos-demo-").tempdir()?;
            temp.path().to_owned()
        }
    };
    let home_dir = base.join("home");
    let data_dir = base.join("synthetic");
    println!("Custos demo: a guarded gateway to sensitive records, on synthetic data.");
    println!("Everything happens under `{}`.", base.display());

    step(1, "a custodian creates a Custos home");
    let (custos, report) = Custos::init(
        &home_dir,
        MasterKeySource::GenerateFile,
        Some("demo.custos.local".into()),
    )
    .await?;
    println!(
        "  `custos init` made `{}` (mode 0700) with:",
        report.root.display()
    );
    println!(
        "  - a 256-bit master key (master.key, mode 0600) that wraps every dataset's own key,"
    );
    println!(
        "  - an Ed25519 signing key for the ledger's checkpoints (public {}…), kept apart from",
        &report.public_key_hex[..16]
    );
    println!("    the data: in home.ledger.key beside the home, not under the master key,");
    println!("  - the metadata store (SQLite).");

    step(
        2,
        "synthetic records: tax returns, a benefits roll, a death registry",
    );
    let gen_args = GenerateArgs {
        rows: args.rows,
        out: data_dir.clone(),
        seed: args.seed,
    };
    let (generated, seconds) = generate_with_progress(&gen_args)?;
    println!(
        "  {} synthetic people; every SSN uses a never-issued area (000, 666) or group (00). ({seconds:.1}s)",
        human_count(generated.population)
    );
    for d in &generated.datasets {
        println!("  - {:<12} {:>12} rows", d.name, human_count(d.rows));
    }
    println!(
        "  {} beneficiaries also appear in the death registry: matching will have real hits to find.",
        human_count(generated.deceased_beneficiaries)
    );

    step(3, "ingest: CSV → Parquet, encrypted at rest");
    // The bootstrap exception: with no principal yet, the console may create
    // the first admin. From then on every action runs as a principal.
    let (_, token) = custos
        .add_principal(
            &custos.actor(None).await?,
            "custodian",
            "IRS",
            &[Role::Admin],
        )
        .await?;
    let admin = custos.authenticate(token.reveal()).await?;
    println!(
        "  The custodian registers as principal `custodian` ({}); its API token is stored only as a hash.",
        admin.id()
    );
    let started = Instant::now();
    for d in &generated.datasets {
        let report = ingest_with_progress(&custos, &admin, d.name, &d.schema, &d.csv).await?;
        print!("  ");
        print_ingest(&report);
    }
    println!(
        "  All three in {:.1}s. Subject ids and identifiers (names, addresses, accounts) are encrypted",
        started.elapsed().as_secs_f64()
    );
    println!(
        "  under an identity key, other columns and the footer under a data key (Parquet modular encryption)."
    );

    step(4, "agreements as code");
    let (version, agreement) = custos
        .apply_agreement(&admin, &aggregate_agreement())
        .await?;
    println!(
        "  Applied `{}` v{}: {} may get {} answers on {} columns of `{}`, {} to {}.",
        version.id,
        version.version,
        agreement.parties.requester,
        agreement.grants[0].mode.as_str(),
        agreement.grants[0].columns.len(),
        agreement.grants[0].dataset,
        agreement.valid_from,
        agreement.valid_until
    );
    let mut bad = aggregate_agreement().replace("\"agi\"]", "\"agi\", \"tin\"]");
    bad = bad.replace("id = \"gao-refund-statistics\"", "id = \"gao-wants-tins\"");
    match custos.apply_agreement(&admin, &bad).await {
        Ok(_) => anyhow::bail!("an aggregate grant on an identifier was accepted"),
        Err(e) => println!("  A version asking for TINs in aggregate mode is refused: {e}"),
    }

    step(5, "what a custodian sees: the schema, never the values");
    let tax = custos.describe(&admin, "tax_returns").await?;
    print_description(&tax);

    step(
        6,
        "is it really encrypted? look for a taxpayer's TIN in the raw files",
    );
    let sample_tin = first_field(&generated.datasets[0].csv)?;
    let hits = find_bytes_under(&home_dir, sample_tin.as_bytes())?;
    println!(
        "  Searched every file under the home for a TIN taken from the input CSV: {} (the CSV itself has it).",
        if hits.is_empty() {
            "not found anywhere".to_owned()
        } else {
            format!("FOUND in {hits:?}")
        }
    );
    anyhow::ensure!(
        hits.is_empty(),
        "a plaintext identifier was found in the data directory"
    );

    step(
        7,
        "an identified look-up: justified, approved by a second person, accounted for",
    );
    let (rita, olga, identified) = lookup_demo(&custos, &admin, &sample_tin, tax.buckets).await?;

    step(
        8,
        "unusual browsing: a requester looks up a neighbour, and an overseer is told",
    );
    browsing::run(
        &custos,
        &admin,
        &rita,
        &olga,
        &identified,
        &data_dir.join("tax_returns.csv"),
    )
    .await?;

    step(
        9,
        "aggregate questions: differentially private answers under a budget",
    );
    aggregate_demo(&custos, &admin, &data_dir).await?;

    step(
        10,
        "a pseudonymous extract: rows for researchers, without identities",
    );
    extract_demo(&custos, &admin, &base, &data_dir, &sample_tin).await?;

    step(
        11,
        "private matching: the benefits roll against another agency's death registry",
    );
    match_demo(&custos, &admin, &base, &generated).await?;

    step(
        12,
        "the ledger: every action written where it can't be erased",
    );
    let checkpoint = custos.checkpoint()?;
    println!(
        "  {} entries so far (init, principals, ingests, agreements, refusals, the look-up, the extract, the match).",
        checkpoint.size
    );
    println!("  The signed checkpoint an overseer keeps:");
    for line in String::from_utf8_lossy(&checkpoint.note).lines() {
        println!("    {line}");
    }
    let reader = LedgerReader::new(&custos.ledger_dir());
    let proof = reader.inclusion_proof(2, checkpoint.size, checkpoint.size)?;
    verify_inclusion(&proof)?;
    println!(
        "  Entry 2 (the tax-return ingest) is provably in it: an inclusion proof of {} hashes verifies.",
        proof.proof.len()
    );
    let key = custos.verifier_key().to_owned();
    custos.close()?;
    let report = verify_ledger(&home_dir.join("ledger"), &key, Some(&checkpoint.note))?;
    println!(
        "  `custos ledger verify` re-hashed all {} entries and {} tiles: the root matches the signature.",
        report.size, report.tiles_checked
    );
    let tampered = tamper_demo(&home_dir.join("ledger"), &key, &checkpoint)?;
    println!("  Now an administrator edits one byte of the ledger on disk…");
    println!("    verify says: {tampered}");
    println!("  (restored). The same check runs against any checkpoint kept outside Custos.");

    step(
        13,
        "trust that does not rest on the custodian: witnesses and ledgered datasets",
    );
    witness::run(&base, &home_dir, &admin).await?;

    step(
        14,
        "the console: approvers, overseers and requesters in a browser",
    );
    console::run(
        &home_dir,
        &admin,
        token.reveal(),
        &sample_tin,
        args.listen,
        args.serve,
    )
    .await?;

    println!();
    println!(
        "Done. {}",
        if args.keep.is_some() {
            "The home was kept."
        } else {
            "The temporary home is removed now."
        }
    );
    Ok(())
}

/// The pseudonymous example of docs/agreements.md, in force around today,
/// with ZIP codes cut to 2 digits: the synthetic population is far thinner
/// than a real one, so 3-digit ZIP areas would leave most classes under k.
fn pseudonymous_agreement() -> String {
    in_force_around_today(PSEUDONYMOUS_AGREEMENT, 150)
        .replace("zip = \"prefix:3\"", "zip = \"prefix:2\"")
}

/// An example agreement with its validity window moved to start 30 days
/// ago and end `days` from today, so the demo works on any day.
fn in_force_around_today(text: &str, days: u64) -> String {
    let today = chrono::Utc::now().date_naive();
    text.lines()
        .map(|line| {
            if line.starts_with("valid_from =") {
                format!("valid_from = {}", today - chrono::Days::new(30))
            } else if line.starts_with("valid_until =") {
                format!("valid_until = {}", today + chrono::Days::new(days))
            } else {
                line.to_owned()
            }
        })
        .map(|line| line + "\n")
        .collect()
}

/// Both copies of the matching example, in force around today, padded to
/// a size above both synthetic sets (the example's 2,000,000 is for real
/// rolls; padding costs as much as real points).
fn match_agreements(pad_to: u64) -> (String, String) {
    let pad = |text: &str| {
        in_force_around_today(text, 365)
            .replace("pad_to = 2000000", &format!("pad_to = {pad_to}"))
            .replace(
                "subjects_per_day = 8000000",
                &format!("subjects_per_day = {}", pad_to * 4),
            )
    };
    (pad(MATCH_AGREEMENT), pad(MATCH_AGREEMENT_REQUESTER))
}

/// Step 10: a second home (the death registry) served on a loopback port;
/// this home (the benefits agency) matches its roll against it.
async fn match_demo(
    custos: &Custos,
    admin: &Actor,
    base: &Path,
    generated: &custos_synth::Generated,
) -> anyhow::Result<()> {
    let deaths = generated
        .datasets
        .iter()
        .find(|d| d.name == "deaths")
        .ok_or_else(|| anyhow::anyhow!("no death registry was generated"))?;
    let benefits_rows = generated
        .datasets
        .iter()
        .find(|d| d.name == "benefits")
        .map_or(0, |d| d.rows);
    let pad_to = (benefits_rows.max(deaths.rows) * 5 / 4).next_multiple_of(1000);
    let (registry_copy, requester_copy) = match_agreements(pad_to);
    let (registry, _) = Custos::init(
        &base.join("registry"),
        MasterKeySource::GenerateFile,
        Some("registry.custos.local".into()),
    )
    .await?;
    let (_, token) = registry
        .add_principal(
            &registry.actor(None).await?,
            "registrar",
            "Vital Statistics",
            &[Role::Admin],
        )
        .await?;
    let registrar = registry.authenticate(token.reveal()).await?;
    let report =
        ingest_with_progress(&registry, &registrar, "deaths", &deaths.schema, &deaths.csv).await?;
    let (version, _) = registry.apply_agreement(&registrar, &registry_copy).await?;
    let (_, ssa_token) = registry
        .add_principal(&registrar, "ssa-matching", "SSA", &[Role::Requester])
        .await?;
    println!(
        "  The registry (Vital Statistics) runs its own Custos in a second home: {} deaths ingested,",
        human_count(report.dataset.rows)
    );
    println!(
        "  agreement `{}` applied, and a token issued to SSA's matching account.",
        version.id
    );
    let registry_key = registry.verifier_key().to_owned();
    let server = custos_server::Server::bind(
        registry,
        custos_server::ServerConfig::new(std::net::SocketAddr::from(([127, 0, 0, 1], 0))),
    )
    .await?;
    let url = format!("http://{}", server.local_addr()?);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));
    println!("  It serves the API at {url}.");

    // This side's copy names the one peer its jobs may run against.
    let requester_copy = requester_copy.replace("https://registry.vitalstats.example.gov", &url);
    custos.apply_agreement(admin, &requester_copy).await?;
    let mut people = Vec::new();
    for (name, role) in [("rob", Role::Requester), ("cora", Role::Approver)] {
        let (_, token) = custos.add_principal(admin, name, "SSA", &[role]).await?;
        people.push(custos.authenticate(token.reveal()).await?);
    }
    let [rob, cora] = [&people[0], &people[1]];
    println!(
        "  This home applies its own copy (a match grant on `benefits`); both copies pad every set to {} points.",
        human_count(pad_to)
    );
    let peer =
        custos_server::HttpPeer::new(&url, zeroize::Zeroizing::new(ssa_token.reveal().to_owned()))
            .map_err(anyhow::Error::msg)?;
    let started = Instant::now();
    let result = custos
        .run_match(
            rob,
            custos_broker::MatchRequest {
                agreement: &version.id,
                dataset: "benefits",
                key: "ssn",
            },
            &peer,
        )
        .await;
    let _ = stop.send(());
    serving.await??;
    let report = result?;
    println!(
        "  rob (SSA, requester) runs `custos match --peer {url} --dataset benefits --key ssn` ({:.1}s):",
        started.elapsed().as_secs_f64()
    );
    println!(
        "  {} of {} beneficiaries matched (the generator planted {}), as tokens of the agreement, e.g. {}.",
        human_count(report.matches),
        human_count(benefits_rows),
        human_count(generated.deceased_beneficiaries),
        report.tokens.first().map_or("-", String::as_str)
    );
    anyhow::ensure!(
        report.matches == generated.deceased_beneficiaries,
        "the match found {} but {} were planted",
        report.matches,
        generated.deceased_beneficiaries
    );
    println!(
        "  What SSA saw: {} blinded points from the registry (its true size hidden) and which of its own",
        human_count(report.points_received)
    );
    println!(
        "  points matched. What the registry saw: SSA's padded set and, at the end, only the count."
    );
    let registry_ledger = LedgerReader::new(&base.join("registry").join("ledger"));
    let size = registry_ledger.latest(&registry_key)?.size;
    let entries = registry_ledger.entries(0, size)?;
    let finish = entries
        .iter()
        .filter_map(|(_, bytes)| custos_ledger::Entry::decode(bytes).ok())
        .find(|e| e.action == "match.finish");
    if let Some(finish) = finish {
        println!(
            "  The registry's ledger: `match.open` then `match.finish` with {:?}; no SSN, no token.",
            finish.counts
        );
    }
    println!(
        "  The result is UNVERIFIED (job {}): no payment may stop on it until a custodian checks.",
        report.job_id
    );
    let confirmed = custos.confirm_match(cora, &report.job_id).await?;
    println!(
        "  cora (SSA, approver) confirms it: {:?}. Then each case goes through an identified look-up.",
        confirmed.state
    );
    Ok(())
}

/// Step 9: an extract under the pseudonymous example, its first rows, and
/// a check that no TIN of the source is in it.
async fn extract_demo(
    custos: &Custos,
    admin: &Actor,
    base: &Path,
    data_dir: &Path,
    sample_tin: &str,
) -> anyhow::Result<()> {
    let text = pseudonymous_agreement();
    custos.apply_agreement(admin, &text).await?;
    let (_, token) = custos
        .add_principal(
            admin,
            "tomas",
            "Treasury Office of Tax Analysis",
            &[Role::Requester],
        )
        .await?;
    let tomas = custos.authenticate(token.reveal()).await?;
    println!("  tomas (Treasury, requester) extracts 2024 returns of CA, NY and TX under");
    println!(
        "  `treasury-research-2026`: TINs become format-keeping tokens of that agreement, birth"
    );
    println!(
        "  dates become years, ZIP codes keep 2 digits, and every row must share those with ≥ 4 others."
    );
    let out = base.join("extract-2024.csv");
    let started = Instant::now();
    let result = custos
        .extract(
            &tomas,
            custos_broker::ExtractRequest {
                agreement: "treasury-research-2026",
                dataset: "tax_returns",
                filter: Some("tax_year = 2024"),
                out: &out,
                format: custos_broker::ExtractFormat::Csv,
            },
        )
        .await;
    let report = match result {
        Ok(r) => r,
        Err(e) => {
            // A small demo population can leave every class under k.
            println!("  refused: {e}");
            println!("  (Run the demo with more rows to see an extract released.)");
            return Ok(());
        }
    };
    println!(
        "  {} rows released about {} people, in classes of at least k = {} people (rows of smaller classes left out, uncounted), in {:.1} s.",
        human_count(report.rows_released),
        human_count(report.subjects),
        report.k,
        started.elapsed().as_secs_f64()
    );
    let text = std::fs::read_to_string(&out)?;
    println!("  The first rows of `{}`:", out.display());
    for line in text.lines().take(4) {
        println!("    {line}");
    }
    let source_tins = first_column(&data_dir.join("tax_returns.csv"), 20_000)?;
    let found = source_tins
        .iter()
        .filter(|t| text.contains(t.as_str()))
        .count();
    println!(
        "  Of 20,000 real TINs from the source file, {found} appear in the extract{}; the sample",
        if found == 0 {
            ""
        } else {
            " (format-keeping tokens are 9-digit numbers too, so a token can equal someone else's TIN by chance)"
        }
    );
    println!(
        "  taxpayer's own TIN {} in it. Ledger entry #{} names every subject as a commitment,",
        if text.contains(sample_tin) {
            "IS"
        } else {
            "is not"
        },
        report.ledger_index
    );
    println!("  and each of their reports now lists the extract.");
    Ok(())
}

/// The first field of the first `n` data lines of a CSV file.
fn first_column(csv_path: &Path, n: usize) -> anyhow::Result<Vec<String>> {
    let mut reader = csv::Reader::from_path(csv_path)?;
    let mut out = Vec::with_capacity(n);
    for record in reader.records().take(n) {
        out.push(record?.get(0).unwrap_or_default().to_owned());
    }
    Ok(out)
}

/// The aggregate example of docs/agreements.md, in force around today so
/// the demo works on any day.
fn aggregate_agreement() -> String {
    in_force_around_today(AGGREGATE_AGREEMENT, 300)
}

/// Step 8: a few questions with their true values beside, then a refusal
/// for budget.
async fn aggregate_demo(custos: &Custos, admin: &Actor, data_dir: &Path) -> anyhow::Result<()> {
    let mut truth = truth::TaxTruth::from_csv(&data_dir.join("tax_returns.csv"))?;
    let (_, token) = custos
        .add_principal(admin, "gina", "GAO", &[Role::Requester])
        .await?;
    let gina = custos.authenticate(token.reveal()).await?;
    println!(
        "  gina (GAO, requester) asks under `gao-refund-statistics` (zCDP, ρ = 1 in all, ≤ 0.1 a query,"
    );
    println!(
        "  at most 3 returns per taxpayer). True values come from the demo's own synthetic CSV, to"
    );
    println!("  show the error; a requester never sees them.");
    let questions = [
        (
            "How many taxpayers filed at all?",
            "SELECT COUNT(DISTINCT tin) FROM tax_returns",
            None,
        ),
        (
            "Refunds of 2024 returns in five states (all 51 are released), each refund counted up to $50,000:",
            "SELECT state, COUNT(*), SUM(CLAMP(refund, 0, 50000)) FROM tax_returns WHERE tax_year = 2024 GROUP BY state",
            Some(["CA", "TX", "NY", "FL", "WY"]),
        ),
        (
            "Average refund by filing status, up to $50,000 a refund:",
            "SELECT filing_status, AVG(CLAMP(refund, 0, 50000)) FROM tax_returns GROUP BY filing_status",
            None,
        ),
        (
            "The same without a clamp: Custos spends a quarter of the query choosing one privately:",
            "SELECT filing_status, AVG(refund) FROM tax_returns GROUP BY filing_status",
            None,
        ),
        (
            "Median wages by filing status (a quantile: its error is in ranks; the grid has 0.5% steps):",
            "SELECT filing_status, MEDIAN(wages) FROM tax_returns GROUP BY filing_status",
            None,
        ),
    ];
    for (title, sql, only) in questions {
        println!();
        println!("  {title}");
        println!("    {sql}");
        let answer = custos
            .query_aggregate(&gina, "gao-refund-statistics", sql, None)
            .await?;
        let grouped = usize::from(sql.contains("GROUP BY"));
        for row in &answer.answer.rows {
            let key = if grouped == 1 {
                row[0].value.clone().unwrap_or_default()
            } else {
                String::new()
            };
            if let Some(only) = only
                && !only.contains(&key.as_str())
            {
                continue;
            }
            let mut cells = Vec::new();
            for (name, cell) in answer.answer.columns.iter().zip(row).skip(grouped) {
                let true_value = truth.value(name, &key).unwrap_or_else(|| "?".into());
                let error = match (&cell.low, &cell.high, cell.rank_error) {
                    (Some(low), Some(high), _) => format!("[{low} … {high}]"),
                    (_, _, Some(rank)) => format!("(rank ± {rank})"),
                    _ => String::new(),
                };
                cells.push(format!(
                    "{name} = {} {error} (true {true_value})",
                    cell.value.as_deref().unwrap_or("-"),
                ));
            }
            let label = if key.is_empty() {
                String::new()
            } else {
                format!("{key}: ")
            };
            println!("    {label}{}", cells.join(", "));
        }
        for b in &answer.answer.bounds {
            println!(
                "    {}",
                super::query::describe_bounds(b, answer.answer.measure)
            );
        }
        println!(
            "    spent ρ = {}; ρ = {:.2} of {} remains",
            answer.charged, answer.budget_remaining, answer.budget
        );
    }
    println!();
    println!(
        "  The noise of a sum is set by how far one taxpayer can move it: the clamp, not the schema's"
    );
    println!(
        "  $1,000,000. \"True\" values are unclamped, so they also show what a clamp cuts off."
    );
    // A small budget runs out: the refused query spends nothing.
    let small = aggregate_agreement()
        .replace("gao-refund-statistics", "gao-pilot")
        .replace("budget = 1.0", "budget = 0.2");
    custos.apply_agreement(admin, &small).await?;
    let sql = "SELECT tax_year, COUNT(*) FROM tax_returns GROUP BY tax_year";
    println!();
    println!("  Under `gao-pilot` (ρ = 0.2 in all), gina asks the same question three times:");
    for attempt in 1..=3 {
        match custos.query_aggregate(&gina, "gao-pilot", sql, None).await {
            Ok(a) => println!(
                "    {attempt}: answered; ρ = {:.2} remains",
                a.budget_remaining
            ),
            Err(e) => println!("    {attempt}: refused: {e}"),
        }
    }
    Ok(())
}

/// The identified-mode example of docs/agreements.md, in force around
/// today. The demo's look-up is not a law-enforcement one, so it is not
/// withheld from the subject's report (the example's exemption is left out).
fn identified_agreement() -> String {
    in_force_around_today(IDENTIFIED_AGREEMENT, 335)
        .replace("[withhold_from_subject_reports]\n", "")
        .replace("citation = \"5 U.S.C. 552a(k)(2)\"\n", "")
}

/// Step 7: request → refused early fetch → approval → fetch → report.
/// Step 7; returns rita (requester), olga (overseer) and the agreement.
async fn lookup_demo(
    custos: &Custos,
    admin: &Actor,
    tin: &str,
    buckets: u32,
) -> anyhow::Result<(Actor, Actor, String)> {
    let (version, _) = custos
        .apply_agreement(admin, &identified_agreement())
        .await?;
    println!(
        "  Agreement `{}` v{} lets TIGTA look up named taxpayers: 6 of 13 columns, returns from 2023 on,",
        version.id, version.version
    );
    println!("  at most 20 people a day, each request approved by someone else.");
    let mut people = Vec::new();
    for (name, org, role) in [
        ("rita", "TIGTA", Role::Requester),
        ("adam", "IRS", Role::Approver),
        ("olga", "GAO", Role::Overseer),
    ] {
        let (_, token) = custos.add_principal(admin, name, org, &[role]).await?;
        people.push(custos.authenticate(token.reveal()).await?);
    }
    let [rita, adam, olga] = [&people[0], &people[1], &people[2]];
    let ticket = custos
        .request_lookup(
            rita,
            custos_broker::LookupRequest {
                agreement: &version.id,
                dataset: "tax_returns",
                subject: tin,
                justification: "Case 2026-114: refund deposited to an account shared by 9 filers",
                columns: None,
            },
        )
        .await?;
    println!(
        "  rita (TIGTA, requester) asks for one taxpayer with a justification: request {} is {}.",
        ticket.id,
        ticket.state.as_str()
    );
    println!(
        "  (Deciding it read no data: the answer is the same whether the person exists or not.)"
    );
    match custos.fetch_lookup(rita, &ticket.id).await {
        Ok(_) => anyhow::bail!("an unapproved look-up released records"),
        Err(e) => println!("  rita tries to fetch at once: {e}."),
    }
    match custos.approve_lookup(rita, &ticket.id).await {
        Ok(_) => anyhow::bail!("a requester approved her own look-up"),
        Err(e) => println!("  rita tries to approve it herself: {e}."),
    }
    let approved = custos.approve_lookup(adam, &ticket.id).await?;
    println!(
        "  adam (IRS, approver) reads the justification and approves: {} of {}, {}.",
        approved.approvals,
        approved.approvals_required,
        approved.state.as_str()
    );
    let started = Instant::now();
    let released = custos.fetch_lookup(rita, &ticket.id).await?;
    println!(
        "  rita fetches ({:.1} ms: Custos read 1 of {buckets} bucket files, chosen by a keyed hash of the TIN).",
        started.elapsed().as_secs_f64() * 1000.0
    );
    println!(
        "  Ledger entry {} recording the release was durable before these rows left:",
        released.ledger_index
    );
    for line in super::table(&released.columns, &released.rows).lines() {
        println!("    {line}");
    }
    println!(
        "  (Address, birth date, wages and returns before 2023 stay behind: not granted, out of scope.)"
    );
    let report = custos.subject_report(olga, tin).await?;
    println!(
        "  The taxpayer asks who saw their record; olga (GAO, overseer) runs `custos report subject`:"
    );
    for line in &report.lines {
        println!(
            "    {}  {:<10} {} ({}) under {} v{}, {} row(s), ledger entry {} (inclusion proof verified)",
            line.at,
            line.kind.as_str(),
            line.recipient,
            line.org,
            line.agreement,
            line.agreement_version,
            line.rows,
            line.proof.index
        );
    }
    let olga = olga.clone();
    let rita = rita.clone();
    Ok((rita, olga, version.id))
}

/// Flips one byte of the first entry bundle, verifies, restores; returns
/// what verification said.
fn tamper_demo(
    ledger_dir: &Path,
    key: &str,
    checkpoint: &custos_ledger::VerifiedCheckpoint,
) -> anyhow::Result<String> {
    let bundle = ledger_dir.join(custos_ledger::tiles::TileId::entries(0, checkpoint.size).path());
    let original = std::fs::read(&bundle)?;
    let mut edited = original.clone();
    let last = edited.len() - 1;
    edited[last] ^= 1;
    std::fs::write(&bundle, &edited)?;
    let outcome = verify_ledger(ledger_dir, key, Some(&checkpoint.note));
    std::fs::write(&bundle, &original)?;
    match outcome {
        Ok(_) => anyhow::bail!("tampering went unnoticed"),
        Err(e) => Ok(e.to_string()),
    }
}

/// The first field of the first data row of a CSV (the subject id).
fn first_field(csv_path: &Path) -> anyhow::Result<String> {
    let mut reader = csv::Reader::from_path(csv_path)?;
    let record = reader
        .records()
        .next()
        .ok_or_else(|| anyhow::anyhow!("`{}` has no rows", csv_path.display()))??;
    Ok(record.get(0).unwrap_or_default().to_owned())
}

/// Every file under `dir` that contains `needle`.
pub fn find_bytes_under(dir: &Path, needle: &[u8]) -> anyhow::Result<Vec<PathBuf>> {
    let mut hits = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d)? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let bytes = std::fs::read(&path)?;
                if bytes.windows(needle.len()).any(|w| w == needle) {
                    hits.push(path);
                }
            }
        }
    }
    Ok(hits)
}
