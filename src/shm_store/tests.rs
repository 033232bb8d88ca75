//! The store under crashes (a forked child dies at every point of an update
//! or of an undo) and damage (cycles, offsets outside the block, huge
//! lengths, half-written records, random words), plus its ordinary behaviour
//! across processes.

use super::region::*;
use super::*;
use crate::abi::Status;
use crate::host::ServerHost;
use std::sync::Arc;

/// An anonymous shared mapping: kept across fork, like an NGINX zone.
fn shared_mapping(len: usize) -> *mut u8 {
    // SAFETY: a fresh anonymous mapping; never unmapped in the tests.
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
    assert_ne!(p, libc::MAP_FAILED);
    p as *mut u8
}

type Reports = Arc<Mutex<Vec<String>>>;

fn w(vm_id: &str, max_bytes: u64) -> Writer<'_> {
    Writer { vm_id, max_bytes }
}

fn store(len: usize) -> (ShmStore, Reports) {
    let base = shared_mapping(len);
    // SAFETY: our fresh mapping.
    let region = unsafe { ShmRegion::format(base, len) }.unwrap();
    let reports = Arc::new(Mutex::new(Vec::new()));
    let r2 = reports.clone();
    (
        ShmStore::new(
            region,
            Box::new(region.spin_lock()),
            Box::new(move |_, m| r2.lock().unwrap().push(m.to_string())),
        ),
        reports,
    )
}

fn reattach(region: ShmRegion) -> (ShmStore, Reports) {
    // SAFETY: the mapping is inherited from the parent (or is our own).
    let region = unsafe { ShmRegion::attach(region.base, region.len) }.unwrap();
    let reports = Arc::new(Mutex::new(Vec::new()));
    let r2 = reports.clone();
    (
        ShmStore::new(
            region,
            Box::new(region.spin_lock()),
            Box::new(move |_, m| r2.lock().unwrap().push(m.to_string())),
        ),
        reports,
    )
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
            return Some(if libc::WIFEXITED(status) {
                libc::WEXITSTATUS(status)
            } else {
                128 + libc::WTERMSIG(status)
            });
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
    assert_eq!(s.set("vm", b"new", b"x", 7), Ok(()), "a CAS on an absent key stores it");
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
        match s.set_within("vm", format!("k{stored}").as_bytes(), &big, 0, w("vm", u64::MAX)) {
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
    let id = s
        .register("vm", "q", QueueOwner { server: Arc::downgrade(&server), root_context_id: 5 }, QueueLimits::UNLIMITED)
        .unwrap();
    s.poll();
    let region = *s.region();
    let code = in_child(CHILD, || {
        let (other, _) = reattach(region);
        other.resolve("vm", "q") == Some(id)
            && other.enqueue(id, b"from the child").is_ok()
            && other.enqueue(id + 1, b"x") == Err(SharedError::NotFound)
            && other.queue_vm_id(id).as_deref() == Some("vm")
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
        o.define(MetricType::Counter, "c") == Ok(c)
            && o.increment(c, 3).is_ok()
            && o.increment(g, -2).is_ok()
            && o.record(h, 7).is_ok()
    });
    assert_eq!(code, Some(0));
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
        o.set_within("a", b"k1", &[1; 58], 0, w("a", 100)).is_ok()
            && o.set_within("a", b"k2", &[1; 38], 0, w("a", 100)).is_ok()
    });
    assert_eq!(code, Some(0));
    assert_eq!(s.held_bytes("a"), 100);
    assert_eq!(
        s.set_within("a", b"k3", b"x", 0, w("a", 100)),
        Err(SharedError::OverQuota { vm_id: "a".into(), would_hold: 103, limit: 100 })
    );
    assert!(SharedDataStore::get(&s, "a", b"k3").is_none());
    // vm "b" is not held back by "a" being at its cap.
    s.set_within("b", b"k1", &[2; 90], 0, w("b", 100)).unwrap();
    // Writes that do not grow pass; shrinking frees.
    s.set_within("a", b"k1", &[3; 58], 0, w("a", 100)).unwrap();
    s.set_within("a", b"k1", b"", 0, w("a", 100)).unwrap();
    assert_eq!(s.held_bytes("a"), 2 + 40);
    s.set_within("a", b"k3", b"x", 0, w("a", 100)).unwrap();
    s.verify().unwrap();
}

