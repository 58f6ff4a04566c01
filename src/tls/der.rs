//! Session DER: what can be read from it without decoding it under a lock, and whether a
//! dump file's entry is the session it claims to be.

use std::ffi::c_long;

use openssl_sys as ossl;

use super::callbacks::session_id;
use super::ossl as extra;

/// Whether `der` is an SSL_SESSION whose id is `id` (checked before a dump is loaded, so a
/// file of other bytes cannot put garbage under a session id).
pub fn session_der_matches_id(der: &[u8], id: &[u8]) -> bool {
    let mut p = der.as_ptr();
    // SAFETY: p points to der.len() readable bytes; d2i reads at most that many.
    let sess = unsafe { ossl::d2i_SSL_SESSION(std::ptr::null_mut(), &mut p, der.len() as c_long) };
    if sess.is_null() {
        // SAFETY: clears the error d2i queued on this thread.
        unsafe { ossl::ERR_clear_error() };
        return false;
    }
    let ok = session_id(sess) == id;
    // SAFETY: we own the session d2i made.
    unsafe { ossl::SSL_SESSION_free(sess) };
    ok
}

/// Whether `der` is an encoded `SSL_SESSION` of TLS 1.3, read from its first two fields
/// (OpenSSL's `SSL_SESSION_ASN1` starts `SEQUENCE { version INTEGER, ssl_version INTEGER, ..`)
/// without decoding it: cheap enough to run under a shard lock. Anything else is `false`.
pub fn der_session_is_tls13(der: &[u8]) -> bool {
    fn skip_header(b: &[u8], tag: u8) -> Option<(usize, &[u8])> {
        let (&t, rest) = b.split_first()?;
        let (&l, rest) = rest.split_first()?;
        if t != tag {
            return None;
        }
        if l < 0x80 {
            return Some((l as usize, rest));
        }
        let n = (l & 0x7f) as usize;
        if n == 0 || n > 3 || rest.len() < n {
            return None;
        }
        let len = rest[..n].iter().fold(0usize, |a, &x| a << 8 | x as usize);
        Some((len, &rest[n..]))
    }
    let integer = |b: &[u8]| -> Option<(u32, usize)> {
        let (len, rest) = skip_header(b, 0x02)?;
        if len == 0 || len > 4 || rest.len() < len {
            return None;
        }
        let v = rest[..len].iter().fold(0u32, |a, &x| a << 8 | x as u32);
        Some((v, b.len() - rest.len() + len))
    };
    let Some((_, body)) = skip_header(der, 0x30) else {
        return false;
    };
    let Some((_, used)) = integer(body) else {
        return false;
    };
    matches!(integer(&body[used..]), Some((v, _)) if v == extra::TLS1_3_VERSION as u32)
}

#[cfg(test)]
mod tests {
    use std::ffi::{c_int, c_uchar, c_uint};

    use openssl_sys::{SSL, SSL_SESSION};

    use super::*;

    extern "C" {
        fn SSL_SESSION_new() -> *mut SSL_SESSION;
        fn SSL_SESSION_set1_id(s: *mut SSL_SESSION, id: *const c_uchar, len: c_uint) -> c_int;
        fn SSL_SESSION_set_protocol_version(s: *mut SSL_SESSION, v: c_int) -> c_int;
        fn SSL_SESSION_set_cipher(s: *mut SSL_SESSION, c: *const ossl::SSL_CIPHER) -> c_int;
        fn SSL_CIPHER_find(ssl: *mut SSL, p: *const c_uchar) -> *const ossl::SSL_CIPHER;
    }

    /// DER of a session with a 32-byte id of 7s, the given protocol version and cipher suite.
    fn session_der(version: c_int, cipher: [u8; 2]) -> Vec<u8> {
        // SAFETY: building and encoding a session we own.
        unsafe {
            let s = SSL_SESSION_new();
            assert!(!s.is_null());
            assert_eq!(SSL_SESSION_set1_id(s, [7u8; 32].as_ptr(), 32), 1);
            // d2i wants a protocol version and a cipher.
            let ctx = ossl::SSL_CTX_new(ossl::TLS_method());
            let ssl = ossl::SSL_new(ctx);
            let c = SSL_CIPHER_find(ssl, cipher.as_ptr());
            assert!(!c.is_null());
            assert_eq!(SSL_SESSION_set_protocol_version(s, version), 1);
            assert_eq!(SSL_SESSION_set_cipher(s, c), 1);
            ossl::SSL_free(ssl);
            ossl::SSL_CTX_free(ctx);
            let len = ossl::i2d_SSL_SESSION(s, std::ptr::null_mut());
            let mut v = vec![0u8; len as usize];
            let mut p = v.as_mut_ptr();
            ossl::i2d_SSL_SESSION(s, &mut p);
            ossl::SSL_SESSION_free(s);
            v
        }
    }

    const TLS1_2_VERSION: c_int = 0x0303;
    const AES128_GCM_SHA256: [u8; 2] = [0x13, 0x01];
    const ECDHE_RSA_AES128_GCM_SHA256: [u8; 2] = [0xc0, 0x2f];

    #[test]
    fn the_protocol_version_is_read_from_the_der_without_decoding_it() {
        let tls13 = session_der(extra::TLS1_3_VERSION, AES128_GCM_SHA256);
        let tls12 = session_der(TLS1_2_VERSION, ECDHE_RSA_AES128_GCM_SHA256);
        assert!(der_session_is_tls13(&tls13));
        assert!(!der_session_is_tls13(&tls12));
        // Truncated before the version is complete: never TLS 1.3; the peek needs only the
        // first few bytes, never the whole session.
        let first_true = (0..=tls13.len()).find(|&n| der_session_is_tls13(&tls13[..n]));
        assert!(
            matches!(first_true, Some(n) if (9..=12).contains(&n)),
            "{first_true:?}"
        );
        assert!(!der_session_is_tls13(b""));
        assert!(!der_session_is_tls13(b"\x30\x03\x02\x01\x01"));
        assert!(!der_session_is_tls13(&[
            0x31, 0x08, 0x02, 0x01, 0x01, 0x02, 0x02, 0x03, 0x04
        ]));
        assert!(der_session_is_tls13(&[
            0x30, 0x08, 0x02, 0x01, 0x01, 0x02, 0x02, 0x03, 0x04
        ]));
        assert!(der_session_is_tls13(&[
            0x30, 0x82, 0x01, 0x00, 0x02, 0x01, 0x01, 0x02, 0x02, 0x03, 0x04
        ]));
        assert!(!der_session_is_tls13(&[
            0x30, 0x82, 0x01, 0x00, 0x02, 0x01, 0x01, 0x02, 0x02, 0x03, 0x03
        ]));
    }

    #[test]
    fn only_a_session_with_that_id_matches() {
        let der = session_der(extra::TLS1_3_VERSION, AES128_GCM_SHA256);
        assert!(session_der_matches_id(&der, &[7u8; 32]));
        assert!(!session_der_matches_id(&der, &[8u8; 32]), "another id");
        assert!(
            !session_der_matches_id(&[7u8; 32], &der[..32]),
            "swapped arguments"
        );
        assert!(!session_der_matches_id(b"not a session", &[7u8; 32]));
    }
}
