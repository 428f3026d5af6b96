//! Statistical tests of the released noise: it follows the declared
//! discrete distribution, the 95% intervals cover at their stated rate, and
//! neighbouring inputs give output likelihood ratios within e^ε.
//!
//! OpenDP draws from the operating system's CSPRNG (it cannot be seeded, by
//! design), so these tests are not bit-for-bit repeatable; their thresholds
//! are set so that a correct sampler fails one run in a million or less.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cast_precision_loss
)]

use std::collections::HashMap;

use custos_privacy::mechanism::{PrivacyMeasure, Sensitivity, release};

const DRAWS: usize = 100_000;

fn histogram(values: &[i64]) -> HashMap<i64, u64> {
    let mut h = HashMap::new();
    for v in values {
        *h.entry(*v).or_insert(0) += 1;
    }
    h
}

/// Pearson's χ² over bins |x| ≤ cutoff (each sign separately) plus the two
/// tails, against `pmf`; returns (statistic, degrees of freedom).
fn chi_square(values: &[i64], pmf: impl Fn(i64) -> f64, cutoff: i64) -> (f64, usize) {
    let h = histogram(values);
    let n = values.len() as f64;
    let mut stat = 0.0;
    let mut bins = 0;
    let mut inside = 0.0;
    for x in -cutoff..=cutoff {
        let expected = n * pmf(x);
        inside += pmf(x);
        let observed = *h.get(&x).unwrap_or(&0) as f64;
        stat += (observed - expected).powi(2) / expected;
        bins += 1;
    }
    let tail_expected = n * (1.0 - inside);
    let tail_observed = values.iter().filter(|v| v.abs() > cutoff).count() as f64;
    stat += (tail_observed - tail_expected).powi(2) / tail_expected;
    bins += 1;
    (stat, bins - 1)
}

/// The χ² critical value for p = 1e-6 by the Wilson–Hilferty approximation.
fn critical(df: usize) -> f64 {
    let k = df as f64;
    let z = 4.753_424_308_822_899; // upper 1e-6 quantile of N(0, 1)
    k * (1.0 - 2.0 / (9.0 * k) + z * (2.0 / (9.0 * k)).sqrt()).powi(3)
}

#[test]
fn discrete_laplace_noise_has_the_declared_distribution() {
    // ε = 1/3 at sensitivity 1 gives scale 3.
    let noisy = release(
        &vec![0; DRAWS],
        PrivacyMeasure::Pure,
        1.0 / 3.0,
        Sensitivity { l1: 1.0, l2: 1.0 },
    )
    .unwrap();
    let s = noisy.scale;
    assert!((s - 3.0).abs() < 1e-6, "scale {s}");
    let pmf = |x: i64| {
        let r = (-1.0 / s).exp();
        (1.0 - r) / (1.0 + r) * r.powi(i32::try_from(x.abs()).unwrap())
    };
    let (stat, df) = chi_square(&noisy.values, pmf, 12);
    assert!(
        stat < critical(df),
        "χ² = {stat:.1} with {df} df (critical {:.1})",
        critical(df)
    );
}

#[test]
fn discrete_gaussian_noise_has_the_declared_distribution() {
    // ρ = 1/18 at sensitivity 1 gives σ = 3.
    let noisy = release(
        &vec![0; DRAWS],
        PrivacyMeasure::Zcdp,
        1.0 / 18.0,
        Sensitivity { l1: 1.0, l2: 1.0 },
    )
    .unwrap();
    let sigma = noisy.scale;
    assert!((sigma - 3.0).abs() < 1e-6, "σ {sigma}");
    let weight = |x: i64| (-((x * x) as f64) / (2.0 * sigma * sigma)).exp();
    let norm: f64 = (-200..=200).map(weight).sum();
    let (stat, df) = chi_square(&noisy.values, |x| weight(x) / norm, 10);
    assert!(
        stat < critical(df),
        "χ² = {stat:.1} with {df} df (critical {:.1})",
        critical(df)
    );
}

#[test]
fn intervals_cover_the_true_value_at_their_stated_rate() {
    for measure in [PrivacyMeasure::Pure, PrivacyMeasure::Zcdp] {
        // A wide scale (≈ 40) so that integer steps barely move the rate.
        let truth = 1_000_i64;
        let spend = match measure {
            PrivacyMeasure::Pure => 1.0 / 40.0,
            PrivacyMeasure::Zcdp => 1.0 / 3200.0,
        };
        let noisy = release(
            &vec![truth; DRAWS],
            measure,
            spend,
            Sensitivity { l1: 1.0, l2: 1.0 },
        )
        .unwrap();
        let covered = noisy
            .values
            .iter()
            .filter(|v| (*v - truth).abs() <= noisy.half_width)
            .count() as f64
            / DRAWS as f64;
        // Stated: 95%. With 100,000 draws the standard error is 0.07%.
        assert!(
            (covered - 0.95).abs() <= 0.01,
            "{measure:?}: covered {covered:.4} with half-width {}",
            noisy.half_width
        );
    }
}

#[test]
fn neighbouring_counts_stay_within_e_to_the_epsilon() {
    // Counts 100 and 101 (one subject more), ε = 0.5: for every output seen
    // often enough, P[out | D] / P[out | D'] ≤ e^ε up to sampling error.
    let epsilon: f64 = 0.5;
    let draw = |truth: i64| {
        histogram(
            &release(
                &vec![truth; DRAWS * 2],
                PrivacyMeasure::Pure,
                epsilon,
                Sensitivity { l1: 1.0, l2: 1.0 },
            )
            .unwrap()
            .values,
        )
    };
    let (d, d_prime) = (draw(100), draw(101));
    let n = (DRAWS * 2) as f64;
    let mut checked = 0;
    for (out, count) in &d {
        let other = *d_prime.get(out).unwrap_or(&0);
        if *count < 2_000 || other < 2_000 {
            continue;
        }
        let (p, q) = (*count as f64 / n, other as f64 / n);
        // Relative standard error of each frequency ≤ 1/sqrt(2000) ≈ 2.2%;
        // allow 6 standard errors on the ratio.
        let slack = 1.0 + 6.0 * (1.0 / (*count as f64) + 1.0 / (other as f64)).sqrt();
        for ratio in [p / q, q / p] {
            assert!(
                ratio <= epsilon.exp() * slack,
                "output {out}: ratio {ratio:.3} > e^ε = {:.3}",
                epsilon.exp()
            );
        }
        checked += 1;
    }
    assert!(
        checked >= 5,
        "only {checked} outputs were frequent enough to compare"
    );
}
