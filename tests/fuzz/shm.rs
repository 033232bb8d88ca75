//! The shared-memory store (`shm_store`, NGINX's zone of shared data, queues
//! and metrics): a worker that died mid-update, or anything else that writes
//! the zone, can leave any bytes in it, and every other worker then reads
//! them. A valid store is filled, then corrupted (random bytes, offsets and
//! lengths that point elsewhere, records cut short), then used.
//!
//! Property: using a corrupted zone never crashes, panics or hangs the
//! worker. Each case runs in a child process (as a worker is one), so that a
//! signal, an abort or an endless loop is seen and reported, not suffered;
//! the child's panic message and stderr come back through a pipe.
//!
//! A worker that starts after the damage checks the zone first (as NGINX
//! workers do): then the zone must also be consistent (`ShmStore::verify`)
//! after its use. And before any corruption, ordinary use must leave it
//! consistent. Written against the public API (`ShmRegion`, `ShmStore` and
//! the store traits). Queue and metric ids carry a random tag, so a replayed
//! case lays out the same records but not the same tag bytes.

use crate::common::TestServer;
use crate::engine::{self, Case, Rng};
use proxy_wasm_host::abi::MetricType;
use proxy_wasm_host::host::ServerHost;
use proxy_wasm_host::metrics::{MetricStore, HISTOGRAM_BOUNDS};
use proxy_wasm_host::shared::{QueueLimits, QueueOwner, QueueStore, SharedDataStore, Writer};
use proxy_wasm_host::shm_store::{ShmRegion, ShmStore, ZoneLock, MIN_SIZE};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// NGINX's lock is outside the zone; the children are single-threaded.
struct NoLock;

impl ZoneLock for NoLock {
    fn lock(&self) {}
    fn unlock(&self) {}
}

/// The queue and metric ids a worker was given. Ids carry a random tag
/// (`shared::random_tag`), so guessed small numbers would never name a live
/// queue or metric: the operations mostly use ids the store handed out.
#[derive(Default, Clone)]
struct Ids {
    queues: Vec<u32>,
    metrics: Vec<u32>,
}

impl Ids {
    fn pick(rng: &mut Rng, known: &[u32]) -> u32 {
        match rng.below(8) {
            _ if known.is_empty() => rng.interesting_u32(),
            0 => rng.interesting_u32(),
            // A known id with another tag: a stale id of a re-created slot.
            1 => *rng.pick(known) ^ (rng.range(1, 0xffff) as u32) << 16,
            _ => *rng.pick(known),
        }
    }
}

/// What a worker does with the store.
fn operate(rng: &mut Rng, store: &ShmStore, server: &Arc<dyn ServerHost>, ids: &mut Ids, ops: usize) {
    let vm = |rng: &mut Rng| (*rng.pick(&["vm", "other", ""])).to_string();
    let key = |rng: &mut Rng| -> Vec<u8> {
        match rng.below(3) {
            0 => format!("k{}", rng.below(40)).into_bytes(),
            1 => {
                let n = rng.len(64);
                rng.bytes(n)
            }
            _ => b"k".to_vec(),
        }
    };
    for _ in 0..ops {
        match rng.below(14) {
            0..=2 => {
                let (v, k) = (vm(rng), key(rng));
                let n = rng.len(2048);
                let value = rng.bytes(n);
                let cas = if rng.bool() { 0 } else { rng.u32() % 64 };
                // Sometimes under a cap, paid by another vm_id: the usage records are walked too.
                let writer = vm(rng);
                let max_bytes = if rng.bool() { u64::MAX } else { rng.range(0, 8192) as u64 };
                let _ = store.set_within(&v, &k, &value, cas, Writer { vm_id: &writer, max_bytes });
            }
            3..=4 => {
                let (v, k) = (vm(rng), key(rng));
                let _ = SharedDataStore::get(store, &v, &k);
            }
            5 => {
                let owner = QueueOwner { server: Arc::downgrade(server), root_context_id: rng.below(4) as u32 };
                let name = format!("q{}", rng.below(8));
                let limits = if rng.bool() {
                    QueueLimits::UNLIMITED
                } else {
                    QueueLimits { max_length: rng.range(0, 8) as u32, max_bytes: rng.range(0, 4096) as u64 }
                };
                if let Ok(id) = store.register(&vm(rng), &name, owner, limits) {
                    ids.queues.push(id);
                }
            }
            6 => {
                let name = format!("q{}", rng.below(8));
                if let Some(id) = store.resolve(&vm(rng), &name) {
                    ids.queues.push(id);
                }
                let _ = store.queue_vm_id(Ids::pick(rng, &ids.queues));
            }
            7 => {
                let n = rng.len(512);
                let data = rng.bytes(n);
                let _ = store.enqueue(Ids::pick(rng, &ids.queues), &data);
            }
            8 => {
                let _ = store.dequeue(Ids::pick(rng, &ids.queues));
            }
            9 => {
                let kind = *rng.pick(&[MetricType::Counter, MetricType::Gauge, MetricType::Histogram]);
                let name = format!("m{}", rng.below(8));
                let defined = if rng.bool() {
                    store.define(kind, &name).ok()
                } else {
                    store.define_within(kind, &name, &vm(rng), rng.range(0, 8) as u32).ok()
                };
                ids.metrics.extend(defined);
            }
            10 => {
                let id = Ids::pick(rng, &ids.metrics);
                let _ = match rng.below(3) {
                    0 => store.increment(id, rng.u64() as i64 % 1000),
                    1 => store.record(id, rng.u64()),
                    _ => MetricStore::get(store, id).map(|_| ()),
                };
            }
            11 => {
                let _ = store.snapshot();
            }
            12 => {
                let _ = store.queue_len(Ids::pick(rng, &ids.queues));
                let _ = store.region().free_bytes();
                let _ = store.held_bytes(&vm(rng));
            }
            _ => store.poll(),
        }
    }
}

