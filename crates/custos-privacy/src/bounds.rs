//! Private bound selection: when a `SUM` or `AVG` has no `CLAMP`, a stated
//! share of its budget ([`BOUND_SHARE`]) buys differentially private
//! estimates of where the column's extreme values begin, over the rows read,
//! and the values are clamped there instead of at the schema's
//! (deliberately wide) bounds.
//!
//! Each bound is a private rank counted from the top (or bottom): the
//! lowest candidate of a coarse grid of powers of √2 ([`grid`]) with fewer
//! than about `m` of the rows read above it. It is found by AboveThreshold
//! (the sparse vector technique): walking down from the top candidate, the
//! first whose count above, plus Laplace noise, reaches `m` plus Laplace
//! noise stops the walk, and the candidate just above it is the bound. With
//! `k` rows per subject (the counts' sensitivity), the threshold's noise has
//! scale `2k/ε` and each count's `2k/ε`: the counts are monotonic (adding a
//! subject never lowers any of them), so this walk is ε-DP however many
//! candidates it compares (Lyu, Su & Li, *Understanding the Sparse Vector
//! Technique for Differential Privacy*, VLDB 2017, Algorithm 1 with
//! ε₁ = ε₂ = ε/2, c = 1, and its monotonic case; Dwork & Roth, Theorem 3.23,
//! for the general case with `4k/ε`). Under zCDP the side's ρ buys
//! ε = √(2ρ) (ε-DP implies ε²/2-zCDP: Bun & Steinke 2016, Proposition 1.4).
//! When no candidate reaches `m` (fewer rows than that), the schema's bound
//! stays. The noise is OpenDP's discrete Laplace sampler; the walk is
//! Custos's own, because OpenDP has no sparse vector measurement, and its
//! noisy max over rank scores picks at random among the many candidates
//! above the largest value (whose scores all tie), up to the schema's bound.
//!
//! The target `m` is as small as the walk can find reliably (with 95%, no
//! candidate above the largest value stops it by chance; about 270 rows at
//! ρ = 0.025 and three rows per subject). Sums of heavy-tailed columns such
//! as refunds lose more to a low clamp's bias than to a high clamp's noise:
//! the clamp should leave as few values beyond it as it can. With fewer rows
//! read than `m`, give a `CLAMP`.
//!
//! The engine cannot clamp at bounds chosen after it has read the rows, so
//! it keeps, per group, how many values fall at each grid position and
//! their sum ([`Binned`]); any clamp at two grid points is then an exact
//! sum over the bins ([`Binned::clamped_sum`]) in one pass over the data.
//! This bookkeeping and the walk are Custos's own; the noise is OpenDP's.

use opendp::core::Measurement;
use opendp::domains::AtomDomain;
use opendp::measurements::make_laplace;
use opendp::measures::MaxDivergence;
use opendp::metrics::AbsoluteDistance;

use crate::mechanism::{MechanismError, PrivacyMeasure, opendp_error};
use crate::quantile;

/// The share of an aggregate's spend that private bound selection takes.
pub const BOUND_SHARE: f64 = 0.25;

