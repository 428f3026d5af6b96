//! Step 13 of the demo: the web console. People for each role get a token,
//! a look-up waits in the approver's queue, and `custos serve`'s console
//! answers on loopback; with `--serve` it keeps running until Ctrl-C.

use std::net::SocketAddr;
use std::path::Path;

use custos_broker::{Actor, Custos, LookupRequest};
use custos_model::Role;

/// Runs the step on the closed home at `home_dir`, as the custodian whose
/// token is `admin_token`.
pub async fn run(
    home_dir: &Path,
    admin: &Actor,
    admin_token: &str,
    tin: &str,
    listen: SocketAddr,
    serve: bool,
) -> anyhow::Result<()> {
    let custos = Custos::open(home_dir, None).await?;
    let mut signins = vec![("admin", "custodian".to_owned(), admin_token.to_owned())];
    let mut actors = Vec::new();
    for (name, org, role) in [
        ("ana", "IRS", Role::Approver),
        ("ravi", "TIGTA", Role::Requester),
        ("oscar", "GAO", Role::Overseer),
    ] {
        let (_, token) = custos.add_principal(admin, name, org, &[role]).await?;
        actors.push(custos.authenticate(token.reveal()).await?);
        signins.push((role.as_str(), name.to_owned(), token.reveal().to_owned()));
    }
    let ticket = custos
        .request_lookup(
            &actors[1],
            LookupRequest {
                agreement: "tigta-refund-fraud-2026",
                dataset: "tax_returns",
                subject: tin,
                justification: "Case 2026-121: a second refund to the account of case 2026-114",
                columns: None,
            },
        )
        .await?;
    println!(
        "  ravi (TIGTA, requester) files look-up {} for ana (IRS, approver) to judge in the browser.",
        ticket.id
    );
    let server = custos_server::Server::bind(custos, custos_server::ServerConfig::new(listen))
        .await
        .map_err(|e| anyhow::anyhow!("the console cannot listen on {listen}: {e}"))?;
    let url = format!("http://{}/console", server.local_addr()?);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));
    let page = reqwest::get(format!("{url}/sign-in")).await?;
    anyhow::ensure!(
        page.status().is_success(),
        "the console's sign-in page answered {}",
        page.status()
    );
    println!("  The console answers at {url} — sign in with one of these tokens:");
    for (role, name, token) in &signins {
        println!("    {role:<9} {name:<10} {token}");
    }
    if serve {
        println!(
            "  Serving until Ctrl-C (the home stays as it is; the tokens work for `custos` too)."
        );
        super::super::serve::shutdown_signal()?.await;
    } else {
        println!("  (`custos demo --serve` keeps it running; here it stops now.)");
    }
    let _ = stop.send(());
    serving
        .await
        .map_err(|e| anyhow::anyhow!("the console server failed: {e}"))??;
    Ok(())
}