#[test]
fn the_writer_pays_for_what_it_stores_in_another_vm_ids_data() {
    let (s, _) = store(1 << 16);
    for i in 0..3 {
        s.set_within(&format!("elsewhere{i}"), b"k", &[0; 39], 0, w("sprayer", 130)).unwrap();
    }
    assert!(matches!(
        s.set_within("elsewhere3", b"k", &[0; 39], 0, w("sprayer", 130)),
        Err(SharedError::OverQuota { .. })
    ));
    assert_eq!((s.held_bytes("sprayer"), s.held_bytes("elsewhere0")), (120, 0));
    s.set_within("elsewhere0", b"k", b"mine", 0, w("elsewhere0", 100)).unwrap();
    assert_eq!((s.held_bytes("sprayer"), s.held_bytes("elsewhere0")), (80, 5));
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
    s.set_within("vm", b"k", &[0; 40], 0, w("vm", 50)).unwrap();
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
    assert_eq!(
        s.register("vm", "more", nobody(), QueueLimits::UNLIMITED),
        Err(SharedError::TooManyQueues { vm_id: "vm".into() })
    );
    assert!(s.register("other", "q", nobody(), QueueLimits::UNLIMITED).is_ok());
    s.define_within(MetricType::Counter, "m1", "vm", 2).unwrap();
    s.define_within(MetricType::Counter, "m2", "vm", 2).unwrap();
    assert_eq!(
        s.define_within(MetricType::Counter, "m3", "vm", 2),
        Err(SharedError::TooManyMetrics { vm_id: "vm".into(), limit: 2 })
    );
    assert!(s.define_within(MetricType::Counter, "m1", "vm", 2).is_ok(), "an existing name");
    assert!(s.define_within(MetricType::Counter, "m3", "other", 2).is_ok());
    for i in 2..MAX_VMS {
        s.set(&format!("vm{i}"), b"k", b"v", 0).unwrap();
    }
    assert!(matches!(
        s.set_within("one too many", b"k", b"v", 0, w("one too many", u64::MAX)),
        Err(SharedError::Full(_))
    ));
    s.verify().unwrap();
}

