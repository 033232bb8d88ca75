//! The YAML loader (`files::load_str` / `load_file`) on random and mutated
//! files: the repository's example configurations and `tests/configs/` as
//! seeds, mutated byte-wise and line-wise (deleted, duplicated, swapped and
//! re-indented lines, keys and values swapped for others), plus deep nesting,
//! huge numbers and YAML alias bombs.
//!
//! Properties: no panic; a result is either plugins that each know their line,
//! or an error that names the file and a line, and for a schema error the key
//! (`<file>:<line>:<column>: <key>: <message>`); and the loader's allocations
//! stay bounded (an alias bomb must not expand into gigabytes).

use crate::engine::{self, Case, Rng};
use proxy_wasm_host::config::ConfigError;
use proxy_wasm_host::files::{load_file, load_str};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Files are "placed" in tests/configs/malformed/, where `placeholder.code`
/// exists, so that `filename: placeholder.code` passes the existence check.
fn seed_dir() -> PathBuf {
    crate::common::repo_root().join("tests/configs/malformed")
}

/// The most any one load may allocate at once.
const MAX_PEAK_BYTES: usize = 128 << 20;

const FULL: &str = r#"config:
  name: "full"
  root_id: "root1"
  configuration: "plugin text"
  failure_policy: reload
  pause_timeout: 30s
  max_body_size: 1MiB
  authorizations:
    allowed_hosts: ["127.0.0.1:8081", "*"]
    plugin_map_access: { read: true, write: false }
    global_map_access: { read: false, write: false }
    properties: { read: ["request", "plugin_name"], write: ["*"] }
  capability_restriction_config:
    allowed_capabilities:
      proxy_log: {}
      proxy_get_property:
  vm_config:
    runtime: "ats.wasm.runtime.wamr"
    vm_id: "vm1"
    configuration: { a: [1, 2, {b: null}], "c": true }
    allow_precompiled: false
    environment_variables:
      host_env_keys: ["HOME"]
      key_values: { A: "b", EMPTY: "" }
    kill_options:
      max_calls: 100000
      max_memory_usage: 0.8
      max_unused_duration: 300s
    limits:
      max_memory: 64MiB
      callback_timeout: 100ms
      max_pending_http_calls: 1024
      max_http_call_response_size: 16MiB
      max_queue_length: 10000
      max_shared_data_size: 16MiB
      max_log_lines_per_second: 1000
      min_tick_period: 1ms
    code:
      local:
        filename: "placeholder.code"
"#;

const CAMEL: &str = r"config:
  name: camel
  rootId: r
  failOpen: true
  pauseTimeout: 2s
  maxBodySize: 65536
  capabilityRestrictionConfig:
    allowedCapabilities: [proxy_log, proxy_set_buffer_bytes]
  vmConfig:
    vmId: v
    allowPrecompiled: true
    environmentVariables:
      hostEnvKeys: []
      keyValues: { K: V }
    killOptions: { maxCalls: 5, maxMemoryUsage: 1, maxUnusedDuration: 500ms }
    limits: { maxMemory: 1GiB, callbackTimeout: 1.5s, minTickPeriod: 10ms }
    code:
      local:
        filename: placeholder.code
";

const LIST: &str = r"# Two plugins, in order.
- config:
    name: first
    vm_config:
      code: { local: { filename: placeholder.code } }
- config:
    name: second
    vm_config:
      runtime: wamr
      code:
        remote:
          http_uri: { uri: 'http://127.0.0.1:8080/f.wasm', timeout: 10s }
          sha256: 0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef
          cache_dir: /tmp
";

const PLUGINS_KEY: &str = r#"plugins:
  - config: { name: one, vm_config: { code: { local: { inline_string: "abc" } } } }
  - config:
      name: two
      configuration: [x, {y: 1}]
      vm_config: { code: { local: { inline_bytes: "AGFzbQEAAAA=" } } }
  - config:
      name: three
      vm_config: { code: { remote: { uri: "http://h/f.wasm", sha256: "0000000000000000000000000000000000000000000000000000000000000000" } } }
"#;

