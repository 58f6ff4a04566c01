//! Pieces of the OpenSSL glue that keep the cache's promises under OpenSSL's real behaviour:
//! a HelloRetryRequest between two lookups of one ticket ([`parked`]) and virtual hosts picked
//! after the lookup by an SNI or ClientHello callback ([`sni`]).

pub mod parked;
pub mod sni;
