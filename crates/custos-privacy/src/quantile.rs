//! Differentially private quantiles: rank scores over a fixed grid of
//! candidates, released by OpenDP's noisy max (exponential noise under pure
//! ε-DP, Gumbel under zCDP).
//!
//! OpenDP's `make_private_quantile` takes every value as one vector; at
//! 100M rows that is gigabytes. The score of a candidate depends only on
//! how many values fall below, on and above it, so Custos keeps, per group,
//! a histogram of values against the candidates ([`position`]) while it
//! scans, and turns it into scores ([`scores`]): OpenDP's own
//! (`make_quantile_score_candidates`; a test checks they agree) wherever no
//! value equals the candidate, and, where values pile up on one, the
//! distance from the asked rank to the ranks the pile holds (OpenDP's score
//! misplaces such piles). The counting and that score are Custos's own;
//! the sensitivity and the noisy max with its privacy map are OpenDP's.

use opendp::domains::{AtomDomain, VectorDomain};
use opendp::measurements::make_noisy_max;
use opendp::measures::{MaxDivergence, ZeroConcentratedDivergence};
use opendp::metrics::LInfDistance;

use crate::mechanism::{MechanismError, PrivacyMeasure, opendp_error};

/// Most candidates per quantile: the log-spaced grid over the whole `i64`
/// range has fewer.
pub const MAX_CANDIDATES: usize = 16_384;
/// Denominator of quantile levels (levels are in ten-thousandths).
pub const LEVEL_DENOMINATOR: u64 = 10_000;
/// The failure probability of the released rank bound.
const RANK_BOUND_FAILURE: f64 = 0.05;
/// Up to this span every integer is a candidate (exact quantiles of small
/// integer columns such as a tax year).
const EXACT_SPAN: i128 = 4096;
/// Below this magnitude every integer is a candidate; above it, each
/// candidate is at most [`STEP`] times the one before (relative resolution).
const LINEAR_BELOW: i64 = 200;
/// The grid's relative step above [`LINEAR_BELOW`]: 0.5%, so the nearest
/// candidate is within 0.25% of any value and a candidate's neighbour within
/// 0.5%.
const STEP: f64 = 1.005;

/// The candidates a quantile's answer is chosen from, over `[lo, hi]` (the
/// analyst's clamp or the schema's bounds), both included: every integer
/// when the span is small, else a grid that is fine where values are: every
/// integer up to ±200 storage units, then steps of 0.5% of the value
/// (symmetric around zero). On cents, a median of wages near $14,500 is one
/// of 2,900-ish candidates in $14,400–$14,600, not a point of a $10,000 grid.
pub fn candidates(lo: i64, hi: i64) -> Vec<i64> {
    let (lo, hi) = (lo.min(hi), lo.max(hi));
    if i128::from(hi) - i128::from(lo) < EXACT_SPAN {
        return (lo..=hi).collect();
    }
    let magnitudes = log_magnitudes(lo.unsigned_abs().max(hi.unsigned_abs()));
    let mut out: Vec<i64> = Vec::with_capacity(2 * magnitudes.len() + 3);
    out.push(lo);
    for m in magnitudes.iter().rev() {
        if let Ok(v) = i64::try_from(*m) {
            out.push(-v);
        }
    }
    out.push(0);
    for m in &magnitudes {
        if let Ok(v) = i64::try_from(*m) {
            out.push(v);
        }
    }
    out.push(hi);
    out.retain(|v| (lo..=hi).contains(v));
    out.sort_unstable();
    out.dedup();
    out
}

/// 1, 2, …, [`LINEAR_BELOW`], then × [`STEP`] (rounded up), up to the
/// first at or above `max`.
fn log_magnitudes(max: u64) -> Vec<u64> {
    let mut out = Vec::new();
    let mut m: u64 = 1;
    loop {
        out.push(m);
        if m >= max {
            return out;
        }
        let next = if m < LINEAR_BELOW.unsigned_abs() {
            m + 1
        } else {
            // Exact enough: rounding only makes a step slightly finer.
            #[allow(
                clippy::cast_precision_loss,
                clippy::cast_possible_truncation,
                clippy::cast_sign_loss
            )]
            let scaled = (m as f64 * STEP).ceil() as u64;
            scaled.max(m + 1)
        };
        m = next.min(max);
    }
}

