//! A per-process memo of decoded sessions: a TLS 1.2 session that clients resume again and
//! again in one process is decoded (`d2i_SSL_SESSION`) once, not on every hit, which cost
//! about 4% of a resumed handshake against OpenSSL's internal cache (issue 24).
//!
//! The memo sits behind the segment, never in front of it: a lookup still finds, checks and
//! copies the entry under the shard lock exactly as without it (so a removed, taken, expired
//! or replaced entry is a miss before the memo is asked), and only the decoding of the bytes
//! it copied is skipped. A memo entry is keyed by those bytes themselves, by a 128-bit keyed
//! hash (SipHash-1-3, a random key per memo) of all of them and their length: the session it
//! returns is the one decoding these very bytes would give. That proof holds in a forked child
//! as in its parent (the child's copy of the memo keys the same bytes), so nothing is cleared
//! at fork.
//!
//! What a shared decoded session changes, and why it is safe:
//! - OpenSSL's internal cache hands one `SSL_SESSION` to every handshake resuming it, so
//!   OpenSSL treats a TLS 1.2 resumed session as shared (TLS 1.3 duplicates it before changing
//!   anything). The one change it makes is marking a session not resumable when a handshake
//!   using it ends badly (`SSL_CTX_remove_session`): such a memo entry is dropped and the bytes
//!   decoded afresh.
//! - With OpenSSL's internal store kept (`SHMSESS_KEEP_INTERNAL_CACHE`), OpenSSL would link the
//!   returned session into the internal cache of each `SSL_CTX` it resumes on, and one object
//!   cannot be in two such lists: the memo is not used then.
//! - Single-use (TLS 1.3) tickets are never memoised: their bytes do not come back.
//!
//! Bounded: [`SLOTS`] entries, each of a session of at most [`MAX_MEMO_DER`] bytes; a slot is
//! replaced by the next session hashing to it, and an expired session is dropped when a store
//! passes its slot. Secrets: a session leaves the memo through `SSL_SESSION_free`, which
//! cleanses its master key once no handshake holds it.
//!
//! Thread safety: one mutex, only ever tried (`try_lock`): a thread that finds it busy, or a
//! forked child whose parent's thread held it at the fork, decodes as if there were no memo.

use std::ffi::c_long;
use std::hash::Hasher;
use std::sync::Mutex;

use openssl_sys as ossl;
use openssl_sys::SSL_SESSION;
use siphasher::sip128::{Hasher128, SipHasher13};

use super::ossl as extra;

/// Sessions a memo holds at most.
pub const SLOTS: usize = 256;
/// Larger sessions (long client certificate chains) are decoded every time: the memo's memory
/// stays under `SLOTS` × this many bytes of sessions.
pub const MAX_MEMO_DER: usize = 1024;

/// One decoded session and the bytes it came from (by their keyed hash and length).
struct Slot {
    digest: u128,
    len: usize,
    /// One reference, the memo's own.
    sess: *mut SSL_SESSION,
}

// SAFETY: an SSL_SESSION's reference count is atomic and the memo only reads the session
// (OpenSSL shares sessions between threads the same way in its internal cache).
unsafe impl Send for Slot {}

impl Drop for Slot {
    fn drop(&mut self) {
        // SAFETY: the memo's own reference.
        unsafe { ossl::SSL_SESSION_free(self.sess) };
    }
}

/// The memo of one cache handle, shared by the threads of one process.
pub struct Memo {
    key: (u64, u64),
    slots: Mutex<Vec<Option<Slot>>>,
}

impl Default for Memo {
    fn default() -> Memo {
        Memo::new()
    }
}

impl Memo {
    pub fn new() -> Memo {
        let mut k = [0u8; 16];
        // SAFETY: writes 16 bytes into k. A failure leaves k zero; the key then only makes
        // collisions harder to aim at, which an all-zero key still does for chance collisions.
        unsafe { ossl::RAND_bytes(k.as_mut_ptr(), k.len() as _) };
        let half = |b: &[u8]| u64::from_le_bytes(b.try_into().expect("8 bytes"));
        Memo {
            key: (half(&k[..8]), half(&k[8..])),
            slots: Mutex::new((0..SLOTS).map(|_| None).collect()),
        }
    }

    fn digest(&self, der: &[u8]) -> u128 {
        let mut h = SipHasher13::new_with_keys(self.key.0, self.key.1);
        h.write(der);
        h.finish128().as_u128()
    }

