//! `custos serve`: the HTTP API over this home.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use custos_server::{RateLimit, Server, ServerConfig, TlsFiles};

use super::open_custos_with;
use super::serve_config::ServeConfig;

/// `custos serve [--config FILE] [--listen ADDR] [--tls-cert F --tls-key F]`.
#[derive(Debug, Args)]
#[command(after_long_help = CONFIG_HELP)]
pub struct ServeArgs {
    /// A replica's configuration (TOML): the home's origin, catalogue and
    /// object store URLs, and any option below under `[server]`. The home
    /// directory is made from it if missing, so another machine needs no
    /// copy of the home; credentials stay in the environment. See below.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Address and port to listen on (default 127.0.0.1:8080). Anything
    /// but a loopback address needs --tls-cert and --tls-key.
    #[arg(long, env = "CUSTOS_LISTEN", value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// TLS certificate chain (PEM).
    #[arg(long, requires = "tls_key", value_name = "FILE")]
    tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, requires = "tls_cert", value_name = "FILE")]
    tls_key: Option<PathBuf>,
    /// Largest request body accepted, in bytes (default 65536).
    #[arg(long, value_name = "BYTES")]
    body_limit: Option<usize>,
    /// Longest a request may run, in seconds (default 30).
    #[arg(long, value_name = "SECONDS")]
    request_timeout: Option<u64>,
    /// Longest a client may take to send its request headers, in seconds
    /// (default 10; slow clients are cut off).
    #[arg(long, value_name = "SECONDS")]
    header_timeout: Option<u64>,
    /// Requests handled at once (default 256); beyond it clients get 503
    /// and retry.
    #[arg(long, value_name = "N")]
    max_in_flight: Option<usize>,
    /// Requests per second allowed per token, sustained (default 100).
    #[arg(long, value_name = "N")]
    rate: Option<u32>,
    /// Requests a token may send at once after a quiet spell (default 200).
    #[arg(long, value_name = "N")]
    burst: Option<u32>,
    /// Refuse releases while the ledger holds entries no witness quorum
    /// has cosigned for longer than this (e.g. 5m); needs a witness policy
    /// (`custos ledger witness-policy`). Same as CUSTOS_MAX_UNWITNESSED.
    #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION")]
    max_unwitnessed: Option<Duration>,
    /// With a witness policy: how often to ask the witnesses for fresh
    /// cosignatures while the ledger does not grow (default 1m; verifiers
    /// may refuse old ones). New checkpoints are submitted within a second.
    #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION")]
    witness_refresh: Option<Duration>,
}

/// What `--help` says about `--config`.
const CONFIG_HELP: &str =
    "A replica's configuration (--config FILE), e.g. /etc/custos/replica.toml:

  home = \"/var/lib/custos\"      # this replica's directory (default: --home); holds no data
  origin = \"tax.example.gov/custos\"            # the home's origin, from `custos init`
  catalogue = \"postgres://custos@db.internal:5432/custos?sslmode=verify-full\"
  object_store = \"s3://agency-data/custos/prod?region=us-gov-west-1\"
  ledger_key_file = \"/etc/custos/ledger.key\"   # or CUSTOS_LEDGER_KEY in the environment

  [server]                      # the flags above, `_` for `-`; a flag given wins
  listen = \"0.0.0.0:8443\"
  tls_cert = \"/etc/custos/tls/cert.pem\"
  tls_key = \"/etc/custos/tls/key.pem\"
  rate = 100

