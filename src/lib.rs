//! shmsesscache: one TLS session cache in shared memory for all the worker processes of a
//! forked OpenSSL server, with a C ABI (see `include/shmsesscache.h`).
//!
//! Modules by responsibility:
//! - [`layout`]: the segment's bytes (header, format word, geometry, entry header);
//! - [`lock`]: robust process-shared mutexes;
//! - [`users`]: the boot and pid namespace whose thread ids the lock words hold;
//! - [`segment`]: mapping, creating and attaching (anonymous or named);
//! - [`shard`]: slot operations inside one locked shard;
//! - [`cache`]: ids to shards, locking with crash recovery, statistics;
//! - [`glue`]: the OpenSSL callbacks (i2d/d2i outside the locks);
//! - [`tls`]: HelloRetryRequest and virtual-host rules of the lookup;
//! - [`handles`]: the lock-free set of live C handles;
//! - [`ffi`]: the exported C functions;
//! - [`dumpfile`]: the file format of `shmsesscache dump` / `load`;
//! - [`seal`]: AES-256-GCM sealing of sessions that leave the host;
//! - [`remote`]: the optional second tier in Redis, for several hosts.
//! - [`resp`]: the small Redis client under one deadline per operation that `remote` uses.
//! - [`resp_tls`]: TLS for it (`rediss://`), OpenSSL on memory BIOs.
//!
//! The `shmsesscache` command-line tool is `src/bin/shmsesscache/`.

pub mod cache;
pub mod dumpfile;
pub mod error;
pub mod fault;
pub mod ffi;
pub mod glue;
pub mod handles;
pub mod layout;
pub mod lock;
pub mod log;
pub mod remote;
pub mod resp;
pub mod resp_tls;
pub mod seal;
pub mod segment;
pub mod shard;
pub mod tls;
pub mod users;
pub mod util;

pub use cache::{Cache, Config, EntryInfo, Found, Stats};
pub use error::{Error, ErrorKind, Result};
