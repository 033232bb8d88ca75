//! Generated probe modules: small WebAssembly modules (as WAT text) that call
//! hostcalls with chosen arguments from chosen callbacks and log, for each
//! call, the status and what the host wrote to the return slots. Used by
//! `tests/compatibility.rs` to pin each row of `docs/compatibility.md`.
//!
//! Every call logs one INFO line `@<label> status=<n>` followed by its
//! reports: ` s<k>=<u32>` (a return slot as a number), ` s<k>=<0|nz>` (a
//! pointer: null or not), ` s<k>=<u64>`, ` data=<bytes>` (the bytes the host
//! returned), ` m<addr>=<u32>` (a word of memory). Before every call the return
//! slots are filled with 0xff bytes, so a slot the host did not write reads
//! `unset`. Words 0 and 4 of memory hold 1 and 2, to show a host writing
//! through a null pointer.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fmt::Write;

/// An argument of a hostcall.
#[derive(Clone, Debug)]
pub enum A {
    /// An i32 constant (written as u32).
    I(u32),
    /// An i64 constant.
    L(i64),
    /// Bytes placed in memory: expands to two arguments, pointer and length.
    S(Vec<u8>),
    /// Bytes placed in memory, passed as one WASI iovec: expands to the iovec
    /// array pointer and the count 1.
    Iov(Vec<u8>),
    /// The address of return slot k (8 bytes each).
    Slot(u32),
    /// A value saved earlier with [`R::Save`] or [`Step::SaveCtx`].
    Saved(u32),
    /// The context id the callback was called with.
    Ctx,
}

/// What to log after a call.
#[derive(Clone, Debug)]
pub enum R {
    /// Slot k as a u32 (`unset` if untouched).
    U32(u32),
    /// Slot k as a pointer: `0`, `nz` or `unset`.
    Ptr(u32),
    /// Slot k as a u64.
    U64(u32),
    /// The bytes at the pointer in slot p, of the length in slot n.
    Data(u32, u32),
    /// The u32 at an absolute address.
    Mem(u32),
    /// Keeps slot k's u32 in variable v (logs nothing).
    Save(u32, u32),
}

#[derive(Clone, Debug)]
pub enum Step {
    Call {
        label: String,
        f: &'static str,
        args: Vec<A>,
        reports: Vec<R>,
    },
    /// Keeps the callback's context id in variable v.
    SaveCtx(u32),
}

pub fn call(label: &str, f: &'static str, args: Vec<A>, reports: Vec<R>) -> Step {
    Step::Call { label: label.to_string(), f, args, reports }
}

pub fn s(bytes: impl AsRef<[u8]>) -> A {
    A::S(bytes.as_ref().to_vec())
}

/// The callbacks a probe may run steps in (keys of [`Probe::on`]).
pub const CALLBACKS: &[&str] = &[
    "initialize",
    "create_root",
    "create_stream",
    "vm_start",
    "configure",
    "request_headers",
    "request_body",
    "response_headers",
    "response_body",
    "tick",
    "queue_ready",
    "http_call_response",
    "foreign_function",
    "done",
    "log",
    "delete",
];

#[derive(Clone)]
pub struct Probe {
    abi: &'static str,
    steps: BTreeMap<&'static str, Vec<Step>>,
    malloc: bool,
}

pub fn probe() -> Probe {
    Probe { abi: "0_2_1", steps: BTreeMap::new(), malloc: false }
}

