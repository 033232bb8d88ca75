//! The Extism kernel, kept natively by the host: the per-instance memory arena that Extism plugins
//! reach through `alloc`, `load_u64`, `input_load_u8`, `output_set`... (module `extism:host/env`,
//! or `env` with an `extism_` prefix before Extism 1.0).
//!
//! Extism ships this kernel as a WebAssembly module linked next to every plugin
//! (extism/extism `kernel/src/lib.rs`). We keep the same state in Rust instead, so that no
//! second module, no `extism` crate (which pins other Wasmtime versions and has no WAMR) and no
//! cross-module linking is needed, and so that the arena is outside the plugin's reach except
//! through these functions.
//!
//! # Same handles as Extism
//!
//! A handle is an address in the kernel's memory, `0` meaning null. The kernel keeps a 64-byte
//! root at address 1 and then blocks of a 12-byte header (wasm32 layout) followed by data; a handle
//! is the address of a block's data. We number handles exactly as the kernel does (first handle 77,
//! then each block after the previous one), reuse freed blocks with the kernel's rule (only when
//! the arena would otherwise grow, splitting a free block that is 128 bytes or more too large), and
//! grow by whole 64 KiB pages. A plugin therefore sees the same numbers on this host as on Extism.
//!
//! # Where we differ (each only where the kernel reads or writes memory it does not own)
//!
//! * Block headers live in a side table, not in the byte array: loading a header address reads 0,
//!   and a plugin that stores over a header cannot corrupt the allocator.
//! * `length_unsafe` of an address that is not the start of a live block is 0 (the kernel reads
//!   whatever bytes precede it: "garbage on invalid offsets").
//! * Loads and stores are bounded by the arena's own length (the kernel allows any address of its
//!   whole WebAssembly memory, which is larger).
//! * Sizes are checked: an allocation whose size overflows, or that would take the arena past its
//!   cap (`memoryPages`), fails with 0 (the kernel's `memory.grow` failure).
//!
//! A bad handle never panics: every kernel function answers 0 or does nothing, as the kernel with
//! its default `bounds-checking` feature does. Which one is listed on each method.

use std::collections::BTreeMap;

/// WebAssembly page size; the arena grows by whole pages as the kernel's memory does.
pub const PAGE_SIZE: u64 = 65536;
/// Size of the kernel's `MemoryRoot` (wasm32): initialized flag, position, length, error, input
/// offset/length, output offset/length.
const ROOT_SIZE: u64 = 64;
/// The root is at address 1; the first block header follows it.
const BLOCKS_START: u64 = 1 + ROOT_SIZE;
/// Size of a `MemoryBlock` header on wasm32: status (u8, padded), size (u32), used (u32).
pub const BLOCK_HEADER: u64 = 12;
/// A free block this many bytes (or more) larger than a request is split.
const SPLIT_THRESHOLD: u64 = 128;
/// The kernel's memory is a wasm32 memory: never more than 4 GiB.
const MAX_WASM32_MEMORY: u64 = 1 << 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Active,
    Free,
}

#[derive(Debug, Clone, Copy)]
struct Block {
    /// Bytes reserved for data.
    size: u64,
    /// Bytes handed out (what `length` answers); `size` may be larger for a reused block.
    used: u64,
    status: Status,
}

/// The kernel state of one plugin instance.
#[derive(Debug)]
pub struct Kernel {
    /// Bytes at addresses `0..mem.len()`; `mem.len() == BLOCKS_START + length` always (one byte
    /// more than the pages the kernel counts, since its root starts at address 1).
    mem: Vec<u8>,
    /// Block headers by the address of their data (the handle).
    blocks: BTreeMap<u64, Block>,
    /// The bump allocator's position, relative to `BLOCKS_START`.
    position: u64,
    /// Bytes available to blocks, as the kernel counts them (`MemoryRoot::length`).
    length: u64,
    /// The most bytes the arena may span (addresses `0..max_bytes`).
    max_bytes: u64,
    error: u64,
    input_offset: u64,
    input_length: u64,
    output_offset: u64,
    output_length: u64,
}

