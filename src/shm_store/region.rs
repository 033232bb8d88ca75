//! The block's bytes: its header, checked access to every word and byte
//! (nothing read from the block is trusted), the undo journal and the heap
//! allocator that write through it ([`Tx`]), and the spin lock the tests use.
//! See the parent module for the layout and the crash-consistency rules.

use std::mem::offset_of;
use std::ptr;
use std::sync::atomic::{compiler_fence, AtomicU32, AtomicU64, Ordering};

use crate::shared::SharedError;

pub(super) const MAGIC: u64 = 0x5057_5348_4d30_3032; // "PWSHM002": the layout version
pub const DATA_BUCKETS: usize = 1024;
pub const MAX_QUEUES: usize = 1024;
pub const MAX_METRICS: usize = 1024;
/// vm_ids with shared data, queues or metrics in one block.
pub const MAX_VMS: usize = 256;
/// Words one update may change (the largest, a `set` that creates its vm_id's
/// usage record and replaces a value, changes about 20).
pub(super) const JOURNAL_CAP: usize = 64;

pub(super) const FREE: u32 = 0x4652_4545;
pub(super) const USED: u32 = 0x5553_4544;
pub(super) const BLOCK_HEADER: u32 = 8;
pub(super) const MIN_BLOCK: u32 = 16;

#[repr(C)]
pub(super) struct Header {
    pub(super) magic: AtomicU64,
    pub(super) notify_seq: AtomicU64,
    pub(super) len: AtomicU32,
    pub(super) heap_start: AtomicU32,
    pub(super) spin: AtomicU32,
    /// Undo entries in use: non-zero while an update runs, or after its process died.
    pub(super) journal_len: AtomicU32,
    /// The process whose update the journal holds (for the log line).
    pub(super) journal_pid: AtomicU32,
    /// Non-zero while the content is rebuilt (a rebuild cut short is redone).
    pub(super) rebuilding: AtomicU32,
    /// Bumped by every rebuild: processes re-create their queues and metrics.
    pub(super) epoch: AtomicU32,
    // From here on: structural words, changed only through the journal.
    pub(super) free_head: AtomicU32,
    pub(super) next_cas: AtomicU32,
    pub(super) queue_count: AtomicU32,
    pub(super) metric_count: AtomicU32,
    pub(super) vm_count: AtomicU32,
    pub(super) journal: [[AtomicU32; 2]; JOURNAL_CAP],
    pub(super) buckets: [AtomicU32; DATA_BUCKETS],
    pub(super) queues: [AtomicU32; MAX_QUEUES],
    pub(super) metrics: [AtomicU32; MAX_METRICS],
    pub(super) vms: [AtomicU32; MAX_VMS],
}

pub(super) const HEAP_START: u32 = align8(std::mem::size_of::<Header>()) as u32;
pub(super) const OFF_FREE_HEAD: u32 = offset_of!(Header, free_head) as u32;
pub(super) const OFF_NEXT_CAS: u32 = offset_of!(Header, next_cas) as u32;
pub(super) const OFF_QUEUE_COUNT: u32 = offset_of!(Header, queue_count) as u32;
pub(super) const OFF_METRIC_COUNT: u32 = offset_of!(Header, metric_count) as u32;
pub(super) const OFF_VM_COUNT: u32 = offset_of!(Header, vm_count) as u32;
pub(super) const OFF_JOURNAL: u32 = offset_of!(Header, journal) as u32;
pub(super) const OFF_BUCKETS: u32 = offset_of!(Header, buckets) as u32;
pub(super) const OFF_QUEUES: u32 = offset_of!(Header, queues) as u32;
pub(super) const OFF_METRICS: u32 = offset_of!(Header, metrics) as u32;
pub(super) const OFF_VMS: u32 = offset_of!(Header, vms) as u32;

/// The smallest block that still has room for a few entries.
pub const MIN_SIZE: usize = HEADER_SIZE + 4096;
/// The header's bytes, before the heap.
pub(super) const HEADER_SIZE: usize = std::mem::size_of::<Header>();

