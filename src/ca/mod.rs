//! The SPIFFE CA front door. So far: strict SPIFFE ID parsing (`spiffe`);
//! CSR checking, SVID profiles and the authority build on it.

pub mod spiffe;
