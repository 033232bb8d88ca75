//! State plugins share across instances: key/value data with compare-and-swap,
//! and message queues. Both are scoped by `vm_id` and process-wide; a server
//! whose workers are processes (NGINX) supplies its own cross-process stores
//! through the same traits (`shm_store`).
//!
//! Caps (`vm_config.limits`, [`crate::config::Quotas`]): the bytes a `vm_id`
//! holds are counted by the store and capped by `max_shared_data_size`: the
//! keys and values its plugins wrote (in its own data or, with
//! `global_map_access.write`, another VM's: the writer pays, so writing under
//! ever new vm_ids gains no room) plus the items waiting in the queues it
//! registered. A queue holds at most its registrant's `max_queue_length`
//! items; a `vm_id` registers at most [`MAX_QUEUES_PER_VM`] queues. A refusal
//! is a [`SharedError`], which the hostcalls turn into a status the SDKs accept.
//!
//! Queue ids are `tag << 16 | slot + 1` with a random 16-bit tag per queue:
//! the same (`vm_id`, name) always gets the same id, but ids are not a
//! sequence a plugin can walk. Who may use a queue is decided by the hostcalls
//! from the queue's `vm_id` ([`QueueStore::queue_vm_id`]).

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, RwLock, Weak};

use crate::abi::Status;
use crate::config::Quotas;
use crate::host::ServerHost;

/// The most queues one `vm_id` may register (a plugin registering queue after
/// queue must not take every queue slot of NGINX's zone from other plugins).
pub const MAX_QUEUES_PER_VM: u32 = 64;

/// Why a shared-data, queue or metric operation did not happen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SharedError {
    #[error("the CAS token is not the key's current one")]
    CasMismatch,
    #[error("no such queue")]
    NotFound,
    #[error("the queue is empty")]
    Empty,
    #[error("vm_id {vm_id:?} would hold {would_hold} bytes of shared data it wrote and of items queued for it, over its max_shared_data_size of {limit}")]
    OverQuota { vm_id: String, would_hold: u64, limit: u64 },
    #[error("{waiting} items already wait in the queue, its max_queue_length")]
    QueueFull { waiting: u32 },
    #[error("vm_id {vm_id:?} already has {MAX_QUEUES_PER_VM} queues, the most one vm_id may register")]
    TooManyQueues { vm_id: String },
    #[error("vm_id {vm_id:?} already defined {limit} metrics, its max_metrics")]
    TooManyMetrics { vm_id: String, limit: u32 },
    /// An empty metric name, or a name already defined with another type.
    #[error("bad argument")]
    BadArgument,
    /// The store has no room (NGINX's zone is full, or a table of it is).
    #[error("{0}")]
    Full(String),
}

impl SharedError {
    /// The status of a plain store call (tests, embedders without caps).
    pub fn status(&self) -> Status {
        match self {
            SharedError::CasMismatch => Status::CasMismatch,
            SharedError::NotFound => Status::NotFound,
            SharedError::Empty => Status::Empty,
            SharedError::BadArgument => Status::BadArgument,
            _ => Status::InternalFailure,
        }
    }
}

/// Key/value data shared by every instance with the same `vm_id`.
pub trait SharedDataStore: Send + Sync {
    /// The value and its CAS token, `None` when the key is absent.
    fn get(&self, vm_id: &str, key: &[u8]) -> Option<(Vec<u8>, u32)>;
    /// Stores `value` under `key` of `vm_id`. `cas == 0` overwrites
    /// unconditionally; otherwise the write happens only if `cas` is the key's
    /// current token or the key is absent (as cpp-host's `SharedData::set`).
    /// The key and value count for `writer.vm_id` from then on; a write that
    /// would take its bytes above `writer.max_bytes` is refused
    /// ([`SharedError::OverQuota`]); one that does not grow them always passes.
    fn set_within(
        &self,
        vm_id: &str,
        key: &[u8],
        value: &[u8],
        cas: u32,
        writer: Writer<'_>,
    ) -> Result<(), SharedError>;
    /// [`SharedDataStore::set_within`] by `vm_id` itself, without a cap.
    fn set(&self, vm_id: &str, key: &[u8], value: &[u8], cas: u32) -> Result<(), Status> {
        self.set_within(vm_id, key, value, cas, Writer { vm_id, max_bytes: u64::MAX }).map_err(|e| e.status())
    }
}

