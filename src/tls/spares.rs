//! Which TLS 1.3 tickets are spares: those a full handshake issues before its last one.
//!
//! After a full handshake OpenSSL issues `SSL_get_num_tickets` tickets (default 2) and stores
//! each (new_session_cb per ticket); a client offers one per connection, the newest first
//! (OpenSSL's client keeps the last one it got), and the earlier ones only for connections it
//! opens in parallel. So when a shard must make room, it takes the spares first
//! ([`crate::store::layout::EntryHeader::spare`]): a cache under pressure keeps one ticket per
//! client instead of two, serving up to twice as many clients, and a cache with room keeps
//! both, so parallel connections still resume. A resumption issues one ticket: never a spare.
//!
//! The count of tickets issued is kept on the `SSL` with the ClientHello's random (a server that
//! reuses an `SSL` after `SSL_clear` starts a new count on the next handshake).

use openssl_sys as ossl;
use openssl_sys::SSL;

use super::ex_data::Slot;
use super::parked::client_random;

/// The tickets issued so far in one handshake.
struct Issued {
    client_random: [u8; 32],
    count: usize,
}

static ISSUED: Slot<SSL, Box<Issued>> = Slot::new();

/// Counts the TLS 1.3 ticket being stored and says whether it is a spare: issued by a full
/// handshake that will issue another after it. Unknown (no client random, no ex_data): not a
/// spare, which is what the cache did before.
pub(crate) fn ticket_is_spare(ssl: *mut SSL) -> bool {
    // SAFETY: live SSL (the new-session callback's).
    let (resumed, planned) = unsafe {
        (
            ossl::SSL_session_reused(ssl) == 1,
            ossl::SSL_get_num_tickets(ssl),
        )
    };
    let Some(random) = client_random(ssl) else {
        return false;
    };
    // SAFETY: live SSL; no reference into the slot is held.
    let before = unsafe { ISSUED.take(ssl) };
    let count = match before {
        Some(b) if b.client_random == random => b.count + 1,
        _ => 1,
    };
    let issued = Box::new(Issued {
        client_random: random,
        count,
    });
    // SAFETY: as above. A refused put only loses the count (later tickets are then not spares).
    let _ = unsafe { ISSUED.put(ssl, issued) };
    !resumed && count < planned
}