/// Every key and alias the schema knows, for key swaps.
const KEYS: &[&str] = &[
    "config",
    "plugins",
    "name",
    "root_id",
    "rootId",
    "configuration",
    "fail_open",
    "failOpen",
    "failure_policy",
    "failurePolicy",
    "pause_timeout",
    "pauseTimeout",
    "max_body_size",
    "maxBodySize",
    "authorizations",
    "allowed_hosts",
    "allowedHosts",
    "plugin_map_access",
    "global_map_access",
    "properties",
    "read",
    "write",
    "capability_restriction_config",
    "allowed_capabilities",
    "vm_config",
    "vmConfig",
    "runtime",
    "vm_id",
    "vmId",
    "allow_precompiled",
    "environment_variables",
    "host_env_keys",
    "key_values",
    "kill_options",
    "max_calls",
    "max_memory_usage",
    "max_unused_duration",
    "limits",
    "max_memory",
    "callback_timeout",
    "max_pending_http_calls",
    "max_http_call_response_size",
    "max_queue_length",
    "max_shared_data_size",
    "max_log_lines_per_second",
    "min_tick_period",
    "code",
    "local",
    "remote",
    "filename",
    "inline_bytes",
    "inline_string",
    "http_uri",
    "uri",
    "timeout",
    "sha256",
    "cache_dir",
    "<<",
    "? complex",
    "unknown_key",
];

/// Scalars and small structures that trip parsers and converters.
const VALUES: &[&str] = &[
    "0",
    "-1",
    "1",
    "010",
    "0x10",
    "0o17",
    "1e400",
    "-1e400",
    ".inf",
    "-.inf",
    ".nan",
    "1.5",
    "1_000",
    "99999999999999999999999999999",
    "18446744073709551615",
    "18446744073709551616",
    "-9223372036854775809",
    "4294967296",
    "4GiB",
    "5GiB",
    "0MiB",
    "1KiB",
    "63KiB",
    "1.5MiB",
    "-1MiB",
    "1e3MiB",
    "0s",
    "-1s",
    "1ms",
    "0.5ms",
    "99999999999s",
    "86401s",
    "1.7976931348623157e308s",
    "300",
    "true",
    "false",
    "yes",
    "no",
    "on",
    "~",
    "null",
    "",
    "''",
    "\"\"",
    "\"\\0\"",
    "\"\\u0000\"",
    "\"\\xff\"",
    "\"\\uD800\"",
    "[]",
    "{}",
    "[[]]",
    "{a: {b: {c: d}}}",
    "!!binary AAAA",
    "!!str 1",
    "!!int x",
    "!custom v",
    "&anchor x",
    "*anchor",
    "*undefined",
    "|",
    ">-",
    "|+\n  x",
    "'quoted",
    "\"unterminated",
    "wamr",
    "wasmtime",
    "ats.wasm.runtime.wasmtime",
    "fail_open",
    "reload",
    "http://h/f.wasm",
    "https://h/f.wasm",
    "http://[::1]:99999/f",
    "placeholder.code",
    "/dev/null",
    "/",
    ".",
    "..",
    "/etc/passwd",
    "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
    "ééé",
    "\u{feff}x",
    "x\u{0}y",
];

fn seeds() -> &'static Vec<(String, String)> {
    static SEEDS: OnceLock<Vec<(String, String)>> = OnceLock::new();
    SEEDS.get_or_init(|| {
        let root = crate::common::repo_root();
        let mut seeds: Vec<(String, String)> =
            [("full.yaml", FULL), ("camel.yaml", CAMEL), ("list.yaml", LIST), ("plugins.yaml", PLUGINS_KEY)]
                .iter()
                .map(|(n, t)| (n.to_string(), t.to_string()))
                .collect();
        let mut files: Vec<PathBuf> = ["ats-config", "examples/demo", "tests/configs/malformed"]
            .iter()
            .flat_map(|d| std::fs::read_dir(root.join(d)).into_iter().flatten().flatten().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
            .collect();
        files.sort();
        for f in files {
            let Ok(text) = std::fs::read_to_string(&f) else { continue };
            let name = f.file_name().unwrap().to_string_lossy().into_owned();
            // The repository's examples point at built plugins: point them at the placeholder too.
            let local: String = text
                .lines()
                .map(|l| match l.find("filename:") {
                    Some(i) => format!("{}filename: \"placeholder.code\"", &l[..i]),
                    None => l.to_string(),
                })
                .collect::<Vec<_>>()
                .join("\n");
            if local != text {
                seeds.push((format!("local-{name}"), local));
            }
            seeds.push((name, text));
        }
        seeds
    })
}