/// Who writes shared data: the writing plugin's `vm_id`, which pays for what
/// it stores, and its `max_shared_data_size`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Writer<'a> {
    pub vm_id: &'a str,
    pub max_bytes: u64,
}

/// Who is told when a queue gets data: the root context that registered it.
#[derive(Clone)]
pub struct QueueOwner {
    pub server: Weak<dyn ServerHost>,
    pub root_context_id: u32,
}

/// The caps a queue keeps from the plugin that registered it (last).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueLimits {
    /// Items waiting at most (`max_queue_length`).
    pub max_length: u32,
    /// The registrant's `max_shared_data_size`: queued bytes count with the
    /// `vm_id`'s shared data.
    pub max_bytes: u64,
}

impl QueueLimits {
    pub const UNLIMITED: QueueLimits = QueueLimits { max_length: u32::MAX, max_bytes: u64::MAX };

    pub fn from_quotas(q: &Quotas) -> QueueLimits {
        QueueLimits { max_length: q.max_queue_length, max_bytes: q.max_shared_data_size }
    }
}

/// Shared queues as the hostcalls see them, keyed by (`vm_id`, name), with
/// ids handed to plugins. [`InProcessStore`] is the in-process one; the NGINX
/// module has one in a shared-memory zone (`shm_store`).
pub trait QueueStore: Send + Sync {
    /// Registers (or re-registers) a queue of `vm_id`; the latest registrant
    /// is its owner and its `limits` apply from then on.
    fn register(&self, vm_id: &str, name: &str, owner: QueueOwner, limits: QueueLimits) -> Result<u32, SharedError>;
    fn resolve(&self, vm_id: &str, name: &str) -> Option<u32>;
    /// The `vm_id` a queue belongs to (whose rights guard it); `None` for an unknown id.
    fn queue_vm_id(&self, queue_id: u32) -> Option<String>;
    /// Appends data and has the owner's `on_queue_ready` run. NOT_FOUND for an
    /// unknown id; QueueFull / OverQuota past the queue's limits.
    fn enqueue(&self, queue_id: u32, data: &[u8]) -> Result<(), SharedError>;
    /// Takes the oldest item: Empty when there is none, NotFound for an unknown id.
    fn dequeue(&self, queue_id: u32) -> Result<Vec<u8>, SharedError>;
}

/// The low 16 bits of a queue id: its slot + 1.
pub(crate) const SLOT_BITS: u32 = 16;

/// A random tag in 1..=0xffff for a new queue (or metric) id.
pub(crate) fn random_tag() -> u32 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    static KEYS: LazyLock<RandomState> = LazyLock::new(RandomState::new);
    let mut h = KEYS.build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    // SAFETY: getpid has no preconditions.
    h.write_i32(unsafe { libc::getpid() });
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
    (h.finish() % 0xffff) as u32 + 1
}

/// `(slot, tag)` of a queue or metric id; `None` for an id no store hands out.
pub(crate) fn split_id(id: u32) -> Option<(usize, u32)> {
    let slot = (id & ((1 << SLOT_BITS) - 1)).checked_sub(1)? as usize;
    let tag = id >> SLOT_BITS;
    (tag != 0).then_some((slot, tag))
}

pub(crate) fn make_id(slot: usize, tag: u32) -> u32 {
    (tag << SLOT_BITS) | (slot as u32 + 1)
}

struct Queue {
    vm_id: String,
    name: String,
    tag: u32,
    items: VecDeque<Vec<u8>>,
    limits: QueueLimits,
    owner: Option<QueueOwner>,
}

/// A stored value: its bytes, CAS token and the vm_id that pays for it.
struct Entry {
    value: Vec<u8>,
    cas: u32,
    payer: String,
}

