//! Witness policies in the Sigsum policy format: which witnesses a log
//! submits to and a verifier trusts, and how many of them must have
//! cosigned a checkpoint (the quorum).
//!
//! ```text
//! # comment
//! log     <hex key> [url]                  (accepted; the log key is given separately)
//! witness <name> <hex key> [url]           (name: the witness's key name)
//! group   <name> all|any|<k> <member>...   (members: witnesses or earlier groups)
//! quorum  <name>|none
//! ```
//!
//! A witness's key may also be written as its `cosignature/v1` verifier key
//! (`name+id+base64`). Hand-rolled: the format is a handful of line types
//! and no Rust crate reads it.

use std::collections::{BTreeMap, BTreeSet};

use crate::cosignature::WitnessKey;

/// Most witnesses and groups one policy may name.
const MAX_NAMES: usize = 1024;

/// A policy line that could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("witness policy line {line}: {message}")]
pub struct PolicyError {
    /// 1-based line number (0 for the policy as a whole).
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

/// One witness of a policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyWitness {
    /// Its cosignature key (its name is the policy name).
    pub key: WitnessKey,
    /// Where it takes `add-checkpoint` requests (its URL prefix), if given.
    pub url: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Node {
    Witness,
    Group {
        threshold: usize,
        members: Vec<String>,
    },
}

/// A parsed witness policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WitnessPolicy {
    witnesses: BTreeMap<String, PolicyWitness>,
    nodes: BTreeMap<String, Node>,
    /// `None` means `quorum none`: no cosignature is required.
    quorum: Option<String>,
}

