//! The two-tier policy: how this host's shared memory ([`crate::store`]) and the Redis tier
//! shared by hosts ([`crate::remote`]) answer together. One policy for every caller: the
//! OpenSSL session callbacks and the C byte API both come here. It knows neither OpenSSL nor
//! the C ABI; what only the TLS library knows (decoding a session, the server name of the
//! handshake, keeping a ticket across a HelloRetryRequest) it asks of a [`Resumer`].
//!
//! A lookup ([`Tiers::resume`]):
//! 1. a ClientHello retried after a HelloRetryRequest gets back the ticket its first lookup
//!    took (counted in `hrr_resumed`);
//! 2. the local segment, taking a single-use (TLS 1.3) ticket in the same critical section
//!    as the copy;
//! 3. on a local miss, Redis: a TLS 1.2 hit that may resume is refilled into the segment
//!    (the next resumption on this host is local); a TLS 1.3 ticket is read first and consumed only once its server
//!    name is checked, since a consumed one could not be put back;
//! 4. a single-use ticket is consumed across hosts by swapping its Redis copy for a tombstone
//!    (refused when the tombstone was there already, `remote_replays_refused`); the read and
//!    the swap of a ticket read from Redis share one deadline;
//! 5. a session made for another server name is refused (`sni_mismatch`), and a ticket taken
//!    from the segment for it goes back there untouched;
//! 6. a local ticket whose single use Redis could not confirm resumes as
//!    [`Resumed::unconfirmed`]: the caller turns early data off, so a replay elsewhere during
//!    a partition cannot be 0-RTT. One read from Redis is refused instead (every host could
//!    read it again).
//!
//! Stores and removals go to the segment now and to Redis through the tier's writer thread
//! (queued, never waited for). [`Reach::LocalOnly`] leaves Redis out of all three: the byte
//! API's behaviour unless the cache was created with `SHMSESS_BYTE_API_REMOTE` (the Apache
//! provider with `ShmsessRemote`), so that programs built before it keep their meaning.
//!
//! Which entries are single use is decided per entry ([`Take`]): the OpenSSL callbacks know
//! a handshake's version beforehand (`Take::Always` for TLS 1.3); the byte API, which stores
//! opaque bytes, asks the bytes (`Take::If`), in the segment's critical section and again of
//! a value read from Redis.

use std::sync::atomic::Ordering::Relaxed;

use crate::error::Result;
use crate::remote::resp::Deadline;
use crate::remote::seal::Opened;
use crate::remote::{Fetched, Remote, Taken};
use crate::store::cache::{Cache, Found, Take};

/// Sessions up to this size (all but those with large client certificate chains) are copied
/// out of the segment into a stack buffer; larger ones into a heap buffer of their size.
pub const SMALL_SESSION_BYTES: usize = 1024;

/// Which tiers a caller uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reach {
    /// The segment and, when the cache has one, Redis (the OpenSSL callbacks; the byte API
    /// of a cache created with `SHMSESS_BYTE_API_REMOTE`).
    Both,
    /// The segment only (the C byte API otherwise: `shmsess_cache_store`, `_lookup`,
    /// `_remove`).
    LocalOnly,
}

/// What the policy asks of the TLS library during one handshake's lookup.
pub trait Resumer {
    /// A decoded session; dropping it frees it (a refused session is simply dropped).
    type Session;
    /// A ticket kept across a HelloRetryRequest, wiped when dropped.
    type Parked: AsRef<[u8]>;

