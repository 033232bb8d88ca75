//! Shared data, shared queues and metrics in one block of memory that several
//! processes map (an NGINX shared-memory zone; an anonymous shared mapping in
//! the tests). Every reference inside the block is an offset from its start,
//! so it does not matter where each process maps it.
//!
//! Layout (little structures 8-byte aligned, offsets `u32`):
//!
//! ```text
//! Header   magic, length, lock word, undo journal, allocator free list, CAS counter,
//!          DATA_BUCKETS hash buckets, MAX_QUEUES queue slots, MAX_METRICS metric slots,
//!          MAX_VMS usage records (bytes, metrics and queues of each vm_id)
//! heap     blocks [size u32 | tag u32 | payload]; free blocks in an address-ordered
//!          list (first fit, split from the end, coalesced on free)
//! ```
//!
//! - shared data: entries `[next hash cas vm_len key_len val_len | vm_id key value]`
//!   chained per bucket; a `set` writes a new entry and frees the old one.
//! - queues: `[vm_len name_len owner_pid owner_root pending head tail items tag max_len
//!   max_bytes usage | vm_id name]` and items `[next len | data]`; the queue id is
//!   `tag << 16 | slot + 1` with a random tag (see `shared`).
//! - metrics: `[kind name_len tag owner value count sum buckets[13] | name]`, updated
//!   with atomic instructions without the lock; the id is `tag << 16 | slot + 1`, so a
//!   name defined in one process has the same id in all.
//! - usage: `[held metrics queues vm_len | vm_id]` per vm_id: the bytes it holds
//!   (keys, values, queued items), the metrics it defined and the queues it registered,
//!   counted here so that caps hold for all processes together.
//!
//! Locking: one lock for the whole block ([`ZoneLock`]): the NGINX zone's
//! `ngx_shmtx_t` (which the master force-unlocks when a worker dies holding it),
//! or [`SpinLock`] on the header's word. Critical sections copy bytes only.
//!
//! Crash consistency: a process can die at any instruction inside the lock
//! (nginx's master then releases the lock), so every structural word an update
//! changes is first recorded, with its old value, in the header's undo journal
//! ([`Tx`]); the update commits by emptying the journal. Whoever takes the lock
//! next and finds a non-empty journal restores the old values (newest first,
//! which may be repeated if it dies too), checks the whole block
//! ([`ShmStore::verify`]) and logs what happened at critical level. Bytes copied
//! into a block are never journaled: they only go into blocks allocated by the
//! same update, which the undo frees again. Nothing read from the block is
//! trusted: every offset and length is checked against the block and against
//! the heap block it points into, and every walk is bounded by the number of
//! blocks the heap can hold. Damage found that way (or by the check after an
//! undo) rebuilds the content empty with a critical log line: shared data,
//! queued items and metric values are lost; the queues and metrics running
//! processes registered are re-created under the same ids when each of them
//! next takes the lock.
//!
//! Queue notification: `enqueue` runs the owner's `on_queue_ready` at once in
//! the enqueuing process when that process registered the queue itself (with
//! one configuration every worker registers the queues of its plugins, so this
//! is the usual path). Otherwise it flags the queue and bumps the header's
//! notification sequence; the registering process sees it in [`ShmStore::poll`]
//! (NGINX: a timer every `POLL_INTERVAL`) and notifies its own root context.
//!
//! A full block answers [`SharedError::Full`] (the hostcalls turn it into the
//! status the SDKs accept, as for a cap) and is logged (at most once a second
//! per process).

use std::collections::{HashMap, HashSet};
use std::mem::offset_of;
use std::ptr;
use std::sync::atomic::{compiler_fence, AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::abi::{LogLevel, MetricType};
use crate::metrics::{MetricSnapshot, MetricStore, HISTOGRAM_BOUNDS};
use crate::shared::{make_id, random_tag, split_id, QueueLimits, QueueOwner, QueueStore, SharedDataStore, SharedError, MAX_QUEUES_PER_VM};

const MAGIC: u64 = 0x5057_5348_4d30_3032; // "PWSHM002": the layout version
pub const DATA_BUCKETS: usize = 1024;
pub const MAX_QUEUES: usize = 1024;
pub const MAX_METRICS: usize = 1024;
/// vm_ids with shared data, queues or metrics in one block.
pub const MAX_VMS: usize = 256;
/// Words one update may change (the largest, a `set` that creates its vm_id's
/// usage record and replaces a value, changes about 20).
const JOURNAL_CAP: usize = 64;
/// How often an NGINX worker looks for queue notifications from other workers.
pub const POLL_INTERVAL: Duration = Duration::from_millis(10);

const FREE: u32 = 0x4652_4545;
const USED: u32 = 0x5553_4544;
const BLOCK_HEADER: u32 = 8;
const MIN_BLOCK: u32 = 16;

#[repr(C)]
struct Header {
    magic: AtomicU64,
    notify_seq: AtomicU64,
    len: AtomicU32,
    heap_start: AtomicU32,
    spin: AtomicU32,
    /// Undo entries in use: non-zero while an update runs, or after its process died.
    journal_len: AtomicU32,
    /// The process whose update the journal holds (for the log line).
    journal_pid: AtomicU32,
    /// Non-zero while the content is rebuilt (a rebuild cut short is redone).
    rebuilding: AtomicU32,
    /// Bumped by every rebuild: processes re-create their queues and metrics.
    epoch: AtomicU32,
    // From here on: structural words, changed only through the journal.
    free_head: AtomicU32,
    next_cas: AtomicU32,
    queue_count: AtomicU32,
    metric_count: AtomicU32,
    vm_count: AtomicU32,
    journal: [[AtomicU32; 2]; JOURNAL_CAP],
    buckets: [AtomicU32; DATA_BUCKETS],
    queues: [AtomicU32; MAX_QUEUES],
    metrics: [AtomicU32; MAX_METRICS],
    vms: [AtomicU32; MAX_VMS],
}

const HEAP_START: u32 = align8(std::mem::size_of::<Header>()) as u32;
const OFF_FREE_HEAD: u32 = offset_of!(Header, free_head) as u32;
const OFF_NEXT_CAS: u32 = offset_of!(Header, next_cas) as u32;
const OFF_QUEUE_COUNT: u32 = offset_of!(Header, queue_count) as u32;
const OFF_METRIC_COUNT: u32 = offset_of!(Header, metric_count) as u32;
const OFF_VM_COUNT: u32 = offset_of!(Header, vm_count) as u32;
const OFF_JOURNAL: u32 = offset_of!(Header, journal) as u32;
const OFF_BUCKETS: u32 = offset_of!(Header, buckets) as u32;
const OFF_QUEUES: u32 = offset_of!(Header, queues) as u32;
const OFF_METRICS: u32 = offset_of!(Header, metrics) as u32;
const OFF_VMS: u32 = offset_of!(Header, vms) as u32;

/// The smallest block that still has room for a few entries.
pub const MIN_SIZE: usize = std::mem::size_of::<Header>() + 4096;

/// The lock of the whole block; it must exclude other processes.
pub trait ZoneLock: Send + Sync {
    fn lock(&self);
    fn unlock(&self);
}

/// A memory block shared by processes, formatted by [`ShmRegion::format`].
#[derive(Clone, Copy)]
pub struct ShmRegion {
    base: *mut u8,
    len: usize,
}

// SAFETY: the region is plain shared memory; every access goes through
// atomics or happens under the zone lock, and is bounds-checked.
unsafe impl Send for ShmRegion {}
// SAFETY: as above.
unsafe impl Sync for ShmRegion {}

#[derive(Debug, thiserror::Error)]
pub enum RegionError {
    #[error("the shared memory zone has {0} bytes; at least {MIN_SIZE} are needed")]
    TooSmall(usize),
    #[error("the shared memory zone is at most 4 GiB")]
    TooLarge,
    #[error("the shared memory zone is not 8-byte aligned")]
    Misaligned,
    #[error("the shared memory zone holds another layout")]
    Foreign,
}

/// Damage found in the block: what, for the critical log line.
#[derive(Debug)]
struct Corrupt(String);

fn corrupt<T>(what: impl Into<String>) -> Result<T, Corrupt> {
    Err(Corrupt(what.into()))
}

/// Why an update stopped: a refusal for the caller, or damage to repair.
enum Fail {
    Refused(SharedError),
    Corrupt(String),
}

impl From<Corrupt> for Fail {
    fn from(c: Corrupt) -> Fail {
        Fail::Corrupt(c.0)
    }
}

impl From<SharedError> for Fail {
    fn from(e: SharedError) -> Fail {
        Fail::Refused(e)
    }
}

const fn align8(n: usize) -> usize {
    (n + 7) & !7
}

/// Test-only fault injection: the process dies (`_exit`) at the n-th point an
/// update, an undo or a rebuild passes, as a worker killed there would.
#[cfg(test)]
mod crash {
    use std::cell::Cell;
    thread_local! {
        static AT: Cell<u64> = const { Cell::new(0) };
        static SEEN: Cell<u64> = const { Cell::new(0) };
    }
    pub fn arm(n: u64) {
        AT.with(|a| a.set(n));
        SEEN.with(|s| s.set(0));
    }
    pub fn point() {
        let at = AT.with(|a| a.get());
        if at == 0 {
            return;
        }
        let seen = SEEN.with(|s| {
            s.set(s.get() + 1);
            s.get()
        });
        if seen == at {
            // SAFETY: leaves the forked test child at once, as a crash would.
            unsafe { libc::_exit(77) };
        }
    }
}

#[inline(always)]
fn crash_point() {
    #[cfg(test)]
    crash::point();
}

impl ShmRegion {
    fn check_shape(base: *mut u8, len: usize) -> Result<(), RegionError> {
        if len < MIN_SIZE {
            return Err(RegionError::TooSmall(len));
        }
        if len > u32::MAX as usize {
            return Err(RegionError::TooLarge);
        }
        if base as usize % 8 != 0 {
            return Err(RegionError::Misaligned);
        }
        Ok(())
    }

    /// Formats `len` bytes at `base` (the previous content is discarded).
    ///
    /// # Safety
    /// `base..base+len` is writable memory that stays mapped as long as the
    /// region (and its copies) is used, and no process uses it during the call.
    pub unsafe fn format(base: *mut u8, len: usize) -> Result<ShmRegion, RegionError> {
        Self::check_shape(base, len)?;
        // SAFETY: the caller owns the memory exclusively during the call; an
        // all-zero Header is valid (atomics), written before the heap block.
        unsafe {
            ptr::write_bytes(base, 0, std::mem::size_of::<Header>());
        }
        let r = ShmRegion { base, len };
        r.reset_content();
        r.header().magic.store(MAGIC, Ordering::Release);
        Ok(r)
    }

    /// Uses a block formatted before (by this or another process).
    ///
    /// # Safety
    /// As for [`ShmRegion::format`], except that others may use it concurrently.
    pub unsafe fn attach(base: *mut u8, len: usize) -> Result<ShmRegion, RegionError> {
        Self::check_shape(base, len)?;
        let r = ShmRegion { base, len };
        if r.header().magic.load(Ordering::Acquire) != MAGIC || r.header().len.load(Ordering::Relaxed) as usize != len {
            return Err(RegionError::Foreign);
        }
        Ok(r)
    }

    fn header(&self) -> &Header {
        // SAFETY: the block starts with a Header (size checked), aligned to 8,
        // made of atomics only, so shared references are sound.
        unsafe { &*(self.base as *const Header) }
    }

    /// One past the heap's last byte (from our own length, never the block's word).
    fn heap_end(&self) -> u32 {
        HEAP_START + ((self.len as u32 - HEAP_START) / 8) * 8
    }

    /// More blocks than this cannot exist: a longer walk is a cycle.
    fn max_blocks(&self) -> usize {
        (self.heap_end() - HEAP_START) as usize / MIN_BLOCK as usize
    }

    /// Empties everything but the lock word and the notification sequence:
    /// one free block, no entries, no queues, no metrics. The slot counts are
    /// kept (clamped), so slots of queues and metrics that processes re-create
    /// are not handed to new ones meanwhile.
    fn reset_content(&self) {
        let h = self.header();
        for a in h.buckets.iter().chain(&h.queues).chain(&h.metrics).chain(&h.vms) {
            a.store(0, Ordering::Relaxed);
        }
        h.queue_count.store(h.queue_count.load(Ordering::Relaxed).min(MAX_QUEUES as u32), Ordering::Relaxed);
        h.metric_count.store(h.metric_count.load(Ordering::Relaxed).min(MAX_METRICS as u32), Ordering::Relaxed);
        h.vm_count.store(0, Ordering::Relaxed);
        h.len.store(self.len as u32, Ordering::Relaxed);
        h.heap_start.store(HEAP_START, Ordering::Relaxed);
        crash_point();
        let heap = HEAP_START;
        let _ = self.store(heap, self.heap_end() - heap);
        let _ = self.store(heap + 4, FREE);
        let _ = self.store(heap + 8, 0);
        h.free_head.store(heap, Ordering::Relaxed);
        h.journal_len.store(0, Ordering::Release);
    }

    // ------------------------------------------------------------ checked access

    fn word(&self, off: u32) -> Result<&AtomicU32, Corrupt> {
        if off % 4 != 0 || off as usize + 4 > self.len {
            return corrupt(format!("offset {off} is outside the zone"));
        }
        // SAFETY: in bounds and 4-aligned (checked; the base is 8-aligned).
        Ok(unsafe { &*(self.base.add(off as usize) as *const AtomicU32) })
    }

    fn load(&self, off: u32) -> Result<u32, Corrupt> {
        Ok(self.word(off)?.load(Ordering::Acquire))
    }

    /// A write no undo needs: into a block allocated by the running update
    /// (past its first word, which the allocator journals), or while formatting.
    fn store(&self, off: u32, v: u32) -> Result<(), Corrupt> {
        self.word(off)?.store(v, Ordering::Release);
        Ok(())
    }

    fn atomic_u64(&self, off: u32) -> Result<&AtomicU64, Corrupt> {
        if off % 8 != 0 || off as usize + 8 > self.len {
            return corrupt(format!("offset {off} is outside the zone"));
        }
        // SAFETY: in bounds and 8-aligned (checked; the base is 8-aligned).
        Ok(unsafe { &*(self.base.add(off as usize) as *const AtomicU64) })
    }

    fn range(&self, off: u32, n: usize) -> Result<*mut u8, Corrupt> {
        match (off as usize).checked_add(n) {
            Some(end) if off >= HEAP_START && end <= self.heap_end() as usize => {
                // SAFETY: off + n is within the heap (checked).
                Ok(unsafe { self.base.add(off as usize) })
            }
            _ => corrupt(format!("{n} bytes at {off} are outside the heap")),
        }
    }

    fn bytes(&self, off: u32, n: usize) -> Result<Vec<u8>, Corrupt> {
        let p = self.range(off, n)?;
        // SAFETY: in bounds (checked); copied under the lock, or from a record
        // no one writes once it is published (metric names).
        Ok(unsafe { std::slice::from_raw_parts(p, n) }.to_vec())
    }

    fn eq_bytes(&self, off: u32, want: &[u8]) -> Result<bool, Corrupt> {
        let p = self.range(off, want.len())?;
        // SAFETY: in bounds (checked); compared under the lock.
        Ok((unsafe { std::slice::from_raw_parts(p, want.len()) }) == want)
    }

    fn put_bytes(&self, off: u32, data: &[u8]) -> Result<(), Corrupt> {
        let p = self.range(off, data.len())?;
        let half = data.len() / 2;
        // SAFETY: in bounds (checked); a block the running update allocated, under the lock.
        unsafe { ptr::copy_nonoverlapping(data.as_ptr(), p, half) };
        crash_point();
        // SAFETY: as above, the rest.
        unsafe { ptr::copy_nonoverlapping(data.as_ptr().add(half), p.add(half), data.len() - half) };
        Ok(())
    }

    /// The heap block at `b`: its size and tag, checked to lie in the heap.
    fn block(&self, b: u32) -> Result<(u32, u32), Corrupt> {
        if b < HEAP_START || b % 8 != 0 || b as u64 + BLOCK_HEADER as u64 > self.heap_end() as u64 {
            return corrupt(format!("block {b} is outside the heap"));
        }
        let (size, tag) = (self.load(b)?, self.load(b + 4)?);
        if size < MIN_BLOCK || size % 8 != 0 || b as u64 + size as u64 > self.heap_end() as u64 {
            return corrupt(format!("block {b} has a bad size {size}"));
        }
        Ok((size, tag))
    }

    /// Checks that the record at payload offset `p` is a used block with room
    /// for `need` bytes (so lengths read from it cannot point elsewhere).
    fn record(&self, p: u32, need: u64) -> Result<(), Corrupt> {
        let b = p.checked_sub(BLOCK_HEADER).ok_or_else(|| Corrupt(format!("record {p} is outside the heap")))?;
        let (size, tag) = self.block(b)?;
        if tag != USED {
            return corrupt(format!("record {p} is not in a used block"));
        }
        if need > (size - BLOCK_HEADER) as u64 {
            return corrupt(format!("record {p} claims {need} bytes in a block of {size}"));
        }
        Ok(())
    }

    // ------------------------------------------------------------ the undo journal

    /// The words an update may change: the header's structural words and the heap.
    fn journalable(&self, off: u32) -> bool {
        let header = (OFF_FREE_HEAD..OFF_JOURNAL).contains(&off) || (OFF_BUCKETS..OFF_VMS + 4 * MAX_VMS as u32).contains(&off);
        off % 4 == 0 && (header || (HEAP_START..self.heap_end()).contains(&off))
    }

    /// Restores the journal's old values, newest first, and empties it.
    /// Repeating it after a crash in the middle gives the same result. False
    /// when an entry was not a word an update may change (a damaged journal).
    fn rollback(&self) -> bool {
        let h = self.header();
        let n = h.journal_len.load(Ordering::Acquire) as usize;
        let mut complete = n <= JOURNAL_CAP;
        for e in h.journal[..n.min(JOURNAL_CAP)].iter().rev() {
            let (off, old) = (e[0].load(Ordering::Relaxed), e[1].load(Ordering::Relaxed));
            match self.word(off) {
                Ok(w) if self.journalable(off) => w.store(old, Ordering::Release),
                _ => complete = false,
            }
            crash_point();
        }
        compiler_fence(Ordering::SeqCst);
        h.journal_len.store(0, Ordering::Release);
        complete
    }

    /// Bytes in free blocks (for tests and diagnostics; takes no lock).
    pub fn free_bytes(&self) -> usize {
        let mut total = 0usize;
        let mut cur = self.header().free_head.load(Ordering::Relaxed);
        for _ in 0..self.max_blocks() {
            if cur == 0 {
                break;
            }
            let Ok((size, _)) = self.block(cur) else { break };
            total += size as usize;
            cur = self.load(cur + 8).unwrap_or(0);
        }
        total
    }

    /// A spin lock on the header's lock word (for users without a lock of
    /// their own, e.g. the tests).
    pub fn spin_lock(&self) -> SpinLock {
        SpinLock { region: *self }
    }
}

/// One update: every structural word it changes is journaled first. Dropped
/// without [`Tx::commit`] (a refusal, damage found, a panic), it undoes itself.
struct Tx<'a> {
    r: &'a ShmRegion,
    committed: bool,
}