/// A line-level edit: delete, duplicate, swap, re-indent, or replace a key or a value.
fn mutate_lines(rng: &mut Rng, text: &str) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    if lines.is_empty() {
        lines.push(String::new());
    }
    for _ in 0..rng.range(1, 3) {
        let n = lines.len();
        let i = rng.below(n);
        match rng.below(7) {
            0 if n > 1 => {
                lines.remove(i);
            }
            1 => {
                let l = lines[i].clone();
                lines.insert(i, l);
            }
            2 => {
                let j = rng.below(n);
                lines.swap(i, j);
            }
            3 => {
                let prefix: &str = *rng.pick(&["  ", " ", "\t", "- "]);
                let l = &mut lines[i];
                if rng.bool() {
                    l.insert_str(0, prefix);
                } else {
                    let trimmed = l.trim_start().to_string();
                    let indent = (l.len() - trimmed.len()).saturating_sub(2);
                    *l = format!("{}{trimmed}", " ".repeat(indent));
                }
            }
            4 => {
                // Another key in the same place.
                let l = &lines[i];
                if let Some(colon) = l.find(':') {
                    let indent = l.len() - l.trim_start().len();
                    let dash = if l.trim_start().starts_with("- ") { "- " } else { "" };
                    lines[i] = format!("{}{dash}{}{}", " ".repeat(indent), rng.pick(KEYS), &l[colon..]);
                }
            }
            5 => {
                // Another value for a key.
                let l = &lines[i];
                if let Some(colon) = l.find(": ") {
                    lines[i] = format!("{}: {}", &l[..colon], rng.pick(VALUES));
                } else if let Some(colon) = l.find(':') {
                    lines[i] = format!("{}: {}", &l[..colon], rng.pick(VALUES));
                }
            }
            _ => {
                // A new line with any key and value, at the indentation of a neighbour.
                let indent = lines[i].len() - lines[i].trim_start().len();
                let line = format!("{}{}: {}", " ".repeat(indent), rng.pick(KEYS), rng.pick(VALUES));
                lines.insert(i, line);
            }
        }
    }
    let mut out = lines.join("\n");
    if rng.chance(3, 4) {
        out.push('\n');
    }
    out
}

/// `levels` levels of `fanout` aliases each (`fanout^levels` strings once
/// expanded), defined where the schema reads them (inside a plugin
/// configuration, which the loader turns into JSON text), and `padding` more
/// nodes: `serde_yaml_ng` allows 100 alias expansions per node of the document.
pub fn alias_bomb_padded(levels: usize, fanout: usize, place: usize, padding: usize) -> String {
    let mut anchors = String::from("      x0: &x0 [\"lol\"]\n");
    if padding > 0 {
        anchors.push_str(&format!("      pad: [{}]\n", vec!["0"; padding].join(",")));
    }
    for l in 1..=levels {
        let refs = vec![format!("*x{}", l - 1); fanout].join(", ");
        anchors.push_str(&format!("      x{l}: &x{l} [{refs}]\n"));
    }
    let top = format!("*x{levels}");
    let code = "code: { local: { filename: placeholder.code } }";
    match place {
        // The whole bomb is the plugin configuration.
        0 => format!("config:\n  name: bomb\n  configuration:\n{}  vm_config: {{ {code} }}\n", anchors.replace("\n      ", "\n    ").replacen("      ", "    ", 1)),
        // Defined in the plugin configuration, expanded in the VM configuration.
        1 => format!("config:\n  name: bomb\n  configuration:\n    anchors:\n{anchors}  vm_config:\n    configuration: {top}\n    {code}\n"),
        // Expanded as the capability list.
        2 => format!("config:\n  name: bomb\n  configuration:\n    anchors:\n{anchors}  capability_restriction_config: {{ allowed_capabilities: {top} }}\n  vm_config: {{ {code} }}\n"),
        // One long string, repeated: few nodes, much text.
        4 => {
            let long = "a".repeat(1 << 16);
            let refs = vec!["*s"; fanout * 300].join(", ");
            format!("config:\n  name: bomb\n  configuration:\n    s: &s \"{long}\"\n    t: [{refs}]\n  vm_config: {{ {code} }}\n")
        }
        // Defined by one plugin, expanded by the next.
        _ => {
            let anchors: String = anchors.lines().map(|l| format!("  {l}\n")).collect();
            format!("- config:\n    name: a\n    configuration:\n      anchors:\n{anchors}    vm_config: {{ {code} }}\n- config:\n    name: b\n    configuration: {top}\n    vm_config: {{ {code} }}\n")
        }
    }
}