impl Kernel {
    /// A fresh kernel whose memory may grow to `max_pages` pages of 64 KiB (at least one, at most
    /// 4 GiB), as the kernel's memory would under Extism's `memory.max_pages`.
    #[must_use]
    pub fn new(max_pages: u32) -> Kernel {
        let max_bytes = (u64::from(max_pages.max(1)) * PAGE_SIZE).min(MAX_WASM32_MEMORY);
        let length = PAGE_SIZE - ROOT_SIZE;
        Kernel {
            mem: vec![0; (BLOCKS_START + length) as usize],
            blocks: BTreeMap::new(),
            position: 0,
            length,
            max_bytes,
            error: 0,
            input_offset: 0,
            input_length: 0,
            output_offset: 0,
            output_length: 0,
        }
    }

    /// `alloc(n) -> handle`: a block of `n` bytes, 0 when `n` is 0 or the arena cannot grow.
    pub fn alloc(&mut self, n: u64) -> u64 {
        if n == 0 {
            return 0;
        }
        let Some(with_header) = n.checked_add(BLOCK_HEADER) else { return 0 };
        let mem_left = self.length.saturating_sub(self.position).saturating_sub(ROOT_SIZE);
        if with_header >= mem_left {
            // Free blocks are reused only when the arena would otherwise grow (kernel #765).
            if with_header <= self.position {
                if let Some(handle) = self.reuse_free_block(n) {
                    return handle;
                }
            }
            let pages = (with_header - mem_left).div_ceil(PAGE_SIZE);
            let Some(grown) = pages.checked_mul(PAGE_SIZE).and_then(|b| self.length.checked_add(b)) else { return 0 };
            // `length + ROOT_SIZE` is what the kernel's pages hold (the first page holds the root).
            if grown + ROOT_SIZE > self.max_bytes {
                return 0;
            }
            self.length = grown;
            self.mem.resize((BLOCKS_START + grown) as usize, 0);
        }
        let handle = BLOCKS_START + self.position + BLOCK_HEADER;
        self.position += with_header;
        self.blocks.insert(handle, Block { size: n, used: n, status: Status::Active });
        handle
    }

    /// The kernel's `find_free_block`: the first free block (in address order) of at least `n`
    /// bytes, split when it is `SPLIT_THRESHOLD` bytes or more too large.
    fn reuse_free_block(&mut self, n: u64) -> Option<u64> {
        let (&handle, &found) = self.blocks.iter().find(|(_, b)| b.status == Status::Free && b.size >= n)?;
        if found.size - n >= SPLIT_THRESHOLD {
            // The front part stays free; the tail becomes the new block.
            let front = found.size - (n + BLOCK_HEADER);
            self.blocks.insert(handle, Block { size: front, used: 0, status: Status::Free });
            let tail = handle + front + BLOCK_HEADER;
            self.blocks.insert(tail, Block { size: n, used: n, status: Status::Active });
            return Some(tail);
        }
        self.blocks.insert(handle, Block { size: found.size, used: n, status: Status::Active });
        Some(handle)
    }

    /// `free(handle)`: marks a live block free; anything else is ignored. Freeing the input
    /// block sets the input length to 0, as the kernel does.
    pub fn free(&mut self, handle: u64) {
        if let Some(block) = self.active_block_mut(handle) {
            block.status = Status::Free;
            if handle == self.input_offset {
                self.input_length = 0;
            }
        }
    }

    fn active_block_mut(&mut self, handle: u64) -> Option<&mut Block> {
        self.blocks.get_mut(&handle).filter(|b| b.status == Status::Active)
    }

    fn active_block(&self, handle: u64) -> Option<&Block> {
        self.blocks.get(&handle).filter(|b| b.status == Status::Active)
    }

    /// `length(handle)`: the bytes of a live block; 0 for null, a free block or an address that
    /// does not start a block.
    #[must_use]
    pub fn length(&self, handle: u64) -> u64 {
        self.active_block(handle).map_or(0, |b| b.used)
    }