impl<'a> Tx<'a> {
    fn begin(r: &'a ShmRegion, pid: i32) -> Tx<'a> {
        r.header().journal_pid.store(pid as u32, Ordering::Relaxed);
        Tx { r, committed: false }
    }

    /// Sets a structural word, journaling its old value first. The order of
    /// the three stores is what makes a crash between any two of them safe:
    /// an entry not yet counted is ignored, a counted one restores a value
    /// that may not have changed yet.
    fn set(&self, off: u32, v: u32) -> Result<(), Fail> {
        if !self.r.journalable(off) {
            return Err(Fail::Corrupt(format!("an update would write offset {off}")));
        }
        let w = self.r.word(off)?;
        let h = self.r.header();
        let n = h.journal_len.load(Ordering::Relaxed) as usize;
        if n >= JOURNAL_CAP {
            return Err(Fail::Refused(SharedError::Full("an update of the shared memory zone was too large".into())));
        }
        h.journal[n][0].store(off, Ordering::Relaxed);
        h.journal[n][1].store(w.load(Ordering::Relaxed), Ordering::Relaxed);
        crash_point();
        compiler_fence(Ordering::SeqCst);
        h.journal_len.store(n as u32 + 1, Ordering::Release);
        crash_point();
        compiler_fence(Ordering::SeqCst);
        w.store(v, Ordering::Release);
        crash_point();
        Ok(())
    }

    fn commit(mut self) {
        compiler_fence(Ordering::SeqCst);
        self.r.header().journal_len.store(0, Ordering::Release);
        self.committed = true;
    }

    // ------------------------------------------------------------ allocator

    /// A payload of at least `n` bytes (8-aligned), or None when full.
    fn alloc(&self, n: usize) -> Result<Option<u32>, Fail> {
        let r = self.r;
        let Some(need) = n.checked_add(BLOCK_HEADER as usize).map(|n| align8(n).max(MIN_BLOCK as usize)) else { return Ok(None) };
        let Ok(need) = u32::try_from(need) else { return Ok(None) };
        let mut link = OFF_FREE_HEAD;
        let mut cur = r.load(link)?;
        let mut steps = 0;
        while cur != 0 {
            steps += 1;
            let (size, tag) = r.block(cur)?;
            if tag != FREE || steps > r.max_blocks() {
                return Err(Fail::Corrupt(format!("the free list is damaged at block {cur}")));
            }
            let next = r.load(cur + 8)?;
            if next != 0 && next <= cur {
                return Err(Fail::Corrupt(format!("the free list is out of order at block {cur}")));
            }
            if size >= need {
                if size - need >= MIN_BLOCK {
                    self.set(cur, size - need)?;
                    let b = cur + size - need;
                    self.set(b, need)?;
                    self.set(b + 4, USED)?;
                    self.set(b + 8, 0)?;
                    return Ok(Some(b + BLOCK_HEADER));
                }
                self.set(link, next)?;
                self.set(cur + 4, USED)?;
                // The first payload word was the free list's link: journaled,
                // so that an undo puts the block back as it was.
                self.set(cur + 8, 0)?;
                return Ok(Some(cur + BLOCK_HEADER));
            }
            link = cur + 8;
            cur = next;
        }
        Ok(None)
    }

    fn free(&self, payload: u32) -> Result<(), Fail> {
        let r = self.r;
        let b = payload.wrapping_sub(BLOCK_HEADER);
        let (mut size, tag) = r.block(b)?;
        if tag != USED {
            return Err(Fail::Corrupt(format!("block {b} is freed twice")));
        }
        let mut prev = 0u32;
        let mut next = r.load(OFF_FREE_HEAD)?;
        let mut steps = 0;
        while next != 0 && next < b {
            steps += 1;
            if steps > r.max_blocks() || next <= prev {
                return Err(Fail::Corrupt(format!("the free list is damaged at block {next}")));
            }
            prev = next;
            next = r.load(next + 8)?;
        }
        if next == b {
            return Err(Fail::Corrupt(format!("used block {b} is in the free list")));
        }
        self.set(b + 4, FREE)?;
        if next != 0 && b + size == next {
            let (next_size, _) = r.block(next)?;
            self.set(b, size + next_size)?;
            self.set(b + 8, r.load(next + 8)?)?;
            self.set(next + 4, 0)?;
            size += next_size;
        } else {
            self.set(b + 8, next)?;
        }
        if prev == 0 {
            self.set(OFF_FREE_HEAD, b)?;
        } else {
            let (prev_size, _) = r.block(prev)?;
            if prev + prev_size == b {
                self.set(prev, prev_size + size)?;
                self.set(prev + 8, r.load(b + 8)?)?;
                self.set(b + 4, 0)?;
            } else {
                self.set(prev + 8, b)?;
            }
        }
        Ok(())
    }
}

impl Drop for Tx<'_> {
    fn drop(&mut self) {
        if !self.committed {
            self.r.rollback();
        }
    }
}

/// A lock on the header's word: holds the owner's pid; a waiter takes it over
/// when that process no longer exists.
pub struct SpinLock {
    region: ShmRegion,
}