impl WitnessPolicy {
    /// Parses a policy file's text.
    pub fn parse(text: &str) -> Result<Self, PolicyError> {
        let mut witnesses = BTreeMap::new();
        let mut nodes: BTreeMap<String, Node> = BTreeMap::new();
        let mut quorum: Option<Option<String>> = None;
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let err = |message: String| PolicyError { line, message };
            let content = raw.split('#').next().unwrap_or("").trim();
            let words: Vec<&str> = content.split_whitespace().collect();
            let Some((&keyword, args)) = words.split_first() else {
                continue;
            };
            if nodes.len() >= MAX_NAMES {
                return Err(err(format!("more than {MAX_NAMES} witnesses and groups")));
            }
            let fresh = |name: &str, nodes: &BTreeMap<String, Node>| {
                if name == "none" || name == "all" || name == "any" {
                    Err(err(format!(
                        "`{name}` is reserved and cannot name a witness or group"
                    )))
                } else if nodes.contains_key(name) {
                    Err(err(format!("`{name}` is defined twice")))
                } else {
                    Ok(())
                }
            };
            match (keyword, args) {
                ("log", [key] | [key, _]) => {
                    if key.len() != 64 || hex::decode(key).is_err() {
                        return Err(err("a log key must be 64 hex digits".into()));
                    }
                }
                ("witness", [name, key, rest @ ..]) if rest.len() <= 1 => {
                    fresh(name, &nodes)?;
                    let parsed = if key.contains('+') {
                        let parsed = WitnessKey::from_vkey(key).map_err(|e| err(e.to_string()))?;
                        if parsed.name() != *name {
                            return Err(err(format!(
                                "the verifier key is named `{}`, not `{name}`",
                                parsed.name()
                            )));
                        }
                        parsed
                    } else {
                        WitnessKey::from_hex(name, key).map_err(|e| err(e.to_string()))?
                    };
                    let url = rest.first().map(|u| (*u).to_owned());
                    if let Some(u) = &url
                        && !(u.starts_with("http://") || u.starts_with("https://"))
                    {
                        return Err(err(format!("`{u}` is not an http(s) URL")));
                    }
                    witnesses.insert((*name).to_owned(), PolicyWitness { key: parsed, url });
                    nodes.insert((*name).to_owned(), Node::Witness);
                }
                ("group", [name, threshold, members @ ..]) if !members.is_empty() => {
                    fresh(name, &nodes)?;
                    let mut seen = BTreeSet::new();
                    for m in members {
                        if !nodes.contains_key(*m) {
                            return Err(err(format!(
                                "`{m}` is not a witness or group defined above"
                            )));
                        }
                        if !seen.insert(*m) {
                            return Err(err(format!("`{m}` is listed twice")));
                        }
                    }
                    let threshold = match *threshold {
                        "all" => members.len(),
                        "any" => 1,
                        k => match k.parse::<usize>() {
                            Ok(k) if (1..=members.len()).contains(&k) => k,
                            _ => {
                                return Err(err(format!(
                                    "threshold `{k}` must be all, any or 1..={}",
                                    members.len()
                                )));
                            }
                        },
                    };
                    nodes.insert(
                        (*name).to_owned(),
                        Node::Group {
                            threshold,
                            members: members.iter().map(|m| (*m).to_owned()).collect(),
                        },
                    );
                }
                ("quorum", [name]) => {
                    if quorum.is_some() {
                        return Err(err("the quorum is set twice".into()));
                    }
                    if *name != "none" && !nodes.contains_key(*name) {
                        return Err(err(format!(
                            "`{name}` is not a witness or group defined above"
                        )));
                    }
                    quorum = Some((*name != "none").then(|| (*name).to_owned()));
                }
                ("log" | "witness" | "group" | "quorum", _) => {
                    return Err(err(format!("wrong number of fields for `{keyword}`")));
                }
                (other, _) => return Err(err(format!("unknown keyword `{other}`"))),
            }
        }
        let quorum = quorum.ok_or_else(|| PolicyError {
            line: 0,
            message: "no `quorum` line: say which witness or group must cosign (or `quorum none`)"
                .into(),
        })?;
        Ok(Self {
            witnesses,
            nodes,
            quorum,
        })
    }

    /// Every witness, by name.
    pub fn witnesses(&self) -> impl Iterator<Item = (&str, &PolicyWitness)> {
        self.witnesses.iter().map(|(n, w)| (n.as_str(), w))
    }

    /// The quorum's name (`None`: no cosignature is required).
    pub fn quorum(&self) -> Option<&str> {
        self.quorum.as_deref()
    }

    /// Whether cosignatures from the witnesses named in `signed` satisfy
    /// the quorum.
    pub fn satisfied_by(&self, signed: &BTreeSet<String>) -> bool {
        match &self.quorum {
            None => true,
            Some(q) => self.holds(q, signed, 0),
        }
    }

    fn holds(&self, name: &str, signed: &BTreeSet<String>, depth: usize) -> bool {
        // Groups name only earlier definitions, so the depth is bounded by
        // the number of names; the guard keeps that a property, not a hope.
        if depth > self.nodes.len() {
            return false;
        }
        match self.nodes.get(name) {
            Some(Node::Witness) => signed.contains(name),
            Some(Node::Group { threshold, members }) => {
                members
                    .iter()
                    .filter(|m| self.holds(m, signed, depth + 1))
                    .count()
                    >= *threshold
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> String {
        hex::encode(
            ed25519_dalek::SigningKey::from_bytes(&[seed; 32])
                .verifying_key()
                .as_bytes(),
        )
    }

    fn names(list: &[&str]) -> BTreeSet<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn k_of_n_and_nested_groups() {
        let text = format!(
            "# witnesses\nwitness a {} http://127.0.0.1:1\nwitness b {}\nwitness c {}\n\
             group two 2 a b c\ngroup both all two c\nquorum two\n",
            key(1),
            key(2),
            key(3)
        );
        let p = WitnessPolicy::parse(&text).unwrap();
        assert_eq!(p.witnesses().count(), 3);
        assert!(!p.satisfied_by(&names(&["a"])));
        assert!(p.satisfied_by(&names(&["a", "c"])));
        assert!(!p.satisfied_by(&names(&["x", "y"])));
        let both = text.replace("quorum two", "quorum both");
        let p = WitnessPolicy::parse(&both).unwrap();
        assert!(!p.satisfied_by(&names(&["a", "b"])));
        assert!(p.satisfied_by(&names(&["a", "b", "c"])));
    }

    #[test]
    fn refusals_name_the_line() {
        let bad = [
            ("witness a zz\nquorum a\n", 1),
            (&format!("witness a {}\ngroup g 3 a\nquorum g\n", key(1)), 2),
            (&format!("witness a {}\nquorum b\n", key(1)), 2),
            (
                &format!("witness a {}\nwitness a {}\nquorum a\n", key(1), key(2)),
                2,
            ),
            (&format!("witness a {}\n", key(1)), 0),
            ("frobnicate\n", 1),
            (&format!("witness a {} ftp://x\nquorum a\n", key(1)), 1),
        ];
        for (text, line) in bad {
            let e = WitnessPolicy::parse(text).unwrap_err();
            assert_eq!(e.line, line, "{text}: {e}");
        }
        assert!(
            WitnessPolicy::parse("quorum none\n")
                .unwrap()
                .satisfied_by(&names(&[]))
        );
    }
}
