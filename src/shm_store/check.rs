//! The whole-block check run after an update was undone, when a worker
//! starts, and by the tests: every block, list, chain, queue, metric and
//! count, with every offset and length checked before it is followed.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;

use super::region::*;
use super::*;

impl ShmStore {
    /// Every block, free list, chain, queue, metric and count (under the lock).
    pub(super) fn check_all(&self) -> Result<(), Corrupt> {
        let r = &self.region;
        let h = r.header();
        if h.len.load(Ordering::Relaxed) as usize != r.len || h.heap_start.load(Ordering::Relaxed) != HEAP_START {
            return corrupt("the header's length or heap start changed");
        }
        // The heap is tiled by blocks.
        let mut blocks: HashMap<u32, (u32, u32)> = HashMap::new();
        let mut b = HEAP_START;
        while b < r.heap_end() {
            let (size, tag) = r.block(b)?;
            if tag != FREE && tag != USED {
                return corrupt(format!("block {b} has an unknown tag"));
            }
            blocks.insert(b, (size, tag));
            b += size;
        }
        if b != r.heap_end() {
            return corrupt("the blocks do not end where the heap ends");
        }
        // The free list holds every free block, in address order.
        let free = blocks.values().filter(|(_, t)| *t == FREE).count();
        let (mut cur, mut prev, mut n) = (h.free_head.load(Ordering::Relaxed), 0u32, 0usize);
        while cur != 0 {
            n += 1;
            if n > free || cur <= prev || blocks.get(&cur).map(|x| x.1) != Some(FREE) {
                return corrupt(format!("the free list is damaged at {cur}"));
            }
            prev = cur;
            cur = r.load(cur + 8)?;
        }
        if n != free {
            return corrupt("a free block is missing from the free list");
        }
        // Every used block belongs to exactly one record.
        let mut claimed: HashSet<u32> = HashSet::new();
        let mut claim = |p: u32, need: u64| -> Result<(), Corrupt> {
            r.record(p, need)?;
            if !blocks.contains_key(&(p - BLOCK_HEADER)) || !claimed.insert(p - BLOCK_HEADER) {
                return corrupt(format!("record {p} is not a block of its own"));
            }
            Ok(())
        };
        // Usage records, then what they count.
        let vm_count = h.vm_count.load(Ordering::Relaxed) as usize;
        if vm_count > MAX_VMS {
            return corrupt(format!("{vm_count} usage records"));
        }
        let mut usage: HashMap<u32, (Vec<u8>, u64, u32, u32)> = HashMap::new();
        let mut by_vm: HashMap<Vec<u8>, u32> = HashMap::new();
        for slot in &h.vms[..vm_count] {
            let u = slot.load(Ordering::Relaxed);
            let vm = self.usage_vm_id(u)?;
            claim(u, U_BYTES as u64 + vm.len() as u64)?;
            if by_vm.insert(vm.clone(), u).is_some() {
                return corrupt("two usage records for one vm_id");
            }
            usage.insert(u, (vm, 0, 0, 0));
        }
        for (bucket, a) in h.buckets.iter().enumerate() {
            let mut e = a.load(Ordering::Relaxed);
            while e != 0 {
                let (vl, kl, val) = self.data_lengths(e)?;
                claim(e, D_BYTES as u64 + vl as u64 + kl as u64 + val as u64)?;
                if r.load(e + D_HASH)? as usize % DATA_BUCKETS != bucket {
                    return corrupt(format!("shared data entry {e} is in the wrong bucket"));
                }
                let payer = r.load(e + D_PAYER)?;
                let x = usage
                    .get_mut(&payer)
                    .ok_or_else(|| Corrupt(format!("shared data entry {e} has no usage record")))?;
                x.1 += kl as u64 + val as u64;
                e = r.load(e + D_NEXT)?;
            }
        }
        let queue_count = h.queue_count.load(Ordering::Relaxed) as usize;
        if queue_count > MAX_QUEUES {
            return corrupt(format!("{queue_count} queue slots"));
        }
        for a in &h.queues[..queue_count] {
            let q = a.load(Ordering::Relaxed);
            if q == 0 {
                continue;
            }
            let (vm, name) = self.queue_names(q)?;
            claim(q, Q_BYTES as u64 + vm.len() as u64 + name.len() as u64)?;
            let u = r.load(q + Q_USAGE)?;
            if by_vm.get(&vm) != Some(&u) || r.load(q + Q_TAG)? == 0 {
                return corrupt(format!("queue {q} has a bad usage record or tag"));
            }
            let (mut item, mut items, mut last, mut bytes) = (r.load(q + Q_HEAD)?, 0u32, 0u32, 0u64);
            while item != 0 {
                r.record(item, I_BYTES as u64)?;
                let len = r.load(item + I_LEN)?;
                claim(item, I_BYTES as u64 + len as u64)?;
                items += 1;
                bytes += len as u64;
                last = item;
                item = r.load(item + I_NEXT)?;
            }
            if items != r.load(q + Q_ITEMS)? || last != r.load(q + Q_TAIL)? {
                return corrupt(format!("queue {q} counts its items wrong"));
            }
            if let Some(x) = usage.get_mut(&u) {
                x.1 += bytes;
                x.3 += 1;
            }
        }
        let metric_count = h.metric_count.load(Ordering::Relaxed) as usize;
        if metric_count > MAX_METRICS {
            return corrupt(format!("{metric_count} metric slots"));
        }
        for a in &h.metrics[..metric_count] {
            let m = a.load(Ordering::Relaxed);
            if m == 0 {
                continue;
            }
            let name = self.metric_name(m)?;
            claim(m, M_BYTES as u64 + name.len() as u64)?;
            let u = r.load(m + M_OWNER)?;
            if kind_of(r.load(m + M_KIND)?).is_none() || !usage.contains_key(&u) {
                return corrupt(format!("metric {m} has a bad type or usage record"));
            }
            if let Some(x) = usage.get_mut(&u) {
                x.2 += 1;
            }
        }
        for (u, (_, bytes, metrics, queues)) in &usage {
            if (r.load(u + U_HELD)? as u64, r.load(u + U_METRICS)?, r.load(u + U_QUEUES)?)
                != (*bytes, *metrics, *queues)
            {
                return corrupt(format!("usage record {u} counts wrong"));
            }
        }
        let used = blocks.values().filter(|(_, t)| *t == USED).count();
        if used != claimed.len() {
            return corrupt(format!("{} used blocks belong to nothing", used - claimed.len()));
        }
        Ok(())
    }
}