impl ZoneLock for SpinLock {
    fn lock(&self) {
        let word = &self.region.header().spin;
        // SAFETY: getpid has no preconditions.
        let me = unsafe { libc::getpid() } as u32;
        let mut spins = 0u32;
        loop {
            match word.compare_exchange_weak(0, me, Ordering::Acquire, Ordering::Relaxed) {
                Ok(_) => return,
                Err(holder) => {
                    spins += 1;
                    if spins % 1024 == 0 {
                        // SAFETY: kill with signal 0 only checks the process exists.
                        let gone = holder != 0 && holder != me && unsafe { libc::kill(holder as i32, 0) } != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
                        if gone && word.compare_exchange(holder, me, Ordering::Acquire, Ordering::Relaxed).is_ok() {
                            return;
                        }
                        std::thread::yield_now();
                    } else {
                        std::hint::spin_loop();
                    }
                }
            }
        }
    }

    fn unlock(&self) {
        self.region.header().spin.store(0, Ordering::Release);
    }
}

struct Guard<'a>(&'a dyn ZoneLock);

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        self.0.unlock();
    }
}

// Record layouts (payload offsets).
const D_NEXT: u32 = 0;
const D_HASH: u32 = 4;
const D_CAS: u32 = 8;
const D_VM: u32 = 12;
const D_KEY: u32 = 16;
const D_VAL: u32 = 20;
const D_BYTES: u32 = 24;

const Q_VM: u32 = 0;
const Q_NAME: u32 = 4;
const Q_PID: u32 = 8;
const Q_ROOT: u32 = 12;
const Q_PENDING: u32 = 16;
const Q_HEAD: u32 = 20;
const Q_TAIL: u32 = 24;
const Q_ITEMS: u32 = 28;
const Q_TAG: u32 = 32;
const Q_MAX_LEN: u32 = 36;
const Q_MAX_BYTES: u32 = 40;
const Q_USAGE: u32 = 44;
const Q_BYTES: u32 = 48;

const I_NEXT: u32 = 0;
const I_LEN: u32 = 4;
const I_BYTES: u32 = 8;

const M_KIND: u32 = 0;
const M_NAME: u32 = 4;
const M_TAG: u32 = 8;
const M_OWNER: u32 = 12;
const M_VALUE: u32 = 16;
const M_COUNT: u32 = 24;
const M_SUM: u32 = 32;
const M_BUCKETS: u32 = 40;
const M_BYTES: u32 = M_BUCKETS + 8 * (HISTOGRAM_BOUNDS.len() as u32 + 1);

const U_HELD: u32 = 0;
const U_METRICS: u32 = 4;
const U_QUEUES: u32 = 8;
const U_VM: u32 = 12;
const U_BYTES: u32 = 16;

