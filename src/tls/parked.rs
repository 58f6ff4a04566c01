//! TLS 1.3 tickets taken by a lookup, kept on their connection for the ClientHello that
//! follows a HelloRetryRequest.
//!
//! OpenSSL looks the ticket up while it processes the first ClientHello, before it decides to
//! send a HelloRetryRequest (the client's key share is for a group the server does not want),
//! and again for the second ClientHello, which offers the same ticket. The single-use lookup
//! removed the entry the first time, so without this the second lookup misses and the ticket
//! is burnt. The taken bytes are therefore parked on the `SSL` (ex_data) together with the
//! ClientHello's random, which RFC 8446 §4.1.2 keeps unchanged in the retried ClientHello, and
//! handed back exactly once to a lookup of the same id with the same random on the same `SSL`.
//! Another connection, in this process or any other, never sees them: the ticket still
//! resumes once in the whole server. The parked copy is taken off when the handshake issues
//! its new ticket (the new-session callback), so a server that reuses the `SSL` after
//! `SSL_clear` cannot hand it to a replayed ClientHello; if that handshake did not resume
//! (OpenSSL refused the ticket after the lookup returned it), it goes back into the cache.

use openssl_sys as ossl;
use openssl_sys::SSL;

use super::ex_data::Slot;

const RANDOM_BYTES: usize = 32;

/// The bytes of one taken ticket and what identifies its handshake. Wiped when dropped.
struct Parked {
    id: Vec<u8>,
    client_random: [u8; RANDOM_BYTES],
    der: Vec<u8>,
    /// Created and expiry times, to put the ticket back if the retry is refused.
    times: (u32, u32),
}

impl Drop for Parked {
    fn drop(&mut self) {
        crate::util::wipe(&mut self.der);
    }
}

/// The ticket parked on each `SSL`, wiped and freed with it.
static PARKED: Slot<SSL, Box<Parked>> = Slot::new();

pub(super) fn client_random(ssl: *const SSL) -> Option<[u8; RANDOM_BYTES]> {
    let mut r = [0u8; RANDOM_BYTES];
    // SAFETY: live SSL; OpenSSL copies at most RANDOM_BYTES into r.
    let n = unsafe { ossl::SSL_get_client_random(ssl, r.as_mut_ptr(), r.len()) };
    (n == RANDOM_BYTES && r != [0u8; RANDOM_BYTES]).then_some(r)
}

/// Take what is parked on `ssl` off it (the caller owns it now).
fn unpark(ssl: *mut SSL) -> Option<Box<Parked>> {
    // SAFETY: a live SSL (a session callback's); no reference into its slot is held.
    unsafe { PARKED.take(ssl) }
}

/// Keep a copy of a ticket just taken for this handshake (replacing anything parked before).
/// Without a ClientHello random to bind it to, nothing is parked.
pub(crate) fn park(ssl: *mut SSL, id: &[u8], der: &[u8], times: (u32, u32)) {
    let Some(client_random) = client_random(ssl) else {
        return;
    };
    let parked = Box::new(Parked {
        id: id.to_vec(),
        client_random,
        der: der.to_vec(),
        times,
    });
    // SAFETY: a live SSL; no reference into its slot is held. What was parked before, and a
    // copy OpenSSL refused to keep, are wiped as they drop.
    drop(unsafe { PARKED.put(ssl, parked) });
}

/// A ticket handed back by [`take_back`]; its bytes are wiped when it is dropped.
pub struct Unparked(Box<Parked>);

impl AsRef<[u8]> for Unparked {
    /// The ticket's DER.
    fn as_ref(&self) -> &[u8] {
        &self.0.der
    }
}

impl Unparked {
    /// Created and expiry times of the ticket.
    pub fn times(&self) -> (u32, u32) {
        self.0.times
    }
}

impl Unparked {
    /// The ticket's id.
    pub fn id(&self) -> &[u8] {
        &self.0.id
    }
}

/// Drop (and wipe) whatever is parked on `ssl`: its handshake is over.
pub(crate) fn discard(ssl: *mut SSL) {
    drop(unpark(ssl));
}

/// What is parked on `ssl`, taken off it now that its handshake is over (the caller decides
/// whether it goes back into the cache; it is wiped when dropped).
pub(crate) fn finish(ssl: *mut SSL) -> Option<Unparked> {
    unpark(ssl).map(Unparked)
}

/// The bytes parked on `ssl` for ticket `id` by the lookup of this handshake's first
/// ClientHello, handed out once. `None` for any other id, handshake or connection. What was
/// parked for an earlier handshake on this `SSL` (a server that reuses it after `SSL_clear`)
/// is dropped; what was parked for another identity of this ClientHello stays.
pub(crate) fn take_back(ssl: *mut SSL, id: &[u8]) -> Option<Unparked> {
    let (same_id, same_hello) = {
        // SAFETY: a live SSL; the reference ends before the slot is changed below.
        let p = unsafe { PARKED.get(ssl) }?;
        (p.id == id, client_random(ssl) == Some(p.client_random))
    };
    if !same_hello {
        drop(unpark(ssl));
        return None;
    }
    if !same_id {
        return None;
    }
    unpark(ssl).map(Unparked)
}
