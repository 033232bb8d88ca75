//! OPA policies import their memory (`env.memory`); the host is to create it. Rather than teach
//! each runtime adapter imported memories, the module is rewritten before it is compiled: the
//! memory import becomes a memory the module defines (at least `pages` 64 KiB pages, within the
//! import's own limits) and exports as `memory`, which is how the adapters already reach a
//! guest's memory. Function, table and global indices do not move (only a memory import is
//! removed, and the defined memory takes its index 0).

/// Why a module could not be rewritten.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot give the OPA policy its memory: {0}")]
pub struct RewriteError(String);

fn err<T>(m: impl Into<String>) -> Result<T, RewriteError> {
    Err(RewriteError(m.into()))
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Result<u8, RewriteError> {
        let b = *self.bytes.get(self.at).ok_or_else(|| RewriteError("truncated module".into()))?;
        self.at += 1;
        Ok(b)
    }

    fn u32(&mut self) -> Result<u32, RewriteError> {
        let mut result: u64 = 0;
        for shift in (0..35).step_by(7) {
            let b = self.byte()?;
            result |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return u32::try_from(result).or_else(|_| err("LEB128 value out of range"));
            }
        }
        err("LEB128 value too long")
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], RewriteError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|e| *e <= self.bytes.len())
            .ok_or_else(|| RewriteError("truncated module".into()))?;
        let s = &self.bytes[self.at..end];
        self.at = end;
        Ok(s)
    }

    fn name(&mut self) -> Result<&'a [u8], RewriteError> {
        let n = self.u32()? as usize;
        self.take(n)
    }

    /// Memory or table limits: (min, max).
    fn limits(&mut self) -> Result<(u32, Option<u32>), RewriteError> {
        match self.byte()? {
            0x00 => Ok((self.u32()?, None)),
            0x01 => Ok((self.u32()?, Some(self.u32()?))),
            f => err(format!("limits flags {f:#x} (shared or 64-bit memories) are not supported")),
        }
    }
}

