//! The SPIFFE CA front door: strict SPIFFE ID parsing (`spiffe`), PKCS#10
//! checking (`csr`) and the X.509-SVID and JWT-SVID profiles (`svid`); the
//! authority builds on them.

pub mod authority;
pub mod crl;
pub mod csr;
pub mod offline_root;
pub mod rotation;
pub mod spiffe;
pub mod status;
pub mod svid;
