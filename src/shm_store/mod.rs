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
//! - shared data: entries `[next hash cas vm_len key_len val_len payer | vm_id key value]`
//!   chained per bucket; a `set` writes a new entry and frees the old one. `payer` is
//!   the usage record of the vm_id whose plugin wrote it.
//! - queues: `[vm_len name_len owner_pid owner_root pending head tail items tag max_len
//!   max_bytes usage | vm_id name]` and items `[next len | data]`; the queue id is
//!   `tag << 16 | slot + 1` with a random tag (see `shared`).
//! - metrics: `[kind name_len tag owner value count sum buckets[13] | name]`, updated
//!   with atomic instructions without the lock; the id is `tag << 16 | slot + 1`, so a
//!   name defined in one process has the same id in all.
//! - usage: `[held metrics queues vm_len | vm_id]` per vm_id: the bytes it holds (keys
//!   and values its plugins wrote, items waiting in its queues), the metrics it defined
//!   and the queues it registered, counted here so that caps hold for all processes
//!   together. Only vm_ids of plugins that write, register or define get one.
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
//! Metric values are updated without the lock, through offsets read before;
//! an update racing with a rebuild may land in the rebuilt heap (a rebuild
//! only follows damage; the checks find what such a write breaks).
//!
//! A full block answers [`SharedError::Full`] (the hostcalls turn it into the
//! status the SDKs accept, as for a cap) and is logged (at most once a second
//! per process).

mod check;
mod datastore;
mod region;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::atomic::{compiler_fence, AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::abi::{LogLevel, MetricType};
use crate::metrics::{MetricSnapshot, MetricStore, HISTOGRAM_BOUNDS};
use crate::shared::{
    make_id, random_tag, split_id, QueueLimits, QueueOwner, QueueStore, SharedDataStore, SharedError, Writer,
    MAX_QUEUES_PER_VM,
};
pub use datastore::{ShmDataStore, DATASTORE_VM_ID};
use region::*;
pub use region::{
    RegionError, ShmRegion, SpinLock, ZoneLock, DATA_BUCKETS, MAX_METRICS, MAX_QUEUES, MAX_VMS, MIN_SIZE,
};

/// How often an NGINX worker looks for queue notifications from other workers.
pub const POLL_INTERVAL: Duration = Duration::from_millis(10);

/// A warning when the `vm_id`s' shared-state caps (`max_shared_data_size`,
/// each `vm_id` with the largest of its plugins') cannot all be held by a
/// block of `len` bytes: then one VM can fill the block and keep the others
/// from writing. `None` with fewer than two vm_ids (nothing to keep apart).
pub fn overcommit_warning(len: usize, caps: &[(String, u64)]) -> Option<String> {
    let mut per_vm: Vec<(String, u64)> = Vec::new();
    for (vm_id, cap) in caps {
        match per_vm.iter_mut().find(|(v, _)| v == vm_id) {
            Some((_, c)) => *c = (*c).max(*cap),
            None => per_vm.push((vm_id.clone(), *cap)),
        }
    }
    let room = len.saturating_sub(HEADER_SIZE) as u64;
    let total = per_vm.iter().fold(0u64, |t, (_, c)| t.saturating_add(*c));
    if per_vm.len() < 2 || total <= room {
        return None;
    }
    let list = per_vm.iter().map(|(v, c)| format!("{v:?}: {c}")).collect::<Vec<_>>().join(", ");
    Some(format!(
        "the zone leaves about {room} bytes for shared data and queued items, less than the vm_ids may hold together ({list}): one VM can fill it and keep the others from writing; lower vm_config.limits.max_shared_data_size or raise proxy_wasm_shm_size"
    ))
}
// Record layouts (payload offsets).
const D_NEXT: u32 = 0;
const D_HASH: u32 = 4;
const D_CAS: u32 = 8;
const D_VM: u32 = 12;
const D_KEY: u32 = 16;
const D_VAL: u32 = 20;
/// The usage record of the vm_id that wrote the entry (it pays for its bytes).
const D_PAYER: u32 = 24;
const D_BYTES: u32 = 28;

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
    u32::try_from(n)
        .map_err(|_| Fail::Refused(SharedError::Full(format!("{n} bytes do not fit in the shared memory zone"))))
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

/// Where a store's log lines go (the server's log).
pub type Report = Box<dyn Fn(LogLevel, &str) + Send + Sync>;

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
    report: Report,
    last_full_report: Mutex<Option<Instant>>,
}

