//! `custos`: the one binary custodians, requesters and overseers run.
#![forbid(unsafe_code)]

mod commands;
mod progress;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Custos: a guarded gateway to sensitive records.
///
/// Every access runs under a data-sharing agreement, answers with the least
/// personal data that serves the purpose, and is written where it can't be
/// erased. Start with `custos demo` to see the whole story on synthetic data,
/// or `custos init` to create a home for real datasets.
#[derive(Debug, Parser)]
#[command(
    name = "custos",
    version,
    propagate_version = true,
    max_term_width = 100,
    after_long_help = "Examples:\n  custos demo --rows 100000                 # the whole story in a temporary home\n  custos init --origin tax.example.gov/custos\n  custos generate --rows 1000000 --out synthetic\n  custos dataset ingest --schema synthetic/tax_returns.schema.toml --name tax_returns synthetic/tax_returns.csv\n  custos dataset describe tax_returns\n  custos ledger checkpoint > checkpoint-today.txt   # keep it; later:\n  custos ledger verify --checkpoint checkpoint-today.txt\n  custos --server https://custos.example.gov ledger verify --key \"$VKEY\"   # an auditor, from anywhere\n\nEnvironment:\n  CUSTOS_HOME        the home directory (default ./custos-data)\n  CUSTOS_MASTER_KEY  64 hex characters; keeps the master key outside the home\n  CUSTOS_TOKEN       the API token of the principal acting (from `custos principal add`)\n  CUSTOS_SERVER      a Custos server's URL: every command but init, demo, serve, generate goes there\n  CUSTOS_LOG         log filter for stderr, e.g. info or custos_store=debug (default warn,custos_server=info)"
)]
struct Cli {
    /// The Custos home (data directory). Holds keys, the metadata store and
    /// encrypted datasets.
    #[arg(
        long,
        global = true,
        env = "CUSTOS_HOME",
        default_value = "./custos-data",
        value_name = "DIR"
    )]
    home: PathBuf,

    /// Talk to a Custos server instead of the local home: every requester,
    /// overseer and admin command (query, lookup, approve, report, subject, match,
    /// dataset list/describe, agreement, principal, ledger). The token in
    /// CUSTOS_TOKEN is sent as a bearer token; ledger commands read the
    /// public tile paths and need no token, only the verifier key (--key).
    #[arg(long, global = true, env = "CUSTOS_SERVER", value_name = "URL")]
    server: Option<String>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the whole story on synthetic data in a fresh temporary home.
    ///
    /// Creates a home, generates a tax-return dataset (1 million returns by
    /// default), a benefits roll and a death registry, ingests them encrypted,
    /// and shows what is stored. Nothing outside the temporary home changes.
    Demo(commands::demo::DemoArgs),
    /// Create a new home: data directory (mode 0700), master key, instance
    /// signing key and metadata store.
    ///
    /// The master key is generated into HOME/master.key (mode 0600) unless
    /// CUSTOS_MASTER_KEY holds one (64 hex characters), in which case it is
    /// written nowhere and must be set for every later command. With
    /// --shares N --threshold T it is split among N people, any T of whom
    /// open the home; with --hsm MODULE --hsm-token LABEL it is made inside
    /// a hardware security module and never leaves it (docs/keys.md).
    /// Refuses to touch a directory that is not empty.
    ///
    /// Example: custos init --shares 5 --threshold 3
    Init(commands::init::InitArgs),
    /// The master key: where it lives (`key show`) and rotating it (`key
    /// rotate`) without rewriting any dataset file.
    #[command(subcommand)]
    Key(commands::keys::KeyCommand),
    /// Load and inspect datasets.
    #[command(subcommand)]
    Dataset(commands::dataset::DatasetCommand),
    /// Apply and manage data-sharing agreements (TOML; see docs/agreements.md).
    #[command(subcommand)]
    Agreement(commands::agreement::AgreementCommand),
    /// Manage principals (API callers) and their tokens.
    #[command(subcommand)]
    Principal(commands::principal::PrincipalCommand),
    /// Unusual-browsing alerts (overseers): list, show, resolve, scan.
    ///
    /// Rules run on every identified access (self-access, household,
    /// colleague, neighbour, surname, protected subject, the same subject
    /// asked again, off hours, bursts of refusals, no case reference), and
    /// each principal's day is compared with its peers. An alert never
    /// blocks anything; it says which rules fired and which ledger entries
    /// it rests on. See docs/browsing.md.
    #[command(subcommand)]
    Alerts(commands::alerts::AlertsCommand),
    /// Identified look-ups: request a named subject's records under an
    /// agreement, with a justification; show or fetch a request.
    ///
    /// A request is decided (agreement state and dates, grant, columns,
    /// limits, Cedar policies and guards) and ledgered, but never reads the
    /// dataset. It waits for approvals by other people (`custos approve`);
    /// then the requester fetches the rows once.
    Lookup(commands::lookup::LookupArgs),
    /// Ask an aggregate question and get a differentially private answer.
    ///
    /// The SQL is checked against the agreement's aggregate grant, each
    /// subject's contribution is bounded, values are clamped to the schema's
    /// bounds, every group of a public column's domain is released, and
    /// noise (discrete Gaussian under zCDP, or discrete Laplace under pure
    /// DP) is added to integer totals. The spend is charged to the budget and
    /// written to the ledger before anything is computed; a query that would
    /// exceed the budget is refused and spends nothing.
    Query(commands::query::QueryArgs),
    /// Write pseudonymous rows to a file under a `pseudonymous` grant.
    ///
    /// `subject_id` and `identifier` columns become tokens of the agreement
    /// (the same person gets the same token within the agreement, an
    /// unlinkable one under any other); quasi-identifiers are generalised as
    /// the grant says; a class (quasi-identifier and public values) must
    /// hold at least k people, and when tokens link a person's rows, so
    /// must the set of their rows' classes; smaller ones are left out,
    /// uncounted. An extract over the grant's row cap is refused whole;
    /// extracts per hour are capped. The file appears only after the ledger
    /// records the extract with every subject in it. With --server, the
    /// server sends the file: no home or master key is needed.
    Extract(commands::extract::ExtractArgs),
    /// Private matching with another agency's Custos (mode `match`): learn
    /// which of your subjects are in the peer's dataset (as tokens of the
    /// agreement) or only how many, without either side seeing the other's
    /// list. `match show JOB` and `match confirm JOB` follow up a job.
    Match(commands::matches::MatchArgs),
    /// Approve a pending look-up (role `approver`; never your own request,
    /// never twice).
    Approve(commands::lookup::ApproveArgs),
    /// Accountability reports: a subject's accounting of disclosures, an
    /// agreement's use.
    #[command(subcommand)]
    Report(commands::report::ReportCommand),
    /// Custodian actions on a subject (protect).
    #[command(subcommand)]
    Subject(commands::lookup::SubjectCommand),
    /// Read, prove and verify the ledger of every action; witness it.
    #[command(subcommand)]
    Ledger(commands::ledger::LedgerCommand),
    /// Run a witness that cosigns a ledger's checkpoints while it stays
    /// append-only (C2SP tlog-witness).
    ///
    /// For an inspector general, a court or another agency: it needs no
    /// Custos home, only the verifier key of each log it follows.
    #[command(subcommand)]
    Witness(commands::witness::WitnessCommand),
    /// Serve the HTTP API over this home (loopback by default; TLS for
    /// anything else).
    ///
    /// Versioned REST under /v1 for datasets, agreements, principals,
    /// look-ups, approvals, fetches, aggregate queries and reports, with
    /// bearer tokens from `custos principal add`; the ledger's checkpoint and
    /// tiles are public at /checkpoint and /tile/… for outside auditors; the
    /// OpenAPI description is at /openapi.json. Errors are RFC 9457
    /// problem+json. Stops cleanly on Ctrl-C or SIGTERM.
    Serve(commands::serve::ServeArgs),
    /// Write synthetic CSV files and their schemas (never real people).
    ///
    /// Writes tax_returns.csv, benefits.csv and deaths.csv with a
    /// .schema.toml beside each. SSNs use area numbers that are never issued
    /// (000, 666, or group 00). The same --seed gives the same files.
    Generate(commands::generate::GenerateArgs),
}