/// The lock of the whole block; it must exclude other processes.
pub trait ZoneLock: Send + Sync {
    fn lock(&self);
    fn unlock(&self);
}

/// A memory block shared by processes, formatted by [`ShmRegion::format`].
#[derive(Clone, Copy)]
pub struct ShmRegion {
    pub(super) base: *mut u8,
    pub(super) len: usize,
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
pub(super) struct Corrupt(pub(super) String);

pub(super) fn corrupt<T>(what: impl Into<String>) -> Result<T, Corrupt> {
    Err(Corrupt(what.into()))
}

/// Why an update stopped: a refusal for the caller, or damage to repair.
pub(super) enum Fail {
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

pub(super) const fn align8(n: usize) -> usize {
    (n + 7) & !7
}

#[inline(always)]
pub(super) fn crash_point() {
    #[cfg(test)]
    crash::point();
}

impl ShmRegion {
    pub(super) fn check_shape(base: *mut u8, len: usize) -> Result<(), RegionError> {
        if len < MIN_SIZE {
            return Err(RegionError::TooSmall(len));
        }
        if len > u32::MAX as usize {
            return Err(RegionError::TooLarge);
        }
        if !(base as usize).is_multiple_of(8) {
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

    pub(super) fn header(&self) -> &Header {
        // SAFETY: the block starts with a Header (size checked), aligned to 8,
        // made of atomics only, so shared references are sound.
        unsafe { &*(self.base as *const Header) }
    }

    /// One past the heap's last byte (from our own length, never the block's word).
    pub(super) fn heap_end(&self) -> u32 {
        HEAP_START + ((self.len as u32 - HEAP_START) / 8) * 8
    }

    /// More blocks than this cannot exist: a longer walk is a cycle.
    pub(super) fn max_blocks(&self) -> usize {
        (self.heap_end() - HEAP_START) as usize / MIN_BLOCK as usize
    }

    /// Empties everything but the lock word and the notification sequence:
    /// one free block, no entries, no queues, no metrics. The slot counts are
    /// kept (clamped), so slots of queues and metrics that processes re-create
    /// are not handed to new ones meanwhile.
    pub(super) fn reset_content(&self) {
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

    pub(super) fn word(&self, off: u32) -> Result<&AtomicU32, Corrupt> {
        if !off.is_multiple_of(4) || off as usize + 4 > self.len {
            return corrupt(format!("offset {off} is outside the zone"));
        }
        // SAFETY: in bounds and 4-aligned (checked; the base is 8-aligned).
        Ok(unsafe { &*(self.base.add(off as usize) as *const AtomicU32) })
    }

    pub(super) fn load(&self, off: u32) -> Result<u32, Corrupt> {
        Ok(self.word(off)?.load(Ordering::Acquire))
    }

    /// A write no undo needs: into a block allocated by the running update
    /// (past its first word, which the allocator journals), or while formatting.
    pub(super) fn store(&self, off: u32, v: u32) -> Result<(), Corrupt> {
        self.word(off)?.store(v, Ordering::Release);
        Ok(())
    }

    pub(super) fn atomic_u64(&self, off: u32) -> Result<&AtomicU64, Corrupt> {
        if !off.is_multiple_of(8) || off as usize + 8 > self.len {
            return corrupt(format!("offset {off} is outside the zone"));
        }
        // SAFETY: in bounds and 8-aligned (checked; the base is 8-aligned).
        Ok(unsafe { &*(self.base.add(off as usize) as *const AtomicU64) })
    }

    pub(super) fn range(&self, off: u32, n: usize) -> Result<*mut u8, Corrupt> {
        match (off as usize).checked_add(n) {
            Some(end) if off >= HEAP_START && end <= self.heap_end() as usize => {
                // SAFETY: off + n is within the heap (checked).
                Ok(unsafe { self.base.add(off as usize) })
            }
            _ => corrupt(format!("{n} bytes at {off} are outside the heap")),
        }
    }

    pub(super) fn bytes(&self, off: u32, n: usize) -> Result<Vec<u8>, Corrupt> {
        let p = self.range(off, n)?;
        // SAFETY: in bounds (checked); copied under the lock, or from a record
        // no one writes once it is published (metric names).
        Ok(unsafe { std::slice::from_raw_parts(p, n) }.to_vec())
    }

    pub(super) fn eq_bytes(&self, off: u32, want: &[u8]) -> Result<bool, Corrupt> {
        let p = self.range(off, want.len())?;
        // SAFETY: in bounds (checked); compared under the lock.
        Ok((unsafe { std::slice::from_raw_parts(p, want.len()) }) == want)
    }

    pub(super) fn put_bytes(&self, off: u32, data: &[u8]) -> Result<(), Corrupt> {
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
    pub(super) fn block(&self, b: u32) -> Result<(u32, u32), Corrupt> {
        if b < HEAP_START || !b.is_multiple_of(8) || b as u64 + BLOCK_HEADER as u64 > self.heap_end() as u64 {
            return corrupt(format!("block {b} is outside the heap"));
        }
        let (size, tag) = (self.load(b)?, self.load(b + 4)?);
        if size < MIN_BLOCK || !size.is_multiple_of(8) || b as u64 + size as u64 > self.heap_end() as u64 {
            return corrupt(format!("block {b} has a bad size {size}"));
        }
        Ok((size, tag))
    }

    /// Checks that the record at payload offset `p` is a used block with room
    /// for `need` bytes (so lengths read from it cannot point elsewhere).
    pub(super) fn record(&self, p: u32, need: u64) -> Result<(), Corrupt> {
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
    pub(super) fn journalable(&self, off: u32) -> bool {
        let header =
            (OFF_FREE_HEAD..OFF_JOURNAL).contains(&off) || (OFF_BUCKETS..OFF_VMS + 4 * MAX_VMS as u32).contains(&off);
        off.is_multiple_of(4) && (header || (HEAP_START..self.heap_end()).contains(&off))
    }

    /// Restores the journal's old values, newest first, and empties it.
    /// Repeating it after a crash in the middle gives the same result. False
    /// when an entry was not a word an update may change (a damaged journal).
    pub(super) fn rollback(&self) -> bool {
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

    /// The block's size in bytes.
    pub fn size(&self) -> usize {
        self.len
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
pub(super) struct Tx<'a> {
    r: &'a ShmRegion,
    committed: bool,
}

impl<'a> Tx<'a> {
    pub(super) fn begin(r: &'a ShmRegion, pid: i32) -> Tx<'a> {
        r.header().journal_pid.store(pid as u32, Ordering::Relaxed);
        Tx { r, committed: false }
    }

    /// Sets a structural word, journaling its old value first. The order of
    /// the three stores is what makes a crash between any two of them safe:
    /// an entry not yet counted is ignored, a counted one restores a value
    /// that may not have changed yet.
    pub(super) fn set(&self, off: u32, v: u32) -> Result<(), Fail> {
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

    pub(super) fn commit(mut self) {
        compiler_fence(Ordering::SeqCst);
        self.r.header().journal_len.store(0, Ordering::Release);
        self.committed = true;
    }

    // ------------------------------------------------------------ allocator

    /// A payload of at least `n` bytes (8-aligned), or None when full.
    pub(super) fn alloc(&self, n: usize) -> Result<Option<u32>, Fail> {
        let r = self.r;
        let Some(need) = n.checked_add(BLOCK_HEADER as usize).map(|n| align8(n).max(MIN_BLOCK as usize)) else {
            return Ok(None);
        };
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

    pub(super) fn free(&self, payload: u32) -> Result<(), Fail> {
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
                        let gone = holder != 0
                            && holder != me
                            && unsafe { libc::kill(holder as i32, 0) } != 0
                            && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
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

pub(super) struct Guard<'a>(pub(super) &'a dyn ZoneLock);

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        self.0.unlock();
    }
}

/// Test-only fault injection: the process dies (`_exit`) at the n-th point an
/// update, an undo or a rebuild passes, as a worker killed there would.
#[cfg(test)]
pub(super) mod crash {
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