impl ShmStore {
    /// `report` gets the store's log lines: a full region (error, at most once
    /// a second), an undone update or a rebuild (critical).
    pub fn new(region: ShmRegion, lock: Box<dyn ZoneLock>, report: Report) -> ShmStore {
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
            let checked = if self.region.rollback() {
                self.check_all()
            } else {
                Err(Corrupt("its undo journal is damaged".into()))
            };
            match checked {
                Ok(()) => (self.report)(
                    LogLevel::Critical,
                    &format!(
                        "process {pid} died while updating the shared memory zone; its unfinished update was undone"
                    ),
                ),
                Err(c) => self
                    .rebuild(&format!("process {pid} died while updating it, and after undoing that update: {}", c.0)),
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
        if slot >= MAX_QUEUES
            || self.region.header().queues[slot].load(Ordering::Acquire) != 0
            || self.find_queue(&q.vm_id, &q.name)?.is_some()
        {
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
        if slot >= MAX_METRICS
            || self.region.header().metrics[slot].load(Ordering::Acquire) != 0
            || self.find_metric(&m.name)?.is_some()
        {
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
            return Err(Fail::Refused(SharedError::Full(format!(
                "the shared memory zone holds the shared state of {MAX_VMS} vm_ids, the most it may"
            ))));
        }
        let Some(u) = tx.alloc(size)? else {
            return Err(self.full(&format!("the usage record of vm_id {vm_id:?}"), size));
        };
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
        self.update(|_| {
            Ok(match self.find_usage(vm_id)? {
                Some(u) => self.region.load(u + U_HELD)? as u64,
                None => 0,
            })
        })
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
            if eh == h
                && vl as usize == vm_id.len()
                && kl as usize == key.len()
                && r.eq_bytes(cur + D_BYTES, vm_id.as_bytes())?
                && r.eq_bytes(cur + D_BYTES + vl, key)?
            {
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

    fn set_tx(&self, tx: &Tx, vm_id: &str, key: &[u8], value: &[u8], cas: u32, writer: Writer<'_>) -> Result<(), Fail> {
        let r = &self.region;
        let (h, link, old) = self.find_data(vm_id, key)?;
        // A CAS only guards an existing key (as in the in-process store).
        if let Some(e) = old {
            if cas != 0 && r.load(e + D_CAS)? != cas {
                return Err(Fail::Refused(SharedError::CasMismatch));
            }
        }
        // The writer pays for the new value; whoever paid for the old one gets its bytes back.
        let u = self.usage(tx, writer.vm_id)?;
        let new_bytes = (key.len() + value.len()) as u64;
        let old = match old {
            Some(e) => {
                let (_, kl, val) = self.data_lengths(e)?;
                let payer = r.load(e + D_PAYER)?;
                r.record(payer, U_BYTES as u64)?;
                Some((e, kl as u64 + val as u64, payer))
            }
            None => None,
        };
        let held = r.load(u + U_HELD)? as u64;
        let (would_hold, grows) = match old {
            Some((_, bytes, payer)) if payer == u => ((held + new_bytes).saturating_sub(bytes), new_bytes > bytes),
            _ => (held + new_bytes, new_bytes > 0),
        };
        if grows && would_hold > writer.max_bytes {
            return Err(Fail::Refused(SharedError::OverQuota {
                vm_id: writer.vm_id.to_string(),
                would_hold,
                limit: writer.max_bytes,
            }));
        }
        let size = D_BYTES as usize + vm_id.len() + key.len() + value.len();
        if size > r.len {
            return Err(self.full("a shared data value", size));
        }
        let Some(new) = tx.alloc(size)? else { return Err(self.full("a shared data value", size)) };
        let token = r.header().next_cas.load(Ordering::Relaxed).wrapping_add(1).max(1);
        tx.set(OFF_NEXT_CAS, token)?;
        for (field, v) in [
            (D_HASH, h),
            (D_CAS, token),
            (D_VM, u32_len(vm_id.len())?),
            (D_KEY, u32_len(key.len())?),
            (D_VAL, u32_len(value.len())?),
            (D_PAYER, u),
        ] {
            r.store(new + field, v)?;
        }
        r.put_bytes(new + D_BYTES, vm_id.as_bytes())?;
        r.put_bytes(new + D_BYTES + vm_id.len() as u32, key)?;
        r.put_bytes(new + D_BYTES + (vm_id.len() + key.len()) as u32, value)?;
        // The new entry takes the old one's place in the chain (or heads it).
        let next = match old {
            Some((e, _, _)) => r.load(e + D_NEXT)?,
            None => r.load(link)?,
        };
        r.store(new + D_NEXT, next)?;
        tx.set(link, new)?;
        if let Some((e, bytes, payer)) = old {
            tx.free(e)?;
            if payer != u {
                let left = r.load(payer + U_HELD)?.checked_sub(bytes as u32).ok_or_else(|| {
                    Corrupt(format!("usage record {payer} counts fewer bytes than an entry it paid for"))
                })?;
                tx.set(payer + U_HELD, left)?;
            }
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
    fn create_queue(
        &self,
        tx: &Tx,
        slot: usize,
        tag: u32,
        vm_id: &str,
        name: &str,
        limits: QueueLimits,
        u: u32,
    ) -> Result<u32, Fail> {
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
    fn register_tx(
        &self,
        tx: &Tx,
        vm_id: &str,
        name: &str,
        root: u32,
        limits: QueueLimits,
    ) -> Result<(u32, bool), Fail> {
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
        let items = r
            .load(q + Q_ITEMS)?
            .checked_sub(1)
            .ok_or_else(|| Corrupt(format!("queue {q} has items but counts none")))?;
        let u = r.load(q + Q_USAGE)?;
        r.record(u, U_BYTES as u64)?;
        let held = r
            .load(u + U_HELD)?
            .checked_sub(len)
            .ok_or_else(|| Corrupt(format!("usage record {u} counts fewer bytes than a queued item")))?;
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
            return if kind_of(k) == Some(kind) {
                Ok(make_id(slot, r.load(m + M_TAG)?))
            } else {
                Err(Fail::Refused(SharedError::BadArgument))
            };
        }
        let u = self.usage(tx, vm_id)?;
        if r.load(u + U_METRICS)? >= max_metrics {
            return Err(Fail::Refused(SharedError::TooManyMetrics { vm_id: vm_id.to_string(), limit: max_metrics }));
        }
        let count = r.header().metric_count.load(Ordering::Acquire);
        if count as usize >= MAX_METRICS {
            return Err(self
                .full(&format!("a new metric (the zone holds at most {MAX_METRICS})"), M_BYTES as usize + name.len()));
        }
        let tag = random_tag();
        self.create_metric(tx, count as usize, tag, kind, name, u)?;
        tx.set(OFF_METRIC_COUNT, count + 1)?;
        Ok(make_id(count as usize, tag))
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

    fn set_within(
        &self,
        vm_id: &str,
        key: &[u8],
        value: &[u8],
        cas: u32,
        writer: Writer<'_>,
    ) -> Result<(), SharedError> {
        self.update(|tx| self.set_tx(tx, vm_id, key, value, cas, writer))
    }
}

impl QueueStore for ShmStore {
    fn register(&self, vm_id: &str, name: &str, owner: QueueOwner, limits: QueueLimits) -> Result<u32, SharedError> {
        let (id, has_items) = self.update(|tx| self.register_tx(tx, vm_id, name, owner.root_context_id, limits))?;
        self.local()
            .queues
            .insert(id, LocalQueue { vm_id: vm_id.to_string(), name: name.to_string(), limits, owner: owner.clone() });
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
            // A counter only grows by a positive delta (as Envoy's incrementMetric).
            MetricType::Counter if delta <= 0 => Err(Status::BadArgument),
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
            // Recording a counter adds to it, a gauge is set (Envoy's recordMetric).
            MetricType::Counter => {
                cell(m + M_VALUE)?.fetch_add(value, Ordering::Relaxed);
            }
            MetricType::Gauge => cell(m + M_VALUE)?.store(value, Ordering::Relaxed),
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
                let mut running = 0u64;
                let buckets = (0..=HISTOGRAM_BOUNDS.len() as u32)
                    .map(|b| {
                        // Saturating: the counts are read from the zone, which anything may have written.
                        running = running.saturating_add(load(m + M_BUCKETS + 8 * b));
                        running
                    })
                    .collect();
                Some(MetricSnapshot {
                    id,
                    name,
                    kind,
                    value: load(m + M_VALUE) as i64,
                    count: load(m + M_COUNT),
                    sum: load(m + M_SUM),
                    buckets,
                })
            })
            .collect()
    }
}

// An i64 value in an AtomicU64 cell: fetch_add with wrapping two's complement
// is the same operation as on an AtomicI64.
const _: () = assert!(std::mem::size_of::<AtomicI64>() == std::mem::size_of::<AtomicU64>());
const _: () = assert!(M_VALUE.is_multiple_of(8) && HEAP_START.is_multiple_of(8));
