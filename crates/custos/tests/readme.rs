//! The README's "Using it" block runs as written, in order, on a fresh home:
//! the first README's extract example failed (its agreement had expired)
//! and nothing noticed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::process::Command;

/// The first `sh` block after the `## Using it` heading.
fn using_it_block(readme: &str) -> String {
    let section = readme
        .split_once("## Using it\n")
        .expect("README has a `## Using it` section")
        .1;
    let block = section
        .split_once("```sh\n")
        .expect("`Using it` has an sh block")
        .1;
    block
        .split_once("```")
        .expect("the block ends")
        .0
        .to_owned()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

#[test]
fn the_readme_using_it_block_runs_as_written() {
    if !common::slow_tests("the_readme_using_it_block_runs_as_written") {
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let block = using_it_block(&readme);
    // Every line a user would type is a command (no placeholders to fill).
    for placeholder in ["…", "<", "req_…", "custos_p"] {
        assert!(
            !block.contains(placeholder),
            "the block has a placeholder `{placeholder}`"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    copy_dir(
        &root.join("docs/examples"),
        &dir.path().join("docs/examples"),
    );
    let script = dir.path().join("using-it.sh");
    // `-e`: any failing command fails the test; `-x`: the log shows which.
    std::fs::write(&script, format!("set -euxo pipefail\n{block}")).unwrap();
    let bin = Path::new(env!("CARGO_BIN_EXE_custos")).parent().unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new("bash")
        .arg(&script)
        .current_dir(dir.path())
        .env("PATH", path)
        .env_remove("CUSTOS_HOME")
        .env_remove("CUSTOS_TOKEN")
        .env_remove("CUSTOS_MASTER_KEY")
        .env_remove("CUSTOS_LISTEN")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the README block failed\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
    );
    // What each mode promised shows in what it printed.
    for expected in [
        "Applied agreement `treasury-research-2026`",
        "avg(clamp(refund, 0, 50000))",
        "sum(refund): values counted from 0.00 to",
    ] {
        assert!(stdout.contains(expected), "no `{expected}` in\n{stdout}");
    }
    assert!(
        dir.path().join("rows.csv").exists(),
        "the extract wrote no file"
    );
    assert!(
        stdout.contains("records match the published entries"),
        "`ledger verify` did not confirm the ledger:\n{stdout}"
    );
}