Secrets stay in the environment: PGPASSWORD (or ~/.pgpass), AWS_ACCESS_KEY_ID and
AWS_SECRET_ACCESS_KEY (or the instance role), CUSTOS_MASTER_KEY (or the home's shares or HSM PIN).
The first start writes catalogue.toml and object-store.toml into the directory; later starts
refuse files there that name another catalogue, store or origin. Relative paths are relative to
the configuration file. Every replica of a home with a shared ledger can run from the same file
(docs/deploy.md, \"Several servers\").";

/// Runs the server until Ctrl-C or SIGTERM, then drains and closes the
/// ledger. `home_given` says whether --home or CUSTOS_HOME was set (a
/// configuration naming another home is then refused).
pub async fn run(home: &Path, home_given: bool, args: ServeArgs) -> anyhow::Result<()> {
    let file = args.config.as_deref().map(ServeConfig::read).transpose()?;
    let home = match file.as_ref().and_then(|f| f.home.clone()) {
        Some(configured) if home_given && configured != home => anyhow::bail!(
            "the configuration names the home `{}`, but --home or CUSTOS_HOME names `{}`: give one",
            configured.display(),
            home.display()
        ),
        Some(configured) => configured,
        None => home.to_owned(),
    };
    let options = file.as_ref().map(|f| f.server.clone()).unwrap_or_default();
    let positive = |n: u32, what: &str| {
        std::num::NonZeroU32::new(n).ok_or_else(|| anyhow::anyhow!("--{what} must be at least 1"))
    };
    // Bounded, so that no value overflows a deadline or a semaphore.
    let within = |n: u64, most: u64, what: &str| {
        if (1..=most).contains(&n) {
            Ok(n)
        } else {
            Err(anyhow::anyhow!("--{what} must be from 1 to {most}"))
        }
    };
    let mut config = ServerConfig::new(
        args.listen
            .or(options.listen)
            .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 8080))),
    );
    config.tls = match (args.tls_cert, args.tls_key) {
        (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
        _ => options
            .tls_cert
            .zip(options.tls_key)
            .map(|(cert, key)| TlsFiles { cert, key }),
    };
    config.body_limit = usize::try_from(within(
        args.body_limit.or(options.body_limit).unwrap_or(64 * 1024) as u64,
        1 << 30,
        "body-limit",
    )?)?;
    const DAY: u64 = 24 * 60 * 60;
    let seconds = |given: Option<u64>, configured: Option<u64>, default: u64, what: &str| {
        within(given.or(configured).unwrap_or(default), DAY, what).map(Duration::from_secs)
    };
    config.request_timeout = seconds(
        args.request_timeout,
        options.request_timeout,
        30,
        "request-timeout",
    )?;
    config.header_timeout = seconds(
        args.header_timeout,
        options.header_timeout,
        10,
        "header-timeout",
    )?;
    config.max_in_flight = usize::try_from(within(
        args.max_in_flight.or(options.max_in_flight).unwrap_or(256) as u64,
        1_000_000,
        "max-in-flight",
    )?)?;
    config.rate_limit = RateLimit {
        per_second: positive(args.rate.or(options.rate).unwrap_or(100), "rate")?,
        burst: positive(args.burst.or(options.burst).unwrap_or(200), "burst")?,
    };
    let max_unwitnessed = args.max_unwitnessed.or(options.max_unwitnessed);
    let witness_refresh = args
        .witness_refresh
        .or(options.witness_refresh)
        .unwrap_or(Duration::from_secs(60));
    // Only once every option is known to be good: a refused start leaves
    // nothing in the directory.
    let mut ledger_key = super::ledger_key_from_env()?;
    let prepared = match file {
        Some(file) => {
            let prepared = file.replica().prepare(&home)?;
            if ledger_key.seed.is_none() && ledger_key.file.is_none() {
                ledger_key.file = file.ledger_key_file;
            }
            Some(prepared)
        }
        None => None,
    };
    let home = prepared.as_ref().map_or(home, |p| p.root().to_owned());
    let scheme = if config.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let mut custos = match open_custos_with(&home, ledger_key).await {
        Ok(custos) => custos,
        Err(e) => {
            // A configuration that does not open the home leaves nothing
            // recorded for the next start to refuse.
            if let Some(prepared) = prepared {
                prepared.undo();
            }
            return Err(e);
        }
    };
    if let Some(max) = max_unwitnessed {
        custos.require_witnessed_within(max).await?;
    }
    let collector = match custos.witness_policy().await? {
        Some(policy) => {
            eprintln!(
                "Witnessing: {} witness(es), quorum `{}`; checkpoints go to them as they are signed.",
                policy.witnesses().count(),
                policy.quorum().unwrap_or("none")
            );
            Some(
                custos_witness::Collector::new(&custos.ledger_dir(), custos.verifier_key(), policy)
                    .map_err(|e| anyhow::anyhow!(e))?,
            )
        }
        None => None,
    };
    let server = Server::bind(custos, config).await?;
    let witnessing = collector.map(|c| tokio::spawn(collect_forever(c, witness_refresh)));
    let addr = server.local_addr()?;
    // Handlers first: a SIGTERM right after the address is announced must
    // drain and close the ledger, not kill the process.
    let stop = shutdown_signal()?;
    // The address on stdout (for scripts), the rest on stderr.
    println!("{scheme}://{addr}");
    eprintln!(
        "Custos is serving {} on {scheme}://{addr} (API at /v1, description at /openapi.json). Ctrl-C or SIGTERM stops it after in-flight requests finish.",
        home.display()
    );
    let served = server.run(stop).await;
    if let Some(task) = witnessing {
        task.abort();
    }
    served?;
    eprintln!("stopped; the ledger is closed");
    Ok(())
}

/// Submits each new checkpoint (and, every `refresh`, the same one again)
/// to the witnesses; failures are logged and retried, never fatal.
async fn collect_forever(collector: custos_witness::Collector, refresh: Duration) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if !collector.due(refresh) {
            continue;
        }
        match collector.round().await {
            Ok(report) if !report.published => tracing::warn!(
                size = report.size,
                failed = report.failed.len(),
                "the witness quorum has not cosigned the newest checkpoint"
            ),
            Ok(_) | Err(custos_ledger::LedgerError::Busy(_)) => {}
            Err(e) => tracing::warn!(error = %e, "collecting cosignatures failed"),
        }
    }
}

/// A future that resolves on Ctrl-C or SIGTERM, with both handlers
/// registered before it returns.
#[cfg(unix)]
pub fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {},
            _ = terminate.recv() => {},
        }
    })
}

/// A future that resolves on Ctrl-C.
#[cfg(not(unix))]
pub fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
    })
}