/// Module, name, parameter types and result of every import a probe may use.
fn signature(f: &str) -> (&'static str, String, &'static [&'static str], bool) {
    const I: &str = "i32";
    const J: &str = "i64";
    let (module, name) = match f.strip_prefix("wasi:") {
        Some(n) => ("wasi_snapshot_preview1", n),
        None => ("env", f),
    };
    let (params, result): (&'static [&'static str], bool) = match name {
        "proxy_done"
        | "proxy_continue_request"
        | "proxy_continue_response"
        | "proxy_clear_route_cache"
        | "sched_yield" => (&[], true),
        "proxy_get_log_level"
        | "proxy_get_current_time_nanoseconds"
        | "proxy_set_tick_period_milliseconds"
        | "proxy_set_effective_context"
        | "proxy_continue_stream"
        | "proxy_close_stream"
        | "proxy_grpc_cancel"
        | "proxy_grpc_close"
        | "fd_close"
        | "fd_datasync"
        | "fd_sync" => (&[I], true),
        "proxy_get_header_map_size"
        | "proxy_get_metric"
        | "proxy_get_configuration"
        | "fd_fdstat_get"
        | "fd_fdstat_set_flags"
        | "fd_prestat_get"
        | "fd_filestat_get"
        | "fd_renumber"
        | "fd_tell"
        | "clock_res_get"
        | "random_get"
        | "environ_get"
        | "environ_sizes_get"
        | "args_get"
        | "args_sizes_get"
        | "sock_shutdown"
        | "pthread_equal" => (&[I, I], true),
        "proxy_increment_metric" | "proxy_record_metric" => (&[I, J], true),
        "proxy_log"
        | "proxy_get_buffer_status"
        | "proxy_get_header_map_pairs"
        | "proxy_set_header_map_pairs"
        | "proxy_remove_header_map_value"
        | "proxy_get_status"
        | "proxy_register_shared_queue"
        | "proxy_enqueue_shared_queue"
        | "proxy_dequeue_shared_queue"
        | "fd_prestat_dir_name"
        | "sock_accept" => (&[I, I, I], true),
        "proxy_define_metric"
        | "proxy_get_property"
        | "proxy_set_property"
        | "proxy_grpc_send"
        | "fd_write"
        | "fd_read" => (&[I, I, I, I], true),
        "proxy_get_buffer_bytes"
        | "proxy_set_buffer_bytes"
        | "proxy_get_header_map_value"
        | "proxy_add_header_map_value"
        | "proxy_replace_header_map_value"
        | "proxy_get_shared_data"
        | "proxy_set_shared_data"
        | "proxy_resolve_shared_queue"
        | "sock_send" => (&[I, I, I, I, I], true),
        "proxy_call_foreign_function" | "path_readlink" | "sock_recv" => (&[I, I, I, I, I, I], true),
        "proxy_send_local_response" => (&[I, I, I, I, I, I, I, I], true),
        "proxy_grpc_stream" => (&[I, I, I, I, I, I, I, I, I], true),
        "proxy_http_call" => (&[I, I, I, I, I, I, I, I, I, I], true),
        "proxy_grpc_call" => (&[I, I, I, I, I, I, I, I, I, I, I, I], true),
        "fd_seek" => (&[I, J, I, I], true),
        "fd_fdstat_set_rights" | "fd_allocate" => (&[I, J, J], true),
        "fd_advise" | "fd_filestat_set_times" => (&[I, J, J, I], true),
        "fd_filestat_set_size" => (&[I, J], true),
        "fd_pread" | "fd_pwrite" | "fd_readdir" => (&[I, I, I, J, I], true),
        "clock_time_get" => (&[I, J, I], true),
        "path_open" => (&[I, I, I, I, I, J, J, I, I], true),
        "emscripten_notify_memory_growth" => (&[I], false),
        other => panic!("probe: no signature for {other}"),
    };
    (module, name.to_string(), params, result)
}

/// Bytes interned in the data area, each at a fixed address.
struct Data {
    next: u32,
    placed: BTreeMap<Vec<u8>, u32>,
}

impl Data {
    fn place(&mut self, bytes: &[u8]) -> (u32, u32) {
        if let Some(&at) = self.placed.get(bytes) {
            return (at, bytes.len() as u32);
        }
        let at = self.next;
        self.next = (at + bytes.len() as u32 + 8) & !7;
        self.placed.insert(bytes.to_vec(), at);
        (at, bytes.len() as u32)
    }

    fn segments(&self) -> String {
        let mut out = String::new();
        for (bytes, at) in &self.placed {
            let mut esc = String::new();
            for b in bytes {
                write!(esc, "\\{b:02x}").unwrap();
            }
            writeln!(out, "  (data (i32.const {at}) \"{esc}\")").unwrap();
        }
        out
    }
}

const SLOTS: u32 = 0x100;
const VARS: u32 = 0x180;

impl Probe {
    /// The ABI marker, e.g. "0_1_0".
    pub fn abi(mut self, abi: &'static str) -> Probe {
        self.abi = abi;
        self
    }

    /// Steps to run in a callback (see [`CALLBACKS`]).
    pub fn on(mut self, callback: &'static str, steps: Vec<Step>) -> Probe {
        assert!(CALLBACKS.contains(&callback), "probe: unknown callback {callback}");
        self.steps.entry(callback).or_default().extend(steps);
        self
    }

    /// Also exports `malloc` (besides `proxy_on_memory_allocate`); each
    /// allocator logs its own name when called.
    pub fn with_malloc(mut self) -> Probe {
        self.malloc = true;
        self
    }

