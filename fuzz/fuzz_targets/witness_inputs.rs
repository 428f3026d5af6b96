//! Fuzzes what a witness and a log read from the network and from files:
//! `add-checkpoint` request bodies, 409 and 200 answers, and witness
//! policies. No input may panic; a parsed request re-encodes to a body
//! that parses to the same request; a policy's quorum check terminates.
#![no_main]

use std::collections::BTreeSet;

use custos_ledger::WitnessPolicy;
use custos_ledger::witness_wire::{AddCheckpoint, parse_cosignatures, parse_size};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = AddCheckpoint::parse(data) {
        let again = AddCheckpoint::parse(&request.encode()).expect("re-encoded request parses");
        assert_eq!(again, request);
    }
    let _ = parse_size(data);
    if let Some(lines) = parse_cosignatures(data) {
        assert!(!lines.is_empty());
    }
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(policy) = WitnessPolicy::parse(text)
    {
        let names: BTreeSet<String> = policy.witnesses().map(|(n, _)| n.to_owned()).collect();
        // Every witness signing always satisfies a quorum built of them.
        assert!(policy.satisfied_by(&names));
        let _ = policy.satisfied_by(&BTreeSet::new());
    }
});