    /// The session `der` decodes to, with one reference for the caller (to free, or to hand
    /// to OpenSSL), or null if the bytes are not a session. From the memo when it holds a
    /// still-resumable session decoded from exactly these bytes; else decoded now (outside the
    /// memo's lock) and remembered.
    pub fn decode(&self, der: &[u8]) -> *mut SSL_SESSION {
        if der.len() > MAX_MEMO_DER {
            return d2i(der);
        }
        let digest = self.digest(der);
        let at = (digest as usize) % SLOTS;
        let stale = match self.slots.try_lock() {
            Ok(mut slots) => match slots[at].as_ref() {
                Some(s) if s.digest == digest && s.len == der.len() && resumable(s.sess) => {
                    // SAFETY: the memo's reference keeps the session alive while locked.
                    unsafe { ossl::SSL_SESSION_up_ref(s.sess) };
                    return s.sess;
                }
                // Marked not resumable by OpenSSL, or other bytes: decoded afresh below.
                Some(s) if s.digest == digest => slots[at].take(),
                _ => None,
            },
            Err(_) => return d2i(der),
        };
        drop(stale);
        let sess = d2i(der);
        if !sess.is_null() {
            self.remember(at, digest, der.len(), sess);
        }
        sess
    }

    /// Put `sess` (the caller keeps its own reference) in slot `at`, and drop an expired
    /// session from the slot after it, so that sessions nobody resumes any more do not stay.
    fn remember(&self, at: usize, digest: u128, len: usize, sess: *mut SSL_SESSION) {
        let Ok(mut slots) = self.slots.try_lock() else {
            return;
        };
        // SAFETY: the caller's live session; this reference is the memo's.
        unsafe { ossl::SSL_SESSION_up_ref(sess) };
        let replaced = slots[at].replace(Slot { digest, len, sess });
        let next = (at + 1) % SLOTS;
        let expired = match slots[next].as_ref() {
            Some(s) if expired(s.sess) => slots[next].take(),
            _ => None,
        };
        drop(slots);
        // Freed outside the lock.
        drop((replaced, expired));
    }

    /// Sessions held now for which `pred` holds (for tests and diagnostics).
    pub fn count_where(&self, pred: impl Fn(*const SSL_SESSION) -> bool) -> usize {
        self.slots.lock().map_or(0, |s| {
            s.iter()
                .flatten()
                .filter(|x| pred(x.sess.cast_const()))
                .count()
        })
    }

