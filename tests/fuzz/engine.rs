//! The fuzzing loop shared by every target: a seeded generator, a time budget,
//! panics caught per case, and a report line per target.
//!
//! Stable Rust only (no cargo-fuzz, no nightly): each target is an ordinary
//! `#[test]` that calls [`run`] with a closure checking one case. A case gets
//! its own generator, seeded from the base seed, the target's name and the
//! case number, so a failure is replayed alone from the seed printed with it.
//!
//! Environment:
//! - `FUZZ_SECONDS` (default 3): time budget per target;
//! - `FUZZ_SEED` (decimal or 0x-hex, default [`DEFAULT_SEED`]): the base seed;
//! - `FUZZ_CASE_SEED`: replay one case (printed with every failure) and stop;
//! - `FUZZ_KEEP_GOING=1`: do not stop at the first failure; the run goes on
//!   for its whole budget and reports each distinct failure once (`make fuzz`);
//! - `FUZZ_REPORT=<file>`: append `target seconds cases result` to that file;
//! - `FUZZ_CASE_TIMEOUT` (seconds, default 120): a case running longer is a
//!   hang: its seed is printed and the process aborts.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io::Write;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Once};
use std::time::{Duration, Instant};

pub const DEFAULT_SEED: u64 = 0x5eed_0f_f022;

/// A small, fast, reproducible generator (splitmix64). Not cryptographic.
#[derive(Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn u32(&mut self) -> u32 {
        (self.u64() >> 32) as u32
    }

    pub fn u8(&mut self) -> u8 {
        (self.u64() >> 56) as u8
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        ((self.u64() as u128 * n as u128) >> 64) as usize
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below(hi - lo + 1)
    }

    /// True with probability `num / den`.
    pub fn chance(&mut self, num: usize, den: usize) -> bool {
        self.below(den) < num
    }

    pub fn bool(&mut self) -> bool {
        self.u64() & 1 == 1
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    /// A length that is usually small, sometimes up to `max`.
    pub fn len(&mut self, max: usize) -> usize {
        match self.below(8) {
            0..=3 => self.below(max.min(8) + 1),
            4..=6 => self.below(max.min(64) + 1),
            _ => self.below(max + 1),
        }
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.u8()).collect()
    }

    /// Bytes from `alphabet`.
    pub fn bytes_from(&mut self, n: usize, alphabet: &[u8]) -> Vec<u8> {
        (0..n).map(|_| *self.pick(alphabet)).collect()
    }

    /// A u32 with a bias to the values decoders get wrong: 0, 1, powers of
    /// two and their neighbours, the top of the range.
    pub fn interesting_u32(&mut self) -> u32 {
        match self.below(6) {
            0 => *self.pick(&[0, 1, 2, 3, 4, 7, 8, 0x7f, 0x80, 0xff, 0x100, 0xffff, 0x1_0000]),
            1 => {
                *self.pick(&[u32::MAX, u32::MAX - 1, u32::MAX - 3, u32::MAX - 7, 0x7fff_ffff, 0x8000_0000, 0xffff_fff0])
            }
            2 => {
                let p = 1u32 << self.below(32);
                p.wrapping_add(*self.pick(&[0u32, 1, u32::MAX]))
            }
            _ => self.u32(),
        }
    }

    /// Mutates `data` in place a few times: bit flips, byte sets, inserts,
    /// deletes, duplicated or swapped spans, interesting numbers.
    pub fn mutate(&mut self, data: &mut Vec<u8>, max_len: usize) {
        let rounds = self.range(1, 4);
        for _ in 0..rounds {
            let len = data.len();
            match self.below(9) {
                0 if len > 0 => {
                    let i = self.below(len);
                    data[i] ^= 1 << self.below(8);
                }
                1 if len > 0 => {
                    let i = self.below(len);
                    data[i] = self.u8();
                }
                2 if len < max_len => {
                    let i = self.below(len + 1);
                    let n = self.len(16).min(max_len - len);
                    let insert = self.bytes(n);
                    data.splice(i..i, insert);
                }
                3 if len > 0 => {
                    let i = self.below(len);
                    let n = self.len(len - i).max(1).min(len - i);
                    data.drain(i..i + n);
                }
                4 if len > 0 && len < max_len => {
                    let i = self.below(len);
                    let n = self.len(len - i).max(1).min(len - i).min(max_len - len);
                    let span = data[i..i + n].to_vec();
                    let at = self.below(len + 1);
                    data.splice(at..at, span);
                }
                5 if len >= 4 => {
                    let i = self.below(len - 3);
                    let v = self.interesting_u32().to_le_bytes();
                    data[i..i + 4].copy_from_slice(&v);
                }
                6 if len > 0 => {
                    data.truncate(self.below(len));
                }
                7 if len >= 2 => {
                    let (a, b) = (self.below(len), self.below(len));
                    data.swap(a, b);
                }
                _ if len < max_len => {
                    let i = self.below(len + 1);
                    let b = *self.pick(b"\0\r\n:;- \t\"'{}[]&*!|>#%@`,?\\\xff\x80");
                    data.insert(i, b);
                }
                _ => {}
            }
        }
    }
}

