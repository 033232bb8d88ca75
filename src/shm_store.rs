//! Shared data, shared queues and metrics in one block of memory that several
//! processes map (an NGINX shared-memory zone; an anonymous shared mapping in
//! the tests). Every reference inside the block is an offset from its start,
//! so it does not matter where each process maps it.
//!
//! Layout (all little structures 8-byte aligned, offsets `u32`):
//!
//! ```text
//! Header   magic, length, allocator free list, CAS counter, queue/metric counts,
//!          notification sequence, a spin lock word (for users without one),
//!          DATA_BUCKETS hash buckets, MAX_QUEUES queue slots, MAX_METRICS metric slots
//! heap     blocks [size u32 | tag u32 | payload]; free blocks in an address-ordered
//!          list (first fit, split from the end, coalesced on free)
//! ```
//!
//! - shared data: entries `[next hash cas vm_len key_len val_len | vm_id key value]`
//!   chained per bucket; a `set` writes a new entry and frees the old one.
//! - queues: `[vm_len name_len owner_pid owner_root pending head tail items | vm_id name]`
//!   and items `[next len | data]`; the queue id is its slot + 1.
//! - metrics: `[kind name_len value count sum buckets[13] | name]`, updated with
//!   atomic instructions without the lock; the id is the slot + 1, so a name
//!   defined in one process has the same id in all.
//!
//! Locking: one lock for the whole block ([`ZoneLock`]): the NGINX zone's
//! `ngx_shmtx_t` (which the master force-unlocks when a worker dies holding it),
//! or [`SpinLock`] on the header's word. Critical sections copy bytes only.
//!
//! Queue notification: `enqueue` runs the owner's `on_queue_ready` at once in
//! the enqueuing process when that process registered the queue itself (with
//! one configuration every worker registers the queues of its plugins, so this
//! is the usual path). Otherwise it flags the queue and bumps the header's
//! notification sequence; the registering process sees it in [`ShmStore::poll`]
//! (NGINX: a timer every `POLL_INTERVAL`) and notifies its own root context.
//!
//! A full block is INTERNAL_FAILURE for `set_shared_data`,
//! `register_shared_queue`, `enqueue_shared_queue` and `define_metric`, and is
//! logged (at most once a second per process).

use std::collections::HashMap;
use std::ptr;
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::abi::{MetricType, Status};
use crate::metrics::{MetricSnapshot, MetricStore, HISTOGRAM_BOUNDS};
use crate::shared::{QueueOwner, QueueStore, SharedDataStore, MAX_QUEUE_ITEMS};

const MAGIC: u64 = 0x5057_5348_4d30_3031; // "PWSHM001": the layout version
pub const DATA_BUCKETS: usize = 1024;
pub const MAX_QUEUES: usize = 1024;
pub const MAX_METRICS: usize = 1024;
/// How often an NGINX worker looks for queue notifications from other workers.
pub const POLL_INTERVAL: Duration = Duration::from_millis(10);

const FREE: u32 = 0x4652_4545;
const USED: u32 = 0x5553_4544;
const BLOCK_HEADER: u32 = 8;
const MIN_BLOCK: u32 = 16;

#[repr(C)]
struct Header {
    magic: AtomicU64,
    len: AtomicU32,
    heap_start: AtomicU32,
    free_head: AtomicU32,
    next_cas: AtomicU32,
    queue_count: AtomicU32,
    metric_count: AtomicU32,
    notify_seq: AtomicU64,
    spin: AtomicU32,
    _pad: AtomicU32,
    buckets: [AtomicU32; DATA_BUCKETS],
    queues: [AtomicU32; MAX_QUEUES],
    metrics: [AtomicU32; MAX_METRICS],
}

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
// atomics or happens under the zone lock.
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