/// Deeply nested flow or block structure.
fn deep(rng: &mut Rng) -> String {
    let depth = rng.range(50, 20_000);
    match rng.below(4) {
        0 => format!("config:\n  name: deep\n  configuration: {}{}\n", "[".repeat(depth), "]".repeat(depth)),
        1 => format!("config:\n  name: deep\n  configuration: {}x{}\n", "{a: ".repeat(depth), "}".repeat(depth)),
        2 => {
            let depth = depth.min(400);
            let mut s = String::from("config:\n  name: deep\n  configuration:\n");
            for d in 0..depth {
                s.push_str(&format!("{}k{d}:\n", " ".repeat(4 + 2 * d)));
            }
            s
        }
        _ => {
            let depth = depth.min(400);
            let mut s = String::from("config:\n  name: deep\n  configuration:\n");
            for d in 0..depth {
                s.push_str(&format!("{}-\n", " ".repeat(4 + 2 * d)));
            }
            s
        }
    }
}

/// One input: a seed mutated, or one of the structural extremes.
fn input(rng: &mut Rng) -> (String, Vec<u8>) {
    let seeds = seeds();
    let (name, text) = rng.pick(seeds).clone();
    match rng.below(40) {
        0 => (name, deep(rng).into_bytes()),
        1 => {
            // Each costs the loader its whole budget: rare, or they would be most of the run.
            let padding = if rng.bool() { 0 } else { rng.below(20_000) };
            (name, alias_bomb_padded(rng.range(2, 12), rng.range(2, 12), rng.below(5), padding).into_bytes())
        }
        2..=3 => {
            // Random bytes from YAML's special characters.
            let n = rng.len(512);
            (name, rng.bytes_from(n, b" \n\t-:?[]{},&*!|>'\"%@`#abc01"))
        }
        4..=11 => {
            let mut b = text.into_bytes();
            rng.mutate(&mut b, 1 << 16);
            (name, b)
        }
        // Line edits mostly keep the YAML well formed, so the schema checks run.
        12..=25 => (name.clone(), mutate_lines(rng, &text).into_bytes()),
        _ => {
            let mut t = text;
            for _ in 0..rng.range(2, 5) {
                t = mutate_lines(rng, &t);
            }
            (name, t.into_bytes())
        }
    }
}

/// Lines as YAML counts them: `\r\n`, `\r`, `\n` and (YAML 1.1, as libyaml) NEL, LS and PS
/// each end one.
fn yaml_lines(text: &str) -> usize {
    let mut breaks = 0;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\r' => {
                chars.next_if_eq(&'\n');
                breaks += 1;
            }
            '\n' | '\u{85}' | '\u{2028}' | '\u{2029}' => breaks += 1,
            _ => {}
        }
    }
    breaks + 1
}

