//! shmsesscache: one TLS session cache in shared memory for all the worker processes of a
//! forked OpenSSL server, with a C ABI (see `include/shmsesscache.h`) and an optional second
//! tier in Redis shared by several hosts.
//!
//! Each folder is one layer; data flows down, never up:
//!
//! ```text
//!   C call ──────────► ffi ──► handle ──► tiers ──► store   (this host's shared memory)
//!   OpenSSL callback ► tls ──► handle ──► tiers ──► remote  (Redis, other hosts)
//! ```
//!
//! - [`ffi`]: the exported C functions, one file per C concept (results, options, cache,
//!   entries, statistics, log); the one panic boundary. Knows C, not OpenSSL's callbacks.
//! - [`tls`]: the OpenSSL side: `shmsess_install`, the new/get/remove session callbacks
//!   (i2d/d2i outside every lock), HelloRetryRequest parking, the virtual-host check.
//! - [`handle`]: [`handle::Handle`], what a `shmsess_cache *` points to (the cache, how it
//!   behaves in OpenSSL, the optional Redis tier), and the set of live handles.
//! - [`tiers`]: the two-tier policy, one for both callers: local first, Redis on a miss,
//!   single use of TLS 1.3 tickets across hosts, name-refused tickets put back. Knows neither
//!   OpenSSL nor C: the OpenSSL side lends it decoding, the server-name check and
//!   HelloRetryRequest parking through [`tiers::Resumer`]; the byte API uses the segment only
//!   ([`tiers::Reach::LocalOnly`]).
//! - [`store`]: the shared-memory segment (layout, robust locks and crash recovery, shards,
//!   statistics, dump files). Knows nothing of OpenSSL or Redis.
//! - [`remote`]: the Redis tier (sealing, a small RESP client, `rediss://`), counting into
//!   the segment's counters it is given when it is made.
//! - [`log`], [`error`], [`util`], [`fault`] (test-only fault injection): used by every layer.
//!
//! The `shmsesscache` command-line tool is `src/bin/shmsesscache/`; it uses [`store`] and
//! [`ffi`]'s statistics directly.

#![deny(unsafe_op_in_unsafe_fn)]

pub mod error;
pub mod fault;
pub mod ffi;
pub mod handle;
pub mod log;
pub mod remote;
pub mod store;
pub mod tiers;
pub mod tls;
pub mod util;

// The crate's error type is what every layer returns: one path for it.
pub use error::{Error, ErrorKind, Result};