fn align8(n: usize) -> usize {
    (n + 7) & !7
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
        let h = r.header();
        let heap = align8(std::mem::size_of::<Header>()) as u32;
        let heap_len = ((len as u32 - heap) / 8) * 8;
        h.len.store(len as u32, Ordering::Relaxed);
        h.heap_start.store(heap, Ordering::Relaxed);
        r.write_u32(heap, heap_len);
        r.write_u32(heap + 4, FREE);
        r.write_u32(heap + 8, 0);
        h.free_head.store(heap, Ordering::Relaxed);
        h.magic.store(MAGIC, Ordering::Release);
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

    fn heap_start(&self) -> u32 {
        self.header().heap_start.load(Ordering::Relaxed)
    }

    /// A pointer to `n` bytes at `off`, if they are inside the heap (a
    /// damaged structure never makes us read outside the block).
    fn at(&self, off: u32, n: usize) -> Result<*mut u8, Status> {
        let end = (off as usize).checked_add(n).ok_or(Status::InternalFailure)?;
        if off < self.heap_start() || end > self.len {
            return Err(Status::InternalFailure);
        }
        // SAFETY: off + n is within the block.
        Ok(unsafe { self.base.add(off as usize) })
    }

    fn read_u32(&self, off: u32) -> u32 {
        match self.at(off, 4) {
            // SAFETY: in bounds (checked), 4-aligned by construction; read
            // under the lock or of a field no one writes concurrently.
            Ok(p) => unsafe { ptr::read_volatile(p as *const u32) },
            Err(_) => 0,
        }
    }

    fn write_u32(&self, off: u32, v: u32) {
        if let Ok(p) = self.at(off, 4) {
            // SAFETY: in bounds; written under the lock (or while formatting).
            unsafe { ptr::write_volatile(p as *mut u32, v) };
        }
    }

    fn atomic_u32(&self, off: u32) -> Result<&AtomicU32, Status> {
        let p = self.at(off, 4)?;
        // SAFETY: in bounds and 4-aligned (fields at multiples of 4 in 8-aligned blocks).
        Ok(unsafe { &*(p as *const AtomicU32) })
    }

    fn atomic_u64(&self, off: u32) -> Result<&AtomicU64, Status> {
        let p = self.at(off, 8)?;
        if p as usize % 8 != 0 {
            return Err(Status::InternalFailure);
        }
        // SAFETY: in bounds and 8-aligned (checked).
        Ok(unsafe { &*(p as *const AtomicU64) })
    }

    fn bytes(&self, off: u32, n: usize) -> Result<Vec<u8>, Status> {
        let p = self.at(off, n)?;
        // SAFETY: in bounds; copied under the lock.
        Ok(unsafe { std::slice::from_raw_parts(p, n) }.to_vec())
    }

    fn eq_bytes(&self, off: u32, want: &[u8]) -> bool {
        match self.at(off, want.len()) {
            // SAFETY: in bounds; compared under the lock.
            Ok(p) => (unsafe { std::slice::from_raw_parts(p, want.len()) }) == want,
            Err(_) => false,
        }
    }

    fn put_bytes(&self, off: u32, data: &[u8]) {
        if let Ok(p) = self.at(off, data.len()) {
            // SAFETY: in bounds; the block was just allocated under the lock.
            unsafe { ptr::copy_nonoverlapping(data.as_ptr(), p, data.len()) };
        }
    }

    // ------------------------------------------------------------ allocator (under the lock)

    /// A payload of at least `n` bytes (8-aligned), or None when full.
    fn alloc(&self, n: usize) -> Option<u32> {
        let need = align8(n.checked_add(BLOCK_HEADER as usize)?).max(MIN_BLOCK as usize);
        let need = u32::try_from(need).ok()?;
        let h = self.header();
        let mut prev = 0u32;
        let mut cur = h.free_head.load(Ordering::Relaxed);
        let mut guard = 0usize;
        while cur != 0 {
            guard += 1;
            if guard > self.len / MIN_BLOCK as usize || self.read_u32(cur + 4) != FREE {
                return None; // damaged list
            }
            let size = self.read_u32(cur);
            let next = self.read_u32(cur + 8);
            if size >= need {
                if size - need >= MIN_BLOCK {
                    self.write_u32(cur, size - need);
                    let b = cur + size - need;
                    self.write_u32(b, need);
                    self.write_u32(b + 4, USED);
                    return Some(b + BLOCK_HEADER);
                }
                if prev == 0 {
                    h.free_head.store(next, Ordering::Relaxed);
                } else {
                    self.write_u32(prev + 8, next);
                }
                self.write_u32(cur + 4, USED);
                return Some(cur + BLOCK_HEADER);
            }
            prev = cur;
            cur = next;
        }
        None
    }

    fn free(&self, payload: u32) {
        let b = payload.wrapping_sub(BLOCK_HEADER);
        if self.at(b, MIN_BLOCK as usize).is_err() || self.read_u32(b + 4) != USED {
            return;
        }
        let h = self.header();
        let size = self.read_u32(b);
        self.write_u32(b + 4, FREE);
        let mut prev = 0u32;
        let mut next = h.free_head.load(Ordering::Relaxed);
        while next != 0 && next < b {
            prev = next;
            next = self.read_u32(next + 8);
        }
        if next != 0 && b + size == next {
            self.write_u32(b, size + self.read_u32(next));
            self.write_u32(b + 8, self.read_u32(next + 8));
            self.write_u32(next + 4, 0);
        } else {
            self.write_u32(b + 8, next);
        }
        if prev == 0 {
            h.free_head.store(b, Ordering::Relaxed);
        } else if prev + self.read_u32(prev) == b {
            self.write_u32(prev, self.read_u32(prev) + self.read_u32(b));
            self.write_u32(prev + 8, self.read_u32(b + 8));
            self.write_u32(b + 4, 0);
        } else {
            self.write_u32(prev + 8, b);
        }
    }

    /// Bytes in free blocks (for tests and diagnostics; takes no lock).
    pub fn free_bytes(&self) -> usize {
        let mut total = 0usize;
        let mut cur = self.header().free_head.load(Ordering::Relaxed);
        let mut guard = 0;
        while cur != 0 && guard < self.len / MIN_BLOCK as usize {
            total += self.read_u32(cur) as usize;
            cur = self.read_u32(cur + 8);
            guard += 1;
        }
        total
    }

    /// A spin lock on the header's lock word (for users without a lock of
    /// their own, e.g. the tests).
    pub fn spin_lock(&self) -> SpinLock {
        SpinLock { region: *self }
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

// Entry layouts (payload offsets).
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
const Q_BYTES: u32 = 32;

const I_NEXT: u32 = 0;
const I_LEN: u32 = 4;
const I_BYTES: u32 = 8;

const M_KIND: u32 = 0;
const M_NAME: u32 = 4;
const M_VALUE: u32 = 8;
const M_COUNT: u32 = 16;
const M_SUM: u32 = 24;
const M_BUCKETS: u32 = 32;
const M_BYTES: u32 = M_BUCKETS + 8 * (HISTOGRAM_BOUNDS.len() as u32 + 1);

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

/// Shared data, queues and metrics of one process over a shared region.
pub struct ShmStore {
    region: ShmRegion,
    lock: Box<dyn ZoneLock>,
    pid: i32,
    /// Queues this process registered: who to notify here.
    local: Mutex<HashMap<u32, QueueOwner>>,
    /// The last notification sequence [`ShmStore::poll`] looked at.
    seen_seq: AtomicU64,
    report_full: Box<dyn Fn(&str) + Send + Sync>,
    last_full_report: Mutex<Option<Instant>>,
}

impl ShmStore {
    /// `report_full` gets a message when the region is full (at most once a second).
    pub fn new(region: ShmRegion, lock: Box<dyn ZoneLock>, report_full: Box<dyn Fn(&str) + Send + Sync>) -> ShmStore {
        ShmStore {
            region,
            lock,
            // SAFETY: getpid has no preconditions.
            pid: unsafe { libc::getpid() },
            local: Mutex::new(HashMap::new()),
            seen_seq: AtomicU64::new(u64::MAX),
            report_full,
            last_full_report: Mutex::new(None),
        }
    }

    pub fn region(&self) -> &ShmRegion {
        &self.region
    }

    fn locked(&self) -> Guard<'_> {
        self.lock.lock();
        Guard(&*self.lock)
    }

    fn full(&self, what: &str, bytes: usize) -> Status {
        let mut last = self.last_full_report.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
            *last = Some(Instant::now());
            (self.report_full)(&format!(
                "the shared memory zone is full ({} bytes, {} free): {what} of {bytes} bytes refused with INTERNAL_FAILURE; raise proxy_wasm_shm_size",
                self.region.len,
                self.region.free_bytes()
            ));
        }
        Status::InternalFailure
    }

    // ------------------------------------------------------------ shared data

    /// The hash of (vm_id, key) and its entry, if any.
    fn find_data(&self, vm_id: &str, key: &[u8]) -> (u32, Option<u32>) {
        let r = &self.region;
        let h = hash(vm_id, key);
        let bucket = h as usize % DATA_BUCKETS;
        let mut cur = r.header().buckets[bucket].load(Ordering::Relaxed);
        let mut guard = 0;
        while cur != 0 && guard < r.len {
            guard += 1;
            if r.at(cur, D_BYTES as usize).is_err() {
                return (h, None);
            }
            let (vl, kl) = (r.read_u32(cur + D_VM), r.read_u32(cur + D_KEY));
            if r.read_u32(cur + D_HASH) == h && vl as usize == vm_id.len() && kl as usize == key.len() && r.eq_bytes(cur + D_BYTES, vm_id.as_bytes()) && r.eq_bytes(cur + D_BYTES + vl, key) {
                return (h, Some(cur));
            }
            cur = r.read_u32(cur + D_NEXT);
        }
        (h, None)
    }

    fn unlink_data(&self, h: u32, entry: u32, replacement: Option<u32>) {
        let r = &self.region;
        let bucket = &r.header().buckets[h as usize % DATA_BUCKETS];
        let next = r.read_u32(entry + D_NEXT);
        let new = match replacement {
            Some(n) => {
                r.write_u32(n + D_NEXT, next);
                n
            }
            None => next,
        };
        let mut cur = bucket.load(Ordering::Relaxed);
        if cur == entry {
            bucket.store(new, Ordering::Relaxed);
            return;
        }
        while cur != 0 {
            let n = r.read_u32(cur + D_NEXT);
            if n == entry {
                r.write_u32(cur + D_NEXT, new);
                return;
            }
            cur = n;
        }
    }

    // ------------------------------------------------------------ queues

    fn queue(&self, queue_id: u32) -> Result<u32, Status> {
        let h = self.region.header();
        let count = h.queue_count.load(Ordering::Acquire);
        if queue_id == 0 || queue_id > count || queue_id as usize > MAX_QUEUES {
            return Err(Status::NotFound);
        }
        let off = h.queues[queue_id as usize - 1].load(Ordering::Acquire);
        self.region.at(off, Q_BYTES as usize).map_err(|_| Status::NotFound)?;
        Ok(off)
    }

    fn find_queue(&self, vm_id: &str, name: &str) -> Option<u32> {
        let r = &self.region;
        let count = r.header().queue_count.load(Ordering::Acquire);
        (1..=count).find(|id| {
            self.queue(*id).is_ok_and(|q| {
                let (vl, nl) = (r.read_u32(q + Q_VM), r.read_u32(q + Q_NAME));
                vl as usize == vm_id.len() && nl as usize == name.len() && r.eq_bytes(q + Q_BYTES, vm_id.as_bytes()) && r.eq_bytes(q + Q_BYTES + vl, name.as_bytes())
            })
        })
    }

    /// Queue notifications other processes left for this one: runs the
    /// registering root contexts' `on_queue_ready` (through their servers).
    /// Cheap when there is nothing new (one atomic load).
    pub fn poll(&self) {
        let seq = self.region.header().notify_seq.load(Ordering::Acquire);
        if self.seen_seq.swap(seq, Ordering::AcqRel) == seq {
            return;
        }
        let local: Vec<(u32, QueueOwner)> = self.local.lock().unwrap_or_else(|p| p.into_inner()).iter().map(|(id, o)| (*id, o.clone())).collect();
        for (id, owner) in local {
            let Ok(q) = self.queue(id) else { continue };
            if self.region.read_u32(q + Q_PID) as i32 != self.pid {
                continue;
            }
            let Ok(pending) = self.region.atomic_u32(q + Q_PENDING) else { continue };
            if pending.swap(0, Ordering::AcqRel) != 0 {
                if let Some(server) = owner.server.upgrade() {
                    server.notify_queue_ready(owner.root_context_id, id);
                }
            }
        }
    }

    /// The items waiting in a queue (for tests and diagnostics).
    pub fn queue_len(&self, queue_id: u32) -> Result<u32, Status> {
        let _g = self.locked();
        let q = self.queue(queue_id)?;
        Ok(self.region.read_u32(q + Q_ITEMS))
    }

    // ------------------------------------------------------------ metrics

    fn metric(&self, id: u32) -> Result<(u32, MetricType), Status> {
        let h = self.region.header();
        let count = h.metric_count.load(Ordering::Acquire);
        if id == 0 || id > count || id as usize > MAX_METRICS {
            return Err(Status::NotFound);
        }
        let off = h.metrics[id as usize - 1].load(Ordering::Acquire);
        self.region.at(off, M_BYTES as usize).map_err(|_| Status::NotFound)?;
        let kind = kind_of(self.region.read_u32(off + M_KIND)).ok_or(Status::NotFound)?;
        Ok((off, kind))
    }
}

