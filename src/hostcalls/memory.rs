//! Bounds-checked access to guest linear memory.
//!
//! Every pointer and length a guest passes is a u32; `ptr + len` is computed
//! without overflow and must lie inside memory, else INVALID_MEMORY_ACCESS.

use super::state::{HostState, Phase};
use crate::abi::Status;
use crate::runtime::{Caller, Trap, Val};

pub fn slice(mem: &[u8], ptr: u32, len: u32) -> Result<&[u8], Status> {
    let start = ptr as usize;
    let end = start.checked_add(len as usize).ok_or(Status::InvalidMemoryAccess)?;
    mem.get(start..end).ok_or(Status::InvalidMemoryAccess)
}

pub fn slice_mut(mem: &mut [u8], ptr: u32, len: u32) -> Result<&mut [u8], Status> {
    let start = ptr as usize;
    let end = start.checked_add(len as usize).ok_or(Status::InvalidMemoryAccess)?;
    mem.get_mut(start..end).ok_or(Status::InvalidMemoryAccess)
}

/// Reads `len` bytes at `ptr`; a zero length reads nothing whatever the pointer.
pub fn read(mem: &[u8], ptr: u32, len: u32) -> Result<Vec<u8>, Status> {
    bytes(mem, ptr, len).map(<[u8]>::to_vec)
}

/// The `len` bytes at `ptr`, borrowed from the guest's memory (as [`read`],
/// without a copy: a hostcall that only passes them on to the server needs none).
pub fn bytes(mem: &[u8], ptr: u32, len: u32) -> Result<&[u8], Status> {
    if len == 0 {
        return Ok(&[]);
    }
    slice(mem, ptr, len)
}

pub fn write(mem: &mut [u8], ptr: u32, data: &[u8]) -> Result<(), Status> {
    let len = u32::try_from(data.len()).map_err(|_| Status::InvalidMemoryAccess)?;
    slice_mut(mem, ptr, len)?.copy_from_slice(data);
    Ok(())
}

pub fn write_u32(mem: &mut [u8], ptr: u32, v: u32) -> Result<(), Status> {
    write(mem, ptr, &v.to_le_bytes())
}

pub fn write_u64(mem: &mut [u8], ptr: u32, v: u64) -> Result<(), Status> {
    write(mem, ptr, &v.to_le_bytes())
}

/// Checks that `len` bytes at `ptr` are writable, before doing any work whose
/// result would then be lost.
pub fn check(mem: &[u8], ptr: u32, len: u32) -> Result<(), Status> {
    slice(mem, ptr, len).map(|_| ())
}

/// Allocates `size` bytes in the guest with its allocator. `Ok(None)` when the
/// module has no allocator or the allocator returned 0 (out of memory).
pub fn allocate(c: &mut dyn Caller<HostState>, size: u32) -> Result<Option<u32>, Trap> {
    let Some(allocator) = c.state().allocator else {
        return Ok(None);
    };
    // While the allocator runs, the guest may only use start-up-safe hostcalls.
    let previous = std::mem::replace(&mut c.state().phase, Phase::Startup);
    let result = c.call_export(allocator, &[Val::I32(size as i32)]);
    c.state().phase = previous;
    let addr = result?.map(|v| v.as_i32() as u32).unwrap_or(0);
    Ok((addr != 0).then_some(addr))
}

/// Hands bytes to the guest: allocates, copies, and writes the address and
/// size to the two return pointers. Empty data is a null pointer and size 0.
pub fn return_bytes(c: &mut dyn Caller<HostState>, data: &[u8], ptr_ptr: u32, size_ptr: u32) -> Result<Status, Trap> {
    return_with(c, data.len(), ptr_ptr, size_ptr, |out| out.copy_from_slice(data))
}

/// As [`return_bytes`] for `len` bytes that `fill` writes straight into the
/// guest's allocation (an encoding made in place instead of in a host buffer).
pub fn return_with(
    c: &mut dyn Caller<HostState>,
    len: usize,
    ptr_ptr: u32,
    size_ptr: u32,
    fill: impl FnOnce(&mut [u8]),
) -> Result<Status, Trap> {
    {
        let (mem, _) = c.memory_and_state();
        if check(mem, ptr_ptr, 4).is_err() || check(mem, size_ptr, 4).is_err() {
            return Ok(Status::InvalidMemoryAccess);
        }
    }
    let Ok(len) = u32::try_from(len) else {
        return Ok(Status::InvalidMemoryAccess);
    };
    let addr = if len == 0 {
        0
    } else {
        match allocate(c, len)? {
            Some(addr) => addr,
            None => return Ok(Status::InvalidMemoryAccess),
        }
    };
    let (mem, _) = c.memory_and_state();
    let result = match slice_mut(mem, addr, len) {
        Ok(out) => {
            fill(out);
            write_u32(mem, ptr_ptr, addr).and_then(|_| write_u32(mem, size_ptr, len))
        }
        Err(e) => Err(e),
    };
    Ok(result.err().unwrap_or(Status::Ok))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overflow_and_out_of_bounds_are_invalid_memory_access() {
        let mem = vec![0u8; 16];
        assert!(slice(&mem, 0, 16).is_ok());
        assert_eq!(slice(&mem, 1, 16), Err(Status::InvalidMemoryAccess));
        assert_eq!(slice(&mem, u32::MAX, 2), Err(Status::InvalidMemoryAccess));
        assert_eq!(slice(&mem, 8, u32::MAX), Err(Status::InvalidMemoryAccess));
        assert_eq!(read(&mem, u32::MAX, 0), Ok(vec![]));
    }
}