fn hash(vm_id: &str, key: &[u8]) -> u32 {
    // FNV-1a over vm_id, a separator and the key: the same in every process.
    let mut h: u32 = 0x811c_9dc5;
    for b in vm_id.as_bytes().iter().chain(&[0xff]).chain(key) {
        h ^= *b as u32;
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

fn kind_code(kind: MetricType) -> u32 {
    match kind {
        MetricType::Counter => 0,
        MetricType::Gauge => 1,
        MetricType::Histogram => 2,
    }
}

fn kind_of(code: u32) -> Option<MetricType> {
    match code {
        0 => Some(MetricType::Counter),
        1 => Some(MetricType::Gauge),
        2 => Some(MetricType::Histogram),
        _ => None,
    }
}

fn u32_len(n: usize) -> Result<u32, Fail> {
    u32::try_from(n).map_err(|_| Fail::Refused(SharedError::Full(format!("{n} bytes do not fit in the shared memory zone"))))
}

/// A queue this process registered: who to notify here, and what to
/// re-create after a rebuild.
struct LocalQueue {
    vm_id: String,
    name: String,
    limits: QueueLimits,
    owner: QueueOwner,
}

/// A metric this process handed out an id for.
struct LocalMetric {
    kind: MetricType,
    name: String,
    vm_id: String,
}

#[derive(Default)]
struct Local {
    queues: HashMap<u32, LocalQueue>,
    metrics: HashMap<u32, LocalMetric>,
}

/// Shared data, queues and metrics of one process over a shared region.
pub struct ShmStore {
    region: ShmRegion,
    lock: Box<dyn ZoneLock>,
    pid: i32,
    local: Mutex<Local>,
    /// The last notification sequence [`ShmStore::poll`] looked at.
    seen_seq: AtomicU64,
    /// The rebuild epoch whose queues and metrics this process re-created.
    seen_epoch: AtomicU32,
    report: Box<dyn Fn(LogLevel, &str) + Send + Sync>,
    last_full_report: Mutex<Option<Instant>>,
}

impl ShmStore {
    /// `report` gets the store's log lines: a full region (error, at most once
    /// a second), an undone update or a rebuild (critical).
    pub fn new(region: ShmRegion, lock: Box<dyn ZoneLock>, report: Box<dyn Fn(LogLevel, &str) + Send + Sync>) -> ShmStore {
        ShmStore {
            region,
            lock,
            // SAFETY: getpid has no preconditions.
            pid: unsafe { libc::getpid() },
            local: Mutex::new(Local::default()),
            seen_seq: AtomicU64::new(u64::MAX),
            seen_epoch: AtomicU32::new(region.header().epoch.load(Ordering::Acquire)),
            report,
            last_full_report: Mutex::new(None),
        }
    }

    pub fn region(&self) -> &ShmRegion {
        &self.region
    }

    fn local(&self) -> std::sync::MutexGuard<'_, Local> {
        self.local.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes the lock and repairs what a process that died holding it left.
    fn locked(&self) -> Guard<'_> {
        self.lock.lock();
        let g = Guard(&*self.lock);
        self.recover();
        g
    }

    fn recover(&self) {
        let h = self.region.header();
        if h.rebuilding.load(Ordering::Acquire) != 0 {
            self.rebuild("a rebuild of the zone was cut short");
        } else if h.journal_len.load(Ordering::Acquire) != 0 {
            let pid = h.journal_pid.load(Ordering::Relaxed);
            let checked = if self.region.rollback() { self.check_all() } else { Err(Corrupt("its undo journal is damaged".into())) };
            match checked {
                Ok(()) => (self.report)(LogLevel::Critical, &format!("process {pid} died while updating the shared memory zone; its unfinished update was undone")),
                Err(c) => self.rebuild(&format!("process {pid} died while updating it, and after undoing that update: {}", c.0)),
            }
        }
        if h.epoch.load(Ordering::Acquire) != self.seen_epoch.load(Ordering::Relaxed) {
            self.restore_registrations();
        }
    }

    /// Checks the whole block (under the lock): every block, list, chain and
    /// count. For tests and after an undo.
    pub fn verify(&self) -> Result<(), String> {
        let _g = self.locked();
        self.check_all().map_err(|c| c.0)
    }

    /// Checks the block and rebuilds it when damaged (NGINX: each worker at start).
    pub fn check(&self) {
        let _g = self.locked();
        if let Err(c) = self.check_all() {
            self.rebuild(&c.0);
            self.restore_registrations();
        }
    }

    /// Empties the block's content (under the lock), logging why.
    fn rebuild(&self, why: &str) {
        let h = self.region.header();
        h.rebuilding.store(1, Ordering::Release);
        compiler_fence(Ordering::SeqCst);
        self.region.reset_content();
        h.epoch.store(h.epoch.load(Ordering::Relaxed).wrapping_add(1), Ordering::Release);
        compiler_fence(Ordering::SeqCst);
        h.rebuilding.store(0, Ordering::Release);
        (self.report)(
            LogLevel::Critical,
            &format!("the shared memory zone was damaged ({why}); it was rebuilt empty: shared data, queued items and metric values are lost, and the queues and metrics of running workers are re-created under their ids"),
        );
    }

    /// Re-creates (under the lock) the queues and metrics this process handed
    /// out ids for, in their slots, after a rebuild. A slot another process
    /// took meanwhile, or a name registered again elsewhere, is left alone
    /// (that id then answers NOT_FOUND).
    fn restore_registrations(&self) {
        let epoch = self.region.header().epoch.load(Ordering::Acquire);
        let local = self.local();
        for (&id, q) in &local.queues {
            let tx = Tx::begin(&self.region, self.pid);
            if self.restore_queue(&tx, id, q).is_ok() {
                tx.commit();
            }
        }
        for (&id, m) in &local.metrics {
            let tx = Tx::begin(&self.region, self.pid);
            if self.restore_metric(&tx, id, m).is_ok() {
                tx.commit();
            }
        }
        self.seen_epoch.store(epoch, Ordering::Relaxed);
    }

    fn restore_queue(&self, tx: &Tx, id: u32, q: &LocalQueue) -> Result<(), Fail> {
        let Some((slot, tag)) = split_id(id) else { return Ok(()) };
        if slot >= MAX_QUEUES || self.region.header().queues[slot].load(Ordering::Acquire) != 0 || self.find_queue(&q.vm_id, &q.name)?.is_some() {
            return Ok(());
        }
        let u = self.usage(tx, &q.vm_id)?;
        let rec = self.create_queue(tx, slot, tag, &q.vm_id, &q.name, q.limits, u)?;
        self.region.store(rec + Q_ROOT, q.owner.root_context_id)?;
        if slot as u32 >= self.region.header().queue_count.load(Ordering::Relaxed) {
            tx.set(OFF_QUEUE_COUNT, slot as u32 + 1)?;
        }
        Ok(())
    }

    fn restore_metric(&self, tx: &Tx, id: u32, m: &LocalMetric) -> Result<(), Fail> {
        let Some((slot, tag)) = split_id(id) else { return Ok(()) };
        if slot >= MAX_METRICS || self.region.header().metrics[slot].load(Ordering::Acquire) != 0 || self.find_metric(&m.name)?.is_some() {
            return Ok(());
        }
        let u = self.usage(tx, &m.vm_id)?;
        self.create_metric(tx, slot, tag, m.kind, &m.name, u)?;
        if slot as u32 >= self.region.header().metric_count.load(Ordering::Relaxed) {
            tx.set(OFF_METRIC_COUNT, slot as u32 + 1)?;
        }
        Ok(())
    }

    /// Runs one update under the lock: committed when it succeeds, undone
    /// when refused; damage found rebuilds the block and runs it again once.
    fn update<T>(&self, mut op: impl FnMut(&Tx) -> Result<T, Fail>) -> Result<T, SharedError> {
        let _g = self.locked();
        for _ in 0..2 {
            let tx = Tx::begin(&self.region, self.pid);
            match op(&tx) {
                Ok(v) => {
                    tx.commit();
                    return Ok(v);
                }
                Err(Fail::Refused(e)) => return Err(e),
                Err(Fail::Corrupt(why)) => {
                    drop(tx);
                    self.rebuild(&why);
                    self.restore_registrations();
                }
            }
        }
        Err(SharedError::Full("the shared memory zone is damaged".into()))
    }

    fn full(&self, what: &str, bytes: usize) -> Fail {
        let msg = format!(
            "the shared memory zone is full ({} bytes, {} free): {what} of {bytes} bytes refused; raise proxy_wasm_shm_size",
            self.region.len,
            self.region.free_bytes()
        );
        let mut last = self.last_full_report.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
            *last = Some(Instant::now());
            (self.report)(LogLevel::Error, &msg);
        }
        Fail::Refused(SharedError::Full(msg))
    }

    // ------------------------------------------------------------ usage per vm_id

    fn usage_vm_id(&self, u: u32) -> Result<Vec<u8>, Corrupt> {
        let r = &self.region;
        r.record(u, U_BYTES as u64)?;
        let vl = r.load(u + U_VM)?;
        r.record(u, U_BYTES as u64 + vl as u64)?;
        r.bytes(u + U_BYTES, vl as usize)
    }

    fn find_usage(&self, vm_id: &str) -> Result<Option<u32>, Corrupt> {
        let h = self.region.header();
        let n = h.vm_count.load(Ordering::Acquire) as usize;
        if n > MAX_VMS {
            return corrupt(format!("{n} usage records"));
        }
        for slot in &h.vms[..n] {
            let u = slot.load(Ordering::Acquire);
            if self.usage_vm_id(u)? == vm_id.as_bytes() {
                return Ok(Some(u));
            }
        }
        Ok(None)
    }

    /// The usage record of `vm_id`, created when missing.
    fn usage(&self, tx: &Tx, vm_id: &str) -> Result<u32, Fail> {
        if let Some(u) = self.find_usage(vm_id)? {
            return Ok(u);
        }
        let r = &self.region;
        let n = r.header().vm_count.load(Ordering::Acquire);
        let size = U_BYTES as usize + vm_id.len();
        if n as usize >= MAX_VMS {
            return Err(Fail::Refused(SharedError::Full(format!("the shared memory zone holds the shared state of {MAX_VMS} vm_ids, the most it may"))));
        }
        let Some(u) = tx.alloc(size)? else { return Err(self.full(&format!("the usage record of vm_id {vm_id:?}"), size)) };
        for (field, v) in [(U_HELD, 0), (U_METRICS, 0), (U_QUEUES, 0), (U_VM, u32_len(vm_id.len())?)] {
            r.store(u + field, v)?;
        }
        r.put_bytes(u + U_BYTES, vm_id.as_bytes())?;
        tx.set(OFF_VMS + 4 * n, u)?;
        tx.set(OFF_VM_COUNT, n + 1)?;
        Ok(u)
    }

    /// The bytes `vm_id` holds: keys and values, and items in its queues.
    pub fn held_bytes(&self, vm_id: &str) -> u64 {
        self.update(|_| Ok(match self.find_usage(vm_id)? {
            Some(u) => self.region.load(u + U_HELD)? as u64,
            None => 0,
        }))
        .unwrap_or(0)
    }

    // ------------------------------------------------------------ shared data

    /// The hash of (vm_id, key), the word that links its entry, and the entry.
    fn find_data(&self, vm_id: &str, key: &[u8]) -> Result<(u32, u32, Option<u32>), Corrupt> {
        let r = &self.region;
        let h = hash(vm_id, key);
        let bucket = (h as usize % DATA_BUCKETS) as u32;
        let mut link = OFF_BUCKETS + 4 * bucket;
        let mut cur = r.load(link)?;
        let mut steps = 0;
        while cur != 0 {
            steps += 1;
            if steps > r.max_blocks() {
                return corrupt(format!("shared data bucket {bucket} has a cycle"));
            }
            let (vl, kl, val) = self.data_lengths(cur)?;
            let eh = r.load(cur + D_HASH)?;
            if eh as usize % DATA_BUCKETS != bucket as usize {
                return corrupt(format!("shared data entry {cur} is in the wrong bucket"));
            }
            let _ = val;
            if eh == h && vl as usize == vm_id.len() && kl as usize == key.len() && r.eq_bytes(cur + D_BYTES, vm_id.as_bytes())? && r.eq_bytes(cur + D_BYTES + vl, key)? {
                return Ok((h, link, Some(cur)));
            }
            link = cur + D_NEXT;
            cur = r.load(link)?;
        }
        Ok((h, OFF_BUCKETS + 4 * bucket, None))
    }

    /// The vm_id, key and value lengths of an entry, checked to fit its block.
    fn data_lengths(&self, e: u32) -> Result<(u32, u32, u32), Corrupt> {
        let r = &self.region;
        r.record(e, D_BYTES as u64)?;
        let (vl, kl, val) = (r.load(e + D_VM)?, r.load(e + D_KEY)?, r.load(e + D_VAL)?);
        r.record(e, D_BYTES as u64 + vl as u64 + kl as u64 + val as u64)?;
        Ok((vl, kl, val))
    }

    fn set_tx(&self, tx: &Tx, vm_id: &str, key: &[u8], value: &[u8], cas: u32, max_bytes: u64) -> Result<(), Fail> {
        let r = &self.region;
        let (h, link, old) = self.find_data(vm_id, key)?;
        if cas != 0 {
            match old {
                Some(e) if r.load(e + D_CAS)? == cas => {}
                _ => return Err(Fail::Refused(SharedError::CasMismatch)),
            }
        }
        let new_bytes = (key.len() + value.len()) as u64;
        let old_bytes = match old {
            Some(e) => {
                let (_, kl, val) = self.data_lengths(e)?;
                kl as u64 + val as u64
            }
            None => 0,
        };
        let u = self.usage(tx, vm_id)?;
        let held = r.load(u + U_HELD)? as u64;
        let would_hold = (held + new_bytes).saturating_sub(old_bytes);
        if new_bytes > old_bytes && would_hold > max_bytes {
            return Err(Fail::Refused(SharedError::OverQuota { vm_id: vm_id.to_string(), would_hold, limit: max_bytes }));
        }
        let size = D_BYTES as usize + vm_id.len() + key.len() + value.len();
        if size > r.len {
            return Err(self.full("a shared data value", size));
        }
        let Some(new) = tx.alloc(size)? else { return Err(self.full("a shared data value", size)) };
        let token = r.header().next_cas.load(Ordering::Relaxed).wrapping_add(1).max(1);
        tx.set(OFF_NEXT_CAS, token)?;
        for (field, v) in [(D_HASH, h), (D_CAS, token), (D_VM, u32_len(vm_id.len())?), (D_KEY, u32_len(key.len())?), (D_VAL, u32_len(value.len())?)] {
            r.store(new + field, v)?;
        }
        r.put_bytes(new + D_BYTES, vm_id.as_bytes())?;
        r.put_bytes(new + D_BYTES + vm_id.len() as u32, key)?;
        r.put_bytes(new + D_BYTES + (vm_id.len() + key.len()) as u32, value)?;
        // The new entry takes the old one's place in the chain (or heads it).
        let next = match old {
            Some(e) => r.load(e + D_NEXT)?,
            None => r.load(link)?,
        };
        r.store(new + D_NEXT, next)?;
        tx.set(link, new)?;
        if let Some(e) = old {
            tx.free(e)?;
        }
        tx.set(u + U_HELD, u32::try_from(would_hold).map_err(|_| Fail::Corrupt("a usage count overflowed".into()))?)?;
        Ok(())
    }

    // ------------------------------------------------------------ queues

    /// The record of a queue id, if it names a live queue (no lock needed:
    /// records are only freed by a rebuild).
    fn queue(&self, queue_id: u32) -> Result<Option<u32>, Corrupt> {
        let r = &self.region;
        let h = r.header();
        let Some((slot, tag)) = split_id(queue_id) else { return Ok(None) };
        if slot >= MAX_QUEUES || slot as u32 >= h.queue_count.load(Ordering::Acquire) {
            return Ok(None);
        }
        let q = h.queues[slot].load(Ordering::Acquire);
        if q == 0 {
            return Ok(None);
        }
        self.queue_names(q)?;
        Ok((r.load(q + Q_TAG)? == tag).then_some(q))
    }

    /// The vm_id and name of a queue record, checked to fit its block.
    fn queue_names(&self, q: u32) -> Result<(Vec<u8>, Vec<u8>), Corrupt> {
        let r = &self.region;
        r.record(q, Q_BYTES as u64)?;
        let (vl, nl) = (r.load(q + Q_VM)?, r.load(q + Q_NAME)?);
        r.record(q, Q_BYTES as u64 + vl as u64 + nl as u64)?;
        Ok((r.bytes(q + Q_BYTES, vl as usize)?, r.bytes(q + Q_BYTES + vl, nl as usize)?))
    }

    fn find_queue(&self, vm_id: &str, name: &str) -> Result<Option<(u32, u32)>, Corrupt> {
        let h = self.region.header();
        let count = h.queue_count.load(Ordering::Acquire) as usize;
        if count > MAX_QUEUES {
            return corrupt(format!("{count} queue slots"));
        }
        for (slot, a) in h.queues[..count].iter().enumerate() {
            let q = a.load(Ordering::Acquire);
            if q == 0 {
                continue;
            }
            let (v, n) = self.queue_names(q)?;
            if v == vm_id.as_bytes() && n == name.as_bytes() {
                return Ok(Some((make_id(slot, self.region.load(q + Q_TAG)?), q)));
            }
        }
        Ok(None)
    }

    #[allow(clippy::too_many_arguments)]
    fn create_queue(&self, tx: &Tx, slot: usize, tag: u32, vm_id: &str, name: &str, limits: QueueLimits, u: u32) -> Result<u32, Fail> {
        let r = &self.region;
        let size = Q_BYTES as usize + vm_id.len() + name.len();
        let Some(q) = tx.alloc(size)? else { return Err(self.full("a new shared queue", size)) };
        let max_bytes = limits.max_bytes.min(u32::MAX as u64) as u32;
        let fields = [
            (Q_VM, u32_len(vm_id.len())?),
            (Q_NAME, u32_len(name.len())?),
            (Q_PID, self.pid as u32),
            (Q_ROOT, 0),
            (Q_PENDING, 0),
            (Q_HEAD, 0),
            (Q_TAIL, 0),
            (Q_ITEMS, 0),
            (Q_TAG, tag),
            (Q_MAX_LEN, limits.max_length),
            (Q_MAX_BYTES, max_bytes),
            (Q_USAGE, u),
        ];
        for (field, v) in fields {
            r.store(q + field, v)?;
        }
        r.put_bytes(q + Q_BYTES, vm_id.as_bytes())?;
        r.put_bytes(q + Q_BYTES + vm_id.len() as u32, name.as_bytes())?;
        tx.set(OFF_QUEUES + 4 * slot as u32, q)?;
        tx.set(u + U_QUEUES, r.load(u + U_QUEUES)? + 1)?;
        Ok(q)
    }

    /// The id and whether items wait (for a new registrant to be told).
    fn register_tx(&self, tx: &Tx, vm_id: &str, name: &str, root: u32, limits: QueueLimits) -> Result<(u32, bool), Fail> {
        let r = &self.region;
        let (id, q) = match self.find_queue(vm_id, name)? {
            Some((id, q)) => {
                tx.set(q + Q_PID, self.pid as u32)?;
                tx.set(q + Q_MAX_LEN, limits.max_length)?;
                tx.set(q + Q_MAX_BYTES, limits.max_bytes.min(u32::MAX as u64) as u32)?;
                (id, q)
            }
            None => {
                let u = self.usage(tx, vm_id)?;
                if r.load(u + U_QUEUES)? >= MAX_QUEUES_PER_VM {
                    return Err(Fail::Refused(SharedError::TooManyQueues { vm_id: vm_id.to_string() }));
                }
                let count = r.header().queue_count.load(Ordering::Acquire);
                if count as usize >= MAX_QUEUES {
                    let size = Q_BYTES as usize + vm_id.len() + name.len();
                    return Err(self.full(&format!("a new shared queue (the zone holds at most {MAX_QUEUES})"), size));
                }
                let tag = random_tag();
                let q = self.create_queue(tx, count as usize, tag, vm_id, name, limits, u)?;
                tx.set(OFF_QUEUE_COUNT, count + 1)?;
                (make_id(count as usize, tag), q)
            }
        };
        tx.set(q + Q_ROOT, root)?;
        Ok((id, r.load(q + Q_ITEMS)? > 0))
    }

    fn enqueue_tx(&self, tx: &Tx, queue_id: u32, data: &[u8]) -> Result<(), Fail> {
        let r = &self.region;
        let q = self.queue(queue_id)?.ok_or(SharedError::NotFound)?;
        let items = r.load(q + Q_ITEMS)?;
        if items >= r.load(q + Q_MAX_LEN)? {
            return Err(Fail::Refused(SharedError::QueueFull { waiting: items }));
        }
        let u = r.load(q + Q_USAGE)?;
        r.record(u, U_BYTES as u64)?;
        let would_hold = r.load(u + U_HELD)? as u64 + data.len() as u64;
        let limit = r.load(q + Q_MAX_BYTES)? as u64;
        if !data.is_empty() && would_hold > limit {
            let vm_id = String::from_utf8_lossy(&self.usage_vm_id(u)?).into_owned();
            return Err(Fail::Refused(SharedError::OverQuota { vm_id, would_hold, limit }));
        }
        let size = I_BYTES as usize + data.len();
        let Some(item) = tx.alloc(size)? else { return Err(self.full("a shared queue item", data.len())) };
        r.store(item + I_LEN, u32_len(data.len())?)?;
        r.put_bytes(item + I_BYTES, data)?;
        let tail = r.load(q + Q_TAIL)?;
        if tail == 0 {
            tx.set(q + Q_HEAD, item)?;
        } else {
            r.record(tail, I_BYTES as u64)?;
            tx.set(tail + I_NEXT, item)?;
        }
        tx.set(q + Q_TAIL, item)?;
        tx.set(q + Q_ITEMS, items + 1)?;
        tx.set(u + U_HELD, u32::try_from(would_hold).map_err(|_| Fail::Corrupt("a usage count overflowed".into()))?)?;
        Ok(())
    }

    fn dequeue_tx(&self, tx: &Tx, queue_id: u32) -> Result<Vec<u8>, Fail> {
        let r = &self.region;
        let q = self.queue(queue_id)?.ok_or(SharedError::NotFound)?;
        let head = r.load(q + Q_HEAD)?;
        if head == 0 {
            return Err(Fail::Refused(SharedError::Empty));
        }
        r.record(head, I_BYTES as u64)?;
        let len = r.load(head + I_LEN)?;
        r.record(head, I_BYTES as u64 + len as u64)?;
        let data = r.bytes(head + I_BYTES, len as usize)?;
        let next = r.load(head + I_NEXT)?;
        let items = r.load(q + Q_ITEMS)?.checked_sub(1).ok_or_else(|| Corrupt(format!("queue {q} has items but counts none")))?;
        let u = r.load(q + Q_USAGE)?;
        r.record(u, U_BYTES as u64)?;
        let held = r.load(u + U_HELD)?.checked_sub(len).ok_or_else(|| Corrupt(format!("usage record {u} counts fewer bytes than a queued item")))?;
        tx.set(q + Q_HEAD, next)?;
        if next == 0 {
            tx.set(q + Q_TAIL, 0)?;
        }
        tx.set(q + Q_ITEMS, items)?;
        tx.set(u + U_HELD, held)?;
        tx.free(head)?;
        Ok(data)
    }

    /// Queue notifications other processes left for this one: runs the
    /// registering root contexts' `on_queue_ready` (through their servers).
    /// Cheap when there is nothing new (one atomic load). Also re-creates this
    /// process's queues and metrics when another one rebuilt the block.
    pub fn poll(&self) {
        let h = self.region.header();
        if h.epoch.load(Ordering::Acquire) != self.seen_epoch.load(Ordering::Relaxed) {
            drop(self.locked());
        }
        let seq = h.notify_seq.load(Ordering::Acquire);
        if self.seen_seq.swap(seq, Ordering::AcqRel) == seq {
            return;
        }
        let local: Vec<(u32, QueueOwner)> = self.local().queues.iter().map(|(id, q)| (*id, q.owner.clone())).collect();
        for (id, owner) in local {
            // Without the lock: a damaged record is skipped here, and repaired
            // by the next update that meets it.
            let Ok(Some(q)) = self.queue(id) else { continue };
            if self.region.load(q + Q_PID).ok() != Some(self.pid as u32) {
                continue;
            }
            let Ok(pending) = self.region.word(q + Q_PENDING) else { continue };
            if pending.swap(0, Ordering::AcqRel) != 0 {
                if let Some(server) = owner.server.upgrade() {
                    server.notify_queue_ready(owner.root_context_id, id);
                }
            }
        }
    }

    /// The items waiting in a queue (for tests and diagnostics).
    pub fn queue_len(&self, queue_id: u32) -> Result<u32, SharedError> {
        self.update(|_| {
            let q = self.queue(queue_id)?.ok_or(SharedError::NotFound)?;
            Ok(self.region.load(q + Q_ITEMS)?)
        })
    }

    // ------------------------------------------------------------ metrics

    /// Brings this process's metrics back after another one rebuilt the block
    /// (one atomic load when nothing happened).
    fn catch_up(&self) {
        if self.region.header().epoch.load(Ordering::Acquire) != self.seen_epoch.load(Ordering::Relaxed) {
            drop(self.locked());
        }
    }

    /// The record and type of a metric id (no lock: metric records are only
    /// freed by a rebuild, and values are atomics).
    fn metric(&self, id: u32) -> Result<(u32, MetricType), SharedError> {
        self.catch_up();
        let r = &self.region;
        let h = r.header();
        let (slot, tag) = split_id(id).ok_or(SharedError::NotFound)?;
        if slot >= MAX_METRICS || slot as u32 >= h.metric_count.load(Ordering::Acquire) {
            return Err(SharedError::NotFound);
        }
        let m = h.metrics[slot].load(Ordering::Acquire);
        let valid = m != 0 && r.record(m, M_BYTES as u64).is_ok() && r.load(m + M_TAG).ok() == Some(tag);
        let kind = valid.then(|| r.load(m + M_KIND).ok().and_then(kind_of)).flatten().ok_or(SharedError::NotFound)?;
        Ok((m, kind))
    }

    fn metric_name(&self, m: u32) -> Result<Vec<u8>, Corrupt> {
        let r = &self.region;
        r.record(m, M_BYTES as u64)?;
        let nl = r.load(m + M_NAME)?;
        r.record(m, M_BYTES as u64 + nl as u64)?;
        r.bytes(m + M_BYTES, nl as usize)
    }

    /// The slot, record and kind of the metric named `name`.
    fn find_metric(&self, name: &str) -> Result<Option<(usize, u32, u32)>, Corrupt> {
        let h = self.region.header();
        let count = h.metric_count.load(Ordering::Acquire) as usize;
        if count > MAX_METRICS {
            return corrupt(format!("{count} metric slots"));
        }
        for (slot, a) in h.metrics[..count].iter().enumerate() {
            let m = a.load(Ordering::Acquire);
            if m != 0 && self.metric_name(m)? == name.as_bytes() {
                return Ok(Some((slot, m, self.region.load(m + M_KIND)?)));
            }
        }
        Ok(None)
    }

    fn create_metric(&self, tx: &Tx, slot: usize, tag: u32, kind: MetricType, name: &str, u: u32) -> Result<u32, Fail> {
        let r = &self.region;
        let size = M_BYTES as usize + name.len();
        let Some(m) = tx.alloc(size)? else { return Err(self.full("a new metric", size)) };
        r.put_bytes(m + 4, &vec![0u8; M_BYTES as usize - 4])?;
        for (field, v) in [(M_KIND, kind_code(kind)), (M_NAME, u32_len(name.len())?), (M_TAG, tag), (M_OWNER, u)] {
            r.store(m + field, v)?;
        }
        r.put_bytes(m + M_BYTES, name.as_bytes())?;
        tx.set(OFF_METRICS + 4 * slot as u32, m)?;
        tx.set(u + U_METRICS, r.load(u + U_METRICS)? + 1)?;
        Ok(m)
    }

    fn define_tx(&self, tx: &Tx, kind: MetricType, name: &str, vm_id: &str, max_metrics: u32) -> Result<u32, Fail> {
        let r = &self.region;
        if let Some((slot, m, k)) = self.find_metric(name)? {
            return if kind_of(k) == Some(kind) { Ok(make_id(slot, r.load(m + M_TAG)?)) } else { Err(Fail::Refused(SharedError::BadArgument)) };
        }
        let u = self.usage(tx, vm_id)?;
        if r.load(u + U_METRICS)? >= max_metrics {
            return Err(Fail::Refused(SharedError::TooManyMetrics { vm_id: vm_id.to_string(), limit: max_metrics }));
        }
        let count = r.header().metric_count.load(Ordering::Acquire);
        if count as usize >= MAX_METRICS {
            return Err(self.full(&format!("a new metric (the zone holds at most {MAX_METRICS})"), M_BYTES as usize + name.len()));
        }
        let tag = random_tag();
        self.create_metric(tx, count as usize, tag, kind, name, u)?;
        tx.set(OFF_METRIC_COUNT, count + 1)?;
        Ok(make_id(count as usize, tag))
    }

    // ------------------------------------------------------------ checking everything

    /// Every block, free list, chain, queue, metric and count (under the lock).
    fn check_all(&self) -> Result<(), Corrupt> {
        let r = &self.region;
        let h = r.header();
        if h.len.load(Ordering::Relaxed) as usize != r.len || h.heap_start.load(Ordering::Relaxed) != HEAP_START {
            return corrupt("the header's length or heap start changed");
        }
        // The heap is tiled by blocks.
        let mut blocks: HashMap<u32, (u32, u32)> = HashMap::new();
        let mut b = HEAP_START;
        while b < r.heap_end() {
            let (size, tag) = r.block(b)?;
            if tag != FREE && tag != USED {
                return corrupt(format!("block {b} has an unknown tag"));
            }
            blocks.insert(b, (size, tag));
            b += size;
        }
        if b != r.heap_end() {
            return corrupt("the blocks do not end where the heap ends");
        }
        // The free list holds every free block, in address order.
        let free = blocks.values().filter(|(_, t)| *t == FREE).count();
        let (mut cur, mut prev, mut n) = (h.free_head.load(Ordering::Relaxed), 0u32, 0usize);
        while cur != 0 {
            n += 1;
            if n > free || cur <= prev || blocks.get(&cur).map(|x| x.1) != Some(FREE) {
                return corrupt(format!("the free list is damaged at {cur}"));
            }
            prev = cur;
            cur = r.load(cur + 8)?;
        }
        if n != free {
            return corrupt("a free block is missing from the free list");
        }
        // Every used block belongs to exactly one record.
        let mut claimed: HashSet<u32> = HashSet::new();
        let mut claim = |p: u32, need: u64| -> Result<(), Corrupt> {
            r.record(p, need)?;
            if !blocks.contains_key(&(p - BLOCK_HEADER)) || !claimed.insert(p - BLOCK_HEADER) {
                return corrupt(format!("record {p} is not a block of its own"));
            }
            Ok(())
        };
        // Usage records, then what they count.
        let vm_count = h.vm_count.load(Ordering::Relaxed) as usize;
        if vm_count > MAX_VMS {
            return corrupt(format!("{vm_count} usage records"));
        }
        let mut usage: HashMap<u32, (Vec<u8>, u64, u32, u32)> = HashMap::new();
        let mut by_vm: HashMap<Vec<u8>, u32> = HashMap::new();
        for slot in &h.vms[..vm_count] {
            let u = slot.load(Ordering::Relaxed);
            let vm = self.usage_vm_id(u)?;
            claim(u, U_BYTES as u64 + vm.len() as u64)?;
            if by_vm.insert(vm.clone(), u).is_some() {
                return corrupt("two usage records for one vm_id");
            }
            usage.insert(u, (vm, 0, 0, 0));
        }
        for (bucket, a) in h.buckets.iter().enumerate() {
            let mut e = a.load(Ordering::Relaxed);
            while e != 0 {
                let (vl, kl, val) = self.data_lengths(e)?;
                claim(e, D_BYTES as u64 + vl as u64 + kl as u64 + val as u64)?;
                if r.load(e + D_HASH)? as usize % DATA_BUCKETS != bucket {
                    return corrupt(format!("shared data entry {e} is in the wrong bucket"));
                }
                let vm = r.bytes(e + D_BYTES, vl as usize)?;
                let u = by_vm.get(&vm).ok_or_else(|| Corrupt(format!("shared data entry {e} has no usage record")))?;
                if let Some(x) = usage.get_mut(u) {
                    x.1 += kl as u64 + val as u64;
                }
                e = r.load(e + D_NEXT)?;
            }
        }
        let queue_count = h.queue_count.load(Ordering::Relaxed) as usize;
        if queue_count > MAX_QUEUES {
            return corrupt(format!("{queue_count} queue slots"));
        }
        for a in &h.queues[..queue_count] {
            let q = a.load(Ordering::Relaxed);
            if q == 0 {
                continue;
            }
            let (vm, name) = self.queue_names(q)?;
            claim(q, Q_BYTES as u64 + vm.len() as u64 + name.len() as u64)?;
            let u = r.load(q + Q_USAGE)?;
            if by_vm.get(&vm) != Some(&u) || r.load(q + Q_TAG)? == 0 {
                return corrupt(format!("queue {q} has a bad usage record or tag"));
            }
            let (mut item, mut items, mut last, mut bytes) = (r.load(q + Q_HEAD)?, 0u32, 0u32, 0u64);
            while item != 0 {
                r.record(item, I_BYTES as u64)?;
                let len = r.load(item + I_LEN)?;
                claim(item, I_BYTES as u64 + len as u64)?;
                items += 1;
                bytes += len as u64;
                last = item;
                item = r.load(item + I_NEXT)?;
            }
            if items != r.load(q + Q_ITEMS)? || last != r.load(q + Q_TAIL)? {
                return corrupt(format!("queue {q} counts its items wrong"));
            }
            if let Some(x) = usage.get_mut(&u) {
                x.1 += bytes;
                x.3 += 1;
            }
        }
        let metric_count = h.metric_count.load(Ordering::Relaxed) as usize;
        if metric_count > MAX_METRICS {
            return corrupt(format!("{metric_count} metric slots"));
        }
        for a in &h.metrics[..metric_count] {
            let m = a.load(Ordering::Relaxed);
            if m == 0 {
                continue;
            }
            let name = self.metric_name(m)?;
            claim(m, M_BYTES as u64 + name.len() as u64)?;
            let u = r.load(m + M_OWNER)?;
            if kind_of(r.load(m + M_KIND)?).is_none() || !usage.contains_key(&u) {
                return corrupt(format!("metric {m} has a bad type or usage record"));
            }
            if let Some(x) = usage.get_mut(&u) {
                x.2 += 1;
            }
        }
        for (u, (_, bytes, metrics, queues)) in &usage {
            if (r.load(u + U_HELD)? as u64, r.load(u + U_METRICS)?, r.load(u + U_QUEUES)?) != (*bytes, *metrics, *queues) {
                return corrupt(format!("usage record {u} counts wrong"));
            }
        }
        let used = blocks.values().filter(|(_, t)| *t == USED).count();
        if used != claimed.len() {
            return corrupt(format!("{} used blocks belong to nothing", used - claimed.len()));
        }
        Ok(())
    }
}