/// Where `x` falls among the (sorted) candidates: `2i + 1` if it equals
/// candidate `i`, `2i` if it lies strictly between candidates `i − 1` and
/// `i` (or below the first), `2c` above the last. A histogram over these
/// `2c + 1` positions is all the scoring needs.
pub fn position(candidates: &[i64], x: i64) -> usize {
    let below = candidates.partition_point(|c| *c < x);
    2 * below + usize::from(candidates.get(below) == Some(&x))
}

/// Quantile scores (lower is better) of each candidate, from the position
/// histogram, for the level `α = num / den` (`per_10000 / 10,000`): how far,
/// in rows × `den`, the asked rank `α·n` lies from the ranks the candidate
/// holds, `[#(x < c), #(x ≤ c)]`:
/// `max(0, den·#(x < c) − num·n, num·n − den·#(x ≤ c))`.
///
/// Where no value equals the candidate this is exactly OpenDP's score,
/// `|(den − num)·#(x < c) − num·#(x > c)|` (a test checks it). OpenDP's
/// counts the values equal to a candidate on neither side, so a pile of
/// equal values — the zeros of a wage column, or every value a `CLAMP` moved
/// to its bound — loses to the empty gaps beside it, and the released value
/// lands thousands of rows from the asked rank while the stated rank error
/// says dozens (found by a red-team run). Each term moves by at most
/// `max(num, den − num)` per row added or removed, so the sensitivity is
/// OpenDP's ([`score_sensitivity`]); the noisy max is OpenDP's.
pub fn scores(histogram: &[u64], per_10000: u32) -> Vec<u64> {
    let num = u64::from(per_10000);
    let den = LEVEL_DENOMINATOR;
    let n: u64 = histogram.iter().sum();
    let asked = num * n;
    let count = histogram.len() / 2;
    let mut out = Vec::with_capacity(count);
    let mut less = 0u64;
    for i in 0..count {
        less += histogram[2 * i];
        let at_or_below = less + histogram[2 * i + 1];
        out.push(
            (den * less)
                .saturating_sub(asked)
                .max(asked.saturating_sub(den * at_or_below)),
        );
        less = at_or_below;
    }
    out
}

/// How far one subject (at most `contributions` rows) can move any score:
/// OpenDP's stability map of the scoring for an unknown dataset size.
pub fn score_sensitivity(per_10000: u32, contributions: u32) -> u64 {
    let num = u64::from(per_10000);
    u64::from(contributions) * num.max(LEVEL_DENOMINATOR - num)
}

/// Candidates chosen per group.
#[derive(Debug, Clone, PartialEq)]
pub struct NoisyChoices {
    /// Per group, the index of the released candidate.
    pub chosen: Vec<usize>,
    /// The noise scale on the scores.
    pub scale: f64,
    /// With probability ≥ 95% per group, the released candidate's rank is
    /// within this many rows of the asked rank (grid resolution aside).
    pub rank_error: u64,
    /// The privacy actually spent, as OpenDP's privacy map states it.
    pub spent: f64,
}

/// The noise scale of OpenDP's noisy max over `count` candidates that
/// spends at most `spend` at score `sensitivity`, and what it spends, as
/// OpenDP's privacy map states it.
pub fn calibrate(
    count: usize,
    measure: PrivacyMeasure,
    spend: f64,
    sensitivity: u64,
) -> Result<(f64, f64), MechanismError> {
    if !(spend.is_finite() && spend > 0.0) {
        return Err(MechanismError::Calibration(format!(
            "spend must be positive, not {spend}"
        )));
    }
    #[allow(clippy::cast_precision_loss)]
    let delta = sensitivity as f64;
    // A first guess, then the exact answer from OpenDP's privacy map.
    let mut scale = match measure {
        PrivacyMeasure::Pure => 2.0 * delta / spend,
        PrivacyMeasure::Zcdp => 2.0 * delta / (8.0 * spend).sqrt(),
    };
    let spent_at = |scale: f64| -> Result<f64, MechanismError> {
        let (domain, metric) = space(count);
        match measure {
            PrivacyMeasure::Pure => make_noisy_max(domain, metric, MaxDivergence, scale, true)
                .and_then(|m| m.map(&sensitivity)),
            PrivacyMeasure::Zcdp => {
                make_noisy_max(domain, metric, ZeroConcentratedDivergence, scale, true)
                    .and_then(|m| m.map(&sensitivity))
            }
        }
        .map_err(opendp_error)
    };
    // Pure ε falls as 1/scale, ρ as 1/scale²: one correction lands close.
    let first = spent_at(scale)?;
    if first > 0.0 {
        scale *= match measure {
            PrivacyMeasure::Pure => first / spend,
            PrivacyMeasure::Zcdp => (first / spend).sqrt(),
        };
    }
    for _ in 0..64 {
        let spent = spent_at(scale)?;
        if spent <= spend {
            return Ok((scale, spent));
        }
        scale *= 1.0 + 1e-9;
    }
    Err(MechanismError::Calibration(
        "the privacy map never fit the spend".into(),
    ))
}

