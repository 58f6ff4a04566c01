//! The shared-memory store: the segment's bytes ([`layout`]), its robust process-shared locks
//! ([`lock`]), mapping, creating and attaching segments ([`segment`]), slot operations inside
//! one locked shard ([`shard`]), ids to shards with crash recovery and statistics ([`cache`]),
//! the processes that share a segment ([`users`]) and the dump file format of
//! `shmsesscache dump`/`load` ([`dumpfile`]). Nothing here knows about OpenSSL or Redis.
//!
//! # The lock table and crash recovery
//!
//! Any process using the segment can die at any instruction (SIGKILL, the OOM killer, a
//! segfault elsewhere in the server), also while it holds a lock. The protocol below keeps
//! three promises: no process hangs, no lock stays unusable, no damaged session is served.
//!
//! ## The words
//!
//! - **One mutex per shard** ([`layout::ShardHeader::mutex`]): a `pthread_mutex_t`,
//!   `PTHREAD_PROCESS_SHARED | PTHREAD_MUTEX_ROBUST`, whose word holds its owner's thread id
//!   (as the owner's pid namespace numbers it). Every operation on a shard holds it; nothing
//!   else in the shard is written without it. Waits are bounded by the cache's lock timeout
//!   (default 200 ms, on `CLOCK_MONOTONIC` through `pthread_mutex_clocklock`): after it the
//!   operation is a miss (`lock_timeouts`), never a hang. Before locking, the mutex's kind word
//!   must be exactly what [`lock::ShardLock::init`] wrote, since glibc aborts on some damaged
//!   ones ([`lock::LockError::Corrupt`]).
//! - **The dirty flag** ([`layout::ShardHeader::dirty`]): set while a process is inside the
//!   critical section, cleared when it leaves normally. A locker that finds it set (a panic
//!   or a death inside the section) repairs the shard before use (`dirty_repairs`).
//! - **The recovery word** ([`layout::Globals::recovery_word`]): serialises lock resets
//!   between processes. 0 when free, else the resetting process's pid (low 32 bits) and when
//!   it took the word (Unix seconds, high 32 bits). It is a plain atomic, never a mutex, so
//!   it is safe to touch whoever wrote it: a word whose pid is dead (judged only as below) or
//!   held over 10 s is taken over.
//! - **The users** ([`layout::Users`], [`users`]): the boot id
//!   (`/proc/sys/kernel/random/boot_id`) and pid namespace (`/proc/self/ns/pid`) of the
//!   processes using the segment, and whether one of another namespace ever attached
//!   (`mixed_ns`). Written under the recovery word.
//!
//! ## Taking a shard lock ([`cache::Cache::lock_shard`])
//!
//! 1. **Who may lock.** Only the segment's owner (the file's owner; an anonymous segment's
//!    creator), and only a process that cannot become anybody else: real, effective and
//!    saved uid all the owner's. A mutex other users can write would hand them this
//!    process's privileges. A root-owned segment is the exception (only root opens it).
//!    Refusals count in `lock_refused_owner`.
//! 2. **`EOWNERDEAD`.** The previous owner died inside the section: the new owner marks the
//!    shard dirty, declares the mutex consistent *first* (unlocking without
//!    `pthread_mutex_consistent` would make it `ENOTRECOVERABLE` for every process forever;
//!    [`lock::Acquired::OwnerDied`] carries that obligation), then repairs the shard. A death
//!    or panic inside the repair leaves a usable mutex over a shard still marked dirty, which
//!    the next locker repairs again. Counted in `lock_owner_died`.
//! 3. **The repair** keeps only entries whose header, slot chain, CRC-32 and id-to-shard
//!    mapping verify, wipes everything else and recounts (`corrupt_dropped`). Every read
//!    verifies the checksum too; a half-written entry is never visible (its head tag is
//!    written last).
//! 4. **A lock nobody can ever take again** is re-initialised under the recovery word, once,
//!    and its shard marked dirty so its next locker repairs it (`lock_resets`): a mutex left
//!    `ENOTRECOVERABLE`, one whose kind word is damaged, or one whose word names a thread that
//!    no longer exists without the kernel's owner-died mark (hostile bytes, or a file kept
//!    across a reboot), found after one lock timeout. A thread id is judged dead only by a
//!    process of the recorded boot and pid namespace while no process of another namespace
//!    has attached (containers sharing `/dev/shm` see other numbers); otherwise a held lock
//!    just times out, and the error says so and names `shmsesscache repair --force`.
//! 5. **After a reboot** the first process to attach (a server, or `shmsesscache repair`)
//!    takes the recovery word and re-initialises every held lock, even one whose thread id a
//!    live, unrelated process now has, and records the new boot
//!    (`Cache::join_users`).
//! 6. **A live holder** (stopped with SIGSTOP, or a thread id reused within one boot) is never
//!    broken automatically. `shmsesscache repair --force` ([`cache::Cache::repair_all`] with
//!    `force`) re-initialises every held lock on the operator's word, under the recovery
//!    word, and repairs every shard: for a segment no process uses any more.
//!
//! Messages about recoveries and lock failures reach the log callback only after the shard
//! lock is released. docs/design.md ("After a crash", and its table of guarantees) says
//! which tests show each of these.

pub mod cache;
pub mod dumpfile;
pub mod layout;
pub mod lock;
pub mod segment;
pub mod shard;
pub mod users;
