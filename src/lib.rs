//! shmsesscache: one TLS session cache in shared memory for all the worker processes of a
//! forked OpenSSL server, with a C ABI (see `include/shmsesscache.h`).
//!
//! Modules by responsibility:
//! - [`store`]: the shared-memory segment, nothing about OpenSSL or Redis:
//!   [`layout`] (the segment's bytes: header, format word, geometry, entry header),
//!   [`lock`] (robust process-shared mutexes), [`users`] (the boot and pid namespace whose
//!   thread ids the lock words hold), [`segment`] (mapping, creating, attaching),
//!   [`shard`] (slot operations inside one locked shard), [`cache`] (ids to shards, locking
//!   with crash recovery, statistics), [`dumpfile`] (the format of `shmsesscache dump`/`load`);
//! - [`tls`]: the OpenSSL side: [`tls::callbacks`] (the session callbacks, i2d/d2i
//!   outside the locks), the HelloRetryRequest and virtual-host rules of the lookup;
//! - [`remote`]: the optional second tier in Redis, for several hosts: [`seal`] (AES-256-GCM
//!   sealing of sessions that leave the host), [`resp`] (a small Redis client under one
//!   deadline per operation) and [`resp_tls`] (`rediss://`, OpenSSL on memory BIOs);
//! - [`ffi`]: the exported C functions, one file per C concept, and [`handle`] (what a `shmsess_cache *` points to, and the lock-free set of live ones);
//! - [`log`], [`error`], [`util`], [`fault`] (test-only fault injection).
//!
//! The `shmsesscache` command-line tool is `src/bin/shmsesscache/`.

pub mod error;
pub mod fault;
pub mod ffi;
pub mod handle;
pub mod log;
pub mod remote;
pub mod store;
pub mod tls;
pub mod util;

// The paths the modules had before they were grouped, for the crate's own code, its tools,
// tests and benchmarks.
pub use remote::{resp, resp_tls, seal};
pub use store::{cache, dumpfile, layout, lock, segment, shard, users};

pub use cache::{Cache, Config, EntryInfo, Found, Stats};
pub use error::{Error, ErrorKind, Result};