/// The input space of a noisy max over `count` scores.
fn space(count: usize) -> (VectorDomain<AtomDomain<u64>>, LInfDistance<u64>) {
    (
        VectorDomain::new(AtomDomain::<u64>::default()).with_size(count),
        LInfDistance::<u64>::default(),
    )
}

/// With probability ≥ 95%, a noisy max at `scale` over `count` candidates
/// picks one whose score is within this much of the best score.
pub fn score_error(scale: f64, count: usize) -> f64 {
    #[allow(clippy::cast_precision_loss)]
    let bound = scale * (count.max(1) as f64 / RANK_BOUND_FAILURE).ln();
    bound
}

/// Releases, for each group's scores, one candidate index by OpenDP's
/// noisy max, spending at most `spend` over all groups (a subject's rows
/// touch at most `contributions` groups, and the score sensitivity already
/// counts all of them, so one calibration covers every group).
pub fn release_quantile(
    scores_per_group: &[Vec<u64>],
    measure: PrivacyMeasure,
    spend: f64,
    sensitivity: u64,
) -> Result<NoisyChoices, MechanismError> {
    let count = scores_per_group.first().map_or(0, Vec::len).max(1);
    let (scale, spent) = calibrate(count, measure, spend, sensitivity)?;
    let mut chosen = Vec::with_capacity(scores_per_group.len());
    for scores in scores_per_group {
        let (domain, metric) = space(count);
        let index = match measure {
            PrivacyMeasure::Pure => make_noisy_max(domain, metric, MaxDivergence, scale, true)
                .and_then(|m| m.invoke(scores)),
            PrivacyMeasure::Zcdp => {
                make_noisy_max(domain, metric, ZeroConcentratedDivergence, scale, true)
                    .and_then(|m| m.invoke(scores))
            }
        }
        .map_err(opendp_error)?;
        chosen.push(index);
    }
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let rank_error = (score_error(scale, count) / LEVEL_DENOMINATOR as f64).ceil() as u64;
    Ok(NoisyChoices {
        chosen,
        scale,
        rank_error,
        spent,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use opendp::metrics::SymmetricDistance;
    use opendp::transformations::make_quantile_score_candidates;

    #[test]
    fn candidates_span_the_bounds_finely_where_values_are() {
        assert_eq!(candidates(0, 4), [0, 1, 2, 3, 4]);
        assert_eq!(candidates(2015, 2035).len(), 21);
        let c = candidates(0, 1_000_000_000);
        assert!(c.len() <= MAX_CANDIDATES);
        assert_eq!((c[0], *c.last().unwrap()), (0, 1_000_000_000));
        assert!(c.windows(2).all(|w| w[0] < w[1]));
        // Every integer up to 200, then no gap wider than 0.5% of the value.
        assert_eq!(&c[..201], (0..=200).collect::<Vec<_>>());
        for w in c.windows(2) {
            assert!(
                w[1] - w[0] <= 1 || (w[1] - w[0]) * 1000 <= 5 * w[0] + 1000,
                "{w:?}"
            );
        }
        // Symmetric around zero, inside the bounds only.
        let c = candidates(-1_000_000, 20_000_000);
        assert_eq!(c[0], -1_000_000);
        assert!(c.contains(&0) && c.contains(&-1) && c.contains(&1));
        assert!(c.iter().all(|v| (-1_000_000..=20_000_000).contains(v)));
        let c = candidates(i64::MIN, i64::MAX);
        assert!(c.len() <= MAX_CANDIDATES && c.windows(2).all(|w| w[0] < w[1]));
        assert_eq!((c[0], *c.last().unwrap()), (i64::MIN, i64::MAX));
    }

    /// The histogram route gives OpenDP's own scores wherever no value
    /// equals the candidate, up to OpenDP's choice of denominator (a common
    /// factor that the sensitivity shares).
    #[test]
    fn scores_match_opendp_away_from_ties() {
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let grid = candidates(-50, 150);
        for per_10000 in [5000u32, 9000, 2500, 100, 9999, 3700] {
            let alpha = f64::from(per_10000) / 10_000.0;
            let t = make_quantile_score_candidates(
                VectorDomain::new(AtomDomain::<i64>::default()),
                SymmetricDistance,
                grid.clone(),
                alpha,
            )
            .unwrap();
            let theirs_sensitivity = t.map(&3).unwrap();
            let ours_sensitivity = score_sensitivity(per_10000, 3);
            for len in [0usize, 1, 7, 500] {
                #[allow(clippy::cast_possible_wrap)]
                let data: Vec<i64> = (0..len).map(|_| (next() % 260) as i64 - 80).collect();
                let theirs = t.invoke(&data).unwrap();
                let mut histogram = vec![0u64; 2 * grid.len() + 1];
                for x in &data {
                    histogram[position(&grid, *x)] += 1;
                }
                let ours = scores(&histogram, per_10000);
                assert_eq!(ours.len(), theirs.len());
                for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
                    if histogram[2 * i + 1] > 0 {
                        continue;
                    }
                    // ours / our sensitivity == theirs / their sensitivity
                    assert_eq!(
                        u128::from(*a) * u128::from(theirs_sensitivity),
                        u128::from(*b) * u128::from(ours_sensitivity),
                        "p = {alpha}, n = {len}"
                    );
                }
            }
        }
    }

    /// A pile of equal values holds every rank it covers: the median of
    /// 7,867 zeros and 12,133 values clamped to 100 is 100, not a gap.
    #[test]
    fn a_pile_of_equal_values_wins_the_ranks_it_holds() {
        let grid = candidates(0, 10_000);
        let mut histogram = vec![0u64; 2 * grid.len() + 1];
        histogram[position(&grid, 0)] += 7_867;
        histogram[position(&grid, 100)] += 12_133;
        let s = scores(&histogram, 5000);
        let best = (0..s.len()).min_by_key(|i| s[*i]).unwrap();
        assert_eq!(grid[best], 100);
        assert_eq!(s[best], 0);
        // 30% of the values are zeros: the 0.3-quantile is 0.
        let mut histogram = vec![0u64; 2 * grid.len() + 1];
        histogram[position(&grid, 0)] += 3_000;
        for v in 1..=7_000 {
            histogram[position(&grid, v)] += 1;
        }
        let s = scores(&histogram, 2999);
        let best = (0..s.len()).min_by_key(|i| s[*i]).unwrap();
        assert_eq!(grid[best], 0);
        for measure in [PrivacyMeasure::Pure, PrivacyMeasure::Zcdp] {
            let out = release_quantile(
                std::slice::from_ref(&s),
                measure,
                1.0,
                score_sensitivity(2999, 1),
            )
            .unwrap();
            assert!(
                grid[out.chosen[0]] <= 1 + out.rank_error as i64,
                "{measure:?}"
            );
        }
    }

    #[test]
    fn the_median_lands_near_the_middle() {
        let grid = candidates(0, 1000);
        let mut histogram = vec![0u64; 2 * grid.len() + 1];
        for x in 0..=1000 {
            histogram[position(&grid, x)] += 1;
        }
        let scores = vec![scores(&histogram, 5000)];
        for measure in [PrivacyMeasure::Pure, PrivacyMeasure::Zcdp] {
            let out = release_quantile(&scores, measure, 1.0, score_sensitivity(5000, 1)).unwrap();
            assert!(out.spent <= 1.0 && out.spent > 0.99, "{}", out.spent);
            let value = grid[out.chosen[0]];
            // One value per candidate, so ranks are values here. The bound
            // holds with 95%; three times it fails with < 1e-9.
            assert!(
                value.abs_diff(500) <= 3 * out.rank_error + 1,
                "{measure:?}: {value} ± {}",
                out.rank_error
            );
        }
    }
}
