//! Noise through OpenDP: discrete Laplace under pure ε-DP, discrete
//! Gaussian under zero-concentrated ρ-DP, calibrated to a query's share of
//! the budget and the vector's sensitivity, with 95% confidence intervals
//! from the mechanism's own distribution (OpenDP's accuracy functions).

use opendp::accuracy::{discrete_gaussian_scale_to_accuracy, discrete_laplacian_scale_to_accuracy};
use opendp::domains::{AtomDomain, VectorDomain};
use opendp::measurements::{make_gaussian, make_laplace};
use opendp::measures::{MaxDivergence, ZeroConcentratedDivergence};
use opendp::metrics::{L1Distance, L2Distance};
use serde::Serialize;

pub use custos_policy::PrivacyMeasure;

/// Confidence level of the released intervals.
pub const CONFIDENCE: f64 = 0.95;

/// Errors of calibration or sampling (from OpenDP).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MechanismError {
    /// The spend or sensitivity cannot be calibrated.
    #[error("cannot calibrate noise: {0}")]
    Calibration(String),
    /// OpenDP refused or failed.
    #[error("differential privacy library: {0}")]
    OpenDp(String),
}

/// An OpenDP failure as a [`MechanismError`] (its variant, never data).
pub(crate) fn opendp_error(e: opendp::error::Error) -> MechanismError {
    MechanismError::OpenDp(e.variant.to_string())
}

/// How much a vector of per-group values can change when one subject's
/// (bounded) rows are added or removed.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Sensitivity {
    /// L1 norm of the change (for Laplace).
    pub l1: f64,
    /// L2 norm of the change (for Gaussian).
    pub l2: f64,
}

/// A vector released with noise.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NoisyVector {
    /// The noisy values, in storage units.
    pub values: Vec<i64>,
    /// The noise scale (Laplace `scale`, Gaussian σ).
    pub scale: f64,
    /// Half-width of the 95% interval: `|noise| ≤ half_width` with
    /// probability ≥ 95%, per value.
    pub half_width: i64,
    /// The privacy actually spent, as OpenDP's privacy map states it.
    pub spent: f64,
}

/// Above this σ, Gaussian intervals use the continuous quantile.
const LARGE_SIGMA: f64 = 1.0e4;

/// The upper `p` quantile of the standard normal, by the lower-tail branch
/// of Acklam's rational approximation (meant for small `p`; at p = 0.025,
/// the one used, it is within 1e-6 of the exact 1.959964, as tested).
fn normal_upper_quantile(p: f64) -> f64 {
    // Acklam's approximation of the inverse normal CDF, for the lower tail.
    let q = p.clamp(1e-300, 0.5);
    let c = [
        -7.784_894_002_430_293e-3,
        -3.223_964_580_411_365e-1,
        -2.400_758_277_161_838,
        -2.549_732_539_343_734,
        4.374_664_141_464_968,
        2.938_163_982_698_783,
    ];
    let d = [
        7.784_695_709_041_462e-3,
        3.224_671_290_700_398e-1,
        2.445_134_137_142_996,
        3.754_408_661_907_416,
    ];
    let t = (-2.0 * q.ln()).sqrt();
    let lower = (((((c[0] * t + c[1]) * t + c[2]) * t + c[3]) * t + c[4]) * t + c[5])
        / ((((d[0] * t + d[1]) * t + d[2]) * t + d[3]) * t + 1.0);
    -lower
}

/// Half-width `w` with `P(|noise| ≤ w) ≥ 1 − alpha` for the distribution.
pub fn half_width(measure: PrivacyMeasure, scale: f64, alpha: f64) -> Result<i64, MechanismError> {
    let accuracy = match measure {
        PrivacyMeasure::Pure => discrete_laplacian_scale_to_accuracy(scale, alpha),
        // OpenDP sums the discrete Gaussian's mass point by point (O(σ),
        // and its i32 counter overflows past σ ≈ 5·10⁷). Beyond σ = 10⁴
        // the discrete and continuous Gaussians differ by far less than
        // one point of mass, so the continuous quantile plus one step is
        // a safe, slightly conservative bound.
        PrivacyMeasure::Zcdp if scale > LARGE_SIGMA => {
            Ok(normal_upper_quantile(alpha / 2.0) * scale + 2.0)
        }
        PrivacyMeasure::Zcdp => discrete_gaussian_scale_to_accuracy(scale, alpha),
    }
    .map_err(opendp_error)?;
    // OpenDP gives `a` with P(|noise| ≥ a) = alpha; on integers,
    // |noise| < ceil(a) ⇔ |noise| ≤ ceil(a) − 1.
    #[allow(clippy::cast_possible_truncation)]
    let w = (accuracy.ceil() - 1.0).max(0.0);
    if w.is_finite() && w < 9.0e18 {
        #[allow(clippy::cast_possible_truncation)]
        Ok(w as i64)
    } else {
        Err(MechanismError::Calibration(
            "the interval is too wide to represent".into(),
        ))
    }
}

