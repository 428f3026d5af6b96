//! The crate graph that makes the broker the only door, checked as it is
//! (`cargo tree`), so a new dependency that opens a side door fails here.
//! The compile-fail half (private broker items, receipts) is in
//! `custos-server`'s crate docs.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;

/// The packages `package` depends on (normal edges): directly with
/// `direct`, else transitively.
fn dependencies(package: &str, direct: bool) -> Vec<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut args = vec![
        "tree",
        "--offline",
        "-e",
        "normal",
        "--prefix",
        "none",
        "-p",
        package,
    ];
    if direct {
        args.extend(["--depth", "1"]);
    }
    let out = Command::new(cargo)
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

#[test]
fn only_the_broker_and_its_engine_reach_the_store() {
    // The CLI and the server name data only through the broker.
    for package in ["custos", "custos-server"] {
        let direct = dependencies(package, true);
        assert!(
            direct.iter().any(|d| d == "custos-broker"),
            "{package}: {direct:?}"
        );
        for door in [
            "custos-store",
            "custos-engine",
            "sqlx",
            "datafusion",
            "parquet",
        ] {
            assert!(
                !direct.iter().any(|d| d == door),
                "{package} depends on {door} directly: a way to data around the broker"
            );
        }
    }
}

#[test]
fn the_model_policy_and_privacy_are_pure() {
    for package in ["custos-model", "custos-policy", "custos-privacy"] {
        let all = dependencies(package, false);
        // The control: the listing is read right.
        assert!(
            all.iter().any(|d| d == "custos-model"),
            "{package}: {all:?}"
        );
        for heavy in [
            "custos-store",
            "custos-engine",
            "custos-ledger",
            "sqlx",
            "arrow",
            "datafusion",
            "parquet",
            "tokio",
        ] {
            assert!(
                !all.iter().any(|d| d == heavy),
                "{package} depends on {heavy}: the pure crates must not do I/O or read data"
            );
        }
    }
}

/// The broker's simulated clock (a seam for replaying access traces in its
/// bench) is called from no product code: no `src/` file of any crate but
/// the one that defines it names it.
#[test]
fn no_product_code_moves_the_clock() {
    let crates = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut stack = vec![crates];
    let mut callers = Vec::new();
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if path.is_dir() {
                if !["target", "benches", "tests", "fuzz"].contains(&name.as_str()) {
                    stack.push(path);
                }
            } else if name.ends_with(".rs")
                && std::fs::read_to_string(&path)
                    .unwrap()
                    .contains("set_simulated_now(")
                && !path.ends_with("custos-broker/src/lib.rs")
            {
                callers.push(path.display().to_string());
            }
        }
    }
    assert!(
        callers.is_empty(),
        "the simulated clock is moved by {callers:?}"
    );
}
