//! Fuzzes the aggregate SQL allow-list and plan (what any requester may
//! send) under the aggregate example agreement: no input may panic, and an
//! accepted query reads (selects, groups by or filters on) only granted,
//! non-identifying columns.
#![no_main]

use std::sync::LazyLock;

use custos_model::DatasetSchema;
use custos_policy::Agreement;
use libfuzzer_sys::fuzz_target;

static SCHEMA: LazyLock<DatasetSchema> = LazyLock::new(|| {
    DatasetSchema::from_toml(custos_synth::TAX_RETURNS_SCHEMA).expect("the schema parses")
});

static AGREEMENT: LazyLock<Agreement> = LazyLock::new(|| {
    Agreement::from_toml(include_str!("../../docs/examples/agreement-aggregate.toml"))
        .expect("the example parses")
});

fuzz_target!(|data: &[u8]| {
    let Ok(sql) = std::str::from_utf8(data) else {
        return;
    };
    let grant = &AGREEMENT.grants[0];
    let _ = custos_privacy::dataset_of(sql);
    if let Ok(plan) = custos_privacy::plan(sql, "tax_returns", &SCHEMA, grant, None) {
        for column in &plan.columns {
            assert!(grant.columns.contains(column), "read `{column}` without a grant");
            let class = SCHEMA.column(column).map(|c| c.class);
            assert!(
                class.is_some_and(|c| !c.is_identifying()),
                "read identifying column `{column}`"
            );
        }
    }
});