/// The noise scale that spends `spend` (ε or ρ) at `sensitivity`.
pub fn calibrate(
    measure: PrivacyMeasure,
    spend: f64,
    sensitivity: Sensitivity,
) -> Result<f64, MechanismError> {
    if !(spend.is_finite() && spend > 0.0) {
        return Err(MechanismError::Calibration(format!(
            "spend must be positive, not {spend}"
        )));
    }
    let scale = match measure {
        // ε = Δ1 / scale
        PrivacyMeasure::Pure => sensitivity.l1 / spend,
        // ρ = Δ2² / (2σ²)
        PrivacyMeasure::Zcdp => sensitivity.l2 / (2.0 * spend).sqrt(),
    };
    if !(scale.is_finite() && scale > 0.0) {
        return Err(MechanismError::Calibration(format!(
            "sensitivity {sensitivity:?} gives no usable scale"
        )));
    }
    Ok(scale)
}

/// Adds noise to `values` so that releasing them spends at most `spend`
/// (ε or ρ, per `measure`) given `sensitivity`. The scale is calibrated,
/// then OpenDP's privacy map is asked what it spends; if rounding puts it
/// above `spend`, the scale grows until it does not.
pub fn release(
    values: &[i64],
    measure: PrivacyMeasure,
    spend: f64,
    sensitivity: Sensitivity,
) -> Result<NoisyVector, MechanismError> {
    let mut scale = calibrate(measure, spend, sensitivity)?;
    let domain = VectorDomain::new(AtomDomain::<i64>::default());
    for _ in 0..64 {
        let (spent, noisy) = match measure {
            PrivacyMeasure::Pure => {
                let m = make_laplace::<_, _, MaxDivergence>(
                    domain.clone(),
                    L1Distance::<f64>::default(),
                    scale,
                    None,
                )
                .map_err(opendp_error)?;
                let spent = m.map(&sensitivity.l1).map_err(opendp_error)?;
                (spent, (spent <= spend).then(|| m.invoke(&values.to_vec())))
            }
            PrivacyMeasure::Zcdp => {
                let m = make_gaussian::<_, _, ZeroConcentratedDivergence>(
                    domain.clone(),
                    L2Distance::<f64>::default(),
                    scale,
                    None,
                )
                .map_err(opendp_error)?;
                let spent = m.map(&sensitivity.l2).map_err(opendp_error)?;
                (spent, (spent <= spend).then(|| m.invoke(&values.to_vec())))
            }
        };
        if let Some(noisy) = noisy {
            return Ok(NoisyVector {
                values: noisy.map_err(opendp_error)?,
                scale,
                half_width: half_width(measure, scale, 1.0 - CONFIDENCE)?,
                spent,
            });
        }
        scale *= 1.0 + 1e-9;
    }
    Err(MechanismError::Calibration(
        "the privacy map never fit the spend".into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spends_no_more_than_asked_and_intervals_are_sane() {
        for measure in [PrivacyMeasure::Pure, PrivacyMeasure::Zcdp] {
            let out = release(
                &[100, 200, 0],
                measure,
                0.5,
                Sensitivity { l1: 1.0, l2: 1.0 },
            )
            .unwrap();
            assert!(out.spent <= 0.5, "{measure:?} spent {}", out.spent);
            assert!(out.spent > 0.49, "{measure:?} spent only {}", out.spent);
            assert_eq!(out.values.len(), 3);
            assert!(out.half_width >= 1);
        }
        // Laplace scale 1/ε = 2: P(|X| ≥ 6) ≈ 2e^{-3}/(1+e^{-1/2}) ≈ 0.062 > 5%,
        // P(|X| ≥ 7) ≈ 0.038 ≤ 5%, so the 95% half-width is 6.
        assert_eq!(half_width(PrivacyMeasure::Pure, 2.0, 0.05).unwrap(), 6);
        // Large σ: the continuous 97.5% quantile (1.959964) times σ, plus a step.
        let w = half_width(PrivacyMeasure::Zcdp, 1.0e9, 0.05).unwrap();
        assert!((1_959_963_985..=1_959_963_990).contains(&w), "{w}");
        assert!((normal_upper_quantile(0.025) - 1.959_963_985).abs() < 1e-6);
    }

    #[test]
    fn refuses_nonsense() {
        let s = Sensitivity { l1: 1.0, l2: 1.0 };
        assert!(release(&[1], PrivacyMeasure::Pure, 0.0, s).is_err());
        assert!(release(&[1], PrivacyMeasure::Zcdp, -1.0, s).is_err());
        assert!(release(&[1], PrivacyMeasure::Zcdp, f64::NAN, s).is_err());
    }
}
