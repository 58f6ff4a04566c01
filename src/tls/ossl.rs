//! Symbols libssl.so.3 exports that openssl-sys does not declare, and the constants they need.

use std::ffi::{c_int, c_long, c_uchar, c_uint, c_void};

use openssl_sys as ossl;
use openssl_sys::{SSL, SSL_CTX, SSL_SESSION};

extern "C" {
    pub fn SSL_get_options(s: *const SSL) -> u64;
    pub fn SSL_SESSION_set_timeout(s: *mut SSL_SESSION, t: c_long) -> c_long;
    pub fn SSL_CTX_set_timeout(ctx: *mut SSL_CTX, t: c_long) -> c_long;
    pub fn SSL_CTX_get_client_CA_list(ctx: *const SSL_CTX) -> *mut ossl::stack_st_X509_NAME;
    pub fn SSL_CTX_set_generate_session_id(ctx: *mut SSL_CTX, cb: Option<GenSessionCb>) -> c_int;
    pub fn SSL_has_matching_session_id(s: *const SSL, id: *const c_uchar, len: c_uint) -> c_int;
    pub fn EVP_Digest(
        data: *const c_void,
        count: usize,
        md: *mut c_uchar,
        size: *mut c_uint,
        kind: *const ossl::EVP_MD,
        engine: *mut c_void,
    ) -> c_int;
}
pub type GenSessionCb =
    unsafe extern "C" fn(ssl: *mut SSL, id: *mut c_uchar, id_len: *mut c_uint) -> c_int;
pub const SSL_OP_NO_ANTI_REPLAY: u64 = 1 << 24;
pub const SSL_OP_NO_TICKET: u64 = 1 << 14;
pub const TLS1_3_VERSION: c_int = 0x0304;