impl SharedDataStore for ShmStore {
    fn get(&self, vm_id: &str, key: &[u8]) -> Option<(Vec<u8>, u32)> {
        let r = &self.region;
        self.update(|_| {
            let Some(e) = self.find_data(vm_id, key)?.2 else { return Ok(None) };
            let (vl, kl, val) = self.data_lengths(e)?;
            Ok(Some((r.bytes(e + D_BYTES + vl + kl, val as usize)?, r.load(e + D_CAS)?)))
        })
        .ok()
        .flatten()
    }

    fn set_within(&self, vm_id: &str, key: &[u8], value: &[u8], cas: u32, max_bytes: u64) -> Result<(), SharedError> {
        self.update(|tx| self.set_tx(tx, vm_id, key, value, cas, max_bytes))
    }
}

impl QueueStore for ShmStore {
    fn register(&self, vm_id: &str, name: &str, owner: QueueOwner, limits: QueueLimits) -> Result<u32, SharedError> {
        let (id, has_items) = self.update(|tx| self.register_tx(tx, vm_id, name, owner.root_context_id, limits))?;
        self.local().queues.insert(id, LocalQueue { vm_id: vm_id.to_string(), name: name.to_string(), limits, owner: owner.clone() });
        // Items left by a registrant that went away (a worker replaced by a
        // reload) are delivered to the new one.
        if has_items {
            if let Some(server) = owner.server.upgrade() {
                server.notify_queue_ready(owner.root_context_id, id);
            }
        }
        Ok(id)
    }

