//! Deviation from peers: each principal's day under an agreement against
//! every principal-day of the same agreement over the past four weeks, by
//! the median and the median absolute deviation (robust to the few heavy
//! days an outlier contributes). Hand-rolled: a median and a MAD are a few
//! lines, and an isolation forest would explain itself less well.

use custos_store::browsing::PeerDay;

/// Days of history a day is compared with (including itself).
pub(crate) const WINDOW_DAYS: i64 = 28;
/// At least this many other principals must have worked under the
/// agreement in the window for a comparison to mean anything.
pub(crate) const MIN_PEERS: usize = 3;
/// Robust z-score from which a feature counts as deviating.
pub(crate) const Z_THRESHOLD: f64 = 5.0;
/// A count must also be at least this many times the peers' median …
pub(crate) const RATIO_THRESHOLD: f64 = 3.0;
/// … and at least this large (a quiet day's 4 against a median of 1 is
/// not a finding).
pub(crate) const MIN_COUNT: f64 = 10.0;
/// Denials on a day from which they can deviate.
pub(crate) const MIN_DENIALS: f64 = 5.0;
/// A share must exceed the peers' median by at least this much.
pub(crate) const MIN_SHARE_EXCESS: f64 = 0.5;

/// A feature of a principal-day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Feature {
    Lookups,
    Subjects,
    Denials,
    OffHoursShare,
    NewSubjectShare,
}

impl Feature {
    const ALL: [Feature; 5] = [
        Self::Lookups,
        Self::Subjects,
        Self::Denials,
        Self::OffHoursShare,
        Self::NewSubjectShare,
    ];

    fn name(self) -> &'static str {
        match self {
            Self::Lookups => "look-ups",
            Self::Subjects => "distinct subjects",
            Self::Denials => "denied or declined requests",
            Self::OffHoursShare => "share of look-ups off hours",
            Self::NewSubjectShare => "share of subjects never requested before",
        }
    }

    fn is_share(self) -> bool {
        matches!(self, Self::OffHoursShare | Self::NewSubjectShare)
    }

    fn of(self, d: &PeerDay) -> f64 {
        let share = |n: u64| {
            if d.lookups == 0 {
                0.0
            } else {
                n as f64 / d.lookups as f64
            }
        };
        match self {
            Self::Lookups => d.lookups as f64,
            Self::Subjects => d.subjects as f64,
            Self::Denials => d.denials as f64,
            Self::OffHoursShare => share(d.off_hours),
            Self::NewSubjectShare => share(d.new_subjects),
        }
    }
}

/// Median of `values` (sorted in place).
pub(crate) fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n == 0 {
        return 0.0;
    }
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

/// One deviating feature of a principal-day.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Deviation {
    pub(crate) feature: &'static str,
    pub(crate) value: f64,
    pub(crate) median: f64,
    pub(crate) z: f64,
}

impl Deviation {
    /// The explanation an overseer reads.
    pub(crate) fn describe(&self) -> String {
        if self.median > 0.0 && self.feature.starts_with("share") {
            format!(
                "{}: {:.0}% against a peer median of {:.0}% (robust z {:.1})",
                self.feature,
                self.value * 100.0,
                self.median * 100.0,
                self.z
            )
        } else if self.feature.starts_with("share") {
            format!(
                "{}: {:.0}% against a peer median of 0% (robust z {:.1})",
                self.feature,
                self.value * 100.0,
                self.z
            )
        } else {
            format!(
                "{}: {} against a peer median of {} (robust z {:.1})",
                self.feature, self.value, self.median, self.z
            )
        }
    }
}

/// How `target` deviates from `peers` (principal-days of others and of
/// the target's other days). Empty when it does not, or when there are too
/// few peers to say.
pub(crate) fn deviations(target: &PeerDay, peers: &[&PeerDay]) -> Vec<Deviation> {
    let mut others: Vec<&str> = peers
        .iter()
        .map(|p| p.principal_id.as_str())
        .filter(|p| *p != target.principal_id)
        .collect();
    others.sort_unstable();
    others.dedup();
    if others.len() < MIN_PEERS {
        return Vec::new();
    }
    let mut out = Vec::new();
    for feature in Feature::ALL {
        let x = feature.of(target);
        let mut values: Vec<f64> = peers.iter().map(|p| feature.of(p)).collect();
        let med = median(&mut values);
        let mut spread: Vec<f64> = values.iter().map(|v| (v - med).abs()).collect();
        let mad = median(&mut spread);
        // 1.4826 × MAD estimates a normal spread; the floor keeps a flat
        // peer group (MAD 0) from turning every small excess into a finding.
        let floor = if feature.is_share() {
            0.05
        } else {
            (0.2 * med).max(1.0)
        };
        let z = (x - med) / (1.4826 * mad).max(floor);
        let large = if feature.is_share() {
            target.lookups as f64 >= MIN_COUNT && x - med >= MIN_SHARE_EXCESS
        } else {
            let least = if feature == Feature::Denials {
                MIN_DENIALS
            } else {
                MIN_COUNT
            };
            x >= least && x >= RATIO_THRESHOLD * med
        };
        if z >= Z_THRESHOLD && large {
            out.push(Deviation {
                feature: feature.name(),
                value: x,
                median: med,
                z,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(p: &str, d: i64, lookups: u64) -> PeerDay {
        PeerDay {
            principal_id: p.into(),
            day: d,
            lookups,
            subjects: lookups,
            denials: 0,
            off_hours: 0,
            new_subjects: lookups,
        }
    }

    #[test]
    fn five_times_the_peers_deviates_and_a_busy_day_does_not() {
        let mut all = Vec::new();
        for (i, p) in ["a", "b", "c", "d", "e"].iter().enumerate() {
            for d in 0..10 {
                all.push(day(p, d, 8 + ((i as u64 + d as u64) % 5)));
            }
        }
        let peers: Vec<&PeerDay> = all.iter().collect();
        let heavy = day("a", 10, 50);
        let found = deviations(&heavy, &peers);
        assert!(found.iter().any(|d| d.feature == "look-ups"), "{found:?}");
        let busy = day("a", 10, 16);
        assert!(deviations(&busy, &peers).is_empty());
    }

    #[test]
    fn too_few_peers_say_nothing() {
        let all = [day("a", 0, 5), day("b", 0, 5), day("c", 0, 5)];
        let peers: Vec<&PeerDay> = all.iter().collect();
        assert!(deviations(&day("a", 1, 500), &peers).is_empty());
    }

    #[test]
    fn the_median_of_an_even_count_is_the_middle_pair() {
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(&mut []), 0.0);
    }
}
