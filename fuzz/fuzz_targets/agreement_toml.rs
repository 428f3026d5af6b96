//! Fuzzes the agreement parser and validator (a custodian applies files
//! written by others): no input may panic, and whatever validates grants
//! no identifying column in aggregate mode.
#![no_main]

use std::sync::LazyLock;

use custos_model::DatasetSchema;
use custos_policy::{Agreement, Mode};
use libfuzzer_sys::fuzz_target;


static SCHEMA_PARSED: LazyLock<DatasetSchema> =
    LazyLock::new(|| DatasetSchema::from_toml(custos_synth::TAX_RETURNS_SCHEMA).expect("the fuzz schema parses"));

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(agreement) = Agreement::from_toml(text) else {
        return;
    };
    let schema_of = |name: &str| (name == "tax_returns").then_some(&*SCHEMA_PARSED);
    if agreement.validate(schema_of).is_ok() {
        for grant in &agreement.grants {
            if grant.mode == Mode::Aggregate {
                for column in &grant.columns {
                    let class = SCHEMA_PARSED.column(column).map(|c| c.class);
                    assert!(
                        class.is_some_and(|c| !c.is_identifying()),
                        "an aggregate grant on identifying column `{column}` validated"
                    );
                }
            }
        }
    }
});