impl SharedDataStore for ShmStore {
    fn get(&self, vm_id: &str, key: &[u8]) -> Option<(Vec<u8>, u32)> {
        let r = &self.region;
        let _g = self.locked();
        let (_, e) = self.find_data(vm_id, key);
        let e = e?;
        let (vl, kl, val) = (r.read_u32(e + D_VM), r.read_u32(e + D_KEY), r.read_u32(e + D_VAL));
        let value = r.bytes(e + D_BYTES + vl + kl, val as usize).ok()?;
        Some((value, r.read_u32(e + D_CAS)))
    }

    fn set(&self, vm_id: &str, key: &[u8], value: &[u8], cas: u32) -> Result<(), Status> {
        let r = &self.region;
        let size = D_BYTES as usize + vm_id.len() + key.len() + value.len();
        if size > r.len {
            return Err(self.full("a shared data value", size));
        }
        let g = self.locked();
        let (h, old) = self.find_data(vm_id, key);
        // A CAS only guards an existing key (as in the in-process store).
        if let Some(e) = old {
            if cas != 0 && r.read_u32(e + D_CAS) != cas {
                return Err(Status::CasMismatch);
            }
        }
        let Some(new) = r.alloc(size) else {
            drop(g);
            return Err(self.full("a shared data value", size));
        };
        let hd = r.header();
        // Tokens start at 1 (0 means "no CAS") and are never reused soon.
        let token = hd.next_cas.load(Ordering::Relaxed).wrapping_add(1).max(1);
        hd.next_cas.store(token, Ordering::Relaxed);
        r.write_u32(new + D_HASH, h);
        r.write_u32(new + D_CAS, token);
        r.write_u32(new + D_VM, vm_id.len() as u32);
        r.write_u32(new + D_KEY, key.len() as u32);
        r.write_u32(new + D_VAL, value.len() as u32);
        r.put_bytes(new + D_BYTES, vm_id.as_bytes());
        r.put_bytes(new + D_BYTES + vm_id.len() as u32, key);
        r.put_bytes(new + D_BYTES + (vm_id.len() + key.len()) as u32, value);
        match old {
            Some(e) => {
                self.unlink_data(h, e, Some(new));
                r.free(e);
            }
            None => {
                let bucket = &hd.buckets[h as usize % DATA_BUCKETS];
                r.write_u32(new + D_NEXT, bucket.load(Ordering::Relaxed));
                bucket.store(new, Ordering::Relaxed);
            }
        }
        Ok(())
    }
}