    fn resolve(&self, vm_id: &str, name: &str) -> Option<u32> {
        self.update(|_| Ok(self.find_queue(vm_id, name)?.map(|(id, _)| id))).ok().flatten()
    }

    fn queue_vm_id(&self, queue_id: u32) -> Option<String> {
        self.update(|_| match self.queue(queue_id)? {
            Some(q) => Ok(Some(String::from_utf8_lossy(&self.queue_names(q)?.0).into_owned())),
            None => Ok(None),
        })
        .ok()
        .flatten()
    }

    fn enqueue(&self, queue_id: u32, data: &[u8]) -> Result<(), SharedError> {
        self.update(|tx| self.enqueue_tx(tx, queue_id, data))?;
        // Notify outside the lock: the server may take its own locks.
        let local = self.local().queues.get(&queue_id).map(|q| q.owner.clone());
        if let Some(owner) = local {
            if let Some(server) = owner.server.upgrade() {
                server.notify_queue_ready(owner.root_context_id, queue_id);
                return Ok(());
            }
        }
        // The registrant lives in another process: flag the queue for its poll.
        if let Ok(Some(q)) = self.queue(queue_id) {
            if let Ok(pending) = self.region.word(q + Q_PENDING) {
                pending.store(1, Ordering::Release);
            }
        }
        self.region.header().notify_seq.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }

    fn dequeue(&self, queue_id: u32) -> Result<Vec<u8>, SharedError> {
        self.update(|tx| self.dequeue_tx(tx, queue_id))
    }
}

impl MetricStore for ShmStore {
    fn define_within(&self, kind: MetricType, name: &str, vm_id: &str, max_metrics: u32) -> Result<u32, SharedError> {
        if name.is_empty() {
            return Err(SharedError::BadArgument);
        }
        let id = self.update(|tx| self.define_tx(tx, kind, name, vm_id, max_metrics))?;
        self.local().metrics.insert(id, LocalMetric { kind, name: name.to_string(), vm_id: vm_id.to_string() });
        Ok(id)
    }

    fn increment(&self, id: u32, delta: i64) -> Result<(), crate::abi::Status> {
        use crate::abi::Status;
        let (m, kind) = self.metric(id).map_err(|e| e.status())?;
        match kind {
            MetricType::Counter if delta < 0 => Err(Status::BadArgument),
            MetricType::Counter | MetricType::Gauge => {
                let v = self.region.atomic_u64(m + M_VALUE).map_err(|_| Status::NotFound)?;
                // The i64 value lives in a u64 cell: wrapping addition is the same.
                v.fetch_add(delta as u64, Ordering::Relaxed);
                Ok(())
            }
            MetricType::Histogram => Err(Status::BadArgument),
        }
    }