    /// Sessions held now.
    pub fn len(&self) -> usize {
        self.count_where(|_| true)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// `d2i_SSL_SESSION` of `der`: a new session with one reference, or null (its error cleared).
pub fn d2i(der: &[u8]) -> *mut SSL_SESSION {
    let mut p = der.as_ptr();
    // SAFETY: p points to the der.len() bytes we hold.
    let sess = unsafe { ossl::d2i_SSL_SESSION(std::ptr::null_mut(), &mut p, der.len() as c_long) };
    if sess.is_null() {
        // SAFETY: clears the error d2i left on this thread's queue.
        unsafe { ossl::ERR_clear_error() };
    }
    sess
}

fn resumable(sess: *const SSL_SESSION) -> bool {
    // SAFETY: a live session.
    unsafe { extra::SSL_SESSION_is_resumable(sess) != 0 }
}

fn expired(sess: *const SSL_SESSION) -> bool {
    // SAFETY: a live session.
    let (time, timeout) = unsafe {
        (
            ossl::SSL_SESSION_get_time(sess),
            ossl::SSL_SESSION_get_timeout(sess),
        )
    };
    time.saturating_add(timeout) <= crate::util::now_unix() as c_long
}

#[cfg(test)]
mod tests {
    use std::ffi::{c_int, c_uchar, c_uint};

    use super::*;

    extern "C" {
        fn SSL_SESSION_new() -> *mut SSL_SESSION;
        fn SSL_SESSION_set1_id(s: *mut SSL_SESSION, id: *const c_uchar, len: c_uint) -> c_int;
        fn SSL_SESSION_set1_master_key(s: *mut SSL_SESSION, k: *const c_uchar, len: usize)
            -> c_int;
        fn SSL_SESSION_get_master_key(s: *const SSL_SESSION, out: *mut c_uchar, n: usize) -> usize;
        fn SSL_SESSION_set_protocol_version(s: *mut SSL_SESSION, v: c_int) -> c_int;
        fn SSL_SESSION_set_cipher(s: *mut SSL_SESSION, c: *const ossl::SSL_CIPHER) -> c_int;
        fn SSL_SESSION_set_time(s: *mut SSL_SESSION, t: c_long) -> c_long;
        fn SSL_CIPHER_find(ssl: *mut ossl::SSL, p: *const c_uchar) -> *const ossl::SSL_CIPHER;
        fn SSL_CTX_add_session(ctx: *mut ossl::SSL_CTX, s: *mut SSL_SESSION) -> c_int;
        fn SSL_CTX_remove_session(ctx: *mut ossl::SSL_CTX, s: *mut SSL_SESSION) -> c_int;
    }

    /// DER of a TLS 1.2 session with id `id` and a master key of 48 `key` bytes, created
    /// `age` seconds ago with a timeout of 300 s.
    fn session_der(id: u8, key: u8, age: u32) -> Vec<u8> {
        // SAFETY: building and encoding a session we own.
        unsafe {
            let s = SSL_SESSION_new();
            assert_eq!(SSL_SESSION_set1_id(s, [id; 32].as_ptr(), 32), 1);
            assert_eq!(SSL_SESSION_set1_master_key(s, [key; 48].as_ptr(), 48), 1);
            let ctx = ossl::SSL_CTX_new(ossl::TLS_method());
            let ssl = ossl::SSL_new(ctx);
            let c = SSL_CIPHER_find(ssl, [0xc0, 0x2f].as_ptr());
            assert_eq!(SSL_SESSION_set_protocol_version(s, 0x0303), 1);
            assert_eq!(SSL_SESSION_set_cipher(s, c), 1);
            ossl::SSL_free(ssl);
            ossl::SSL_CTX_free(ctx);
            SSL_SESSION_set_time(s, (crate::util::now_unix() - age) as c_long);
            extra::SSL_SESSION_set_timeout(s, 300);
            let len = ossl::i2d_SSL_SESSION(s, std::ptr::null_mut());
            let mut v = vec![0u8; len as usize];
            let mut p = v.as_mut_ptr();
            ossl::i2d_SSL_SESSION(s, &mut p);
            ossl::SSL_SESSION_free(s);
            v
        }
    }

    fn master_key(s: *mut SSL_SESSION) -> u8 {
        let mut k = [0u8; 48];
        // SAFETY: live session, 48-byte buffer.
        assert_eq!(
            unsafe { SSL_SESSION_get_master_key(s, k.as_mut_ptr(), 48) },
            48
        );
        k[0]
    }

    fn free(s: *mut SSL_SESSION) {
        // SAFETY: a reference the test owns.
        unsafe { ossl::SSL_SESSION_free(s) };
    }

    #[test]
    fn the_same_bytes_give_the_same_session_other_bytes_a_fresh_one() {
        let m = Memo::new();
        let a = session_der(1, 0xaa, 0);
        let s1 = m.decode(&a);
        let s2 = m.decode(&a);
        assert!(!s1.is_null());
        assert_eq!(s1, s2, "decoded once, then from the memo");
        // Same id, same length, another master key: an entry replaced in the segment.
        let b = session_der(1, 0xbb, 0);
        assert_eq!(a.len(), b.len());
        let s3 = m.decode(&b);
        assert_ne!(s3, s1, "other bytes are never answered by the memo");
        assert_eq!(master_key(s3), 0xbb);
        assert_eq!(
            master_key(s1),
            0xaa,
            "the first caller's session is untouched"
        );
        assert!(m.decode(b"not a session").is_null());
        for s in [s1, s2, s3] {
            free(s);
        }
    }

    #[test]
    fn a_session_openssl_marked_not_resumable_is_decoded_afresh() {
        let m = Memo::new();
        let a = session_der(2, 0x11, 0);
        let s1 = m.decode(&a);
        // What a handshake ending badly does to the session it resumed.
        // SAFETY: a context with an internal cache, and the test's live session.
        unsafe {
            let ctx = ossl::SSL_CTX_new(ossl::TLS_method());
            assert_eq!(SSL_CTX_add_session(ctx, s1), 1);
            assert_eq!(SSL_CTX_remove_session(ctx, s1), 1);
            ossl::SSL_CTX_free(ctx);
        }
        assert!(!resumable(s1));
        let s2 = m.decode(&a);
        assert_ne!(s2, s1);
        assert!(resumable(s2));
        free(s1);
        free(s2);
    }

    #[test]
    fn the_memo_is_bounded_and_lets_expired_sessions_go() {
        let m = Memo::new();
        // Expired sessions (created 400 s ago, 300 s timeout) in many slots ...
        let old: Vec<_> = (0..=255u8).map(|i| session_der(i, i, 400)).collect();
        for d in &old {
            free(m.decode(d));
        }
        let held = m.len();
        assert!(held > 0 && held <= SLOTS, "{held}");
        assert_eq!(m.count_where(expired), held);
        // ... go as fresh ones are stored next to them; never more than SLOTS are held.
        for i in 0..3000u32 {
            let mut d = session_der(7, 7, 0);
            d.extend_from_slice(&i.to_le_bytes()); // trailing bytes: d2i ignores them
            free(m.decode(&d));
            assert!(m.len() <= SLOTS);
        }
        assert_eq!(m.count_where(expired), 0);
        // A session larger than MAX_MEMO_DER is decoded, not remembered.
        let m2 = Memo::new();
        let mut big = session_der(9, 9, 0);
        big.resize(MAX_MEMO_DER + 1, 0);
        let (b1, b2) = (m2.decode(&big), m2.decode(&big));
        assert!(!b1.is_null() && b1 != b2 && m2.is_empty());
        free(b1);
        free(b2);
    }
}