impl QueueStore for ShmStore {
    fn register(&self, vm_id: &str, name: &str, owner: QueueOwner) -> Result<u32, Status> {
        let r = &self.region;
        let (id, has_items) = {
            let g = self.locked();
            let id = match self.find_queue(vm_id, name) {
                Some(id) => id,
                None => {
                    let h = r.header();
                    let count = h.queue_count.load(Ordering::Relaxed);
                    let size = Q_BYTES as usize + vm_id.len() + name.len();
                    if count as usize >= MAX_QUEUES {
                        drop(g);
                        return Err(self.full("a new shared queue (the zone holds at most 1024)", size));
                    }
                    let Some(q) = r.alloc(size) else {
                        drop(g);
                        return Err(self.full("a new shared queue", size));
                    };
                    for (field, v) in [(Q_VM, vm_id.len() as u32), (Q_NAME, name.len() as u32), (Q_PID, 0), (Q_ROOT, 0), (Q_PENDING, 0), (Q_HEAD, 0), (Q_TAIL, 0), (Q_ITEMS, 0)] {
                        r.write_u32(q + field, v);
                    }
                    r.put_bytes(q + Q_BYTES, vm_id.as_bytes());
                    r.put_bytes(q + Q_BYTES + vm_id.len() as u32, name.as_bytes());
                    h.queues[count as usize].store(q, Ordering::Release);
                    h.queue_count.store(count + 1, Ordering::Release);
                    count + 1
                }
            };
            let q = self.queue(id)?;
            r.write_u32(q + Q_PID, self.pid as u32);
            r.write_u32(q + Q_ROOT, owner.root_context_id);
            (id, r.read_u32(q + Q_ITEMS) > 0)
        };
        self.local.lock().unwrap_or_else(|p| p.into_inner()).insert(id, owner.clone());
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
        let _g = self.locked();
        self.find_queue(vm_id, name)
    }