#[derive(Default)]
struct Inner {
    data: HashMap<(String, Vec<u8>), Entry>,
    /// Bytes each vm_id holds: keys and values it wrote, plus items waiting in its queues.
    held: HashMap<String, u64>,
    queues: Vec<Queue>,
    /// One counter for all keys, as in the reference host: a token is never
    /// reused soon, so an ABA sequence cannot pass a stale CAS.
    next_cas: u32,
}

impl Inner {
    fn queue(&mut self, queue_id: u32) -> Result<&mut Queue, SharedError> {
        let (slot, tag) = split_id(queue_id).ok_or(SharedError::NotFound)?;
        self.queues.get_mut(slot).filter(|q| q.tag == tag).ok_or(SharedError::NotFound)
    }

    /// Charges `grow` more bytes to `vm_id` if that keeps it within `limit`.
    fn charge(&mut self, vm_id: &str, grow: u64, limit: u64) -> Result<(), SharedError> {
        let held = self.held.get(vm_id).copied().unwrap_or(0);
        let would_hold = held.saturating_add(grow);
        if grow > 0 && would_hold > limit {
            return Err(SharedError::OverQuota { vm_id: vm_id.to_string(), would_hold, limit });
        }
        self.held.insert(vm_id.to_string(), would_hold);
        Ok(())
    }

    fn release(&mut self, vm_id: &str, bytes: u64) {
        if let Some(h) = self.held.get_mut(vm_id) {
            *h = h.saturating_sub(bytes);
        }
    }
}

/// The in-process store of shared data and queues (Traffic Server, the C API,
/// tests): one lock over both, so that their bytes count against one cap per
/// `vm_id`. Hostcalls hold it for a copy of one value, so contention is short.
#[derive(Default)]
pub struct InProcessStore {
    inner: Mutex<Inner>,
}

/// Upper bound on queues in one process (the id has 16 bits of slot).
const MAX_PROCESS_QUEUES: usize = (1 << SLOT_BITS) - 1;

impl InProcessStore {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The bytes `vm_id` holds (for tests and diagnostics).
    pub fn held_bytes(&self, vm_id: &str) -> u64 {
        self.lock().held.get(vm_id).copied().unwrap_or(0)
    }

    /// The items waiting in a queue (for tests and diagnostics).
    pub fn queue_len(&self, queue_id: u32) -> Result<usize, SharedError> {
        Ok(self.lock().queue(queue_id)?.items.len())
    }
}

impl SharedDataStore for InProcessStore {
    fn get(&self, vm_id: &str, key: &[u8]) -> Option<(Vec<u8>, u32)> {
        self.lock().data.get(&(vm_id.to_string(), key.to_vec())).map(|e| (e.value.clone(), e.cas))
    }

    fn set_within(
        &self,
        vm_id: &str,
        key: &[u8],
        value: &[u8],
        cas: u32,
        writer: Writer<'_>,
    ) -> Result<(), SharedError> {
        let mut inner = self.lock();
        let slot = (vm_id.to_string(), key.to_vec());
        // A CAS only guards an existing key: on an absent one the value is
        // stored, as in cpp-host's SharedData::set.
        let old = match inner.data.get(&slot) {
            Some(e) if cas != 0 && e.cas != cas => return Err(SharedError::CasMismatch),
            Some(e) => Some(((key.len() + e.value.len()) as u64, e.payer.clone())),
            None => None,
        };
        let new = (key.len() + value.len()) as u64;
        // The writer pays for the new value; whoever paid for the old one gets its bytes back.
        let grow = match &old {
            Some((bytes, payer)) if payer == writer.vm_id => new.saturating_sub(*bytes),
            _ => new,
        };
        inner.charge(writer.vm_id, grow, writer.max_bytes)?;
        match &old {
            Some((bytes, payer)) if payer == writer.vm_id => inner.release(payer, bytes.saturating_sub(new)),
            Some((bytes, payer)) => inner.release(payer, *bytes),
            None => {}
        }
        // Tokens start at 1: 0 means "no CAS" to the plugin.
        let token = inner.next_cas.wrapping_add(1).max(1);
        inner.next_cas = token;
        inner.data.insert(slot, Entry { value: value.to_vec(), cas: token, payer: writer.vm_id.to_string() });
        Ok(())
    }
}