    /// The largest entry the caller can take now (the byte API: its buffer's size); `None`:
    /// any. A larger one is left as it was, neither taken from the segment nor consumed in
    /// Redis, and its size is reported to [`Resumer::too_small`].
    fn room(&self) -> Option<usize> {
        None
    }
    /// Whether a single-use entry in the segment is checked ([`Resumer::same_host`]) before it
    /// is taken: copied, checked outside the lock, then taken only if the segment still holds
    /// the same bytes, so a refused one is left as it was (the byte API with a caller's check,
    /// which may decode: never under a shard lock). Otherwise (the OpenSSL callbacks: one lock
    /// per resumption) it is taken with the copy, and a refused one is stored back.
    fn checks_before_take(&self) -> bool {
        false
    }
    /// The entry for this lookup's id needs `needed` bytes, more than [`Resumer::room`].
    fn too_small(&mut self, _needed: usize) {}
    /// Decode an entry's bytes; `None` if they are not a session (the entry is then dropped).
    fn decode(&mut self, der: &[u8]) -> Option<Self::Session>;
    /// Whether `session` was made for the server this handshake names.
    fn same_host(&mut self, session: &Self::Session) -> bool;
    /// The ticket `id` this handshake's first lookup took and kept, with its created and
    /// expiry times, handed back once.
    fn take_parked(&mut self, id: &[u8]) -> Option<(Self::Parked, (u32, u32))>;
    /// Keep a ticket this lookup took, for a ClientHello retried after a HelloRetryRequest.
    fn park(&mut self, id: &[u8], der: &[u8], times: (u32, u32));
    /// Forget what [`Resumer::park`] kept: the ticket it came from was refused.
    fn discard_parked(&mut self);
}

/// What the segment has for a lookup's id, as [`Tiers::read_local`] reads it.
enum Local<'b> {
    /// The entry's bytes (taken if single use), its created and expiry times.
    Hit(&'b mut [u8], u32, u32),
    /// An entry of this many bytes, more than the caller has room for: left in place.
    TooSmall(usize),
    Miss,
}

/// A session that may resume this handshake.
pub struct Resumed<S> {
    pub session: S,
    /// A single-use ticket whose use Redis could not confirm (counted in
    /// `remote_unconfirmed`): resume it without early data.
    pub unconfirmed: bool,
}

impl<S> Resumed<S> {
    fn confirmed(session: S) -> Resumed<S> {
        Resumed {
            session,
            unconfirmed: false,
        }
    }
}

/// The tiers of one cache as one caller reaches them. Borrowed for the length of one
/// operation; as thread- and process-safe as the cache and the tier themselves.
pub struct Tiers<'a> {
    cache: &'a Cache,
    remote: Option<&'a Remote>,
}

