//! The OpenSSL side: everything that knows about `SSL`, `SSL_CTX` and `SSL_SESSION`.
//! [`install`] puts the cache on an `SSL_CTX` (callbacks, cache mode, session id context, id
//! generator); [`callbacks`] are the new/get/remove session callbacks, which encode and decode
//! sessions outside any lock; [`parked`] keeps a TLS 1.3 ticket across a HelloRetryRequest and
//! [`sni`] keeps sessions on the virtual host they were made for; [`spares`] marks the TLS 1.3
//! tickets a full handshake issues before its last, which go first when a shard needs room; [`der`] reads a session's
//! DER without decoding it; [`ex_data`] is the one typed ex_data slot both the handle on an
//! `SSL_CTX` and the parked ticket on an `SSL` use; [`ossl`] declares what openssl-sys lacks.

pub mod callbacks;
pub mod der;
pub mod ex_data;
pub mod install;
pub mod ossl;
pub mod parked;
pub mod sni;
pub mod spares;