    fn enqueue(&self, queue_id: u32, data: &[u8]) -> Result<(), Status> {
        let r = &self.region;
        {
            let g = self.locked();
            let q = self.queue(queue_id)?;
            if r.read_u32(q + Q_ITEMS) as usize >= MAX_QUEUE_ITEMS {
                return Err(Status::InternalFailure);
            }
            let Some(item) = r.alloc(I_BYTES as usize + data.len()) else {
                drop(g);
                return Err(self.full("a shared queue item", data.len()));
            };
            r.write_u32(item + I_NEXT, 0);
            r.write_u32(item + I_LEN, data.len() as u32);
            r.put_bytes(item + I_BYTES, data);
            let tail = r.read_u32(q + Q_TAIL);
            if tail == 0 {
                r.write_u32(q + Q_HEAD, item);
            } else {
                r.write_u32(tail + I_NEXT, item);
            }
            r.write_u32(q + Q_TAIL, item);
            r.write_u32(q + Q_ITEMS, r.read_u32(q + Q_ITEMS) + 1);
        }
        // Notify outside the lock: the server may take its own locks.
        let local = self.local.lock().unwrap_or_else(|p| p.into_inner()).get(&queue_id).cloned();
        if let Some(owner) = local {
            if let Some(server) = owner.server.upgrade() {
                server.notify_queue_ready(owner.root_context_id, queue_id);
                return Ok(());
            }
        }
        // The registrant lives in another process: flag the queue for its poll.
        let q = self.queue(queue_id)?;
        r.atomic_u32(q + Q_PENDING)?.store(1, Ordering::Release);
        r.header().notify_seq.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }

