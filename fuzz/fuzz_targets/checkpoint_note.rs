//! Fuzzes the checkpoint / signed-note parser and verifier: no input may
//! panic, and no input but a genuinely signed note may verify.
#![no_main]

use custos_ledger::{NoteSigner, verify_checkpoint};
use ed25519_dalek::SigningKey;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let signer = NoteSigner::new("fuzz.custos.local/log", SigningKey::from_bytes(&[7; 32]));
    let key = signer.verifier_key();
    if let Ok(cp) = verify_checkpoint(data, &key) {
        // Whatever verified must be exactly what the signer would sign.
        let again = signer.sign(cp.size, cp.root).expect("sign");
        assert_eq!(again, data, "a note verified that the key never signed");
    }
    // The verifier-key parser sees arbitrary text too.
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = verify_checkpoint(b"x\n1\nAAAA\n\n", text);
    }
});
