//! Private bound selection: when a `SUM` or `AVG` has no `CLAMP`, a stated
//! share of its budget ([`BOUND_SHARE`]) buys differentially private
//! estimates of where the column's extreme values begin, over the rows read,
//! and the values are clamped there instead of at the schema's
//! (deliberately wide) bounds.
//!
//! Each bound is a private quantile counted from the top (or bottom): the
//! candidate of a coarse grid of powers of √2 ([`grid`]) with about `m`
//! of the rows read above it, picked by OpenDP's noisy max over the rank
//! distance `|#(x > c) − m|` (the score OpenDP's quantile mechanism uses,
//! with the rank fixed from the top instead of as a share of an unknown
//! count). One subject moves every score by at most `contributions`. The
//! target `m` is twice the 95% rank error of that noisy max, so the choice
//! is neither lost among the many candidates above the largest value (whose
//! scores tie at `m`) nor, as a fixed 99th percentile would be on a large
//! dataset, far below the tail that carries much of a sum. It is then moved
//! one grid step outward (post-processing, free). The clamp then cuts about
//! `m` values in all: a bias comparable to the noise the clamp sets, which
//! is where the two balance. A data-independent cost of one noise bound per
//! grid step outward breaks ties toward the inner candidates.
//!
//! The engine cannot clamp at bounds chosen after it has read the rows, so
//! it keeps, per group, how many values fall at each grid position and
//! their sum ([`Binned`]); any clamp at two grid points is then an exact
//! sum over the bins ([`Binned::clamped_sum`]) in one pass over the data.
//! Only this bookkeeping and the rank-distance score are Custos's own; the
//! noisy max and its privacy map are OpenDP's.

use crate::mechanism::{MechanismError, PrivacyMeasure};
use crate::quantile;

/// The share of an aggregate's spend that private bound selection takes.
pub const BOUND_SHARE: f64 = 0.1;

/// The grid private bounds are chosen from, inside `[lo, hi]` (the schema's
/// bounds): zero, ±⌈√2ᵏ⌉ and the bounds themselves. Coarse on purpose:
/// the noise of a clamped sum grows with the clamp, so a bound within a
/// factor √2 of the percentile is as good as exact, and a short grid keeps
/// the per-group bins small.
pub fn grid(lo: i64, hi: i64) -> Vec<i64> {
    let (lo, hi) = (lo.min(hi), lo.max(hi));
    let mut out = vec![lo, 0, hi];
    let mut power = 1.0_f64;
    while power < 1.0e19 {
        #[allow(clippy::cast_possible_truncation)]
        let m = power.ceil() as i64;
        out.push(m);
        out.push(-m);
        power *= std::f64::consts::SQRT_2;
    }
    out.retain(|v| (lo..=hi).contains(v));
    out.sort_unstable();
    out.dedup();
    out
}

/// One group's values against a bound grid: per position (as
/// [`quantile::position`] numbers them), how many values and their sum.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Binned {
    /// Values per position.
    pub counts: Vec<u64>,
    /// Sum of the values per position (storage units).
    pub sums: Vec<i64>,
}

impl Binned {
    /// Empty bins for a grid of `candidates` points.
    pub fn new(candidates: usize) -> Self {
        Self {
            counts: vec![0; 2 * candidates + 1],
            sums: vec![0; 2 * candidates + 1],
        }
    }

    /// Counts `value` into the bins of `grid`.
    pub fn add(&mut self, grid: &[i64], value: i64) {
        let p = quantile::position(grid, value);
        self.counts[p] += 1;
        self.sums[p] = self.sums[p].saturating_add(value);
    }

    /// Adds another group's (or bucket's) bins.
    pub fn merge(&mut self, other: &Self) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        for (a, b) in self.sums.iter_mut().zip(&other.sums) {
            *a = a.saturating_add(*b);
        }
    }

    /// The exact sum of the values clamped to `[grid[low], grid[high]]`.
    pub fn clamped_sum(&self, grid: &[i64], low: usize, high: usize) -> i64 {
        let (lo_pos, hi_pos) = (2 * low + 1, 2 * high + 1);
        let mut total: i64 = 0;
        for (p, (count, sum)) in self.counts.iter().zip(&self.sums).enumerate() {
            let part = if p < lo_pos {
                grid[low].saturating_mul(i64::try_from(*count).unwrap_or(i64::MAX))
            } else if p > hi_pos {
                grid[high].saturating_mul(i64::try_from(*count).unwrap_or(i64::MAX))
            } else {
                *sum
            };
            total = total.saturating_add(part);
        }
        total
    }
}

/// Bounds chosen privately, as indexes into the grid and values.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ChosenBounds {
    /// Index of the lower bound in the grid.
    pub low_index: usize,
    /// Index of the upper bound in the grid.
    pub high_index: usize,
    /// The lower bound (storage units).
    pub low: i64,
    /// The upper bound (storage units).
    pub high: i64,
    /// The rank from the top (and bottom) each estimated bound aimed at.
    pub tail_rows: u64,
    /// The privacy spent choosing them, as OpenDP's privacy map states it.
    pub spent: f64,
}

/// Rank-distance scores of each candidate: `|#(x > c) − m|` from the top,
/// `|#(x < c) − m|` from the bottom, plus `step` per grid step outward.
///
/// The added term depends on no data (it leaves the sensitivity alone): it
/// breaks the tie among the candidates beyond the largest value, which all
/// score `m`, toward the innermost, where otherwise the noise would pick
/// any of them, up to the schema's bound.
fn tail_scores(histogram: &[u64], m: u64, from_top: bool, step: u64) -> Vec<u64> {
    let n: u64 = histogram.iter().sum();
    let count = histogram.len() / 2;
    let mut out = Vec::with_capacity(count);
    let mut less = 0u64;
    for i in 0..count {
        less += histogram[2 * i];
        let at = histogram[2 * i + 1];
        let (tail, outward) = if from_top {
            (n - less - at, i)
        } else {
            (less, count - 1 - i)
        };
        out.push(
            tail.abs_diff(m)
                .saturating_add(step.saturating_mul(outward as u64)),
        );
        less += at;
    }
    out
}