impl QueueStore for InProcessStore {
    fn register(&self, vm_id: &str, name: &str, owner: QueueOwner, limits: QueueLimits) -> Result<u32, SharedError> {
        let mut inner = self.lock();
        if let Some(slot) = inner.queues.iter().position(|q| q.vm_id == vm_id && q.name == name) {
            let q = &mut inner.queues[slot];
            q.owner = Some(owner);
            q.limits = limits;
            return Ok(make_id(slot, q.tag));
        }
        if inner.queues.iter().filter(|q| q.vm_id == vm_id).count() as u32 >= MAX_QUEUES_PER_VM {
            return Err(SharedError::TooManyQueues { vm_id: vm_id.to_string() });
        }
        if inner.queues.len() >= MAX_PROCESS_QUEUES {
            return Err(SharedError::Full(format!(
                "the process holds {MAX_PROCESS_QUEUES} shared queues, the most it may"
            )));
        }
        let tag = random_tag();
        inner.queues.push(Queue {
            vm_id: vm_id.into(),
            name: name.into(),
            tag,
            items: VecDeque::new(),
            limits,
            owner: Some(owner),
        });
        Ok(make_id(inner.queues.len() - 1, tag))
    }

    fn resolve(&self, vm_id: &str, name: &str) -> Option<u32> {
        let inner = self.lock();
        let slot = inner.queues.iter().position(|q| q.vm_id == vm_id && q.name == name)?;
        Some(make_id(slot, inner.queues[slot].tag))
    }

    fn queue_vm_id(&self, queue_id: u32) -> Option<String> {
        self.lock().queue(queue_id).ok().map(|q| q.vm_id.clone())
    }

    fn enqueue(&self, queue_id: u32, data: &[u8]) -> Result<(), SharedError> {
        let owner = {
            let mut inner = self.lock();
            let q = inner.queue(queue_id)?;
            if q.items.len() as u64 >= q.limits.max_length as u64 {
                return Err(SharedError::QueueFull { waiting: q.items.len() as u32 });
            }
            let (vm_id, max_bytes) = (q.vm_id.clone(), q.limits.max_bytes);
            inner.charge(&vm_id, data.len() as u64, max_bytes)?;
            let q = inner.queue(queue_id)?;
            q.items.push_back(data.to_vec());
            q.owner.clone()
        };
        // Notify outside the lock: the server may take its own locks.
        if let Some(owner) = owner {
            if let Some(server) = owner.server.upgrade() {
                server.notify_queue_ready(owner.root_context_id, queue_id);
            }
        }
        Ok(())
    }

    fn dequeue(&self, queue_id: u32) -> Result<Vec<u8>, SharedError> {
        let mut inner = self.lock();
        let q = inner.queue(queue_id)?;
        let item = q.items.pop_front().ok_or(SharedError::Empty)?;
        let vm_id = q.vm_id.clone();
        inner.release(&vm_id, item.len() as u64);
        Ok(item)
    }
}

/// A store installed with [`set_process_stores`] (an NGINX worker's
/// shared-memory zone); `None`: the in-process one.
struct Installed {
    data: Arc<dyn SharedDataStore>,
    queues: Arc<dyn QueueStore>,
}

static INSTALLED: RwLock<Option<Installed>> = RwLock::new(None);

/// Makes `data` and `queues` the stores of every VM created afterwards in this
/// process (a server whose workers are processes installs its cross-process
/// stores once per worker, before starting VMs).
pub fn set_process_stores(data: Arc<dyn SharedDataStore>, queues: Arc<dyn QueueStore>) {
    *INSTALLED.write().unwrap_or_else(|p| p.into_inner()) = Some(Installed { data, queues });
}

/// The in-process store of this process (shared data and queues in one, so
/// that both count against a `vm_id`'s cap).
pub fn process_store() -> Arc<InProcessStore> {
    static STORE: LazyLock<Arc<InProcessStore>> = LazyLock::new(Default::default);
    STORE.clone()
}