/// One case: its generator and, for the failure report, its input.
pub struct Case {
    pub rng: Rng,
    #[allow(dead_code)]
    pub seed: u64,
    input: Option<Vec<u8>>,
    note: Option<String>,
}

impl Case {
    /// Keeps a copy of the raw input, printed (escaped) if the case fails.
    pub fn input(&mut self, bytes: &[u8]) {
        self.input = Some(bytes.to_vec());
    }

    /// A description of the input, printed if the case fails.
    pub fn note(&mut self, note: impl Into<String>) {
        self.note = Some(note.into());
    }
}

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    let v = v.trim();
    match v.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => v.parse().ok(),
    }
}

pub fn budget() -> Duration {
    let secs = std::env::var("FUZZ_SECONDS").ok().and_then(|v| v.trim().parse::<f64>().ok()).unwrap_or(3.0);
    Duration::from_secs_f64(secs.max(0.0))
}

fn case_seed(base: u64, target: &str, index: u64) -> u64 {
    let mut h = base ^ 0xcbf2_9ce4_8422_2325;
    for b in target.bytes() {
        h = (h ^ b as u64).wrapping_mul(0x100_0000_01b3);
    }
    let mut r = Rng::new(h ^ index.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    r.u64()
}

thread_local! {
    /// Set while a fuzz case runs on this thread: its panics are recorded, not printed.
    static CAUGHT: RefCell<Option<Option<String>>> = const { RefCell::new(None) };
}

fn install_quiet_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let default = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            let recorded = CAUGHT.with(|c| {
                let mut c = c.borrow_mut();
                match c.as_mut() {
                    Some(slot) => {
                        let msg = info
                            .payload()
                            .downcast_ref::<&str>()
                            .map(|s| s.to_string())
                            .or_else(|| info.payload().downcast_ref::<String>().cloned())
                            .unwrap_or_else(|| "(non-string panic)".into());
                        let at = info.location().map(|l| format!("{}:{}", l.file(), l.line())).unwrap_or_default();
                        *slot = Some(format!("panic at {at}: {msg}"));
                        true
                    }
                    None => false,
                }
            });
            if !recorded {
                default(info);
            }
        }));
    });
}

/// Printable form of an input: escaped bytes, cut after 4 KiB.
pub fn escape(bytes: &[u8]) -> String {
    let shown = &bytes[..bytes.len().min(4096)];
    let mut s: String = shown.escape_ascii().to_string();
    if bytes.len() > shown.len() {
        s.push_str(&format!("... ({} bytes in all)", bytes.len()));
    }
    s
}

/// A failure's signature for de-duplication: the panic location, or the
/// message with its numbers blanked.
fn signature(message: &str) -> String {
    let first = message.lines().next().unwrap_or("");
    if let Some(rest) = first.strip_prefix("panic at ") {
        return format!("panic at {}", rest.split(": ").next().unwrap_or(rest));
    }
    // Numbers vary from case to case, except a source line ("file.rs:123").
    let mut s = String::new();
    let mut keep = false;
    for c in first.chars() {
        if c.is_ascii_digit() {
            s.push(if keep { c } else { '#' });
        } else {
            keep = c == ':' && s.ends_with(".rs");
            s.push(c);
        }
    }
    s.chars().take(160).collect()
}

struct Failure {
    count: u64,
    first_seed: u64,
    report: String,
}