    fn record(&self, id: u32, value: u64) -> Result<(), crate::abi::Status> {
        use crate::abi::Status;
        let (m, kind) = self.metric(id).map_err(|e| e.status())?;
        let r = &self.region;
        let cell = |off: u32| r.atomic_u64(off).map_err(|_| Status::NotFound);
        match kind {
            MetricType::Counter | MetricType::Gauge => cell(m + M_VALUE)?.store(value, Ordering::Relaxed),
            MetricType::Histogram => {
                cell(m + M_COUNT)?.fetch_add(1, Ordering::Relaxed);
                cell(m + M_SUM)?.fetch_add(value, Ordering::Relaxed);
                let bucket = HISTOGRAM_BOUNDS.iter().position(|b| value <= *b).unwrap_or(HISTOGRAM_BOUNDS.len());
                cell(m + M_BUCKETS + 8 * bucket as u32)?.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(())
    }

    fn get(&self, id: u32) -> Result<i64, crate::abi::Status> {
        use crate::abi::Status;
        let (m, kind) = self.metric(id).map_err(|e| e.status())?;
        match kind {
            MetricType::Histogram => Err(Status::BadArgument),
            _ => Ok(self.region.atomic_u64(m + M_VALUE).map_err(|_| Status::NotFound)?.load(Ordering::Relaxed) as i64),
        }
    }

    fn snapshot(&self) -> Vec<MetricSnapshot> {
        self.catch_up();
        let r = &self.region;
        let h = r.header();
        let count = (h.metric_count.load(Ordering::Acquire) as usize).min(MAX_METRICS);
        let load = |off: u32| r.atomic_u64(off).map(|a| a.load(Ordering::Relaxed)).unwrap_or(0);
        (0..count)
            .filter_map(|slot| {
                let m = h.metrics[slot].load(Ordering::Acquire);
                let id = make_id(slot, r.load(m + M_TAG).ok()?);
                let (m, kind) = self.metric(id).ok()?;
                let name = String::from_utf8_lossy(&self.metric_name(m).ok()?).into_owned();
                let mut running = 0;
                let buckets = (0..=HISTOGRAM_BOUNDS.len() as u32)
                    .map(|b| {
                        running += load(m + M_BUCKETS + 8 * b);
                        running
                    })
                    .collect();
                Some(MetricSnapshot { id, name, kind, value: load(m + M_VALUE) as i64, count: load(m + M_COUNT), sum: load(m + M_SUM), buckets })
            })
            .collect()
    }
}

// An i64 value in an AtomicU64 cell: fetch_add with wrapping two's complement
// is the same operation as on an AtomicI64.
const _: () = assert!(std::mem::size_of::<AtomicI64>() == std::mem::size_of::<AtomicU64>());
const _: () = assert!(M_VALUE % 8 == 0 && HEAP_START % 8 == 0);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::abi::Status;
    use crate::host::ServerHost;
    use std::sync::Arc;

    /// An anonymous shared mapping: kept across fork, like an NGINX zone.
    fn shared_mapping(len: usize) -> *mut u8 {
        // SAFETY: a fresh anonymous mapping; never unmapped in the tests.
        let p = unsafe { libc::mmap(ptr::null_mut(), len, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED | libc::MAP_ANONYMOUS, -1, 0) };
        assert_ne!(p, libc::MAP_FAILED);
        p as *mut u8
    }

    type Reports = Arc<Mutex<Vec<String>>>;

    fn store(len: usize) -> (ShmStore, Reports) {
        let base = shared_mapping(len);
        // SAFETY: our fresh mapping.
        let region = unsafe { ShmRegion::format(base, len) }.unwrap();
        let reports = Arc::new(Mutex::new(Vec::new()));
        let r2 = reports.clone();
        (ShmStore::new(region, Box::new(region.spin_lock()), Box::new(move |_, m| r2.lock().unwrap().push(m.to_string()))), reports)
    }

    fn reattach(region: ShmRegion) -> (ShmStore, Reports) {
        // SAFETY: the mapping is inherited from the parent (or is our own).
        let region = unsafe { ShmRegion::attach(region.base, region.len) }.unwrap();
        let reports = Arc::new(Mutex::new(Vec::new()));
        let r2 = reports.clone();
        (ShmStore::new(region, Box::new(region.spin_lock()), Box::new(move |_, m| r2.lock().unwrap().push(m.to_string()))), reports)
    }

    /// Runs `f` in a forked child; its exit code (0: `f` returned true), or
    /// None when it did not finish within `timeout` (it is killed: a hang).
    fn in_child(timeout: Duration, f: impl FnOnce() -> bool) -> Option<i32> {
        // SAFETY: the child only uses the shared mapping and leaves with _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let code = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
                Ok(true) => 0,
                Ok(false) => 1,
                Err(_) => 2,
            };
            // SAFETY: leave the child without running the test harness.
            unsafe { libc::_exit(code) };
        }
        let deadline = Instant::now() + timeout;
        loop {
            let mut status = 0;
            // SAFETY: our own child.
            let done = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
            if done == pid {
                return Some(if libc::WIFEXITED(status) { libc::WEXITSTATUS(status) } else { 128 + libc::WTERMSIG(status) });
            }
            if Instant::now() > deadline {
                // SAFETY: our own child, which hangs.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                    libc::waitpid(pid, &mut status, 0);
                }
                return None;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    const CHILD: Duration = Duration::from_secs(20);

    #[derive(Default)]
    struct Recorder(Mutex<Vec<(u32, u32)>>);
    impl ServerHost for Recorder {
        fn log(&self, _: &crate::host::PluginRef, _: crate::abi::LogLevel, _: &str) {}
        fn log_level(&self) -> crate::abi::LogLevel {
            crate::abi::LogLevel::Info
        }
        fn dispatch_http_call(&self, _: u32, _: u32, _: crate::host::HttpCallRequest) -> Result<(), Status> {
            Err(Status::Unimplemented)
        }
        fn set_tick_period(&self, _: u32, _: Option<Duration>) {}
        fn notify_queue_ready(&self, root: u32, queue: u32) {
            self.0.lock().unwrap().push((root, queue));
        }
    }

    fn nobody() -> QueueOwner {
        let server: std::sync::Weak<dyn ServerHost> = std::sync::Weak::<Recorder>::new();
        QueueOwner { server, root_context_id: 1 }
    }

    #[test]
    fn cas_semantics_match_the_in_process_store() {
        let (s, _) = store(1 << 16);
        s.set("vm", b"k", b"1", 0).unwrap();
        let (v, cas) = SharedDataStore::get(&s, "vm", b"k").unwrap();
        assert_eq!(v, b"1");
        s.set("vm", b"k", b"2", cas).unwrap();
        assert_eq!(s.set("vm", b"k", b"3", cas), Err(Status::CasMismatch));
        s.set("vm", b"k", b"4", 0).unwrap();
        assert_eq!(SharedDataStore::get(&s, "vm", b"k").unwrap().0, b"4");
        assert!(SharedDataStore::get(&s, "other", b"k").is_none());
        assert_eq!(s.set("vm", b"new", b"x", 7), Err(Status::CasMismatch));
        s.set("vm", b"empty", b"", 0).unwrap();
        assert_eq!(SharedDataStore::get(&s, "vm", b"empty").unwrap().0, b"");
        s.verify().unwrap();
    }

    #[test]
    fn a_full_zone_is_refused_and_freed_space_is_reused() {
        let (s, reports) = store(MIN_SIZE + 4096);
        let big = vec![7u8; 1000];
        let mut stored = 0;
        let err = loop {
            match s.set_within("vm", format!("k{stored}").as_bytes(), &big, 0, u64::MAX) {
                Ok(()) => stored += 1,
                Err(e) => break e,
            }
            assert!(stored < 100);
        };
        assert!(matches!(err, SharedError::Full(_)), "{err:?}");
        assert!(stored >= 3, "{stored}");
        assert!(reports.lock().unwrap()[0].contains("shared memory zone is full"));
        // Existing data is intact; overwriting with small values frees room.
        assert_eq!(SharedDataStore::get(&s, "vm", b"k0").unwrap().0, big);
        for i in 0..stored {
            s.set("vm", format!("k{i}").as_bytes(), b"s", 0).unwrap();
        }
        s.set("vm", b"again", &big, 0).unwrap();
        let free = s.region().free_bytes();
        assert!(free > 2 * 1000, "coalesced free space: {free}");
        s.verify().unwrap();
    }

    #[test]
    fn cas_increments_from_processes_are_exact() {
        let (s, _) = store(1 << 16);
        s.set("vm", b"n", b"0", 0).unwrap();
        let region = *s.region();
        let children: Vec<_> = (0..3)
            .map(|_| {
                std::thread::spawn(move || {
                    in_child(Duration::from_secs(60), || {
                        let (s, _) = reattach(region);
                        for _ in 0..2000 {
                            loop {
                                let (v, cas) = SharedDataStore::get(&s, "vm", b"n").unwrap();
                                let n: u64 = String::from_utf8(v).unwrap().parse().unwrap();
                                if s.set("vm", b"n", (n + 1).to_string().as_bytes(), cas).is_ok() {
                                    break;
                                }
                            }
                        }
                        true
                    })
                })
            })
            .collect();
        for c in children {
            assert_eq!(c.join().unwrap(), Some(0));
        }
        assert_eq!(SharedDataStore::get(&s, "vm", b"n").unwrap().0, b"6000");
        assert_eq!(s.held_bytes("vm"), 5, "key and value bytes");
        s.verify().unwrap();
    }

    #[test]
    fn an_item_enqueued_in_another_process_reaches_the_registrant_through_poll() {
        let (s, _) = store(1 << 16);
        let recorder = Arc::new(Recorder::default());
        let server: Arc<dyn ServerHost> = recorder.clone();
        let id = s.register("vm", "q", QueueOwner { server: Arc::downgrade(&server), root_context_id: 5 }, QueueLimits::UNLIMITED).unwrap();
        s.poll();
        let region = *s.region();
        let code = in_child(CHILD, || {
            let (other, _) = reattach(region);
            other.resolve("vm", "q") == Some(id) && other.enqueue(id, b"from the child").is_ok() && other.enqueue(id + 1, b"x") == Err(SharedError::NotFound) && other.queue_vm_id(id).as_deref() == Some("vm")
        });
        assert_eq!(code, Some(0));
        assert!(recorder.0.lock().unwrap().is_empty(), "nothing before the poll");
        s.poll();
        assert_eq!(*recorder.0.lock().unwrap(), vec![(5, id)]);
        s.poll();
        assert_eq!(recorder.0.lock().unwrap().len(), 1, "one notification per enqueue");
        assert_eq!(s.dequeue(id).unwrap(), b"from the child");
        assert_eq!(s.dequeue(id), Err(SharedError::Empty));
        // Local enqueue notifies at once.
        s.enqueue(id, b"local").unwrap();
        assert_eq!(recorder.0.lock().unwrap().len(), 2);
        assert_eq!(s.queue_len(id), Ok(1));
        s.verify().unwrap();
    }

    #[test]
    fn metrics_have_the_same_id_everywhere_and_sum() {
        let (s, _) = store(1 << 16);
        let c = s.define(MetricType::Counter, "c").unwrap();
        let g = s.define(MetricType::Gauge, "g").unwrap();
        let h = s.define(MetricType::Histogram, "h").unwrap();
        assert_eq!(s.define(MetricType::Gauge, "c"), Err(Status::BadArgument));
        let region = *s.region();
        let code = in_child(CHILD, || {
            let (o, _) = reattach(region);
            o.define(MetricType::Counter, "c") == Ok(c) && o.increment(c, 3).is_ok() && o.increment(g, -2).is_ok() && o.record(h, 7).is_ok()
        });
        assert_eq!(code, Some(0));
        s.increment(c, 2).unwrap();
        assert_eq!(s.increment(c, -1), Err(Status::BadArgument));
        s.record(h, 20000).unwrap();
        assert_eq!(MetricStore::get(&s, c), Ok(5));
        assert_eq!(MetricStore::get(&s, g), Ok(-2));
        assert_eq!(MetricStore::get(&s, h), Err(Status::BadArgument));
        assert_eq!(MetricStore::get(&s, 99), Err(Status::NotFound));
        assert_eq!(MetricStore::get(&s, c ^ (1 << 16)), Err(Status::NotFound), "another tag");
        let snap = s.snapshot();
        assert_eq!(snap[2].count, 2);
        assert_eq!(snap[2].sum, 20007);
        assert_eq!(*snap[2].buckets.last().unwrap(), 2);
        assert_eq!(snap[0].name, "c");
        s.verify().unwrap();
    }

    #[test]
    fn shared_data_quota_counts_every_process_and_each_vm_id_apart() {
        let (s, _) = store(1 << 16);
        let region = *s.region();
        // Another process fills vm "a" up to 100 bytes (key + value).
        let code = in_child(CHILD, || {
            let (o, _) = reattach(region);
            o.set_within("a", b"k1", &[1; 58], 0, 100).is_ok() && o.set_within("a", b"k2", &[1; 38], 0, 100).is_ok()
        });
        assert_eq!(code, Some(0));
        assert_eq!(s.held_bytes("a"), 100);
        assert_eq!(s.set_within("a", b"k3", b"x", 0, 100), Err(SharedError::OverQuota { vm_id: "a".into(), would_hold: 103, limit: 100 }));
        assert!(SharedDataStore::get(&s, "a", b"k3").is_none());
        // vm "b" is not held back by "a" being at its cap.
        s.set_within("b", b"k1", &[2; 90], 0, 100).unwrap();
        // Writes that do not grow pass; shrinking frees.
        s.set_within("a", b"k1", &[3; 58], 0, 100).unwrap();
        s.set_within("a", b"k1", b"", 0, 100).unwrap();
        assert_eq!(s.held_bytes("a"), 2 + 40);
        s.set_within("a", b"k3", b"x", 0, 100).unwrap();
        s.verify().unwrap();
    }

    #[test]
    fn a_queue_keeps_its_registrants_length_and_byte_caps() {
        let (s, _) = store(1 << 16);
        let id = s.register("vm", "q", nobody(), QueueLimits { max_length: 2, max_bytes: 50 }).unwrap();
        s.enqueue(id, b"1").unwrap();
        s.enqueue(id, b"2").unwrap();
        assert_eq!(s.enqueue(id, b"3"), Err(SharedError::QueueFull { waiting: 2 }));
        assert_eq!(s.dequeue(id).unwrap(), b"1");
        assert_eq!(s.held_bytes("vm"), 1);
        s.set_within("vm", b"k", &[0; 40], 0, 50).unwrap();
        assert!(matches!(s.enqueue(id, &[0; 20]), Err(SharedError::OverQuota { .. })));
        // Re-registering changes the caps.
        assert_eq!(s.register("vm", "q", nobody(), QueueLimits { max_length: 5, max_bytes: 1000 }), Ok(id));
        s.enqueue(id, &[0; 20]).unwrap();
        s.enqueue(id, b"x").unwrap();
        assert_eq!(s.queue_len(id), Ok(3));
        s.verify().unwrap();
    }

    #[test]
    fn queues_metrics_and_vm_ids_are_capped() {
        let (s, _) = store(1 << 18);
        for i in 0..MAX_QUEUES_PER_VM {
            s.register("vm", &format!("q{i}"), nobody(), QueueLimits::UNLIMITED).unwrap();
        }
        assert_eq!(s.register("vm", "more", nobody(), QueueLimits::UNLIMITED), Err(SharedError::TooManyQueues { vm_id: "vm".into() }));
        assert!(s.register("other", "q", nobody(), QueueLimits::UNLIMITED).is_ok());
        s.define_within(MetricType::Counter, "m1", "vm", 2).unwrap();
        s.define_within(MetricType::Counter, "m2", "vm", 2).unwrap();
        assert_eq!(s.define_within(MetricType::Counter, "m3", "vm", 2), Err(SharedError::TooManyMetrics { vm_id: "vm".into(), limit: 2 }));
        assert!(s.define_within(MetricType::Counter, "m1", "vm", 2).is_ok(), "an existing name");
        assert!(s.define_within(MetricType::Counter, "m3", "other", 2).is_ok());
        for i in 2..MAX_VMS {
            s.set(&format!("vm{i}"), b"k", b"v", 0).unwrap();
        }
        assert!(matches!(s.set_within("one too many", b"k", b"v", 0, u64::MAX), Err(SharedError::Full(_))));
        s.verify().unwrap();
    }

    #[test]
    fn queue_ids_are_stable_per_name_but_not_a_sequence() {
        let (s, _) = store(1 << 16);
        let a = s.register("vm", "a", nobody(), QueueLimits::UNLIMITED).unwrap();
        let b = s.register("vm", "b", nobody(), QueueLimits::UNLIMITED).unwrap();
        assert_eq!(s.register("vm", "a", nobody(), QueueLimits::UNLIMITED), Ok(a));
        assert_eq!(s.resolve("vm", "b"), Some(b));
        assert!(a > 1 << 16 && b > 1 << 16);
        for guess in [1, 2, a + 1, b + 1] {
            assert_eq!(s.dequeue(guess), Err(SharedError::NotFound), "{guess}");
        }
    }

    // ------------------------------------------------------------ crashes in the middle

    /// What a store holds, for comparing before and after an update.
    fn summary(s: &ShmStore) -> String {
        let mut out = String::new();
        for key in ["k", "k2", "k3"] {
            out += &format!("{key}={:?};", SharedDataStore::get(s, "vm", key.as_bytes()).map(|v| v.0));
        }
        let q = s.resolve("vm", "q");
        out += &format!("q={:?}/{:?};held={};free={};", q.is_some(), q.map(|q| s.queue_len(q)), s.held_bytes("vm"), s.region().free_bytes());
        out += &format!("metrics={:?}", s.snapshot().iter().map(|m| m.name.clone()).collect::<Vec<_>>());
        out
    }

    /// For every point `op` passes (journal entries, writes, byte copies),
    /// a process dies there; the next user of the block must undo the update
    /// (or find it complete), log it, and find the block consistent and equal
    /// to before or after the update.
    fn survives_a_crash_at_every_point(setup: impl Fn(&ShmStore), op: impl Fn(&ShmStore) + Copy) {
        let after = {
            let (s, _) = store(1 << 16);
            setup(&s);
            op(&s);
            summary(&s)
        };
        let mut crashes = 0;
        for k in 1.. {
            let (s, reports) = store(1 << 16);
            setup(&s);
            let before = summary(&s);
            let region = *s.region();
            let code = in_child(CHILD, || {
                let (c, _) = reattach(region);
                crash::arm(k);
                op(&c);
                true
            });
            // The parent's own reads above may have run (took no crash point).
            match code {
                Some(0) => break,
                Some(77) => crashes += 1,
                other => panic!("child at point {k}: {other:?}"),
            }
            s.verify().unwrap_or_else(|e| panic!("point {k}: {e}"));
            let now = summary(&s);
            assert!(now == before || now == after, "point {k}:\n before {before}\n after  {after}\n now    {now}");
            assert!(!reports.lock().unwrap().iter().any(|r| r.contains("rebuilt")), "point {k}: {:?}", reports.lock().unwrap());
            // The block stays usable.
            s.set("vm", b"k3", b"later", 0).unwrap();
            s.verify().unwrap_or_else(|e| panic!("point {k}, after a later write: {e}"));
        }
        assert!(crashes > 5, "only {crashes} crash points");
    }

    #[test]
    fn a_crash_while_creating_a_key_is_undone() {
        survives_a_crash_at_every_point(|_| {}, |s| s.set("vm", b"k", b"value", 0).unwrap());
    }

    #[test]
    fn a_crash_while_replacing_a_value_is_undone() {
        survives_a_crash_at_every_point(
            |s| {
                s.set("vm", b"k", b"old", 0).unwrap();
                s.set("vm", b"k2", b"neighbour", 0).unwrap();
            },
            |s| s.set("vm", b"k", &[b'n'; 300], 0).unwrap(),
        );
    }

    #[test]
    fn a_crash_while_enqueuing_or_dequeuing_is_undone() {
        let setup = |s: &ShmStore| {
            let q = s.register("vm", "q", nobody(), QueueLimits::UNLIMITED).unwrap();
            s.enqueue(q, b"first").unwrap();
        };
        survives_a_crash_at_every_point(setup, |s| s.enqueue(s.resolve("vm", "q").unwrap(), b"second").unwrap());
        survives_a_crash_at_every_point(setup, |s| assert_eq!(s.dequeue(s.resolve("vm", "q").unwrap()).unwrap(), b"first"));
    }

    #[test]
    fn a_crash_while_registering_a_queue_or_defining_a_metric_is_undone() {
        survives_a_crash_at_every_point(|_| {}, |s| { s.register("vm", "q", nobody(), QueueLimits::UNLIMITED).unwrap(); });
        survives_a_crash_at_every_point(|s| { s.define(MetricType::Counter, "m0").unwrap(); }, |s| { s.define(MetricType::Histogram, "m1").unwrap(); });
    }

    #[test]
    fn a_crash_while_undoing_a_crashed_update_is_undone_again() {
        for j in 1..40 {
            let (s, _) = store(1 << 16);
            s.set("vm", b"k", b"old", 0).unwrap();
            let before = summary(&s);
            let region = *s.region();
            // Dies half-way through replacing the value...
            assert_eq!(
                in_child(CHILD, || {
                    let (c, _) = reattach(region);
                    crash::arm(12);
                    c.set("vm", b"k", b"new value", 0).is_ok()
                }),
                Some(77)
            );
            // ...and the next process dies half-way through undoing it.
            let code = in_child(CHILD, || {
                let (c, _) = reattach(region);
                crash::arm(j);
                c.verify().is_ok()
            });
            s.verify().unwrap_or_else(|e| panic!("undo cut at {j}: {e}"));
            assert_eq!(summary(&s), before, "undo cut at {j}");
            if code == Some(0) {
                return;
            }
        }
        panic!("the undo never completed");
    }

    // ------------------------------------------------------------ damaged blocks

    fn word_at(s: &ShmStore, off: u32) -> &AtomicU32 {
        s.region().word(off).unwrap()
    }

    fn entry_of(s: &ShmStore, vm_id: &str, key: &[u8]) -> u32 {
        let _g = s.locked();
        s.find_data(vm_id, key).unwrap().2.unwrap()
    }

    /// Fills a block, damages it with `damage`, then, in a child (so that a
    /// hang is seen as one), uses every operation: none may panic or hang.
    /// Afterwards the block is consistent (rebuilt if it had to be) and usable.
    fn survives_damage(damage: impl Fn(&ShmStore)) -> Vec<String> {
        let (s, _) = store(1 << 16);
        let q = s.register("vm", "q", nobody(), QueueLimits::UNLIMITED).unwrap();
        for i in 0..20 {
            s.set("vm", format!("key{i}").as_bytes(), format!("value{i}").as_bytes(), 0).unwrap();
        }
        s.enqueue(q, b"item1").unwrap();
        s.enqueue(q, b"item2").unwrap();
        let m = s.define(MetricType::Counter, "m").unwrap();
        damage(&s);
        let region = *s.region();
        let code = in_child(CHILD, || {
            let (c, _) = reattach(region);
            for i in 0..25 {
                let _ = SharedDataStore::get(&c, "vm", format!("key{i}").as_bytes());
                let _ = c.set("vm", format!("key{i}").as_bytes(), b"again", 0);
            }
            let _ = c.enqueue(q, b"item3");
            let _ = c.dequeue(q);
            let _ = c.queue_len(q);
            let _ = c.resolve("vm", "q");
            let _ = c.queue_vm_id(q);
            let _ = c.register("vm", "q2", nobody(), QueueLimits::UNLIMITED);
            let _ = c.define(MetricType::Gauge, "g");
            let _ = c.increment(m, 1);
            let _ = c.record(m, 1);
            let _ = MetricStore::get(&c, m);
            let _ = c.snapshot();
            c.poll();
            let _ = c.region().free_bytes();
            // What no operation met is found by the check a worker runs at start.
            c.check();
            c.verify().is_ok()
        });
        assert_eq!(code, Some(0), "a worker using the damaged block panicked (2), hung (None) or left it inconsistent (1)");
        let reports = {
            // The parent uses it too: consistent, and it takes new data.
            let (p, reports) = reattach(region);
            p.verify().unwrap();
            p.set("vm", b"fresh", b"value", 0).unwrap();
            assert_eq!(SharedDataStore::get(&p, "vm", b"fresh").unwrap().0, b"value");
            p.verify().unwrap();
            let logged = reports.lock().unwrap().clone();
            logged
        };
        reports
    }

    #[test]
    fn a_cycle_in_a_shared_data_chain_is_found_and_the_block_rebuilt() {
        survives_damage(|s| {
            let e = entry_of(s, "vm", b"key3");
            word_at(s, e + D_NEXT).store(e, Ordering::Relaxed);
            word_at(s, e + D_HASH).store(0, Ordering::Relaxed); // never matches: the walk goes on
        });
    }

    #[test]
    fn offsets_outside_the_block_are_found() {
        survives_damage(|s| {
            let h = s.region().header();
            h.buckets[(hash("vm", b"key5") as usize) % DATA_BUCKETS].store(u32::MAX - 3, Ordering::Relaxed);
            h.queues[0].store(s.region().len as u32 - 8, Ordering::Relaxed);
            h.metrics[0].store(12, Ordering::Relaxed);
            h.free_head.store(7, Ordering::Relaxed);
        });
    }

    #[test]
    fn huge_lengths_in_records_are_found() {
        survives_damage(|s| {
            let e = entry_of(s, "vm", b"key7");
            word_at(s, e + D_VAL).store(u32::MAX, Ordering::Relaxed);
            let e = entry_of(s, "vm", b"key8");
            word_at(s, e + D_KEY).store(60_000, Ordering::Relaxed);
            let q = s.region().header().queues[0].load(Ordering::Relaxed);
            let head = word_at(s, q + Q_HEAD).load(Ordering::Relaxed);
            word_at(s, head + I_LEN).store(0x7fff_ffff, Ordering::Relaxed);
            word_at(s, q + Q_NAME).store(u32::MAX, Ordering::Relaxed);
        });
    }

    #[test]
    fn cycles_in_the_free_list_and_a_queue_are_found() {
        survives_damage(|s| {
            let h = s.region().header();
            let f = h.free_head.load(Ordering::Relaxed);
            word_at(s, f + 8).store(f, Ordering::Relaxed);
            let q = h.queues[0].load(Ordering::Relaxed);
            let tail = word_at(s, q + Q_TAIL).load(Ordering::Relaxed);
            word_at(s, tail + I_NEXT).store(word_at(s, q + Q_HEAD).load(Ordering::Relaxed), Ordering::Relaxed);
        });
    }

    #[test]
    fn a_half_written_record_is_found() {
        // As if a worker died after allocating an entry and before its lengths
        // were written, with the journal lost: a used block holding garbage.
        let reports = survives_damage(|s| {
            let e = entry_of(s, "vm", b"key2");
            for off in (e..e + D_BYTES).step_by(4) {
                word_at(s, off).store(0xdead_beef, Ordering::Relaxed);
            }
        });
        let _ = reports;
    }

    #[test]
    fn a_damaged_journal_is_found() {
        survives_damage(|s| {
            let h = s.region().header();
            h.journal[0][0].store(OFF_JOURNAL, Ordering::Relaxed); // not a word an update may change
            h.journal[0][1].store(5, Ordering::Relaxed);
            h.journal_len.store(1000, Ordering::Relaxed);
        });
    }

    #[test]
    fn random_bytes_anywhere_never_crash_or_hang_a_process() {
        // A fixed-seed xorshift, so that a failure can be replayed.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for round in 0..150 {
            let spots: Vec<(u32, u32)> = (0..1 + round % 8)
                .map(|_| {
                    let len = (1u64 << 16) - 8;
                    let off = if next() % 2 == 0 { OFF_FREE_HEAD as u64 + next() % (len - OFF_FREE_HEAD as u64) } else { HEAP_START as u64 + next() % (len - HEAP_START as u64) };
                    ((off & !3) as u32, next() as u32)
                })
                .collect();
            survives_damage(move |s| {
                for (off, v) in &spots {
                    if let Ok(w) = s.region().word(*off) {
                        w.store(*v, Ordering::Relaxed);
                    }
                }
            });
        }
    }