/// Checks an error's shape: the file, a line within the text, and for schema
/// errors a key.
fn check_error(e: &ConfigError, file: &Path, lines: usize) -> Result<(), String> {
    let text = e.to_string();
    let shown = file.display().to_string();
    match e {
        ConfigError::Syntax { at, message } | ConfigError::Invalid { at, message, .. } => {
            if at.file != file {
                return Err(format!("the error names {:?}, not the file loaded: {text}", at.file));
            }
            match at.line {
                Some(l) if l >= 1 && l <= lines => {}
                Some(l) => return Err(format!("the error's line {l} is outside the file ({lines} lines): {text}")),
                None => return Err(format!("the error names no line: {text}")),
            }
            if message.trim().is_empty() {
                return Err(format!("the error says nothing: {text}"));
            }
            if !text.starts_with(&format!("{shown}:{}", at.line.unwrap_or(0))) {
                return Err(format!("the message does not start with file:line: {text}"));
            }
            if let ConfigError::Invalid { key, .. } = e {
                if key.is_empty() || !text.contains(&format!(": {key}: ")) {
                    return Err(format!("the error names no key: {text}"));
                }
            }
            Ok(())
        }
        ConfigError::Read { .. } => Err(format!("load_str answered a read error: {text}")),
        _ => Err(format!("an error of another kind: {text}")),
    }
}

fn check(case: &mut Case) -> Result<(), String> {
    let (name, bytes) = input(&mut case.rng);
    case.note(format!("mutated from {name}"));
    case.input(&bytes);
    let file = seed_dir().join(format!("fuzz-{name}"));
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let lines = yaml_lines(&text);
    let (result, peak) = engine::peak_allocation(|| load_str(&text, &file));
    if peak > MAX_PEAK_BYTES {
        return Err(format!("loading allocated {} MiB at its peak", peak >> 20));
    }
    match result {
        Ok(plugins) => {
            for p in &plugins {
                if p.name.is_empty() {
                    return Err("a plugin without a name was accepted".into());
                }
                if p.origin.line == 0 || p.origin.line > lines {
                    return Err(format!(
                        "plugin {:?} was accepted with line {} (the file has {lines})",
                        p.name, p.origin.line
                    ));
                }
            }
            Ok(())
        }
        Err(e) => check_error(&e, &file, lines),
    }
}

/// Bytes that are not UTF-8 reach `load_file` from disk: a read error naming the file.
fn check_file(case: &mut Case, dir: &Path) -> Result<(), String> {
    let (name, mut bytes) = input(&mut case.rng);
    if case.rng.bool() {
        let at = case.rng.below(bytes.len() + 1);
        bytes.insert(at, *case.rng.pick(&[0xff, 0xc3, 0x80, 0xfe]));
    }
    case.note(format!("mutated from {name}, loaded from a file"));
    case.input(&bytes);
    let file = dir.join("fuzz.yaml");
    std::fs::write(&file, &bytes).map_err(|e| e.to_string())?;
    let lines = yaml_lines(&String::from_utf8_lossy(&bytes));
    let (result, peak) = engine::peak_allocation(|| load_file(&file));
    if peak > MAX_PEAK_BYTES {
        return Err(format!("loading allocated {} MiB at its peak", peak >> 20));
    }
    match result {
        Ok(_) => Ok(()),
        Err(ConfigError::Read { file: f, .. }) if std::str::from_utf8(&bytes).is_err() && f == file => Ok(()),
        Err(e) => check_error(&e, &file, lines),
    }
}

#[test]
fn fuzz_yaml_loader() {
    let dir = std::env::temp_dir().join(format!("pwh-fuzz-yaml-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("placeholder.code"), b"").unwrap();
    engine::run("yaml_loader", |case| if case.rng.chance(1, 5) { check_file(case, &dir) } else { check(case) });
    let _ = std::fs::remove_dir_all(&dir);
}

/// The "billion laughs": nine levels of nine aliases (387 420 489 strings
/// once expanded) must be refused or read without expanding them in memory.
#[test]
fn a_yaml_alias_bomb_does_not_blow_memory() {
    let file = seed_dir().join("bomb.yaml");
    for (place, padding) in [(0, 0), (1, 0), (2, 0), (3, 0), (4, 0), (0, 100_000), (1, 100_000), (5, 100_000)] {
        let text = alias_bomb_padded(9, 9, place, padding);
        let (result, peak) = engine::peak_allocation(|| load_str(&text, &file));
        // The loader's budget is 200 000 nodes and 64 MiB of text per file, aliases expanded.
        assert!(peak < 96 << 20, "place {place}, padding {padding}: the loader allocated {} MiB", peak >> 20);
        let e = result.expect_err("the bomb is refused");
        check_error(&e, &file, yaml_lines(&text)).unwrap();
    }
}
