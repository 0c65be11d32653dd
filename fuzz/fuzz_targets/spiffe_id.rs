//! Feeds arbitrary text to the SPIFFE ID, trust domain and prefix parsers,
//! as the issuance API does with each requested ID and the config with its
//! caller rules. Any panic is a bug; what parses must parse again from its
//! own text to the same value, within the spec's 2048-byte limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sigmux::ca::spiffe::{MAX_ID_LEN, SpiffeId, SpiffeIdPrefix, TrustDomain, for_record};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(id) = SpiffeId::parse(s) {
        assert!(id.as_str().len() <= MAX_ID_LEN);
        assert_eq!(SpiffeId::parse(id.as_str()).as_ref(), Ok(&id));
    }
    if let Ok(td) = TrustDomain::parse(s) {
        assert_eq!(TrustDomain::parse(td.name()).as_ref(), Ok(&td));
    }
    if let Ok(p) = SpiffeIdPrefix::parse(s) {
        assert_eq!(SpiffeIdPrefix::parse(p.as_str()).as_ref(), Ok(&p));
    }
    let r = for_record(s.to_string());
    assert!(r.len() <= MAX_ID_LEN + 3);
});
