//! `custos serve`: the HTTP API over this home.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use custos_server::{RateLimit, Server, ServerConfig, TlsFiles};

use super::open_custos;

/// `custos serve [--listen ADDR] [--tls-cert F --tls-key F]`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address and port to listen on. Anything but a loopback address
    /// needs --tls-cert and --tls-key.
    #[arg(long, env = "CUSTOS_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// TLS certificate chain (PEM).
    #[arg(long, requires = "tls_key", value_name = "FILE")]
    tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, requires = "tls_cert", value_name = "FILE")]
    tls_key: Option<PathBuf>,
    /// Largest request body accepted, in bytes.
    #[arg(long, default_value_t = 64 * 1024, value_name = "BYTES")]
    body_limit: usize,
    /// Longest a request may run, in seconds.
    #[arg(long, default_value_t = 30, value_name = "SECONDS")]
    request_timeout: u64,
    /// Longest a client may take to send its request headers, in seconds
    /// (slow clients are cut off).
    #[arg(long, default_value_t = 10, value_name = "SECONDS")]
    header_timeout: u64,
    /// Requests handled at once; beyond it clients get 503 and retry.
    #[arg(long, default_value_t = 256, value_name = "N")]
    max_in_flight: usize,
    /// Requests per second allowed per token (sustained).
    #[arg(long, default_value_t = 100, value_name = "N")]
    rate: u32,
    /// Requests a token may send at once after a quiet spell.
    #[arg(long, default_value_t = 200, value_name = "N")]
    burst: u32,
    /// Refuse releases while the ledger holds entries no witness quorum
    /// has cosigned for longer than this (e.g. 5m); needs a witness policy
    /// (`custos ledger witness-policy`). Same as CUSTOS_MAX_UNWITNESSED.
    #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION")]
    max_unwitnessed: Option<Duration>,
    /// With a witness policy: how often to ask the witnesses for fresh
    /// cosignatures while the ledger does not grow (verifiers may refuse
    /// old ones). New checkpoints are submitted within a second.
    #[arg(long, default_value = "1m", value_parser = humantime::parse_duration, value_name = "DURATION")]
    witness_refresh: Duration,
}

/// Runs the server until Ctrl-C or SIGTERM, then drains and closes the ledger.
pub async fn run(home: &Path, args: ServeArgs) -> anyhow::Result<()> {
    let positive = |n: u32, what: &str| {
        std::num::NonZeroU32::new(n).ok_or_else(|| anyhow::anyhow!("--{what} must be at least 1"))
    };
    let mut config = ServerConfig::new(args.listen);
    config.tls = args
        .tls_cert
        .zip(args.tls_key)
        .map(|(cert, key)| TlsFiles { cert, key });
    config.body_limit = args.body_limit;
    config.request_timeout = Duration::from_secs(args.request_timeout.max(1));
    config.header_timeout = Duration::from_secs(args.header_timeout.max(1));
    config.max_in_flight = args.max_in_flight.max(1);
    config.rate_limit = RateLimit {
        per_second: positive(args.rate, "rate")?,
        burst: positive(args.burst, "burst")?,
    };
    let scheme = if config.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let mut custos = open_custos(home).await?;
    if let Some(max) = args.max_unwitnessed {
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
    let witnessing = collector.map(|c| tokio::spawn(collect_forever(c, args.witness_refresh)));
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
