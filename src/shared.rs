//! State plugins share across instances: key/value data with compare-and-swap,
//! and message queues. Both are scoped by `vm_id` and process-wide; a server
//! whose workers are processes (NGINX) supplies its own cross-process stores
//! through the same traits.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, LazyLock, Mutex, RwLock, Weak};

use crate::abi::Status;
use crate::host::ServerHost;

/// Key/value data shared by every instance with the same `vm_id`.
pub trait SharedDataStore: Send + Sync {
    /// The value and its CAS token, `None` when the key is absent.
    fn get(&self, vm_id: &str, key: &[u8]) -> Option<(Vec<u8>, u32)>;
    /// Stores `value`. `cas == 0` overwrites unconditionally; otherwise the
    /// write happens only if `cas` is the key's current token (CAS_MISMATCH if not).
    fn set(&self, vm_id: &str, key: &[u8], value: &[u8], cas: u32) -> Result<(), Status>;
}

/// The in-process store: one map behind one mutex. Hostcalls hold it for a
/// copy of one value, so contention is short.
#[derive(Default)]
pub struct InProcessSharedData {
    entries: Mutex<HashMap<(String, Vec<u8>), (Vec<u8>, u32)>>,
    /// One counter for all keys, as in the reference host: a token is never
    /// reused, so an ABA sequence cannot pass a stale CAS.
    next_cas: AtomicU32,
}

impl SharedDataStore for InProcessSharedData {
    fn get(&self, vm_id: &str, key: &[u8]) -> Option<(Vec<u8>, u32)> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.get(&(vm_id.to_string(), key.to_vec())).cloned()
    }

    fn set(&self, vm_id: &str, key: &[u8], value: &[u8], cas: u32) -> Result<(), Status> {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let slot = (vm_id.to_string(), key.to_vec());
        // A CAS only guards an existing key: on an absent one the value is
        // stored, as in cpp-host's SharedData::set.
        if let Some((_, current)) = entries.get(&slot) {
            if cas != 0 && *current != cas {
                return Err(Status::CasMismatch);
            }
        }
        // Tokens start at 1: 0 means "no CAS" to the plugin.
        let token = self.next_cas.fetch_add(1, Ordering::Relaxed).wrapping_add(1).max(1);
        entries.insert(slot, (value.to_vec(), token));
        Ok(())
    }
}

/// A store installed with [`set_process_stores`] (an NGINX worker's
/// shared-memory zone); `None`: the in-process ones.
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

/// The store every VM in this process uses unless the server supplies one.
pub fn process_shared_data() -> Arc<dyn SharedDataStore> {
    static STORE: LazyLock<Arc<InProcessSharedData>> = LazyLock::new(Default::default);
    if let Some(i) = INSTALLED.read().unwrap_or_else(|p| p.into_inner()).as_ref() {
        return i.data.clone();
    }
    STORE.clone()
}

/// Who is told when a queue gets data: the root context that registered it.
#[derive(Clone)]
pub struct QueueOwner {
    pub server: Weak<dyn ServerHost>,
    pub root_context_id: u32,
}

struct Queue {
    vm_id: String,
    name: String,
    items: VecDeque<Vec<u8>>,
    owner: Option<QueueOwner>,
}

/// Shared queues as the hostcalls see them, keyed by (`vm_id`, name), with
/// ids handed to plugins. [`SharedQueues`] is the in-process one; the NGINX
/// module has one in a shared-memory zone (`shm_store`).
pub trait QueueStore: Send + Sync {
    /// Registers (or re-registers) a queue; the latest registrant is its owner.
    /// INTERNAL_FAILURE when the store has no room for another queue.
    fn register(&self, vm_id: &str, name: &str, owner: QueueOwner) -> Result<u32, Status>;
    fn resolve(&self, vm_id: &str, name: &str) -> Option<u32>;
    /// Appends data and has the owner's `on_queue_ready` run. NOT_FOUND for an
    /// unknown id, INTERNAL_FAILURE when the queue or the store is full.
    fn enqueue(&self, queue_id: u32, data: &[u8]) -> Result<(), Status>;
    /// Takes the oldest item: EMPTY when there is none, NOT_FOUND for an unknown id.
    fn dequeue(&self, queue_id: u32) -> Result<Vec<u8>, Status>;
}

