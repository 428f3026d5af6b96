//! The rules' names, weights and the pure comparisons they rest on
//! (docs/browsing.md). Nothing here reads or writes.

use custos_store::browsing::FiredRule;

/// A rule of unusual browsing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rule {
    /// The subject is the requester.
    SelfAccess,
    /// The subject lives with the requester (a declared household member).
    Household,
    /// The subject is a declared colleague.
    Colleague,
    /// The subject's address is the requester's.
    SameAddress,
    /// The subject lives on the requester's street (a neighbour).
    SameStreet,
    /// The subject shares the requester's family name.
    SameSurname,
    /// The subject shares the requester's ZIP code.
    SameZip,
    /// The subject is protected or high-profile.
    Protected,
    /// Another principal, or another agreement, asked for the same subject
    /// lately.
    RepeatSubject,
    /// Outside the agreement's declared usual hours.
    OffHours,
    /// Many denied or declined requests in a short time.
    Fishing,
    /// The justification names no case reference of the declared form.
    NoCaseLink,
    /// Far above peers of the same agreement on a day.
    PeerDeviation,
    /// The rules could not be run on an entry.
    DetectionFailed,
}

impl Rule {
    /// The rule's name, as alerts and docs show it.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::SelfAccess => "self_access",
            Self::Household => "household",
            Self::Colleague => "colleague",
            Self::SameAddress => "same_address",
            Self::SameStreet => "same_street",
            Self::SameSurname => "same_surname",
            Self::SameZip => "same_zip",
            Self::Protected => "protected_subject",
            Self::RepeatSubject => "repeat_subject",
            Self::OffHours => "off_hours",
            Self::Fishing => "fishing",
            Self::NoCaseLink => "no_case_link",
            Self::PeerDeviation => "peer_deviation",
            Self::DetectionFailed => "detection_failed",
        }
    }

    /// How strongly the rule alone suggests misuse (0-1).
    pub(crate) fn weight(self) -> f64 {
        match self {
            Self::SelfAccess | Self::DetectionFailed => 0.95,
            Self::Household | Self::SameAddress => 0.85,
            Self::Colleague | Self::Protected => 0.7,
            Self::SameStreet | Self::Fishing => 0.6,
            Self::SameSurname | Self::NoCaseLink => 0.5,
            Self::RepeatSubject => 0.4,
            Self::SameZip | Self::OffHours => 0.3,
            Self::PeerDeviation => 0.6,
        }
    }

    /// The rule fired, with why.
    pub(crate) fn fired(self, detail: impl Into<String>) -> FiredRule {
        FiredRule {
            rule: self.name().to_owned(),
            detail: detail.into(),
            weight: self.weight(),
        }
    }
}

/// 1 − Π(1 − weight): independent hints add up without passing 1.
pub(crate) fn score(rules: &[FiredRule]) -> f64 {
    1.0 - rules
        .iter()
        .map(|r| 1.0 - r.weight.clamp(0.0, 1.0))
        .product::<f64>()
}

/// Adds `more` to `rules`, one per rule name; a rule that fired again
/// takes its latest explanation (a burst's growing count).
pub(crate) fn merge(rules: &mut Vec<FiredRule>, more: Vec<FiredRule>) -> bool {
    let mut changed = false;
    for r in more {
        match rules.iter_mut().find(|have| have.rule == r.rule) {
            Some(have) => {
                if have.detail != r.detail {
                    have.detail = r.detail;
                    changed = true;
                }
            }
            None => {
                rules.push(r);
                changed = true;
            }
        }
    }
    changed
}

/// Text compared without case, punctuation or repeated spaces.
pub(crate) fn normal(text: &str) -> String {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_uppercase)
        .collect::<Vec<_>>()
        .join(" ")
}

/// The family name of `Given Family` (its last word), normalised.
pub(crate) fn surname_of_full_name(full: &str) -> String {
    normal(full)
        .rsplit(' ')
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// A street address without its house number (`12 Elm St, Springfield` →
/// `ELM ST SPRINGFIELD`): neighbours share it.
pub(crate) fn street_of(address: &str) -> String {
    let words: Vec<String> = normal(address).split(' ').map(str::to_owned).collect();
    let skip = usize::from(
        words
            .first()
            .is_some_and(|w| w.chars().next().is_some_and(|c| c.is_ascii_digit())),
    );
    words[skip..].join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comparisons_ignore_case_punctuation_and_the_house_number() {
        assert_eq!(surname_of_full_name("Ada  lovelace"), "LOVELACE");
        assert_eq!(
            street_of("12 Elm St., Springfield"),
            street_of("7 elm st springfield")
        );
        assert_ne!(street_of("12 Elm St"), street_of("12 Oak St"));
        assert_eq!(normal("90210"), "90210");
    }

    #[test]
    fn the_score_grows_with_each_rule_and_stays_below_one() {
        let one = [Rule::SameZip.fired("x")];
        let two = [Rule::SameZip.fired("x"), Rule::OffHours.fired("y")];
        assert!((score(&one) - 0.3).abs() < 1e-9);
        assert!(score(&two) > score(&one) && score(&two) < 1.0);
    }
}