    fn dequeue(&self, queue_id: u32) -> Result<Vec<u8>, Status> {
        let r = &self.region;
        let _g = self.locked();
        let q = self.queue(queue_id)?;
        let head = r.read_u32(q + Q_HEAD);
        if head == 0 {
            return Err(Status::Empty);
        }
        let data = r.bytes(head + I_BYTES, r.read_u32(head + I_LEN) as usize)?;
        let next = r.read_u32(head + I_NEXT);
        r.write_u32(q + Q_HEAD, next);
        if next == 0 {
            r.write_u32(q + Q_TAIL, 0);
        }
        r.write_u32(q + Q_ITEMS, r.read_u32(q + Q_ITEMS).saturating_sub(1));
        r.free(head);
        Ok(data)
    }
}

impl MetricStore for ShmStore {
    fn define(&self, kind: MetricType, name: &str) -> Result<u32, Status> {
        if name.is_empty() {
            return Err(Status::BadArgument);
        }
        let r = &self.region;
        let g = self.locked();
        let h = r.header();
        let count = h.metric_count.load(Ordering::Relaxed);
        for id in 1..=count {
            let Ok((m, k)) = self.metric(id) else { continue };
            if r.read_u32(m + M_NAME) as usize == name.len() && r.eq_bytes(m + M_BYTES, name.as_bytes()) {
                return if k == kind { Ok(id) } else { Err(Status::BadArgument) };
            }
        }
        let size = M_BYTES as usize + name.len();
        if count as usize >= MAX_METRICS {
            drop(g);
            return Err(self.full("a new metric (the zone holds at most 1024)", size));
        }
        let Some(m) = r.alloc(size) else {
            drop(g);
            return Err(self.full("a new metric", size));
        };
        r.put_bytes(m, &vec![0u8; M_BYTES as usize]);
        r.write_u32(m + M_KIND, kind_code(kind));
        r.write_u32(m + M_NAME, name.len() as u32);
        r.put_bytes(m + M_BYTES, name.as_bytes());
        h.metrics[count as usize].store(m, Ordering::Release);
        h.metric_count.store(count + 1, Ordering::Release);
        Ok(count + 1)
    }

    fn increment(&self, id: u32, delta: i64) -> Result<(), Status> {
        let (m, kind) = self.metric(id)?;
        match kind {
            // A counter only grows by a positive delta (as Envoy's incrementMetric).
            MetricType::Counter if delta <= 0 => Err(Status::BadArgument),
            MetricType::Counter | MetricType::Gauge => {
                let v = self.region.atomic_u64(m + M_VALUE)?;
                // The i64 value lives in a u64 cell: wrapping addition is the same.
                v.fetch_add(delta as u64, Ordering::Relaxed);
                Ok(())
            }
            MetricType::Histogram => Err(Status::BadArgument),
        }
    }