/// Writes what a crashed worker or a stray write could leave: random bytes,
/// u32 fields set to offsets of other places, huge lengths, records cut.
fn corrupt(rng: &mut Rng, zone: &mut [u8]) -> String {
    let mut what = Vec::new();
    for _ in 0..rng.range(1, 6) {
        let len = zone.len();
        match rng.below(5) {
            0 => {
                let at = rng.below(len);
                let n = rng.range(1, 32).min(len - at);
                let bytes = rng.bytes(n);
                zone[at..at + n].copy_from_slice(&bytes);
                what.push(format!("{n} random bytes at {at:#x}"));
            }
            1 | 2 => {
                // A u32 field (4-aligned) set to another offset, possibly misaligned.
                let at = rng.below(len / 4) * 4;
                let v = match rng.below(4) {
                    0 => (rng.below(len / 8) * 8) as u32,
                    1 => rng.below(len) as u32,
                    2 => len as u32 - rng.below(16) as u32,
                    _ => rng.interesting_u32(),
                };
                zone[at..at + 4].copy_from_slice(&v.to_le_bytes());
                what.push(format!("u32 {v:#x} at {at:#x}"));
            }
            3 => {
                // A record cut short: a span zeroed.
                let at = rng.below(len);
                let n = rng.range(1, 256).min(len - at);
                zone[at..at + n].fill(0);
                what.push(format!("{n} bytes zeroed at {at:#x}"));
            }
            _ => {
                // Header words (buckets, queue and metric slots, the free list, counts).
                let at = rng.below(4096.min(len) / 4) * 4;
                let v = rng.interesting_u32();
                zone[at..at + 4].copy_from_slice(&v.to_le_bytes());
                what.push(format!("header u32 {v:#x} at {at:#x}"));
            }
        }
    }
    what.join(", ")
}

/// An anonymous shared mapping, as an NGINX zone is.
struct Mapping {
    base: *mut u8,
    len: usize,
}

impl Mapping {
    fn new(len: usize) -> Mapping {
        // SAFETY: a fresh anonymous mapping, unmapped in Drop.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED, "mmap");
        Mapping { base: p as *mut u8, len }
    }

