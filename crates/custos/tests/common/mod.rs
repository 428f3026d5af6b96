//! Helpers shared by the CLI tests: a `custos` command on a home, acting as
//! a principal, and the ledger as JSON.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::Path;

/// `custos` with `CUSTOS_HOME = home`, no master key from the environment,
/// and `CUSTOS_TOKEN` only if `token` is given.
pub fn custos(home: &Path, token: Option<&str>) -> assert_cmd::Command {
    let mut cmd = assert_cmd::Command::cargo_bin("custos").unwrap();
    cmd.env("CUSTOS_HOME", home)
        .env_remove("CUSTOS_MASTER_KEY")
        .env_remove("CUSTOS_TOKEN");
    if let Some(t) = token {
        cmd.env("CUSTOS_TOKEN", t);
    }
    cmd
}

/// Every ledger entry of `home`, from `custos ledger show --json`.
pub fn ledger(home: &Path) -> Vec<serde_json::Value> {
    let out = custos(home, None)
        .args(["ledger", "show", "--json"])
        .output()
        .unwrap();
    serde_json::from_slice::<serde_json::Value>(&out.stdout)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}
