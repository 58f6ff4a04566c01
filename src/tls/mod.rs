//! The OpenSSL side: the session callbacks and `shmsess_install` ([`glue`]), and the pieces that
//! keep the cache's promises under OpenSSL's real behaviour: a HelloRetryRequest between two
//! lookups of one ticket ([`parked`]) and virtual hosts picked after the lookup by an SNI or
//! ClientHello callback ([`sni`]).

pub mod glue;
pub mod parked;
pub mod sni;