    fn bytes(&mut self) -> &mut [u8] {
        // SAFETY: our mapping, `len` bytes, not otherwise borrowed.
        unsafe { std::slice::from_raw_parts_mut(self.base, self.len) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: mapped in `new` with this length.
        unsafe { libc::munmap(self.base as *mut libc::c_void, self.len) };
    }
}

fn new_store(m: &Mapping) -> Option<ShmStore> {
    // SAFETY: the mapping lives as long as the store (both end with the case or the child).
    let region = unsafe { ShmRegion::attach(m.base, m.len) }.ok()?;
    Some(ShmStore::new(region, Box::new(NoLock), Box::new(|_, _| {})))
}

/// How a child ended.
enum End {
    Exited(i32),
    Signal(i32),
    Hung,
}

/// Runs `f` in a child process; returns how it ended and what it wrote to stderr.
fn in_child(timeout: Duration, f: impl FnOnce()) -> (End, String) {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0, "pipe");
    // SAFETY: the child only runs `f` on memory it inherited, then leaves with _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork");
    if pid == 0 {
        // SAFETY: the child's own descriptors.
        unsafe {
            libc::dup2(fds[1], 2);
            libc::close(fds[0]);
        }
        std::panic::set_hook(Box::new(|info| {
            let msg = format!("panic: {info}\n");
            // SAFETY: writing a local buffer to our stderr (the pipe).
            unsafe { libc::write(2, msg.as_ptr().cast(), msg.len()) };
        }));
        let ok = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).is_ok();
        // SAFETY: leave without running the test harness's exit code.
        unsafe { libc::_exit(if ok { 0 } else { 101 }) };
    }
    // SAFETY: the parent closes its copy of the write end.
    unsafe { libc::close(fds[1]) };
    let start = Instant::now();
    let mut status = 0;
    let end = loop {
        // SAFETY: our own child.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            break if libc::WIFSIGNALED(status) {
                End::Signal(libc::WTERMSIG(status))
            } else {
                End::Exited(libc::WEXITSTATUS(status))
            };
        }
        if start.elapsed() > timeout {
            // SAFETY: our own child.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, &mut status, 0);
            }
            break End::Hung;
        }
        std::thread::sleep(Duration::from_micros(200));
    };
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        // SAFETY: reading into a local buffer from our pipe's read end.
        let n = unsafe { libc::read(fds[0], buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            break;
        }
        out.extend_from_slice(&buf[..n as usize]);
    }
    // SAFETY: our descriptor.
    unsafe { libc::close(fds[0]) };
    (end, String::from_utf8_lossy(&out).into_owned())
}

fn check(case: &mut Case) -> Result<(), String> {
    let len = (MIN_SIZE + case.rng.range(4096, 1 << 16)) & !7;
    let mut m = Mapping::new(len);
    // SAFETY: our fresh mapping, used by no one else yet.
    let region = unsafe { ShmRegion::format(m.base, m.len) }.map_err(|e| e.to_string())?;
    let server: Arc<dyn ServerHost> = TestServer::new();
    let mut ids = Ids::default();
    {
        let store = ShmStore::new(region, Box::new(NoLock), Box::new(|_, _| {}));
        let ops = case.rng.range(10, 200);
        operate(&mut case.rng, &store, &server, &mut ids, ops);
        // Before any corruption, ordinary use keeps every structure consistent.
        store
            .verify()
            .map_err(|e| format!("the zone is inconsistent after ordinary use, before any corruption: {e}"))?;
    }
    let what = corrupt(&mut case.rng, m.bytes());
    // An NGINX worker checks the zone when it starts (and rebuilds it if
    // damaged); one that attached earlier meets the damage in its walks.
    let starts = case.rng.chance(1, 3);
    case.note(format!("{what}; the worker {} checks the zone first", if starts { "starting" } else { "running" }));
    let mut rng = case.rng.clone();
    let (end, stderr) = in_child(Duration::from_secs(10), || {
        if let Some(store) = new_store(&m) {
            if starts {
                store.check();
            }
            operate(&mut rng, &store, &server, &mut ids, 200);
            // After the start's check, whatever was damaged is gone: the zone
            // stays consistent through the worker's use.
            if starts {
                if let Err(e) = store.verify() {
                    panic!("the zone is inconsistent after a check and ordinary use: {e}");
                }
            }
        }
    });
    // The panic's place and message (two lines from the hook) on one line.
    let first = stderr.lines().filter(|l| !l.trim().is_empty()).take(2).collect::<Vec<_>>().join(" ");
    match end {
        End::Exited(0) => Ok(()),
        End::Exited(101) => Err(format!("a worker using the corrupted zone panicked: {first}")),
        End::Exited(code) => Err(format!("a worker using the corrupted zone exited with {code}: {first}")),
        End::Signal(sig) => Err(format!("a worker using the corrupted zone died of signal {sig}: {first}")),
        End::Hung => Err("a worker using the corrupted zone hung (killed after 10 s)".into()),
    }
}

