//! `custos key`: where the master key lives and how to rotate it, and
//! gathering what a home needs to open (key, shares or HSM PIN) from the
//! environment or a prompt. See docs/keys.md.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use custos_broker::{
    ExternalKey, HsmConfig, KeySource, NewKeyMaterial, NewMasterKey, PrintedShare, SecretText,
};

use super::{master_key_from_env, open_custos, token_from_env};

/// Key shares for opening a home, separated by spaces, commas or newlines.
pub const SHARES_ENV: &str = "CUSTOS_KEY_SHARES";
/// The user PIN of the HSM token that holds the master key.
pub const HSM_PIN_ENV: &str = "CUSTOS_HSM_PIN";

/// What opens the home at `home`, from the environment or, at a terminal,
/// a prompt: `CUSTOS_MASTER_KEY` for a file or environment home, a quorum
/// of shares (`CUSTOS_KEY_SHARES`) for a shares home, the token's PIN
/// (`CUSTOS_HSM_PIN`) for an HSM home. `None` when nothing is needed or
/// nothing was given (opening then says what is missing).
pub async fn key_from_env(home: &Path) -> anyhow::Result<Option<ExternalKey>> {
    let source = match custos_broker::home_key_source(home).await {
        Ok(source) => source,
        // No home (or an unreadable one): opening reports it.
        Err(_) => return master_key_from_env(),
    };
    Ok(match source {
        KeySource::File | KeySource::Environment => master_key_from_env()?,
        KeySource::Shares(set) => {
            let given = shares_from_env();
            if !given.is_empty() {
                Some(ExternalKey::from_shares(given))
            } else if std::io::stdin().is_terminal() {
                let mut shares = Vec::with_capacity(set.threshold);
                eprintln!(
                    "This home opens with {} of its {} key shares; each holder types theirs (not shown).",
                    set.threshold,
                    set.count()
                );
                for i in 1..=set.threshold {
                    let text = rpassword::prompt_password(format!(
                        "key share {i} of {}: ",
                        set.threshold
                    ))?;
                    shares.push(SecretText::from(text));
                }
                Some(ExternalKey::from_shares(shares))
            } else {
                None
            }
        }
        KeySource::Hsm(config) => hsm_pin(&config.token)?.map(ExternalKey::hsm_pin),
    })
}

/// Shares from `CUSTOS_KEY_SHARES` (none if unset).
fn shares_from_env() -> Vec<SecretText> {
    let Ok(text) = std::env::var(SHARES_ENV).map(SecretText::from) else {
        return Vec::new();
    };
    text.expose()
        .split(|c: char| c.is_whitespace() || c == ',')
        .filter(|s| !s.is_empty())
        .map(|s| SecretText::from(s.to_owned()))
        .collect()
}

/// The HSM PIN from `CUSTOS_HSM_PIN` or, at a terminal, a prompt.
pub fn hsm_pin(token: &str) -> anyhow::Result<Option<SecretText>> {
    if let Ok(pin) = std::env::var(HSM_PIN_ENV)
        && !pin.is_empty()
    {
        return Ok(Some(SecretText::from(pin)));
    }
    if std::io::stdin().is_terminal() {
        let pin = rpassword::prompt_password(format!("PIN of HSM token `{token}` (not shown): "))?;
        return Ok(Some(SecretText::from(pin)));
    }
    Ok(None)
}

/// The PIN for a command that needs one, or a clear error.
pub fn required_hsm_pin(token: &str) -> anyhow::Result<SecretText> {
    hsm_pin(token)?.ok_or_else(|| {
        anyhow::anyhow!(
            "the HSM token `{token}` needs its user PIN: set {HSM_PIN_ENV} or run the command in a terminal (never on the command line)"
        )
    })
}

/// Where a new master key goes (`init` and `key rotate`).
#[derive(Debug, Args)]
pub struct KeySourceArgs {
    /// Split the master key into N Shamir shares (printed once, kept
    /// nowhere) of which --threshold open the home: no one person can
    /// open it alone.
    #[arg(long, value_name = "N", requires = "threshold", conflicts_with = "hsm")]
    pub shares: Option<usize>,
    /// How many of the --shares open the home (at least 2).
    #[arg(long, value_name = "T", requires = "shares")]
    pub threshold: Option<usize>,
    /// Keep the master key inside a hardware security module: the path of
    /// its PKCS#11 module (e.g. /usr/lib/softhsm/libsofthsm2.so). The key
    /// is made in the token, cannot leave it, and wraps every other key.
    /// The PIN comes from CUSTOS_HSM_PIN or a prompt.
    #[arg(long, value_name = "MODULE", requires = "hsm_token")]
    pub hsm: Option<PathBuf>,
    /// The label of the HSM token to use (with --hsm).
    #[arg(long, value_name = "LABEL", requires = "hsm")]
    pub hsm_token: Option<String>,
}

