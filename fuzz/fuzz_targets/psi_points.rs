//! Fuzzes what a match peer's point list goes through on arrival (the
//! bytes another agency's server sends): the wire decoder, then the
//! re-blinding that checks every point (canonical encoding, not the
//! identity, distinct). No input may panic; a list is accepted only with
//! the announced count, and an accepted list re-blinds to as many points,
//! all distinct.
#![no_main]

use std::collections::HashSet;

use custos_privacy::psi::{Party, decode_points};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&announced, message)) = data.split_first() else {
        return;
    };
    let announced = usize::from(announced);
    let Ok(points) = decode_points(message, announced) else {
        return;
    };
    assert_eq!(points.len(), announced, "a list of another length was accepted");
    let party = Party::new().expect("randomness");
    if let Ok(reblinded) = party.reblind(&points, announced) {
        assert_eq!(reblinded.len(), announced);
        let distinct: HashSet<_> = reblinded.iter().collect();
        assert_eq!(distinct.len(), announced, "re-blinding accepted a repeated point");
        let inputs: HashSet<_> = points.iter().collect();
        assert_eq!(inputs.len(), announced, "a list with a repeated point was accepted");
    }
});