/// In-process shared queues (Traffic Server, the C API, tests).
#[derive(Default)]
pub struct SharedQueues {
    queues: Mutex<Vec<Queue>>,
}

/// Upper bound on queued items per queue, so a producer without a consumer
/// cannot grow the server without limit.
pub const MAX_QUEUE_ITEMS: usize = 10_000;

impl SharedQueues {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Queue>> {
        self.queues.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers (or re-registers) a queue; the latest registrant is its owner.
    pub fn register(&self, vm_id: &str, name: &str, owner: QueueOwner) -> u32 {
        let mut queues = self.lock();
        if let Some(i) = queues.iter().position(|q| q.vm_id == vm_id && q.name == name) {
            queues[i].owner = Some(owner);
            return i as u32 + 1;
        }
        queues.push(Queue { vm_id: vm_id.into(), name: name.into(), items: VecDeque::new(), owner: Some(owner) });
        queues.len() as u32
    }

    pub fn resolve(&self, vm_id: &str, name: &str) -> Option<u32> {
        self.lock().iter().position(|q| q.vm_id == vm_id && q.name == name).map(|i| i as u32 + 1)
    }

    /// Appends data and tells the owner. NOT_FOUND for an unknown id.
    pub fn enqueue(&self, queue_id: u32, data: &[u8]) -> Result<(), Status> {
        let owner = {
            let mut queues = self.lock();
            let q = queues.get_mut(index(queue_id)?).ok_or(Status::NotFound)?;
            if q.items.len() >= MAX_QUEUE_ITEMS {
                return Err(Status::InternalFailure);
            }
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

    /// Takes the oldest item: EMPTY when there is none, NOT_FOUND for an unknown id.
    pub fn dequeue(&self, queue_id: u32) -> Result<Vec<u8>, Status> {
        let mut queues = self.lock();
        let q = queues.get_mut(index(queue_id)?).ok_or(Status::NotFound)?;
        q.items.pop_front().ok_or(Status::Empty)
    }
}

fn index(queue_id: u32) -> Result<usize, Status> {
    (queue_id as usize).checked_sub(1).ok_or(Status::NotFound)
}

impl QueueStore for SharedQueues {
    fn register(&self, vm_id: &str, name: &str, owner: QueueOwner) -> Result<u32, Status> {
        Ok(SharedQueues::register(self, vm_id, name, owner))
    }
    fn resolve(&self, vm_id: &str, name: &str) -> Option<u32> {
        SharedQueues::resolve(self, vm_id, name)
    }
    fn enqueue(&self, queue_id: u32, data: &[u8]) -> Result<(), Status> {
        SharedQueues::enqueue(self, queue_id, data)
    }
    fn dequeue(&self, queue_id: u32) -> Result<Vec<u8>, Status> {
        SharedQueues::dequeue(self, queue_id)
    }
}

/// The queues every VM in this process uses unless the server supplies them.
pub fn process_queues() -> Arc<dyn QueueStore> {
    static QUEUES: LazyLock<Arc<SharedQueues>> = LazyLock::new(Default::default);
    if let Some(i) = INSTALLED.read().unwrap_or_else(|p| p.into_inner()).as_ref() {
        return i.queues.clone();
    }
    QUEUES.clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cas_zero_overwrites_and_stale_cas_is_refused() {
        let s = InProcessSharedData::default();
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
        let s = InProcessSharedData::default();
        assert_eq!(s.set("vm", b"new", b"x", 7), Ok(()));
        assert_eq!(s.get("vm", b"new").unwrap().0, b"x");
    }

    #[test]
    fn concurrent_cas_increments_are_exact() {
        let s = Arc::new(InProcessSharedData::default());
        s.set("vm", b"n", b"0", 0).unwrap();
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let s = s.clone();
                std::thread::spawn(move || {
                    for _ in 0..5000 {
                        loop {
                            let (v, cas) = s.get("vm", b"n").map(|(v, c)| (String::from_utf8(v).unwrap().parse::<u64>().unwrap(), c)).unwrap();
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
}
