//! `custos query`: differentially private aggregate answers under a budget.

use std::path::Path;

use clap::Args;
use custos_broker::AggregateAnswer;
use custos_broker::{AppliedBounds, BoundsSource};
use custos_policy::PrivacyMeasure;

use super::gateway::Gateway;

/// `custos query --agreement A "SELECT …"`.
#[derive(Debug, Args)]
pub struct QueryArgs {
    /// The agreement (its grant on the dataset must be mode `aggregate`).
    #[arg(long)]
    agreement: String,
    /// Privacy to spend on this query (ε or ρ, per the grant); default
    /// and maximum: the grant's `per_query`.
    #[arg(long, value_name = "AMOUNT", allow_negative_numbers = true)]
    spend: Option<f64>,
    /// Print JSON for scripts.
    #[arg(long)]
    json: bool,
    /// The query: SELECT of COUNT(*), COUNT(DISTINCT <subject id>), SUM(col),
    /// AVG(col), MEDIAN(col), QUANTILE(col, p) and GROUP BY columns, FROM
    /// the dataset, with an optional WHERE over granted columns and GROUP BY
    /// over granted public or quasi columns with a declared domain.
    ///
    /// Write CLAMP(col, low, high) inside SUM, AVG or a quantile to count
    /// each value within [low, high] (in the column's units): the noise is
    /// then set by the clamp, not the schema's wide bounds, e.g.
    /// `SELECT state, AVG(CLAMP(refund, 0, 50000)) FROM tax_returns GROUP BY state`.
    /// Without a CLAMP, SUM and AVG spend a quarter of their share choosing
    /// bounds privately; the answer says which bounds applied.
    sql: String,
}

/// Runs `custos query` on the home, or through `server` if given.
pub async fn run(home: &Path, server: Option<&str>, args: QueryArgs) -> anyhow::Result<()> {
    let gateway = Gateway::connect(home, server).await?;
    let result = async {
        let answer = gateway
            .query_aggregate(&args.agreement, &args.sql, args.spend)
            .await?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&answer)?);
        } else {
            print_answer(&answer);
        }
        anyhow::Ok(())
    }
    .await;
    gateway.close().await?;
    result
}

/// Prints an answer as a table with 95% intervals and the budget left.
pub fn print_answer(a: &AggregateAnswer) {
    let rows: Vec<Vec<Option<String>>> = a
        .answer
        .rows
        .iter()
        .map(|row| {
            row.iter()
                .map(|c| match (&c.value, &c.low, &c.high, c.rank_error) {
                    (Some(v), Some(lo), Some(hi), _) => Some(format!("{v} [{lo}, {hi}]")),
                    (Some(v), _, _, Some(rank)) => Some(format!("{v} (rank ± {rank})")),
                    (Some(v), _, _, None) => Some(v.clone()),
                    _ => Some("(suppressed: noisy count ≤ 0)".into()),
                })
                .collect()
        })
        .collect();
    print!("{}", super::table(&a.answer.columns, &rows));
    for b in &a.answer.bounds {
        println!("{}", describe_bounds(b, a.answer.measure));
    }
    let sym = a.answer.measure.symbol();
    println!(
        "Each value is noisy, with its 95% confidence interval in brackets; a quantile's error is in ranks (with 95%, the value's rank is within ± that many rows of the asked rank). Nothing else computed from the rows is released."
    );
    println!(
        "Spent {sym} = {} of {} on `{}` under `{}`; {sym} = {:.6} remains. Query {} (ledger entry {}).",
        a.charged, a.budget, a.dataset, a.agreement, a.budget_remaining, a.id, a.ledger_index
    );
}

/// One line saying what range an aggregate's values were clamped to (or a
/// quantile searched), and where it came from.
pub fn describe_bounds(b: &AppliedBounds, measure: PrivacyMeasure) -> String {
    let source = match b.source {
        BoundsSource::Analyst => "your CLAMP".to_owned(),
        BoundsSource::Schema => {
            "the schema's bounds (add CLAMP(col, low, high) to narrow it)".to_owned()
        }
        BoundsSource::Private => format!(
            "chosen privately, spending {} = {:.6} of this query (give CLAMP(col, low, high) to choose yourself)",
            measure.symbol(),
            b.spent
        ),
    };
    let what = if b.aggregate.starts_with("median(") || b.aggregate.starts_with("quantile(") {
        "answer searched"
    } else {
        "values counted"
    };
    format!(
        "{}: {what} from {} to {}: {source}.",
        b.aggregate, b.low, b.high
    )
}
