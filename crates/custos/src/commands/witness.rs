//! `custos witness …`: run a C2SP tlog-witness for Custos ledgers (or any
//! log with Ed25519 checkpoints). A witness needs no Custos home: only its
//! own directory and the verifier keys of the logs it follows.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use custos_witness::serve::WitnessServer;
use custos_witness::{Witness, WitnessDir};

/// Witness commands.
#[derive(Debug, Subcommand)]
pub enum WitnessCommand {
    /// Create a witness: its directory (mode 0700), its Ed25519 key
    /// (DIR/witness.key, 0600) and DIR/witness.toml listing the logs it
    /// follows. Prints its public key and the line a log's witness policy
    /// needs.
    Init {
        /// The witness's directory (absent or empty).
        dir: PathBuf,
        /// The witness's name, its key name in cosignatures (customarily a
        /// schema-less URL, e.g. `witness.ig.example.gov/custos`).
        #[arg(long)]
        name: String,
        /// The verifier key of a log to follow (`custos ledger public-key`
        /// on the custodian's machine prints it); repeat for several.
        #[arg(long = "log", value_name = "VKEY")]
        logs: Vec<String>,
    },
    /// Print the witness's public key and its policy line.
    Key {
        /// The witness's directory.
        dir: PathBuf,
    },
    /// Serve `POST /add-checkpoint` (C2SP tlog-witness) until Ctrl-C or
    /// SIGTERM. Requests and answers are public and signed, so plain HTTP
    /// is safe to expose; put a TLS proxy in front if you want privacy.
    Serve {
        /// The witness's directory.
        dir: PathBuf,
        /// Address and port to listen on.
        #[arg(long, default_value = "127.0.0.1:8090")]
        listen: SocketAddr,
    },
}

fn print_key(dir: &WitnessDir, url: &str) -> anyhow::Result<()> {
    let cosigner = dir.cosigner()?;
    let key = cosigner.public();
    println!("{}", key.vkey());
    eprintln!(
        "The witness `{}` has the cosignature/v1 key above. A log's witness policy names it with:\n  witness {} {} {url}",
        key.name(),
        key.name(),
        key.hex()
    );
    Ok(())
}

/// Runs a witness command.
pub async fn run(cmd: WitnessCommand) -> anyhow::Result<()> {
    match cmd {
        WitnessCommand::Init { dir, name, logs } => {
            let (opened, _) = WitnessDir::init(&dir, &name, &logs)?;
            eprintln!(
                "Created the witness `{name}` in {} following {} log(s).",
                dir.display(),
                logs.len()
            );
            print_key(&opened, "http://HOST:PORT")?;
        }
        WitnessCommand::Key { dir } => print_key(&WitnessDir::open(&dir)?, "http://HOST:PORT")?,
        WitnessCommand::Serve { dir, listen } => {
            let opened = WitnessDir::open(&dir)?;
            let _lock = opened.lock()?;
            let witness = Witness::load(opened)?;
            let origins: Vec<String> = witness.origins().map(str::to_owned).collect();
            let server = WitnessServer::bind(witness, listen)
                .await
                .with_context(|| format!("listening on {listen}"))?;
            let addr = server.local_addr()?;
            let stop = super::serve::shutdown_signal()?;
            println!("http://{addr}");
            eprintln!(
                "The witness in {} is serving POST /add-checkpoint on http://{addr} for: {}",
                dir.display(),
                if origins.is_empty() {
                    "no log yet (add [[log]] keys to witness.toml and restart)".to_owned()
                } else {
                    origins.join(", ")
                }
            );
            server.run(stop).await?;
            eprintln!("stopped");
        }
    }
    Ok(())
}
