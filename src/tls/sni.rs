//! A session resumes only on the virtual host it was made for.
//!
//! OpenSSL looks a session up under the context the connection was accepted on, before an
//! SNI (servername) or ClientHello callback switches it to the virtual host's context, so the
//! session id context alone cannot keep virtual hosts apart: a session made on a host without
//! client certificates would resume on one that requires them. Every session records the
//! server name it was made under (`SSL_SESSION_get0_hostname`, recorded by [`record_host`] where
//! OpenSSL did not); the lookup compares it with the
//! name in this ClientHello, read from the raw extension because OpenSSL has not parsed it yet
//! (TLS 1.2) or has not acted on it yet (TLS 1.3). RFC 6066 §3 asks the same of servers.

use std::ffi::{c_char, c_int, CStr};

use openssl_sys as ossl;
use openssl_sys::{SSL, SSL_SESSION};

extern "C" {
    fn SSL_SESSION_get0_hostname(s: *const SSL_SESSION) -> *const c_char;
    fn SSL_SESSION_set1_hostname(s: *mut SSL_SESSION, hostname: *const c_char) -> c_int;
    fn SSL_get_servername(s: *const SSL, kind: c_int) -> *const c_char;
}

const TLSEXT_NAMETYPE_HOST_NAME: c_int = 0;

/// Record in `sess` the server name its handshake's ClientHello asked for, if OpenSSL did not:
/// it stores the name only when a servername callback accepted it, so without a callback every
/// session would look as if it were made for no name at all.
pub(crate) fn record_host(ssl: *const SSL, sess: *mut SSL_SESSION) {
    // SAFETY: live SSL and session; OpenSSL copies the name.
    unsafe {
        if !SSL_SESSION_get0_hostname(sess).is_null() {
            return;
        }
        let name = SSL_get_servername(ssl, TLSEXT_NAMETYPE_HOST_NAME);
        if !name.is_null() {
            SSL_SESSION_set1_hostname(sess, name);
        }
    }
}

const TLSEXT_TYPE_SERVER_NAME: u32 = 0;
const NAME_TYPE_HOST_NAME: u8 = 0;

/// What the ClientHello being processed says about the server name.
#[derive(Debug, PartialEq, Eq)]
pub enum HelloName<'a> {
    /// No server_name extension.
    Absent,
    /// The host_name it carries.
    Host(&'a [u8]),
    /// No ClientHello to read (called outside a handshake), or an extension that does not
    /// parse: OpenSSL itself rejects the latter later on.
    Unknown,
}

/// The server name of the ClientHello `ssl` is processing (valid while OpenSSL runs the
/// session lookup: the ClientHello is kept until its early processing ends).
pub(crate) fn hello_name<'a>(ssl: *mut SSL) -> HelloName<'a> {
    let mut out: *const u8 = std::ptr::null();
    let mut len: usize = 0;
    // SAFETY: live SSL; OpenSSL points `out` into the ClientHello it keeps during the lookup.
    let present = unsafe {
        ossl::SSL_client_hello_get0_ext(ssl, TLSEXT_TYPE_SERVER_NAME, &mut out, &mut len)
    };
    if present != 1 {
        // "No extension" and "no ClientHello" both return 0: tell them apart.
        return if has_client_hello(ssl) {
            HelloName::Absent
        } else {
            HelloName::Unknown
        };
    }
    if out.is_null() {
        return HelloName::Unknown;
    }
    // SAFETY: OpenSSL returned `len` readable bytes at `out`.
    let ext = unsafe { std::slice::from_raw_parts(out, len) };
    parse_server_name(ext).map_or(HelloName::Unknown, HelloName::Host)
}

fn has_client_hello(ssl: *mut SSL) -> bool {
    let mut random: *const u8 = std::ptr::null();
    // SAFETY: live SSL; returns 0 when OpenSSL holds no ClientHello.
    unsafe { ossl::SSL_client_hello_get0_random(ssl, &mut random) != 0 }
}

/// The host_name of a server_name extension body (RFC 6066 §3): a 2-byte list length, then
/// entries of a 1-byte type and a 2-byte length. `None` if it does not parse.
pub fn parse_server_name(ext: &[u8]) -> Option<&[u8]> {
    let (len, mut list) = split_u16(ext)?;
    if len != list.len() {
        return None;
    }
    while !list.is_empty() {
        let (&kind, rest) = list.split_first()?;
        let (n, rest) = split_u16(rest)?;
        if rest.len() < n {
            return None;
        }
        if kind == NAME_TYPE_HOST_NAME {
            return (n > 0).then_some(&rest[..n]);
        }
        list = &rest[n..];
    }
    None
}

fn split_u16(b: &[u8]) -> Option<(usize, &[u8])> {
    (b.len() >= 2).then(|| (usize::from(u16::from_be_bytes([b[0], b[1]])), &b[2..]))
}

/// Whether `sess` may resume in the handshake of `ssl`: the name it was made under and the
/// name this ClientHello asks for are the same bytes, or both are absent. Byte for byte, not
/// ignoring case: a servername callback may compare names with strcmp and send "A.TEST" to
/// another host than "a.test"; clients offer a session with the very name it was made under.
pub(crate) fn same_host(ssl: *mut SSL, sess: *const SSL_SESSION) -> bool {
    // SAFETY: live session; the string lives as long as it.
    let made_for = unsafe {
        let p = SSL_SESSION_get0_hostname(sess);
        (!p.is_null()).then(|| CStr::from_ptr(p).to_bytes())
    };
    match (hello_name(ssl), made_for) {
        (HelloName::Absent, None) => true,
        (HelloName::Host(asked), Some(made)) => asked == made,
        // Outside a handshake there is nothing to compare with; inside one, a malformed
        // extension fails the handshake in OpenSSL anyway.
        (HelloName::Unknown, _) => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ext(entries: &[(u8, &[u8])]) -> Vec<u8> {
        let mut list = Vec::new();
        for (kind, name) in entries {
            list.push(*kind);
            list.extend_from_slice(&(name.len() as u16).to_be_bytes());
            list.extend_from_slice(name);
        }
        let mut v = (list.len() as u16).to_be_bytes().to_vec();
        v.extend(list);
        v
    }

    #[test]
    fn the_host_name_is_read_from_the_extension() {
        assert_eq!(
            parse_server_name(&ext(&[(0, b"a.example")])),
            Some(&b"a.example"[..])
        );
        assert_eq!(
            parse_server_name(&ext(&[(7, b"other"), (0, b"b.example")])),
            Some(&b"b.example"[..])
        );
    }

    #[test]
    fn malformed_extensions_give_no_name() {
        let good = ext(&[(0, b"a.example")]);
        for n in 0..good.len() {
            assert_eq!(parse_server_name(&good[..n]), None, "truncated to {n}");
        }
        let mut long = good.clone();
        long.push(0);
        assert_eq!(parse_server_name(&long), None, "trailing byte");
        assert_eq!(parse_server_name(&ext(&[(0, b"")])), None, "empty name");
        assert_eq!(
            parse_server_name(&ext(&[(1, b"x")])),
            None,
            "no host_name entry"
        );
    }
}