    /// `length_unsafe(handle)`: as [`Self::length`] (see the module docs for the difference).
    #[must_use]
    pub fn length_unsafe(&self, handle: u64) -> u64 {
        self.length(handle)
    }

    /// Whether `[addr, addr + width)` is inside the arena and above the root, as the kernel's
    /// bounds checks require (the root's own bytes are not addressable).
    fn span(&self, addr: u64, width: u64) -> Option<std::ops::Range<usize>> {
        let end = addr.checked_add(width)?;
        (addr >= ROOT_SIZE && end <= self.mem.len() as u64).then_some(addr as usize..end as usize)
    }

    /// `load_u8(addr)`: 0 outside the arena.
    #[must_use]
    pub fn load_u8(&self, addr: u64) -> u8 {
        self.span(addr, 1).map_or(0, |r| self.mem[r.start])
    }

    /// `load_u64(addr)` (little-endian): 0 unless all 8 bytes are inside the arena.
    #[must_use]
    pub fn load_u64(&self, addr: u64) -> u64 {
        self.span(addr, 8).map_or(0, |r| u64::from_le_bytes(self.mem[r].try_into().unwrap_or([0; 8])))
    }

    /// `store_u8(addr, byte)`: ignored outside the arena.
    pub fn store_u8(&mut self, addr: u64, byte: u8) {
        if let Some(r) = self.span(addr, 1) {
            self.mem[r.start] = byte;
        }
    }

    /// `store_u64(addr, value)` (little-endian): ignored unless all 8 bytes are inside the arena.
    pub fn store_u64(&mut self, addr: u64, value: u64) {
        if let Some(r) = self.span(addr, 8) {
            self.mem[r].copy_from_slice(&value.to_le_bytes());
        }
    }

    /// The kernel's `pointer_in_bounds`: inside the blocks area as the kernel counts it.
    fn in_blocks(&self, addr: u64) -> bool {
        addr >= BLOCKS_START && addr < BLOCKS_START + self.length
    }

    /// The kernel's check on `input_set`/`output_set`: the first and the last byte in the blocks
    /// area. The kernel computes the last byte as `handle + len - 1` with wrapping arithmetic, so
    /// `len` 0 at the very first block is refused; a `len` so large that the sum wraps around is
    /// refused here too (the kernel accepts it, and Extism then fails reading the output).
    fn range_in_blocks(&self, handle: u64, len: u64) -> bool {
        let last = if len == 0 {
            handle.wrapping_sub(1)
        } else {
            match handle.checked_add(len - 1) {
                Some(l) => l,
                None => return false,
            }
        };
        self.in_blocks(handle) && self.in_blocks(last)
    }

    /// `input_set(handle, len)`: ignored unless [`Self::range_in_blocks`].
    pub fn input_set(&mut self, handle: u64, len: u64) {
        if self.range_in_blocks(handle, len) {
            self.input_offset = handle;
            self.input_length = len;
        }
    }

    /// `output_set(handle, len)`: ignored unless [`Self::range_in_blocks`].
    pub fn output_set(&mut self, handle: u64, len: u64) {
        if self.range_in_blocks(handle, len) {
            self.output_offset = handle;
            self.output_length = len;
        }
    }

    #[must_use]
    pub fn input_length(&self) -> u64 {
        self.input_length
    }

    #[must_use]
    pub fn input_offset(&self) -> u64 {
        self.input_offset
    }

    #[must_use]
    pub fn output_length(&self) -> u64 {
        self.output_length
    }

    #[must_use]
    pub fn output_offset(&self) -> u64 {
        self.output_offset
    }

    /// `input_load_u8(offset)`: byte `offset` of the input; 0 past its end.
    #[must_use]
    pub fn input_load_u8(&self, offset: u64) -> u8 {
        if offset >= self.input_length {
            return 0;
        }
        self.load_u8(self.input_offset.saturating_add(offset))
    }