/// Runs `check` on fresh cases until the budget is spent (at least one case).
/// `Err(message)` or a panic is a failure. Panics (fails the test) if any case
/// failed, with the seeds to replay them.
pub fn run(target: &str, mut check: impl FnMut(&mut Case) -> Result<(), String>) {
    install_quiet_hook();
    let base = env_u64("FUZZ_SEED").unwrap_or(DEFAULT_SEED);
    let only = env_u64("FUZZ_CASE_SEED");
    let keep_going = std::env::var("FUZZ_KEEP_GOING").is_ok_and(|v| v == "1");
    let budget = budget();
    let case_timeout = Duration::from_secs(env_u64("FUZZ_CASE_TIMEOUT").unwrap_or(120));
    eprintln!(
        "fuzz {target}: seed {base:#x}, budget {:.1}s{}",
        budget.as_secs_f64(),
        if keep_going { ", keep going" } else { "" }
    );

    // The watchdog: a case that never returns is a hang, reported by seed.
    let current = Arc::new(AtomicU64::new(0));
    let started_ms = Arc::new(AtomicU64::new(0));
    let finished = Arc::new(AtomicBool::new(false));
    let t0 = Instant::now();
    {
        let (current, started_ms, finished, target) =
            (current.clone(), started_ms.clone(), finished.clone(), target.to_string());
        std::thread::spawn(move || {
            while !finished.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(250));
                let since = started_ms.load(Ordering::Relaxed);
                let now = t0.elapsed().as_millis() as u64;
                if since != 0
                    && now.saturating_sub(since) > case_timeout.as_millis() as u64
                    && !finished.load(Ordering::Relaxed)
                {
                    eprintln!(
                        "fuzz {target}: HANG: a case has run for more than {}s; replay with FUZZ_CASE_SEED={:#x}",
                        case_timeout.as_secs(),
                        current.load(Ordering::Relaxed)
                    );
                    std::process::abort();
                }
            }
        });
    }

    let mut failures: BTreeMap<String, Failure> = BTreeMap::new();
    let mut cases = 0u64;
    let mut index = 0u64;
    loop {
        let seed = match only {
            Some(s) => s,
            None => case_seed(base, target, index),
        };
        index += 1;
        let mut case = Case { rng: Rng::new(seed), seed, input: None, note: None };
        current.store(seed, Ordering::Relaxed);
        started_ms.store(t0.elapsed().as_millis().max(1) as u64, Ordering::Relaxed);
        CAUGHT.with(|c| *c.borrow_mut() = Some(None));
        let outcome = panic::catch_unwind(AssertUnwindSafe(|| check(&mut case)));
        let caught = CAUGHT.with(|c| c.borrow_mut().take()).flatten();
        started_ms.store(0, Ordering::Relaxed);
        cases += 1;
        let message = match outcome {
            Ok(Ok(())) => None,
            Ok(Err(m)) => Some(m),
            Err(_) => Some(caught.unwrap_or_else(|| "panic".into())),
        };
        if let Some(message) = message {
            let mut report = format!("fuzz {target}: FAILED case {cases} (replay: FUZZ_CASE_SEED={seed:#x}; base FUZZ_SEED={base:#x})\n  {message}");
            if let Some(note) = &case.note {
                report.push_str(&format!("\n  input: {note}"));
            }
            if let Some(input) = &case.input {
                report.push_str(&format!("\n  input bytes ({}): b\"{}\"", input.len(), escape(input)));
            }
            let sig = signature(&message);
            let entry =
                failures.entry(sig).or_insert_with(|| Failure { count: 0, first_seed: seed, report: report.clone() });
            if entry.count == 0 {
                eprintln!("{report}");
            }
            entry.count += 1;
            if !keep_going {
                break;
            }
        }
        if only.is_some() || t0.elapsed() >= budget {
            break;
        }
    }
    finished.store(true, Ordering::Relaxed);
    let elapsed = t0.elapsed().as_secs_f64();
    let result = if failures.is_empty() { "ok".to_string() } else { format!("FAILED ({} distinct)", failures.len()) };
    eprintln!("fuzz {target}: {cases} cases in {elapsed:.1}s: {result}");
    if let Ok(path) = std::env::var("FUZZ_REPORT") {
        if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(&path) {
            let _ = writeln!(f, "{target}\t{elapsed:.0}\t{cases}\t{result}");
            for (sig, fl) in &failures {
                let _ = writeln!(f, "#\t{target}\t{}x\t{sig}\tFUZZ_CASE_SEED={:#x}", fl.count, fl.first_seed);
            }
        }
    }
    if !failures.is_empty() {
        let all: Vec<String> = failures.values().map(|f| format!("{} ({}x)", f.report, f.count)).collect();
        panic!("fuzz {target}: {} distinct failure(s) in {cases} cases:\n{}", failures.len(), all.join("\n"));
    }
}

// ------------------------------------------------------------------ allocation peaks

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

thread_local! {
    static TRACKING: Cell<bool> = const { Cell::new(false) };
    static CURRENT: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

/// The system allocator, counting the bytes the current thread holds while
/// [`peak_allocation`] runs (installed as the fuzz binary's global allocator).
pub struct CountingAlloc;

fn track(delta: isize) {
    let _ = TRACKING.try_with(|t| {
        if t.get() {
            let now = CURRENT.with(|c| {
                c.set(c.get() + delta);
                c.get()
            });
            PEAK.with(|p| p.set(p.get().max(now)));
        }
    });
}

// SAFETY: every call is forwarded unchanged to `System`; the counting only
// touches const-initialized thread-locals without destructors, which never
// allocate.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        track(layout.size() as isize);
        // SAFETY: the caller's contract, forwarded.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        track(layout.size() as isize);
        // SAFETY: the caller's contract, forwarded.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        track(-(layout.size() as isize));
        // SAFETY: the caller's contract, forwarded.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        track(new_size as isize - layout.size() as isize);
        // SAFETY: the caller's contract, forwarded.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// Runs `f` and returns its result with the most bytes it held at once
/// (allocated on this thread and not yet freed).
pub fn peak_allocation<R>(f: impl FnOnce() -> R) -> (R, usize) {
    CURRENT.with(|c| c.set(0));
    PEAK.with(|p| p.set(0));
    TRACKING.with(|t| t.set(true));
    let r = f();
    TRACKING.with(|t| t.set(false));
    (r, PEAK.with(|p| p.get()).max(0) as usize)
}