    #[test]
    fn damage_is_logged_and_queues_and_metrics_keep_their_ids() {
        let (s, reports) = store(1 << 16);
        let recorder = Arc::new(Recorder::default());
        let server: Arc<dyn ServerHost> = recorder.clone();
        let q = s.register("vm", "q", QueueOwner { server: Arc::downgrade(&server), root_context_id: 3 }, QueueLimits::UNLIMITED).unwrap();
        let m = s.define_within(MetricType::Counter, "requests", "vm", 10).unwrap();
        s.set("vm", b"k", b"v", 0).unwrap();
        s.increment(m, 5).unwrap();
        // A cycle: the next lookup walks into it.
        let e = entry_of(&s, "vm", b"k");
        word_at(&s, e + D_NEXT).store(e, Ordering::Relaxed);
        word_at(&s, e + D_HASH).store(0, Ordering::Relaxed);
        assert_eq!(SharedDataStore::get(&s, "vm", b"k"), None);
        let logged = reports.lock().unwrap().join("\n");
        assert!(logged.contains("the shared memory zone was damaged (shared data entry") && logged.contains("rebuilt empty"), "{logged}");
        s.verify().unwrap();
        // Data and values are gone; the ids still work.
        assert_eq!(MetricStore::get(&s, m), Ok(0));
        s.increment(m, 1).unwrap();
        assert_eq!(s.resolve("vm", "q"), Some(q));
        s.enqueue(q, b"after").unwrap();
        assert_eq!(s.dequeue(q).unwrap(), b"after");
        assert_eq!(s.snapshot().len(), 1);
        // Another process that registered them sees them back, with the same ids, at its next use.
        let region = *s.region();
        assert_eq!(in_child(CHILD, || reattach(region).0.resolve("vm", "q") == Some(q)), Some(0));
    }

    #[test]
    fn a_crash_during_a_rebuild_is_rebuilt_again() {
        let (s, reports) = store(1 << 16);
        s.set("vm", b"k", b"v", 0).unwrap();
        let e = entry_of(&s, "vm", b"k");
        word_at(&s, e + D_VAL).store(u32::MAX, Ordering::Relaxed);
        let region = *s.region();
        let code = in_child(CHILD, || {
            let (c, _) = reattach(region);
            crash::arm(1);
            let _ = SharedDataStore::get(&c, "vm", b"k");
            true
        });
        assert_eq!(code, Some(77), "the child died in the rebuild");
        s.verify().unwrap();
        assert!(reports.lock().unwrap().iter().any(|r| r.contains("a rebuild of the zone was cut short")), "{:?}", reports.lock().unwrap());
        s.set("vm", b"k", b"v2", 0).unwrap();
    }
}