/// The store every VM in this process uses unless the server supplies one.
pub fn process_shared_data() -> Arc<dyn SharedDataStore> {
    if let Some(i) = INSTALLED.read().unwrap_or_else(|p| p.into_inner()).as_ref() {
        return i.data.clone();
    }
    process_store()
}

/// The queues every VM in this process uses unless the server supplies them.
pub fn process_queues() -> Arc<dyn QueueStore> {
    if let Some(i) = INSTALLED.read().unwrap_or_else(|p| p.into_inner()).as_ref() {
        return i.queues.clone();
    }
    process_store()
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Nobody;
    impl ServerHost for Nobody {
        fn log(&self, _: &crate::host::PluginRef, _: crate::abi::LogLevel, _: &str) {}
        fn log_level(&self) -> crate::abi::LogLevel {
            crate::abi::LogLevel::Info
        }
        fn dispatch_http_call(&self, _: u32, _: u32, _: crate::host::HttpCallRequest) -> Result<(), Status> {
            Err(Status::Unimplemented)
        }
        fn set_tick_period(&self, _: u32, _: Option<std::time::Duration>) {}
        fn notify_queue_ready(&self, _: u32, _: u32) {}
    }

    fn owner() -> QueueOwner {
        let server: Weak<dyn ServerHost> = Weak::<Nobody>::new();
        QueueOwner { server, root_context_id: 1 }
    }

    #[test]
    fn cas_zero_overwrites_and_stale_cas_is_refused() {
        let s = InProcessStore::default();
        s.set("vm", b"k", b"1", 0).unwrap();
        let (_, cas) = s.get("vm", b"k").unwrap();
        s.set("vm", b"k", b"2", cas).unwrap();
        assert_eq!(s.set("vm", b"k", b"3", cas), Err(Status::CasMismatch));
        s.set("vm", b"k", b"4", 0).unwrap();
        assert_eq!(s.get("vm", b"k").unwrap().0, b"4");
        assert!(s.get("other", b"k").is_none(), "data is scoped by vm_id");
    }

    #[test]
    fn cas_on_absent_key_stores_the_value() {
        let s = InProcessStore::default();
        assert_eq!(s.set("vm", b"new", b"x", 7), Ok(()));
        assert_eq!(s.get("vm", b"new").unwrap().0, b"x");
    }

    #[test]
    fn concurrent_cas_increments_are_exact() {
        let s = Arc::new(InProcessStore::default());
        s.set("vm", b"n", b"0", 0).unwrap();
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let s = s.clone();
                std::thread::spawn(move || {
                    for _ in 0..5000 {
                        loop {
                            let (v, cas) = s
                                .get("vm", b"n")
                                .map(|(v, c)| (String::from_utf8(v).unwrap().parse::<u64>().unwrap(), c))
                                .unwrap();
                            if s.set("vm", b"n", (v + 1).to_string().as_bytes(), cas).is_ok() {
                                break;
                            }
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(s.get("vm", b"n").unwrap().0, b"10000");
    }

    fn w(vm_id: &str, max_bytes: u64) -> Writer<'_> {
        Writer { vm_id, max_bytes }
    }

    #[test]
    fn shared_data_past_max_bytes_is_refused_and_shrinking_writes_pass() {
        let s = InProcessStore::default();
        s.set_within("vm", b"a", &[1; 60], 0, w("vm", 100)).unwrap();
        assert_eq!(s.held_bytes("vm"), 61);
        let e = s.set_within("vm", b"b", &[1; 40], 0, w("vm", 100)).unwrap_err();
        assert_eq!(e, SharedError::OverQuota { vm_id: "vm".into(), would_hold: 102, limit: 100 });
        assert!(s.get("vm", b"b").is_none(), "nothing stored");
        // Another vm_id has its own count.
        s.set_within("other", b"b", &[1; 90], 0, w("other", 100)).unwrap();
        // Replacing with a smaller value frees room; an equal one always passes.
        s.set_within("vm", b"a", &[2; 10], 0, w("vm", 100)).unwrap();
        assert_eq!(s.held_bytes("vm"), 11);
        s.set_within("vm", b"b", &[1; 40], 0, w("vm", 100)).unwrap();
        s.set_within("vm", b"b", &[3; 40], 0, w("vm", 50)).unwrap();
        assert_eq!(s.held_bytes("vm"), 52);
    }

    #[test]
    fn the_writer_pays_also_in_another_vm_ids_data() {
        let s = InProcessStore::default();
        // Writing under ever new vm_ids gains no room: each write counts for the writer.
        for i in 0..3 {
            s.set_within(&format!("elsewhere{i}"), b"k", &[0; 39], 0, w("sprayer", 130)).unwrap();
        }
        assert!(matches!(
            s.set_within("elsewhere3", b"k", &[0; 39], 0, w("sprayer", 130)),
            Err(SharedError::OverQuota { .. })
        ));
        assert_eq!((s.held_bytes("sprayer"), s.held_bytes("elsewhere0")), (120, 0));
        // The owner overwriting it takes the bytes over; the sprayer gets them back.
        s.set_within("elsewhere0", b"k", b"mine", 0, w("elsewhere0", 100)).unwrap();
        assert_eq!((s.held_bytes("sprayer"), s.held_bytes("elsewhere0")), (80, 5));
    }

    #[test]
    fn queued_items_count_against_the_queues_limits() {
        let s = InProcessStore::default();
        let id = s.register("vm", "q", owner(), QueueLimits { max_length: 2, max_bytes: 100 }).unwrap();
        s.enqueue(id, b"1").unwrap();
        s.enqueue(id, b"2").unwrap();
        assert_eq!(s.enqueue(id, b"3"), Err(SharedError::QueueFull { waiting: 2 }));
        assert_eq!(s.dequeue(id).unwrap(), b"1");
        assert_eq!(s.held_bytes("vm"), 1);
        // Queued bytes and shared data share the vm_id's count.
        s.set_within("vm", b"k", &[0; 90], 0, w("vm", 100)).unwrap();
        assert!(matches!(s.enqueue(id, &[0; 20]), Err(SharedError::OverQuota { .. })));
        assert_eq!(s.queue_len(id), Ok(1));
    }

    #[test]
    fn queue_ids_are_stable_per_name_and_not_a_sequence() {
        let s = InProcessStore::default();
        let a = s.register("vm", "a", owner(), QueueLimits::UNLIMITED).unwrap();
        let b = s.register("vm", "b", owner(), QueueLimits::UNLIMITED).unwrap();
        assert_eq!(s.register("vm", "a", owner(), QueueLimits::UNLIMITED), Ok(a));
        assert_eq!(s.resolve("vm", "b"), Some(b));
        assert!(a >= 1 << SLOT_BITS && b >= 1 << SLOT_BITS, "{a} {b}");
        for guess in [1, 2, 3, a + 1, b ^ (1 << SLOT_BITS)] {
            if guess != a && guess != b {
                assert_eq!(s.dequeue(guess), Err(SharedError::NotFound), "{guess}");
            }
        }
        assert_eq!(s.queue_vm_id(a).as_deref(), Some("vm"));
        assert_eq!(s.queue_vm_id(7), None);
    }

    #[test]
    fn a_vm_id_registers_at_most_max_queues_per_vm() {
        let s = InProcessStore::default();
        for i in 0..MAX_QUEUES_PER_VM {
            s.register("vm", &format!("q{i}"), owner(), QueueLimits::UNLIMITED).unwrap();
        }
        assert_eq!(
            s.register("vm", "one more", owner(), QueueLimits::UNLIMITED),
            Err(SharedError::TooManyQueues { vm_id: "vm".into() })
        );
        assert!(s.register("vm", "q0", owner(), QueueLimits::UNLIMITED).is_ok(), "re-registering is not a new queue");
        assert!(s.register("other", "q", owner(), QueueLimits::UNLIMITED).is_ok());
    }
}