#[test]
fn caps_that_do_not_fit_the_block_together_are_warned_about() {
    let caps = |v: &[(&str, u64)]| v.iter().map(|(a, b)| (a.to_string(), *b)).collect::<Vec<_>>();
    assert_eq!(overcommit_warning(1 << 20, &caps(&[("a", 16 << 20)])), None, "one VM keeps no other out");
    assert_eq!(overcommit_warning(1 << 20, &caps(&[("a", 100_000), ("b", 100_000), ("a", 200_000)])), None);
    let w = overcommit_warning(1 << 20, &caps(&[("a", 16 << 20), ("b", 1000)])).unwrap();
    assert!(w.contains(r#"("a": 16777216, "b": 1000)"#) && w.contains("raise proxy_wasm_shm_size"), "{w}");
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
    out += &format!(
        "q={:?}/{:?};held={};free={};",
        q.is_some(),
        q.map(|q| s.queue_len(q)),
        s.held_bytes("vm"),
        s.region().free_bytes()
    );
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
        assert!(
            !reports.lock().unwrap().iter().any(|r| r.contains("rebuilt")),
            "point {k}: {:?}",
            reports.lock().unwrap()
        );
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
    // Another VM's plugin overwrites it: the bytes change payer too.
    survives_a_crash_at_every_point(
        |s| s.set("vm", b"k", b"old", 0).unwrap(),
        |s| s.set_within("vm", b"k", b"theirs", 0, w("other", 1000)).unwrap(),
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
    survives_a_crash_at_every_point(
        |_| {},
        |s| {
            s.register("vm", "q", nobody(), QueueLimits::UNLIMITED).unwrap();
        },
    );
    survives_a_crash_at_every_point(
        |s| {
            s.define(MetricType::Counter, "m0").unwrap();
        },
        |s| {
            s.define(MetricType::Histogram, "m1").unwrap();
        },
    );
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
                let off = if next() % 2 == 0 {
                    OFF_FREE_HEAD as u64 + next() % (len - OFF_FREE_HEAD as u64)
                } else {
                    HEAP_START as u64 + next() % (len - HEAP_START as u64)
                };
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
    let q = s
        .register("vm", "q", QueueOwner { server: Arc::downgrade(&server), root_context_id: 3 }, QueueLimits::UNLIMITED)
        .unwrap();
    let m = s.define_within(MetricType::Counter, "requests", "vm", 10).unwrap();
    s.set("vm", b"k", b"v", 0).unwrap();
    s.increment(m, 5).unwrap();
    // A cycle: the next lookup walks into it.
    let e = entry_of(&s, "vm", b"k");
    word_at(&s, e + D_NEXT).store(e, Ordering::Relaxed);
    word_at(&s, e + D_HASH).store(0, Ordering::Relaxed);
    assert_eq!(SharedDataStore::get(&s, "vm", b"k"), None);
    let logged = reports.lock().unwrap().join("\n");
    assert!(
        logged.contains("the shared memory zone was damaged (shared data entry") && logged.contains("rebuilt empty"),
        "{logged}"
    );
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
    assert!(
        reports.lock().unwrap().iter().any(|r| r.contains("a rebuild of the zone was cut short")),
        "{:?}",
        reports.lock().unwrap()
    );
    s.set("vm", b"k", b"v2", 0).unwrap();
}

// ------------------------------------------------------------ Otoroshi's data store

mod datastore {
    use super::*;
    use crate::extism::otoroshi::datastore::{DataStore, DataStoreError};
    use std::sync::atomic::AtomicU64;

    fn ds(len: usize, max_bytes: u64) -> (ShmDataStore, Arc<ShmStore>, Arc<AtomicU64>) {
        let (s, _) = store(len);
        let s = Arc::new(s);
        let now = Arc::new(AtomicU64::new(1000));
        let clock = now.clone();
        (ShmDataStore::with_clock(s.clone(), max_bytes, Arc::new(move || clock.load(Ordering::SeqCst))), s, now)
    }

    #[test]
    fn redis_semantics_with_ttls() {
        let (d, s, now) = ds(1 << 16, 1 << 20);
        assert_eq!(d.set("k", b"v", Some(Duration::from_millis(50))), Ok(true));
        assert_eq!(d.pttl("k"), 50);
        now.fetch_add(49, Ordering::SeqCst);
        assert_eq!(d.get("k"), Some(b"v".to_vec()));
        now.fetch_add(1, Ordering::SeqCst);
        assert_eq!(d.get("k"), None);
        assert!(!d.exists("k"));
        assert_eq!(d.pttl("k"), -2);
        // SET clears a TTL; PEXPIRE sets one, 0 deletes.
        d.set("k", b"v", Some(Duration::from_secs(1))).unwrap();
        d.set("k", b"w", None).unwrap();
        assert_eq!(d.pttl("k"), -1);
        assert!(d.pexpire("k", 100));
        assert_eq!(d.pttl("k"), 100);
        assert!(d.pexpire("k", 0));
        assert!(!d.exists("k"));
        assert!(!d.pexpire("k", 10));
        // SETNX only on a missing (or expired) key.
        assert_eq!(d.setnx("n", b"1", Some(Duration::from_millis(10))), Ok(true));
        assert_eq!(d.setnx("n", b"2", None), Ok(false));
        now.fetch_add(10, Ordering::SeqCst);
        assert_eq!(d.setnx("n", b"3", None), Ok(true));
        // INCRBY keeps the TTL; text or overflow is refused.
        assert_eq!(d.incrby("c", 5), Ok(5));
        d.pexpire("c", 100);
        assert_eq!(d.incrby("c", -7), Ok(-2));
        assert_eq!(d.pttl("c"), 100);
        d.set("t", b"text", None).unwrap();
        assert_eq!(d.incrby("t", 1), Err(DataStoreError::NotAnInteger));
        d.set("m", i64::MAX.to_string().as_bytes(), None).unwrap();
        assert_eq!(d.incrby("m", 1), Err(DataStoreError::Overflow));
        assert_eq!(d.set("z", b"v", Some(Duration::ZERO)), Err(DataStoreError::InvalidTtl));
        // DEL counts the keys that existed.
        assert_eq!(d.del(&["t".into(), "m".into(), "nope".into()]), 2);
        s.verify().unwrap();
    }

    #[test]
    fn keys_and_all_matching_skip_and_drop_expired_keys() {
        let (d, s, now) = ds(1 << 16, 1 << 20);
        for k in ["otoroshi:a1", "otoroshi:a2", "otoroshi:b1", "other:a1"] {
            d.set(k, k.as_bytes(), None).unwrap();
        }
        d.set("otoroshi:a3", b"x", Some(Duration::from_millis(5))).unwrap();
        assert_eq!(d.keys("otoroshi:a*"), vec!["otoroshi:a1", "otoroshi:a2", "otoroshi:a3"]);
        now.fetch_add(5, Ordering::SeqCst);
        assert_eq!(d.keys("otoroshi:a*"), vec!["otoroshi:a1", "otoroshi:a2"]);
        assert_eq!(d.all_matching("otoroshi:[^a]*"), vec![b"otoroshi:b1".to_vec()]);
        // The scan removed the expired key: its bytes are back.
        let held: u64 =
            ["otoroshi:a1", "otoroshi:a2", "otoroshi:b1", "other:a1"].iter().map(|k| 2 * k.len() as u64 + 8).sum();
        assert_eq!(s.held_bytes(DATASTORE_VM_ID), held);
        // Proxy-Wasm shared data of another vm_id is not a key of the store, nor the reverse.
        s.set("vm", b"otoroshi:pw", b"1", 0).unwrap();
        assert_eq!(d.keys("*").len(), 4);
        assert!(SharedDataStore::get(&*s, "vm", b"otoroshi:a1").is_none());
        s.verify().unwrap();
    }

    #[test]
    fn the_cap_and_the_zone_refuse_writes() {
        let (d, s, _) = ds(1 << 16, 40);
        assert_eq!(d.set("k", &[b'x'; 20], None), Ok(true));
        assert_eq!(d.set("j", &[b'y'; 20], None), Err(DataStoreError::Full(40)));
        // Replacing a value only counts the difference.
        assert_eq!(d.set("k", &[b'x'; 25], None), Ok(true));
        let (d, _, _) = ds(MIN_SIZE, 1 << 30);
        match d.set("big", &vec![0u8; 64 << 10], None) {
            Err(DataStoreError::Zone(m)) => assert!(m.contains("shared memory zone is full"), "{m}"),
            other => panic!("{other:?}"),
        }
        s.verify().unwrap();
    }

    #[test]
    fn incrby_from_processes_is_atomic_and_setnx_has_one_winner() {
        let (d, s, _) = ds(1 << 18, 1 << 20);
        let region = *s.region();
        let children: Vec<_> = (0..3)
            .map(|_| {
                std::thread::spawn(move || {
                    in_child(Duration::from_secs(60), || {
                        let (s, _) = reattach(region);
                        let d = ShmDataStore::new(Arc::new(s), 1 << 20);
                        let mut seen = Vec::new();
                        for _ in 0..1000 {
                            seen.push(d.incrby("otoroshi:hits", 1).unwrap());
                        }
                        let won = d.setnx("otoroshi:leader", b"me", None).unwrap();
                        d.incrby("otoroshi:winners", i64::from(won)).unwrap();
                        // Strictly increasing in each process.
                        seen.windows(2).all(|w| w[0] < w[1])
                    })
                })
            })
            .collect();
        for c in children {
            assert_eq!(c.join().unwrap(), Some(0));
        }
        assert_eq!(d.get("otoroshi:hits"), Some(b"3000".to_vec()));
        assert_eq!(d.get("otoroshi:winners"), Some(b"1".to_vec()));
        s.verify().unwrap();
    }

    #[test]
    fn a_ttl_set_in_one_process_expires_in_another() {
        // The real clock (CLOCK_MONOTONIC), shared by the processes.
        let (s, _) = store(1 << 16);
        let s = Arc::new(s);
        let d = ShmDataStore::new(s.clone(), 1 << 20);
        let region = *s.region();
        let child = in_child(CHILD, || {
            let (s, _) = reattach(region);
            let d = ShmDataStore::new(Arc::new(s), 1 << 20);
            d.set("k", b"v", Some(Duration::from_millis(30))).is_ok() && d.set("forever", b"v", None).is_ok()
        });
        assert_eq!(child, Some(0));
        let left = d.pttl("k");
        assert!((0..=30).contains(&left), "{left}");
        // Polled (not slept): the key goes within its TTL plus scheduling.
        let deadline = Instant::now() + Duration::from_secs(10);
        while d.exists("k") {
            assert!(Instant::now() < deadline, "the key never expired: pttl {}", d.pttl("k"));
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(d.pttl("k"), -2);
        assert_eq!(d.pttl("forever"), -1);
    }
}