/// What `key rotate` makes of its arguments.
fn new_master_key(args: KeySourceArgs, env: bool) -> anyhow::Result<NewMasterKey> {
    Ok(
        match (args.shares, args.threshold, args.hsm, args.hsm_token) {
            (Some(count), Some(threshold), None, None) => NewMasterKey::Shares { threshold, count },
            (None, None, Some(module), Some(token)) => {
                let pin = required_hsm_pin(&token)?;
                NewMasterKey::Hsm {
                    config: HsmConfig::new(module, token),
                    pin,
                }
            }
            _ if env => NewMasterKey::Environment,
            _ => NewMasterKey::File,
        },
    )
}

/// `custos key …`.
#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Say where this home's master key lives and its public fingerprint
    /// (never the key). Opens the home, so it also proves the key works.
    Show,
    /// Make a new master key and re-wrap every dataset key and sealed
    /// secret under it, in one transaction; dataset files are not
    /// rewritten. The rotation is ledgered first (admins only; run on
    /// the custodian's machine with the server stopped).
    ///
    /// The new key goes to master.key by default, or --env (printed once,
    /// for CUSTOS_MASTER_KEY), --shares N --threshold T (printed once, one
    /// per holder), or --hsm MODULE --hsm-token LABEL. The old key opens
    /// nothing afterwards (keep it only for backups made before). A crash
    /// leaves the home opening with the old key or the new one.
    ///
    /// Example: custos key rotate --shares 5 --threshold 3
    Rotate {
        /// Print the new key once, for CUSTOS_MASTER_KEY, instead of
        /// writing master.key.
        #[arg(long, conflicts_with_all = ["shares", "hsm"])]
        env: bool,
        #[command(flatten)]
        to: KeySourceArgs,
    },
}

/// Runs `custos key …`.
pub async fn run(home: &Path, server: Option<&str>, cmd: KeyCommand) -> anyhow::Result<()> {
    if server.is_some() {
        anyhow::bail!(
            "`custos key` works on the custodian's machine, on the home itself: drop --server"
        );
    }
    match cmd {
        KeyCommand::Show => {
            let custos = open_custos(home).await?;
            let (source, fingerprint) = custos.master_key_summary();
            let retired = custos.retired_master_keys().await;
            custos.close()?;
            show_source(&source, &fingerprint);
            for old in retired? {
                eprintln!(
                    "warning: the HSM key `{}` in token `{}` was retired by a rotation that stopped before destroying it; delete it from the token",
                    old.label, old.token
                );
            }
        }
        KeyCommand::Rotate { env, to } => {
            let to = new_master_key(to, env)?;
            let custos = open_custos(home).await?;
            let actor = custos
                .actor(token_from_env().as_deref().map(|t| t.as_str()))
                .await?;
            let rotated = custos
                .rotate_master_key(&actor, to, |material| match material {
                    NewKeyMaterial::File => {
                        eprintln!("New master key staged as master.key.next (mode 0600).");
                    }
                    NewKeyMaterial::Environment(hex) => {
                        eprintln!(
                            "New master key (printed once; set it as CUSTOS_MASTER_KEY for every command from now on):"
                        );
                        println!("{hex}");
                    }
                    NewKeyMaterial::Shares(shares) => print_shares(shares),
                    NewKeyMaterial::Hsm(config) => eprintln!(
                        "New master key `{}` made inside HSM token `{}`.",
                        config.label, config.token
                    ),
                })
                .await?;
            eprintln!(
                "Rotated the master key ({} → {}): {} sealed value(s) re-wrapped, no dataset file rewritten; ledger entry {}.\n  previous fingerprint: {}\n  new fingerprint:      {}",
                rotated.from,
                rotated.to,
                rotated.rewrapped,
                rotated.ledger_index,
                rotated.previous_fingerprint,
                rotated.fingerprint
            );
            if let Some(step) = &rotated.unfinished {
                eprintln!(
                    "warning: the new key is in use, but a last step failed: {step}\n         (a staged master.key.next is moved into place at the next open; an old HSM key may have to be deleted from its token by hand)"
                );
            }
            if rotated.from == "file" && rotated.to != "file" {
                eprintln!(
                    "  master.key was removed from the home; copies in older backups still open those backups."
                );
            }
        }
    }
    Ok(())
}

/// Prints new shares once, each with its check value.
pub fn print_shares(shares: &[PrintedShare]) {
    eprintln!(
        "Key shares (printed once, never stored): give one to each holder; a holder can read back the check to confirm theirs."
    );
    for share in shares {
        println!("{}  check {}", share.text.as_str(), share.check);
    }
}

/// Prints a key source for `key show`.
fn show_source(source: &KeySource, fingerprint: &str) {
    match source {
        KeySource::File => println!("source:      file (master.key in the home, mode 0600)"),
        KeySource::Environment => println!("source:      environment (CUSTOS_MASTER_KEY)"),
        KeySource::Shares(set) => {
            println!(
                "source:      shares ({} of {} open the home)",
                set.threshold,
                set.count()
            );
            for (i, check) in set.checks.iter().enumerate() {
                println!("  share {}: check {check}", i + 1);
            }
        }
        KeySource::Hsm(config) => {
            println!("source:      hsm (PKCS#11)");
            println!("  module:    {}", config.module.display());
            println!("  token:     {}", config.token);
            println!("  key label: {}", config.label);
        }
    }
    println!("fingerprint: {fingerprint}");
}