/// Chooses clamping bounds from `histogram` (every row read, against
/// `grid`'s positions), spending at most `spend`: the upper bound when the
/// grid reaches above zero, the lower one when it reaches below (half the
/// spend each when both), the schema's bound on a side that needs none.
pub fn choose(
    histogram: &[u64],
    grid: &[i64],
    measure: PrivacyMeasure,
    spend: f64,
    contributions: u32,
) -> Result<ChosenBounds, MechanismError> {
    let last = grid.len().saturating_sub(1);
    let need_low = grid.first().is_some_and(|v| *v < 0);
    let need_high = grid.last().is_some_and(|v| *v > 0);
    let sides = f64::from(u8::from(need_low) + u8::from(need_high)).max(1.0);
    let sensitivity = u64::from(contributions.max(1));
    let (scale, _) = quantile::calibrate(grid.len(), measure, spend / sides, sensitivity)?;
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let tail_rows = (2.0 * quantile::score_error(scale, grid.len())).ceil() as u64;
    // One step outward must beat the noise's 95% bound.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let step = quantile::score_error(scale, grid.len()).ceil() as u64;
    let mut spent = 0.0;
    let mut estimate = |from_top: bool| -> Result<usize, MechanismError> {
        let scores = vec![tail_scores(histogram, tail_rows, from_top, step)];
        let chosen = quantile::release_quantile(&scores, measure, spend / sides, sensitivity)?;
        spent += chosen.spent;
        Ok(chosen.chosen[0])
    };
    let mut high_index = if need_high {
        (estimate(true)? + 1).min(last)
    } else {
        last
    };
    let mut low_index = if need_low {
        estimate(false)?.saturating_sub(1)
    } else {
        0
    };
    if low_index > high_index {
        std::mem::swap(&mut low_index, &mut high_index);
    }
    // A clamp to one point releases nothing useful and has no sensitivity
    // to calibrate to: widen it by a grid step.
    if low_index == high_index {
        if high_index < last {
            high_index += 1;
        } else {
            low_index = low_index.saturating_sub(1);
        }
    }
    Ok(ChosenBounds {
        low_index,
        high_index,
        low: grid[low_index],
        high: grid[high_index],
        tail_rows,
        spent,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_grid_is_powers_of_root_two_inside_the_bounds() {
        let g = grid(0, 100_000_000);
        assert_eq!(&g[..6], [0, 1, 2, 3, 5, 6]);
        assert_eq!(*g.last().unwrap(), 100_000_000);
        assert!(g.len() < 60, "{}", g.len());
        for w in g.windows(2).skip(4) {
            assert!(w[1] as f64 <= w[0] as f64 * 1.5, "{w:?}");
        }
        let g = grid(-1_000, 2_000_000);
        assert_eq!(g[0], -1_000);
        assert!(g.contains(&0) && g.contains(&-1) && g.contains(&1));
        assert!(grid(i64::MIN, i64::MAX).windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn clamped_sums_from_the_bins_equal_clamping_the_values() {
        let g = grid(-10_000, 10_000);
        let values: Vec<i64> = (0..500).map(|i| (i * 7919) % 20_001 - 10_000).collect();
        let mut bins = Binned::new(g.len());
        for v in &values {
            bins.add(&g, *v);
        }
        for (low, high) in [(0, g.len() - 1), (3, 20), (10, 11), (17, 17)] {
            let expected: i64 = values.iter().map(|v| (*v).clamp(g[low], g[high])).sum();
            assert_eq!(bins.clamped_sum(&g, low, high), expected, "{low}..{high}");
        }
    }

    #[test]
    fn chosen_bounds_sit_just_outside_the_extreme_percentiles() {
        let g = grid(0, 100_000_000);
        let mut histogram = vec![0u64; 2 * g.len() + 1];
        // 100,000 values from 1 to 50,000, two of each.
        for v in 1..=100_000i64 {
            histogram[quantile::position(&g, (v + 1) / 2)] += 1;
        }
        for (measure, spend) in [(PrivacyMeasure::Pure, 0.1), (PrivacyMeasure::Zcdp, 0.01)] {
            let b = choose(&histogram, &g, measure, spend, 3).unwrap();
            assert!(b.spent <= spend && b.spent > 0.99 * spend, "{}", b.spent);
            assert_eq!(b.low, 0, "a non-negative column keeps its schema floor");
            // About `tail_rows` values lie above the estimate (value
            // 50,000 − tail_rows / 2); the bound is a grid step above it,
            // within a factor 2 of the largest value.
            assert!(b.tail_rows > 10 && b.tail_rows < 2_000, "{}", b.tail_rows);
            #[allow(clippy::cast_possible_wrap)]
            let estimate = 50_000 - b.tail_rows as i64 / 2;
            assert!(
                (estimate..=2 * 50_000).contains(&b.high),
                "{measure:?}: {} (tail {})",
                b.high,
                b.tail_rows
            );
        }
        // All zeros: the clamp still has a width.
        let mut zeros = vec![0u64; 2 * g.len() + 1];
        zeros[quantile::position(&g, 0)] = 1_000;
        let b = choose(&zeros, &g, PrivacyMeasure::Zcdp, 0.01, 1).unwrap();
        assert!(b.low < b.high);
    }
}