fn leb(mut v: u32, out: &mut Vec<u8>) {
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

fn section(id: u8, body: &[u8], out: &mut Vec<u8>) {
    out.push(id);
    leb(body.len() as u32, out);
    out.extend_from_slice(body);
}

/// A section's rank in the order the binary format requires (custom sections, id 0, may go
/// anywhere): type, import, function, table, memory, tag, global, export, start, element, data
/// count, code, data.
fn rank(id: u8) -> u8 {
    match id {
        13 => 11,
        12 => 20,
        10 => 22,
        11 => 24,
        n => n * 2,
    }
}

const MEMORY_RANK: u8 = 10;
const EXPORT_RANK: u8 = 14;

/// Rewrites `wasm` so that its `env.memory` import is a defined memory exported as `memory`;
/// a module without that import is returned unchanged.
pub fn define_imported_memory(wasm: &[u8], pages: u32) -> Result<Vec<u8>, RewriteError> {
    if wasm.get(..8) != Some(b"\0asm\x01\0\0\0") {
        return err("not a WebAssembly module");
    }
    let mut r = Reader { bytes: wasm, at: 8 };
    let mut sections: Vec<(u8, &[u8])> = Vec::new();
    while r.at < wasm.len() {
        let id = r.byte()?;
        let len = r.u32()? as usize;
        sections.push((id, r.take(len)?));
    }
    let Some(import_index) = sections.iter().position(|(id, _)| *id == 2) else { return Ok(wasm.to_vec()) };

    // The import section without the memory import.
    let mut imports = Reader { bytes: sections[import_index].1, at: 0 };
    let count = imports.u32()?;
    let mut kept = Vec::new();
    let mut kept_count = 0u32;
    let mut memory = None;
    for _ in 0..count {
        let start = imports.at;
        let module = imports.name()?;
        let field = imports.name()?;
        let kind = imports.byte()?;
        match kind {
            0x00 => {
                imports.u32()?;
            }
            0x01 => {
                imports.byte()?;
                imports.limits()?;
            }
            0x02 => {
                let limits = imports.limits()?;
                if module == b"env" && field == b"memory" {
                    memory = Some(limits);
                    continue;
                }
                return err("the policy imports a memory other than env.memory");
            }
            0x03 => {
                imports.byte()?;
                imports.byte()?;
            }
            0x04 => {
                imports.byte()?;
                imports.u32()?;
            }
            k => return err(format!("unknown import kind {k:#x}")),
        }
        kept.extend_from_slice(&imports.bytes[start..imports.at]);
        kept_count += 1;
    }
    let Some((min, max)) = memory else { return Ok(wasm.to_vec()) };
    if sections.iter().any(|(id, _)| *id == 5) {
        return err("the policy both imports and defines a memory");
    }
    let initial = pages.clamp(min, max.unwrap_or(65536));

    let mut import_body = Vec::new();
    leb(kept_count, &mut import_body);
    import_body.extend_from_slice(&kept);
    let mut memory_body = vec![1];
    match max {
        Some(m) => {
            memory_body.push(1);
            leb(initial, &mut memory_body);
            leb(m, &mut memory_body);
        }
        None => {
            memory_body.push(0);
            leb(initial, &mut memory_body);
        }
    }
    // The export section with `memory` added (unless already exported).
    let mut export_body = Vec::new();
    match sections.iter().find(|(id, _)| *id == 7) {
        Some((_, body)) => {
            let mut e = Reader { bytes: body, at: 0 };
            let n = e.u32()?;
            let rest = &body[e.at..];
            let mut scan = Reader { bytes: rest, at: 0 };
            for _ in 0..n {
                if scan.name()? == b"memory" {
                    return err("the policy already exports something named memory");
                }
                scan.byte()?;
                scan.u32()?;
            }
            leb(n + 1, &mut export_body);
            export_body.extend_from_slice(rest);
        }
        None => leb(1, &mut export_body),
    }
    export_body.extend_from_slice(&[6, b'm', b'e', b'm', b'o', b'r', b'y', 0x02, 0x00]);

    let mut out = wasm[..8].to_vec();
    let mut wrote_memory = false;
    let mut wrote_exports = false;
    for (id, body) in &sections {
        if *id != 0 && rank(*id) > MEMORY_RANK && !wrote_memory {
            section(5, &memory_body, &mut out);
            wrote_memory = true;
        }
        if *id != 0 && rank(*id) > EXPORT_RANK && !wrote_exports {
            section(7, &export_body, &mut out);
            wrote_exports = true;
        }
        match id {
            2 => section(2, &import_body, &mut out),
            7 => {
                section(7, &export_body, &mut out);
                wrote_exports = true;
            }
            _ => section(*id, body, &mut out),
        }
    }
    if !wrote_memory {
        section(5, &memory_body, &mut out);
    }
    if !wrote_exports {
        section(7, &export_body, &mut out);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: &str = r#"
        (module
          (import "env" "opa_abort" (func $abort (param i32)))
          (import "env" "memory" (memory 2))
          (global $g (mut i32) (i32.const 7))
          (func (export "opa_heap_ptr_get") (result i32) (global.get $g))
          (func (export "store") (param i32 i32) (i32.store (local.get 0) (local.get 1)))
          (data (i32.const 16) "hi"))
    "#;

    #[test]
    fn the_memory_import_becomes_an_exported_memory() {
        let wasm = wat::parse_str(POLICY).unwrap();
        let out = define_imported_memory(&wasm, 50).unwrap();
        let engine = wasmtime::Engine::default();
        let module = wasmtime::Module::new(&engine, &out).unwrap();
        assert_eq!(module.imports().count(), 1);
        let memory = module.exports().find(|e| e.name() == "memory").unwrap();
        let wasmtime::ExternType::Memory(m) = memory.ty() else { panic!() };
        assert_eq!(m.minimum(), 50);
        // Indices did not move: the module still runs.
        let mut store = wasmtime::Store::new(&engine, ());
        let mut linker = wasmtime::Linker::new(&engine);
        linker.func_wrap("env", "opa_abort", |_: i32| {}).unwrap();
        let instance = linker.instantiate(&mut store, &module).unwrap();
        let heap = instance.get_typed_func::<(), i32>(&mut store, "opa_heap_ptr_get").unwrap();
        assert_eq!(heap.call(&mut store, ()).unwrap(), 7);
        let mem = instance.get_memory(&mut store, "memory").unwrap();
        assert_eq!(&mem.data(&store)[16..18], b"hi");
    }

    #[test]
    fn the_import_limits_bound_the_pages() {
        let wasm = wat::parse_str(r#"(module (import "env" "memory" (memory 4 8)))"#).unwrap();
        let out = define_imported_memory(&wasm, 50).unwrap();
        let module = wasmtime::Module::new(&wasmtime::Engine::default(), &out).unwrap();
        let wasmtime::ExternType::Memory(m) = module.exports().next().unwrap().ty() else { panic!() };
        assert_eq!((m.minimum(), m.maximum()), (8, Some(8)));
    }

    #[test]
    fn a_module_without_the_import_is_unchanged_and_garbage_is_an_error() {
        let wasm = wat::parse_str(r#"(module (memory (export "memory") 1))"#).unwrap();
        assert_eq!(define_imported_memory(&wasm, 5).unwrap(), wasm);
        assert!(define_imported_memory(b"nope", 5).is_err());
        let mut truncated = wat::parse_str(POLICY).unwrap();
        truncated.truncate(30);
        assert!(define_imported_memory(&truncated, 5).is_err());
    }
}