/// The grid private bounds are chosen from, inside `[lo, hi]` (the schema's
/// bounds): zero, ±⌈√2ᵏ⌉ and the bounds themselves. Coarse on purpose:
/// the noise of a clamped sum grows with the clamp, so a bound within a
/// factor √2 of the percentile is as good as exact, and a short grid keeps
/// the per-group bins small.
pub fn grid(lo: i64, hi: i64) -> Vec<i64> {
    let (lo, hi) = (lo.min(hi), lo.max(hi));
    let mut out = vec![lo, 0, hi];
    for exponent in 0..63u32 {
        // 2ᵉ exactly, and ⌈√2 · 2ᵉ⌉ (floating point only for the odd steps).
        let power = 1i64 << exponent;
        out.extend([power, -power]);
        #[allow(clippy::cast_possible_truncation, clippy::cast_precision_loss)]
        let between = (std::f64::consts::SQRT_2 * power as f64).ceil() as i64;
        out.extend([between, -between]);
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
    /// How many values each estimated bound aimed to leave beyond it.
    pub tail_rows: u64,
    /// The privacy spent choosing them (ε, or ρ = ε²/2 per side).
    pub spent: f64,
}

/// Failure probability of the walk's own guarantees (a false stop above
/// the largest value).
const FAILURE: f64 = 0.05;

/// One side's AboveThreshold walk: OpenDP's discrete Laplace sampler at
/// the scale both the threshold and each count take, `2k/ε` (the counts are
/// monotonic: module docs), built once per walk.
struct Walk {
    scale: f64,
    noise: Measurement<AtomDomain<i64>, AbsoluteDistance<i64>, MaxDivergence, i64>,
}

impl Walk {
    fn new(epsilon: f64, contributions: u32) -> Result<Self, MechanismError> {
        if !(epsilon.is_finite() && epsilon > 0.0) {
            return Err(MechanismError::Calibration(format!(
                "spend must be positive, not {epsilon}"
            )));
        }
        let scale = 2.0 * f64::from(contributions.max(1)) / epsilon;
        let noise = make_laplace(
            AtomDomain::<i64>::default(),
            AbsoluteDistance::<i64>::default(),
            scale,
            None,
        )
        .map_err(opendp_error)?;
        Ok(Self { scale, noise })
    }

    /// The least target for which, with 95%, no candidate beyond every
    /// value (count 0) stops the walk among `candidates`: the counts' noise
    /// bound over the candidates plus the threshold's.
    fn least_target(&self, candidates: usize) -> u64 {
        #[allow(clippy::cast_precision_loss)]
        let n = candidates.max(1) as f64;
        let m = self.scale * ((n / FAILURE).ln() + (1.0 / FAILURE).ln());
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let m = m.ceil() as u64;
        m
    }

    /// One draw of the noise.
    fn draw(&self) -> Result<i128, MechanismError> {
        self.noise.invoke(&0).map(i128::from).map_err(opendp_error)
    }

    /// The first of `tails` (counts beyond each candidate, in walking
    /// order) whose noisy count reaches the noisy `target`: its position.
    fn first_reaching(&self, tails: &[u64], target: u64) -> Result<Option<usize>, MechanismError> {
        let threshold = i128::from(target) + self.draw()?;
        for (i, tail) in tails.iter().enumerate() {
            if i128::from(*tail) + self.draw()? >= threshold {
                return Ok(Some(i));
            }
        }
        Ok(None)
    }
}

/// Chooses clamping bounds from `histogram` (every row read, against
/// `grid`'s positions), spending at most `spend`: the upper bound when the
/// grid reaches above zero, the lower one when it reaches below (half the
/// spend each when both), the schema's bound on a side that needs none.
/// Each aims at fewer than about `target` values beyond it, and no fewer
/// than the walk's own noise needs (0: as few as it can).
pub fn choose(
    histogram: &[u64],
    grid: &[i64],
    measure: PrivacyMeasure,
    spend: f64,
    contributions: u32,
    target: u64,
) -> Result<ChosenBounds, MechanismError> {
    let last = grid.len().saturating_sub(1);
    let need_low = grid.first().is_some_and(|v| *v < 0);
    let need_high = grid.last().is_some_and(|v| *v > 0);
    let sides = f64::from(u8::from(need_low) + u8::from(need_high)).max(1.0);
    let side_spend = spend / sides;
    let epsilon = match measure {
        PrivacyMeasure::Pure => side_spend,
        PrivacyMeasure::Zcdp => (2.0 * side_spend).sqrt(),
    };
    let walk = Walk::new(epsilon, contributions)?;
    let tail_rows = walk.least_target(grid.len()).max(target);
    // Per candidate: values strictly below and strictly above it.
    let n: u64 = histogram.iter().sum();
    let mut below = Vec::with_capacity(grid.len());
    let mut above = Vec::with_capacity(grid.len());
    let mut less = 0u64;
    for i in 0..grid.len() {
        less += histogram[2 * i];
        let at = histogram[2 * i + 1];
        below.push(less);
        above.push(n - less - at);
        less += at;
    }
    let mut spent = 0.0;
    let mut high_index = last;
    if need_high {
        // Walk down from the top; the bound is the candidate just above
        // the first that has about `tail_rows` values above it.
        above.reverse();
        if let Some(step) = walk.first_reaching(&above, tail_rows)? {
            high_index = (last - step + 1).min(last);
        }
        spent += side_spend;
    }
    let mut low_index = 0;
    if need_low {
        if let Some(step) = walk.first_reaching(&below, tail_rows)? {
            low_index = step.saturating_sub(1);
        }
        spent += side_spend;
    }
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
        assert_eq!(&g[..8], [0, 1, 2, 3, 4, 6, 8, 12]);
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

    /// Deterministic log-normal values (cents): e^(μ + σz), z by Box–Muller.
    fn lognormal(n: usize, mu: f64, sigma: f64) -> Vec<i64> {
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut uniform = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            #[allow(clippy::cast_precision_loss)]
            let u = (state >> 11) as f64 / (1u64 << 53) as f64;
            u.max(1e-12)
        };
        (0..n)
            .map(|_| {
                let z =
                    (-2.0 * uniform().ln()).sqrt() * (2.0 * std::f64::consts::PI * uniform()).cos();
                #[allow(clippy::cast_possible_truncation)]
                let v = ((mu + sigma * z).exp() * 100.0).round() as i64;
                v.min(100_000_000_000)
            })
            .collect()
    }

    fn histogram(g: &[i64], values: &[i64]) -> Vec<u64> {
        let mut h = vec![0u64; 2 * g.len() + 1];
        for v in values {
            h[quantile::position(g, *v)] += 1;
        }
        h
    }

    #[test]
    fn the_bound_leaves_about_the_target_beyond_it() {
        let g = grid(0, 1_000_000_000);
        let wages = lognormal(200_000, 10.6, 0.9);
        let h = histogram(&g, &wages);
        // Counts above each candidate, once (the walks below reuse them).
        let above: Vec<u64> = g
            .iter()
            .map(|c| wages.iter().filter(|v| **v > *c).count() as u64)
            .collect();
        for (measure, spend) in [(PrivacyMeasure::Pure, 0.1), (PrivacyMeasure::Zcdp, 0.01)] {
            for target in [0, 400, 3_000] {
                // The walk is noisy: its promise is for 95% of draws, so
                // 100 draws, of which at least 95 must land as promised (a
                // single draw failed about one run in a hundred).
                let mut landed = 0;
                for _ in 0..100 {
                    let b = choose(&h, &g, measure, spend, 3, target).unwrap();
                    assert!(b.spent <= spend && b.spent > 0.99 * spend, "{}", b.spent);
                    assert_eq!(b.low, 0, "a non-negative column keeps its schema floor");
                    assert!(
                        b.tail_rows >= target && b.tail_rows < 5_000,
                        "{}",
                        b.tail_rows
                    );
                    // Fewer than about `tail_rows` values above the bound,
                    // and about that many above the candidate below it (the
                    // walk's noise is a few hundred rows).
                    let m = b.tail_rows;
                    if above[b.high_index] < 2 * m && above[b.high_index - 1] >= m / 2 {
                        landed += 1;
                    }
                }
                assert!(
                    landed >= 95,
                    "{measure:?}, target {target}: {landed} of 100"
                );
            }
        }
    }

    #[test]
    fn few_rows_keep_the_schema_bound_and_many_never_collapse_it() {
        let g = grid(0, 1_000_000_000);
        // Fewer rows than the walk's least target: nothing to estimate,
        // the schema's bound stays (noisy, but not biased), and the spend
        // is charged all the same.
        // (The walk may still stop by chance, more often the closer the
        // row count is to the target: with a quarter of it, in about 5% of
        // draws; with half, in about 20%.)
        let few = lognormal(150, 10.6, 0.9);
        let kept = (0..100)
            .filter(|_| {
                let b = choose(&histogram(&g, &few), &g, PrivacyMeasure::Pure, 0.1, 3, 0).unwrap();
                assert!(b.spent > 0.099);
                b.high == 1_000_000_000
            })
            .count();
        assert!(kept >= 80, "{kept} of 100");
        // A small state's rows: the bound stays well above the median.
        let some = lognormal(5_000, 10.6, 0.9);
        let mut sorted = some.clone();
        sorted.sort_unstable();
        for _ in 0..20 {
            let b = choose(&histogram(&g, &some), &g, PrivacyMeasure::Pure, 0.1, 3, 0).unwrap();
            assert!(
                b.high > sorted[2_500],
                "{} under the median {}",
                b.high,
                sorted[2_500]
            );
        }
    }

    #[test]
    fn both_sides_and_degenerate_data_still_give_a_width() {
        // A column that can be negative: both bounds estimated, half each.
        let g = grid(-1_000_000_000, 1_000_000_000);
        let mut values = lognormal(100_000, 8.0, 1.0);
        values.extend(lognormal(100_000, 8.0, 1.0).iter().map(|v| -v));
        let b = choose(
            &histogram(&g, &values),
            &g,
            PrivacyMeasure::Zcdp,
            0.02,
            1,
            0,
        )
        .unwrap();
        assert!(b.low < -100_000 && b.high > 100_000, "{b:?}");
        assert!(b.spent <= 0.02 && b.spent > 0.0199);
        // All zeros: the clamp still has a width.
        let g = grid(0, 100_000_000);
        let mut zeros = vec![0u64; 2 * g.len() + 1];
        zeros[quantile::position(&g, 0)] = 100_000;
        let b = choose(&zeros, &g, PrivacyMeasure::Zcdp, 0.01, 1, 0).unwrap();
        assert!(b.low < b.high);
    }
}