    /// `input_load_u64(offset)`: 8 input bytes from `offset`; 0 unless all 8 are in the input.
    #[must_use]
    pub fn input_load_u64(&self, offset: u64) -> u64 {
        match offset.checked_add(8) {
            Some(end) if end <= self.input_length => self.load_u64(self.input_offset.saturating_add(offset)),
            _ => 0,
        }
    }

    /// `error_set(handle)`: 0 clears the error; a handle outside the blocks area is ignored.
    pub fn error_set(&mut self, handle: u64) {
        if handle == 0 || self.in_blocks(handle) {
            self.error = handle;
        }
    }

    /// `error_get()`: the error's handle, 0 when none is set.
    #[must_use]
    pub fn error_get(&self) -> u64 {
        self.error
    }

    /// The bump allocator's position (what `extism_memory_bytes` answered before Extism 1.0).
    #[must_use]
    pub fn position(&self) -> u64 {
        self.position
    }

    /// `memory_bytes()`: the arena's length as the kernel reports it (`MemoryRoot::length`).
    #[must_use]
    pub fn memory_bytes(&self) -> u64 {
        self.length
    }

    /// `reset()`: every block is gone and its bytes zeroed; input, output and error are cleared.
    /// The arena keeps its size, as the kernel's memory does.
    pub fn reset(&mut self) {
        let end = (BLOCKS_START + self.position) as usize;
        self.mem[BLOCKS_START as usize..end].fill(0);
        self.blocks.clear();
        self.position = 0;
        self.error = 0;
        self.input_offset = 0;
        self.input_length = 0;
        self.output_offset = 0;
        self.output_length = 0;
    }

    // Host-side access (what Extism's runtime does around the kernel functions).

    /// The bytes of the live block `handle` (`used` bytes); `None` for anything else. Handle 0 is
    /// the empty value (Extism's null handle).
    #[must_use]
    pub fn bytes(&self, handle: u64) -> Option<&[u8]> {
        if handle == 0 {
            return Some(&[]);
        }
        let block = self.active_block(handle)?;
        let start = handle as usize;
        self.mem.get(start..start + block.used as usize)
    }

    /// `len` bytes from `addr` whatever the blocks are (the output is read this way).
    #[must_use]
    pub fn raw(&self, addr: u64, len: u64) -> Option<&[u8]> {
        if len == 0 {
            return Some(&[]);
        }
        self.span(addr, len).map(|r| &self.mem[r])
    }

    /// Allocates a block holding `data` (Extism's `memory_new`): 0 for empty data, `None` when the
    /// arena cannot hold it.
    pub fn store(&mut self, data: &[u8]) -> Option<u64> {
        if data.is_empty() {
            return Some(0);
        }
        let handle = self.alloc(data.len() as u64);
        if handle == 0 {
            return None;
        }
        let start = handle as usize;
        self.mem[start..start + data.len()].copy_from_slice(data);
        Some(handle)
    }

    /// The error message set by the plugin, if any: Extism counts an error only when its handle
    /// and its length are both non-zero.
    #[must_use]
    pub fn error_message(&self) -> Option<String> {
        let handle = self.error;
        let len = self.length(handle);
        if handle == 0 || len == 0 {
            return None;
        }
        self.bytes(handle).map(|b| String::from_utf8_lossy(b).into_owned())
    }

    /// The output the plugin set with `output_set`.
    #[must_use]
    pub fn output(&self) -> Option<&[u8]> {
        self.raw(self.output_offset, self.output_length)
    }

    /// Bytes of memory the arena holds now (for memory accounting and `max_memory_usage`).
    #[must_use]
    pub fn footprint(&self) -> usize {
        self.mem.len()
    }

    /// The cap given at creation, in bytes.
    #[must_use]
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kernel() -> Kernel {
        Kernel::new(1024)
    }

    #[test]
    fn handles_are_numbered_as_the_extism_kernel_numbers_them() {
        let mut k = kernel();
        // Root at 1 (64 bytes), first header at 65, first data at 77.
        assert_eq!(k.alloc(1065), 77);
        assert_eq!(k.alloc(288), 77 + 1065 + 12);
        assert_eq!(k.alloc(128), 1154 + 288 + 12);
        assert_eq!(k.length(1154), 288);
        assert_eq!(k.length(1454), 128);
    }

