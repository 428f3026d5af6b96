//! Step 8 of the demo: a requester looks up a neighbour, and the
//! unusual-browsing rules raise an alert an overseer reads and resolves.

use std::path::Path;

use custos_broker::{Actor, AlertState, Custos, PrincipalFacts};

/// Runs the step: `rita` and `olga` come from the look-up step.
pub async fn run(
    custos: &Custos,
    admin: &Actor,
    rita: &Actor,
    olga: &Actor,
    agreement: &str,
    tax_csv: &Path,
) -> anyhow::Result<()> {
    // A filer whose address starts with a house number: rita lives a few
    // doors down the same street.
    let mut reader = csv::Reader::from_path(tax_csv)?;
    let neighbour = reader
        .records()
        .filter_map(Result::ok)
        .skip(7)
        .find(|r| {
            r.get(2)
                .and_then(|a| a.split_once(' '))
                .is_some_and(|(n, _)| n.parse::<u32>().is_ok())
        })
        .ok_or_else(|| anyhow::anyhow!("no filer with a street address"))?;
    let (tin, address, zip) = (&neighbour[0], &neighbour[2], &neighbour[3]);
    let (number, street) = address.split_once(' ').unwrap_or(("1", address));
    let number: u32 = number.parse().unwrap_or(1);
    let facts = PrincipalFacts {
        address: Some(format!("{} {street}", number + 2)),
        zip: Some(zip.to_owned()),
        ..PrincipalFacts::default()
    };
    custos.set_principal_facts(admin, "rita", &facts).await?;
    println!("  The admin records rita's own address and ZIP code (sealed, never shown back;");
    println!("  the ledger says only that an address and a ZIP were set).");
    let ticket = custos
        .request_lookup(
            rita,
            custos_broker::LookupRequest {
                agreement,
                dataset: "tax_returns",
                subject: tin,
                justification: "Case 2026-131: checking a refund for a complaint",
                columns: None,
            },
        )
        .await?;
    println!(
        "  rita asks for a taxpayer two doors down her street: request {} is {} (an alert never blocks).",
        ticket.id,
        ticket.state.as_str()
    );
    let run = custos.detect_pending().await?;
    println!(
        "  The detector reads the {} new ledger entries and runs its rules: {} alert(s) raised.",
        run.entries_read, run.raised
    );
    let page = custos.alerts(olga, Some(AlertState::Open), 0).await?;
    let alert = page
        .alerts
        .iter()
        .find(|a| a.request.as_deref() == Some(ticket.id.as_str()))
        .ok_or_else(|| anyhow::anyhow!("browsing a neighbour raised no alert"))?;
    println!(
        "  olga (GAO, overseer) runs `custos alerts list`: {} about rita, score {:.2}:",
        alert.id, alert.score
    );
    for r in &alert.rules {
        println!("    {:<12} {}", r.rule, r.detail);
    }
    let entries: Vec<String> = alert.rests_on.iter().map(u64::to_string).collect();
    println!(
        "  It rests on ledger entry {} and names no one but rita: the neighbour stays behind the request.",
        entries.join(", ")
    );
    let resolved = custos
        .resolve_alert(
            olga,
            &alert.id,
            "Asked rita's manager: no case involves this taxpayer; referred to the UNAX officer",
        )
        .await?;
    println!(
        "  olga resolves it with what she found (sealed; ledger entry {}).",
        resolved.resolve_ledger_index.unwrap_or_default()
    );
    Ok(())
}
