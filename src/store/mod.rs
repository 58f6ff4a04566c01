//! The shared-memory store: the segment's bytes ([`layout`]), its robust process-shared locks
//! ([`lock`]), mapping, creating and attaching segments ([`segment`]), slot operations inside
//! one locked shard ([`shard`]), ids to shards with crash recovery and statistics ([`cache`]),
//! the processes that share a segment ([`users`]) and the dump file format of
//! `shmsesscache dump`/`load` ([`dumpfile`]). Nothing here knows about OpenSSL or Redis.

pub mod cache;
pub mod dumpfile;
pub mod layout;
pub mod lock;
pub mod segment;
pub mod shard;
pub mod users;