    #[test]
    fn alloc_of_zero_bytes_is_null() {
        assert_eq!(kernel().alloc(0), 0);
    }

    #[test]
    fn a_freed_block_is_not_reused_while_the_arena_has_room() {
        let mut k = kernel();
        let a = k.alloc(100);
        k.free(a);
        let b = k.alloc(50);
        assert_ne!(a, b);
        assert_eq!(b, a + 100 + BLOCK_HEADER);
    }

    #[test]
    fn a_freed_block_is_reused_before_the_arena_grows() {
        let mut k = kernel();
        // Fill the first page exactly up to where the next allocation would need a second one.
        let a = k.alloc(40_000);
        let _b = k.alloc(20_000);
        k.free(a);
        let before = k.memory_bytes();
        // 20 000 more bytes do not fit in what is left of the page: the free block is taken
        // (split, since 40 000 - 20 000 >= 128) instead of growing.
        let c = k.alloc(20_000);
        assert_eq!(k.memory_bytes(), before);
        assert_eq!(c, a + (40_000 - 20_000 - BLOCK_HEADER) + BLOCK_HEADER);
        assert_eq!(k.length(c), 20_000);
        // The front part of the split block stays free: its length is 0.
        assert_eq!(k.length(a), 0);
    }

    #[test]
    fn a_free_block_less_than_128_bytes_too_large_is_reused_whole() {
        let mut k = kernel();
        let a = k.alloc(40_000);
        let _b = k.alloc(25_000);
        k.free(a);
        let c = k.alloc(39_900);
        assert_eq!(c, a);
        assert_eq!(k.length(c), 39_900);
    }

    #[test]
    fn the_arena_grows_by_whole_pages() {
        let mut k = kernel();
        assert_eq!(k.memory_bytes(), PAGE_SIZE - 64);
        let h = k.alloc(PAGE_SIZE);
        assert_ne!(h, 0);
        assert_eq!(k.memory_bytes(), 2 * PAGE_SIZE - 64);
        k.store_u8(h + PAGE_SIZE - 1, 7);
        assert_eq!(k.load_u8(h + PAGE_SIZE - 1), 7);
    }

    #[test]
    fn alloc_past_the_page_cap_is_null_and_harmless() {
        let mut k = Kernel::new(2);
        assert_eq!(k.alloc(3 * PAGE_SIZE), 0);
        assert_eq!(k.alloc(u64::MAX), 0);
        assert_eq!(k.alloc(u64::MAX - 5), 0);
        assert_ne!(k.alloc(PAGE_SIZE), 0);
        assert_eq!(k.memory_bytes() + 64, 2 * PAGE_SIZE);
    }

    #[test]
    fn length_of_an_address_inside_a_block_is_zero() {
        let mut k = kernel();
        let h = k.alloc(64);
        assert_eq!(k.length(h + 1), 0);
        assert_eq!(k.length_unsafe(h + 1), 0);
        assert_eq!(k.length(h - BLOCK_HEADER), 0);
        assert_eq!(k.length(0), 0);
        assert_eq!(k.length(u64::MAX), 0);
    }

    #[test]
    fn length_of_a_freed_block_is_zero() {
        let mut k = kernel();
        let h = k.alloc(10);
        k.free(h);
        assert_eq!(k.length(h), 0);
    }

    #[test]
    fn free_of_a_bad_handle_is_ignored() {
        let mut k = kernel();
        let h = k.alloc(10);
        k.free(h + 3);
        k.free(0);
        k.free(u64::MAX);
        assert_eq!(k.length(h), 10);
    }

    #[test]
    fn freeing_the_input_block_zeroes_the_input_length() {
        let mut k = kernel();
        let h = k.store(b"hello").unwrap();
        k.input_set(h, 5);
        assert_eq!(k.input_length(), 5);
        k.free(h);
        assert_eq!(k.input_length(), 0);
        assert_eq!(k.input_load_u8(0), 0);
    }

