//! Feeds arbitrary bytes to the CSR reader, as the issuance API does with
//! each item's `csr`: PEM or DER, parsed, proof of possession verified,
//! key policy applied. Any panic is a bug; a CSR that passes must name a
//! public key that OpenSSL reads too.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sigmux::ca::csr::parse_and_verify;

fuzz_target!(|data: &[u8]| {
    if let Ok(csr) = parse_and_verify(data) {
        assert!(
            openssl::pkey::PKey::public_key_from_der(&csr.spki_der).is_ok(),
            "accepted a CSR whose key OpenSSL cannot read"
        );
    }
});