#[test]
fn fuzz_shm_store_corrupted_zone() {
    engine::run("shm_store", check);
}

// Found by this target in the rewritten store (src/shm_store/), fixed there.

/// The cumulative bucket counts of `snapshot` added u64s read from the zone:
/// corrupted counts overflowed (a panic in debug builds, in the worker that
/// exported the metrics). They now saturate.
#[test]
fn corrupted_histogram_bucket_counts_are_summed_without_overflow() {
    let mut m = Mapping::new(MIN_SIZE + 8192);
    // SAFETY: our fresh mapping, used by no one else.
    let region = unsafe { ShmRegion::format(m.base, m.len) }.unwrap();
    let store = ShmStore::new(region, Box::new(NoLock), Box::new(|_, _| {}));
    let id = store.define(MetricType::Histogram, "h").unwrap();
    // A sum no other word of the zone holds finds the record; its bucket
    // counts follow it (the metric layout of src/shm_store/mod.rs).
    const MARK: u64 = 0x5eed_f00d_0bad_cafe;
    store.record(id, MARK).unwrap();
    let zone = m.bytes();
    let sum = (0..zone.len() / 8)
        .map(|i| i * 8)
        .find(|&o| zone[o..o + 8] == MARK.to_le_bytes())
        .expect("the histogram's sum is in the zone");
    let buckets = sum + 8..sum + 8 + 8 * (HISTOGRAM_BOUNDS.len() + 1);
    for word in zone[buckets].chunks_mut(8) {
        word.copy_from_slice(&u64::MAX.to_le_bytes());
    }
    let snapshot = store.snapshot();
    let h = snapshot.iter().find(|s| s.id == id).expect("the histogram is in the snapshot");
    assert_eq!(h.buckets.last(), Some(&u64::MAX));
}

/// The old store walked `1..=count` with counts read from the zone: a
/// corrupted queue count made `register` and `resolve` take up to 4 billion
/// steps under the zone lock, and every worker waited. Each small header word
/// (the counts of queues, metrics and usage records, the CAS counter) set to
/// `u32::MAX`, one at a time: a worker using the zone neither crashes nor hangs.
#[test]
fn header_counts_set_to_u32_max_neither_crash_nor_hang_a_worker() {
    let mut m = Mapping::new(MIN_SIZE + (1 << 15));
    // SAFETY: our fresh mapping, used by no one else yet.
    let region = unsafe { ShmRegion::format(m.base, m.len) }.unwrap();
    let server: Arc<dyn ServerHost> = TestServer::new();
    let mut ids = Ids::default();
    {
        let store = ShmStore::new(region, Box::new(NoLock), Box::new(|_, _| {}));
        for i in 0..3 {
            ids.queues.push(
                store
                    .register(
                        &format!("vm{i}"),
                        "q",
                        QueueOwner { server: Arc::downgrade(&server), root_context_id: 1 },
                        QueueLimits::UNLIMITED,
                    )
                    .unwrap(),
            );
            ids.metrics.push(store.define(MetricType::Counter, &format!("m{i}")).unwrap());
            store.set(&format!("vm{i}"), b"k", b"v", 0).unwrap();
        }
    }
    let clean = m.bytes().to_vec();
    // MIN_SIZE is the header and 4 KiB of heap (src/shm_store/region.rs); in
    // the header, offsets and tags are large numbers, counts small ones.
    let header = MIN_SIZE - 4096;
    let counts: Vec<usize> = (0..header / 4)
        .map(|i| i * 4)
        .filter(|&o| (1..=16).contains(&u32::from_le_bytes(clean[o..o + 4].try_into().unwrap())))
        .collect();
    assert!(counts.len() >= 3, "the queue, metric and usage-record counts are among {counts:?}");
    for at in counts {
        m.bytes().copy_from_slice(&clean);
        m.bytes()[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        let mut ids = ids.clone();
        let (end, stderr) = in_child(Duration::from_secs(10), || {
            if let Some(store) = new_store(&m) {
                operate(&mut Rng::new(at as u64), &store, &server, &mut ids, 200);
            }
        });
        assert!(
            matches!(end, End::Exited(0)),
            "header word {at:#x} set to u32::MAX: the worker {}: {stderr}",
            match end {
                End::Exited(code) => format!("exited with {code}"),
                End::Signal(sig) => format!("died of signal {sig}"),
                End::Hung => "hung".into(),
            }
        );
    }
}