    fn record(&self, id: u32, value: u64) -> Result<(), Status> {
        let (m, kind) = self.metric(id)?;
        let r = &self.region;
        match kind {
            // Recording a counter adds to it, a gauge is set (Envoy's recordMetric).
            MetricType::Counter => {
                r.atomic_u64(m + M_VALUE)?.fetch_add(value, Ordering::Relaxed);
            }
            MetricType::Gauge => r.atomic_u64(m + M_VALUE)?.store(value, Ordering::Relaxed),
            MetricType::Histogram => {
                r.atomic_u64(m + M_COUNT)?.fetch_add(1, Ordering::Relaxed);
                r.atomic_u64(m + M_SUM)?.fetch_add(value, Ordering::Relaxed);
                let bucket = HISTOGRAM_BOUNDS.iter().position(|b| value <= *b).unwrap_or(HISTOGRAM_BOUNDS.len());
                r.atomic_u64(m + M_BUCKETS + 8 * bucket as u32)?.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(())
    }

    fn get(&self, id: u32) -> Result<i64, Status> {
        let (m, kind) = self.metric(id)?;
        match kind {
            MetricType::Histogram => Err(Status::BadArgument),
            _ => Ok(self.region.atomic_u64(m + M_VALUE)?.load(Ordering::Relaxed) as i64),
        }
    }

    fn snapshot(&self) -> Vec<MetricSnapshot> {
        let r = &self.region;
        let count = r.header().metric_count.load(Ordering::Acquire);
        let load = |off: u32| r.atomic_u64(off).map(|a| a.load(Ordering::Relaxed)).unwrap_or(0);
        (1..=count)
            .filter_map(|id| {
                let (m, kind) = self.metric(id).ok()?;
                let name = String::from_utf8_lossy(&r.bytes(m + M_BYTES, r.read_u32(m + M_NAME) as usize).ok()?).into_owned();
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::ServerHost;
    use std::sync::Arc;

    /// An anonymous shared mapping: kept across fork, like an NGINX zone.
    fn shared_mapping(len: usize) -> *mut u8 {
        // SAFETY: a fresh anonymous mapping; never unmapped in the tests.
        let p = unsafe { libc::mmap(ptr::null_mut(), len, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED | libc::MAP_ANONYMOUS, -1, 0) };
        assert_ne!(p, libc::MAP_FAILED);
        p as *mut u8
    }

    fn store(len: usize) -> (ShmStore, Arc<Mutex<Vec<String>>>) {
        let base = shared_mapping(len);
        // SAFETY: our fresh mapping.
        let region = unsafe { ShmRegion::format(base, len) }.unwrap();
        let reports = Arc::new(Mutex::new(Vec::new()));
        let r2 = reports.clone();
        (ShmStore::new(region, Box::new(region.spin_lock()), Box::new(move |m| r2.lock().unwrap().push(m.to_string()))), reports)
    }

    fn reattach(region: ShmRegion) -> ShmStore {
        // SAFETY: the mapping is inherited from the parent.
        let region = unsafe { ShmRegion::attach(region.base, region.len) }.unwrap();
        ShmStore::new(region, Box::new(region.spin_lock()), Box::new(|_| {}))
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
        assert_eq!(s.set("vm", b"new", b"x", 7), Ok(()), "a CAS on an absent key stores it");
        s.set("vm", b"empty", b"", 0).unwrap();
        assert_eq!(SharedDataStore::get(&s, "vm", b"empty").unwrap().0, b"");
    }

    #[test]
    fn a_full_zone_is_internal_failure_and_freed_space_is_reused() {
        let (s, reports) = store(MIN_SIZE + 4096);
        let big = vec![7u8; 1000];
        let mut stored = 0;
        let err = loop {
            match s.set("vm", format!("k{stored}").as_bytes(), &big, 0) {
                Ok(()) => stored += 1,
                Err(e) => break e,
            }
            assert!(stored < 100);
        };
        assert_eq!(err, Status::InternalFailure);
        assert!(stored >= 4, "{stored}");
        assert!(reports.lock().unwrap()[0].contains("shared memory zone is full"));
        // Existing data is intact; overwriting with small values frees room.
        assert_eq!(SharedDataStore::get(&s, "vm", b"k0").unwrap().0, big);
        for i in 0..stored {
            s.set("vm", format!("k{i}").as_bytes(), b"s", 0).unwrap();
        }
        s.set("vm", b"again", &big, 0).unwrap();
        let free = s.region().free_bytes();
        assert!(free > 2 * 1000, "coalesced free space: {free}");
    }

    #[test]
    fn cas_increments_from_processes_are_exact() {
        let (s, _) = store(1 << 16);
        s.set("vm", b"n", b"0", 0).unwrap();
        let region = *s.region();
        let mut children = Vec::new();
        for _ in 0..3 {
            // SAFETY: the child only uses the shared mapping and leaves with _exit.
            let pid = unsafe { libc::fork() };
            assert!(pid >= 0);
            if pid == 0 {
                let s = reattach(region);
                for _ in 0..2000 {
                    loop {
                        let (v, cas) = SharedDataStore::get(&s, "vm", b"n").unwrap();
                        let n: u64 = String::from_utf8(v).unwrap().parse().unwrap();
                        if s.set("vm", b"n", (n + 1).to_string().as_bytes(), cas).is_ok() {
                            break;
                        }
                    }
                }
                // SAFETY: leave the child without running the test harness.
                unsafe { libc::_exit(0) };
            }
            children.push(pid);
        }
        for pid in children {
            let mut status = 0;
            // SAFETY: our own child.
            unsafe { libc::waitpid(pid, &mut status, 0) };
            assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
        }
        assert_eq!(SharedDataStore::get(&s, "vm", b"n").unwrap().0, b"6000");
    }

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

    #[test]
    fn an_item_enqueued_in_another_process_reaches_the_registrant_through_poll() {
        let (s, _) = store(1 << 16);
        let recorder = Arc::new(Recorder::default());
        let server: Arc<dyn ServerHost> = recorder.clone();
        let id = s.register("vm", "q", QueueOwner { server: Arc::downgrade(&server), root_context_id: 5 }).unwrap();
        s.poll();
        let region = *s.region();
        // SAFETY: the child only uses the shared mapping and leaves with _exit.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            let other = reattach(region);
            let ok = other.resolve("vm", "q") == Some(id) && other.enqueue(id, b"from the child").is_ok() && other.enqueue(99, b"x") == Err(Status::NotFound);
            // SAFETY: as above.
            unsafe { libc::_exit(if ok { 0 } else { 1 }) };
        }
        let mut status = 0;
        // SAFETY: our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
        assert!(recorder.0.lock().unwrap().is_empty(), "nothing before the poll");
        s.poll();
        assert_eq!(*recorder.0.lock().unwrap(), vec![(5, id)]);
        s.poll();
        assert_eq!(recorder.0.lock().unwrap().len(), 1, "one notification per enqueue");
        assert_eq!(s.dequeue(id).unwrap(), b"from the child");
        assert_eq!(s.dequeue(id), Err(Status::Empty));
        // Local enqueue notifies at once.
        s.enqueue(id, b"local").unwrap();
        assert_eq!(recorder.0.lock().unwrap().len(), 2);
        assert_eq!(s.queue_len(id), Ok(1));
    }

    #[test]
    fn metrics_have_the_same_id_everywhere_and_sum() {
        let (s, _) = store(1 << 16);
        let c = s.define(MetricType::Counter, "c").unwrap();
        let g = s.define(MetricType::Gauge, "g").unwrap();
        let h = s.define(MetricType::Histogram, "h").unwrap();
        assert_eq!(s.define(MetricType::Gauge, "c"), Err(Status::BadArgument));
        let region = *s.region();
        // SAFETY: the child only uses the shared mapping and leaves with _exit.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            let o = reattach(region);
            let ok = o.define(MetricType::Counter, "c") == Ok(c) && o.increment(c, 3).is_ok() && o.increment(g, -2).is_ok() && o.record(h, 7).is_ok();
            // SAFETY: as above.
            unsafe { libc::_exit(if ok { 0 } else { 1 }) };
        }
        let mut status = 0;
        // SAFETY: our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
        s.increment(c, 2).unwrap();
        assert_eq!(s.increment(c, -1), Err(Status::BadArgument));
        s.record(h, 20000).unwrap();
        assert_eq!(MetricStore::get(&s, c), Ok(5));
        assert_eq!(s.increment(c, 0), Err(Status::BadArgument), "a counter grows by a positive delta only");
        s.record(c, 4).unwrap();
        assert_eq!(MetricStore::get(&s, c), Ok(9), "recording a counter adds to it");
        assert_eq!(MetricStore::get(&s, g), Ok(-2));
        assert_eq!(MetricStore::get(&s, h), Err(Status::BadArgument));
        assert_eq!(MetricStore::get(&s, 99), Err(Status::NotFound));
        let snap = s.snapshot();
        assert_eq!(snap[2].count, 2);
        assert_eq!(snap[2].sum, 20007);
        assert_eq!(*snap[2].buckets.last().unwrap(), 2);
        assert_eq!(snap[0].name, "c");
    }
}