impl<'a> Tiers<'a> {
    /// `cache`, and `remote` unless `reach` is [`Reach::LocalOnly`].
    pub fn new(cache: &'a Cache, remote: Option<&'a Remote>, reach: Reach) -> Tiers<'a> {
        let remote = remote.filter(|_| reach == Reach::Both);
        Tiers { cache, remote }
    }

    /// Store a session in the segment and queue it for Redis. The segment's error, if any, is
    /// returned; Redis is written either way (another host may still resume it).
    pub fn store(&self, id: &[u8], der: &[u8], created: u32, expires: u32) -> Result<()> {
        self.store_ranked(id, der, created, expires, false)
    }

    /// [`store`](Self::store); a `spare` goes before the segment's other live entries when a
    /// shard needs room (see `tls::spares`). Redis keeps no such rank: it has its own memory.
    pub fn store_ranked(
        &self,
        id: &[u8],
        der: &[u8],
        created: u32,
        expires: u32,
        spare: bool,
    ) -> Result<()> {
        let now = crate::util::now_unix();
        let local = self
            .cache
            .store_ranked(id, der, created, expires, now, spare);
        if let Some(r) = self.remote {
            r.store(id, der, created, expires, now);
        }
        local
    }

    /// Remove a session from the segment and queue its removal from Redis. Whether the
    /// segment had it, or its error.
    pub fn remove(&self, id: &[u8]) -> Result<bool> {
        let local = self.cache.remove(id);
        if let Some(r) = self.remote {
            // Queued: OpenSSL may hold the SSL_CTX lock while calling, so no network I/O.
            r.remove(id);
        }
        local
    }

    /// Copy the entry for `id` into `out`, taking it as `take` says, in the segment only:
    /// the byte API's lookup of a cache without `SHMSESS_BYTE_API_REMOTE` (with it, the byte
    /// API goes through [`Tiers::resume`]).
    pub fn lookup_bytes(&self, id: &[u8], out: &mut [u8], take: Take, now: u32) -> Result<Found> {
        self.cache.lookup_taking(id, out, take, now)
    }

    /// The session for `id` that may resume this handshake, following the steps in the
    /// module's documentation. `take`: which entries are single use (TLS 1.3 tickets).
    pub fn resume<R: Resumer>(
        &self,
        id: &[u8],
        take: Take,
        r: &mut R,
    ) -> Option<Resumed<R::Session>> {
        if !matches!(take, Take::Never) {
            // The ClientHello after a HelloRetryRequest offers the ticket its first one took.
            // It may name another host than the first did: the name is checked again. Parked
            // again until the handshake ends, which puts it back if OpenSSL did not resume it.
            if let Some((parked, times)) = r.take_parked(id) {
                let sess = self.accept(r, id, parked.as_ref(), times, true, true);
                if sess.is_some() {
                    self.cache.globals().hrr_resumed.fetch_add(1, Relaxed);
                }
                return sess.map(Resumed::confirmed);
            }
        }
        let mut small = [0u8; SMALL_SESSION_BYTES];
        let mut big = Vec::new();
        let room = r.room().unwrap_or(usize::MAX);
        let check_first = r.checks_before_take() && !matches!(take, Take::Never);
        let copy_take = if check_first { Take::Never } else { take };
        let local = match self.read_local(id, copy_take, room, &mut small, &mut big) {
            Local::Hit(der, created, expires) => Some((der, created, expires)),
            Local::TooSmall(needed) => {
                r.too_small(needed);
                return None;
            }
            Local::Miss => None,
        };
        if let Some((der, created, expires)) = local {
            // The same predicate the critical section applied: whether it took the entry (or,
            // checked first, is to take it).
            let taken = take.applies_to(der);
            // The name check comes first: a ticket offered for another host goes back
            // untouched, here and in the remote tier.
            let sess = if check_first && taken {
                self.accept_then_take(r, id, der, (created, expires))
            } else {
                self.accept(r, id, der, (created, expires), taken, taken)
            };
            crate::util::wipe(der);
            if sess.is_none() {
                // A hit the store counted, but no resumption: the hit ratio leaves it out.
                self.cache.globals().lookup_refused.fetch_add(1, Relaxed);
            }
            return match (sess, self.remote.filter(|_| taken)) {
                (Some(s), Some(remote)) => self.consume(remote, r, s, id, expires, None),
                (sess, _) => sess.map(Resumed::confirmed),
            };
        }
        let remote = self.remote?;
        let now = crate::util::now_unix();
        // A single-use ticket is read first and consumed only once its name is checked: a
        // consumed one could not be put back (stores never overwrite a tombstone).
        // One deadline for the read and the consume: together they cost one remote timeout.
        let dl = remote.deadline();
        let Fetched::Hit(o) = remote.fetch_within(id, false, now, dl) else {
            return None;
        };
        let sess = self.resume_fetched(remote, id, take, room, &o, dl, r);
        if sess.is_none() {
            // Redis counted a hit; nothing resumed: a miss to whoever counts resumptions.
            self.cache.globals().remote_refused.fetch_add(1, Relaxed);
        }
        sess
    }

    /// Step 3 to 6 for a session `o` Redis answered a local miss with (read with the
    /// deadline `dl`); the caller counts a refusal.
    #[allow(clippy::too_many_arguments)]
    fn resume_fetched<R: Resumer>(
        &self,
        remote: &Remote,
        id: &[u8],
        take: Take,
        room: usize,
        o: &Opened,
        dl: Deadline,
        r: &mut R,
    ) -> Option<Resumed<R::Session>> {
        let single = take.applies_to(&o.der);
        if o.der.len() > room {
            // Read, not consumed: the caller's next lookup, with room, may still resume it.
            r.too_small(o.der.len());
            return None;
        }
        let sess = self.accept(r, id, &o.der, (o.created, o.expires), false, single)?;
        if single {
            return self.consume(remote, r, sess, id, o.expires, Some(dl));
        }
        // The next resumption on this host is a local hit. Only once accepted: a session
        // refused here (another vhost's) leaves this host's segment as it was. A full
        // segment just means the next lookup reads Redis again.
        let _ = self.cache.store(id, &o.der, o.created, o.expires);
        Some(Resumed::confirmed(sess))
    }

    /// The segment's entry for `id` (taken with `take`) in `small`, or in `big` when it does
    /// not fit, with its created and expiry times; one larger than `room` bytes is left where
    /// it is. Most sessions fit in 1 KiB: zero-filling an 8 KiB buffer on every lookup cost a
    /// quarter of the callback (callgrind). A too-small buffer changes nothing (not even a
    /// take), so a large session is simply read again.
    fn read_local<'b>(
        &self,
        id: &[u8],
        take: Take,
        room: usize,
        small: &'b mut [u8; SMALL_SESSION_BYTES],
        big: &'b mut Vec<u8>,
    ) -> Local<'b> {
        let now = crate::util::now_unix();
        let first = &mut small[..SMALL_SESSION_BYTES.min(room)];
        let needed = match self.cache.lookup_taking(id, first, take, now) {
            Ok(Found::Hit {
                len,
                created,
                expires,
            }) => return Local::Hit(&mut first[..len], created, expires),
            Ok(Found::BufferTooSmall { needed }) => needed,
            _ => return Local::Miss,
        };
        if needed > room {
            return Local::TooSmall(needed);
        }
        big.resize(needed, 0u8);
        match self.cache.lookup_taking(id, big, take, now) {
            Ok(Found::Hit {
                len,
                created,
                expires,
            }) => Local::Hit(&mut big[..len], created, expires),
            // Replaced meanwhile by a larger entry.
            Ok(Found::BufferTooSmall { needed }) if needed > room => Local::TooSmall(needed),
            _ => Local::Miss,
        }
    }

    /// A single-use ticket about to resume on this host may have been resumed on another
    /// already: it is consumed fleet-wide by swapping its remote copy for a tombstone, and
    /// refused if the tombstone was there already (see [`Taken`]). `fetched`: the ticket was
    /// read from Redis (not this host's memory) with this deadline; it is then refused unless
    /// consumed for sure, since every host could read it again.
    fn consume<R: Resumer>(
        &self,
        remote: &Remote,
        r: &mut R,
        sess: R::Session,
        id: &[u8],
        expires: u32,
        fetched: Option<Deadline>,
    ) -> Option<Resumed<R::Session>> {
        let now = crate::util::now_unix();
        let dl = fetched.unwrap_or_else(|| remote.deadline());
        match remote.take_within(id, expires, now, dl) {
            // Not consumed in Redis (counted as unconfirmed by take_within): another host
            // could read and resume the same ticket again, and again.
            Taken::Unconfirmed if fetched.is_some() => {
                r.discard_parked();
                None
            }
            Taken::UsedElsewhere => {
                let g = self.cache.globals();
                g.remote.replays_refused.fetch_add(1, Relaxed);
                if fetched.is_none() {
                    // The segment counted a hit; nothing resumed (see `lookup_refused`).
                    g.lookup_refused.fetch_add(1, Relaxed);
                }
                r.discard_parked();
                None
            }
            // Only this host's single use is known: no 0-RTT on it.
            Taken::Unconfirmed => Some(Resumed {
                session: sess,
                unconfirmed: true,
            }),
            Taken::Consumed | Taken::NeverStored => Some(Resumed::confirmed(sess)),
        }
    }

    /// Store a ticket taken for a lookup that then refused it back into the segment. If the
    /// segment refuses (a lock timeout), the ticket is lost to its own host: said in the log,
    /// since its client then gets a full handshake for no visible reason.
    fn put_back(&self, id: &[u8], der: &[u8], times: (u32, u32)) {
        if let Err(e) = self.cache.store(id, der, times.0, times.1) {
            crate::log::emit(
                crate::log::Level::Warning,
                &format!("a ticket refused for another server name could not be put back: {e}"),
            );
        }
    }

    /// [`accept`](Self::accept) for a single-use entry copied from the segment without taking
    /// it: accepted, it is taken now if the segment still holds these bytes (else another
    /// lookup took or replaced it meanwhile: not this one's to resume); refused, it was never
    /// touched.
    fn accept_then_take<R: Resumer>(
        &self,
        r: &mut R,
        id: &[u8],
        der: &[u8],
        times: (u32, u32),
    ) -> Option<R::Session> {
        let sess = self.accept(r, id, der, times, false, false)?;
        let now = crate::util::now_unix();
        if !matches!(self.cache.take_if_unchanged(id, der, now), Ok(true)) {
            return None;
        }
        r.park(id, der, times);
        Some(sess)
    }

    /// The session in `der` if it may resume this handshake: it decodes and was made for the
    /// host this handshake names. With `park`, the ticket (created and expiry `times`) is
    /// kept for a ClientHello retried after a HelloRetryRequest; with `put_back`, a refused
    /// one goes back into the segment, since it was taken from there but not used. An entry
    /// that does not decode is dropped. The caller wipes `der`.
    fn accept<R: Resumer>(
        &self,
        r: &mut R,
        id: &[u8],
        der: &[u8],
        times: (u32, u32),
        put_back: bool,
        park: bool,
    ) -> Option<R::Session> {
        let g = self.cache.globals();
        let Some(sess) = r.decode(der) else {
            g.decode_errors.fetch_add(1, Relaxed);
            let _ = self.cache.remove(id);
            return None;
        };
        if !r.same_host(&sess) {
            drop(sess);
            g.sni_mismatch.fetch_add(1, Relaxed);
            if put_back {
                self.put_back(id, der, times);
            }
            return None;
        }
        if park {
            r.park(id, der, times);
        }
        Some(sess)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::remote::seal::{Key, Keyring};
    use crate::remote::{Compat, RemoteConfig};
    use crate::store::cache::{Config, RemoteCountersRef};

    /// A handshake whose answers the test sets: sessions are their DER bytes.
    #[derive(Default)]
    struct Fake {
        undecodable: bool,
        other_host: bool,
        parked: Option<(Vec<u8>, (u32, u32))>,
        kept: Vec<Vec<u8>>,
    }

    impl Resumer for Fake {
        type Session = Vec<u8>;
        type Parked = Vec<u8>;

        fn decode(&mut self, der: &[u8]) -> Option<Vec<u8>> {
            (!self.undecodable).then(|| der.to_vec())
        }

        fn same_host(&mut self, _: &Vec<u8>) -> bool {
            !self.other_host
        }

        fn take_parked(&mut self, _: &[u8]) -> Option<(Vec<u8>, (u32, u32))> {
            self.parked.take()
        }

        fn park(&mut self, _: &[u8], der: &[u8], _: (u32, u32)) {
            self.kept.push(der.to_vec());
        }

        fn discard_parked(&mut self) {
            self.kept.clear();
        }
    }

    const ID: [u8; 32] = [4; 32];

    fn cache_with_ticket() -> Cache {
        let c = Cache::create(&Config {
            size_bytes: 1 << 20,
            ..Config::default()
        })
        .unwrap();
        let now = crate::util::now_unix();
        c.store(&ID, b"ticket", now, now + 300).unwrap();
        c
    }

    fn has(c: &Cache, id: &[u8]) -> bool {
        matches!(c.lookup(id, &mut [0u8; 64], false), Ok(Found::Hit { .. }))
    }

    #[test]
    fn a_single_use_ticket_is_taken_and_kept_for_a_retried_hello() {
        let c = cache_with_ticket();
        let mut hs = Fake::default();
        let got = Tiers::new(&c, None, Reach::Both).resume(&ID, Take::Always, &mut hs);
        let got = got.expect("resumes");
        assert_eq!(got.session, b"ticket");
        assert!(!got.unconfirmed);
        assert!(!has(&c, &ID), "taken");
        assert_eq!(hs.kept, [b"ticket".to_vec()], "parked");
    }

    #[test]
    fn a_ticket_refused_for_its_server_name_goes_back_untouched() {
        let c = cache_with_ticket();
        let mut hs = Fake {
            other_host: true,
            ..Fake::default()
        };
        assert!(Tiers::new(&c, None, Reach::Both)
            .resume(&ID, Take::Always, &mut hs)
            .is_none());
        assert_eq!(c.globals().sni_mismatch.load(Relaxed), 1);
        // The store counted a hit; it resumed nothing, so it is no hit in the ratio.
        let s = c.stats();
        assert_eq!((s.lookup_hits, s.lookup_refused), (1, 1));
        let cs = crate::ffi::stats::to_c_stats(&s, &c.ages(0), 0);
        assert_eq!(crate::ffi::stats::shmsess_stats_hit_ratio(&cs), 0.0);
        assert!(has(&c, &ID), "put back for the host it was made for");
        assert!(hs.kept.is_empty(), "nothing parked");
    }

    #[test]
    fn an_entry_that_does_not_decode_is_dropped_and_counted() {
        let c = cache_with_ticket();
        let mut hs = Fake {
            undecodable: true,
            ..Fake::default()
        };
        let tiers = Tiers::new(&c, None, Reach::Both);
        assert!(tiers.resume(&ID, Take::Never, &mut hs).is_none());
        assert_eq!(c.globals().decode_errors.load(Relaxed), 1);
        assert_eq!(c.globals().lookup_refused.load(Relaxed), 1);
        assert!(!has(&c, &ID));
    }

    #[test]
    fn a_retried_hello_gets_the_parked_ticket_without_the_segment() {
        let c = cache_with_ticket();
        let mut hs = Fake {
            parked: Some((b"parked".to_vec(), (1, 2))),
            ..Fake::default()
        };
        let got = Tiers::new(&c, None, Reach::Both).resume(&ID, Take::Always, &mut hs);
        assert_eq!(got.expect("resumes").session, b"parked");
        assert_eq!(c.globals().hrr_resumed.load(Relaxed), 1);
        assert!(has(&c, &ID), "the segment's copy is not touched");
    }

    /// A tier at a port that refuses connections, counting into its own counters.
    fn dead_remote() -> (Remote, RemoteCountersRef) {
        let sock = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = sock.local_addr().unwrap().port();
        drop(sock);
        let counters = RemoteCountersRef::private();
        let cfg = RemoteConfig {
            url: format!("redis://127.0.0.1:{port}/0"),
            ca_file: None,
            prefix: "t:".into(),
            timeout: Duration::from_millis(200),
            backoff: Duration::from_millis(1),
            compat: Compat::Detect,
            cluster: false,
            keys: Keyring::new(Key::new([1; 32]), Vec::new()),
            fleet: String::new(),
        };
        (Remote::new(cfg, counters.clone()).unwrap(), counters)
    }

    #[test]
    fn local_only_leaves_redis_out_of_stores_lookups_and_removals() {
        let c = cache_with_ticket();
        let (remote, counters) = dead_remote();
        let local = Tiers::new(&c, Some(&remote), Reach::LocalOnly);
        let now = crate::util::now_unix();
        local.store(&[5; 32], b"other", now, now + 300).unwrap();
        assert!(!local.remove(&[6; 32]).unwrap());
        let missing = local.lookup_bytes(&[7; 32], &mut [0u8; 64], Take::Never, now);
        assert!(matches!(missing, Ok(Found::Miss)));
        assert!(remote.flush(Duration::from_secs(5)));
        let tried = counters.get().errors.load(Relaxed) + counters.get().dropped.load(Relaxed);
        assert_eq!(tried, 0, "nothing reached the tier");
        // Both tiers: the same store is queued for Redis (and, Redis being down, lost).
        let both = Tiers::new(&c, Some(&remote), Reach::Both);
        both.store(&[5; 32], b"other", now, now + 300).unwrap();
        assert!(remote.flush(Duration::from_secs(5)));
        assert_eq!(counters.get().dropped.load(Relaxed), 1);
    }
}