    #[test]
    fn loads_and_stores_round_trip_little_endian() {
        let mut k = kernel();
        let h = k.alloc(16);
        k.store_u64(h, 0x0102_0304_0506_0708);
        assert_eq!(k.load_u8(h), 8);
        assert_eq!(k.load_u64(h), 0x0102_0304_0506_0708);
        k.store_u8(h + 8, 0xff);
        assert_eq!(k.load_u64(h + 8), 0xff);
    }

    #[test]
    fn loads_and_stores_outside_the_arena_read_zero_and_write_nothing() {
        let mut k = kernel();
        let end = k.footprint() as u64;
        k.store_u8(end, 1);
        k.store_u64(end - 4, 1);
        k.store_u64(u64::MAX - 3, 1);
        assert_eq!(k.load_u8(end), 0);
        assert_eq!(k.load_u64(end - 4), 0);
        assert_eq!(k.load_u64(u64::MAX), 0);
        // The root is not addressable either.
        k.store_u8(3, 9);
        assert_eq!(k.load_u8(3), 0);
    }

    #[test]
    fn input_loads_stop_at_the_input_length() {
        let mut k = kernel();
        let h = k.store(b"0123456789").unwrap();
        k.input_set(h, 10);
        assert_eq!(k.input_offset(), h);
        assert_eq!(k.input_load_u8(9), b'9');
        assert_eq!(k.input_load_u8(10), 0);
        assert_eq!(k.input_load_u64(2), u64::from_le_bytes(*b"23456789"));
        assert_eq!(k.input_load_u64(3), 0);
        assert_eq!(k.input_load_u64(u64::MAX), 0);
    }

    #[test]
    fn input_and_output_set_refuse_ranges_outside_the_blocks_area() {
        let mut k = kernel();
        let h = k.store(b"abc").unwrap();
        k.output_set(h, 3);
        k.output_set(h, u64::MAX);
        k.output_set(1, 2);
        assert_eq!((k.output_offset(), k.output_length()), (h, 3));
        assert_eq!(k.output(), Some(&b"abc"[..]));
        k.input_set(0, 0);
        assert_eq!((k.input_offset(), k.input_length()), (0, 0));
    }

    #[test]
    fn error_set_keeps_handles_in_the_blocks_area_and_zero_clears() {
        let mut k = kernel();
        let h = k.store(b"boom").unwrap();
        k.error_set(u64::MAX);
        assert_eq!(k.error_get(), 0);
        k.error_set(h);
        assert_eq!(k.error_message().as_deref(), Some("boom"));
        k.error_set(0);
        assert_eq!(k.error_message(), None);
    }

    #[test]
    fn an_error_handle_that_is_not_a_block_is_no_error() {
        let mut k = kernel();
        let h = k.store(b"boom").unwrap();
        k.error_set(h + 1);
        assert_eq!(k.error_get(), h + 1);
        assert_eq!(k.error_message(), None);
    }

    #[test]
    fn reset_forgets_blocks_zeroes_their_bytes_and_restarts_numbering() {
        let mut k = kernel();
        let h = k.store(b"secret").unwrap();
        k.input_set(h, 6);
        k.output_set(h, 6);
        k.error_set(h);
        k.reset();
        assert_eq!(k.length(h), 0);
        assert_eq!((k.input_length(), k.output_length(), k.error_get()), (0, 0, 0));
        let again = k.alloc(6);
        assert_eq!(again, h);
        assert_eq!(k.bytes(again), Some(&[0u8; 6][..]));
    }

    #[test]
    fn host_store_of_nothing_is_the_null_handle() {
        let mut k = kernel();
        assert_eq!(k.store(b""), Some(0));
        assert_eq!(k.bytes(0), Some(&[][..]));
    }

    #[test]
    fn host_store_larger_than_the_cap_fails() {
        let mut k = Kernel::new(1);
        assert_eq!(k.store(&vec![1; PAGE_SIZE as usize]), None);
    }
}