fn main() -> ExitCode {
    let matches = <Cli as clap::CommandFactory>::command().get_matches();
    let cli = match <Cli as clap::FromArgMatches>::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    // Whether the home was named (a serve configuration may name another).
    let home_given = matches!(
        matches.value_source("home"),
        Some(clap::parser::ValueSource::CommandLine | clap::parser::ValueSource::EnvVariable)
    );
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CUSTOS_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,custos_server=info")),
        )
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, never in log files.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let server = cli.server.as_deref().filter(|s| !s.trim().is_empty());
    let result = runtime.block_on(async {
        let local_only = || -> anyhow::Result<()> {
            anyhow::bail!(
                "this command works on the local home only (init, demo, serve, generate); unset --server / CUSTOS_SERVER"
            )
        };
        match cli.command {
            Command::Lookup(args) => commands::lookup::run(&cli.home, server, args).await,
            Command::Approve(args) => commands::lookup::approve(&cli.home, server, args).await,
            Command::Query(args) => commands::query::run(&cli.home, server, args).await,
            Command::Extract(args) => commands::extract::run(&cli.home, server, args).await,
            Command::Match(args) => commands::matches::run(&cli.home, server, args).await,
            Command::Report(cmd) => commands::report::run(&cli.home, server, cmd).await,
            Command::Subject(cmd) => commands::lookup::subject(&cli.home, server, cmd).await,
            Command::Dataset(cmd) => commands::dataset::run(&cli.home, server, cmd).await,
            Command::Principal(cmd) => commands::principal::run(&cli.home, server, cmd).await,
            Command::Alerts(cmd) => commands::alerts::run(&cli.home, server, cmd).await,
            Command::Agreement(cmd) => commands::agreement::run(&cli.home, server, cmd).await,
            Command::Ledger(cmd) => commands::ledger::run(&cli.home, server, cmd).await,
            Command::Generate(args) => commands::generate::run(args),
            Command::Witness(cmd) => commands::witness::run(cmd).await,
            _ if server.is_some() => local_only(),
            Command::Demo(args) => commands::demo::run(args).await,
            Command::Init(args) => commands::init::run(&cli.home, args).await,
            Command::Key(cmd) => commands::keys::run(&cli.home, server, cmd).await,
            Command::Serve(args) => commands::serve::run(&cli.home, home_given, args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            commands::report_error(&e);
            ExitCode::FAILURE
        }
    }
}
