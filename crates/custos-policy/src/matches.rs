//! The terms of a `match` grant: what the requesting side may learn (the
//! matched subjects' tokens or only their count) and how large a set each
//! side shows the other (every set is padded to `pad_to` points, so its
//! true size stays hidden). Parsing and checking only; the broker runs
//! the protocol (`custos_privacy::psi`).

use serde::{Deserialize, Serialize};

/// Largest `pad_to` an agreement may set (the protocol's per-job limit).
pub const MAX_PAD_TO: u64 = 50_000_000;

/// What the requesting side learns from a match.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Reveal {
    /// Which of its own subjects matched, as per-agreement tokens.
    Matches,
    /// Only how many matched.
    Count,
}

impl Reveal {
    /// The name as written in agreements.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Matches => "matches",
            Self::Count => "count",
        }
    }

    /// Parses `matches` or `count`.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "matches" => Some(Self::Matches),
            "count" => Some(Self::Count),
            _ => None,
        }
    }

    /// The less revealing of two (each side applies its own agreement).
    #[must_use]
    pub fn narrower(self, other: Self) -> Self {
        if self == Self::Count || other == Self::Count {
            Self::Count
        } else {
            Self::Matches
        }
    }
}

/// `[grants.match]` as authored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatchGrant {
    /// What the requesting side learns.
    pub reveal: Reveal,
    /// Every set sent is padded with random points to exactly this many;
    /// a side with more distinct keys than this refuses the job, and the
    /// answering side refuses a job that announces any other number.
    pub pad_to: u64,
    /// The requesting side's copy: the one Custos server (its base URL)
    /// jobs may run against; a job against any other peer is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
}

impl MatchGrant {
    /// The rules: `pad_to` between 1 and [`MAX_PAD_TO`].
    pub fn validate(&self) -> Result<(), String> {
        if self.pad_to == 0 || self.pad_to > MAX_PAD_TO {
            return Err(format!(
                "`[grants.match] pad_to` must be between 1 and {MAX_PAD_TO}, not {}",
                self.pad_to
            ));
        }
        if let Some(peer) = &self.peer {
            let rest = peer
                .strip_prefix("https://")
                .or_else(|| peer.strip_prefix("http://"));
            if rest.is_none_or(|r| r.is_empty() || r.contains(char::is_whitespace)) {
                return Err(format!(
                    "`[grants.match] peer` must be the peer server's base URL (https://…), not `{peer}`"
                ));
            }
        }
        Ok(())
    }

    /// Whether `url` is the peer this copy names (trailing slashes aside).
    pub fn names_peer(&self, url: &str) -> bool {
        self.peer
            .as_deref()
            .is_some_and(|p| p.trim_end_matches('/') == url.trim_end_matches('/'))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_narrower_reveal_wins() {
        assert_eq!(Reveal::Matches.narrower(Reveal::Matches), Reveal::Matches);
        assert_eq!(Reveal::Matches.narrower(Reveal::Count), Reveal::Count);
        assert_eq!(Reveal::Count.narrower(Reveal::Matches), Reveal::Count);
    }

    #[test]
    fn pad_to_is_bounded() {
        let terms = |pad_to| MatchGrant {
            reveal: Reveal::Count,
            pad_to,
            peer: None,
        };
        assert!(terms(1).validate().is_ok());
        assert!(terms(0).validate().is_err());
        assert!(terms(MAX_PAD_TO + 1).validate().is_err());
    }

    #[test]
    fn the_peer_is_a_url_and_named_exactly() {
        let terms = |peer: &str| MatchGrant {
            reveal: Reveal::Count,
            pad_to: 10,
            peer: Some(peer.to_owned()),
        };
        assert!(terms("https://registry.example.gov").validate().is_ok());
        assert!(terms("registry.example.gov").validate().is_err());
        assert!(terms("https://").validate().is_err());
        let t = terms("https://registry.example.gov/");
        assert!(t.names_peer("https://registry.example.gov"));
        assert!(!t.names_peer("https://registry.example.gov.evil.test"));
        assert!(!terms("https://a.test").names_peer("http://a.test"));
    }
}
