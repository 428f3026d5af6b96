"""OpenDP's own pipeline on the accuracy bench's queries (crates/custos-engine/benches/accuracy.rs).

Reads a JSON config (argv[1]) naming the synthetic CSV, the measure and budget per query, the
rows each taxpayer may contribute, the number of runs and the queries; writes JSON to stdout:
per query, per run, per group, the released value and its 95% interval (None for medians,
whose accuracy OpenDP does not state). Values are in cents, as Custos keeps decimals.

Install: pip install -r crates/custos-engine/benches/requirements.txt
"""

import json
import sys

import opendp.prelude as dp
import polars as pl

dp.enable_features("contrib")


def main() -> None:
    config = json.load(open(sys.argv[1]))
    cents = lambda c: (pl.col(c) * 100).round().cast(pl.Int64)
    data = (
        pl.scan_csv(config["csv"], schema_overrides={"refund": pl.Float64, "wages": pl.Float64})
        .select("state", "filing_status", cents("refund").alias("refund"), cents("wages").alias("wages"))
        .collect()
    )
    rows = data.height
    # Each run is one query spending the whole per-query budget.
    total = config["budget"] * config["runs"]
    loss = dp.loss_of(rho=total) if config["measure"] == "zcdp" else dp.loss_of(epsilon=total)
    out = {}
    for q in config["queries"]:
        group = q["group"]
        context = dp.Context.compositor(
            data=data.lazy(),
            privacy_unit=dp.unit_of(contributions=config["contributions"]),
            privacy_loss=loss,
            split_evenly_over=config["runs"],
            margins=[
                dp.polars.Margin(by=[group], invariant="keys", max_length=rows),
                dp.polars.Margin(max_length=rows),
            ],
        )
        column = pl.col(q.get("column") or "refund")
        kind = q["kind"]
        if kind == "count":
            exprs = [dp.len().alias("value")]
        elif kind == "sum":
            exprs = [column.dp.sum(tuple(q["bounds"])).alias("value")]
        elif kind == "mean":
            # OpenDP's dp.mean is a noisy sum over a noisy length, each with
            # half the budget; released apart, their stated accuracies give
            # the mean's interval (their corners, as Custos computes its own).
            exprs = [column.dp.sum(tuple(q["bounds"])).alias("s"), dp.len().alias("n")]
        elif kind == "median":
            exprs = [column.dp.median(q["candidates"]).alias("value")]
        else:
            raise SystemExit(f"unknown kind {kind}")
        runs = []
        accuracy = None
        for _ in range(config["runs"]):
            query = context.query().group_by(group).agg(*exprs)
            if accuracy is None:
                # The stated accuracy depends on the query, not the data:
                # computed once (OpenDP sums a large σ's mass point by point).
                summary = query.summarize(alpha=0.05)
                accuracy = list(summary["accuracy"]) if "accuracy" in summary.columns else []
            released = query.release().collect()
            cells = {}
            for row in released.iter_rows(named=True):
                cells[row[group]] = cell(kind, row, accuracy)
            runs.append(cells)
        out[q["name"]] = runs
    json.dump(out, sys.stdout)


def cell(kind, row, accuracy):
    """The value and OpenDP's stated 95% interval for it (None for medians)."""
    if kind in ("count", "sum"):
        v, a = float(row["value"]), accuracy[0]
        return [v, v - a, v + a]
    if kind == "mean":
        s, n = float(row["s"]), float(row["n"])
        sa, na = accuracy[0], accuracy[1]
        if n <= 0:
            return [None, None, None]
        lo_s, hi_s, lo_n, hi_n = s - sa, s + sa, max(n - na, 1.0), n + na
        low = lo_s / hi_n if lo_s >= 0 else lo_s / lo_n
        high = hi_s / lo_n if hi_s >= 0 else hi_s / hi_n
        return [s / n, low, high]
    return [float(row["value"]), None, None]


if __name__ == "__main__":
    main()