    pub fn bytes(&self) -> Vec<u8> {
        let text = self.wat();
        wat::parse_str(&text).unwrap_or_else(|e| panic!("probe module: {e}\n{text}"))
    }

    pub fn wat(&self) -> String {
        let mut data = Data { next: 0x1000, placed: BTreeMap::new() };
        let mut imports: BTreeMap<String, usize> = BTreeMap::new();
        imports.insert("proxy_log".into(), 0);
        let fixed = |d: &mut Data, t: &str| d.place(t.as_bytes());
        let unset = fixed(&mut data, "unset");
        let zero = fixed(&mut data, "0");
        let nz = fixed(&mut data, "nz");
        let mut bodies: BTreeMap<&str, String> = BTreeMap::new();
        for (cb, steps) in &self.steps {
            let mut b = String::new();
            for step in steps {
                match step {
                    Step::SaveCtx(v) => {
                        writeln!(b, "    (i32.store (i32.const {}) (local.get 0))", VARS + 4 * v).unwrap()
                    }
                    Step::Call { label, f, args, reports } => {
                        let n = imports.len();
                        let idx = *imports.entry(f.to_string()).or_insert(n);
                        let (_, _, _, has_result) = signature(f);
                        let mut argv = String::new();
                        for a in args {
                            match a {
                                A::I(v) => write!(argv, " (i32.const {})", *v as i32).unwrap(),
                                A::L(v) => write!(argv, " (i64.const {v})").unwrap(),
                                A::S(bytes) => {
                                    let (p, l) = data.place(bytes);
                                    write!(argv, " (i32.const {p}) (i32.const {l})").unwrap();
                                }
                                A::Iov(bytes) => {
                                    let (p, l) = data.place(bytes);
                                    let mut iov = p.to_le_bytes().to_vec();
                                    iov.extend_from_slice(&l.to_le_bytes());
                                    let (ip, _) = data.place(&iov);
                                    write!(argv, " (i32.const {ip}) (i32.const 1)").unwrap();
                                }
                                A::Slot(k) => write!(argv, " (i32.const {})", SLOTS + 8 * k).unwrap(),
                                A::Saved(v) => write!(argv, " (i32.load (i32.const {}))", VARS + 4 * v).unwrap(),
                                A::Ctx => write!(argv, " (local.get 0)").unwrap(),
                            }
                        }
                        writeln!(b, "    (call $reset)").unwrap();
                        if has_result {
                            writeln!(b, "    (local.set $st (call $h{idx}{argv}))").unwrap();
                        } else {
                            writeln!(b, "    (call $h{idx}{argv}) (local.set $st (i32.const 0))").unwrap();
                        }
                        let (p, l) = data.place(format!("@{label} status=").as_bytes());
                        writeln!(b, "    (call $w (i32.const {p}) (i32.const {l})) (call $wu (local.get $st))")
                            .unwrap();
                        for r in reports {
                            let text = |d: &mut Data, t: String| d.place(t.as_bytes());
                            match r {
                                R::U32(k) => {
                                    let (p, l) = text(&mut data, format!(" s{k}="));
                                    writeln!(b, "    (call $w (i32.const {p}) (i32.const {l})) (call $wslot (i32.load (i32.const {})))", SLOTS + 8 * k).unwrap();
                                }
                                R::Ptr(k) => {
                                    let (p, l) = text(&mut data, format!(" s{k}="));
                                    writeln!(b, "    (call $w (i32.const {p}) (i32.const {l})) (call $wptr (i32.load (i32.const {})))", SLOTS + 8 * k).unwrap();
                                }
                                R::U64(k) => {
                                    let (p, l) = text(&mut data, format!(" s{k}="));
                                    writeln!(b, "    (call $w (i32.const {p}) (i32.const {l})) (call $wslot64 (i64.load (i32.const {})))", SLOTS + 8 * k).unwrap();
                                }
                                R::Data(pk, lk) => {
                                    let (p, l) = text(&mut data, " data=".to_string());
                                    writeln!(
                                        b,
                                        "    (call $w (i32.const {p}) (i32.const {l})) (call $wdata (i32.load (i32.const {})) (i32.load (i32.const {})))",
                                        SLOTS + 8 * pk,
                                        SLOTS + 8 * lk
                                    )
                                    .unwrap();
                                }
                                R::Mem(addr) => {
                                    let (p, l) = text(&mut data, format!(" m{addr}="));
                                    writeln!(b, "    (call $w (i32.const {p}) (i32.const {l})) (call $wslot (i32.load (i32.const {addr})))").unwrap();
                                }
                                R::Save(k, v) => {
                                    writeln!(
                                        b,
                                        "    (i32.store (i32.const {}) (i32.load (i32.const {})))",
                                        VARS + 4 * v,
                                        SLOTS + 8 * k
                                    )
                                    .unwrap();
                                }
                            }
                        }
                        writeln!(b, "    (call $flush)").unwrap();
                    }
                }
            }
            bodies.insert(cb, b);
        }
        let body = |k: &str| bodies.get(k).cloned().unwrap_or_default();
        let heap = ((data.next + 0xffff) & !0xffff).max(0x10000);
        let pages = heap / 0x10000 + 2;

        let mut m = String::new();
        m.push_str("(module\n");
        let mut by_index: Vec<(&String, &usize)> = imports.iter().collect();
        by_index.sort_by_key(|(_, i)| **i);
        for (f, idx) in by_index {
            let (module, name, params, result) = signature(f);
            let params: Vec<&str> = params.to_vec();
            let result = if result { " (result i32)" } else { "" };
            writeln!(m, "  (import \"{module}\" \"{name}\" (func $h{idx} (param {}){result}))", params.join(" "))
                .unwrap();
        }
        writeln!(m, "  (memory (export \"memory\") {pages})").unwrap();
        writeln!(m, "  (global $heap (mut i32) (i32.const {heap}))").unwrap();
        m.push_str("  (global $pos (mut i32) (i32.const 0x800))\n");
        m.push_str("  (data (i32.const 0) \"\\01\\00\\00\\00\\02\\00\\00\\00\")\n");
        m.push_str(&data.segments());
        writeln!(m, "  (func (export \"proxy_abi_version_{}\"))", self.abi).unwrap();
        m.push_str(
            r#"  (func $bump (param $n i32) (result i32) (local $p i32) (local $end i32) (local $have i32)
    (local.set $p (i32.and (i32.add (global.get $heap) (i32.const 7)) (i32.const -8)))
    (local.set $end (i32.add (local.get $p) (local.get $n)))
    (local.set $have (i32.mul (memory.size) (i32.const 65536)))
    (if (i32.gt_u (local.get $end) (local.get $have))
      (then (if (i32.eq (memory.grow (i32.add (i32.shr_u (i32.sub (local.get $end) (local.get $have)) (i32.const 16)) (i32.const 1))) (i32.const -1))
        (then (return (i32.const 0))))))
    (global.set $heap (local.get $end))
    (local.get $p))
  (func $w (param $p i32) (param $n i32)
    (block $done (loop $l
      (br_if $done (i32.eqz (local.get $n)))
      (br_if $done (i32.ge_u (global.get $pos) (i32.const 0xff0)))
      (i32.store8 (global.get $pos) (i32.load8_u (local.get $p)))
      (global.set $pos (i32.add (global.get $pos) (i32.const 1)))
      (local.set $p (i32.add (local.get $p) (i32.const 1)))
      (local.set $n (i32.sub (local.get $n) (i32.const 1)))
      (br $l))))
  (func $wu64 (param $v i64) (local $q i32)
    (local.set $q (i32.const 0x7ff))
    (loop $l
      (local.set $q (i32.sub (local.get $q) (i32.const 1)))
      (i32.store8 (local.get $q) (i32.add (i32.const 48) (i32.wrap_i64 (i64.rem_u (local.get $v) (i64.const 10)))))
      (local.set $v (i64.div_u (local.get $v) (i64.const 10)))
      (br_if $l (i64.ne (local.get $v) (i64.const 0))))
    (call $w (local.get $q) (i32.sub (i32.const 0x7ff) (local.get $q))))
  (func $wu (param $v i32) (call $wu64 (i64.extend_i32_u (local.get $v))))
  (func $reset (local $a i32)
    (local.set $a (i32.const 0x100))
    (loop $l
      (i64.store (local.get $a) (i64.const -1))
      (local.set $a (i32.add (local.get $a) (i32.const 8)))
      (br_if $l (i32.lt_u (local.get $a) (i32.const 0x140)))))
  (func $flush
    (drop (call $h0 (i32.const 2) (i32.const 0x800) (i32.sub (global.get $pos) (i32.const 0x800))))
    (global.set $pos (i32.const 0x800)))
"#,
        );
        writeln!(
            m,
            r#"  (func $wslot (param $v i32)
    (if (i32.eq (local.get $v) (i32.const -1)) (then (call $w (i32.const {up}) (i32.const {ul}))) (else (call $wu (local.get $v)))))
  (func $wslot64 (param $v i64)
    (if (i64.eq (local.get $v) (i64.const -1)) (then (call $w (i32.const {up}) (i32.const {ul}))) (else (call $wu64 (local.get $v)))))
  (func $wptr (param $v i32)
    (if (i32.eq (local.get $v) (i32.const -1)) (then (call $w (i32.const {up}) (i32.const {ul})) (return)))
    (if (i32.eqz (local.get $v)) (then (call $w (i32.const {zp}) (i32.const {zl}))) (else (call $w (i32.const {np}) (i32.const {nl})))))
  (func $wdata (param $p i32) (param $n i32)
    (if (i32.or (i32.eqz (local.get $p)) (i32.or (i32.eq (local.get $p) (i32.const -1)) (i32.eq (local.get $n) (i32.const -1)))) (then (return)))
    (call $w (local.get $p) (local.get $n)))"#,
            up = unset.0,
            ul = unset.1,
            zp = zero.0,
            zl = zero.1,
            np = nz.0,
            nl = nz.1
        )
        .unwrap();
        // Allocators: proxy_on_memory_allocate, and malloc when asked; each
        // logs its name when asked (with_malloc) so a test sees which one the host uses.
        if self.malloc {
            m.push_str(
                r#"  (func (export "proxy_on_memory_allocate") (param $n i32) (result i32)
    (drop (call $h0 (i32.const 2) (i32.const 0x700) (i32.const 25)))
    (call $bump (local.get $n)))
  (func (export "malloc") (param $n i32) (result i32)
    (drop (call $h0 (i32.const 2) (i32.const 0x720) (i32.const 7)))
    (call $bump (local.get $n)))
  (data (i32.const 0x700) "@proxy_on_memory_allocate")
  (data (i32.const 0x720) "@malloc")
"#,
            );
        } else {
            m.push_str("  (func (export \"proxy_on_memory_allocate\") (param $n i32) (result i32) (call $bump (local.get $n)))\n");
        }
        let v010 = self.abi == "0_1_0";
        let cb = |m: &mut String, export: &str, params: usize, result: Option<i32>, steps: String| {
            let ps = vec!["i32"; params].join(" ");
            let ps = if params > 0 { format!(" (param {ps})") } else { String::new() };
            let (rt, rv) = match result {
                Some(v) => (" (result i32)".to_string(), format!("    (i32.const {v})\n")),
                None => (String::new(), String::new()),
            };
            writeln!(m, "  (func (export \"{export}\"){ps}{rt} (local $st i32)\n{steps}{rv}  )").unwrap();
        };
        cb(&mut m, "_initialize", 0, None, body("initialize"));
        let create = format!(
            "    (if (i32.eqz (local.get 1)) (then\n{}    ) (else\n{}    ))\n",
            body("create_root"),
            body("create_stream")
        );
        cb(&mut m, "proxy_on_context_create", 2, None, create);
        cb(&mut m, "proxy_on_vm_start", 2, Some(1), body("vm_start"));
        cb(&mut m, "proxy_on_configure", 2, Some(1), body("configure"));
        let headers = if v010 { 2 } else { 3 };
        cb(&mut m, "proxy_on_request_headers", headers, Some(0), body("request_headers"));
        cb(&mut m, "proxy_on_request_body", 3, Some(0), body("request_body"));
        cb(&mut m, "proxy_on_response_headers", headers, Some(0), body("response_headers"));
        cb(&mut m, "proxy_on_response_body", 3, Some(0), body("response_body"));
        cb(&mut m, "proxy_on_tick", 1, None, body("tick"));
        cb(&mut m, "proxy_on_queue_ready", 2, None, body("queue_ready"));
        cb(&mut m, "proxy_on_http_call_response", 5, None, body("http_call_response"));
        if !v010 {
            cb(&mut m, "proxy_on_foreign_function", 3, None, body("foreign_function"));
        }
        cb(&mut m, "proxy_on_done", 1, Some(1), body("done"));
        cb(&mut m, "proxy_on_log", 1, None, body("log"));
        cb(&mut m, "proxy_on_delete", 1, None, body("delete"));
        m.push_str(")\n");
        m
    }
}

/// The probe lines among log messages, without their `@`.
pub fn probe_lines(messages: &[String]) -> Vec<String> {
    messages.iter().filter_map(|m| m.strip_prefix('@')).map(str::to_string).collect()
}

/// The value of `key=` in a probe line.
pub fn field(line: &str, key: &str) -> String {
    line.split(' ')
        .find_map(|w| w.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key}= in {line:?}"))
        .to_string()
}
